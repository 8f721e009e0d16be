//! The Intel MultiProcessor table (MP spec 1.4) that tells a guest without
//! ACPI about its CPUs, the IOAPIC and how ISA interrupts are routed. It is
//! written into the EBDA, where Linux's `mpparse` scans for `_MP_`.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::memory::EBDA_START;

/// Physical address of the IOAPIC.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Physical address of the local APICs.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// Number of IOAPIC pins KVM's default routing wires to GSIs.
pub const IRQ_COUNT: u8 = 24;

const EBDA_SIZE: usize = 0x400;
const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const CPU_SIGNATURE: u32 = 0x600; // family 6
const CPU_FEATURES: u32 = 0x201; // FPU | APIC
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;

/// MP table errors.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many CPUs for the table to fit in the EBDA.
    #[error("MP table for {0} CPUs does not fit in the EBDA")]
    TooManyCpus(u8),
    /// Writing the table failed.
    #[error("cannot write the MP table into guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer and configuration table for `cpus` CPUs, as
/// they are placed at `base`.
pub fn build(cpus: u8, base: u32) -> Result<Vec<u8>, MptableError> {
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        entries.push(0); // processor entry
        entries.push(cpu); // APIC id
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]); // bus entry, bus 0
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]); // IOAPIC, enabled
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 2;
    for irq in 0..IRQ_COUNT {
        // I/O interrupt: type, polarity/trigger (bus default), bus, bus irq,
        // IOAPIC id, IOAPIC pin.
        entries.extend_from_slice(&[3, MP_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: LINT0 = ExtINT, LINT1 = NMI on every local APIC.
    entries.extend_from_slice(&[4, MP_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[4, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = 44 + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(
        &u16::try_from(table_len)
            .map_err(|_| MptableError::TooManyCpus(cpus))?
            .to_le_bytes(),
    );
    table.push(MPC_SPEC);
    table.push(0); // checksum, below
    table.extend_from_slice(b"HUSKVMM ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length, checksum
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(base + 16).to_le_bytes());
    out.extend_from_slice(&[1, MPC_SPEC, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    if out.len() > EBDA_SIZE {
        return Err(MptableError::TooManyCpus(cpus));
    }
    Ok(out)
}

/// Writes the MP table for `cpus` CPUs at the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    let base = u32::try_from(EBDA_START).map_err(|_| MptableError::TooManyCpus(cpus))?;
    let bytes = build(cpus, base)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::GuestMemory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        let t = build(2, 0x9fc00).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 0x9fc10);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        assert_eq!(
            usize::from(u16::from_le_bytes([table[4], table[5]])),
            table.len()
        );
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        // 2 CPUs, bus, IOAPIC, 24 interrupts, 2 local interrupts.
        assert_eq!(u16::from_le_bytes([table[34], table[35]]), 2 + 2 + 24 + 2);
        // First CPU is the BSP, the second is not.
        assert_eq!(table[44 + 3], CPU_ENABLED | CPU_BSP);
        assert_eq!(table[44 + 20 + 3], CPU_ENABLED);
    }

    #[test]
    fn max_vcpus_fit() {
        assert!(build(crate::config::MAX_VCPUS, 0x9fc00).is_ok());
        assert!(matches!(
            build(40, 0x9fc00),
            Err(MptableError::TooManyCpus(40))
        ));
    }
}
