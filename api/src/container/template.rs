//! Template snapshots: a guest booted once to an agent waiting for its
//! container, with empty disk slots and eth0 unaddressed, snapshotted, and
//! restored by every later start of the same shape instead of a boot.
//!
//! A template is built for one [`TemplateKey`]: the kernel, initramfs and
//! husk-vmm files (by identity, so a rebuilt one makes a new template), the
//! vCPUs, the memory, the disk slots (read-only or not) and the number of
//! network interfaces. It lives in `<data dir>/templates/<KEY>/` (`state`,
//! `memory`, `template.json`, root-only). It is built under
//! `<KEY>.lock` into `.<KEY>.partial` and renamed into place when whole, so
//! a build killed half-way leaves nothing a later start uses (the next build
//! removes the leftover).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::container::checkpoint::DiskId;

/// The template format this husk builds; others are not used.
const FORMAT: u32 = 1;

/// Template store errors.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Building the template failed.
    #[error("cannot build the template snapshot")]
    Build(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, TemplateError>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TemplateError + 'a {
    move |source| TemplateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What a template is built for: a start whose key equals it may restore it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateKey {
    /// The template format.
    pub format: u32,
    /// The guest kernel file.
    pub kernel: DiskId,
    /// The initramfs file (it holds the agent).
    pub initrd: DiskId,
    /// The husk-vmm binary (its snapshot format).
    pub vmm: DiskId,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory (MiB).
    pub mem_mib: u32,
    /// The disk slots, in order: whether each is read-only.
    pub disks: Vec<bool>,
    /// Network interfaces.
    pub nets: usize,
}

/// The shape of a microVM, without the files.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory (MiB).
    pub mem_mib: u32,
    /// The disk slots: whether each is read-only.
    pub disks: &'a [bool],
    /// Network interfaces.
    pub nets: usize,
}

impl TemplateKey {
    /// The key of a microVM of `shape` booted from `assets`.
    pub fn new(assets: &crate::assets::Assets, shape: Shape<'_>) -> Result<Self> {
        let id = |p: &Path| DiskId::of(p).map_err(|e| TemplateError::Build(e.into()));
        Ok(TemplateKey {
            format: FORMAT,
            kernel: id(&assets.kernel)?,
            initrd: id(&assets.initrd)?,
            vmm: id(&assets.vmm)?,
            vcpus: shape.vcpus,
            mem_mib: shape.mem_mib,
            disks: shape.disks.to_vec(),
            nets: shape.nets,
        })
    }

    /// The template's directory name: 16 hex digits of the key's hash.
    pub fn name(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&json);
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// Where a template is built: the snapshot goes in `snapshot`, the build's
/// own files (logs, sockets, empty disk slots) in `work`.
#[derive(Debug)]
pub struct Staging {
    /// The directory husk-vmm writes the snapshot into.
    pub snapshot: PathBuf,
    /// A scratch directory for the build.
    pub work: PathBuf,
}

/// The templates of one data directory.
#[derive(Debug, Clone)]
pub struct Templates {
    dir: PathBuf,
}

impl Templates {
    /// The templates under `data_dir`.
    pub fn open(data_dir: &Path) -> Self {
        Templates {
            dir: data_dir.join("templates"),
        }
    }

    /// The directory of `key`'s template (whether it exists or not).
    pub fn path(&self, key: &TemplateKey) -> PathBuf {
        self.dir.join(key.name())
    }

    /// `key`'s template, built first (under its lock) when there is none;
    /// `build` writes a snapshot into the staging directories it is given
    /// (which it may hand to a jailed husk-vmm owned by `owner`). Returns
    /// the directory and whether it was built now.
    pub fn ensure(
        &self,
        key: &TemplateKey,
        owner: Option<u32>,
        build: impl FnOnce(
            &Staging,
        ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>,
    ) -> Result<(PathBuf, bool)> {
        let path = self.path(key);
        if is_whole(&path) {
            return Ok((path, false));
        }
        self.create_dir()?;
        let lock_path = self.dir.join(format!("{}.lock", key.name()));
        let _lock = crate::lockfile::lock_exclusive(&lock_path)
            .map_err(io_err("cannot lock", &lock_path))?;
        if is_whole(&path) {
            return Ok((path, false));
        }
        let staging = self.staging(key, owner)?;
        let built = build(&staging).map_err(TemplateError::Build);
        let _ = fs::remove_dir_all(&staging.work);
        built?;
        self.commit(key, &staging.snapshot, &path)?;
        drop(_lock);
        // A template was built: its inputs may have changed (an upgrade).
        if let Err(e) = self.remove_stale(key) {
            log::warn!("cannot remove old templates: {}", crate::error::chain(&e));
        }
        Ok((path, true))
    }

    /// Removes `key`'s template (one that could not be restored); the next
    /// start builds it again.
    pub fn discard(&self, key: &TemplateKey) -> Result<()> {
        let path = self.path(key);
        match fs::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("cannot remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Removes every template not being built (`husk gc`); returns how
    /// many were removed.
    pub fn remove_all(&self) -> Result<usize> {
        self.remove_where(|_| true)
    }

    /// Removes the templates no start can use any more: made from other
    /// kernel, initramfs or husk-vmm files than `current`'s (an upgrade),
    /// or of another format. Returns how many were removed.
    pub fn remove_stale(&self, current: &TemplateKey) -> Result<usize> {
        self.remove_where(|key| {
            key.is_none_or(|k| {
                (k.format, k.kernel, k.initrd, k.vmm)
                    != (current.format, current.kernel, current.initrd, current.vmm)
            })
        })
    }

    /// Removes the templates (not being built) whose key (none: unreadable)
    /// `doomed` picks.
    fn remove_where(&self, doomed: impl Fn(Option<TemplateKey>) -> bool) -> Result<usize> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".lock") {
                continue;
            }
            let key = fs::read(e.path().join("template.json"))
                .ok()
                .and_then(|j| serde_json::from_slice::<TemplateKey>(&j).ok());
            if !doomed(key) {
                continue;
            }
            let lock_path = self.dir.join(format!("{name}.lock"));
            let lock =
                crate::lockfile::lock_file(&lock_path, nix::fcntl::FlockArg::LockExclusiveNonblock)
                    .map_err(io_err("cannot lock", &lock_path))?;
            if lock.is_some() {
                fs::remove_dir_all(e.path()).map_err(io_err("cannot remove", &e.path()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn create_dir(&self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(&self.dir).map_err(io_err("cannot create", &self.dir))?;
        // Memory images: root only.
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("cannot set the mode of", &self.dir))
    }

    /// Fresh staging directories for `key` (a killed build's are removed).
    fn staging(&self, key: &TemplateKey, owner: Option<u32>) -> Result<Staging> {
        use std::os::unix::fs::DirBuilderExt;
        let name = key.name();
        let staging = Staging {
            snapshot: self.dir.join(format!(".{name}.partial")),
            work: self.dir.join(format!(".{name}.work")),
        };
        for d in [&staging.snapshot, &staging.work] {
            match fs::remove_dir_all(d) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("cannot empty", d)(e))
                }
                _ => {}
            }
            fs::DirBuilder::new()
                .mode(0o700)
                .create(d)
                .map_err(io_err("cannot create", d))?;
        }
        if let Some(id) = owner {
            std::os::unix::fs::chown(&staging.snapshot, Some(id), Some(id))
                .map_err(io_err("cannot hand over", &staging.snapshot))?;
        }
        Ok(staging)
    }

    /// Takes the snapshot files back from husk-vmm's jail (root-owned,
    /// 0600), writes `template.json` and renames the directory into place.
    fn commit(&self, key: &TemplateKey, staged: &Path, path: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for e in fs::read_dir(staged)
            .map_err(io_err("cannot read", staged))?
            .flatten()
        {
            let p = e.path();
            if nix::unistd::geteuid().is_root() {
                std::os::unix::fs::chown(&p, Some(0), Some(0))
                    .map_err(io_err("cannot take back", &p))?;
            }
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600))
                .map_err(io_err("cannot set the mode of", &p))?;
        }
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(staged, Some(0), Some(0))
                .map_err(io_err("cannot take back", staged))?;
        }
        let meta = staged.join("template.json");
        let json = serde_json::to_vec_pretty(key).unwrap_or_default();
        fs::write(&meta, json).map_err(io_err("cannot write", &meta))?;
        fs::rename(staged, path).map_err(io_err("cannot move into place", path))
    }
}

/// Whether `path` is a committed template (its `template.json` is written
/// last, before the rename).
fn is_whole(path: &Path) -> bool {
    path.join("template.json").is_file()
}

/// Whether starts restore templates: `HUSK_SNAPSHOT=0` turns it off.
pub fn enabled_by_env() -> bool {
    !matches!(
        std::env::var("HUSK_SNAPSHOT").ok().as_deref(),
        Some("0" | "false" | "no" | "off")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &Path, vcpus: u32) -> TemplateKey {
        let f = dir.join("asset");
        if !f.exists() {
            fs::write(&f, b"x").unwrap();
        }
        let id = DiskId::of(&f).unwrap();
        TemplateKey {
            format: FORMAT,
            kernel: id,
            initrd: id,
            vmm: id,
            vcpus,
            mem_mib: 512,
            disks: vec![true, false],
            nets: 1,
        }
    }

    fn write_snapshot(
        s: &Staging,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        fs::write(s.snapshot.join("state"), b"state")?;
        fs::write(s.work.join("console.log"), b"booted")?;
        Ok(())
    }

    #[test]
    fn built_once_then_reused() {
        let data = tempfile::tempdir().unwrap();
        let t = Templates::open(data.path());
        let k = key(data.path(), 1);
        let (path, built) = t.ensure(&k, None, write_snapshot).unwrap();
        assert!(built);
        assert_eq!(fs::read(path.join("state")).unwrap(), b"state");
        let back: TemplateKey =
            serde_json::from_slice(&fs::read(path.join("template.json")).unwrap()).unwrap();
        assert_eq!(back, k);
        let (again, built) = t
            .ensure(&k, None, |_| Err("must not build again".into()))
            .unwrap();
        assert_eq!((again, built), (path, false));
        assert_ne!(key(data.path(), 2).name(), k.name());
    }

    #[test]
    fn a_failed_or_killed_build_leaves_nothing_used() {
        let data = tempfile::tempdir().unwrap();
        let t = Templates::open(data.path());
        let k = key(data.path(), 1);
        let e = t
            .ensure(&k, None, |s| {
                fs::write(s.snapshot.join("state"), b"half")?;
                Err("the guest did not answer".into())
            })
            .unwrap_err();
        assert_eq!(
            crate::error::chain(&e),
            "cannot build the template snapshot: the guest did not answer"
        );
        assert!(!t.path(&k).exists());
        // A build killed half-way leaves its partial directory: not used,
        // and emptied by the next build.
        let (path, built) = t
            .ensure(&k, None, |s| {
                assert!(!s.snapshot.join("state").exists());
                write_snapshot(s)
            })
            .unwrap();
        assert!(built && path.join("state").exists());
    }

    #[test]
    fn discarded_and_collected() {
        let data = tempfile::tempdir().unwrap();
        let t = Templates::open(data.path());
        let (a, b) = (key(data.path(), 1), key(data.path(), 2));
        t.ensure(&a, None, write_snapshot).unwrap();
        t.ensure(&b, None, write_snapshot).unwrap();
        t.discard(&a).unwrap();
        assert!(!t.path(&a).exists());
        assert_eq!(t.remove_all().unwrap(), 1);
        assert!(!t.path(&b).exists());
    }

    #[test]
    fn templates_of_other_files_go_when_one_is_built() {
        let data = tempfile::tempdir().unwrap();
        let t = Templates::open(data.path());
        let old = key(data.path(), 1);
        let other_shape = key(data.path(), 2);
        t.ensure(&old, None, write_snapshot).unwrap();
        t.ensure(&other_shape, None, write_snapshot).unwrap();
        assert!(t.path(&old).exists(), "another shape is not stale");
        // The kernel is rebuilt: a new file.
        let kernel = data.path().join("kernel.new");
        fs::write(&kernel, b"y").unwrap();
        let new = TemplateKey {
            kernel: DiskId::of(&kernel).unwrap(),
            ..old.clone()
        };
        t.ensure(&new, None, write_snapshot).unwrap();
        assert!(t.path(&new).exists());
        assert!(!t.path(&old).exists() && !t.path(&other_shape).exists());
    }
}
