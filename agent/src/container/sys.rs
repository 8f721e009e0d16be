//! The mount-namespace syscalls behind a trait, with the real implementation
//! and a recording fake, so the rootfs plan is tested on any host.
//!
//! [`RealSys`] runs in the freshly cloned child, before `execve`: it takes
//! ready-made C strings and never allocates.

use std::ffi::{CStr, CString};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

/// The syscalls the rootfs set-up needs.
pub trait Sys {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: MsFlags,
        data: Option<&CStr>,
    ) -> nix::Result<()>;
    /// mknod(2).
    fn mknod(&self, path: &CStr, kind: SFlag, perm: Mode, dev: u64) -> nix::Result<()>;
    /// symlink(2).
    fn symlink(&self, target: &CStr, link: &CStr) -> nix::Result<()>;
    /// mkdir(2).
    fn mkdir(&self, path: &CStr, perm: Mode) -> nix::Result<()>;
    /// `chdir(new_root); pivot_root(".", "."); umount2(".", MNT_DETACH); chdir("/")`.
    fn pivot_root(&self, new_root: &CStr) -> nix::Result<()>;
}

/// The real syscalls.
#[derive(Debug, Clone, Copy)]
pub struct RealSys;

impl Sys for RealSys {
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: MsFlags,
        data: Option<&CStr>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn mknod(&self, path: &CStr, kind: SFlag, perm: Mode, dev: u64) -> nix::Result<()> {
        nix::sys::stat::mknod(path, kind, perm, dev)
    }

    fn symlink(&self, target: &CStr, link: &CStr) -> nix::Result<()> {
        nix::unistd::symlinkat(target, nix::fcntl::AT_FDCWD, link)
    }

    fn mkdir(&self, path: &CStr, perm: Mode) -> nix::Result<()> {
        nix::unistd::mkdir(path, perm)
    }

    fn pivot_root(&self, new_root: &CStr) -> nix::Result<()> {
        let dot = c".";
        nix::unistd::chdir(new_root)?;
        match nix::unistd::pivot_root(dot, dot) {
            Ok(()) => {
                nix::mount::umount2(dot, MntFlags::MNT_DETACH)?;
            }
            // The guest kernel refuses pivot_root below a root that sits on
            // the initramfs, even after PID 1 moved onto a tmpfs. As Kata's
            // agent and `runc --no-pivot` do there, move the new root over
            // `/` in this private mount namespace and chroot into it.
            Err(nix::Error::EINVAL) => {
                nix::mount::mount(
                    Some(dot),
                    c"/",
                    None::<&CStr>,
                    nix::mount::MsFlags::MS_MOVE,
                    None::<&CStr>,
                )?;
                nix::unistd::chroot(dot)?;
            }
            Err(e) => return Err(e),
        }
        nix::unistd::chdir(c"/")
    }
}

/// Records calls as strings; fails the call whose index is `fail_at`.
#[derive(Debug, Default)]
pub struct RecordingSys {
    /// One line per call.
    pub calls: Mutex<Vec<String>>,
    /// Index of a call to fail with `EPERM`.
    pub fail_at: Option<usize>,
}

impl RecordingSys {
    fn push(&self, s: String) -> nix::Result<()> {
        let mut c = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let i = c.len();
        c.push(s);
        if self.fail_at == Some(i) {
            return Err(nix::Error::EPERM);
        }
        Ok(())
    }

    /// The recorded calls.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn s(c: Option<&CStr>) -> String {
    c.map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|| "-".into())
}

fn flag_names(flags: MsFlags) -> String {
    let names: Vec<&str> = flags.iter_names().map(|(n, _)| n).collect();
    if names.is_empty() {
        "0".into()
    } else {
        names.join("|")
    }
}

impl Sys for RecordingSys {
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: MsFlags,
        data: Option<&CStr>,
    ) -> nix::Result<()> {
        self.push(format!(
            "mount {} {} {} {} {}",
            s(source),
            s(Some(target)),
            s(fstype),
            flag_names(flags),
            s(data)
        ))
    }

    fn mknod(&self, path: &CStr, kind: SFlag, perm: Mode, dev: u64) -> nix::Result<()> {
        self.push(format!(
            "mknod {} {:o} {:o} {dev}",
            s(Some(path)),
            kind.bits(),
            perm.bits()
        ))
    }

    fn symlink(&self, target: &CStr, link: &CStr) -> nix::Result<()> {
        self.push(format!("symlink {} {}", s(Some(target)), s(Some(link))))
    }

    fn mkdir(&self, path: &CStr, perm: Mode) -> nix::Result<()> {
        self.push(format!("mkdir {} {:o}", s(Some(path)), perm.bits()))
    }

    fn pivot_root(&self, new_root: &CStr) -> nix::Result<()> {
        self.push(format!("pivot_root {}", s(Some(new_root))))
    }
}

/// A path as a C string (paths never contain NUL on Linux).
pub fn cstring(p: &std::path::Path) -> CString {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}
