//! The container baseline: a bare-namespace start of the image. A child
//! enters new mount, UTS, IPC, network and PID namespaces (`unshare`), forks
//! the PID namespace's first process, which `chroot`s into the unpacked
//! image and runs its `true`; timed from the first fork to the reaping of
//! that child. What every container runtime does at least, without its
//! configuration, cgroups or mounts.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, chroot, fork, ForkResult, Pid};

use super::report::Unavailable;
use super::{timed, BenchError, Result, Starter};

/// The row's name (the baseline of the ratios).
pub const NAME: &str = "namespace";

/// Where the program is looked for in the image (a container's default
/// `PATH`).
const SEARCH_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// A bare-namespace start of `true` in the image's tree.
#[derive(Debug)]
pub struct NamespaceStart {
    root: CString,
    program: CString,
}

/// The path inside `root` of `program` on the default `PATH` (a symlink
/// counts as found: it resolves inside the chroot).
pub fn find_in_image(root: &Path, program: &str) -> Option<PathBuf> {
    SEARCH_PATH
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            let inside = root.join(p.strip_prefix("/").unwrap_or(p));
            std::fs::symlink_metadata(inside).is_ok()
        })
}

impl NamespaceStart {
    /// The row for the tree at `root`; unavailable unless this process may
    /// make namespaces (root) and the image has `true`.
    pub fn new(root: &Path) -> std::result::Result<Self, Unavailable> {
        let unavailable = |reason: String| Unavailable {
            name: NAME.into(),
            reason,
        };
        if !nix::unistd::geteuid().is_root() {
            return Err(unavailable(
                "creating namespaces and chroot need root".into(),
            ));
        }
        let program = find_in_image(root, "true")
            .ok_or_else(|| unavailable("the image has no `true` on its PATH".into()))?;
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).ok();
        match (c(root), c(&program)) {
            (Some(root), Some(program)) => Ok(NamespaceStart { root, program }),
            _ => Err(unavailable("a path holds a NUL byte".into())),
        }
    }
}

/// Flags of the namespaces the start makes.
const FLAGS: CloneFlags = CloneFlags::CLONE_NEWNS
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWPID);

/// In the forked child: the namespaces, the PID namespace's first process,
/// chroot and exec; ends the child with the program's status (127 when a
/// step fails). Only system calls after the fork: no allocation, no lock.
fn child(root: &CString, program: &CString) -> ! {
    let argv = [program.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    let code = (|| -> nix::Result<i32> {
        unshare(FLAGS)?;
        // SAFETY: this child of a fork only makes system calls before it
        // execs or exits; the strings were allocated before the first fork.
        match unsafe { fork() }? {
            ForkResult::Child => {
                if chroot(root.as_c_str()).and_then(|_| chdir(c"/")).is_ok() {
                    // SAFETY: `program` and the NULL-terminated `argv` and
                    // `envp` arrays outlive the call; on success it does not
                    // return.
                    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
                }
                // SAFETY: _exit ends the process without running any
                // handler of the parent's state.
                unsafe { libc::_exit(127) }
            }
            ForkResult::Parent { child } => exit_code(child),
        }
    })()
    .unwrap_or(127);
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}

/// Waits for `pid` and turns how it ended into an exit code.
fn exit_code(pid: Pid) -> nix::Result<i32> {
    Ok(match waitpid(pid, None)? {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, s, _) => 128 + s as i32,
        _ => 127,
    })
}

impl Starter for NamespaceStart {
    fn name(&self) -> &str {
        NAME
    }

    fn what(&self) -> String {
        "unshare (mnt, uts, ipc, net, pid) + chroot into the image, true".into()
    }

    fn start_once(&mut self, _round: usize) -> Result<Duration> {
        timed(|| {
            // SAFETY: the child runs only `child`, which makes system calls
            // and never returns; no lock or allocation is used after the fork.
            let pid = match unsafe { fork() }.map_err(|source| BenchError::Sys {
                call: "fork",
                source,
            })? {
                ForkResult::Child => child(&self.root, &self.program),
                ForkResult::Parent { child } => child,
            };
            let code = exit_code(pid).map_err(|source| BenchError::Sys {
                call: "waitpid",
                source,
            })?;
            if code != 0 {
                return Err(BenchError::Status {
                    program: "unshare + chroot + true".into(),
                    status: format!("exit status: {code}"),
                    stderr: String::new(),
                });
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_true_on_the_image_path_even_as_a_dangling_symlink() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(find_in_image(d.path(), "true"), None);
        std::fs::create_dir_all(d.path().join("bin")).unwrap();
        std::os::unix::fs::symlink("/nonexistent-on-the-host", d.path().join("bin/true")).unwrap();
        assert_eq!(
            find_in_image(d.path(), "true"),
            Some(PathBuf::from("/bin/true"))
        );
        std::fs::create_dir_all(d.path().join("usr/bin")).unwrap();
        std::fs::write(d.path().join("usr/bin/true"), b"").unwrap();
        assert_eq!(
            find_in_image(d.path(), "true"),
            Some(PathBuf::from("/usr/bin/true"))
        );
    }

    #[test]
    fn starts_busybox_true_in_new_namespaces_and_fails_when_it_fails() {
        let data = tempfile::tempdir().unwrap();
        let tree = super::super::rootfs::ImageTree::unpack(data.path(), "busybox").unwrap();
        let mut s = match NamespaceStart::new(tree.root()) {
            Ok(s) => s,
            Err(u) => {
                assert!(!nix::unistd::geteuid().is_root(), "{u:?}");
                return;
            }
        };
        let d = s.start_once(1).unwrap();
        assert!(d > Duration::ZERO);
        // `false` in place of `true`: the row reports the status.
        s.program = CString::new("/bin/false").unwrap();
        let e = s.start_once(2).unwrap_err();
        assert_eq!(e.to_string(), "unshare + chroot + true: exit status: 1");
    }
}
