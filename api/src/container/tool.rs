//! Helper programs run as root in a running container through its
//! supervisor, as `husk exec` runs a process, with their output collected:
//! `stat`, `tar` (`archive`), `ps` (`top`).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use super::control::{Attach, Frame, Request};
use super::ipc::{self, IpcError};
use super::Handle;
use husk_proto::agent::ProcessSpec;

/// The most of a tool's stderr kept for its error message.
const STDERR_KEPT: usize = 4096;

/// Tool run errors.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The supervisor refused or is not there.
    #[error(transparent)]
    Ipc(#[from] IpcError),
    /// The stream to the supervisor broke, or the output could not be
    /// written.
    #[error("{0}")]
    Io(String, #[source] io::Error),
    /// The container stopped while the tool ran.
    #[error("the container stopped while {0} ran")]
    Lost(String),
}

/// What a tool run ended with.
#[derive(Debug)]
pub struct ToolEnd {
    /// Its exit status (127: not in the image).
    pub status: i32,
    /// The last non-empty line of its stderr.
    pub stderr: String,
}

/// Runs `argv` as root in the container, feeding `stdin` (if any) and
/// writing its stdout to `out`.
pub fn run_tool(
    h: &Handle,
    argv: Vec<String>,
    stdin: Option<Box<dyn Read + Send>>,
    out: &mut dyn Write,
) -> Result<ToolEnd, ToolError> {
    let name = argv.first().cloned().unwrap_or_default();
    let spec = ProcessSpec {
        cmd: argv,
        user: "0".into(),
        ..ProcessSpec::default()
    };
    let attach = Attach {
        stdin: stdin.is_some(),
        console_size: None,
    };
    let mut conn = ipc::request(h, &Request::Exec { spec, attach })?;
    if let Some(input) = stdin {
        let w = conn
            .try_clone()
            .map_err(|e| ToolError::Io("the container's stream".into(), e))?;
        std::thread::spawn(move || feed(input, w));
    }
    let mut stderr = Vec::new();
    loop {
        match Frame::read_from(&mut conn) {
            Ok(Some(Frame::Stdout(b))) => out
                .write_all(&b)
                .map_err(|e| ToolError::Io(format!("cannot pass on what {name} wrote"), e))?,
            Ok(Some(Frame::Stderr(b))) => {
                stderr.extend_from_slice(&b);
                let cut = stderr.len().saturating_sub(STDERR_KEPT);
                stderr.drain(..cut);
            }
            Ok(Some(Frame::Exit(status))) => {
                let text = String::from_utf8_lossy(&stderr);
                let last = text.lines().rev().find(|l| !l.trim().is_empty());
                return Ok(ToolEnd {
                    status,
                    stderr: last.unwrap_or("").trim().to_string(),
                });
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err(ToolError::Lost(name)),
            Err(e) => {
                return Err(ToolError::Io(
                    format!("the container's stream: {e}"),
                    io::Error::other(e),
                ))
            }
        }
    }
}

/// Sends `input` as stdin frames, then end of input.
fn feed(mut input: Box<dyn Read + Send>, mut w: UnixStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if Frame::Stdin(buf[..n].to_vec()).write_to(&mut w).is_err() {
                    return;
                }
            }
        }
    }
    let _ = Frame::StdinEof.write_to(&mut w);
}
