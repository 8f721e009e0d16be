//! Layered memory for diff snapshots (how `husk fork` children share the
//! pages their parent changed).
//!
//! A microVM restored from a snapshot maps a base memory file (a
//! template's or a checkpoint's) `MAP_PRIVATE`. A diff snapshot of it
//! writes only the pages that differ into a new file, a *layer*, laid out
//! like the base (holes elsewhere), in the snapshot directory's
//! [`LAYERS_DIR`]; its state lists the base and every layer, oldest first.
//! A restore maps the base, then each layer's runs of pages over it
//! (`MAP_PRIVATE | MAP_FIXED`), so the pages stay in the host's page cache
//! once, however many microVMs map them.
//!
//! The VM that wrote a layer keeps it in its chain: its own pages there
//! are private copies, but they equal the layer's until the guest writes
//! them again. The next diff snapshot compares each page that is not the
//! file's any more (from the page map) with what the chain would restore
//! there, and writes only those that differ. So the second fork of an
//! idle container writes a few pages, and every fork maps the first
//! fork's layer: ten forks hold the parent's changed pages once.
//!
//! A chain is at most [`MAX_LAYERS`] long. A longer one keeps its oldest
//! half; the pages of the layers it drops go into the new layer. Layers
//! this VM wrote and dropped are unlinked at its next snapshot (a fork
//! restored from the snapshot before maps them by then); those of a chain
//! it was restored from are another VM's. A layer whose file is gone is
//! dropped the same way.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::{
    Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use super::diff::{self, copy_err, FileId, PageRun, PAGE};
use super::memory::{io, true_runs, MemoryFileError, MemoryState, RegionState};

/// The directory of a snapshot directory that layers are written into
/// (it stays when the snapshot is moved away).
pub const LAYERS_DIR: &str = "layers";
/// The longest chain of layers.
pub const MAX_LAYERS: usize = 8;
/// Most runs of pages a restore maps; the runs of later layers are copied.
const MAX_MAPPED_RUNS: usize = 16 << 10;
/// Most pages compared at a time.
const COMPARE_PAGES: usize = 16;

/// A layer: a file of changed pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// The file.
    pub path: PathBuf,
    /// Its identity when the layer was written.
    pub id: FileId,
    /// The pages it holds (byte ranges of the memory layout).
    pub runs: Vec<PageRun>,
}

/// What a diff snapshot's memory is: a base file and layers over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseMemory {
    /// The base memory file.
    pub path: PathBuf,
    /// Its identity when the snapshot was taken.
    pub id: FileId,
    /// Layers applied over it, oldest first.
    pub layers: Vec<Layer>,
}

/// An open file of the chain.
#[derive(Debug)]
pub(super) struct Held {
    /// Where it is, its identity and (a layer's) runs.
    pub(super) layer: Layer,
    /// The file, open for reading.
    pub(super) file: File,
    /// This VM wrote it (in its own layers directory).
    owned: bool,
}

impl Held {
    /// Whether the file is still linked and unchanged.
    fn still_there(&self) -> bool {
        self.file
            .metadata()
            .is_ok_and(|m| m.nlink() > 0 && FileId::from_metadata(&m) == self.layer.id)
    }
}

/// The files a restored VM's memory comes from, held open.
#[derive(Debug)]
pub struct Opened {
    base: Held,
    layers: Vec<Held>,
}

/// Guest memory that comes from a base file and layers (held open), with
/// this process's page map.
#[derive(Debug)]
pub struct MappedFrom {
    base: Held,
    layers: Vec<Held>,
    /// Layers this VM wrote and dropped, unlinked at the next snapshot.
    retired: Vec<PathBuf>,
    /// Layers written so far (the next one's name).
    written: u64,
    pagemap: File,
}

impl MappedFrom {
    /// The restored VM's files, and `/proc/self/pagemap` opened now (the
    /// jail has neither).
    pub fn new(opened: Opened) -> std::io::Result<Self> {
        Ok(MappedFrom {
            base: opened.base,
            layers: opened.layers,
            retired: Vec::new(),
            written: 0,
            pagemap: File::open("/proc/self/pagemap")?,
        })
    }

    /// Whether the base file is still linked and unchanged, so a restore
    /// finds it: one removed (a discarded template, a deleted checkpoint)
    /// has no links left.
    pub fn still_there(&self) -> bool {
        self.base.still_there()
    }

    /// Writes the pages of `mem` that differ from what the chain restores
    /// into a new layer in `dir`'s [`LAYERS_DIR`] (none when no page does).
    /// Returns the layout, with the chain, for the snapshot's state, and
    /// the bytes written.
    pub fn save_layer(
        &mut self,
        mem: &GuestMemoryMmap,
        dir: &Path,
    ) -> Result<(MemoryState, u64), MemoryFileError> {
        for path in std::mem::take(&mut self.retired) {
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("cannot remove dropped layer {}: {e}", path.display());
            }
        }
        let regions = super::memory::layout(mem);
        let total = regions.iter().map(|r| r.len).sum::<u64>();
        let (kept, dropped) = self.split_chain();
        let mut candidates = self
            .written_pages(mem, &regions, total)
            .map_err(io("read the page map for", dir))?;
        for held in &dropped {
            mark(&mut candidates, &held.layer.runs);
        }
        let owner = owners(&kept, candidates.len());
        let differ = differing(mem, &regions, &candidates, (&owner, &kept, &self.base))?;
        let runs = to_runs(&regions, &differ);
        let mut layers = kept;
        if !runs.is_empty() {
            let written = self.write_layer(mem, &regions, &runs, dir, total)?;
            layers.push(written);
        }
        self.retired = dropped
            .into_iter()
            .filter(|h| h.owned)
            .map(|h| h.layer.path)
            .collect();
        let chain = layers.iter().map(|h| h.layer.clone()).collect();
        self.layers = layers;
        let state = MemoryState {
            regions,
            base: Some(BaseMemory {
                path: self.base.layer.path.clone(),
                id: self.base.layer.id,
                layers: chain,
            }),
        };
        Ok((state, runs.iter().map(|r| r.len).sum()))
    }

    /// Splits the chain into the layers a new snapshot keeps (present,
    /// at most half of [`MAX_LAYERS`] once it is full) and those it drops.
    fn split_chain(&mut self) -> (Vec<Held>, Vec<Held>) {
        let cap = if self.layers.len() >= MAX_LAYERS {
            MAX_LAYERS / 2
        } else {
            MAX_LAYERS
        };
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for held in self.layers.drain(..) {
            if kept.len() < cap && held.still_there() {
                kept.push(held);
            } else {
                dropped.push(held);
            }
        }
        (kept, dropped)
    }

    /// Per page of the memory layout: written since restored (not the
    /// mapped file's any more).
    fn written_pages(
        &self,
        mem: &GuestMemoryMmap,
        regions: &[RegionState],
        total: u64,
    ) -> std::io::Result<Vec<bool>> {
        let mut pages = vec![false; usize::try_from(total / PAGE).unwrap_or(0)];
        for (r, layout) in mem.iter().zip(regions) {
            let host = r
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| std::io::Error::other(e.to_string()))? as u64;
            let changed = diff::changed_pages(&self.pagemap, host, layout.len / PAGE)?;
            let first = layout.pages().start;
            for (p, c) in pages.iter_mut().skip(first).zip(changed) {
                *p = c;
            }
        }
        Ok(pages)
    }

    /// Writes `runs` of `mem` into a new layer file in `dir`.
    fn write_layer(
        &mut self,
        mem: &GuestMemoryMmap,
        regions: &[RegionState],
        runs: &[PageRun],
        dir: &Path,
        total: u64,
    ) -> Result<Held, MemoryFileError> {
        let dir = dir.join(LAYERS_DIR);
        std::fs::create_dir_all(&dir).map_err(io("create the directory of", &dir))?;
        let (path, file) = loop {
            self.written += 1;
            let path = dir.join(format!("{}-{}.mem", std::process::id(), self.written));
            match File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("create", &path)(e)),
            }
        };
        diff::write_runs(mem, regions, runs, (&file, &path))?;
        file.set_len(total).map_err(io("size", &path))?;
        file.sync_all().map_err(io("sync", &path))?;
        // Forks map the layer: no writable descriptor of it stays here
        // (the supervisor checks before it hands the layer to root).
        drop(file);
        let file = File::open(&path).map_err(io("open", &path))?;
        let meta = file.metadata().map_err(io("stat", &path))?;
        Ok(Held {
            layer: Layer {
                path,
                id: FileId::from_metadata(&meta),
                runs: runs.to_vec(),
            },
            file,
            owned: true,
        })
    }
}

/// Sets the pages of `runs` in `pages`.
fn mark(pages: &mut [bool], runs: &[PageRun]) {
    for run in runs {
        let r = run.pages();
        for p in pages.iter_mut().skip(r.start).take(r.len()) {
            *p = true;
        }
    }
}

/// Per page: which file a restore takes it from (0 the base, `i + 1`
/// layer `i`: the last layer holding it).
fn owners(layers: &[Held], pages: usize) -> Vec<u8> {
    let mut owner = vec![0u8; pages];
    for (i, held) in layers.iter().enumerate() {
        let tag = u8::try_from(i + 1).unwrap_or(u8::MAX);
        for run in &held.layer.runs {
            let r = run.pages();
            for o in owner.iter_mut().skip(r.start).take(r.len()) {
                *o = tag;
            }
        }
    }
    owner
}

/// Per page: whether it is a `candidate` whose bytes in `mem` differ from
/// those of the file that owns it.
fn differing(
    mem: &GuestMemoryMmap,
    regions: &[RegionState],
    candidates: &[bool],
    (owner, layers, base): (&[u8], &[Held], &Held),
) -> Result<Vec<bool>, MemoryFileError> {
    let page_bytes = usize::try_from(PAGE).unwrap_or(4096);
    let max = COMPARE_PAGES;
    let tag_of = |p: usize| owner.get(p).copied().unwrap_or(0);
    let mut differ = vec![false; candidates.len()];
    let (mut have, mut want) = (Vec::new(), Vec::new());
    for run in region_runs(regions, candidates) {
        let mut page = run.start;
        while page < run.end {
            let tag = tag_of(page);
            let end = (page + 1..run.end.min(page + max))
                .find(|p| tag_of(*p) != tag)
                .unwrap_or(run.end.min(page + max));
            let from = usize::from(tag)
                .checked_sub(1)
                .and_then(|i| layers.get(i))
                .unwrap_or(base);
            let (offset, len) = (page as u64 * PAGE, (end - page) as u64 * PAGE);
            read_both(mem, regions, (offset, len), from, (&mut have, &mut want))?;
            let pages = have.chunks(page_bytes).zip(want.chunks(page_bytes));
            for (d, (h, w)) in differ.iter_mut().skip(page).zip(pages) {
                *d = h != w;
            }
            page = end;
        }
    }
    Ok(differ)
}

/// The runs of set `pages` (indexes into the memory layout), split where
/// one region ends.
fn region_runs(regions: &[RegionState], pages: &[bool]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    for r in regions {
        let own_pages = r.pages();
        let first = own_pages.start;
        let Some(own) = pages.get(first..own_pages.end.min(pages.len())) else {
            continue;
        };
        runs.extend(
            true_runs(own.iter().copied())
                .into_iter()
                .map(|run| first + run.start..first + run.end),
        );
    }
    runs
}

/// Reads `len` bytes at layout offset `offset` from guest memory into
/// `have` and from `from`'s file into `want`.
fn read_both(
    mem: &GuestMemoryMmap,
    regions: &[RegionState],
    (offset, len): (u64, u64),
    from: &Held,
    (have, want): (&mut Vec<u8>, &mut Vec<u8>),
) -> Result<(), MemoryFileError> {
    let path = &from.layer.path;
    let n = usize::try_from(len).unwrap_or(0);
    have.resize(n, 0);
    want.resize(n, 0);
    let addr = diff::guest_addr(regions, offset, len)
        .ok_or_else(|| copy_err(offset, path, "outside guest memory"))?;
    mem.read_slice(have, addr)
        .map_err(|e| copy_err(offset, path, &e.to_string()))?;
    from.file
        .read_exact_at(want, offset)
        .map_err(io("read", path))
}

/// The runs of set pages, as byte ranges inside one region each.
fn to_runs(regions: &[RegionState], pages: &[bool]) -> Vec<PageRun> {
    region_runs(regions, pages)
        .into_iter()
        .map(|r| PageRun {
            offset: r.start as u64 * PAGE,
            len: r.len() as u64 * PAGE,
        })
        .collect()
}

/// Opens `path`, which must be the file `id` and hold `total` bytes.
fn open_checked(path: &Path, id: Option<FileId>, total: u64) -> Result<Held, MemoryFileError> {
    let file = File::open(path).map_err(io("open", path))?;
    let meta = file.metadata().map_err(io("stat", path))?;
    let have = FileId::from_metadata(&meta);
    if id.is_some_and(|id| have != id) {
        return Err(MemoryFileError::BaseChanged {
            path: path.to_path_buf(),
        });
    }
    if meta.len() != total {
        return Err(MemoryFileError::Size {
            path: path.to_path_buf(),
            have: meta.len(),
            want: total,
        });
    }
    Ok(Held {
        layer: Layer {
            path: path.to_path_buf(),
            id: have,
            runs: Vec::new(),
        },
        file,
        owned: false,
    })
}

/// Opens the file guest memory of `state` is mapped from: the base of a
/// diff snapshot, else the snapshot's memory file `own`.
pub(super) fn open_base(state: &MemoryState, own: &Path) -> Result<Held, MemoryFileError> {
    let (path, id) = match &state.base {
        Some(b) => (b.path.as_path(), Some(b.id)),
        None => (own, None),
    };
    open_checked(path, id, state.total())
}

/// Puts the layers of `state` over `mem` (mapped from `base`): each run of
/// pages mapped from its layer, up to [`MAX_MAPPED_RUNS`], then copied.
/// Returns the open files.
pub(super) fn apply(
    mem: &GuestMemoryMmap,
    state: &MemoryState,
    base: Held,
) -> Result<Opened, MemoryFileError> {
    let mut layers = Vec::new();
    let mut mapped = 0usize;
    for layer in state.base.iter().flat_map(|b| &b.layers) {
        let mut held = open_checked(&layer.path, Some(layer.id), state.total())?;
        held.layer.runs = layer.runs.clone();
        mapped += layer.runs.len();
        if mapped <= MAX_MAPPED_RUNS {
            map_runs(mem, &state.regions, &layer.runs, (&held.file, &layer.path))?;
        } else {
            diff::apply_runs(mem, &state.regions, &layer.runs, (&held.file, &layer.path))?;
        }
        layers.push(held);
    }
    Ok(Opened { base, layers })
}

/// Maps each of `runs` (checked by [`MemoryState::check`]) of `file` over the same pages of `mem`,
/// privately.
fn map_runs(
    mem: &GuestMemoryMmap,
    regions: &[RegionState],
    runs: &[PageRun],
    (file, path): (&File, &Path),
) -> Result<(), MemoryFileError> {
    for run in runs {
        let fail = |reason: &str| copy_err(run.offset, path, reason);
        let addr = diff::guest_addr(regions, run.offset, run.len)
            .ok_or_else(|| fail("outside guest memory"))?;
        let host = mem
            .get_host_address(addr)
            .map_err(|e| fail(&e.to_string()))?;
        let len = usize::try_from(run.len).map_err(|_| fail("run too long"))?;
        let offset = libc::off_t::try_from(run.offset).map_err(|_| fail("offset too large"))?;
        // SAFETY: `host..host + len` lies inside one region of `mem` (the
        // run was checked against the layout, which `mem` was mapped
        // from), a private mapping this restore made and no vCPU, device
        // or KVM memory slot uses yet; MAP_FIXED replaces exactly those
        // pages with the layer's, copy-on-write, and `mem` unmaps the
        // whole region when dropped.
        let got = unsafe {
            libc::mmap(
                host.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                offset,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(MemoryFileError::Map {
                path: path.to_path_buf(),
                reason: std::io::Error::last_os_error().to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::memory::{restore, save};
    use vm_memory::{GuestAddress, GuestMemoryRegion};

    const P: u64 = PAGE;

    fn mark(page: u64) -> u8 {
        u8::try_from(page % 200).unwrap() + 1
    }

    /// A template: 64 marked pages and a second region of 4.
    fn template(dir: &Path) -> (PathBuf, MemoryState) {
        let path = dir.join("template");
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 64 * 4096),
            (GuestAddress(0x100000), 4 * 4096),
        ])
        .unwrap();
        for page in 0..64u64 {
            mem.write_obj(mark(page), GuestAddress(page * P)).unwrap();
        }
        let state = save(&mem, &path).unwrap();
        (path, state)
    }

    /// A VM restored from `state` (memory file `path` when whole).
    fn restored(state: &MemoryState, path: &Path) -> (GuestMemoryMmap, MappedFrom) {
        let (mem, opened) = restore(state, path).unwrap();
        (mem, MappedFrom::new(opened).unwrap())
    }

    fn bytes(mem: &GuestMemoryMmap) -> Vec<u8> {
        let mut all = Vec::new();
        for r in mem.iter() {
            let mut buf = vec![0u8; usize::try_from(r.len()).unwrap()];
            mem.read_slice(&mut buf, r.start_addr()).unwrap();
            all.extend(buf);
        }
        all
    }

    fn layer_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join(LAYERS_DIR)).map_or(0, |d| d.count())
    }

    #[test]
    fn a_fork_restores_the_parents_memory_and_maps_its_layer() {
        let dir = tempfile::tempdir().unwrap();
        let (path, state) = template(dir.path());
        let (parent, mut from) = restored(&state, &path);
        // Every page read (still the file's); three changed: one rewritten,
        // one zeroed, one in the second region.
        let _ = bytes(&parent);
        parent.write_obj(0xaau8, GuestAddress(5 * P + 7)).unwrap();
        parent
            .write_slice(&[0u8; 4096], GuestAddress(9 * P))
            .unwrap();
        parent
            .write_obj(0x55u8, GuestAddress(0x100000 + P))
            .unwrap();
        let (first, written) = from.save_layer(&parent, dir.path()).unwrap();
        assert_eq!(written, 3 * P);
        let base = first.base.as_ref().unwrap();
        assert_eq!(base.path, path);
        assert_eq!(base.layers.len(), 1);
        let (fork, mut fork_from) = restored(&first, Path::new("/nonexistent"));
        assert!(bytes(&fork) == bytes(&parent), "the fork's memory differs");
        // The fork maps the layer: nothing of it counts as changed, and its
        // own diff keeps the chain.
        let own = tempfile::tempdir().unwrap();
        let (again, written) = fork_from.save_layer(&fork, own.path()).unwrap();
        assert_eq!(written, 0);
        assert_eq!(again.base, first.base);
        assert_eq!(layer_files(own.path()), 0);
    }

    #[test]
    fn the_second_fork_writes_only_what_changed_since_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let (path, state) = template(dir.path());
        let (parent, mut from) = restored(&state, &path);
        for page in [3u64, 4, 5, 20] {
            parent.write_obj(0xeeu8, GuestAddress(page * P)).unwrap();
        }
        let (first, written) = from.save_layer(&parent, dir.path()).unwrap();
        assert_eq!(written, 4 * P);
        // Page 4 is written again with the same byte (a private copy still,
        // equal to the layer's); page 5 gets another; page 30 is new.
        parent.write_obj(0xeeu8, GuestAddress(4 * P)).unwrap();
        parent.write_obj(0x11u8, GuestAddress(5 * P)).unwrap();
        parent.write_obj(0x22u8, GuestAddress(30 * P)).unwrap();
        let (second, written) = from.save_layer(&parent, dir.path()).unwrap();
        assert_eq!(written, 2 * P);
        let layers = &second.base.as_ref().unwrap().layers;
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0], first.base.as_ref().unwrap().layers[0]);
        let (fork, _) = restored(&second, Path::new("/nonexistent"));
        assert!(
            bytes(&fork) == bytes(&parent),
            "the second fork's memory differs"
        );
        // The first fork's snapshot still restores what the parent was.
        let (old, _) = restored(&first, Path::new("/nonexistent"));
        assert_eq!(old.read_obj::<u8>(GuestAddress(5 * P)).unwrap(), 0xee);
        assert_eq!(old.read_obj::<u8>(GuestAddress(30 * P)).unwrap(), mark(30));
    }

    #[test]
    fn a_full_chain_keeps_its_oldest_half_and_removes_what_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (path, state) = template(dir.path());
        let (parent, mut from) = restored(&state, &path);
        let mut last = None;
        for i in 0..(MAX_LAYERS as u64 + 1) {
            parent
                .write_obj(0x80u8, GuestAddress((10 + i) * P))
                .unwrap();
            let (s, written) = from.save_layer(&parent, dir.path()).unwrap();
            // The last finds the chain full: the pages of the newer half
            // go into its layer with its own.
            let want = if i < MAX_LAYERS as u64 {
                1
            } else {
                MAX_LAYERS as u64 / 2 + 1
            };
            assert_eq!(written, want * P, "save {i}");
            last = Some(s);
        }
        let last = last.unwrap();
        let layers = &last.base.as_ref().unwrap().layers;
        assert_eq!(layers.len(), MAX_LAYERS / 2 + 1);
        let (fork, _) = restored(&last, Path::new("/nonexistent"));
        assert!(bytes(&fork) == bytes(&parent), "the fork's memory differs");
        // The dropped layers go at the next snapshot, not before.
        assert_eq!(layer_files(dir.path()), MAX_LAYERS + 1);
        parent.write_obj(0x81u8, GuestAddress(40 * P)).unwrap();
        from.save_layer(&parent, dir.path()).unwrap();
        assert_eq!(layer_files(dir.path()), MAX_LAYERS / 2 + 2);
    }

    #[test]
    fn a_removed_layer_is_written_again_and_refuses_old_restores() {
        let dir = tempfile::tempdir().unwrap();
        let (path, state) = template(dir.path());
        let (parent, mut from) = restored(&state, &path);
        parent.write_obj(0x33u8, GuestAddress(7 * P)).unwrap();
        let (first, _) = from.save_layer(&parent, dir.path()).unwrap();
        // A fork of a fork: the child maps the parent's layer.
        let (child, mut child_from) = restored(&first, Path::new("/nonexistent"));
        let layer = first.base.as_ref().unwrap().layers[0].path.clone();
        std::fs::remove_file(&layer).unwrap();
        let e = restore(&first, Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot open guest memory file"), "{e}");
        // Both the parent (a private copy) and the child (the layer's
        // page) write the page again, into layers of their own.
        let (again, written) = from.save_layer(&parent, dir.path()).unwrap();
        assert_eq!(written, P);
        assert_eq!(again.base.as_ref().unwrap().layers.len(), 1);
        let own = tempfile::tempdir().unwrap();
        let (grand, written) = child_from.save_layer(&child, own.path()).unwrap();
        assert_eq!(written, P);
        let (g, _) = restored(&grand, Path::new("/nonexistent"));
        assert_eq!(g.read_obj::<u8>(GuestAddress(7 * P)).unwrap(), 0x33);
        assert!(
            bytes(&g) == bytes(&parent),
            "the grandchild's memory differs"
        );
    }

    #[test]
    fn a_replaced_base_or_layer_refuses_the_restore() {
        let dir = tempfile::tempdir().unwrap();
        let (path, state) = template(dir.path());
        let (parent, mut from) = restored(&state, &path);
        parent.write_obj(0x44u8, GuestAddress(2 * P)).unwrap();
        let (first, _) = from.save_layer(&parent, dir.path()).unwrap();
        let layer = first.base.as_ref().unwrap().layers[0].path.clone();
        std::fs::copy(&layer, dir.path().join("copy")).unwrap();
        std::fs::rename(dir.path().join("copy"), &layer).unwrap();
        let e = restore(&first, Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is gone or was replaced"), "{e}");
        std::fs::remove_file(&path).unwrap();
        assert!(!from.still_there());
        save(&parent, &path).unwrap();
        let e = restore(&first, Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is gone or was replaced"), "{e}");
    }

    #[test]
    fn runs_split_where_a_region_ends() {
        let regions = [
            RegionState {
                guest_addr: 0,
                len: 2 * P,
                file_offset: 0,
            },
            RegionState {
                guest_addr: 0x100000,
                len: 2 * P,
                file_offset: 2 * P,
            },
        ];
        let pages = [false, true, true, true];
        assert_eq!(
            to_runs(&regions, &pages),
            [
                PageRun { offset: P, len: P },
                PageRun {
                    offset: 2 * P,
                    len: 2 * P
                }
            ]
        );
    }
}
