//! Guest memory in a snapshot: every RAM region written back to back to one
//! file; on restore, each region is that file mapped `MAP_PRIVATE`, so
//! pages load on first touch and guest writes stay private (copy-on-write)
//! and never reach the snapshot.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;

use super::diff;
use super::layers::{self, BaseMemory, Opened};
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

/// Memory errors.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// The memory file could not be created, written or opened.
    #[error("cannot {op} guest memory file {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Guest memory could not be copied out.
    #[error("cannot copy guest memory at {addr:#x} to {path}: {reason}")]
    Copy {
        /// Guest address of the region.
        addr: u64,
        /// The file.
        path: PathBuf,
        /// vm-memory's message.
        reason: String,
    },
    /// The memory file is shorter or longer than the regions it backs.
    #[error("guest memory file {path} is {have} bytes, the snapshot needs {want}")]
    Size {
        /// The file.
        path: PathBuf,
        /// Its length.
        have: u64,
        /// The regions' total.
        want: u64,
    },
    /// The file could not be mapped.
    #[error("cannot map guest memory file {path}: {reason}")]
    Map {
        /// The file.
        path: PathBuf,
        /// vm-memory's message.
        reason: String,
    },
    /// The layout in the state is not one husk-vmm writes.
    #[error("the snapshot's memory layout is invalid: {0}")]
    Layout(String),
    /// A memory file a diff snapshot builds on is gone or was replaced.
    #[error("the memory file {path} this snapshot builds on is gone or was replaced")]
    BaseChanged {
        /// The base file.
        path: PathBuf,
    },
}

/// One RAM region and where it lies in the memory file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    /// Guest physical start.
    pub guest_addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset in the memory file.
    pub file_offset: u64,
}

impl RegionState {
    /// The indexes of its pages in the memory file's layout.
    pub fn pages(&self) -> std::ops::Range<usize> {
        diff::PageRun {
            offset: self.file_offset,
            len: self.len,
        }
        .pages()
    }
}

/// The layout of guest memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryState {
    /// Regions in address order.
    pub regions: Vec<RegionState>,
    /// A diff snapshot: memory is this base file's with its layers over
    /// it (see [`super::layers`]).
    #[serde(default)]
    pub base: Option<BaseMemory>,
}

impl MemoryState {
    /// Bytes the memory file holds.
    pub fn total(&self) -> u64 {
        self.regions
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.len))
    }

    /// Refuses a layout husk-vmm does not write (the state file comes from
    /// a jailed husk-vmm): at most [`MAX_REGIONS`] regions of whole pages,
    /// in address order without overlap, back to back in the file; at most
    /// [`layers::MAX_LAYERS`] layers, each with runs of whole pages inside
    /// one region, in order without overlap.
    pub fn check(&self) -> Result<(), MemoryFileError> {
        let bad = |why: String| Err(MemoryFileError::Layout(why));
        if self.regions.is_empty() || self.regions.len() > MAX_REGIONS {
            return bad(format!("{} regions", self.regions.len()));
        }
        let (mut offset, mut next_addr) = (0u64, 0u64);
        for r in &self.regions {
            let end = r.guest_addr.checked_add(r.len);
            let whole = whole_pages(r.guest_addr, r.len);
            if !whole || end.is_none() || r.guest_addr < next_addr || r.file_offset != offset {
                return bad(format!("region {r:?}"));
            }
            next_addr = end.unwrap_or(u64::MAX);
            offset = offset.saturating_add(r.len);
        }
        let layers = self.base.iter().flat_map(|b| &b.layers);
        if layers.clone().count() > layers::MAX_LAYERS {
            return bad(format!("more than {} layers", layers::MAX_LAYERS));
        }
        for layer in layers {
            let mut after = 0u64;
            for run in &layer.runs {
                let whole = whole_pages(run.offset, run.len);
                let inside = diff::guest_addr(&self.regions, run.offset, run.len).is_some();
                if !whole || !inside || run.offset < after {
                    return bad(format!("run {run:?} of layer {}", layer.path.display()));
                }
                after = run.offset + run.len;
            }
        }
        Ok(())
    }
}

/// Whether `len` bytes from `start` are one or more whole pages.
fn whole_pages(start: u64, len: u64) -> bool {
    len > 0 && (start | len).is_multiple_of(PAGE as u64)
}

/// The most RAM regions a layout has.
pub const MAX_REGIONS: usize = 16;

/// Context for an I/O error: `op` failed on `path`.
pub(super) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> MemoryFileError + 'a {
    move |source| MemoryFileError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The unit of the memory file's holes.
const PAGE: usize = 4096;

/// Whether `page` holds only zero bytes.
fn is_zero(page: &[u8]) -> bool {
    let words = page.chunks_exact(8);
    let tail = words.remainder();
    tail.iter().all(|b| *b == 0)
        && words
            .map(|w| u64::from_ne_bytes(w.try_into().unwrap_or([1; 8])))
            .all(|w| w == 0)
}

/// Writes every region of `mem` to `path` and returns the layout. Zero
/// pages are left as holes: the file is sparse (an idle guest's memory
/// is mostly pages it never touched) and reads back the same. Memory is
/// copied out 256 KiB at a time and each run of non-zero pages written
/// with one call ([`diff::write_runs`] over the whole regions).
pub fn save(mem: &GuestMemoryMmap, path: &Path) -> Result<MemoryState, MemoryFileError> {
    let file = File::create(path).map_err(io("create", path))?;
    let regions = layout(mem);
    let whole: Vec<diff::PageRun> = regions
        .iter()
        .map(|r| diff::PageRun {
            offset: r.file_offset,
            len: r.len,
        })
        .collect();
    diff::write_runs(mem, &regions, &whole, (&file, path))?;
    let state = MemoryState {
        regions,
        base: None,
    };
    finish(&file, path, state)
}

/// Where each region goes in the memory file: back to back.
pub(super) fn layout(mem: &GuestMemoryMmap) -> Vec<RegionState> {
    let mut offset = 0u64;
    mem.iter()
        .map(|r| {
            let l = RegionState {
                guest_addr: r.start_addr().raw_value(),
                len: r.len(),
                file_offset: offset,
            };
            offset += r.len();
            l
        })
        .collect()
}

/// Sizes and syncs a written memory file.
fn finish(file: &File, path: &Path, state: MemoryState) -> Result<MemoryState, MemoryFileError> {
    file.set_len(state.total()).map_err(io("size", path))?;
    file.sync_all().map_err(io("sync", path))?;
    Ok(state)
}

/// Writes the runs of non-zero pages of `buf` at `at` in `file` (zero
/// pages stay holes).
pub(super) fn write_nonzero_runs(file: &File, buf: &[u8], at: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    for pages in true_runs(buf.chunks(PAGE).map(|p| !is_zero(p))) {
        let (from, to) = (pages.start * PAGE, (pages.end * PAGE).min(buf.len()));
        if let Some(run) = buf.get(from..to) {
            file.write_all_at(run, at + from as u64)?;
        }
    }
    Ok(())
}

/// The runs of consecutive `true` in `flags`, as index ranges.
pub(super) fn true_runs(flags: impl IntoIterator<Item = bool>) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = None;
    let mut end = 0;
    for (i, on) in flags.into_iter().enumerate() {
        match (on, start) {
            (true, None) => start = Some(i),
            (false, Some(from)) => {
                runs.push(from..i);
                start = None;
            }
            _ => {}
        }
        end = i + 1;
    }
    if let Some(from) = start {
        runs.push(from..end);
    }
    runs
}

/// Maps guest memory laid out as `state` says copy-on-write: from memory
/// file `path`, or for a diff snapshot from its base with its layers over
/// it (see [`layers`]). Returns it and the files it comes from, open.
pub fn restore(
    state: &MemoryState,
    path: &Path,
) -> Result<(GuestMemoryMmap, Opened), MemoryFileError> {
    state.check()?;
    let base = layers::open_base(state, path)?;
    let mapped = base.layer.path.clone();
    let file = Arc::new(base.file.try_clone().map_err(io("duplicate", &mapped))?);
    let map_err = |reason: String| MemoryFileError::Map {
        path: mapped.clone(),
        reason,
    };
    let mut regions = Vec::with_capacity(state.regions.len());
    for r in &state.regions {
        let size = usize::try_from(r.len).map_err(|_| map_err("region too large".into()))?;
        let mapping = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::from_arc(file.clone(), r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_err(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
            .ok_or_else(|| map_err(format!("region at {:#x} wraps", r.guest_addr)))?;
        regions.push(region);
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.to_string()))?;
    let opened = layers::apply(&mem, state, base)?;
    Ok((mem, opened))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn round_trip_is_copy_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x100000), 0x2000),
        ])
        .unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0x55_u8, GuestAddress(0x101fff)).unwrap();
        let state = save(&mem, &path).unwrap();
        assert_eq!(state.total(), 0x12000);
        assert_eq!(state.regions[1].file_offset, 0x10000);
        // Two pages hold data; the rest are holes.
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 0x12000);
        assert!(meta.blocks() * 512 < 0x12000, "{} blocks", meta.blocks());

        let back = restore(&state, &path).unwrap().0;
        assert_eq!(
            back.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(back.read_obj::<u8>(GuestAddress(0x101fff)).unwrap(), 0x55);
        // Writes to the restored guest never reach the file.
        back.write_obj(1u32, GuestAddress(0x1000)).unwrap();
        let again = restore(&state, &path).unwrap().0;
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
    }

    #[test]
    fn runs_of_pages_are_written_whole_and_zero_pages_stay_holes() {
        // How much `save` copies at a time.
        let chunk = usize::try_from(diff::COPY).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let len = chunk + 3 * PAGE;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)]).unwrap();
        // A run of three pages, one page alone, a run across the chunk's
        // end, and the last page.
        for (addr, v) in [
            (0x1000u64, 1u8),
            (0x2fff, 2),
            (0x3000, 3),
            (0x6000, 4),
            (chunk as u64 - 1, 5),
            (chunk as u64, 6),
            (len as u64 - 1, 7),
        ] {
            mem.write_obj(v, GuestAddress(addr)).unwrap();
        }
        let state = save(&mem, &path).unwrap();
        let file = std::fs::read(&path).unwrap();
        assert_eq!(file.len(), len);
        let mut want = vec![0u8; len];
        for (addr, v) in [(0x1000usize, 1u8), (0x2fff, 2), (0x3000, 3), (0x6000, 4)] {
            want[addr] = v;
        }
        want[chunk - 1] = 5;
        want[chunk] = 6;
        want[len - 1] = 7;
        assert!(file == want, "the memory file differs from guest memory");
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(blocks < 16 * PAGE as u64, "{blocks} bytes allocated");
        let back = restore(&state, &path).unwrap().0;
        assert_eq!(
            back.read_obj::<u8>(GuestAddress(len as u64 - 1)).unwrap(),
            7
        );
    }

    #[test]
    fn runs_of_true_flags() {
        let runs = |f: &[u8]| true_runs(f.iter().map(|b| *b == 1));
        assert_eq!(runs(&[]), []);
        assert_eq!(runs(&[0, 0]), []);
        assert_eq!(runs(&[1, 1, 0, 1, 0, 0, 1]), [0..2, 3..4, 6..7]);
        assert_eq!(runs(&[0, 1, 1, 0, 1]), [1..3, 4..5]);
    }

    #[test]
    fn a_short_memory_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let state = save(&mem, &path).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0x8000)
            .unwrap();
        let e = restore(&state, &path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "guest memory file {} is 32768 bytes, the snapshot needs 65536",
                path.display()
            )
        );
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use crate::snapshot::diff::{FileId, PageRun};
    use crate::snapshot::layers::Layer;

    const P: u64 = 4096;

    fn state(regions: &[(u64, u64, u64)], runs: &[(u64, u64)]) -> MemoryState {
        let layer = Layer {
            path: "layer".into(),
            id: FileId {
                ino: 1,
                len: 0,
                mtime: (0, 0),
            },
            runs: runs
                .iter()
                .map(|&(offset, len)| PageRun { offset, len })
                .collect(),
        };
        MemoryState {
            regions: regions
                .iter()
                .map(|&(guest_addr, len, file_offset)| RegionState {
                    guest_addr,
                    len,
                    file_offset,
                })
                .collect(),
            base: Some(BaseMemory {
                path: "base".into(),
                id: FileId {
                    ino: 2,
                    len: 0,
                    mtime: (0, 0),
                },
                layers: vec![layer],
            }),
        }
    }

    #[test]
    fn layouts_husk_vmm_writes_pass() {
        let two = [(0, 8 * P, 0), (0x100000, 4 * P, 8 * P)];
        state(&two, &[(P, 2 * P), (3 * P, P), (8 * P, 4 * P)])
            .check()
            .unwrap();
        state(&two, &[]).check().unwrap();
    }

    #[test]
    fn hostile_layouts_are_refused() {
        let two = [(0, 8 * P, 0), (0x100000, 4 * P, 8 * P)];
        let bad_regions: [&[(u64, u64, u64)]; 6] = [
            &[],
            &[(0, 0, 0)],
            &[(1, P, 0)],
            &[(0, 2 * P, 0), (P, P, 2 * P)],
            &[(0, P, 0), (0x10000, P, 0)],
            &[(u64::MAX - P + 1, 2 * P, 0)],
        ];
        for regions in bad_regions {
            let e = state(regions, &[]).check().unwrap_err().to_string();
            assert!(e.contains("memory layout is invalid"), "{regions:?}: {e}");
        }
        let bad_runs: [&[(u64, u64)]; 6] = [
            &[(1, P)],
            &[(P, 100)],
            &[(P, 0)],
            &[(7 * P, 2 * P)],
            &[(12 * P, P)],
            &[(2 * P, P), (P, P)],
        ];
        for runs in bad_runs {
            assert!(state(&two, runs).check().is_err(), "{runs:?}");
        }
        let mut many = state(&two, &[]);
        let layer = many.base.as_ref().unwrap().layers[0].clone();
        many.base.as_mut().unwrap().layers = vec![layer; crate::snapshot::layers::MAX_LAYERS + 1];
        assert!(many.check().is_err());
        let huge = state(&[(0, !(P - 1), 0), (!(P - 1), P, 0)], &[]);
        assert_eq!(huge.total(), u64::MAX);
    }
}
