//! The `husk` subcommands that manage containers, one file each; the
//! logic lives in the library (`container`, `image`, ...).

pub mod attach;
pub mod bench;
pub mod checkpoint;
pub mod cp;
pub mod exec;
pub mod images;
pub mod inspect;
pub mod internal;
pub mod lifecycle;
pub mod logs;
pub mod machine;
pub mod network;
pub mod pause;
pub mod ps;
pub mod ps_format;
pub mod run;
pub mod serve;
pub mod top;
pub mod volume;

use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::container::control::Request;
use crate::container::{ipc, Containers, Handle};

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

pub use crate::container::ipc::wait_supervisor_gone;

/// A supervisor's error with the exit status it calls for.
pub(super) fn ipc_error(e: ipc::IpcError) -> CliError {
    CliError::new(e.status(), crate::error::chain(&e))
}

/// Starts the supervisor of container `h` ([`ipc::spawn_supervisor`]).
pub fn spawn_supervisor(data_dir: &Path, h: &Handle) -> Result<(), CliError> {
    ipc::spawn_supervisor(data_dir, h, None).map_err(ipc_error)
}

/// Sends a request to a container's supervisor ([`ipc::request`]).
pub fn request(h: &Handle, req: &Request) -> Result<UnixStream, CliError> {
    ipc::request(h, req).map_err(ipc_error)
}

/// A `--label` value as Docker reads it: `KEY=VALUE`, or `KEY` for an
/// empty value.
pub fn label_pair(label: &str) -> (String, String) {
    let (k, v) = label.split_once('=').unwrap_or((label, ""));
    (k.to_string(), v.to_string())
}

/// Opens the containers of `data_dir`.
pub fn containers(data_dir: &Path) -> Result<Containers, CliError> {
    let c = Containers::open(data_dir)?;
    c.sweep();
    Ok(c)
}
