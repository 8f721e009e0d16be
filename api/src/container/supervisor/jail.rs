//! What the supervisor prepares for husk-vmm's jail (the VMM drops its own
//! privileges, `vmm/src/jail.rs`, once it has opened /dev/kvm, the TAP,
//! the disks and its vsock socket as root):
//!
//! - **the uid/gid**: `2_000_000_000 + the supervisor's pid` (one per live
//!   supervisor, hence per running container; below 2^31 and far above the
//!   ranges `/etc/subuid` and systemd hand out); nothing is allocated, so
//!   nothing is left behind;
//! - **the vsock directory** (the container's run directory): `root:<gid>`
//!   with mode 0710, so the VMM reaches its sockets there (the listeners of
//!   guest-initiated connections) and no other VMM does;
//! - **a cgroup** bounding husk-vmm's memory (guest memory plus
//!   [`OVERHEAD_MIB`]) and tasks, under `/sys/fs/cgroup/husk-vmm/`, when
//!   the host has cgroup2 with the memory and pids controllers; removed
//!   when husk-vmm has ended.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// First uid/gid of the husk-vmm range.
pub const JAIL_ID_BASE: u32 = 2_000_000_000;
/// Memory husk-vmm may use beyond the guest's (its own heap, device
/// buffers, page tables, the binary).
pub const OVERHEAD_MIB: u64 = 192;
/// Tasks beyond one per vCPU (the main thread, and headroom).
const EXTRA_TASKS: u32 = 8;
/// Where cgroup2 is mounted on a unified host.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The parent of every husk-vmm cgroup.
const CGROUP_PARENT: &str = "husk-vmm";

/// The uid and gid husk-vmm runs as, or `None` when the supervisor is not
/// root (husk-vmm then runs as the supervisor's user, unprivileged anyway).
pub fn jail_id() -> Option<u32> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    Some(JAIL_ID_BASE.saturating_add(std::process::id()))
}

/// Opens the vsock socket directory to group `gid` (search only).
pub fn share_vsock_dir(dir: &Path, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(dir, Some(0), Some(gid))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o710))
}

/// Limits of one husk-vmm's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// memory.max in bytes.
    pub memory_bytes: u64,
    /// pids.max.
    pub tasks: u32,
}

impl Limits {
    /// For a VM of `mem_mib` MiB and `vcpus` vCPUs.
    pub fn for_vm(mem_mib: u32, vcpus: u32) -> Self {
        Limits {
            memory_bytes: (u64::from(mem_mib) + OVERHEAD_MIB) << 20,
            tasks: vcpus.saturating_add(EXTRA_TASKS),
        }
    }
}

/// A husk-vmm's cgroup: the child joins it by writing "0" to `procs`
/// between fork and exec; dropping it removes the cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    procs: File,
}

fn ctx(what: &str, path: &Path) -> impl FnOnce(io::Error) -> io::Error {
    let what = format!("{what} {}", path.display());
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn write_file(path: &Path, text: &str) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(ctx("cannot write", path))
}

/// Whether `root` is a cgroup2 hierarchy with the memory and pids
/// controllers.
pub fn available(root: &Path) -> bool {
    fs::read_to_string(root.join("cgroup.controllers")).is_ok_and(|c| {
        let has = |n: &str| c.split_whitespace().any(|w| w == n);
        has("memory") && has("pids")
    })
}

impl Cgroup {
    /// Creates `<root>/husk-vmm/<name>` with `limits`, enabling the
    /// controllers on the way; `Ok(None)` when `root` has no cgroup2 with
    /// memory and pids controllers.
    pub fn create(root: &Path, name: &str, limits: Limits) -> io::Result<Option<Cgroup>> {
        if !available(root) {
            return Ok(None);
        }
        let enable = "+memory +pids";
        // The root cgroup may already have them (or be managed by systemd,
        // which enables them itself): only the parent's write must work.
        let _ = write_file(&root.join("cgroup.subtree_control"), enable);
        let parent = root.join(CGROUP_PARENT);
        if !parent.is_dir() {
            fs::create_dir(&parent).map_err(ctx("cannot create", &parent))?;
        }
        write_file(&parent.join("cgroup.subtree_control"), enable)?;
        let path = parent.join(name);
        // A leftover of a supervisor that died is empty: removed, or at
        // worst reused (one supervisor per container holds its lock).
        let _ = fs::remove_dir(&path);
        match fs::create_dir(&path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(ctx("cannot create", &path)(e))
            }
            _ => {}
        }
        let cg = Cgroup {
            procs: File::options()
                .write(true)
                .open(path.join("cgroup.procs"))
                .map_err(ctx("cannot open", &path.join("cgroup.procs")))?,
            path,
        };
        write_file(
            &cg.path.join("memory.max"),
            &limits.memory_bytes.to_string(),
        )?;
        write_file(&cg.path.join("pids.max"), &limits.tasks.to_string())?;
        Ok(Some(cg))
    }

    /// The open `cgroup.procs` (for the child to write "0" to).
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The last task leaves a moment after it was reaped.
        let deadline = Instant::now() + Duration::from_secs(2);
        while fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_cover_the_guest_and_the_vmm() {
        let l = Limits::for_vm(512, 2);
        assert_eq!(l.memory_bytes, (512 + OVERHEAD_MIB) * 1024 * 1024);
        assert_eq!(l.tasks, 2 + EXTRA_TASKS);
    }

    #[test]
    fn the_jail_id_is_per_supervisor_and_never_root() {
        if let Some(id) = jail_id() {
            assert_eq!(id, JAIL_ID_BASE + std::process::id());
            assert!(id < 1 << 31);
        }
    }

    #[test]
    fn no_cgroup_without_memory_and_pids_controllers() {
        let d = tempfile::tempdir().unwrap();
        assert!(Cgroup::create(d.path(), "x", Limits::for_vm(64, 1))
            .unwrap()
            .is_none());
        fs::write(d.path().join("cgroup.controllers"), "cpu memory io\n").unwrap();
        assert!(Cgroup::create(d.path(), "x", Limits::for_vm(64, 1))
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_cgroup_gets_its_limits() {
        // A directory standing in for cgroupfs (whose files exist by
        // themselves there).
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(d.path().join("cgroup.subtree_control"), "").unwrap();
        let parent = d.path().join(CGROUP_PARENT);
        fs::create_dir(&parent).unwrap();
        fs::write(parent.join("cgroup.subtree_control"), "").unwrap();
        let leaf = parent.join("abc");
        fs::create_dir(&leaf).unwrap();
        for f in ["cgroup.procs", "memory.max", "pids.max"] {
            fs::write(leaf.join(f), "").unwrap();
        }
        // create() first removes a leftover; this one is not empty, so it
        // is reused and its files receive the limits.
        let cg = Cgroup::create(d.path(), "abc", Limits::for_vm(256, 2))
            .unwrap()
            .unwrap();
        assert_eq!(cg.path(), leaf);
        let read = |f: &str| fs::read_to_string(leaf.join(f)).unwrap();
        assert_eq!(read("memory.max"), ((256 + OVERHEAD_MIB) << 20).to_string());
        assert_eq!(read("pids.max"), (2 + EXTRA_TASKS).to_string());
        assert_eq!(
            fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap(),
            "+memory +pids"
        );
        std::mem::forget(cg);
    }

    #[test]
    fn the_vsock_dir_is_searchable_by_the_jail_group_only() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        share_vsock_dir(d.path(), JAIL_ID_BASE + 1).unwrap();
        let m = fs::metadata(d.path()).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, JAIL_ID_BASE + 1));
        assert_eq!(m.permissions().mode() & 0o777, 0o710);
    }
}
