//! Named volumes: ext4 disk images the host keeps, attached to a container's
//! VM as virtio-blk and mounted at the volume's path, so data written by one
//! container is read by the next (`docker volume` semantics).
//!
//! Layout under the volumes directory:
//!
//! - `<name>/disk.ext4`: the disk (sparse, 1 GiB by default);
//! - `<name>/volume.json`: when it was made and its size;
//! - `<name>/lock`: `flock`ed exclusively for the lifetime of the VM using
//!   it ([`Volumes::lock`]), holding that container's id, so a SIGKILLed
//!   holder frees it;
//! - `.tmp-…`, `.rm-…`: a volume being made or removed (names cannot start
//!   with a dot, so these never collide with a volume).

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::lockfile::lock_file;
use crate::storage::ext4::{self, Ext4Error, MkfsOptions};

/// The size of a volume made without `--size`: 1 GiB (sparse).
pub const DEFAULT_SIZE: u64 = 1 << 30;
/// The smallest volume.
pub const MIN_SIZE: u64 = 8 << 20;

const DISK: &str = "disk.ext4";
const META: &str = "volume.json";
const LOCK: &str = "lock";

/// Volume errors.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Not a valid volume name.
    #[error(
        "invalid volume name {0:?}: names must be at least 2 characters of \
         [a-zA-Z0-9_.-], starting with a letter or digit"
    )]
    InvalidName(String),
    /// A bad size.
    #[error("invalid volume size {0:?}: give bytes or a number with k, m, g or t (at least 8m)")]
    InvalidSize(String),
    /// No such volume.
    #[error("no such volume: {0}")]
    NoSuchVolume(String),
    /// Removing a volume a container uses.
    #[error("volume is in use: {name} (container {holder})")]
    InUse {
        /// The volume.
        name: String,
        /// The container using it.
        holder: String,
    },
    /// Locking a volume another VM holds.
    #[error("volume {name} is in use by container {holder}")]
    Locked {
        /// The volume.
        name: String,
        /// The container holding it.
        holder: String,
    },
    /// I/O on a volume file.
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
    /// `volume.json` is unreadable.
    #[error("invalid volume metadata {path}")]
    Meta {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Making the file system failed.
    #[error("cannot make the file system of volume {name}")]
    Ext4 {
        /// The volume.
        name: String,
        /// The cause.
        #[source]
        source: Ext4Error,
    },
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, VolumeError>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A named volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// The ext4 disk image to attach.
    pub disk: PathBuf,
    /// When it was made (RFC 3339, UTC, seconds).
    pub created: String,
    /// The disk's size in bytes (sparse: the space used is less).
    pub size_bytes: u64,
}

/// What `volume.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    /// RFC 3339 creation time.
    created: String,
    /// Disk size in bytes.
    size_bytes: u64,
}

/// The volumes directory.
#[derive(Debug, Clone)]
pub struct Volumes {
    root: PathBuf,
}

/// An exclusive lock on a volume, held for a VM's lifetime; released (and
/// its holder id cleared) on drop, and by the kernel if the holder dies.
#[derive(Debug)]
pub struct VolumeLock {
    lock: Flock<File>,
    name: String,
}

impl VolumeLock {
    /// The locked volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::os::fd::AsFd for VolumeLock {
    /// The locked file: a process that inherits it (e.g. the VMM) keeps the
    /// volume locked for as long as it lives.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.lock.as_fd()
    }
}

impl Drop for VolumeLock {
    fn drop(&mut self) {
        let _ = self.lock.set_len(0);
    }
}

/// Whether `name` is a valid volume name, as Docker's local driver has it:
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]+` (at most 255 bytes: it is a directory).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b.len() <= 255
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn check_name(name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(VolumeError::InvalidName(name.to_string()))
    }
}

/// Parses a size: bytes, or a number with a binary suffix `k`, `m`, `g`,
/// `t` (optionally followed by `b` or `ib`, any case); at least
/// [`MIN_SIZE`].
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || VolumeError::InvalidSize(s.to_string());
    let lower = s.trim().to_ascii_lowercase();
    let num_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(num_end);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(1 << shift).ok_or_else(bad)?;
    if bytes < MIN_SIZE {
        return Err(bad());
    }
    Ok(bytes)
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_name(kind: &str, name: &str) -> String {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".{kind}-{name}-{}-{n}", std::process::id())
}

/// Removes a directory on drop unless disarmed.
#[derive(Debug)]
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = fs::remove_dir_all(&p) {
                log::warn!("cannot remove {}: {e}", p.display());
            }
        }
    }
}

impl Volumes {
    /// Opens (creating) the volumes directory.
    pub fn open(root: &Path) -> Result<Volumes> {
        fs::create_dir_all(root).map_err(io_err("cannot create", root))?;
        let v = Volumes {
            root: root.to_path_buf(),
        };
        v.remove_dead_temps();
        Ok(v)
    }

    /// Removes `.tmp-`/`.rm-` directories left by processes that died (the
    /// pid in their name is gone); best effort.
    fn remove_dead_temps(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name
                .strip_prefix(".tmp-")
                .or_else(|| name.strip_prefix(".rm-"))
            else {
                continue;
            };
            // <name>-<pid>-<n>
            let mut parts = rest.rsplitn(3, '-');
            let (_, Some(pid)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(pid) = pid.parse::<i32>().ok().filter(|p| *p > 0) else {
                continue;
            };
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                .map_or_else(|e| e != nix::errno::Errno::ESRCH, |()| true);
            if !alive {
                let path = entry.path();
                if let Err(e) = fs::remove_dir_all(&path) {
                    log::warn!("cannot remove {}: {e}", path.display());
                }
            }
        }
    }

    /// The volumes directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The volume `name` ("no such volume: NAME" when missing).
    pub fn get(&self, name: &str) -> Result<Volume> {
        check_name(name)?;
        let dir = self.dir(name);
        let meta_path = dir.join(META);
        let bytes = match fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::NoSuchVolume(name.to_string()))
            }
            Err(e) => return Err(io_err("cannot read", &meta_path)(e)),
        };
        let meta: Meta = serde_json::from_slice(&bytes).map_err(|source| VolumeError::Meta {
            path: meta_path,
            source,
        })?;
        Ok(Volume {
            name: name.to_string(),
            disk: dir.join(DISK),
            created: meta.created,
            size_bytes: meta.size_bytes,
        })
    }

    /// Creates the volume `name` with a fresh ext4 file system of `size`
    /// bytes ([`DEFAULT_SIZE`] when `None`); an existing volume is returned
    /// as it is, as `docker volume create` does.
    pub fn create(&self, name: &str, size: Option<u64>) -> Result<Volume> {
        self.create_inner(name, size).map(|(v, _)| v)
    }

    /// The volume `name`, created with the default size when missing (as
    /// `docker run -v NAME:/path` does); `true` when this call created it.
    pub fn ensure(&self, name: &str) -> Result<(Volume, bool)> {
        match self.get(name) {
            Ok(v) => Ok((v, false)),
            Err(VolumeError::NoSuchVolume(_)) => self.create_inner(name, None),
            Err(e) => Err(e),
        }
    }

    fn create_inner(&self, name: &str, size: Option<u64>) -> Result<(Volume, bool)> {
        match self.get(name) {
            Ok(v) => return Ok((v, false)),
            Err(VolumeError::NoSuchVolume(_)) => {}
            Err(e) => return Err(e),
        }
        let size_bytes = size.unwrap_or(DEFAULT_SIZE);
        if size_bytes < MIN_SIZE {
            return Err(VolumeError::InvalidSize(size_bytes.to_string()));
        }
        let tmp = self.root.join(tmp_name("tmp", name));
        fs::create_dir(&tmp).map_err(io_err("cannot create", &tmp))?;
        let mut guard = TempDir(Some(tmp.clone()));
        let disk = tmp.join(DISK);
        let f = File::create(&disk).map_err(io_err("cannot create", &disk))?;
        f.set_len(size_bytes)
            .map_err(io_err("cannot size", &disk))?;
        ext4::mkfs(
            &disk,
            &MkfsOptions {
                label: "husk-volume",
                tree: None,
                inodes: None,
                no_journal: false,
                extended: Some("root_owner=0:0,lazy_itable_init=1"),
            },
        )
        .map_err(|source| VolumeError::Ext4 {
            name: name.to_string(),
            source,
        })?;
        f.sync_all().map_err(io_err("cannot sync", &disk))?;
        let meta = Meta {
            created: crate::time::now_rfc3339(),
            size_bytes,
        };
        let meta_path = tmp.join(META);
        let json = serde_json::to_vec_pretty(&meta).map_err(|source| VolumeError::Meta {
            path: meta_path.clone(),
            source,
        })?;
        write_synced(&meta_path, &json)?;
        let dir = self.dir(name);
        match fs::rename(&tmp, &dir) {
            Ok(()) => {
                guard.0 = None;
                sync_dir(&self.root)?;
                Ok((self.get(name)?, true))
            }
            // Made concurrently by another `husk volume create`: theirs wins.
            Err(e) if dir.join(META).exists() => {
                log::debug!("volume {name} appeared meanwhile ({e})");
                Ok((self.get(name)?, false))
            }
            Err(e) => Err(io_err("cannot rename into", &dir)(e)),
        }
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<Volume>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err("cannot read", &self.root))? {
            let entry = entry.map_err(io_err("cannot read", &self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if valid_name(&name) {
                names.push(name);
            }
        }
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match self.get(&name) {
                Ok(v) => out.push(v),
                // Removed meanwhile.
                Err(VolumeError::NoSuchVolume(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Removes the volume `name` and its data; refused while a VM holds
    /// it. With `force`, a missing volume is not an error (as
    /// `docker volume rm -f`). Returns whether it existed.
    pub fn remove(&self, name: &str, force: bool) -> Result<bool> {
        let vol = match self.get(name) {
            Ok(v) => v,
            Err(VolumeError::NoSuchVolume(_)) if force => return Ok(false),
            Err(e) => return Err(e),
        };
        let dir = self.dir(name);
        let lock_path = dir.join(LOCK);
        let _lock = match lock_file(&lock_path, FlockArg::LockExclusiveNonblock) {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Err(VolumeError::InUse {
                    name: vol.name,
                    holder: read_holder(&lock_path),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && force => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::NoSuchVolume(name.to_string()))
            }
            Err(e) => return Err(io_err("cannot lock", &lock_path)(e)),
        };
        // Disappear atomically, then delete at leisure.
        let gone = self.root.join(tmp_name("rm", name));
        fs::rename(&dir, &gone).map_err(io_err("cannot rename", &dir))?;
        fs::remove_dir_all(&gone).map_err(io_err("cannot remove", &gone))?;
        Ok(true)
    }

    /// Locks `vol` for the VM of container `holder`: exclusive and
    /// non-blocking, so a second lock (or `remove`) fails with "volume NAME
    /// is in use by container HOLDER" until this one is dropped or its
    /// process dies.
    pub fn lock(&self, vol: &Volume, holder: &str) -> Result<VolumeLock> {
        let lock_path = self.dir(&vol.name).join(LOCK);
        let mut lock = match lock_file(&lock_path, FlockArg::LockExclusiveNonblock) {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Err(VolumeError::Locked {
                    name: vol.name.clone(),
                    holder: read_holder(&lock_path),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::NoSuchVolume(vol.name.clone()))
            }
            Err(e) => return Err(io_err("cannot lock", &lock_path)(e)),
        };
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(holder.as_bytes()))
            .map_err(io_err("cannot write", &lock_path))?;
        Ok(VolumeLock {
            lock,
            name: vol.name.clone(),
        })
    }
}

/// The holder id recorded in a lock file ("unknown" if unreadable).
fn read_holder(lock_path: &Path) -> String {
    let mut s = String::new();
    match File::open(lock_path).and_then(|f| f.take(256).read_to_string(&mut s)) {
        Ok(_) if !s.trim().is_empty() => s.trim().to_string(),
        _ => "unknown".to_string(),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io_err("cannot create", path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err("cannot write", path))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_docker() {
        for ok in ["ab", "a1", "data", "my_vol.2-x", "0abc"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "_ab",
            ".ab",
            "-ab",
            "a/b",
            "a b",
            "ä1",
            "..",
            &"a".repeat(256),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("10GB").unwrap(), 10 << 30);
        assert_eq!(parse_size("16777216").unwrap(), 16 << 20);
        for bad in ["", "1m", "x", "1q", "-5g", "99999999999999t"] {
            assert!(
                matches!(parse_size(bad), Err(VolumeError::InvalidSize(_))),
                "{bad:?}"
            );
        }
    }
}
