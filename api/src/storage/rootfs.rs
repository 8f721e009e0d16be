//! The image rootfs cache: per image, a read-only ext4 disk image of its
//! unpacked layers, keyed by the chain key of its layer digests
//! ([`husk_layers::chain_key`]) and attached read-only to every VM of
//! that image, so the second `husk run` of an image neither unpacks nor
//! copies anything (proto/PROTOCOL.md, "Writable layer and cache").
//!
//! Layout of the cache directory:
//!
//! - `<key>.ext4`: a finished disk, renamed into place only once complete;
//! - `<key>.lock`: `flock`ed exclusively while the disk is built (so
//!   concurrent `husk run`s of one image build it once) and shared while a VM
//!   uses it ([`RootfsDisk::hold`]), so [`RootfsCache::remove_unused`] leaves
//!   it alone;
//! - `tmp-<key>-<pid>-<n>` and `tmp-<key>-<pid>-<n>.ext4`: the unpacked tree
//!   and the disk being made; removed on failure, and a killed build's are
//!   removed by the next build of that key or by `remove_unused`.
//!
//! Layers are verified and unpacked by the agent's own scoped unpacker
//! ([`husk_layers::apply_layer_file`]), never by `tar`'s.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use husk_layers::{self as layers, LayerError, UnpackOptions};
use nix::fcntl::{Flock, FlockArg};

use crate::image::oci::Manifest;
use crate::image::store::{Store, StoreError};
use crate::storage::ext4::{self, Ext4Error, MkfsOptions};

/// Rootfs cache errors.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// I/O on a cache file.
    #[error("{what} {path}")]
    Io {
        /// What was being done ("cannot create").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A layer blob is not in the store (or its digest is invalid).
    #[error("layer {digest}")]
    Store {
        /// The layer.
        digest: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// The image store could not be read.
    #[error("cannot read the image store")]
    ImageStore(#[source] StoreError),
    /// A layer failed verification or unpacking.
    #[error("layer {digest}")]
    Layer {
        /// The layer.
        digest: String,
        /// The cause.
        #[source]
        source: LayerError,
    },
    /// Making the disk image failed.
    #[error("cannot make the rootfs disk for image {key}")]
    Ext4 {
        /// The chain key.
        key: String,
        /// The cause.
        #[source]
        source: Ext4Error,
    },
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, RootfsError>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The directory of cached rootfs disks.
#[derive(Debug, Clone)]
pub struct RootfsCache {
    dir: PathBuf,
}

/// A cached rootfs disk, ready to attach read-only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RootfsDisk {
    /// The ext4 image (`<dir>/<key>.ext4`).
    pub path: PathBuf,
    /// The chain key of the image's layers.
    pub chain_key: String,
    /// Whether this call built it (a cache miss).
    pub built: bool,
    /// Time spent building (zero on a hit).
    pub build_time: Duration,
    /// Size of the disk image file.
    pub bytes: u64,
}

/// A shared lock on a cached disk, held while a VM uses it: the disk is not
/// removed by [`RootfsCache::remove_unused`] meanwhile. Released on drop (or
/// when the holding process dies).
#[derive(Debug)]
pub struct RootfsLease(#[allow(dead_code)] Flock<File>);

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn lock_file(path: &Path, arg: FlockArg) -> Result<Option<Flock<File>>> {
    crate::lockfile::lock_file(path, arg).map_err(io_err("cannot lock", path))
}

/// Bytes and inodes a tree needs on ext4 with 4 KiB blocks.
#[derive(Debug, Default)]
struct TreeSize {
    bytes: u64,
    inodes: u64,
}

const BLOCK: u64 = 4096;

fn measure(dir: &Path, seen: &mut HashSet<(u64, u64)>, size: &mut TreeSize) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_err("cannot read", dir))? {
        let entry = entry.map_err(io_err("cannot read", dir))?;
        let path = entry.path();
        let md = fs::symlink_metadata(&path).map_err(io_err("cannot stat", &path))?;
        if !seen.insert((md.dev(), md.ino())) {
            // Another hard link of a counted inode: only its entry.
            size.bytes += (8 + entry.file_name().len() as u64).next_multiple_of(4);
            continue;
        }
        // Its directory entry: 8 bytes of header and the name, 4-aligned.
        size.bytes += (8 + entry.file_name().len() as u64).next_multiple_of(4);
        size.inodes += 1;
        let ft = md.file_type();
        if ft.is_dir() {
            size.bytes += BLOCK;
            measure(&path, seen, size)?;
        } else if ft.is_file() || (ft.is_symlink() && md.len() >= 60) {
            // Symlinks under 60 bytes live in the inode.
            size.bytes += md.len().div_ceil(BLOCK) * BLOCK;
        }
    }
    Ok(())
}

/// The unpacked tree and the disk being made; both removed on drop unless
/// the disk was renamed into place.
#[derive(Debug)]
struct BuildTemp {
    tree: PathBuf,
    image: PathBuf,
}

impl Drop for BuildTemp {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.tree) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", self.tree.display());
            }
        }
        let _ = fs::remove_file(&self.image);
    }
}

/// Removes a file on drop.
#[derive(Debug)]
struct UnlinkOnDrop<'a>(&'a Path);

impl Drop for UnlinkOnDrop<'_> {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", self.0.display());
            }
        }
    }
}

impl RootfsCache {
    /// Opens (creating) the cache directory.
    pub fn open(dir: &Path) -> Result<RootfsCache> {
        fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
        Ok(RootfsCache {
            dir: dir.to_path_buf(),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The chain key of a manifest's layers.
    pub fn chain_key(manifest: &Manifest) -> String {
        layers::chain_key(manifest.layers.iter().map(|l| l.digest.as_str()))
    }

    /// Where the disk of `key` is (or would be).
    pub fn disk_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.ext4"))
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.lock"))
    }

    /// The cached disk of the manifest's image, if built (never builds).
    pub fn cached(&self, manifest: &Manifest) -> Result<Option<RootfsDisk>> {
        self.hit(&Self::chain_key(manifest))
    }

    fn hit(&self, key: &str) -> Result<Option<RootfsDisk>> {
        let path = self.disk_path(key);
        match fs::metadata(&path) {
            Ok(md) => Ok(Some(RootfsDisk {
                path,
                chain_key: key.to_string(),
                built: false,
                build_time: Duration::ZERO,
                bytes: md.len(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("cannot stat", &path)(e)),
        }
    }

    /// Returns the disk of the manifest's image, building it on a miss:
    /// under the key's lock (re-checked after locking) every layer is
    /// verified and unpacked into a temporary tree, copied into a fresh ext4
    /// image with `mkfs.ext4 -d` (no journal, no `lost+found`), synced and
    /// renamed into place. On failure nothing is left behind.
    pub fn ensure(&self, store: &Store, manifest: &Manifest) -> Result<RootfsDisk> {
        let key = Self::chain_key(manifest);
        if let Some(disk) = self.hit(&key)? {
            return Ok(disk);
        }
        let lock_path = self.lock_path(&key);
        let _lock = lock_file(&lock_path, FlockArg::LockExclusive)?;
        // Whatever happens, the lock file goes before the lock is released
        // (waiters notice and retry on a fresh one), so the cache holds only
        // finished disks.
        let _unlink = UnlinkOnDrop(&lock_path);
        if let Some(disk) = self.hit(&key)? {
            return Ok(disk);
        }
        self.build(store, manifest, &key)
    }

    /// [`ensure`](Self::ensure) and [`hold`](RootfsDisk::hold) in one: the
    /// disk, and a lease that keeps it from `remove_unused` while a VM uses
    /// it (rebuilt if it was removed between the two).
    pub fn ensure_held(
        &self,
        store: &Store,
        manifest: &Manifest,
    ) -> Result<(RootfsDisk, RootfsLease)> {
        loop {
            let disk = self.ensure(store, manifest)?;
            match disk.hold(self) {
                Ok(lease) => return Ok((disk, lease)),
                Err(RootfsError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn build(&self, store: &Store, manifest: &Manifest, key: &str) -> Result<RootfsDisk> {
        let start = Instant::now();
        self.remove_temps(Some(key))?;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("tmp-{key}-{}-{n}", std::process::id());
        let temp = BuildTemp {
            tree: self.dir.join(&base),
            image: self.dir.join(format!("{base}.ext4")),
        };
        fs::create_dir(&temp.tree).map_err(io_err("cannot create", &temp.tree))?;
        fs::set_permissions(&temp.tree, fs::Permissions::from_mode(0o755))
            .map_err(io_err("cannot chmod", &temp.tree))?;
        unpack_layers(store, manifest, &temp.tree)?;
        make_disk(key, &temp.tree, &temp.image)?;
        let path = self.disk_path(key);
        fs::rename(&temp.image, &path).map_err(io_err("cannot rename into", &path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("cannot sync", &self.dir))?;
        drop(temp);
        let bytes = fs::metadata(&path)
            .map_err(io_err("cannot stat", &path))?
            .len();
        log::info!(
            "built rootfs disk {} ({bytes} bytes) in {:?}",
            path.display(),
            start.elapsed()
        );
        Ok(RootfsDisk {
            path,
            chain_key: key.to_string(),
            built: true,
            build_time: start.elapsed(),
            bytes,
        })
    }

    /// Removes the temporaries of builds that died: of `key` only (the
    /// caller holds its lock), or of every key whose lock is free.
    fn remove_temps(&self, key: Option<&str>) -> Result<()> {
        for entry in fs::read_dir(&self.dir).map_err(io_err("cannot read", &self.dir))? {
            let entry = entry.map_err(io_err("cannot read", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("tmp-") else {
                continue;
            };
            let Some((k, _)) = rest.split_once('-') else {
                continue;
            };
            let lock_path = self.lock_path(k);
            let _lock = match key {
                Some(key) if key == k => None,
                Some(_) => continue,
                None => match lock_file(&lock_path, FlockArg::LockExclusiveNonblock)? {
                    Some(l) => Some(l),
                    None => continue,
                },
            };
            // Taken here only to clean up: removed again before unlocking.
            let _unlink = _lock.as_ref().map(|_| UnlinkOnDrop(&lock_path));
            let path = entry.path();
            let res = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            res.map_err(io_err("cannot remove", &path))?;
        }
        Ok(())
    }

    /// Removes every cached disk whose key is not in `keep` and that is not
    /// being built or used (its lock is free), plus temporaries of dead
    /// builds; returns how many disks went.
    pub fn remove_unused(&self, keep: &HashSet<String>) -> Result<usize> {
        self.remove_temps(None)?;
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir).map_err(io_err("cannot read", &self.dir))? {
            let entry = entry.map_err(io_err("cannot read", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".ext4") else {
                continue;
            };
            if key.starts_with("tmp-") || keep.contains(key) {
                continue;
            }
            let lock_path = self.lock_path(key);
            let Some(_lock) = lock_file(&lock_path, FlockArg::LockExclusiveNonblock)? else {
                continue;
            };
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("cannot remove", &path))?;
            fs::remove_file(&lock_path).map_err(io_err("cannot remove", &lock_path))?;
            removed += 1;
        }
        Ok(removed)
    }
}

impl RootfsDisk {
    /// Takes a shared lock on this disk for as long as a VM uses it, so
    /// [`RootfsCache::remove_unused`] skips it. Fails if the disk was
    /// removed meanwhile.
    pub fn hold(&self, cache: &RootfsCache) -> Result<RootfsLease> {
        let lock_path = cache.lock_path(&self.chain_key);
        let lock = lock_file(&lock_path, FlockArg::LockShared)?
            .ok_or_else(|| io_err("cannot lock", &lock_path)(io::ErrorKind::WouldBlock.into()))?;
        if !self.path.exists() {
            return Err(io_err("cannot use", &self.path)(
                io::ErrorKind::NotFound.into(),
            ));
        }
        Ok(RootfsLease(lock))
    }
}

/// Verifies and unpacks every layer of `manifest` into `tree` (an existing,
/// empty directory) with the scoped unpacker: the image's root file system.
pub fn unpack_layers(store: &Store, manifest: &Manifest, tree: &Path) -> Result<()> {
    let opts = UnpackOptions::default();
    for layer in &manifest.layers {
        let blob = store
            .blob_path(&layer.digest)
            .map_err(|source| RootfsError::Store {
                digest: layer.digest.clone(),
                source,
            })?;
        layers::apply_layer_file(
            tree,
            &blob,
            &layer.digest,
            &layer.media_type,
            Some(layer.size),
            &opts,
        )
        .map_err(|source| RootfsError::Layer {
            digest: layer.digest.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The chain keys of every image tagged in `store`: what
/// [`RootfsCache::remove_unused`] keeps after `husk rmi` or for `husk gc`.
pub fn referenced_keys(store: &Store) -> Result<HashSet<String>> {
    let mut keys = HashSet::new();
    for digest in store.refs().map_err(RootfsError::ImageStore)?.values() {
        let manifest = store.manifest(digest).map_err(RootfsError::ImageStore)?;
        keys.insert(RootfsCache::chain_key(&manifest));
    }
    Ok(keys)
}

/// Makes the read-only ext4 image of `tree` at `image`, sized from the tree
/// (1.2× its blocks and inode tables, plus 16 MiB), without `lost+found`,
/// and syncs it.
fn make_disk(key: &str, tree: &Path, image: &Path) -> Result<()> {
    let mut size = TreeSize::default();
    measure(tree, &mut HashSet::new(), &mut size)?;
    let inodes = size.inodes + size.inodes / 5 + 64;
    let raw = size.bytes + inodes * 256;
    let bytes = (raw + raw / 5 + (16 << 20)).div_ceil(BLOCK) * BLOCK;
    let f = File::create(image).map_err(io_err("cannot create", image))?;
    f.set_len(bytes).map_err(io_err("cannot size", image))?;
    let ext4 = |source| RootfsError::Ext4 {
        key: key.to_string(),
        source,
    };
    ext4::mkfs(
        image,
        &MkfsOptions {
            label: "husk-rootfs",
            tree: Some(tree),
            inodes: Some(inodes),
            no_journal: true,
            extended: None,
        },
    )
    .map_err(ext4)?;
    ext4::debugfs(image, "rmdir lost+found", true).map_err(ext4)?;
    f.sync_all().map_err(io_err("cannot sync", image))?;
    Ok(())
}
