//! A container's checkpoints (`husk checkpoint create|ls|rm`, `husk start
//! --checkpoint`): each is a directory `checkpoints/<NAME>/` in the
//! container's directory holding husk-vmm's snapshot (`state`, `memory`:
//! the whole microVM, the container's processes included), a copy of the
//! writable-layer disk (`rw.ext4`) as it was at that instant, and
//! [`META_FILE`] (what the restore needs from the host: the address the
//! guest has configured, and which image disk its page cache reflects).
//!
//! husk-vmm writes a checkpoint into `checkpoints/.staging/` (the one
//! directory its jail keeps for it); the files are then moved into
//! `.<NAME>.partial/`, completed there and renamed to `<NAME>`, so a
//! checkpoint that exists is whole. A crash leaves only staging or partial
//! directories, emptied at the next start.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Handle;

/// What a checkpoint records besides the VM's state.
pub const META_FILE: &str = "checkpoint.json";
/// The writable-layer disk's copy in a checkpoint.
pub const DISK_FILE: &str = "rw.ext4";
/// Where husk-vmm writes a checkpoint being made.
const STAGING: &str = ".staging";
/// Where husk-vmm writes the memory layers of forks, in its staging
/// directory: each fork's state refers to them by path, so they stay
/// there (not moved with the checkpoint) until the VM stops.
pub const LAYERS_DIR: &str = "layers";
/// Longest checkpoint name.
const MAX_NAME: usize = 128;

/// Checkpoint errors.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A name outside `[A-Za-z0-9][A-Za-z0-9_.-]*`.
    #[error("invalid checkpoint name {0:?}: use letters, digits, '_', '.' and '-' (not first)")]
    BadName(String),
    /// No such checkpoint.
    #[error("no checkpoint {name} for container {container}")]
    NotFound {
        /// The checkpoint.
        name: String,
        /// The container.
        container: String,
    },
    /// The name is taken.
    #[error("checkpoint {name} already exists for container {container}")]
    Exists {
        /// The checkpoint.
        name: String,
        /// The container.
        container: String,
    },
    /// The checkpoint was made with another image disk.
    #[error(
        "checkpoint {0} was made with another build of the image's disk; it cannot be restored"
    )]
    DiskChanged(String),
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metadata file is unreadable.
    #[error("checkpoint metadata {path}")]
    Meta {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

type Result<T> = std::result::Result<T, CheckpointError>;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io { what, path, source }
}

/// Identifies a disk file: a rebuilt one differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskId {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub len: u64,
    /// Modification time, seconds.
    pub mtime: i64,
}

impl DiskId {
    /// The identity of `path`.
    pub fn of(path: &Path) -> Result<Self> {
        let m = fs::metadata(path).map_err(io_err("cannot stat", path))?;
        Ok(DiskId {
            ino: m.ino(),
            len: m.len(),
            mtime: m.mtime(),
        })
    }
}

/// What a restore needs besides the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// When it was made (RFC 3339).
    pub created: String,
    /// The address lease the guest has configured (`None`: no network).
    pub lease_index: Option<u32>,
    /// The container's init, as the guest numbers it.
    pub guest_pid: Option<i32>,
    /// The image disk the guest had mounted.
    pub rootfs: DiskId,
    /// Execs run so far: the next gets this number (the agent remembers
    /// their ids, and their stdio ports follow from it).
    #[serde(default)]
    pub next_exec: u32,
    /// Made by `husk fork` from this container: the restore takes an
    /// address of its own and tells the guest.
    #[serde(default)]
    pub fork_of: Option<String>,
}

/// A checkpoint as `checkpoint ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its name.
    pub name: String,
    /// Its metadata.
    pub meta: Meta,
}

/// Whether `name` can name a checkpoint.
pub fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && name.len() <= MAX_NAME {
        Ok(())
    } else {
        Err(CheckpointError::BadName(name.to_string()))
    }
}

/// The checkpoints of one container.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    container: String,
}

impl Checkpoints {
    /// Those of container `h`.
    pub fn of(h: &Handle) -> Self {
        Self::at(&h.dir, &h.id)
    }

    /// Those of container `id` whose directory is `container_dir`.
    pub fn at(container_dir: &Path, id: &str) -> Self {
        Checkpoints {
            dir: container_dir.join("checkpoints"),
            container: id.to_string(),
        }
    }

    /// The directory of checkpoint `name` (checked).
    pub fn path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.dir.join(name))
    }

    /// The directory of an existing checkpoint `name`.
    pub fn existing(&self, name: &str) -> Result<PathBuf> {
        let p = self.path(name)?;
        if !p.join(META_FILE).is_file() {
            return Err(CheckpointError::NotFound {
                name: name.to_string(),
                container: self.container.clone(),
            });
        }
        Ok(p)
    }

    /// Where husk-vmm writes a checkpoint being made.
    pub fn staging(&self) -> PathBuf {
        self.dir.join(STAGING)
    }

    /// An empty staging directory that `owner` (husk-vmm's jail uid and
    /// gid, when jailed) may write; made before husk-vmm starts, since its
    /// jail keeps it by path.
    pub fn prepare_staging(&self, owner: Option<u32>) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let staging = self.staging();
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".partial") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        match fs::remove_dir_all(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot empty", &staging)(e)),
        }
        fs::create_dir_all(&staging).map_err(io_err("cannot create", &staging))?;
        // Memory images hold the container's secrets: root only.
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("cannot set the mode of", &self.dir))?;
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o700))
            .map_err(io_err("cannot set the mode of", &staging))?;
        if let Some(id) = owner {
            std::os::unix::fs::chown(&staging, Some(id), Some(id))
                .map_err(io_err("cannot hand over", &staging))?;
        }
        Ok(staging)
    }

    /// Refuses a name that is taken.
    pub fn check_free(&self, name: &str) -> Result<()> {
        if self.path(name)?.exists() {
            return Err(CheckpointError::Exists {
                name: name.to_string(),
                container: self.container.clone(),
            });
        }
        Ok(())
    }

    /// Completes the checkpoint in the staging directory (husk-vmm wrote
    /// its snapshot there): moves its files into a directory of root's,
    /// copies the writable layer `rw_disk` and writes `meta` beside them,
    /// and renames that to `name`. The staging directory stays, empty, for
    /// the next checkpoint (husk-vmm's jail holds it by inode).
    pub fn commit(&self, name: &str, rw_disk: &Path, meta: &Meta) -> Result<PathBuf> {
        self.commit_from(&self.staging(), name, rw_disk, meta)
    }

    /// [`Checkpoints::commit`] of a snapshot written into `staging` (another
    /// container's, for a fork).
    pub fn commit_from(
        &self,
        staging: &Path,
        name: &str,
        rw_disk: &Path,
        meta: &Meta,
    ) -> Result<PathBuf> {
        self.check_free(name)?;
        fs::create_dir_all(&self.dir).map_err(io_err("cannot create", &self.dir))?;
        let partial = self.dir.join(format!(".{name}.partial"));
        let made = self.fill(staging, &partial, rw_disk, meta).and_then(|()| {
            let to = self.path(name)?;
            fs::rename(&partial, &to).map_err(io_err("cannot rename the checkpoint to", &to))?;
            Ok(to)
        });
        if made.is_err() {
            let _ = fs::remove_dir_all(&partial);
        }
        made
    }

    fn fill(&self, staging: &Path, partial: &Path, rw_disk: &Path, meta: &Meta) -> Result<()> {
        let _ = fs::remove_dir_all(partial);
        fs::create_dir(partial).map_err(io_err("cannot create", partial))?;
        let entries = fs::read_dir(staging).map_err(io_err("cannot read", staging))?;
        for e in entries.flatten() {
            if e.file_name() == LAYERS_DIR {
                // Memory layers of forks stay with the VM that wrote them.
                continue;
            }
            let to = partial.join(e.file_name());
            fs::rename(e.path(), &to).map_err(io_err("cannot move the snapshot to", &to))?;
            if nix::unistd::geteuid().is_root() {
                std::os::unix::fs::lchown(&to, Some(0), Some(0))
                    .map_err(io_err("cannot give to root", &to))?;
            }
        }
        let disk = partial.join(DISK_FILE);
        crate::storage::scratch::copy_sparse(rw_disk, &disk).map_err(|e| CheckpointError::Io {
            what: "cannot copy the writable layer to",
            path: disk.clone(),
            source: std::io::Error::other(crate::error::chain(&e)),
        })?;
        let meta_path = partial.join(META_FILE);
        let text = serde_json::to_vec_pretty(meta).map_err(|source| CheckpointError::Meta {
            path: meta_path.clone(),
            source,
        })?;
        fs::write(&meta_path, text).map_err(io_err("cannot write", &meta_path))
    }

    /// The metadata of checkpoint directory `dir`.
    pub fn meta(dir: &Path) -> Result<Meta> {
        let p = dir.join(META_FILE);
        let text = fs::read(&p).map_err(io_err("cannot read", &p))?;
        serde_json::from_slice(&text).map_err(|source| CheckpointError::Meta { path: p, source })
    }

    /// Every complete checkpoint, by name.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("cannot read", &self.dir)(e)),
        };
        let mut out: Vec<Listed> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                check_name(&name).ok()?;
                let meta = Self::meta(&e.path()).ok()?;
                Some(Listed { name, meta })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes checkpoint `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        let p = self.existing(name)?;
        fs::remove_dir_all(&p).map_err(io_err("cannot remove", &p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(dir: &Path) -> Handle {
        let cs = super::super::Containers::open(dir).unwrap();
        cs.handle("0123456789ab0123456789ab0123456789ab0123456789ab0123456789abcdef")
    }

    #[test]
    fn names() {
        for ok in ["a", "c1", "before-upgrade", "v1.2_x"] {
            check_name(ok).unwrap();
        }
        for bad in ["", ".staging", "-a", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commit_list_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let h = handle(tmp.path());
        fs::create_dir_all(&h.dir).unwrap();
        let rw = h.dir.join("rw.ext4");
        fs::write(&rw, b"disk").unwrap();
        let cps = Checkpoints::of(&h);
        let staging = cps.prepare_staging(None).unwrap();
        fs::write(staging.join("state"), b"s").unwrap();
        fs::create_dir(staging.join(LAYERS_DIR)).unwrap();
        fs::write(staging.join(LAYERS_DIR).join("1-1.mem"), b"m").unwrap();
        let meta = Meta {
            created: "2026-12-04T00:00:00Z".into(),
            lease_index: Some(3),
            guest_pid: Some(7),
            rootfs: DiskId::of(&rw).unwrap(),
            next_exec: 2,
            fork_of: None,
        };
        let dir = cps.commit("one", &rw, &meta).unwrap();
        assert_eq!(fs::read(dir.join(DISK_FILE)).unwrap(), b"disk");
        assert_eq!(Checkpoints::meta(&dir).unwrap(), meta);
        assert!(dir.join("state").exists(), "the snapshot moved into place");
        let left: Vec<_> = fs::read_dir(&staging)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [LAYERS_DIR], "staging emptied but for the layers");
        assert!(!dir.join(LAYERS_DIR).exists());
        assert!(matches!(
            cps.commit("one", &rw, &meta),
            Err(CheckpointError::Exists { .. })
        ));
        let names: Vec<_> = cps.list().unwrap().into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["one"]);
        cps.remove("one").unwrap();
        assert!(matches!(
            cps.remove("one"),
            Err(CheckpointError::NotFound { .. })
        ));
        assert!(cps.list().unwrap().is_empty());
    }
}
