//! The container's `husk-vmm` process: its `vm.json` (a typed
//! [`VmConfig`], never comma-joined flags), its start with an event pipe,
//! and the typed events it reports ([`VmmEvent`]: the boot marker, a
//! failure's reason). husk-vmm is jailed (`jail.rs`): it gets an
//! unprivileged uid/gid to become once the VM is built, a cgroup when the
//! host has one, and its seccomp filters are on.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use husk_proto::guest::GUEST_CID;
use husk_proto::vm::{Console, VmConfig, VmmEvent, VsockConfig, DEFAULT_CMDLINE, MAX_EVENT_LINE};

use super::jail::{self, Cgroup, Limits};

/// The descriptor number husk-vmm gets its event pipe on.
const EVENTS_FD: i32 = 3;

/// Starting husk-vmm failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `vm.json` could not be written.
    #[error("cannot write {path}")]
    WriteConfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The log file or the event pipe could not be made.
    #[error("cannot prepare husk-vmm's {what}")]
    Prepare {
        /// Which.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The vsock directory could not be opened to husk-vmm's group.
    #[error("cannot share {path} with husk-vmm")]
    ShareDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// husk-vmm's cgroup could not be made.
    #[error("cannot create husk-vmm's cgroup")]
    Cgroup(#[source] io::Error),
    /// The process could not be started.
    #[error("cannot start {path}")]
    Spawn {
        /// The executable.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What husk-vmm reported so far.
#[derive(Debug, Default)]
struct Reported {
    boot_marker_ms: Option<f64>,
    failure: Option<String>,
    stopped: Option<String>,
    closed: bool,
}

/// The events of one husk-vmm, collected by a reader thread.
#[derive(Debug, Default)]
pub struct VmmEvents {
    reported: Mutex<Reported>,
    changed: Condvar,
}

impl VmmEvents {
    fn update(&self, f: impl FnOnce(&mut Reported)) {
        let mut r = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut r);
        self.changed.notify_all();
    }

    /// Waits up to `limit` until `done` holds for what was reported (or
    /// the pipe closed), then returns `pick` of it.
    fn wait_for<T>(
        &self,
        limit: Duration,
        done: impl Fn(&Reported) -> bool,
        pick: impl FnOnce(&Reported) -> T,
    ) -> T {
        let deadline = Instant::now() + limit;
        let mut r = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        while !done(&r) && !r.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            r = self
                .changed
                .wait_timeout(r, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        pick(&r)
    }

    /// The boot marker's time since husk-vmm started, waiting up to `limit`
    /// for it (it may still be in the pipe when the agent answers).
    pub fn boot_marker_ms(&self, limit: Duration) -> Option<f64> {
        self.wait_for(limit, |r| r.boot_marker_ms.is_some(), |r| r.boot_marker_ms)
    }

    /// husk-vmm's own failure message, once it has exited (waits up to
    /// `limit` for the pipe to close).
    pub fn failure(&self, limit: Duration) -> Option<String> {
        self.wait_for(limit, |_| false, |r| r.failure.clone())
    }

    /// Why the VM stopped (`power_off`, `reset`, ...), once husk-vmm has
    /// exited (waits up to `limit` for the pipe to close).
    pub fn stop_reason(&self, limit: Duration) -> Option<String> {
        self.wait_for(limit, |_| false, |r| r.stopped.clone())
    }
}

/// Reads event lines until husk-vmm closes the pipe. Lines are bounded;
/// malformed ones are logged and skipped (husk-vmm is trusted less than
/// the supervisor: it runs next to guest code).
fn read_events(pipe: impl Read, events: &VmmEvents) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_EVENT_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        match VmmEvent::from_line(&text) {
            Ok(VmmEvent::BootMarker { ms }) => events.update(|r| r.boot_marker_ms = Some(ms)),
            Ok(VmmEvent::Failed { message }) => events.update(|r| r.failure = Some(message)),
            Ok(VmmEvent::Stopped { reason }) => events.update(|r| r.stopped = Some(reason)),
            Err(e) => log::warn!("husk-vmm sent a malformed event: {e}"),
        }
    }
    events.update(|r| r.closed = true);
}

/// A started husk-vmm.
#[derive(Debug)]
pub struct VmmProcess {
    /// The process.
    pub child: Child,
    /// What it reported.
    pub events: Arc<VmmEvents>,
    /// The thread reading its events (ends when husk-vmm does).
    pub reader: JoinHandle<()>,
    /// Its cgroup, removed when dropped (after husk-vmm was reaped).
    pub cgroup: Option<Cgroup>,
}

/// How husk-vmm ended, for the container's error: death by SIGSYS is its
/// seccomp filter's doing (a killed process cannot say so itself).
pub fn describe_exit(st: &std::process::ExitStatus) -> String {
    if st.signal() == Some(libc::SIGSYS) {
        return "was killed by its seccomp filter (SIGSYS)".into();
    }
    st.to_string()
}

/// A husk guest: husk's kernel and initramfs, the boot parameters
/// `params` after the default command line, `vcpus` and `mem_mib`, its
/// console log and vsock socket at these paths; no disks or interfaces.
pub fn guest_vm(
    assets: &crate::assets::Assets,
    params: &str,
    (vcpus, mem_mib): (u32, u32),
    (console, uds_path): (PathBuf, PathBuf),
) -> VmConfig {
    let cmdline = if params.is_empty() {
        DEFAULT_CMDLINE.to_string()
    } else {
        format!("{DEFAULT_CMDLINE} {params}")
    };
    VmConfig {
        kernel: Some(assets.kernel.clone()),
        initrd: Some(assets.initrd.clone()),
        cmdline,
        vcpus,
        mem_mib,
        console: Console::File(console),
        pvh: true,
        disks: Vec::new(),
        nets: Vec::new(),
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path,
        }),
    }
}

/// Writes `vm.json` in `dir` and starts `vmm` with it, its stderr going to
/// `dir/vmm.log`, its events to a pipe read by a thread, and its control
/// socket (pause, resume, snapshot) at `api_sock`; jailed (see the
/// module's documentation).
pub fn spawn(
    vmm: &Path,
    config: &VmConfig,
    dir: &Path,
    control: &Control<'_>,
) -> Result<VmmProcess, VmmError> {
    let config_path = dir.join("vm.json");
    write_config(&config_path, config)?;
    let log_path = dir.join("vmm.log");
    let mut log = File::create(&log_path).map_err(|source| VmmError::Prepare {
        what: "log file",
        source,
    })?;
    let jail_id = jail::jail_id();
    if let (Some(id), Some(vsock)) = (jail_id, &config.vsock) {
        if let Some(d) = vsock.uds_path.parent() {
            jail::share_vsock_dir(d, id).map_err(|source| VmmError::ShareDir {
                path: d.to_path_buf(),
                source,
            })?;
        }
    }
    let cgroup = vmm_cgroup(config, dir, &mut log)?;
    let (read_end, write_end) = io::pipe().map_err(|source| VmmError::Prepare {
        what: "event pipe",
        source,
    })?;
    let write_end = OwnedFd::from(write_end);
    let raw = write_end.as_raw_fd();
    let mut cmd = Command::new(vmm);
    cmd.arg("--config")
        .arg(&config_path)
        .arg("--events-fd")
        .arg(EVENTS_FD.to_string())
        .arg("--api-sock")
        .arg(control.api_sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .env("RUST_LOG", "info");
    if let Some(d) = control.snapshot_dir {
        cmd.arg("--snapshot-dir").arg(d);
    }
    if let Some(d) = control.restore {
        cmd.arg("--restore").arg(d);
    }
    if let Some(id) = jail_id {
        cmd.arg("--jail-uid")
            .arg(id.to_string())
            .arg("--jail-gid")
            .arg(id.to_string());
    }
    let procs = cgroup.as_ref().map(Cgroup::procs_fd);
    // SAFETY: only async-signal-safe calls between fork and exec: prctl
    // ties husk-vmm's life to the supervisor's, write moves the child into
    // its cgroup (an open descriptor owned by `cgroup` until after spawn),
    // dup2 puts the pipe's write end (open, owned by `write_end` until
    // after spawn) on EVENTS_FD without close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = procs {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                || libc::dup2(raw, EVENTS_FD) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| VmmError::Spawn {
        path: vmm.to_path_buf(),
        source,
    })?;
    // Only husk-vmm holds the write end now: its exit closes the pipe.
    drop(write_end);
    let events = Arc::new(VmmEvents::default());
    let ev = events.clone();
    let reader = thread::spawn(move || read_events(read_end, &ev));
    Ok(VmmProcess {
        child,
        events,
        reader,
        cgroup,
    })
}

/// A command to husk-vmm's control socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be reached or did not answer in time.
    #[error("cannot reach husk-vmm's control socket {path}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// husk-vmm refused or failed the command.
    #[error("husk-vmm: {0}")]
    Refused(String),
}

/// husk-vmm's control socket and what goes through it.
#[derive(Debug, Clone, Copy)]
pub struct Control<'a> {
    /// The socket (pause, resume, snapshot, queues).
    pub api_sock: &'a Path,
    /// Where snapshots may be written (kept in husk-vmm's jail).
    pub snapshot_dir: Option<&'a Path>,
    /// Start from this snapshot instead of booting.
    pub restore: Option<&'a Path>,
}

impl<'a> Control<'a> {
    /// Only the socket: no snapshots, a fresh boot.
    pub fn socket(api_sock: &'a Path) -> Self {
        Control {
            api_sock,
            snapshot_dir: None,
            restore: None,
        }
    }
}

/// How long husk-vmm may take to answer a control command.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one command (`pause`, `resume`, `snapshot DIR`) to husk-vmm's
/// control socket and reads its one-line answer.
pub fn api_command(sock: &Path, command: &str) -> Result<(), ApiError> {
    api_query(sock, command).map(drop)
}

/// Sends one command to husk-vmm's control socket and returns the text of
/// its `ok` answer (empty for a plain `ok`).
pub fn api_query(sock: &Path, command: &str) -> Result<String, ApiError> {
    use std::io::Write;
    let fail = |source| ApiError::Io {
        path: sock.to_path_buf(),
        source,
    };
    let mut s = std::os::unix::net::UnixStream::connect(sock).map_err(fail)?;
    s.set_read_timeout(Some(API_TIMEOUT)).map_err(fail)?;
    s.set_write_timeout(Some(API_TIMEOUT)).map_err(fail)?;
    s.write_all(format!("{command}\n").as_bytes())
        .map_err(fail)?;
    let mut line = String::new();
    BufReader::new(s.take(4096))
        .read_line(&mut line)
        .map_err(fail)?;
    let line = line.trim_end();
    if line == "ok" {
        return Ok(String::new());
    }
    match line.strip_prefix("ok ") {
        Some(text) => Ok(text.to_string()),
        None => Err(ApiError::Refused(
            line.strip_prefix("error: ").unwrap_or(line).to_string(),
        )),
    }
}

/// husk-vmm's cgroup, named after the container's directory; without
/// cgroup2 controllers on the host, a note in `vmm.log` instead.
fn vmm_cgroup(config: &VmConfig, dir: &Path, log: &mut File) -> Result<Option<Cgroup>, VmmError> {
    use std::io::Write;
    let name = dir
        .file_name()
        .map_or_else(|| "vm".into(), |n| n.to_string_lossy().into_owned());
    let limits = Limits::for_vm(config.mem_mib, config.vcpus);
    let root = Path::new(jail::CGROUP_ROOT);
    let cgroup = Cgroup::create(root, &name, limits).map_err(VmmError::Cgroup)?;
    if let Some(cg) = &cgroup {
        let _ = writeln!(log, "husk: husk-vmm's cgroup: {}", cg.path().display());
    } else {
        let _ = writeln!(
            log,
            "husk: no cgroup2 memory and pids controllers at {}: husk-vmm runs without a cgroup",
            root.display()
        );
    }
    Ok(cgroup)
}

fn write_config(path: &Path, config: &VmConfig) -> Result<(), VmmError> {
    let fail = |source| VmmError::WriteConfig {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec_pretty(config).map_err(|e| fail(io::Error::other(e)))?;
    fs::write(path, json).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn death_by_sigsys_is_the_seccomp_filter() {
        use std::process::ExitStatus;
        assert_eq!(
            describe_exit(&ExitStatus::from_raw(libc::SIGSYS)),
            "was killed by its seccomp filter (SIGSYS)"
        );
        let killed = describe_exit(&ExitStatus::from_raw(libc::SIGKILL));
        assert!(killed.contains("SIGKILL"), "{killed}");
    }

    #[test]
    fn events_are_read_and_bounded() {
        let mut input = VmmEvent::BootMarker { ms: 42.0 }.to_line();
        input.push_str("not json\n");
        input.push_str(&"x".repeat(MAX_EVENT_LINE * 3));
        input.push('\n');
        input.push_str(
            &VmmEvent::Failed {
                message: "cannot open /dev/kvm".into(),
            }
            .to_line(),
        );
        let events = VmmEvents::default();
        read_events(input.as_bytes(), &events);
        assert_eq!(events.boot_marker_ms(Duration::ZERO), Some(42.0));
        assert_eq!(
            events.failure(Duration::ZERO).as_deref(),
            Some("cannot open /dev/kvm")
        );
    }

    #[test]
    fn a_fake_vmm_reports_through_the_pipe_and_reads_vm_json() {
        // A shell stands in for husk-vmm: it checks it got --config with a
        // path holding a comma, a space and a colon, then reports.
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("data, dir:x");
        fs::create_dir(&odd).unwrap();
        let fake = dir.path().join("fake-vmm");
        fs::write(
            &fake,
            "#!/bin/sh\n[ \"$1\" = --config ] && [ -f \"$2\" ] && [ \"$3\" = --events-fd ] || exit 9\n\
             grep -q '\"mem_mib\": 300' \"$2\" || exit 8\n\
             echo '{\"event\":\"boot_marker\",\"ms\":7.5}' >&3\n\
             echo '{\"event\":\"failed\",\"message\":\"boom\"}' >&3\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let config = VmConfig {
            mem_mib: 300,
            ..VmConfig::default()
        };
        let mut p = spawn(
            &fake,
            &config,
            &odd,
            &Control::socket(&odd.join("vmm.sock")),
        )
        .unwrap();
        let st = p.child.wait().unwrap();
        assert!(st.success(), "{st}");
        assert_eq!(p.events.boot_marker_ms(Duration::from_secs(5)), Some(7.5));
        assert_eq!(
            p.events.failure(Duration::from_secs(5)).as_deref(),
            Some("boom")
        );
        p.reader.join().unwrap();
        let back: VmConfig =
            serde_json::from_slice(&fs::read(odd.join("vm.json")).unwrap()).unwrap();
        assert_eq!(back, config);
    }
}
