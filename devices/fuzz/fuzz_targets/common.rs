// Shared by the fuzz targets: turn fuzz bytes into guest memory content and
// a descriptor chain.
use husk_devices::virtio::test_utils::{desc, RawDescriptor, BUF_BASE, MEM_SIZE};

/// Up to 4 descriptors from the first 4 * 16 bytes; addresses fall mostly
/// inside guest memory (sometimes past its end), flags and `next` are raw.
pub fn descriptors(data: &[u8]) -> (Vec<RawDescriptor>, &[u8]) {
    let n = usize::from(data.first().copied().unwrap_or(0) % 4) + 1;
    let mut out = Vec::new();
    let mut rest = data.get(1..).unwrap_or(&[]);
    for _ in 0..n {
        if rest.len() < 16 {
            break;
        }
        let raw_addr = u64::from_le_bytes(rest[0..8].try_into().unwrap());
        let addr = if raw_addr & 0x8000_0000_0000_0000 != 0 {
            raw_addr
        } else {
            BUF_BASE + raw_addr % (MEM_SIZE as u64 - BUF_BASE)
        };
        let len = u32::from_le_bytes(rest[8..12].try_into().unwrap()) % 0x2_0000;
        let flags = u16::from_le_bytes(rest[12..14].try_into().unwrap()) & 0x7;
        let next = u16::from_le_bytes(rest[14..16].try_into().unwrap()) % 20;
        out.push(desc(addr, len, flags, next));
        rest = &rest[16..];
    }
    (out, rest)
}
