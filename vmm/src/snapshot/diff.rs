//! The pieces of diff snapshots (see [`super::layers`]): which pages of
//! guest memory mapped from a file differ from it, identities of files,
//! and runs of pages copied between guest memory and a file laid out like
//! it.
//!
//! Which pages differ comes from `/proc/self/pagemap` (opened before the
//! jail): a page of a private file mapping that is present but no longer a
//! file page was copied on write; a swapped-out page was too. Pages that
//! are absent or still the file's are the file's.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::memory::{io, write_nonzero_runs, MemoryFileError, RegionState};

/// Guest page size.
pub(super) const PAGE: u64 = 4096;
/// pagemap: the page is present.
const PM_PRESENT: u64 = 1 << 63;
/// pagemap: the page is swapped out.
const PM_SWAPPED: u64 = 1 << 62;
/// pagemap: the page is a file page (or shared anonymous).
const PM_FILE: u64 = 1 << 61;
/// pagemap entries read at a time.
const ENTRIES: usize = 64 << 10;
/// Most bytes copied at a time.
pub(super) const COPY: u64 = 256 << 10;

/// Identifies a file: a replaced or rewritten one differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub len: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
}

impl FileId {
    /// The identity of `path`.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        Ok(Self::from_metadata(&std::fs::metadata(path)?))
    }

    /// The identity of the file `m` describes.
    pub fn from_metadata(m: &std::fs::Metadata) -> Self {
        FileId {
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

/// A run of changed pages, at `offset` in the memory file's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    /// Byte offset (page aligned).
    pub offset: u64,
    /// Length in bytes (pages).
    pub len: u64,
}

impl PageRun {
    /// The indexes of its pages in the memory file's layout.
    pub fn pages(&self) -> std::ops::Range<usize> {
        let first = usize::try_from(self.offset / PAGE).unwrap_or(usize::MAX);
        let n = usize::try_from(self.len / PAGE).unwrap_or(0);
        first..first.saturating_add(n)
    }
}

/// Which of the `pages` pages of guest memory mapped at `host` differ from
/// the file they are mapped from, by `/proc/self/pagemap` (opened as
/// `pagemap`): present but no longer a file page (copied on write), or
/// swapped out.
pub fn changed_pages(pagemap: &File, host: u64, pages: u64) -> std::io::Result<Vec<bool>> {
    let mut changed = Vec::with_capacity(usize::try_from(pages).unwrap_or(0));
    let mut entries = vec![0u8; ENTRIES * 8];
    let mut page = 0u64;
    while page < pages {
        let n = usize::try_from(pages - page)
            .unwrap_or(ENTRIES)
            .min(ENTRIES);
        let buf = entries.get_mut(..n * 8).unwrap_or_default();
        pagemap.read_exact_at(buf, (host / PAGE + page) * 8)?;
        changed.extend(buf.chunks_exact(8).map(|e| {
            let e = u64::from_ne_bytes(e.try_into().unwrap_or([0; 8]));
            e & PM_PRESENT != 0 && e & PM_FILE == 0 || e & PM_SWAPPED != 0
        }));
        page += n as u64;
    }
    Ok(changed)
}

/// The guest address of byte `offset` of the memory file.
pub(super) fn guest_addr(regions: &[RegionState], offset: u64, len: u64) -> Option<GuestAddress> {
    let end = offset.checked_add(len)?;
    let r = regions.iter().find(|r| {
        offset >= r.file_offset && r.file_offset.checked_add(r.len).is_some_and(|e| end <= e)
    })?;
    Some(GuestAddress(r.guest_addr).unchecked_add(offset - r.file_offset))
}

/// Copies `runs` of guest memory into `file` at their offsets (zero pages
/// left as holes: they read back as zeros).
pub fn write_runs(
    mem: &GuestMemoryMmap,
    regions: &[RegionState],
    runs: &[PageRun],
    (file, path): (&File, &Path),
) -> Result<(), MemoryFileError> {
    each_piece(regions, runs, path, |at, addr, buf| {
        mem.read_slice(buf, addr)
            .map_err(|e| copy_err(addr.raw_value(), path, &e.to_string()))?;
        write_nonzero_runs(file, buf, at).map_err(io("write", path))
    })
}

/// Copies a layer's `runs` (read from `file`; checked by
/// [`super::memory::MemoryState::check`]) over guest memory.
pub fn apply_runs(
    mem: &GuestMemoryMmap,
    regions: &[RegionState],
    runs: &[PageRun],
    (file, path): (&File, &Path),
) -> Result<(), MemoryFileError> {
    each_piece(regions, runs, path, |at, addr, buf| {
        file.read_exact_at(buf, at).map_err(io("read", path))?;
        mem.write_slice(buf, addr)
            .map_err(|e| copy_err(addr.raw_value(), path, &e.to_string()))
    })
}

/// Calls `f` with each piece of `runs` (at most [`COPY`] bytes, inside one
/// region): its offset in the memory file, its guest address, and a buffer
/// of its length.
fn each_piece(
    regions: &[RegionState],
    runs: &[PageRun],
    path: &Path,
    mut f: impl FnMut(u64, GuestAddress, &mut [u8]) -> Result<(), MemoryFileError>,
) -> Result<(), MemoryFileError> {
    let mut buf = Vec::new();
    for run in runs {
        let mut done = 0;
        while done < run.len {
            let n = (run.len - done).min(COPY);
            let at = run.offset + done;
            let addr = guest_addr(regions, at, n)
                .ok_or_else(|| copy_err(at, path, "outside guest memory"))?;
            buf.resize(usize::try_from(n).unwrap_or(0), 0);
            f(at, addr, &mut buf)?;
            done += n;
        }
    }
    Ok(())
}

/// A copy between guest memory and `path` failed at `addr`.
pub(super) fn copy_err(addr: u64, path: &Path, reason: &str) -> MemoryFileError {
    MemoryFileError::Copy {
        addr,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}
