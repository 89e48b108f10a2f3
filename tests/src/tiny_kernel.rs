//! Hand-made "kernels" for the built-in VMM's tests on hosts whose KVM cannot run Linux: an
//! ELF64 file with one loadable segment of 64-bit code at 1 MiB, which the VMM boots like a
//! vmlinux (64-bit boot protocol: long mode, identity-mapped, entry at the segment start).

/// Where the code is loaded and entered (the kernel's usual physical start).
pub const LOAD_ADDR: u64 = 0x10_0000;
/// File offset of the code: page-aligned, as a loader expects of a segment.
const CODE_OFFSET: u64 = 0x1000;

/// Long-mode code that writes `text` to COM1 (port 0x3f8).
pub fn print(text: &str) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for &byte in text.as_bytes() {
        code.extend_from_slice(&[0xb0, byte, 0xee]); // mov al, byte; out dx, al
    }
    code
}

/// Long-mode code that pulses the CPU reset line through the i8042 (the VM ends).
pub fn reset() -> Vec<u8> {
    vec![0xb0, 0xfe, 0xe6, 0x64, 0xf4] // mov al, 0xfe; out 0x64, al; hlt
}

/// Long-mode code that spins forever (a guest that never stops by itself).
pub fn spin() -> Vec<u8> {
    vec![0xeb, 0xfe] // jmp $
}

/// An ELF64 executable whose single PT_LOAD segment is `code` at [`LOAD_ADDR`], entered at its
/// first byte.
pub fn elf(code: &[u8]) -> Vec<u8> {
    const EHDR_SIZE: u16 = 64;
    const PHDR_SIZE: u16 = 56;
    let mut file = Vec::with_capacity(CODE_OFFSET as usize + code.len());
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI.
    file.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    file.extend_from_slice(&[0; 8]);
    file.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    file.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    file.extend_from_slice(&1u32.to_le_bytes()); // e_version
    file.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    file.extend_from_slice(&u64::from(EHDR_SIZE).to_le_bytes()); // e_phoff
    file.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    file.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    file.extend_from_slice(&EHDR_SIZE.to_le_bytes()); // e_ehsize
    file.extend_from_slice(&PHDR_SIZE.to_le_bytes()); // e_phentsize
    file.extend_from_slice(&1u16.to_le_bytes()); // e_phnum

    // e_shentsize, e_shnum, e_shstrndx: no section headers.
    file.extend_from_slice(&[0; 6]);

    // The program header: PT_LOAD, read + execute.
    file.extend_from_slice(&1u32.to_le_bytes()); // p_type
    file.extend_from_slice(&5u32.to_le_bytes()); // p_flags
    file.extend_from_slice(&CODE_OFFSET.to_le_bytes()); // p_offset
    file.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    file.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    file.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    file.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    file.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    file.resize(CODE_OFFSET as usize, 0);
    file.extend_from_slice(code);
    file
}
