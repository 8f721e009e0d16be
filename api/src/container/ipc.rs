//! The client side of a container's supervisor: starting one (and reading
//! its typed ready message) and sending it requests over its control
//! socket (`control.rs`).

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::control::{read_frame, write_frame, Reply, Request, SupervisorReady};
use super::Handle;

/// Talking to a supervisor failed.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// husk's own executable could not be found or started.
    #[error("cannot start the container's supervisor")]
    Spawn(#[source] io::Error),
    /// The supervisor's log could not be opened.
    #[error("cannot open {path}")]
    Log {
        /// The log.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The supervisor ended before saying whether the start worked.
    #[error("the container's supervisor died while starting; see {log}")]
    Died {
        /// Its log.
        log: PathBuf,
    },
    /// The supervisor (or the container) refused: its message and the exit
    /// status the CLI should use.
    #[error("{message}")]
    Refused {
        /// One line.
        message: String,
        /// Exit status.
        status: i32,
    },
    /// No supervisor answers: the container is not running.
    #[error("container {id} is not running")]
    NotRunning {
        /// Container id.
        id: String,
    },
}

impl IpcError {
    /// The exit status a CLI command should end with.
    pub fn status(&self) -> i32 {
        match self {
            IpcError::Spawn(_) | IpcError::Log { .. } | IpcError::Died { .. } => 125,
            IpcError::Refused { status, .. } => *status,
            IpcError::NotRunning { .. } => 1,
        }
    }
}

/// Starts the supervisor of container `h` and waits for its typed
/// [`SupervisorReady`] message.
pub fn spawn_supervisor(
    data_dir: &Path,
    h: &Handle,
    checkpoint: Option<&str>,
) -> Result<(), IpcError> {
    let exe = std::env::current_exe().map_err(IpcError::Spawn)?;
    let log_path = h.dir.join("supervisor.log");
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| IpcError::Log {
            path: log_path.clone(),
            source,
        })?;
    let mut cmd = Command::new(exe);
    cmd.arg("--data-dir")
        .arg(data_dir)
        .arg("container-supervise")
        .arg(&h.id);
    if let Some(name) = checkpoint {
        cmd.arg("--checkpoint").arg(name);
    }
    let mut child = cmd
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(IpcError::Spawn)?;
    let ready: Option<SupervisorReady> = child
        .stdout
        .take()
        .and_then(|mut out| read_frame(&mut out).ok());
    if ready == Some(SupervisorReady::Ready) {
        // Reaped when it ends, so a long-lived caller (`husk serve`)
        // collects no zombies.
        std::thread::spawn(move || child.wait());
        return Ok(());
    }
    let _ = child.wait();
    match ready {
        Some(SupervisorReady::Failed { message, status }) => {
            Err(IpcError::Refused { message, status })
        }
        _ => Err(IpcError::Died { log: log_path }),
    }
}

/// Sends a request to a container's supervisor; returns the connection
/// after an `ok`.
pub fn request(h: &Handle, req: &Request) -> Result<UnixStream, IpcError> {
    let not_running = || IpcError::NotRunning { id: h.id.clone() };
    let mut c = UnixStream::connect(h.control_socket()).map_err(|_| not_running())?;
    write_frame(&mut c, req).map_err(|_| not_running())?;
    match read_frame::<_, Reply>(&mut c) {
        Ok(Reply::Ok) => Ok(c),
        Ok(Reply::Error { message, status }) => Err(IpcError::Refused { message, status }),
        Err(_) => Err(not_running()),
    }
}

/// [`request`] with the reply awaited at most `limit` (a supervisor that
/// is still booting accepts connections before it serves them).
pub fn request_within(h: &Handle, req: &Request, limit: Duration) -> Result<UnixStream, IpcError> {
    let not_running = || IpcError::NotRunning { id: h.id.clone() };
    let mut c = UnixStream::connect(h.control_socket()).map_err(|_| not_running())?;
    c.set_read_timeout(Some(limit)).map_err(|_| not_running())?;
    c.set_write_timeout(Some(limit))
        .map_err(|_| not_running())?;
    write_frame(&mut c, req).map_err(|_| not_running())?;
    let reply = read_frame::<_, Reply>(&mut c);
    let _ = c.set_read_timeout(None);
    let _ = c.set_write_timeout(None);
    match reply {
        Ok(Reply::Ok) => Ok(c),
        Ok(Reply::Error { message, status }) => Err(IpcError::Refused { message, status }),
        Err(_) => Err(not_running()),
    }
}

/// Waits (up to `limit`) until the container's supervisor has ended.
pub fn wait_supervisor_gone(h: &Handle, limit: Duration) {
    let start = Instant::now();
    while h.supervisor_alive() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops container `h` (SIGTERM, SIGKILL after `secs`) when `running`, as
/// the caller found it, and waits for its supervisor to end; a container
/// that is not running only has a restart its policy scheduled cancelled.
/// Whether it was running.
pub fn stop(h: &Handle, secs: u64, running: bool) -> Result<bool, super::ContainerError> {
    if !running {
        h.cancel_restart()?;
        return Ok(false);
    }
    if let Ok(mut c) = request(h, &Request::Stop { timeout_secs: secs }) {
        // The supervisor closes the connection when the container ended.
        let mut b = [0u8; 1];
        let _ = io::Read::read(&mut c, &mut b);
    }
    wait_supervisor_gone(h, Duration::from_secs(secs + 30));
    Ok(true)
}
