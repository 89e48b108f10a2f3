//! Seccomp in the guest: the spec's `linux.seccomp` compiled into a classic BPF filter by the
//! agent itself (no libseccomp: the agent is a static binary), with the semantics runc gets from
//! libseccomp:
//!
//! - architecture x86_64 (the only one the guest kernel runs: no IA-32 emulation, no x32);
//!   another architecture's system call gets `SCMP_ACT_KILL_PROCESS` (libseccomp's "bad
//!   architecture" action), an x32 one `ENOSYS`;
//! - each rule's names become system call numbers (unknown names are skipped, as runc skips
//!   those its libseccomp does not know); a rule's `args` must all match (AND), except that
//!   several conditions on the same argument become one rule each (OR), as runc does;
//! - comparisons are unsigned 64-bit (`SCMP_CMP_MASKED_EQ`: `(arg & value) == valueTwo`);
//! - for one system call, conditional rules are tried in the spec's order, then an unconditional
//!   one, then the default action;
//! - `SCMP_ACT_ERRNO` and `SCMP_ACT_TRACE` return `errnoRet`, EPERM when it is absent (the default
//!   action `defaultErrnoRet`);
//! - with a default action that denies, a system call numbered above every call the profile
//!   names returns ENOSYS (runc's rule, so that a libc falls back from calls the profile never
//!   heard of, e.g. `clone3`, instead of failing with EPERM);
//! - `flags` (`SECCOMP_FILTER_FLAG_LOG`, `SPEC_ALLOW`, `TSYNC`) go to `seccomp(2)`.
//!
//! `SCMP_ACT_NOTIFY` (a seccomp agent on a socket) is refused.
//!
//! Every container process also gets the [vsock guard](GUARD_ERRNO): `socket(AF_VSOCK, ...)`
//! fails with EAFNOSUPPORT. The guest kernel has vsock loopback, and vsock is not namespaced: a
//! container could otherwise connect to the agent's own port (CID 1 or the guest's CID) and
//! drive the agent API. The guard is part of the spec's filter when there is one (one filter, as
//! under runc), a filter of its own otherwise.
//!
//! When it is installed follows runc: with `noNewPrivileges` as late as possible, right before
//! `execve`; without it before the user switch, while the process still has CAP_SYS_ADMIN (the
//! system calls of the rest of the setup then pass through the filter, as under runc).

mod bpf;
mod syscalls_x86_64;

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use self::bpf::{Assembler, Cmp, Label, Target};
use super::kernel::{self, SockFilter};
use super::sync::{ErrorCode, SetupError};

/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// System calls of the x32 ABI have this bit set in their number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARGS: u32 = 16;

const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

const FLAG_TSYNC: u32 = 1;
const FLAG_LOG: u32 = 2;
const FLAG_SPEC_ALLOW: u32 = 4;

/// `socket(2)` on x86_64 and `AF_VSOCK`.
const SYS_SOCKET: u32 = 41;
const AF_VSOCK: u32 = 40;
/// What `socket(AF_VSOCK, ...)` returns in a container: "address family not supported", as on
/// a kernel without vsock.
pub const GUARD_ERRNO: u32 = libc::EAFNOSUPPORT as u32;

/// A compiled filter and the flags to install it with.
#[derive(Debug, Clone)]
pub struct Filter {
    pub program: Vec<SockFilter>,
    pub flags: u32,
}

impl Filter {
    /// Installs the filter on the calling thread (no_new_privs or CAP_SYS_ADMIN needed).
    pub fn install(&self) -> std::io::Result<()> {
        kernel::seccomp_set_filter(&self.program, self.flags)
    }
}

/// The number of a system call on x86_64.
pub fn syscall_number(name: &str) -> Option<u32> {
    let table = syscalls_x86_64::SYSCALLS;
    table.binary_search_by(|(known, _)| (*known).cmp(name)).ok().map(|i| table[i].1)
}

/// The filter of a container process: the spec's profile with the vsock guard, or the guard
/// alone.
pub fn filter_for(profile: Option<&LinuxSeccomp>) -> Result<Filter, SetupError> {
    match profile {
        Some(profile) => compile(profile),
        None => Ok(guard()),
    }
}

/// The vsock guard alone (for containers without a seccomp profile).
pub fn guard() -> Filter {
    let mut asm = Assembler::new();
    let allow = asm.label();
    asm.load(DATA_ARCH);
    asm.jump(Cmp::Eq, AUDIT_ARCH_X86_64, Target::Next, Target::Label(allow));
    emit_guard(&mut asm, allow);
    asm.bind(allow);
    asm.ret(RET_ALLOW);
    Filter { program: asm.finish().expect("the guard is a fixed, short program"), flags: 0 }
}

/// `socket(AF_VSOCK, ...)` fails, anything else goes on to `pass` (with A clobbered).
fn emit_guard(asm: &mut Assembler, pass: Label) {
    asm.load(DATA_NR);
    asm.and(!X32_SYSCALL_BIT);
    asm.jump(Cmp::Eq, SYS_SOCKET, Target::Next, Target::Label(pass));
    // The domain is an int: the kernel looks at the low 32 bits only.
    asm.load(DATA_ARGS);
    asm.jump(Cmp::Eq, AF_VSOCK, Target::Next, Target::Label(pass));
    asm.ret(RET_ERRNO | GUARD_ERRNO);
}

/// One comparison of a rule.
#[derive(Debug, Clone, Copy)]
struct Condition {
    index: u32,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: u64,
}

/// A rule for one system call.
#[derive(Debug, Clone)]
struct Rule {
    conditions: Vec<Condition>,
    action: u32,
}

fn invalid(message: impl Into<String>) -> SetupError {
    SetupError::new(ErrorCode::InvalidArgument, message)
}

/// The return value of an action.
fn action_value(action: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, SetupError> {
    let errno = errno.unwrap_or(libc::EPERM as u32) & 0xffff;
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | errno,
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | errno,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(invalid(
                "seccomp action SCMP_ACT_NOTIFY (a seccomp agent) is not supported in the guest",
            ))
        }
    })
}

fn condition(arg: &LinuxSeccompArg) -> Result<Condition, SetupError> {
    let index = u32::try_from(arg.index()).ok().filter(|index| *index < 6).ok_or_else(|| {
        invalid(format!("seccomp argument index {} is out of range (0-5)", arg.index()))
    })?;
    Ok(Condition {
        index,
        op: arg.op(),
        value: arg.value(),
        value_two: arg.value_two().unwrap_or(0),
    })
}

/// The rules of a syscall entry: one rule with all conditions, or one per condition when
/// several conditions test the same argument (runc's rule).
fn entry_rules(args: &[LinuxSeccompArg], action: u32) -> Result<Vec<Rule>, SetupError> {
    let conditions = args.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
    let mut seen = [0u8; 6];
    for c in &conditions {
        seen[c.index as usize] += 1;
    }
    if seen.iter().any(|count| *count > 1) {
        Ok(conditions.into_iter().map(|c| Rule { conditions: vec![c], action }).collect())
    } else {
        Ok(vec![Rule { conditions, action }])
    }
}

/// Compiles a profile (with the vsock guard).
pub fn compile(profile: &LinuxSeccomp) -> Result<Filter, SetupError> {
    let default = action_value(profile.default_action(), profile.default_errno_ret())?;
    let mut flags = 0;
    for flag in profile.flags().iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => FLAG_SPEC_ALLOW,
            // Only meaningful with SCMP_ACT_NOTIFY, which is refused anyway.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        };
    }

    let mut by_number: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
    for entry in profile.syscalls().iter().flatten() {
        let action = action_value(entry.action(), entry.errno_ret())?;
        let rules = entry_rules(entry.args().as_deref().unwrap_or_default(), action)?;
        for name in entry.names() {
            if let Some(nr) = syscall_number(name) {
                by_number.entry(nr).or_default().extend(rules.iter().cloned());
            }
        }
    }

    let mut asm = Assembler::new();
    let native = asm.label();
    asm.load(DATA_ARCH);
    asm.jump(Cmp::Eq, AUDIT_ARCH_X86_64, Target::Label(native), Target::Next);
    asm.ret(RET_KILL_PROCESS);
    asm.bind(native);
    let not_x32 = asm.label();
    asm.load(DATA_NR);
    asm.jump(Cmp::Ge, X32_SYSCALL_BIT, Target::Next, Target::Label(not_x32));
    asm.ret(RET_ERRNO | libc::ENOSYS as u32);
    asm.bind(not_x32);

    let after_guard = asm.label();
    emit_guard(&mut asm, after_guard);
    asm.bind(after_guard);
    asm.load(DATA_NR);

    let denies = !matches!(default, RET_ALLOW | RET_LOG);
    if let (true, Some(max)) = (denies, by_number.keys().next_back()) {
        let known = asm.label();
        asm.jump(Cmp::Gt, *max, Target::Next, Target::Label(known));
        asm.ret(RET_ERRNO | libc::ENOSYS as u32);
        asm.bind(known);
    }

    let blocks: Vec<(u32, Vec<Rule>)> = by_number.into_iter().collect();
    emit_tree(&mut asm, &blocks, default)?;
    let program = asm.finish().map_err(|err| invalid(format!("seccomp profile: {err}")))?;
    Ok(Filter { program, flags })
}

/// A binary search over the sorted system call numbers (A holds the number), each leaf holding
/// the rules of one call.
fn emit_tree(
    asm: &mut Assembler,
    blocks: &[(u32, Vec<Rule>)],
    default: u32,
) -> Result<(), SetupError> {
    match blocks {
        [] => {
            asm.ret(default);
            Ok(())
        }
        [(nr, rules)] => emit_leaf(asm, *nr, rules, default),
        _ => {
            let mid = blocks.len() / 2;
            let (left, right) = blocks.split_at(mid);
            let right_label = asm.label();
            let left_label = asm.label();
            asm.jump(Cmp::Ge, right[0].0, Target::Next, Target::Label(left_label));
            asm.ja(right_label);
            asm.bind(left_label);
            emit_tree(asm, left, default)?;
            asm.bind(right_label);
            emit_tree(asm, right, default)
        }
    }
}

fn emit_leaf(asm: &mut Assembler, nr: u32, rules: &[Rule], default: u32) -> Result<(), SetupError> {
    let matched = asm.label();
    asm.jump(Cmp::Eq, nr, Target::Label(matched), Target::Next);
    asm.ret(default);
    asm.bind(matched);
    for rule in rules.iter().filter(|rule| !rule.conditions.is_empty()) {
        let next_rule = asm.label();
        for c in &rule.conditions {
            emit_condition(asm, c, next_rule);
        }
        asm.ret(rule.action);
        asm.bind(next_rule);
    }
    let fallback =
        rules.iter().find(|rule| rule.conditions.is_empty()).map_or(default, |rule| rule.action);
    asm.ret(fallback);
    Ok(())
}

/// Falls through when the condition holds, jumps to `fail` otherwise (A is clobbered).
fn emit_condition(asm: &mut Assembler, c: &Condition, fail: Label) {
    let low_offset = DATA_ARGS + 8 * c.index;
    let high_offset = low_offset + 4;
    let (high, low) = ((c.value >> 32) as u32, c.value as u32);
    let fail = Target::Label(fail);
    let ok = asm.label();
    let pass = Target::Label(ok);
    use LinuxSeccompOperator as Op;
    match c.op {
        Op::ScmpCmpEq => {
            asm.load(high_offset);
            asm.jump(Cmp::Eq, high, Target::Next, fail);
            asm.load(low_offset);
            asm.jump(Cmp::Eq, low, Target::Next, fail);
        }
        Op::ScmpCmpNe => {
            asm.load(high_offset);
            asm.jump(Cmp::Eq, high, Target::Next, pass);
            asm.load(low_offset);
            asm.jump(Cmp::Eq, low, fail, Target::Next);
        }
        Op::ScmpCmpGt | Op::ScmpCmpGe => {
            asm.load(high_offset);
            asm.jump(Cmp::Gt, high, pass, Target::Next);
            asm.jump(Cmp::Eq, high, Target::Next, fail);
            asm.load(low_offset);
            let cmp = if c.op == Op::ScmpCmpGt { Cmp::Gt } else { Cmp::Ge };
            asm.jump(cmp, low, Target::Next, fail);
        }
        Op::ScmpCmpLt | Op::ScmpCmpLe => {
            asm.load(high_offset);
            asm.jump(Cmp::Gt, high, fail, Target::Next);
            asm.jump(Cmp::Eq, high, Target::Next, pass);
            asm.load(low_offset);
            // LT fails on low >= value, LE on low > value.
            let cmp = if c.op == Op::ScmpCmpLt { Cmp::Ge } else { Cmp::Gt };
            asm.jump(cmp, low, fail, Target::Next);
        }
        Op::ScmpCmpMaskedEq => {
            let (want_high, want_low) = ((c.value_two >> 32) as u32, c.value_two as u32);
            asm.load(high_offset);
            asm.and(high);
            asm.jump(Cmp::Eq, want_high, Target::Next, fail);
            asm.load(low_offset);
            asm.and(low);
            asm.jump(Cmp::Eq, want_low, Target::Next, fail);
        }
    }
    asm.bind(ok);
}

#[cfg(test)]
mod tests;
