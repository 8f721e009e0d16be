//! Diff snapshots of guest memory that is mapped from a file (a VM
//! restored from a template or a checkpoint maps its memory file
//! `MAP_PRIVATE`): only the pages that differ from that file are written,
//! and a restore maps the same base file and copies those pages over it.
//! Every microVM restored from one base then shares its unchanged pages
//! in the host's page cache (how `husk fork` children share memory with
//! each other and with every start from the same template), and the
//! snapshot reads only the changed pages instead of all guest memory.
//!
//! Which pages differ comes from `/proc/self/pagemap` (opened before the
//! jail): a page of a private file mapping that is present but no longer a
//! file page was copied on write; a swapped-out page was too. Pages that
//! are absent or still the file's are the base's.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

use super::memory::{true_runs, write_nonzero_runs, MemoryFileError, RegionState};

/// Guest page size.
const PAGE: u64 = 4096;
/// pagemap: the page is present.
const PM_PRESENT: u64 = 1 << 63;
/// pagemap: the page is swapped out.
const PM_SWAPPED: u64 = 1 << 62;
/// pagemap: the page is a file page (or shared anonymous).
const PM_FILE: u64 = 1 << 61;
/// pagemap entries read at a time.
const ENTRIES: usize = 64 << 10;
/// Most bytes copied at a time.
pub(super) const COPY: u64 = 2 << 20;

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
        Ok(Self::from(&std::fs::metadata(path)?))
    }

    fn from(m: &std::fs::Metadata) -> Self {
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

/// The base a diff snapshot's memory file is applied to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseMemory {
    /// The base memory file.
    pub path: PathBuf,
    /// Its identity when the snapshot was taken.
    pub id: FileId,
    /// The pages the diff file holds; all others are the base's.
    pub dirty: Vec<PageRun>,
}

/// The file guest memory is mapped from (held open), and this process's
/// pagemap.
#[derive(Debug)]
pub struct MappedFrom {
    path: PathBuf,
    id: FileId,
    file: File,
    pagemap: File,
}

impl MappedFrom {
    /// Guest memory mapped from `path`; opens it and `/proc/self/pagemap`
    /// now (the jail has neither).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        Ok(MappedFrom {
            path: path.to_path_buf(),
            id: FileId::from(&file.metadata()?),
            file,
            pagemap: File::open("/proc/self/pagemap")?,
        })
    }

    /// Whether the mapped file is still linked and unchanged, so a restore
    /// (which opens it by its path) finds it: one removed (a discarded
    /// template, a deleted checkpoint) has no links left.
    pub fn still_there(&self) -> bool {
        self.file
            .metadata()
            .is_ok_and(|m| m.nlink() > 0 && FileId::from(&m) == self.id)
    }

    /// The runs of pages of `mem` (laid out as `regions`) that differ from
    /// the file.
    pub fn dirty_runs(
        &self,
        mem: &GuestMemoryMmap,
        regions: &[RegionState],
    ) -> std::io::Result<Vec<PageRun>> {
        let mut runs = Vec::new();
        for (r, layout) in mem.iter().zip(regions) {
            let host = r
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| std::io::Error::other(e.to_string()))? as u64;
            let changed = self.changed_pages(host, layout.len / PAGE)?;
            runs.extend(true_runs(changed).into_iter().map(|pages| PageRun {
                offset: layout.file_offset + pages.start as u64 * PAGE,
                len: pages.len() as u64 * PAGE,
            }));
        }
        Ok(runs)
    }

    /// Whether each of the `pages` pages mapped at `host` differs from the
    /// file, from the page map.
    fn changed_pages(&self, host: u64, pages: u64) -> std::io::Result<Vec<bool>> {
        let mut changed = Vec::with_capacity(usize::try_from(pages).unwrap_or(0));
        let mut entries = vec![0u8; ENTRIES * 8];
        let mut page = 0u64;
        while page < pages {
            let n = usize::try_from(pages - page)
                .unwrap_or(ENTRIES)
                .min(ENTRIES);
            let buf = entries.get_mut(..n * 8).unwrap_or_default();
            self.pagemap.read_exact_at(buf, (host / PAGE + page) * 8)?;
            changed.extend(buf.chunks_exact(8).map(|e| {
                let e = u64::from_ne_bytes(e.try_into().unwrap_or([0; 8]));
                e & PM_PRESENT != 0 && e & PM_FILE == 0 || e & PM_SWAPPED != 0
            }));
            page += n as u64;
        }
        Ok(changed)
    }

    /// The base a diff taken now refers to, with its `dirty` runs.
    pub fn base(&self, dirty: Vec<PageRun>) -> BaseMemory {
        BaseMemory {
            path: self.path.clone(),
            id: self.id,
            dirty,
        }
    }
}

/// The guest address of byte `offset` of the memory file.
fn guest_addr(regions: &[RegionState], offset: u64, len: u64) -> Option<GuestAddress> {
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
        write_nonzero_runs(file, buf, at).map_err(|source| MemoryFileError::Io {
            op: "write",
            path: path.to_path_buf(),
            source,
        })
    })
}

/// Copies a diff file's `runs` (read from `file`) over guest memory.
pub fn apply_runs(
    mem: &GuestMemoryMmap,
    regions: &[RegionState],
    runs: &[PageRun],
    (file, path): (&File, &Path),
) -> Result<(), MemoryFileError> {
    if let Some(run) = runs
        .iter()
        .find(|r| r.offset % PAGE != 0 || r.len % PAGE != 0)
    {
        return Err(copy_err(
            run.offset,
            path,
            "a changed-page run is not page aligned",
        ));
    }
    each_piece(regions, runs, path, |at, addr, buf| {
        file.read_exact_at(buf, at)
            .map_err(|source| MemoryFileError::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            })?;
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

fn copy_err(addr: u64, path: &Path, reason: &str) -> MemoryFileError {
    MemoryFileError::Copy {
        addr,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}
