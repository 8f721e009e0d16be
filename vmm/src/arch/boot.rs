//! Loading the guest: kernel (ELF `vmlinux` with or without a PVH note, or
//! `bzImage`), initramfs, command line, and the boot information the kernel
//! reads first: the zero page (Linux 64-bit boot protocol) or
//! `hvm_start_info` (PVH), each with the e820 memory map.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::regs::EntryMode;
use crate::config::MAX_CMDLINE_LEN;
use crate::memory::{
    CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, PVH_INFO_START,
    PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Offset of the 64-bit entry point in a bzImage's protected-mode part.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 4096;

/// Guest loading errors.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A kernel or initramfs file could not be read.
    #[error("cannot read {what} {path}")]
    Read {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// linux-loader rejected the kernel image.
    #[error("cannot load kernel {path}")]
    Kernel {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initramfs does not fit between the kernel and the end of low memory.
    #[error("initrd of {size} bytes does not fit in guest memory after the kernel")]
    InitrdTooBig {
        /// Its size.
        size: u64,
    },
    /// Copying the initramfs into guest memory failed.
    #[error("cannot copy initrd {path} into guest memory")]
    InitrdCopy {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The command line is invalid or too long.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing boot structures failed.
    #[error("cannot write {what} into guest memory: {reason}")]
    BootInfo {
        /// Which structure.
        what: &'static str,
        /// The cause.
        reason: String,
    },
}

/// Result alias for guest loading.
pub type Result<T> = std::result::Result<T, BootError>;

/// Where and how the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelEntry {
    /// Entry address.
    pub entry: GuestAddress,
    /// Entry mode.
    pub mode: EntryMode,
    /// First byte after the kernel image.
    pub kernel_end: u64,
    /// The bzImage's setup header, for the zero page.
    pub setup_header: Option<setup_header>,
}

/// Where the initramfs was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRange {
    /// Guest address.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// Loads the kernel image and decides the entry mode: PVH when an ELF has
/// the PVH note (and `prefer_pvh`), else the 64-bit entry.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path, prefer_pvh: bool) -> Result<KernelEntry> {
    let read_err = |source| BootError::Read {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(read_err)?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let kernel_err = |source| BootError::Kernel {
        path: path.to_path_buf(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    if &magic == b"\x7fELF" {
        let r = Elf::load(mem, None, &mut file, himem).map_err(kernel_err)?;
        let (entry, mode) = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) if prefer_pvh => (addr, EntryMode::Pvh),
            _ => (r.kernel_load, EntryMode::LongMode),
        };
        Ok(KernelEntry {
            entry,
            mode,
            kernel_end: r.kernel_end,
            setup_header: None,
        })
    } else {
        let r = BzImage::load(mem, None, &mut file, himem).map_err(kernel_err)?;
        Ok(KernelEntry {
            entry: r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
            mode: EntryMode::LongMode,
            kernel_end: r.kernel_end,
            setup_header: r.setup_header,
        })
    }
}

/// End of the RAM below the MMIO gap.
fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .filter(|r| r.start_addr().raw_value() < MMIO_GAP_START)
        .map(|r| r.start_addr().raw_value() + r.len())
        .max()
        .unwrap_or(0)
}

/// Copies the initramfs to the top of low memory, page aligned.
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path, kernel_end: u64) -> Result<InitrdRange> {
    let read_err = |source| BootError::Read {
        what: "initrd",
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let top = low_ram_end(mem);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= kernel_end)
        .ok_or(BootError::InitrdTooBig { size })?;
    let count = usize::try_from(size).map_err(|_| BootError::InitrdTooBig { size })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, count)
        .map_err(|source| BootError::InitrdCopy {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(InitrdRange {
        addr: GuestAddress(addr),
        size,
    })
}

/// Writes the NUL-terminated command line at `CMDLINE_START`.
pub fn load_command_line(mem: &GuestMemoryMmap, cmdline: &str) -> Result<()> {
    let cl = Cmdline::try_from(cmdline, MAX_CMDLINE_LEN + 1).map_err(BootError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(|e| BootError::BootInfo {
        what: "command line",
        reason: e.to_string(),
    })
}

/// The guest's RAM as (start, size) ranges for the e820 map: conventional
/// memory below the EBDA, then everything from 1 MiB.
pub fn e820_ram(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    let mut out = vec![(0, EBDA_START)];
    for r in mem.iter() {
        let start = r.start_addr().raw_value().max(HIMEM_START);
        let end = r.start_addr().raw_value() + r.len();
        if end > start {
            out.push((start, end - start));
        }
    }
    debug_assert!(out
        .iter()
        .all(|(s, l)| s + l <= MMIO_GAP_START || *s >= MMIO_GAP_END));
    out
}

fn boot_info_err(
    what: &'static str,
) -> impl FnOnce(linux_loader::configurator::Error) -> BootError {
    move |e| BootError::BootInfo {
        what,
        reason: e.to_string(),
    }
}

/// Writes the zero page for the Linux 64-bit boot protocol.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &KernelEntry,
    cmdline_len: usize,
    initrd: Option<InitrdRange>,
) -> Result<()> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    params.hdr.cmd_line_ptr = u32::try_from(CMDLINE_START).unwrap_or(0);
    params.hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(0);
    if let Some(rd) = initrd {
        // Placed below the MMIO gap, so both fit in 32 bits.
        params.hdr.ramdisk_image = u32::try_from(rd.addr.raw_value()).unwrap_or(0);
        params.hdr.ramdisk_size = u32::try_from(rd.size).unwrap_or(0);
    }
    let ram = e820_ram(mem);
    for (slot, (addr, size)) in params.e820_table.iter_mut().zip(&ram) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = u8::try_from(ram.len()).unwrap_or(u8::MAX);
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(boot_info_err("zero page"))
}

/// Writes `hvm_start_info`, its memory map and module list for PVH.
pub fn write_pvh_info(mem: &GuestMemoryMmap, initrd: Option<InitrdRange>) -> Result<()> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_ram(mem)
        .into_iter()
        .map(|(addr, size)| hvm_memmap_table_entry {
            addr,
            size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = initrd
        .into_iter()
        .map(|rd| hvm_modlist_entry {
            paddr: rd.addr.raw_value(),
            size: rd.size,
            ..Default::default()
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        nr_modules: u32::try_from(modules.len()).unwrap_or(0),
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            PVH_MODLIST_START
        },
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: u32::try_from(memmap.len()).unwrap_or(0),
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(boot_info_err("PVH start info"))?;
    // The start info must be readable back at the address in %ebx.
    let magic: u32 =
        mem.read_obj(GuestAddress(PVH_INFO_START))
            .map_err(|e| BootError::BootInfo {
                what: "PVH start info",
                reason: e.to_string(),
            })?;
    debug_assert_eq!(magic, XEN_HVM_START_MAGIC);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(mib: u32) -> GuestMemoryMmap {
        crate::memory::create_guest_memory(mib).unwrap()
    }

    #[test]
    fn e820_skips_legacy_hole() {
        assert_eq!(
            e820_ram(&mem(64)),
            vec![(0, EBDA_START), (HIMEM_START, (64 << 20) - HIMEM_START)]
        );
    }

    #[test]
    fn initrd_goes_to_top_of_low_memory() {
        let m = mem(64);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &[0x5a; 10_000]).unwrap();
        let rd = load_initrd(&m, f.path(), 0x200_0000).unwrap();
        assert_eq!(rd.size, 10_000);
        assert_eq!(rd.addr.raw_value() % PAGE_SIZE, 0);
        assert!(rd.addr.raw_value() + rd.size <= 64 << 20);
        let b: u8 = m.read_obj(rd.addr).unwrap();
        assert_eq!(b, 0x5a);
        // An initrd that would overlap the kernel is refused.
        let err = load_initrd(&m, f.path(), (64 << 20) - 4096).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooBig { size: 10_000 }));
    }

    #[test]
    fn zero_page_fields() {
        let m = mem(64);
        let k = KernelEntry {
            entry: GuestAddress(0x100_0000),
            mode: EntryMode::LongMode,
            kernel_end: 0x200_0000,
            setup_header: None,
        };
        let rd = InitrdRange {
            addr: GuestAddress(0x300_0000),
            size: 1234,
        };
        write_zero_page(&m, &k, 20, Some(rd)).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 1234);
        assert_eq!(p.e820_entries, 2);
    }

    #[test]
    fn pvh_info_fields() {
        let m = mem(64);
        let rd = InitrdRange {
            addr: GuestAddress(0x300_0000),
            size: 99,
        };
        write_pvh_info(&m, Some(rd)).unwrap();
        let si: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(si.magic, XEN_HVM_START_MAGIC);
        assert_eq!(si.nr_modules, 1);
        assert_eq!(si.memmap_entries, 2);
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 99));
    }

    #[test]
    fn kernel_errors_name_the_file() {
        let m = mem(64);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 8192]).unwrap();
        let e = load_kernel(&m, f.path(), true).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot load kernel {}", f.path().display())
        );
        let cause = std::error::Error::source(&e).map(|c| c.to_string());
        assert!(
            cause.is_some_and(|c| !c.is_empty()),
            "the loader's error is the source"
        );
        let err = load_kernel(&m, Path::new("/nonexistent"), true)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "cannot read kernel /nonexistent");
    }
}
