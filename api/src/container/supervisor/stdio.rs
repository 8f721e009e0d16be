//! The host end of the agent's stdio connections: a Unix socket
//! `<uds>_<port>` that husk-vmm connects to when the guest connects to the
//! host's vsock `port`.
//!
//! Any process in the guest can connect to those ports, so what arrives is
//! hostile until it says the hello this listener waits for: a connection
//! that sends anything else, or nothing within [`HELLO_TIMEOUT`], is dropped
//! and the listener goes on waiting for the agent's.

use std::fs;
use std::io::{self, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use husk_proto::agent::{read_frame, StreamHello};
use husk_proto::guest::CONTAINER_ID;

/// How long a connection may take to send its whole hello.
pub(super) const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest hello read (the agent's are under 100 bytes).
const MAX_HELLO: u64 = 1024;

/// A listener for one stdio stream of the init (`exec_id` none) or of an
/// exec.
#[derive(Debug)]
pub(super) struct StdioListener {
    listener: UnixListener,
    want: StreamHello,
}

impl StdioListener {
    /// Listens on `<uds>_<port>` for `stream` ("stdin", "stdout",
    /// "stderr") of `exec_id`. The socket is writable by all, so the jailed
    /// husk-vmm can connect: only root and husk-vmm's group may enter the
    /// run directory (`jail.rs`).
    pub(super) fn bind(
        uds: &Path,
        port: u32,
        exec_id: Option<&str>,
        stream: &str,
    ) -> io::Result<StdioListener> {
        use std::os::unix::fs::PermissionsExt;
        let p = PathBuf::from(format!("{}_{port}", uds.display()));
        let _ = fs::remove_file(&p);
        let listener = UnixListener::bind(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666))?;
        let want = StreamHello {
            id: CONTAINER_ID.into(),
            exec_id: exec_id.map(str::to_string),
            stream: stream.into(),
        };
        Ok(StdioListener { listener, want })
    }

    /// Accepts the agent's connection for this stream (within `limit`;
    /// `None`: without one), dropping any that does not say its hello.
    pub(super) fn accept(&self, limit: Option<Duration>) -> io::Result<UnixStream> {
        let deadline = limit.map(|l| Instant::now() + l);
        loop {
            let mut s = match deadline {
                None => self.listener.accept()?.0,
                Some(d) => accept_by(&self.listener, d)?,
            };
            if read_hello(&mut s, Instant::now() + HELLO_TIMEOUT).is_ok_and(|h| h == self.want) {
                s.set_read_timeout(None)?;
                return Ok(s);
            }
        }
    }
}

/// Accepts one connection by `deadline`; the stream blocks.
fn accept_by(l: &UnixListener, deadline: Instant) -> io::Result<UnixStream> {
    l.set_nonblocking(true)?;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A stream read by a deadline: each read waits at most until it.
struct ByDeadline<'a> {
    stream: &'a mut UnixStream,
    deadline: Instant,
}

impl Read for ByDeadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self
            .deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// Reads one hello frame by `deadline`, at most [`MAX_HELLO`] bytes of it
/// (a longer one ends short and is refused).
fn read_hello(stream: &mut UnixStream, deadline: Instant) -> io::Result<StreamHello> {
    let mut r = ByDeadline { stream, deadline }.take(4 + MAX_HELLO);
    read_frame(&mut r).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_proto::agent::write_frame;
    use std::io::Write;

    fn hello(exec_id: Option<&str>, stream: &str) -> StreamHello {
        StreamHello {
            id: CONTAINER_ID.into(),
            exec_id: exec_id.map(str::to_string),
            stream: stream.into(),
        }
    }

    fn connect(uds: &Path, port: u32) -> UnixStream {
        UnixStream::connect(format!("{}_{port}", uds.display())).unwrap()
    }

    #[test]
    fn hostile_connections_before_the_agents_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let l = StdioListener::bind(&uds, 5001, Some("e0"), "stdout").unwrap();
        // An oversized length, junk, a hello for another stream, one that
        // says nothing: all queued before the agent's.
        let mut big = connect(&uds, 5001);
        big.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let mut junk = connect(&uds, 5001);
        junk.write_all(b"\0\0\0\x05{[[[[").unwrap();
        let mut other = connect(&uds, 5001);
        write_frame(&mut other, &hello(Some("e0"), "stderr")).unwrap();
        let _silent = connect(&uds, 5001);
        let mut agent = connect(&uds, 5001);
        write_frame(&mut agent, &hello(Some("e0"), "stdout")).unwrap();
        agent.write_all(b"output").unwrap();
        let t = Instant::now();
        let mut s = l.accept(Some(Duration::from_secs(10))).unwrap();
        // Only the silent one costs time: its hello timeout.
        assert!(t.elapsed() >= HELLO_TIMEOUT);
        assert!(t.elapsed() < HELLO_TIMEOUT * 3);
        let mut got = [0u8; 6];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"output");
    }

    #[test]
    fn no_agent_within_the_limit_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let l = StdioListener::bind(&uds, 5000, None, "stdin").unwrap();
        let mut junk = connect(&uds, 5000);
        junk.write_all(b"\0\0\0\x02{}").unwrap();
        let t = Instant::now();
        assert!(l.accept(Some(Duration::from_millis(300))).is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
