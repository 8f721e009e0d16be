//! The host side of the agent's control protocol (proto/PROTOCOL.md) over
//! husk-vmm's vsock muxer: connect to the Unix socket, `CONNECT <port>`,
//! `OK <port>`, then framed requests.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use husk_proto::agent::{
    read_frame, write_frame, Envelope, ErrorKind, FrameError, Request, Response, PROTOCOL_VERSION,
};
use husk_proto::guest::CONTROL_PORT;

/// Agent client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The vsock socket could not be used.
    #[error("vsock {path}")]
    Io {
        /// The socket.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The muxer refused the connection (the agent is not listening yet).
    #[error("the guest agent is not listening on vsock port {port}")]
    Refused {
        /// The port.
        port: u32,
    },
    /// The guest did not come up in time.
    #[error("the guest agent did not answer within {secs} s")]
    Timeout {
        /// The limit.
        secs: u64,
    },
    /// The agent answered with an error.
    #[error("{message}")]
    Agent {
        /// Its class.
        kind: ErrorKind,
        /// Its message.
        message: String,
    },
    /// A frame could not be read or written.
    #[error("agent protocol")]
    Protocol(#[from] husk_proto::agent::ProtocolError),
    /// A frame could not be read or written.
    #[error("agent connection")]
    Frame(#[from] husk_proto::frame::FrameError),
    /// The agent answered something else than expected.
    #[error("unexpected answer from the agent: {0}")]
    Unexpected(String),
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, ClientError>;

/// How long the muxer's `OK` may take once the guest is up. A guest that
/// never answers the connection request (a hostile one, or Linux dropping
/// the reset it owes a request that came in while its vsock driver was
/// still starting) must not wedge the caller.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the first handshake may take while the guest boots: a lost
/// request is then tried again soon on a new connection. Each try that
/// times out doubles it (a loaded host answers slowly, not never), up to
/// [`MAX_BOOT_HANDSHAKE_TIMEOUT`].
pub const BOOT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest one handshake may take while the guest boots.
pub const MAX_BOOT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(32);

/// Opens a vsock stream to guest `port` through the muxer at `uds`, waiting
/// at most `limit` for the guest to accept; the stream it returns blocks
/// without a limit.
pub fn connect_port(uds: &Path, port: u32, limit: Duration) -> Result<UnixStream> {
    let io_err = |source| ClientError::Io {
        path: uds.display().to_string(),
        source,
    };
    let mut s = UnixStream::connect(uds).map_err(io_err)?;
    s.set_read_timeout(Some(limit)).map_err(io_err)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io_err)?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        match s.read(&mut b) {
            Ok(0) => return Err(ClientError::Refused { port }),
            Ok(_) => line.push(b[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ClientError::Timeout {
                    secs: limit.as_secs(),
                })
            }
            Err(e) => return Err(io_err(e)),
        }
        if line.len() > 64 {
            return Err(ClientError::Unexpected("long vsock handshake".into()));
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(ClientError::Refused { port });
    }
    s.set_read_timeout(None).map_err(io_err)?;
    Ok(s)
}

/// How long an agent call may take by default (a wedged or hostile guest
/// must never wedge the supervisor). `wait` calls go on connections of
/// their own without a limit.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One control connection.
#[derive(Debug)]
pub struct AgentClient {
    stream: UnixStream,
    seq: u64,
    timeout: Option<Duration>,
    /// A call timed out: a late answer would be taken for the next one's,
    /// so the connection is not used again.
    broken: bool,
}

impl AgentClient {
    /// Connects and says hello.
    pub fn connect(uds: &Path) -> Result<AgentClient> {
        AgentClient::connect_within(uds, HANDSHAKE_TIMEOUT)
    }

    /// [`AgentClient::connect`], waiting at most `handshake` for the guest
    /// to accept the connection.
    fn connect_within(uds: &Path, handshake: Duration) -> Result<AgentClient> {
        let stream = connect_port(uds, CONTROL_PORT, handshake)?;
        let mut c = AgentClient {
            stream,
            seq: 0,
            timeout: Some(CALL_TIMEOUT),
            broken: false,
        };
        match c.call(Request::Hello {
            version: PROTOCOL_VERSION,
        })? {
            Response::Ready { .. } => Ok(c),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Connects, retrying while the guest boots, until `limit` passes or
    /// `alive` says the VM is gone.
    pub fn connect_retry(
        uds: &Path,
        limit: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Result<AgentClient> {
        let start = Instant::now();
        let mut handshake = BOOT_HANDSHAKE_TIMEOUT;
        loop {
            match AgentClient::connect_within(uds, handshake) {
                Ok(c) => return Ok(c),
                Err(e @ (ClientError::Agent { .. } | ClientError::Unexpected(_))) => return Err(e),
                Err(e) => {
                    if !alive() {
                        return Err(e);
                    }
                    if start.elapsed() > limit {
                        return Err(ClientError::Timeout {
                            secs: limit.as_secs(),
                        });
                    }
                    if matches!(e, ClientError::Timeout { .. }) {
                        handshake = (handshake * 2).min(MAX_BOOT_HANDSHAKE_TIMEOUT);
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }

    /// Sets how long each call may take (`None`: no limit, for `wait`).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends a request and returns the answer; an `error` answer is
    /// [`ClientError::Agent`], no answer within the timeout
    /// [`ClientError::Timeout`] (and the connection is not used again).
    pub fn call(&mut self, body: Request) -> Result<Response> {
        self.call_within(body, self.timeout)
    }

    /// [`AgentClient::call`] with its own time limit.
    pub fn call_within(&mut self, body: Request, timeout: Option<Duration>) -> Result<Response> {
        let secs = timeout.map_or(0, |t| t.as_secs());
        if self.broken {
            return Err(ClientError::Timeout { secs });
        }
        let timed_out = |e: &FrameError| matches!(e, FrameError::Io(io) if matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
        let set = |s: &UnixStream, t| {
            s.set_read_timeout(t)
                .and_then(|()| s.set_write_timeout(t))
                .map_err(|source| ClientError::Io {
                    path: "agent connection".into(),
                    source,
                })
        };
        set(&self.stream, timeout)?;
        self.seq += 1;
        let envelope = Envelope {
            version: PROTOCOL_VERSION,
            seq: self.seq,
            body,
        };
        let reply = write_frame(&mut self.stream, &envelope)
            .and_then(|()| read_frame::<_, Envelope<Response>>(&mut self.stream));
        let reply = match reply {
            Ok(r) => r,
            Err(e) if timed_out(&e) => {
                self.broken = true;
                return Err(ClientError::Timeout { secs });
            }
            Err(e) => return Err(e.into()),
        };
        match reply.body {
            Response::Error { kind, message } => Err(ClientError::Agent { kind, message }),
            r => Ok(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (AgentClient, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let c = AgentClient {
            stream: a,
            seq: 0,
            timeout: Some(CALL_TIMEOUT),
            broken: false,
        };
        (c, b)
    }

    #[test]
    fn a_silent_agent_times_out_and_the_connection_is_not_reused() {
        let (mut c, _guest) = pair();
        let t0 = Instant::now();
        let err = c
            .call_within(Request::Health, Some(Duration::from_millis(200)))
            .unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        // A late answer must not be taken for the next call's.
        let err = c.call(Request::Health).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    }

    #[test]
    fn an_answer_within_the_limit_is_returned() {
        let (mut c, mut guest) = pair();
        let agent = std::thread::spawn(move || {
            let req: Envelope<Request> = read_frame(&mut guest).unwrap();
            let reply = Envelope {
                version: PROTOCOL_VERSION,
                seq: req.seq,
                body: Response::Signalled,
            };
            write_frame(&mut guest, &reply).unwrap();
        });
        let r = c
            .call_within(Request::Health, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(r, Response::Signalled);
        agent.join().unwrap();
    }

    /// A fake muxer at `dir/v.sock`: each accepted connection reads its
    /// CONNECT line, then `answer(n, stream)` handles connection `n`.
    fn muxer(
        dir: &Path,
        answer: impl Fn(usize, UnixStream) + Send + 'static,
    ) -> std::path::PathBuf {
        let path = dir.join("v.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for (n, s) in l.incoming().enumerate() {
                let mut s = s.unwrap();
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while b[0] != b'\n' && s.read(&mut b).unwrap() == 1 {
                    line.push(b[0]);
                }
                assert!(line.starts_with(b"CONNECT "));
                answer(n, s);
            }
        });
        path
    }

    #[test]
    fn a_guest_that_never_accepts_times_out_the_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let held = std::sync::Mutex::new(Vec::new());
        let uds = muxer(dir.path(), move |_, s| held.lock().unwrap().push(s));
        let t0 = Instant::now();
        let err = connect_port(&uds, 1024, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_lost_connection_request_at_boot_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let held = std::sync::Mutex::new(Vec::new());
        let uds = muxer(dir.path(), move |n, mut s| {
            if n == 0 {
                // The first request is lost: no OK, no reset.
                held.lock().unwrap().push(s);
                return;
            }
            s.write_all(b"OK 1024\n").unwrap();
            let req: Envelope<Request> = read_frame(&mut s).unwrap();
            let reply = Envelope {
                version: PROTOCOL_VERSION,
                seq: req.seq,
                body: Response::Ready {
                    version: PROTOCOL_VERSION,
                    agent_version: "test".into(),
                    healthy: true,
                },
            };
            write_frame(&mut s, &reply).unwrap();
        });
        let t0 = Instant::now();
        AgentClient::connect_retry(&uds, Duration::from_secs(30), || true).unwrap();
        let took = t0.elapsed();
        assert!(
            took >= BOOT_HANDSHAKE_TIMEOUT && took < HANDSHAKE_TIMEOUT,
            "{took:?}"
        );
    }
}
