//! The host side of the agent's control protocol (agent/PROTOCOL.md) over
//! husk-vmm's vsock muxer: connect to the Unix socket, `CONNECT <port>`,
//! `OK <port>`, then framed requests.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use husk_agent::protocol::{
    read_frame, write_frame, Envelope, ErrorKind, Request, Response, PROTOCOL_VERSION,
};

/// The agent's control port.
pub const CONTROL_PORT: u32 = 1024;

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
    Protocol(#[from] husk_agent::protocol::ProtocolError),
    /// The agent answered something else than expected.
    #[error("unexpected answer from the agent: {0}")]
    Unexpected(String),
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, ClientError>;

/// Opens a vsock stream to guest `port` through the muxer at `uds`.
pub fn connect_port(uds: &Path, port: u32) -> Result<UnixStream> {
    let io_err = |source| ClientError::Io {
        path: uds.display().to_string(),
        source,
    };
    let mut s = UnixStream::connect(uds).map_err(io_err)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io_err)?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        if s.read(&mut b).map_err(io_err)? == 0 {
            return Err(ClientError::Refused { port });
        }
        line.push(b[0]);
        if line.len() > 64 {
            return Err(ClientError::Unexpected("long vsock handshake".into()));
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(ClientError::Refused { port });
    }
    Ok(s)
}

/// One control connection.
#[derive(Debug)]
pub struct AgentClient {
    stream: UnixStream,
    seq: u64,
}

impl AgentClient {
    /// Connects and says hello.
    pub fn connect(uds: &Path) -> Result<AgentClient> {
        let stream = connect_port(uds, CONTROL_PORT)?;
        let mut c = AgentClient { stream, seq: 0 };
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
        loop {
            match AgentClient::connect(uds) {
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
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Sends a request and returns the answer; an `error` answer is
    /// [`ClientError::Agent`].
    pub fn call(&mut self, body: Request) -> Result<Response> {
        self.seq += 1;
        write_frame(
            &mut self.stream,
            &Envelope {
                version: PROTOCOL_VERSION,
                seq: self.seq,
                body,
            },
        )?;
        let reply: Envelope<Response> = read_frame(&mut self.stream)?;
        match reply.body {
            Response::Error { kind, message } => Err(ClientError::Agent { kind, message }),
            r => Ok(r),
        }
    }
}
