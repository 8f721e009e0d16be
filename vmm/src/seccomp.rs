//! Per-thread seccomp filters, as Firecracker's: each husk-vmm thread may
//! make only the system calls its work needs, and any other call kills the
//! whole process (`SECCOMP_RET_KILL_PROCESS`, seen by the parent as death
//! by SIGSYS, since a killed process cannot log).
//!
//! Two kinds of thread run once the guest does:
//! - **vCPU threads**: `KVM_RUN` and the other KVM vCPU ioctls (state save
//!   for snapshots), the port-I/O and MMIO device emulation (console and
//!   event pipe writes, eventfd signals), futexes for their channels;
//! - **the VMM thread** (the main thread, which runs the event loop and
//!   with it every virtio device's queue processing): epoll, eventfds,
//!   block I/O on open disks, TAP reads and writes, vsock Unix sockets
//!   (accepting host connections, connecting to `<uds>_<port>`), the signal
//!   descriptor, vCPU kicks, and with a control socket the files a snapshot
//!   writes.
//!
//! Nothing opens a path but the snapshot writer: disks, TAPs, /dev/kvm and
//! the console are opened before the filters are installed, and the
//! filters are installed before any guest instruction runs.
//!
//! The syscall lists were taken from `strace -f` of husk-vmm on the KVM
//! tests in `vmm/tests/` and of real guests (`tests/e2e.sh run`).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Seccomp errors.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A filter could not be built or compiled.
    #[error("cannot build the {thread} seccomp filter")]
    Build {
        /// Which thread's filter.
        thread: &'static str,
        /// The cause.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused a filter.
    #[error("cannot install the {thread} seccomp filter")]
    Install {
        /// Which thread's filter.
        thread: &'static str,
        /// The cause.
        #[source]
        source: seccompiler::Error,
    },
}

/// The kinds of husk-vmm thread that get a filter of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop, devices, control socket.
    Vmm,
    /// A vCPU thread.
    Vcpu,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "VMM thread",
            ThreadKind::Vcpu => "vCPU thread",
        }
    }
}

/// ioctl type of every KVM request (`_IO(KVMIO, n)`, KVMIO = 0xAE).
const KVMIO: u64 = 0xAE;
/// `FIONBIO`: what `set_nonblocking` uses on sockets.
const FIONBIO: u64 = 0x5421;
/// `FIOCLEX`: what std uses to set close-on-exec on accepted sockets.
const FIOCLEX: u64 = 0x5451;

/// Calls every thread makes: memory, futexes, signals' return, time,
/// reads and writes on descriptors it holds, ending.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// What the event loop and the devices need beyond [`COMMON`].
const VMM: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_fcntl,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getrandom,
    // Kicking vCPU threads out of KVM_RUN (pause).
    libc::SYS_tgkill,
];

/// What writing a snapshot needs (only with a control socket).
const SNAPSHOT: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_ftruncate,
    // Guest memory is written in runs of non-zero pages (zero pages stay holes).
    libc::SYS_pwrite64,
    libc::SYS_rename,
    libc::SYS_renameat2,
    // Dropped memory layers are removed.
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// What a thread of `kind` may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterSpec {
    /// The thread.
    pub kind: ThreadKind,
    /// The control socket is served (pause, resume, snapshot).
    pub control: bool,
}

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(conds)
}

/// The rules of `spec`'s filter: syscall number to argument rules (an
/// empty list allows the call whatever its arguments).
fn rules(spec: FilterSpec) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut allow = |calls: &[i64]| {
        for c in calls {
            map.insert(*c, Vec::new());
        }
    };
    allow(COMMON);
    if spec.kind == ThreadKind::Vmm {
        allow(VMM);
        if spec.control {
            allow(SNAPSHOT);
        }
    }
    // ioctl: KVM requests only (type byte 0xAE), plus FIONBIO/FIOCLEX on
    // the VMM thread's sockets.
    let mut ioctl = vec![rule(vec![cond(
        1,
        SeccompCmpOp::MaskedEq(0xff00),
        KVMIO << 8,
    )?])?];
    if spec.kind == ThreadKind::Vmm {
        for req in [FIONBIO, FIOCLEX] {
            ioctl.push(rule(vec![cond(1, SeccompCmpOp::Eq, req)?])?);
        }
        // Sockets: Unix streams only (vsock's host side, control socket).
        let unix = i64::from(libc::AF_UNIX);
        map.insert(
            libc::SYS_socket,
            vec![rule(vec![cond(
                0,
                SeccompCmpOp::Eq,
                u64::try_from(unix).unwrap_or(1),
            )?])?],
        );
    }
    map.insert(libc::SYS_ioctl, ioctl);
    Ok(map)
}

/// Compiles `spec`'s filter: listed calls allowed, anything else kills
/// the process.
pub fn compile(spec: FilterSpec) -> Result<BpfProgram, SeccompError> {
    let thread = spec.kind.name();
    let build = |source| SeccompError::Build { thread, source };
    let filter = SeccompFilter::new(
        rules(spec).map_err(build)?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// The compiled filters of a husk-vmm run (`None`: seccomp is disabled
/// with `--no-seccomp`, for debugging only).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// The main thread's.
    pub vmm: Option<BpfProgram>,
    /// Every vCPU thread's.
    pub vcpu: Option<BpfProgram>,
}

impl Filters {
    /// Both filters, for a VMM serving a control socket or not.
    pub fn new(control: bool) -> Result<Self, SeccompError> {
        Ok(Filters {
            vmm: Some(compile(FilterSpec {
                kind: ThreadKind::Vmm,
                control,
            })?),
            vcpu: Some(compile(FilterSpec {
                kind: ThreadKind::Vcpu,
                control,
            })?),
        })
    }

    /// No filters at all.
    pub fn disabled() -> Self {
        Filters::default()
    }
}

/// Installs `filter` on the calling thread (a no-op for `None`). Also sets
/// `PR_SET_NO_NEW_PRIVS`, which seccomp requires of an unprivileged caller.
pub fn install(kind: ThreadKind, filter: Option<&BpfProgram>) -> Result<(), SeccompError> {
    match filter {
        Some(f) => seccompiler::apply_filter(f).map_err(|source| SeccompError::Install {
            thread: kind.name(),
            source,
        }),
        None => Ok(()),
    }
}

/// For the jail's test: a call outside every filter (a `personality`
/// query), which a filtered thread does not survive.
pub fn forbidden_syscall() {
    // SAFETY: personality(0xffffffff) only reads the persona; it changes
    // nothing and touches no memory.
    unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffff_u64) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<FilterSpec> {
        let mut v = Vec::new();
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
            for control in [false, true] {
                v.push(FilterSpec { kind, control });
            }
        }
        v
    }

    #[test]
    fn every_filter_compiles() {
        for spec in specs() {
            let prog = compile(spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
            assert!(!prog.is_empty(), "{spec:?}");
            // A classic BPF program is at most 4096 instructions.
            assert!(prog.len() < 4096, "{spec:?}: {} instructions", prog.len());
        }
    }

    #[test]
    fn the_vcpu_filter_is_the_narrowest() {
        let vcpu = rules(FilterSpec {
            kind: ThreadKind::Vcpu,
            control: true,
        })
        .unwrap();
        for call in [
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_execve,
            libc::SYS_epoll_wait,
        ] {
            assert!(!vcpu.contains_key(&call), "vCPU threads may call {call}");
        }
        let vmm = rules(FilterSpec {
            kind: ThreadKind::Vmm,
            control: false,
        })
        .unwrap();
        assert!(
            !vmm.contains_key(&libc::SYS_openat),
            "no paths without a control socket"
        );
        for call in [
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_ptrace,
        ] {
            assert!(!vmm.contains_key(&call));
        }
        assert!(vmm.contains_key(&libc::SYS_ioctl) && vcpu.contains_key(&libc::SYS_ioctl));
    }

    /// Runs `f` in a forked child with `spec`'s filter installed; returns
    /// the child's wait status.
    fn in_filtered_child(spec: FilterSpec, f: fn()) -> i32 {
        let prog = compile(spec).unwrap();
        // SAFETY: the child only installs the filter, calls `f` (raw
        // syscalls) and _exits; it never returns into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = match install(spec.kind, Some(&prog)) {
                Ok(()) => {
                    f();
                    0
                }
                Err(_) => 2,
            };
            // SAFETY: ends the child without running the parent's atexit
            // handlers or destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    #[test]
    fn a_forbidden_call_kills_the_process_with_sigsys() {
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
            let spec = FilterSpec {
                kind,
                control: true,
            };
            let status = in_filtered_child(spec, forbidden_syscall);
            assert!(libc::WIFSIGNALED(status), "{kind:?}: status {status:#x}");
            assert_eq!(libc::WTERMSIG(status), libc::SIGSYS, "{kind:?}");
        }
    }

    #[test]
    fn allowed_calls_pass_and_argument_rules_hold() {
        fn allowed() {
            // SAFETY: getpid and a write of 0 bytes to stderr have no effect.
            unsafe {
                libc::getpid();
                libc::write(2, std::ptr::null(), 0);
            }
        }
        fn tcp_socket() {
            // SAFETY: creating (and leaking, the child exits) a TCP socket.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        }
        fn unix_socket() {
            // SAFETY: as above, a Unix socket.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        }
        fn tty_ioctl() {
            let mut ws = libc::winsize {
                ws_row: 0,
                ws_col: 0,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
            unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) };
        }
        let vmm = FilterSpec {
            kind: ThreadKind::Vmm,
            control: false,
        };
        let vcpu = FilterSpec {
            kind: ThreadKind::Vcpu,
            control: false,
        };
        assert_eq!(in_filtered_child(vmm, allowed), 0);
        assert_eq!(in_filtered_child(vcpu, allowed), 0);
        assert_eq!(in_filtered_child(vmm, unix_socket), 0);
        for (spec, f) in [
            (vmm, tcp_socket as fn()),
            (vcpu, unix_socket),
            (vmm, tty_ioctl),
        ] {
            let status = in_filtered_child(spec, f);
            assert!(libc::WIFSIGNALED(status), "{spec:?}: {status:#x}");
            assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
        }
    }
}
