//! The supervisor's control socket (`sup.sock`): how CLI commands reach a
//! running container.
//!
//! A connection starts with one JSON request frame (the agent protocol's
//! framing: u32 BE length + JSON) answered by one JSON [`Reply`]. After an
//! `ok` reply to a request that attaches (`start` with `attach`, `exec`),
//! the connection carries binary [`Frame`]s both ways: stdin, stdin EOF,
//! resize and signals from the CLI; stdout, stderr and finally the exit
//! status from the supervisor.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Stdio options of an attaching request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attach {
    /// Forward the client's stdin.
    pub stdin: bool,
    /// The client's terminal size (rows, cols) when it has one.
    #[serde(default)]
    pub console_size: Option<(u16, u16)>,
}

/// A process to run in the container (`husk exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// argv.
    pub argv: Vec<String>,
    /// Extra `KEY=value`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (the container's when empty).
    #[serde(default)]
    pub workdir: String,
    /// User (the container's when empty).
    #[serde(default)]
    pub user: String,
    /// A pseudo-terminal.
    #[serde(default)]
    pub tty: bool,
}

/// Requests to a supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Start the created container; with `attach` the connection then
    /// streams its stdio.
    Start {
        /// Attach options.
        #[serde(default)]
        attach: Option<Attach>,
    },
    /// Stream the running container's output (and stdin when asked).
    Attach(Attach),
    /// Run a process in the container; the connection streams its stdio.
    Exec {
        /// The process.
        spec: ExecSpec,
        /// Stdio options.
        attach: Attach,
    },
    /// Send a signal to the container's init.
    Signal {
        /// Signal number.
        signal: i32,
    },
    /// SIGTERM, then SIGKILL after `timeout_secs`; answered once it ended.
    Stop {
        /// Grace period.
        timeout_secs: u64,
    },
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Done (or streaming follows).
    Ok,
    /// Failed; `status` is the exit status the CLI should use (125, 126, 127).
    Error {
        /// One line.
        message: String,
        /// Exit status for the CLI.
        status: i32,
    },
}

/// A binary frame on an attached connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes for the process's stdin.
    Stdin(Vec<u8>),
    /// The client's stdin ended.
    StdinEof,
    /// Terminal size changed (rows, cols).
    Resize(u16, u16),
    /// Forward a signal to the process (non-tty `Ctrl-C`).
    Signal(i32),
    /// Process output.
    Stdout(Vec<u8>),
    /// Process error output.
    Stderr(Vec<u8>),
    /// The process ended with this status (128+N for signal N).
    Exit(i32),
}

const MAX_FRAME: u32 = 1 << 20;

impl Frame {
    /// Writes the frame: u8 tag, u32 BE length, payload.
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<()> {
        let (tag, payload): (u8, Vec<u8>) = match self {
            Frame::Stdin(d) => (0, d.clone()),
            Frame::StdinEof => (1, Vec::new()),
            Frame::Resize(r, c) => (2, [r.to_be_bytes(), c.to_be_bytes()].concat()),
            Frame::Signal(s) => (3, s.to_be_bytes().to_vec()),
            Frame::Stdout(d) => (4, d.clone()),
            Frame::Stderr(d) => (5, d.clone()),
            Frame::Exit(c) => (6, c.to_be_bytes().to_vec()),
        };
        let mut buf = Vec::with_capacity(5 + payload.len());
        buf.push(tag);
        buf.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(0).to_be_bytes());
        buf.extend_from_slice(&payload);
        w.write_all(&buf)?;
        w.flush()
    }

    /// Reads one frame; `None` at a clean end of stream.
    pub fn read_from<R: Read>(r: &mut R) -> io::Result<Option<Frame>> {
        let mut h = [0u8; 5];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes"),
            ));
        }
        let mut p = vec![0u8; len as usize];
        r.read_exact(&mut p)?;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed frame");
        let int = |p: &[u8]| -> io::Result<i32> {
            Ok(i32::from_be_bytes(p.try_into().map_err(|_| bad())?))
        };
        Ok(Some(match h[0] {
            0 => Frame::Stdin(p),
            1 => Frame::StdinEof,
            2 if p.len() == 4 => Frame::Resize(
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            ),
            3 => Frame::Signal(int(&p)?),
            4 => Frame::Stdout(p),
            5 => Frame::Stderr(p),
            6 => Frame::Exit(int(&p)?),
            _ => return Err(bad()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip() {
        let all = vec![
            Frame::Stdin(b"in".to_vec()),
            Frame::StdinEof,
            Frame::Resize(24, 80),
            Frame::Signal(2),
            Frame::Stdout(b"out".to_vec()),
            Frame::Stderr(vec![]),
            Frame::Exit(137),
        ];
        let mut buf = Vec::new();
        for f in &all {
            f.write_to(&mut buf).unwrap();
        }
        let mut r = buf.as_slice();
        let mut back = Vec::new();
        while let Some(f) = Frame::read_from(&mut r).unwrap() {
            back.push(f);
        }
        assert_eq!(back, all);
        let mut bad: &[u8] = &[9, 0, 0, 0, 0];
        assert!(Frame::read_from(&mut bad).is_err());
        let mut huge: &[u8] = &[4, 0xff, 0, 0, 0];
        assert!(Frame::read_from(&mut huge).is_err());
    }

    #[test]
    fn request_json() {
        let r: Request = serde_json::from_str(r#"{"type":"stop","timeout_secs":3}"#).unwrap();
        assert_eq!(r, Request::Stop { timeout_secs: 3 });
        let r: Request =
            serde_json::from_str(r#"{"type":"start","attach":{"stdin":true}}"#).unwrap();
        assert!(matches!(r, Request::Start { attach: Some(_) }));
    }
}
