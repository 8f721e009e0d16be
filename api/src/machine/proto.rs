//! The control channel's wire format (see the `machine` module docs for the
//! conversation): length-prefixed frames
//!
//! ```text
//! u32 big-endian length of what follows | u8 frame type | payload
//! ```
//!
//! The first frame from the client is a [`Request`] (JSON). Then the client
//! sends `Stdin`/`Resize`/`Signal` frames and the server sends
//! `Stdout`/`Stderr` frames, ending with one `Exit` (or `Error`) frame.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Largest accepted frame (type byte + payload).
pub const MAX_FRAME: usize = 1 << 20;

/// Protocol errors.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// Reading or writing the socket failed.
    #[error("control channel I/O")]
    Io(#[from] io::Error),
    /// A frame's length is zero or over [`MAX_FRAME`].
    #[error("bad frame length {0}")]
    BadLength(usize),
    /// A frame type this side does not know.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// A frame whose payload does not fit its type.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    /// The request is not valid JSON for [`Request`].
    #[error("malformed request")]
    BadRequest(#[source] serde_json::Error),
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, ProtoError>;

/// What the client asks the server for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Run `husk ARGV` inside the machine.
    Husk,
    /// Run ARGV (default `sh`) inside the machine.
    Ssh,
    /// Answer `Exit 0` at once: the machine is up.
    Ping,
    /// Answer with a `Ports` frame: the ports containers publish.
    Ports,
    /// Answer `Exit 0`, then end the server so the machine powers off.
    Stop,
}

/// The first frame of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The machine's secret (`<state dir>/token`).
    pub token: String,
    /// What to do.
    pub kind: Kind,
    /// Command line (after `husk` for [`Kind::Husk`]).
    #[serde(default)]
    pub argv: Vec<String>,
    /// Run on a pseudo-terminal.
    #[serde(default)]
    pub tty: bool,
    /// Terminal rows (with `tty`).
    #[serde(default)]
    pub rows: u16,
    /// Terminal columns (with `tty`).
    #[serde(default)]
    pub cols: u16,
    /// Environment passed through (only `TERM` is honoured).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The opening request.
    Request(Request),
    /// Bytes for the command's stdin; empty means end of input.
    Stdin(Vec<u8>),
    /// Bytes the command wrote to stdout (or to its terminal).
    Stdout(Vec<u8>),
    /// Bytes the command wrote to stderr.
    Stderr(Vec<u8>),
    /// The client's terminal size changed.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Deliver this signal number to the command.
    Signal(i32),
    /// The command ended with this exit status (128+N for signal N).
    Exit(i32),
    /// The server refused or failed the request; one line for the user.
    Error(String),
    /// The ports published inside the machine (JSON list of
    /// [`super::ForwardedPort`]).
    Ports(Vec<u8>),
}

impl Frame {
    fn type_byte(&self) -> u8 {
        match self {
            Frame::Request(_) => 0,
            Frame::Stdin(_) => 1,
            Frame::Stdout(_) => 2,
            Frame::Stderr(_) => 3,
            Frame::Resize { .. } => 4,
            Frame::Signal(_) => 5,
            Frame::Exit(_) => 6,
            Frame::Error(_) => 7,
            Frame::Ports(_) => 8,
        }
    }

    /// Encodes the frame, header included.
    pub fn encode(&self) -> Vec<u8> {
        let payload: Vec<u8> = match self {
            Frame::Request(r) => serde_json::to_vec(r).unwrap_or_default(),
            Frame::Stdin(b) | Frame::Stdout(b) | Frame::Stderr(b) | Frame::Ports(b) => b.clone(),
            Frame::Resize { rows, cols } => {
                let mut v = rows.to_be_bytes().to_vec();
                v.extend_from_slice(&cols.to_be_bytes());
                v
            }
            Frame::Signal(n) | Frame::Exit(n) => n.to_be_bytes().to_vec(),
            Frame::Error(m) => m.as_bytes().to_vec(),
        };
        let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(payload.len() + 5);
        out.extend_from_slice(&len.to_be_bytes());
        out.push(self.type_byte());
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes a frame body (type byte + payload).
    pub fn decode(body: &[u8]) -> Result<Frame> {
        let (&t, p) = body.split_first().ok_or(ProtoError::BadLength(0))?;
        let int = |what| -> Result<i32> {
            Ok(i32::from_be_bytes(
                p.try_into().map_err(|_| ProtoError::Malformed(what))?,
            ))
        };
        Ok(match t {
            0 => Frame::Request(serde_json::from_slice(p).map_err(ProtoError::BadRequest)?),
            1 => Frame::Stdin(p.to_vec()),
            2 => Frame::Stdout(p.to_vec()),
            3 => Frame::Stderr(p.to_vec()),
            4 => {
                let b: [u8; 4] = p.try_into().map_err(|_| ProtoError::Malformed("resize"))?;
                Frame::Resize {
                    rows: u16::from_be_bytes([b[0], b[1]]),
                    cols: u16::from_be_bytes([b[2], b[3]]),
                }
            }
            5 => Frame::Signal(int("signal")?),
            6 => Frame::Exit(int("exit")?),
            7 => Frame::Error(String::from_utf8_lossy(p).into_owned()),
            8 => Frame::Ports(p.to_vec()),
            t => return Err(ProtoError::UnknownType(t)),
        })
    }
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, f: &Frame) -> Result<()> {
    w.write_all(&f.encode())?;
    w.flush()?;
    Ok(())
}

/// Reads one frame; `None` at a clean end of stream between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(ProtoError::BadLength(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Frame::decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let bytes = f.encode();
        let got = read_frame(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(got, f);
    }

    #[test]
    fn every_frame_type_roundtrips() {
        roundtrip(Frame::Request(Request {
            token: "t".into(),
            kind: Kind::Ssh,
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            tty: true,
            rows: 24,
            cols: 80,
            env: [("TERM".to_string(), "xterm".to_string())].into(),
        }));
        roundtrip(Frame::Stdin(b"in".to_vec()));
        roundtrip(Frame::Stdin(vec![]));
        roundtrip(Frame::Stdout(b"out".to_vec()));
        roundtrip(Frame::Stderr(b"err".to_vec()));
        roundtrip(Frame::Resize {
            rows: 50,
            cols: 132,
        });
        roundtrip(Frame::Signal(2));
        roundtrip(Frame::Exit(-1));
        roundtrip(Frame::Error("no".into()));
        roundtrip(Frame::Ports(b"[]".to_vec()));
    }

    #[test]
    fn clean_eof_is_none_and_torn_frame_is_an_error() {
        assert!(read_frame(&mut &b""[..]).unwrap().is_none());
        let bytes = Frame::Stdout(b"abcdef".to_vec()).encode();
        assert!(matches!(
            read_frame(&mut &bytes[..6]),
            Err(ProtoError::Io(_))
        ));
    }

    #[test]
    fn bad_frames_are_rejected() {
        assert!(matches!(
            read_frame(&mut &[0u8, 0, 0, 0][..]),
            Err(ProtoError::BadLength(0))
        ));
        assert!(matches!(
            read_frame(&mut &[0xffu8, 0, 0, 0][..]),
            Err(ProtoError::BadLength(_))
        ));
        assert!(matches!(
            read_frame(&mut &[0u8, 0, 0, 1, 99][..]),
            Err(ProtoError::UnknownType(99))
        ));
        assert!(matches!(
            read_frame(&mut &[0u8, 0, 0, 2, 6, 1][..]),
            Err(ProtoError::Malformed("exit"))
        ));
        assert!(matches!(
            read_frame(&mut &[0u8, 0, 0, 3, 0, b'{', b'x'][..]),
            Err(ProtoError::BadRequest(_))
        ));
    }
}
