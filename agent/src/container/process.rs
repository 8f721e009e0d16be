//! Cloning a container process and what the child does before `execve`.
//!
//! Everything the child needs (C strings, the mount plan, file descriptors)
//! is prepared by the agent first; between `clone` and `execve` the child
//! only makes raw syscalls and never allocates, since the agent may be
//! multi-threaded. Two close-on-exec pipes link them: the child waits on
//! `sync` until the agent has put it in its cgroup, and reports a failure
//! as `(step, errno)` on `err`; end-of-file on `err` means `execve`
//! succeeded (as runc does). A failed `execve` becomes
//! [`ContainerError::CommandNotFound`] or
//! [`ContainerError::CommandNotExecutable`] (Docker's 127 and 126).

use std::ffi::{c_char, CString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use nix::pty::Winsize;
use nix::sched::CloneFlags;

use super::rootfs::{self, MountOp};
use super::sys::RealSys;
use super::user::Identity;
use super::{ContainerError, Result};
use crate::reaper::Reaper;
use husk_proto::agent::ConsoleSize;

/// Child steps, reported on failure.
const STEP_SYNC: u32 = 1;
const STEP_CGROUPNS: u32 = 2;
const STEP_SETNS: u32 = 3;
const STEP_HOSTNAME: u32 = 4;
const STEP_SETSID: u32 = 5;
const STEP_STDIO: u32 = 6;
const STEP_IDENTITY: u32 = 7;
const STEP_WORKDIR: u32 = 8;
const STEP_EXEC: u32 = 9;
const STEP_LOOPBACK: u32 = 10;
const STEP_PRIVILEGES: u32 = 11;
/// Mount-plan step `i` is reported as `STEP_MOUNT + i`.
const STEP_MOUNT: u32 = 1000;

/// Everything a child needs, prepared in the agent.
#[derive(Debug)]
pub struct ChildPlan {
    /// Mount plan (init only).
    pub mounts: Vec<MountOp>,
    /// Hostname (init only).
    pub hostname: Option<CString>,
    /// Namespaces to join, in order (exec only; the pid namespace is joined
    /// by the spawning thread).
    pub setns: Vec<(OwnedFd, CloneFlags)>,
    /// Unshare the cgroup namespace once in the cgroup (init).
    pub unshare_cgroup: bool,
    /// Bring `lo` up: the init of a new network namespace.
    pub loopback_up: bool,
    /// Capabilities kept and `no_new_privs`.
    pub security: husk_proto::security::Security,
    /// uid, gid, groups.
    pub identity: Identity,
    /// Working directory inside the container.
    pub workdir: CString,
    /// argv.
    pub argv: Vec<CString>,
    /// envp.
    pub envp: Vec<CString>,
    /// Paths to try with execve, in order.
    pub candidates: Vec<CString>,
    /// stdin, stdout, stderr.
    pub stdio: [OwnedFd; 3],
    /// stdio is a terminal: make it the controlling one.
    pub tty: bool,
}

/// A close-on-exec pipe: (read end, write end).
pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ContainerError::Spawn {
        step: "pipe".into(),
        source: e.into(),
    })
}

fn null_terminated(v: &[CString]) -> Vec<*const c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

/// Clones a child with `flags` (namespaces to create), runs the plan in it
/// and execs. With `pidns`, the child is born in that PID namespace: the
/// calling thread joins it just around the clone (setns of a PID namespace
/// only affects the caller's future children, and no thread can be created
/// meanwhile). `place` runs in the agent once the child exists, before it
/// may go on (put it in its cgroup). Returns the child's pid.
pub fn spawn(
    plan: &ChildPlan,
    flags: CloneFlags,
    pidns: Option<&OwnedFd>,
    reaper: &Reaper,
    place: impl FnOnce(i32) -> Result<()>,
) -> Result<i32> {
    let argv = null_terminated(&plan.argv);
    let envp = null_terminated(&plan.envp);
    let groups: Vec<libc::gid_t> = plan.identity.groups.clone();
    let (sync_r, sync_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let fds = ChildFds {
        sync_r: sync_r.as_raw_fd(),
        sync_w: sync_w.as_raw_fd(),
        err_w: err_w.as_raw_fd(),
    };
    let join = |fd: &OwnedFd, step: &str| {
        nix::sched::setns(fd, CloneFlags::CLONE_NEWPID).map_err(|e| ContainerError::Spawn {
            step: step.into(),
            source: e.into(),
        })
    };
    let own = match pidns {
        Some(_) => Some(OwnedFd::from(
            File::open("/proc/thread-self/ns/pid").map_err(|source| ContainerError::Io {
                path: "/proc/thread-self/ns/pid".into(),
                source,
            })?,
        )),
        None => None,
    };
    let pid = reaper.spawn(|| {
        if let Some(ns) = pidns {
            join(ns, "join pid namespace")?;
        }
        // SAFETY: a raw clone without CLONE_VM behaves like fork(2): the
        // child gets a copy of this thread's memory and stack. It only runs
        // `child_main`, which makes raw syscalls on data prepared above and
        // ends in execve or _exit, never returning into Rust code.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::c_long::from(flags.bits() | libc::SIGCHLD),
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if rc != 0 {
            if let Some(own) = &own {
                join(own, "leave pid namespace")?;
            }
        }
        match rc {
            -1 => Err(ContainerError::Spawn {
                step: "clone".into(),
                source: std::io::Error::last_os_error(),
            }),
            0 => child_main(plan, &fds, &argv, &envp, &groups),
            pid => Ok(i32::try_from(pid).unwrap_or(-1)),
        }
    })?;
    drop(sync_r);
    drop(err_w);
    let kill = || {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    };
    if let Err(e) = place(pid) {
        kill();
        return Err(e);
    }
    let mut sync = File::from(sync_w);
    if let Err(source) = sync.write_all(b"g") {
        kill();
        return Err(ContainerError::Spawn {
            step: "sync".into(),
            source,
        });
    }
    drop(sync);
    let mut report = Vec::new();
    let _ = File::from(err_r).read_to_end(&mut report);
    if report.len() >= 8 {
        let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
        let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
        return Err(child_error(step, errno, plan));
    }
    Ok(pid)
}

/// What the child's `(step, errno)` report means, with Docker's wording for
/// a command that is missing or cannot be executed.
fn child_error(step: u32, errno: i32, plan: &ChildPlan) -> ContainerError {
    let text = |c: &CString| c.to_string_lossy().into_owned();
    let command = plan.argv.first().map(text).unwrap_or_default();
    match (step, errno) {
        (STEP_EXEC, libc::ENOENT | libc::ENOTDIR) => ContainerError::CommandNotFound {
            searched: !command.contains('/'),
            command,
        },
        (STEP_EXEC, libc::EACCES | libc::EPERM | libc::ENOEXEC | libc::EISDIR | libc::ETXTBSY) => {
            let reason = match errno {
                libc::ENOEXEC => "exec format error",
                libc::EISDIR => "is a directory",
                libc::ETXTBSY => "text file busy",
                _ => "permission denied",
            };
            ContainerError::CommandNotExecutable { command, reason }
        }
        (STEP_WORKDIR, _) => ContainerError::Workdir {
            workdir: text(&plan.workdir),
            source: std::io::Error::from_raw_os_error(errno),
        },
        _ => ContainerError::Spawn {
            step: step_name(step, plan),
            source: std::io::Error::from_raw_os_error(errno),
        },
    }
}

fn step_name(step: u32, plan: &ChildPlan) -> String {
    match step {
        STEP_SYNC => "waiting for the agent".into(),
        STEP_CGROUPNS => "unshare cgroup namespace".into(),
        STEP_SETNS => "join namespaces".into(),
        STEP_HOSTNAME => "sethostname".into(),
        STEP_SETSID => "setsid".into(),
        STEP_STDIO => "stdio".into(),
        STEP_IDENTITY => "setgroups/setgid/setuid".into(),
        STEP_WORKDIR => format!("chdir {:?}", plan.workdir),
        STEP_EXEC => format!("exec {:?}", plan.argv.first()),
        STEP_LOOPBACK => "bring the loopback interface up".into(),
        STEP_PRIVILEGES => "drop capabilities".into(),
        s if s >= STEP_MOUNT => match plan.mounts.get((s - STEP_MOUNT) as usize) {
            Some(op) => format!("rootfs: {op:?}"),
            None => "rootfs".into(),
        },
        s => format!("step {s}"),
    }
}

#[derive(Debug)]
struct ChildFds {
    sync_r: RawFd,
    sync_w: RawFd,
    err_w: RawFd,
}

/// Reports `(step, errno)` and exits. Async-signal-safe.
fn fail(fds: &ChildFds, step: u32, errno: i32) -> ! {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&step.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writing 8 bytes from a stack buffer to a descriptor we own;
    // _exit never returns and runs no destructors or atexit handlers.
    unsafe {
        libc::write(fds.err_w, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

/// The calling thread's errno (EIO when there is none); async-signal-safe.
pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The child, between clone and execve: raw syscalls only.
fn child_main(
    plan: &ChildPlan,
    fds: &ChildFds,
    argv: &[*const c_char],
    envp: &[*const c_char],
    groups: &[libc::gid_t],
) -> ! {
    // SAFETY: every call below is a raw syscall wrapper on descriptors the
    // child owns and on NUL-terminated strings and arrays prepared before
    // the clone, which stay alive (the child never returns).
    unsafe {
        // Default signal dispositions and an empty mask (the agent ignores
        // SIGPIPE; an ignored disposition would survive execve).
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        libc::close(fds.sync_w);
        let mut b = 0u8;
        if libc::read(fds.sync_r, (&raw mut b).cast(), 1) != 1 {
            fail(fds, STEP_SYNC, errno());
        }
        if plan.unshare_cgroup && libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
            fail(fds, STEP_CGROUPNS, errno());
        }
        for (fd, flag) in &plan.setns {
            if libc::setns(fd.as_raw_fd(), flag.bits()) != 0 {
                fail(fds, STEP_SETNS, errno());
            }
        }
        if plan.loopback_up {
            if let Err(e) = crate::netconf::raise_loopback() {
                fail(fds, STEP_LOOPBACK, e);
            }
        }
        if let Err((i, e)) = rootfs::execute(&RealSys, &plan.mounts) {
            fail(fds, STEP_MOUNT + u32::try_from(i).unwrap_or(0), e as i32);
        }
        if let Some(h) = &plan.hostname {
            if libc::sethostname(h.as_ptr(), h.as_bytes().len()) != 0 {
                fail(fds, STEP_HOSTNAME, errno());
            }
        }
        if libc::setsid() < 0 {
            fail(fds, STEP_SETSID, errno());
        }
        for (target, fd) in (0 as RawFd..).zip(plan.stdio.iter()) {
            let fd = fd.as_raw_fd();
            let ok = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, target) == target
            };
            if !ok {
                fail(fds, STEP_STDIO, errno());
            }
        }
        if plan.tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            fail(fds, STEP_STDIO, errno());
        }
        // Nothing but stdio crosses execve: descriptors other agent threads
        // opened without O_CLOEXEC (pty masters, streams) would leak into
        // the container. The error pipe is close-on-exec already.
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        );
        if let Err(e) = super::privileges::apply(&plan.security) {
            fail(fds, STEP_PRIVILEGES, e);
        }
        let id = &plan.identity;
        // Raw syscalls: glibc's wrappers would try to broadcast the change
        // to the agent's other threads, which do not exist in this child.
        let (gid, uid) = (libc::c_long::from(id.gid), libc::c_long::from(id.uid));
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
            || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
        {
            fail(fds, STEP_IDENTITY, errno());
        }
        if libc::chdir(plan.workdir.as_ptr()) != 0 {
            fail(fds, STEP_WORKDIR, errno());
        }
        let mut err = libc::ENOENT;
        for c in &plan.candidates {
            libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let e = errno();
            // Like execvp: remember a more telling error than ENOENT.
            if e != libc::ENOENT && e != libc::ENOTDIR {
                err = e;
            }
        }
        fail(fds, STEP_EXEC, err)
    }
}

/// Opens /dev/null for a missing stdio stream.
pub fn dev_null() -> Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|source| ContainerError::Io {
            path: "/dev/null".into(),
            source,
        })?;
    Ok(f.into())
}

fn winsize(size: ConsoleSize) -> Winsize {
    Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Allocates a pseudo-terminal of `size` and pumps it to the stdio
/// descriptors on two threads; returns the slave for the child's 0, 1 and
/// 2, and the master (for [`resize`]).
pub fn tty(
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    size: Option<ConsoleSize>,
) -> Result<(OwnedFd, File)> {
    let ws = size.map(winsize);
    let pty = nix::pty::openpty(ws.as_ref(), None).map_err(|e| ContainerError::Spawn {
        step: "openpty".into(),
        source: e.into(),
    })?;
    let master = File::from(pty.master);
    let io = |source| ContainerError::Spawn {
        step: "tty".into(),
        source,
    };
    if let Some(out) = stdout {
        let mut from = master.try_clone().map_err(io)?;
        let mut to = File::from(out);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
        });
    }
    if let Some(inp) = stdin {
        let mut to = master.try_clone().map_err(io)?;
        let mut from = File::from(inp);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
        });
    }
    Ok((pty.slave, master))
}

/// Sets the terminal size on a pty master (`TIOCSWINSZ`); the kernel sends
/// `SIGWINCH` to the terminal's foreground process group.
pub fn resize(master: &File, size: ConsoleSize) -> Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads a `struct winsize` from the pointer, which
    // points to a live, initialised value; the descriptor is valid.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &raw const ws) };
    if rc != 0 {
        return Err(ContainerError::Spawn {
            step: "set the terminal size".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Duplicates a descriptor (for the child's three stdio slots).
pub fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid descriptor returns a new descriptor
    // that nothing else owns.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(ContainerError::Spawn {
            step: "dup".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `n` is a fresh descriptor owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}
