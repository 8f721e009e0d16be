//! What the /dev/kvm tests that run the real husk-vmm binary share: a
//! hand-assembled guest is wrapped in an ELF "kernel" husk-vmm loads.

/// Where the guest's code is loaded (and entered).
pub const LOAD_ADDR: u64 = 0x10_0000;

/// A minimal ELF64 executable with one PT_LOAD segment at 1 MiB.
pub fn elf(code: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 64, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    e.extend_from_slice(&0x1000u64.to_le_bytes()); // offset
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // vaddr
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // paddr
    let len = code.len() as u64;
    e.extend_from_slice(&len.to_le_bytes());
    e.extend_from_slice(&len.to_le_bytes());
    e.extend_from_slice(&0x1000u64.to_le_bytes());
    e.resize(0x1000, 0);
    e.extend_from_slice(code);
    e
}
