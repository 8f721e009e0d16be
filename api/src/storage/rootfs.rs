//! The image rootfs cache: per image, a read-only ext4 disk image of its
//! unpacked layers, keyed by the chain key of its layer digests
//! ([`chain_key`]) and attached read-only to every VM of that image, so the
//! second `husk run` of an image neither unpacks nor copies anything
//! (proto/PROTOCOL.md, "Writable layer and cache").
//!
//! Layers are never unpacked on the host. On a miss the host writes the
//! blob disk (the verified blobs, concatenated: [`super::blobdisk`]) and an
//! empty ext4 disk sized from the layers (`mkfs.ext4` without `-d`: no
//! image content), and a [`DiskBuilder`] fills it: in production a builder
//! microVM (`container::supervisor::builder`), whose agent verifies every
//! blob and unpacks it into the disk. Only when it reports success and has
//! ended is the disk synced and renamed into the cache; the host never
//! parses a tar entry, mounts or checks the disk the guest wrote.
//!
//! Layout of the cache directory:
//!
//! - `<key>.ext4`: a finished disk, renamed into place only once complete;
//! - `<key>.lock`: `flock`ed exclusively while the disk is built (so
//!   concurrent `husk run`s of one image build it once) and shared while a VM
//!   uses it ([`RootfsDisk::hold`]), so [`RootfsCache::remove_unused`] leaves
//!   it alone;
//! - `tmp-<key>-<pid>-<n>.blobs` and `tmp-<key>-<pid>-<n>.ext4`: the blob
//!   disk and the disk being made; removed on failure, and a killed build's
//!   are removed by the next build of that key or by `remove_unused`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use husk_proto::agent::{chain_key, BuildRequest};
use nix::fcntl::{Flock, FlockArg};

use crate::image::oci::Manifest;
use crate::image::store::{Store, StoreError};
use crate::storage::blobdisk::{self, BlobDiskError};
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
    /// The image store could not be read.
    #[error("cannot read the image store")]
    ImageStore(#[source] StoreError),
    /// The blob disk could not be written.
    #[error("cannot prepare the layers of image {key}")]
    BlobDisk {
        /// The chain key.
        key: String,
        /// The cause.
        #[source]
        source: BlobDiskError,
    },
    /// The builder failed (a bad blob or layer, a full disk, a guest that
    /// did not answer in time, ...).
    #[error("cannot build the rootfs disk of image {key}")]
    Build {
        /// The chain key.
        key: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Making the empty disk image failed.
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

/// One build: unpack the layers of `request`, read from the blob disk
/// `blobs`, into the empty ext4 file system `target`.
#[derive(Debug, Clone, Copy)]
pub struct BuildJob<'a> {
    /// The chain key of the image.
    pub key: &'a str,
    /// The blob disk (read-only for the builder).
    pub blobs: &'a Path,
    /// The empty ext4 disk to fill.
    pub target: &'a Path,
    /// The layers, as extents of `blobs`.
    pub request: &'a BuildRequest,
}

/// What fills a rootfs disk from a blob disk: in husk, a builder microVM.
/// Returns only once it has finished writing `target` (its VM has ended).
pub trait DiskBuilder {
    /// Builds, or fails with the cause on one line.
    fn build(
        &self,
        job: &BuildJob<'_>,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

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

/// How often a start waiting for another's build of the same disk looks.
const BUILD_POLL: Duration = Duration::from_millis(50);

/// A shared lock on a cached disk, held while a VM uses it: the disk is not
/// removed by [`RootfsCache::remove_unused`] meanwhile. Released on drop (or
/// when the holding process dies).
#[derive(Debug)]
pub struct RootfsLease(#[allow(dead_code)] Flock<File>);

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn lock_file(path: &Path, arg: FlockArg) -> Result<Option<Flock<File>>> {
    crate::lockfile::lock_file(path, arg).map_err(io_err("cannot lock", path))
}

/// The blob disk and the disk being made; both removed on drop (the disk
/// only if it was not renamed into place).
#[derive(Debug)]
struct BuildTemp {
    blobs: PathBuf,
    image: PathBuf,
}

impl Drop for BuildTemp {
    fn drop(&mut self) {
        for f in [&self.blobs, &self.image] {
            if let Err(e) = fs::remove_file(f) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("cannot remove {}: {e}", f.display());
                }
            }
        }
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
        chain_key(manifest.layers.iter().map(|l| l.digest.as_str()))
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
    /// under the key's lock (re-checked after locking) the blob disk and an
    /// empty ext4 disk (no journal) are made, `builder` fills the latter,
    /// and it is synced and renamed into place. On failure nothing is left
    /// behind.
    pub fn ensure(
        &self,
        store: &Store,
        manifest: &Manifest,
        builder: &dyn DiskBuilder,
    ) -> Result<RootfsDisk> {
        let key = Self::chain_key(manifest);
        if let Some(disk) = self.hit(&key)? {
            return Ok(disk);
        }
        let lock_path = self.lock_path(&key);
        // Never wait for the lock: a VM of the finished disk holds it shared
        // for as long as it runs. Poll: the disk appears, or the lock is
        // free to build it.
        let _lock = loop {
            if let Some(l) = lock_file(&lock_path, FlockArg::LockExclusiveNonblock)? {
                break l;
            }
            if let Some(disk) = self.hit(&key)? {
                return Ok(disk);
            }
            std::thread::sleep(BUILD_POLL);
        };
        // Whatever happens, the lock file goes before the lock is released
        // (waiters notice and retry on a fresh one), so the cache holds only
        // finished disks.
        let _unlink = UnlinkOnDrop(&lock_path);
        if let Some(disk) = self.hit(&key)? {
            return Ok(disk);
        }
        self.build(store, manifest, &key, builder)
    }

    /// [`ensure`](Self::ensure) and [`hold`](RootfsDisk::hold) in one: the
    /// disk, and a lease that keeps it from `remove_unused` while a VM uses
    /// it (rebuilt if it was removed between the two).
    pub fn ensure_held(
        &self,
        store: &Store,
        manifest: &Manifest,
        builder: &dyn DiskBuilder,
    ) -> Result<(RootfsDisk, RootfsLease)> {
        loop {
            let disk = self.ensure(store, manifest, builder)?;
            match disk.hold(self) {
                Ok(lease) => return Ok((disk, lease)),
                Err(RootfsError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn build(
        &self,
        store: &Store,
        manifest: &Manifest,
        key: &str,
        builder: &dyn DiskBuilder,
    ) -> Result<RootfsDisk> {
        let start = Instant::now();
        self.remove_temps(Some(key))?;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("tmp-{key}-{}-{n}", std::process::id());
        let temp = BuildTemp {
            blobs: self.dir.join(format!("{base}.blobs")),
            image: self.dir.join(format!("{base}.ext4")),
        };
        let request = blobdisk::write(store, &manifest.layers, &temp.blobs).map_err(|source| {
            RootfsError::BlobDisk {
                key: key.to_string(),
                source,
            }
        })?;
        let compressed = request.layers.iter().map(|l| l.size).sum();
        let image = make_empty_disk(key, &temp.image, blobdisk::target_size(compressed))?;
        let job = BuildJob {
            key,
            blobs: &temp.blobs,
            target: &temp.image,
            request: &request,
        };
        builder.build(&job).map_err(|source| RootfsError::Build {
            key: key.to_string(),
            source,
        })?;
        image
            .sync_all()
            .map_err(io_err("cannot sync", &temp.image))?;
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

/// Makes the empty ext4 file system at `image` (a new sparse file of
/// `size`): no journal (the disk is read-only once built), root owned by
/// root; nothing of the image goes in. Returns the open file, for syncing
/// once the builder has filled it.
fn make_empty_disk(key: &str, image: &Path, size: blobdisk::TargetSize) -> Result<File> {
    let f = File::options()
        .write(true)
        .create_new(true)
        .open(image)
        .map_err(io_err("cannot create", image))?;
    f.set_len(size.bytes)
        .map_err(io_err("cannot size", image))?;
    ext4::mkfs(
        image,
        &MkfsOptions {
            label: "husk-rootfs",
            tree: None,
            inodes: Some(size.inodes),
            no_journal: true,
            extended: Some("root_owner=0:0"),
        },
    )
    .map_err(|source| RootfsError::Ext4 {
        key: key.to_string(),
        source,
    })?;
    Ok(f)
}
