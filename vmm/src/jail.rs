//! Dropping privileges once the VM is built, before any guest code runs.
//!
//! husk's supervisor starts husk-vmm as root, because only root can open
//! /dev/kvm, create the container's TAP and read the image disks. husk-vmm
//! opens all of that while building the VM; then, still single-threaded,
//! it becomes the unprivileged uid/gid it was given (`--jail-uid`,
//! `--jail-gid`): no supplementary groups, an empty capability bounding
//! set, and a uid change that clears the permitted, effective and ambient
//! sets. `PR_SET_NO_NEW_PRIVS` is set in every case (it is also what
//! seccomp needs), so nothing the process runs later can regain a
//! privilege.
//!
//! Before that, in its own mount namespace, husk-vmm moves into an empty
//! root: a private tmpfs (mounted over `/tmp`, visible to husk-vmm only)
//! holding nothing but bind mounts of the directories it still needs by
//! path (the vsock socket directory, for guest-initiated connections), at
//! their usual paths, entered with `chroot` (`pivot_root` fails where the
//! root is an initramfs, as in the nested test host); with no capability
//! left, the chroot cannot be left.
//!
//! A credential change clears the parent-death signal, so it is set again
//! here (the supervisor sets it before exec) and husk-vmm exits when its
//! parent is already gone.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Jail errors.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// Changing uid/gid needs root.
    #[error("--jail-uid needs husk-vmm to start as root")]
    NotRoot,
    /// A privilege-dropping call failed.
    #[error("cannot {what}")]
    Call {
        /// What was attempted.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The drop did not hold: root could be regained.
    #[error("privileges were not dropped: setuid(0) still works")]
    StillRoot,
    /// A directory to keep in the new root cannot be used.
    #[error("cannot keep {path} in the jail's root")]
    Keep {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The parent died before the parent-death signal was set again.
    #[error("the parent process is gone")]
    Orphaned,
}

/// Who husk-vmm becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jail {
    /// The uid (not 0).
    pub uid: u32,
    /// The gid (not 0).
    pub gid: u32,
}

/// Where the new root's tmpfs is mounted (in husk-vmm's own mount
/// namespace only).
const NEW_ROOT: &str = "/tmp";

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::Keep {
        path: p.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

fn mount(
    what: &'static str,
    src: Option<&CString>,
    target: &CString,
    fstype: Option<&CString>,
    flags: libc::c_ulong,
    data: Option<&CString>,
) -> Result<(), JailError> {
    let ptr = |c: Option<&CString>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that lives
    // across the call.
    check(what, unsafe {
        libc::mount(
            ptr(src),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    })
}

/// Moves into a new mount namespace whose root is an empty tmpfs with only
/// `keep` bind-mounted (at the same paths).
fn enter_empty_root(keep: &[PathBuf]) -> Result<(), JailError> {
    // SAFETY: unshare takes flags only.
    check("create a mount namespace", unsafe {
        libc::unshare(libc::CLONE_NEWNS)
    })?;
    let root = cstr(Path::new("/"))?;
    mount(
        "make mounts private",
        None,
        &root,
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    // Opened in the new namespace (a bind mount's source must be in it)
    // and held across the tmpfs mount, which may hide them.
    let held = keep
        .iter()
        .map(|p| {
            std::fs::File::open(p)
                .map(|f| (p, f))
                .map_err(|source| JailError::Keep {
                    path: p.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let new_root = Path::new(NEW_ROOT);
    let tmpfs = CString::new("tmpfs").unwrap_or_default();
    let opts = CString::new("mode=0755,size=64k").unwrap_or_default();
    mount(
        "mount the jail's tmpfs",
        Some(&tmpfs),
        &cstr(new_root)?,
        Some(&tmpfs),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(&opts),
    )?;
    for (path, file) in &held {
        let rel = path.strip_prefix("/").unwrap_or(path);
        let target = new_root.join(rel);
        std::fs::create_dir_all(&target).map_err(|source| JailError::Keep {
            path: path.to_path_buf(),
            source,
        })?;
        let src = cstr(&Path::new("/proc/self/fd").join(file.as_raw_fd().to_string()))?;
        mount(
            "bind-mount a kept directory",
            Some(&src),
            &cstr(&target)?,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
    }
    let new_root = cstr(new_root)?;
    // SAFETY: chroot and chdir take a NUL-terminated path.
    check("enter the jail's root", unsafe {
        libc::chroot(new_root.as_ptr())
    })?;
    // SAFETY: as above.
    check("enter the jail's root", unsafe {
        libc::chdir(root.as_ptr())
    })?;
    // The tmpfs root needs no more writing.
    mount(
        "make the jail's root read-only",
        None,
        &root,
        None,
        libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        None,
    )
}

fn check(what: &'static str, rc: libc::c_int) -> Result<(), JailError> {
    if rc < 0 {
        return Err(JailError::Call {
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Empties the capability bounding set (up to the kernel's last
/// capability, where PR_CAPBSET_DROP answers EINVAL).
fn drop_bounding_set() -> Result<(), JailError> {
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_DROP takes a capability number, no pointers.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(JailError::Call {
                what: "drop a capability from the bounding set",
                source: e,
            });
        }
    }
    Ok(())
}

/// With a `jail`: moves into an empty root keeping only `keep`, becomes
/// its uid and gid with no capabilities and re-arms the parent-death
/// signal; in any case sets `PR_SET_NO_NEW_PRIVS`. Must run while the
/// process has a single thread (a mount namespace and glibc's id changes
/// are per thread otherwise).
pub fn enter(jail: Option<Jail>, parent: libc::pid_t, keep: &[PathBuf]) -> Result<(), JailError> {
    if let Some(j) = jail {
        // SAFETY: geteuid has no arguments.
        if unsafe { libc::geteuid() } != 0 {
            return Err(JailError::NotRoot);
        }
        enter_empty_root(keep)?;
        // SAFETY: setgroups with size 0 reads no memory.
        check("clear supplementary groups", unsafe {
            libc::setgroups(0, std::ptr::null())
        })?;
        // SAFETY: plain id arguments.
        check("set the gid", unsafe {
            libc::setresgid(j.gid, j.gid, j.gid)
        })?;
        drop_bounding_set()?;
        // SAFETY: plain id arguments; without SECBIT_KEEP_CAPS this clears
        // the permitted, effective and ambient capability sets.
        check("set the uid", unsafe {
            libc::setresuid(j.uid, j.uid, j.uid)
        })?;
        // SAFETY: setuid with a plain id; it must fail now.
        if unsafe { libc::setuid(0) } == 0 {
            return Err(JailError::StillRoot);
        }
        // SAFETY: PR_SET_PDEATHSIG takes a signal number.
        check("set the parent-death signal", unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0)
        })?;
        // SAFETY: getppid has no arguments.
        if unsafe { libc::getppid() } != parent {
            return Err(JailError::Orphaned);
        }
    }
    // SAFETY: PR_SET_NO_NEW_PRIVS takes a flag, no pointers.
    check("set no_new_privs", unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `enter` in a forked child and checks the child's /proc status
    /// from here (the jailed child has no /proc): 0 when it shows the jail,
    /// 1 when `enter` failed, 4 when a field is wrong.
    fn in_child(jail: Option<Jail>) -> i32 {
        // SAFETY: getpid has no arguments.
        let me = unsafe { libc::getpid() };
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into `fds`.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child enters the jail, reports on the pipe and waits
        // to be killed, never returning into the harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = enter(jail, me, &[]).is_ok();
            // SAFETY: writes one byte from a live buffer, then waits or exits.
            unsafe {
                libc::write(fds[1], [u8::from(ok)].as_ptr().cast(), 1);
                if ok {
                    libc::pause();
                }
                libc::_exit(1);
            }
        }
        let mut b = [0u8; 1];
        // SAFETY: reads one byte into a live buffer.
        let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
        let code = if n == 1 && b[0] == 1 {
            status_matches(pid, jail)
        } else {
            1
        };
        // SAFETY: kills and reaps our own child; closes our pipe ends.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        code
    }

    fn status_matches(pid: libc::pid_t, jail: Option<Jail>) -> i32 {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return 3;
        };
        let field = |name: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        };
        let mut ok = field("NoNewPrivs:").as_deref() == Some("1");
        if let Some(j) = jail {
            ok &= field("Uid:") == Some(j.uid.to_string());
            ok &= field("Gid:") == Some(j.gid.to_string());
            ok &= field("CapEff:").as_deref() == Some("0000000000000000");
            ok &= field("CapPrm:").as_deref() == Some("0000000000000000");
            ok &= field("CapBnd:").as_deref() == Some("0000000000000000");
            // An empty root: no /etc, no /proc.
            let root = std::fs::read_dir(format!("/proc/{pid}/root"))
                .map(|d| d.count())
                .unwrap_or(usize::MAX);
            ok &= root == 0;
        }
        if ok {
            0
        } else {
            4
        }
    }

    #[test]
    fn no_new_privs_without_a_jail() {
        assert_eq!(in_child(None), 0);
    }

    #[test]
    fn root_becomes_the_jail_uid_with_no_capabilities() {
        // SAFETY: geteuid has no arguments.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to change uid");
            return;
        }
        let jail = Jail {
            uid: 2_000_123_456,
            gid: 2_000_123_456,
        };
        assert_eq!(in_child(Some(jail)), 0);
    }
}
