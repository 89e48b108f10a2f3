//! The device allowlist (`linux.resources.devices`) on cgroup v2: an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the container's cgroup, which the kernel asks on
//! every open and mknod of a device node.
//!
//! Semantics, as runc gives them:
//! - the spec's rules, then runc's default allowed devices appended (mknod of any node; use of
//!   null, zero, full, random, urandom, tty, ptmx, the pseudo terminals and tun), so these cannot
//!   be denied by the spec;
//! - the last rule that matches decides; nothing matching means deny;
//! - an allow rule matches when every access asked for (read, write, mknod) is in the rule, a
//!   deny rule when any of them is (a request for "rw" after "allow rwm, deny w" is denied).
//!
//! Without `linux.resources.devices` no program is attached (every device is allowed, as in a
//! cgroup without a device controller); containerd always sends the list.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::Context;
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::kernel::{self, BpfInsn};

/// `BPF_DEVCG_DEV_*` and `BPF_DEVCG_ACC_*` of `struct bpf_cgroup_dev_ctx`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const ACC_ALL: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// One rule, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    /// `None` for all types ('a').
    pub kind: Option<i32>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: i32,
}

/// runc's default allowed devices, appended to every list.
pub const DEFAULT_ALLOWED: [Rule; 11] = [
    Rule { allow: true, kind: Some(DEV_CHAR), major: None, minor: None, access: ACC_MKNOD },
    Rule { allow: true, kind: Some(DEV_BLOCK), major: None, minor: None, access: ACC_MKNOD },
    Rule { allow: true, kind: Some(DEV_CHAR), major: Some(1), minor: Some(3), access: ACC_ALL },
    Rule { allow: true, kind: Some(DEV_CHAR), major: Some(1), minor: Some(8), access: ACC_ALL },
    Rule { allow: true, kind: Some(DEV_CHAR), major: Some(1), minor: Some(7), access: ACC_ALL },
    Rule { allow: true, kind: Some(DEV_CHAR), major: Some(5), minor: Some(0), access: ACC_ALL },
    Rule { allow: true, kind: Some(DEV_CHAR), major: Some(1), minor: Some(5), access: ACC_ALL },
    Rule { allow: true, kind: Some(DEV_CHAR), major: Some(1), minor: Some(9), access: ACC_ALL },
    Rule { allow: true, kind: Some(DEV_CHAR), major: Some(136), minor: None, access: ACC_ALL },
    Rule { allow: true, kind: Some(DEV_CHAR), major: Some(5), minor: Some(2), access: ACC_ALL },
    Rule { allow: true, kind: Some(DEV_CHAR), major: Some(10), minor: Some(200), access: ACC_ALL },
];

/// The rule of a spec entry; `None` for entries the device controller ignores (FIFOs).
pub fn rule(entry: &LinuxDeviceCgroup) -> Result<Option<Rule>, String> {
    let kind = match entry.typ() {
        None | Some(LinuxDeviceType::A) => None,
        Some(LinuxDeviceType::C | LinuxDeviceType::U) => Some(DEV_CHAR),
        Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
        Some(LinuxDeviceType::P) => return Ok(None),
    };
    let number = |value: Option<i64>, what: &str| match value {
        None => Ok(None),
        Some(n) if n < 0 => Ok(None),
        Some(n) => {
            u32::try_from(n).map(Some).map_err(|_| format!("device {what} {n} is out of range"))
        }
    };
    let mut access = 0;
    for c in entry.access().as_deref().unwrap_or("rwm").chars() {
        access |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            other => return Err(format!("invalid device access {other:?}")),
        };
    }
    if access == 0 {
        access = ACC_ALL;
    }
    Ok(Some(Rule {
        allow: entry.allow(),
        kind,
        major: number(entry.major(), "major")?,
        minor: number(entry.minor(), "minor")?,
        access,
    }))
}

/// The rules of the spec followed by the defaults.
pub fn rules(entries: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::with_capacity(entries.len() + DEFAULT_ALLOWED.len());
    for entry in entries {
        rules.extend(rule(entry)?);
    }
    rules.extend(DEFAULT_ALLOWED);
    Ok(rules)
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R7: u8 = 7;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn { code, regs: dst | (src << 4), off, imm }
}

/// `dst = *(u32 *)(src + off)`
fn load_u32(dst: u8, src: u8, off: i16) -> BpfInsn {
    insn(0x61, dst, src, off, 0)
}
/// `dst = src`
fn mov_reg(dst: u8, src: u8) -> BpfInsn {
    insn(0xbf, dst, src, 0, 0)
}
/// `dst = imm`
fn mov_imm(dst: u8, imm: i32) -> BpfInsn {
    insn(0xb7, dst, 0, 0, imm)
}
/// `dst &= imm`
fn and_imm(dst: u8, imm: i32) -> BpfInsn {
    insn(0x57, dst, 0, 0, imm)
}
/// `dst >>= imm`
fn rsh_imm(dst: u8, imm: i32) -> BpfInsn {
    insn(0x77, dst, 0, 0, imm)
}
/// `if dst != imm goto +off`
fn jne_imm(dst: u8, imm: i32, off: i16) -> BpfInsn {
    insn(0x55, dst, 0, off, imm)
}
/// `if dst == imm goto +off`
fn jeq_imm(dst: u8, imm: i32, off: i16) -> BpfInsn {
    insn(0x15, dst, 0, off, imm)
}
/// `if dst & imm goto +off`
fn jset_imm(dst: u8, imm: i32, off: i16) -> BpfInsn {
    insn(0x45, dst, 0, off, imm)
}
fn exit() -> BpfInsn {
    insn(0x95, 0, 0, 0, 0)
}

/// A jump whose offset is "to the end of the rule's block", fixed once the block is complete.
const TO_BLOCK_END: i16 = i16::MIN;

/// The eBPF program for `rules` (last match wins, default deny).
pub fn program(rules: &[Rule]) -> Vec<BpfInsn> {
    let mut code = vec![
        load_u32(R2, R1, 0),
        mov_reg(R3, R2),
        and_imm(R3, 0xffff),
        mov_reg(R4, R2),
        rsh_imm(R4, 16),
        load_u32(R5, R1, 4),
        load_u32(R6, R1, 8),
    ];
    for rule in rules.iter().rev() {
        let mut block = Vec::new();
        if let Some(kind) = rule.kind {
            block.push(jne_imm(R3, kind, TO_BLOCK_END));
        }
        if rule.access & ACC_ALL != ACC_ALL {
            if rule.allow {
                // Any access asked for outside the rule: no match.
                block.push(jset_imm(R4, !rule.access & ACC_ALL, TO_BLOCK_END));
            } else {
                // None of the rule's accesses asked for: no match.
                block.push(mov_reg(R7, R4));
                block.push(and_imm(R7, rule.access));
                block.push(jeq_imm(R7, 0, TO_BLOCK_END));
            }
        }
        if let Some(major) = rule.major {
            block.push(jne_imm(R5, major as i32, TO_BLOCK_END));
        }
        if let Some(minor) = rule.minor {
            block.push(jne_imm(R6, minor as i32, TO_BLOCK_END));
        }
        let unconditional = block.is_empty();
        block.push(mov_imm(R0, i32::from(rule.allow)));
        block.push(exit());
        let len = block.len();
        for (i, insn) in block.iter_mut().enumerate() {
            if insn.off == TO_BLOCK_END {
                insn.off = (len - i - 1) as i16;
            }
        }
        code.extend(block);
        if unconditional {
            // Matches everything: the kernel's verifier refuses the unreachable rest.
            return code;
        }
    }
    code.push(mov_imm(R0, 0));
    code.push(exit());
    code
}

/// Loads the program for `entries` and attaches it to the cgroup at `dir`, replacing the
/// program attached before.
pub fn apply(dir: &Path, entries: &[LinuxDeviceCgroup]) -> anyhow::Result<()> {
    let rules = rules(entries).map_err(anyhow::Error::msg).context("linux.resources.devices")?;
    let prog =
        kernel::load_device_program(&program(&rules)).context("load the device cgroup program")?;
    let cgroup = std::fs::File::open(dir).with_context(|| format!("open {}", dir.display()))?;
    kernel::attach_device_program(cgroup.as_fd(), prog.as_fd())
        .with_context(|| format!("attach the device program to {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the generated program the way the kernel would, for one request.
    fn decide(program: &[BpfInsn], kind: i32, access: i32, major: u32, minor: u32) -> bool {
        let mut regs = [0u64; 11];
        let ctx = [((access as u32) << 16) | kind as u32, major, minor];
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                0x61 => {
                    assert_eq!(src, 1, "only the context is read");
                    regs[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                0xbf => regs[dst] = regs[src],
                0xb7 => regs[dst] = i.imm as i64 as u64,
                0x57 => regs[dst] &= i.imm as i64 as u64,
                0x77 => regs[dst] >>= i.imm,
                0x55 | 0x15 | 0x45 => {
                    let imm = i.imm as i64 as u64;
                    let taken = match i.code {
                        0x55 => regs[dst] != imm,
                        0x15 => regs[dst] == imm,
                        _ => regs[dst] & imm != 0,
                    };
                    if taken {
                        pc = (pc as i64 + i64::from(i.off)) as usize;
                    }
                }
                0x95 => return regs[0] == 1,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn spec_rules(json: &str) -> Vec<Rule> {
        let entries: Vec<LinuxDeviceCgroup> = serde_json::from_str(json).unwrap();
        rules(&entries).unwrap()
    }

    /// containerd's default list (ctr run).
    const CONTAINERD: &str = r#"[{"allow":false,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":8,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":7,"access":"rwm"},
        {"allow":true,"type":"c","major":5,"minor":0,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":5,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":9,"access":"rwm"},
        {"allow":true,"type":"c","major":5,"minor":1,"access":"rwm"},
        {"allow":true,"type":"c","major":136,"access":"rwm"},
        {"allow":true,"type":"c","major":5,"minor":2,"access":"rwm"}]"#;

    #[test]
    fn containerd_default_list() {
        let program = program(&spec_rules(CONTAINERD));
        let rw = ACC_READ | ACC_WRITE;
        assert!(decide(&program, DEV_CHAR, rw, 1, 3), "/dev/null");
        assert!(decide(&program, DEV_CHAR, rw, 136, 7), "/dev/pts/7");
        assert!(decide(&program, DEV_CHAR, rw, 5, 1), "/dev/console");
        assert!(decide(&program, DEV_CHAR, rw, 10, 200), "tun (runc's default)");
        assert!(!decide(&program, DEV_CHAR, ACC_READ, 1, 1), "/dev/mem");
        assert!(!decide(&program, DEV_CHAR, ACC_READ, 1, 11), "/dev/kmsg");
        assert!(!decide(&program, DEV_BLOCK, ACC_READ, 254, 0), "/dev/vda");
        assert!(!decide(&program, DEV_CHAR, ACC_WRITE, 10, 121), "/dev/vsock");
        // mknod of anything is allowed (runc's defaults); using the node is not.
        assert!(decide(&program, DEV_CHAR, ACC_MKNOD, 1, 1));
        assert!(decide(&program, DEV_BLOCK, ACC_MKNOD, 254, 0));
    }

    /// The verifier refuses unreachable instructions: nothing may follow a rule that matches
    /// everything.
    #[test]
    fn nothing_after_a_catch_all_rule() {
        let program = program(&spec_rules(CONTAINERD));
        let last = program.iter().rposition(|i| i.code == 0x95).unwrap();
        assert_eq!(last, program.len() - 1);
        assert_eq!(program[program.len() - 2], mov_imm(R0, 0), "deny all is the last word");
        let all = program.iter().filter(|i| i.code == 0x95).count();
        assert_eq!(all, 21, "one exit per rule, the catch-all deny (the first spec rule) last");
    }

    #[test]
    fn privileged_allows_all() {
        let program = program(&spec_rules(r#"[{"allow":true,"access":"rwm"}]"#));
        assert!(decide(&program, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 1));
        assert!(decide(&program, DEV_BLOCK, ACC_READ, 254, 0));
    }

    #[test]
    fn partial_access_rules() {
        let program = program(&spec_rules(
            r#"[{"allow":false,"access":"rwm"},
                {"allow":true,"type":"b","major":8,"minor":0,"access":"rwm"},
                {"allow":false,"type":"b","major":8,"minor":0,"access":"w"},
                {"allow":true,"type":"c","major":4,"access":"r"}]"#,
        ));
        assert!(decide(&program, DEV_BLOCK, ACC_READ, 8, 0));
        assert!(!decide(&program, DEV_BLOCK, ACC_WRITE, 8, 0));
        assert!(
            !decide(&program, DEV_BLOCK, ACC_READ | ACC_WRITE, 8, 0),
            "one denied access denies"
        );
        assert!(!decide(&program, DEV_CHAR, ACC_READ, 8, 0), "the type must match");
        assert!(decide(&program, DEV_CHAR, ACC_READ, 4, 9), "any minor");
        assert!(
            !decide(&program, DEV_CHAR, ACC_READ | ACC_WRITE, 4, 9),
            "write is not in the rule"
        );
    }

    #[test]
    fn defaults_cannot_be_denied_and_fifos_are_ignored() {
        let program = program(&spec_rules(
            r#"[{"allow":false,"type":"c","major":1,"minor":3,"access":"rwm"},
                {"allow":false,"type":"p","access":"rwm"}]"#,
        ));
        assert!(decide(&program, DEV_CHAR, ACC_WRITE, 1, 3));
    }

    #[test]
    fn invalid_entries() {
        let entries: Vec<LinuxDeviceCgroup> =
            serde_json::from_str(r#"[{"allow":true,"access":"rx"}]"#).unwrap();
        assert!(rules(&entries).is_err());
    }

    /// Whether this process may load BPF programs (root on a kernel with the bpf syscall); a
    /// loud skip otherwise.
    fn can_load_bpf(test: &str) -> bool {
        if !nix::unistd::geteuid().is_root() {
            bazaar_tests::skip::skip(test, "loading a BPF program needs root");
            return false;
        }
        true
    }

    /// The host kernel's verifier accepts the program the agent generates for containerd's
    /// default list (the guest's kernel is the same 6.1 verifier or older than the host's).
    #[test]
    fn the_kernel_loads_the_generated_program() {
        if !can_load_bpf("the_kernel_loads_the_generated_program") {
            return;
        }
        let fd = kernel::load_device_program(&program(&spec_rules(CONTAINERD)));
        assert!(fd.is_ok(), "{:?}", fd.err());
    }

    /// A program the verifier refuses is an error carrying the verifier's own explanation
    /// (the first load asks for no log; the failure is loaded again with one).
    #[test]
    fn a_refused_program_says_why() {
        if !can_load_bpf("a_refused_program_says_why") {
            return;
        }
        // `exit` with r0 never written: "R0 !read_ok".
        let err = kernel::load_device_program(&[exit()]).expect_err("r0 is never set");
        let text = err.to_string();
        assert!(text.contains("verifier log:") && text.contains("R0"), "{text}");
    }
}
