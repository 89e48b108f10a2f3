//! The `bazaar-vmm` command itself, on a tiny ELF "kernel" built here: it boots it with the
//! seccomp filters killing on any system call they do not allow, shows its console on stdout
//! and exits 0 when the guest resets. Each test skips (loudly) where /dev/kvm cannot be opened.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bazaar_tests::process::{self, Output};
use bazaar_tests::tempdir::TempDir;
use common::kvm_usable;

/// Where the kernel's one segment is loaded and entered (the kernel load address, 1 MiB).
const LOAD_ADDR: u64 = 0x10_0000;
/// File offset of the segment, page aligned as linkers do.
const SEGMENT_OFFSET: usize = 0x1000;
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const LINE: &str = "hello from a tiny ELF kernel\n";

/// Long-mode code: write `line` to COM1, then pulse the CPU reset line through the i8042.
fn kernel_code(line: &str) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for byte in line.bytes() {
        code.extend([0xb0, byte, 0xee]); // mov al, byte; out dx, al
    }
    code.extend([0xb0, 0xfe, 0xe6, 0x64]); // mov al, 0xfe; out 0x64, al: reset
    code.extend([0xf4, 0xeb, 0xfd]); // hlt; jmp back to the hlt (never reached)
    code
}

/// An ELF64 executable with one PT_LOAD segment holding `code` at [`LOAD_ADDR`], entered there.
fn elf_kernel(code: &[u8]) -> Vec<u8> {
    const EHDR_LEN: u16 = 64;
    const PHDR_LEN: u16 = 56;
    let mut elf = Vec::new();
    elf.extend(b"\x7fELF");
    elf.extend([2, 1, 1, 0]); // 64-bit, little endian, ELF version 1, System V ABI
    elf.extend([0u8; 8]); // padding of e_ident
    elf.extend(2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend(0x3eu16.to_le_bytes()); // e_machine: EM_X86_64
    elf.extend(1u32.to_le_bytes()); // e_version
    elf.extend(LOAD_ADDR.to_le_bytes()); // e_entry
    elf.extend(u64::from(EHDR_LEN).to_le_bytes()); // e_phoff: right after this header
    elf.extend(0u64.to_le_bytes()); // e_shoff: no section headers
    elf.extend(0u32.to_le_bytes()); // e_flags
    elf.extend(EHDR_LEN.to_le_bytes()); // e_ehsize
    elf.extend(PHDR_LEN.to_le_bytes()); // e_phentsize
    elf.extend(1u16.to_le_bytes()); // e_phnum
    elf.extend(64u16.to_le_bytes()); // e_shentsize
    elf.extend(0u16.to_le_bytes()); // e_shnum
    elf.extend(0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(elf.len(), usize::from(EHDR_LEN));

    let size = code.len() as u64;
    elf.extend(1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend(5u32.to_le_bytes()); // p_flags: read, execute
    elf.extend((SEGMENT_OFFSET as u64).to_le_bytes()); // p_offset
    elf.extend(LOAD_ADDR.to_le_bytes()); // p_vaddr
    elf.extend(LOAD_ADDR.to_le_bytes()); // p_paddr: where the loader puts it
    elf.extend(size.to_le_bytes()); // p_filesz
    elf.extend(size.to_le_bytes()); // p_memsz
    elf.extend(0x1000u64.to_le_bytes()); // p_align
    assert_eq!(elf.len(), usize::from(EHDR_LEN + PHDR_LEN));

    elf.resize(SEGMENT_OFFSET, 0);
    elf.extend(code);
    elf
}

/// Writes the tiny kernel into `dir`.
fn write_kernel(dir: &Path) -> PathBuf {
    let path = dir.join("vmlinux");
    std::fs::write(&path, elf_kernel(&kernel_code(LINE))).expect("write the test kernel");
    path
}

fn run_vmm(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bazaar-vmm"));
    cmd.args(args);
    process::run(cmd, None, RUN_TIMEOUT).expect("start bazaar-vmm")
}

fn boot_tiny_kernel(vcpus: &str) -> Output {
    let dir = TempDir::new("bzt-vmm").expect("temp dir");
    let kernel = write_kernel(dir.path());
    let kernel = kernel.to_str().expect("UTF-8 temp path");
    run_vmm(&["--kernel", kernel, "--memory-mib", "64", "--vcpus", vcpus, "--seccomp", "kill"])
}

#[test]
fn boots_a_kernel_under_seccomp_kill_and_exits_0_on_reset() {
    if !kvm_usable("boots_a_kernel_under_seccomp_kill_and_exits_0_on_reset") {
        return;
    }
    let out = boot_tiny_kernel("1");
    out.assert_success();
    assert_eq!(out.stdout, LINE, "the guest's console is stdout: {}", out.describe());
    assert!(out.stderr.contains("guest stopped: Reset"), "{}", out.describe());
}

#[test]
fn two_vcpus_boot_with_the_ap_waiting() {
    if !kvm_usable("two_vcpus_boot_with_the_ap_waiting") {
        return;
    }
    // vCPU 1 waits for an INIT/SIPI this kernel never sends; the reset ends the VM all the same.
    let out = boot_tiny_kernel("2");
    out.assert_success();
    assert_eq!(out.stdout, LINE, "{}", out.describe());
}

#[test]
fn a_missing_kernel_exits_1_naming_the_path() {
    if !kvm_usable("a_missing_kernel_exits_1_naming_the_path") {
        return;
    }
    let dir = TempDir::new("bzt-vmm").expect("temp dir");
    let missing = dir.path().join("no-such-vmlinux");
    let missing = missing.to_str().expect("UTF-8 temp path");
    let out = run_vmm(&["--kernel", missing, "--memory-mib", "64"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stderr.contains(missing), "the error names the path: {}", out.describe());
}
