//! Guest physical memory: layout constants and the `GuestMemoryMmap` that
//! backs it, split around the 32-bit MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Start of the 32-bit MMIO gap (3 GiB): virtio-mmio devices, IOAPIC, LAPIC.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 1 << 32;
/// First virtio-mmio device slot.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;

/// GDT for the boot vCPU state.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT (empty) for the boot vCPU state.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux boot protocol zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 x 2 MiB pages = the first GiB, identity mapped).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Extended BIOS data area: the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory (1 MiB), where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;

/// Memory errors.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of guest memory failed.
    #[error("cannot allocate {mib} MiB of guest memory")]
    Allocate {
        /// Requested size.
        mib: u32,
        /// The cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM ranges of a guest with `mem_mib` MiB: below the MMIO gap, and the
/// rest above 4 GiB.
pub fn ram_ranges(mem_mib: u32) -> Vec<(GuestAddress, usize)> {
    let size = u64::from(mem_mib) << 20;
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), to_usize(size))]
    } else {
        vec![
            (GuestAddress(0), to_usize(MMIO_GAP_START)),
            (GuestAddress(MMIO_GAP_END), to_usize(size - MMIO_GAP_START)),
        ]
    }
}

fn to_usize(v: u64) -> usize {
    // husk only builds for 64-bit hosts.
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Allocates guest memory of `mem_mib` MiB.
pub fn create_guest_memory(mem_mib: u32) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(&ram_ranges(mem_mib)).map_err(|source| MemoryError::Allocate {
        mib: mem_mib,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(ram_ranges(256), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let r = ram_ranges(4096);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), 3 << 30));
        assert_eq!(r[1], (GuestAddress(4 << 30), 1 << 30));
    }
}
