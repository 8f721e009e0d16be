//! The `husk` subcommands that manage containers, one file each; the
//! logic lives in the library (`container`, `image`, ...).

pub mod attach;
pub mod exec;
pub mod inspect;
pub mod lifecycle;
pub mod logs;
pub mod machine;
pub mod ps;
pub mod run;
pub mod volume;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_agent::protocol::{read_frame, write_frame};

use crate::container::control::{Reply, Request};
use crate::container::{Containers, Handle};

/// A failed command: one line for stderr and the exit status.
#[derive(Debug)]
pub struct CliError {
    /// The message.
    pub message: String,
    /// Exit status.
    pub status: i32,
}

impl CliError {
    /// An error with status `status`.
    pub fn new(status: i32, message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            status,
        }
    }
}

impl<E: std::error::Error> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError::new(1, crate::error::chain(&e))
    }
}

/// `Result` for CLI commands: the exit status.
pub type CliResult = Result<i32, CliError>;

/// Starts the supervisor of container `id` and waits for its `ready` line.
pub fn spawn_supervisor(data_dir: &Path, h: &Handle) -> Result<(), CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(125, format!("cannot find the husk executable: {e}")))?;
    let log_path = h.dir.join("supervisor.log");
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| CliError::new(125, format!("{}: {e}", log_path.display())))?;
    let mut child = Command::new(exe)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("container-supervise")
        .arg(&h.id)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| CliError::new(125, format!("cannot start the container's supervisor: {e}")))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let line = line.trim_end();
    if line == "ready" {
        return Ok(());
    }
    let _ = child.wait();
    match line.strip_prefix("error ") {
        Some(rest) => {
            let (status, msg) = rest.split_once(' ').unwrap_or(("125", rest));
            Err(CliError::new(status.parse().unwrap_or(125), msg))
        }
        None => Err(CliError::new(
            125,
            format!(
                "the container's supervisor died while starting; see {}",
                log_path.display()
            ),
        )),
    }
}

/// Sends a request to a container's supervisor; returns the connection
/// after an `ok`.
pub fn request(h: &Handle, req: &Request) -> Result<UnixStream, CliError> {
    let not_running = || CliError::new(1, format!("container {} is not running", h.id));
    let mut c = UnixStream::connect(h.control_socket()).map_err(|_| not_running())?;
    write_frame(&mut c, req).map_err(|e| CliError::new(1, format!("supervisor: {e}")))?;
    match read_frame::<_, Reply>(&mut c) {
        Ok(Reply::Ok) => Ok(c),
        Ok(Reply::Error { message, status }) => Err(CliError::new(status, message)),
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

/// Opens the containers of `data_dir`.
pub fn containers(data_dir: &Path) -> Result<Containers, CliError> {
    let c = Containers::open(data_dir)?;
    c.sweep();
    Ok(c)
}
