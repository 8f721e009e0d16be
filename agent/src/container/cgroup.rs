//! cgroup v2 limits under an injected cgroup root (the guest's
//! `/sys/fs/cgroup`, a temporary directory in tests).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{ContainerError, Result};
use husk_proto::agent::Limits;

/// The cpu.max period in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// One container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|source| ContainerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl Cgroup {
    /// Creates `root/<name>` (name is a validated container id), enabling
    /// the memory, cpu and pids controllers in the root when it has a
    /// `cgroup.subtree_control` (best effort: a controller may be absent).
    pub fn create(root: &Path, name: &str, limits: &Limits) -> Result<Self> {
        let ctl = root.join("cgroup.subtree_control");
        if ctl.exists() {
            for c in ["+memory", "+cpu", "+pids"] {
                if let Err(e) = fs::write(&ctl, c) {
                    log::warn!("cannot enable cgroup controller {c}: {e}");
                }
            }
        }
        let path = root.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(ContainerError::Io { path, source }),
        }
        let cg = Self { path };
        cg.apply(limits)?;
        Ok(cg)
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes memory.max, cpu.max and pids.max.
    pub fn apply(&self, limits: &Limits) -> Result<()> {
        if let Some(m) = limits.memory_bytes {
            write(&self.path.join("memory.max"), &m.to_string())?;
        }
        if let Some(millis) = limits.cpu_millis {
            let quota = millis.saturating_mul(CPU_PERIOD_US) / 1000;
            write(
                &self.path.join("cpu.max"),
                &format!("{quota} {CPU_PERIOD_US}"),
            )?;
        }
        if let Some(p) = limits.pids {
            write(&self.path.join("pids.max"), &p.to_string())?;
        }
        Ok(())
    }

    /// Moves `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<()> {
        write(&self.path.join("cgroup.procs"), &pid.to_string())
    }

    /// Removes the (empty) cgroup; best effort.
    pub fn remove(&self) {
        // A real cgroup directory is removed with rmdir; a plain test
        // directory holds files.
        if fs::remove_dir(&self.path).is_err() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_written() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cgroup.subtree_control"), "").unwrap();
        let cg = Cgroup::create(
            d.path(),
            "c1",
            &Limits {
                memory_bytes: Some(64 << 20),
                cpu_millis: Some(1500),
                pids: Some(32),
            },
        )
        .unwrap();
        let rd = |f: &str| fs::read_to_string(cg.path().join(f)).unwrap();
        assert_eq!(rd("memory.max"), "67108864");
        assert_eq!(rd("cpu.max"), "150000 100000");
        assert_eq!(rd("pids.max"), "32");
        cg.add(42).unwrap();
        assert_eq!(rd("cgroup.procs"), "42");
        // The last controller written wins in a plain file.
        assert_eq!(
            fs::read_to_string(d.path().join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        cg.remove();
        assert!(!cg.path().exists());
    }
}
