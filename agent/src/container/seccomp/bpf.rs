//! A small assembler for classic BPF (the language of seccomp filters): instructions with
//! symbolic jump targets, resolved into offsets at the end.
//!
//! Conditional jumps have 8-bit offsets, so their targets must be near (the compiler keeps them
//! within one rule); `ja` has a 32-bit offset and carries the long jumps. Every jump goes
//! forward, as the kernel requires.

use std::fmt;

use crate::container::kernel::SockFilter;

const BPF_LD: u16 = 0x00;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_AND: u16 = 0x50;
const BPF_K: u16 = 0x00;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JGT: u16 = 0x20;
const BPF_JGE: u16 = 0x30;

/// The most instructions a filter may have (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// A position in the program, bound once with [`Assembler::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// Where a conditional jump goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The next instruction.
    Next,
    Label(Label),
}

/// The comparison of a conditional jump (the accumulator against a constant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Plain(SockFilter),
    Cond { cmp: Cmp, k: u32, jt: Target, jf: Target },
    Ja(Label),
}

/// Why a program could not be assembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssembleError {
    TooLong(usize),
    FarJump { at: usize, distance: usize },
    Unbound,
}

impl fmt::Display for AssembleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssembleError::TooLong(n) => {
                write!(f, "the filter needs {n} instructions, more than the kernel's {MAX_INSNS}")
            }
            AssembleError::FarJump { at, distance } => {
                write!(f, "conditional jump at {at} over {distance} instructions (at most 255)")
            }
            AssembleError::Unbound => write!(f, "jump to an unbound or earlier label"),
        }
    }
}

#[derive(Debug, Default)]
pub struct Assembler {
    code: Vec<Pending>,
    labels: Vec<Option<usize>>,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `label` to the next instruction emitted.
    pub fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.code.len());
    }

    /// `A = 32-bit word at offset` of the seccomp data.
    pub fn load(&mut self, offset: u32) {
        self.code.push(Pending::Plain(SockFilter {
            code: BPF_LD | BPF_W | BPF_ABS,
            jt: 0,
            jf: 0,
            k: offset,
        }));
    }

    /// `A &= k`.
    pub fn and(&mut self, k: u32) {
        self.code.push(Pending::Plain(SockFilter {
            code: BPF_ALU | BPF_AND | BPF_K,
            jt: 0,
            jf: 0,
            k,
        }));
    }

    /// `if A <cmp> k goto jt else goto jf`.
    pub fn jump(&mut self, cmp: Cmp, k: u32, jt: Target, jf: Target) {
        self.code.push(Pending::Cond { cmp, k, jt, jf });
    }

    /// `goto label`, any distance.
    pub fn ja(&mut self, label: Label) {
        self.code.push(Pending::Ja(label));
    }

    /// `return value`.
    pub fn ret(&mut self, value: u32) {
        self.code.push(Pending::Plain(SockFilter {
            code: BPF_RET | BPF_K,
            jt: 0,
            jf: 0,
            k: value,
        }));
    }

    /// Resolves the labels into offsets.
    pub fn finish(self) -> Result<Vec<SockFilter>, AssembleError> {
        if self.code.len() > MAX_INSNS {
            return Err(AssembleError::TooLong(self.code.len()));
        }
        let position = |label: Label| self.labels.get(label.0).copied().flatten();
        let distance = |at: usize, label: Label| -> Result<usize, AssembleError> {
            match position(label) {
                Some(to) if to > at => Ok(to - at - 1),
                _ => Err(AssembleError::Unbound),
            }
        };
        let short = |at: usize, target: Target| -> Result<u8, AssembleError> {
            match target {
                Target::Next => Ok(0),
                Target::Label(label) => {
                    let d = distance(at, label)?;
                    u8::try_from(d).map_err(|_| AssembleError::FarJump { at, distance: d })
                }
            }
        };
        let mut out = Vec::with_capacity(self.code.len());
        for (at, pending) in self.code.iter().enumerate() {
            out.push(match *pending {
                Pending::Plain(insn) => insn,
                Pending::Cond { cmp, k, jt, jf } => {
                    let op = match cmp {
                        Cmp::Eq => BPF_JEQ,
                        Cmp::Gt => BPF_JGT,
                        Cmp::Ge => BPF_JGE,
                    };
                    SockFilter {
                        code: BPF_JMP | op | BPF_K,
                        jt: short(at, jt)?,
                        jf: short(at, jf)?,
                        k,
                    }
                }
                Pending::Ja(label) => {
                    let d = distance(at, label)?;
                    SockFilter { code: BPF_JMP | BPF_JA, jt: 0, jf: 0, k: d as u32 }
                }
            });
        }
        Ok(out)
    }
}

/// Runs a program over seccomp data the way the kernel does (for tests): returns the value of
/// the `ret` reached.
#[cfg(test)]
pub fn run(program: &[SockFilter], data: &[u8; 64]) -> u32 {
    let word = |offset: u32| {
        let o = offset as usize;
        u32::from_ne_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]])
    };
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let insn = program[pc];
        pc += 1;
        match insn.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => acc = word(insn.k),
            c if c == BPF_ALU | BPF_AND | BPF_K => acc &= insn.k,
            c if c == BPF_RET | BPF_K => return insn.k,
            c if c == BPF_JMP | BPF_JA => pc += insn.k as usize,
            c if c & 0x07 == BPF_JMP => {
                let taken = match c & 0xf0 {
                    BPF_JEQ => acc == insn.k,
                    BPF_JGT => acc > insn.k,
                    BPF_JGE => acc >= insn.k,
                    other => panic!("unknown jump {other:#x}"),
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            other => panic!("unknown instruction {other:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_become_forward_offsets() {
        let mut asm = Assembler::new();
        let yes = asm.label();
        asm.load(0);
        asm.jump(Cmp::Eq, 7, Target::Label(yes), Target::Next);
        asm.ret(1);
        asm.bind(yes);
        asm.ret(2);
        let program = asm.finish().unwrap();
        assert_eq!(program[1].jt, 1);
        assert_eq!(program[1].jf, 0);
        let mut data = [0u8; 64];
        data[0] = 7;
        assert_eq!(run(&program, &data), 2);
        data[0] = 8;
        assert_eq!(run(&program, &data), 1);
    }

    #[test]
    fn far_conditional_jumps_are_refused_and_ja_is_not_limited() {
        let mut asm = Assembler::new();
        let far = asm.label();
        asm.jump(Cmp::Eq, 0, Target::Label(far), Target::Next);
        for _ in 0..300 {
            asm.ret(0);
        }
        asm.bind(far);
        asm.ret(1);
        assert!(matches!(asm.finish(), Err(AssembleError::FarJump { .. })));

        let mut asm = Assembler::new();
        let far = asm.label();
        asm.ja(far);
        for _ in 0..300 {
            asm.ret(0);
        }
        asm.bind(far);
        asm.ret(1);
        assert_eq!(run(&asm.finish().unwrap(), &[0u8; 64]), 1);
    }

    #[test]
    fn backward_or_unbound_labels_fail() {
        let mut asm = Assembler::new();
        let never = asm.label();
        asm.ja(never);
        assert_eq!(asm.finish(), Err(AssembleError::Unbound));
    }
}
