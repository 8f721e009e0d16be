//! The control socket: a Unix socket where each connection sends one
//! command line and gets one answer line, `ok` or `error: <why>`.
//!
//! Commands: `pause`, `resume`, `snapshot <dir>` (the VM must be paused),
//! `queues` (answered `ok <how far each vsock queue got>`, for a stall's
//! diagnosis).
//! The event loop accepts and parses; the VMM runs the command between
//! event-loop rounds, with every device quiet.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

/// Longest command line accepted.
const MAX_LINE: u64 = 4096;
/// How long a client gets to send its line.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Pause every vCPU.
    Pause,
    /// Resume every vCPU.
    Resume,
    /// Write a snapshot into this directory.
    Snapshot(PathBuf),
    /// Write a snapshot into this directory, guest memory as a diff
    /// against the file it is mapped from when it is (for a fork).
    SnapshotDiff(PathBuf),
    /// Describe the vsock device's queues.
    Queues,
}

/// Parses one command line.
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim();
    let (word, arg) = line.split_once(' ').unwrap_or((line, ""));
    let arg = arg.trim();
    match (word, arg) {
        ("pause", "") => Ok(Command::Pause),
        ("resume", "") => Ok(Command::Resume),
        ("queues", "") => Ok(Command::Queues),
        ("snapshot", dir) if !dir.is_empty() => Ok(Command::Snapshot(PathBuf::from(dir))),
        ("snapshot", _) => Err("usage: snapshot <dir>".into()),
        ("snapshot-diff", dir) if !dir.is_empty() => Ok(Command::SnapshotDiff(PathBuf::from(dir))),
        ("snapshot-diff", _) => Err("usage: snapshot-diff <dir>".into()),
        _ => Err(format!(
            "unknown command {line:?} (pause, resume, snapshot <dir>, snapshot-diff <dir>, queues)"
        )),
    }
}

/// A command waiting for the VMM, with the connection to answer on.
#[derive(Debug)]
pub struct Request {
    /// The command.
    pub command: Command,
    stream: UnixStream,
}

impl Request {
    /// Answers `ok`, `ok <text>` or `error: <why>` (one line; the chain of
    /// causes joined with ": ").
    pub fn reply(mut self, result: Result<String, String>) {
        let line = match result {
            Ok(text) if text.is_empty() => "ok\n".to_string(),
            Ok(text) => format!("ok {}\n", text.replace('\n', " ")),
            Err(e) => format!("error: {}\n", e.replace('\n', " ")),
        };
        if let Err(e) = self.stream.write_all(line.as_bytes()) {
            log::warn!("control socket: cannot answer: {e}");
        }
    }
}

/// Requests the event loop has accepted and the VMM has not run yet.
pub type Pending = Arc<Mutex<Vec<Request>>>;

/// Control socket errors.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on control socket {path}")]
pub struct ApiError {
    /// The socket path.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// The listening socket, as an event-loop subscriber.
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    pending: Pending,
}

impl ApiServer {
    /// Listens at `path` (a stale socket file there is replaced).
    pub fn bind(path: &Path) -> Result<Self, ApiError> {
        let err = |source| ApiError {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(ApiServer {
            listener,
            pending: Pending::default(),
        })
    }

    /// The queue the VMM drains.
    pub fn pending(&self) -> Pending {
        self.pending.clone()
    }

    fn accept(&mut self) -> std::io::Result<()> {
        let (stream, _) = self.listener.accept()?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        let mut line = String::new();
        BufReader::new((&stream).take(MAX_LINE)).read_line(&mut line)?;
        let request = Request {
            command: Command::Pause,
            stream,
        };
        match parse(&line) {
            Ok(command) => self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Request { command, ..request }),
            Err(e) => request.reply(Err(e)),
        }
        Ok(())
    }
}

impl MutEventSubscriber for ApiServer {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            log::error!("control socket: cannot watch: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != self.listener.as_raw_fd() {
            return;
        }
        if let Err(e) = self.accept() {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                log::warn!("control socket: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("pause\n"), Ok(Command::Pause));
        assert_eq!(parse(" resume "), Ok(Command::Resume));
        assert_eq!(
            parse("snapshot /tmp/s 1\n"),
            Ok(Command::Snapshot(PathBuf::from("/tmp/s 1")))
        );
        assert!(parse("snapshot").is_err());
        assert!(parse("pause now").is_err());
        assert_eq!(parse("queues\n"), Ok(Command::Queues));
        assert!(parse("").unwrap_err().starts_with("unknown command"));
    }
}
