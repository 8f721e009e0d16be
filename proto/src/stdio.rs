//! The one binary frame codec for streamed process I/O: stdin, stdout and
//! stderr bytes, terminal resizes, signals, the exit status, one-line
//! errors and JSON messages. The supervisor's control socket (`husk exec`,
//! `attach`, `start -a`) and the husk machine's control channel speak it.
//!
//! ```text
//! u32 big-endian length of what follows | u8 frame type | payload
//! ```

use std::io::{self, Read, Write};

/// Largest accepted frame (type byte + payload).
pub const MAX_FRAME: usize = 1 << 20;

/// Frame errors.
#[derive(Debug, thiserror::Error)]
pub enum StdioFrameError {
    /// Reading or writing the stream failed.
    #[error("stdio stream I/O")]
    Io(#[from] io::Error),
    /// A frame's length is zero or over [`MAX_FRAME`].
    #[error("bad stdio frame length {0}")]
    BadLength(usize),
    /// A frame type this side does not know.
    #[error("unknown stdio frame type {0}")]
    UnknownType(u8),
    /// A frame whose payload does not fit its type.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

impl From<StdioFrameError> for io::Error {
    fn from(e: StdioFrameError) -> Self {
        match e {
            StdioFrameError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON message (an opening request, a list of ports, ...).
    Json(Vec<u8>),
    /// Bytes for the process's stdin.
    Stdin(Vec<u8>),
    /// The client's stdin ended.
    StdinEof,
    /// Bytes the process wrote to stdout (or to its terminal).
    Stdout(Vec<u8>),
    /// Bytes the process wrote to stderr.
    Stderr(Vec<u8>),
    /// The client's terminal size changed.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Deliver this signal number to the process.
    Signal(i32),
    /// The process ended with this status (128+N after signal N).
    Exit(i32),
    /// The request failed; one line for the user.
    Error(String),
}

const JSON: u8 = 0;
const STDIN: u8 = 1;
const STDOUT: u8 = 2;
const STDERR: u8 = 3;
const RESIZE: u8 = 4;
const SIGNAL: u8 = 5;
const EXIT: u8 = 6;
const ERROR: u8 = 7;
const STDIN_EOF: u8 = 8;

impl Frame {
    fn type_byte(&self) -> u8 {
        match self {
            Frame::Json(_) => JSON,
            Frame::Stdin(_) => STDIN,
            Frame::StdinEof => STDIN_EOF,
            Frame::Stdout(_) => STDOUT,
            Frame::Stderr(_) => STDERR,
            Frame::Resize { .. } => RESIZE,
            Frame::Signal(_) => SIGNAL,
            Frame::Exit(_) => EXIT,
            Frame::Error(_) => ERROR,
        }
    }

    fn payload(&self) -> Vec<u8> {
        match self {
            Frame::Json(b) | Frame::Stdin(b) | Frame::Stdout(b) | Frame::Stderr(b) => b.clone(),
            Frame::StdinEof => Vec::new(),
            Frame::Resize { rows, cols } => [rows.to_be_bytes(), cols.to_be_bytes()].concat(),
            Frame::Signal(n) | Frame::Exit(n) => n.to_be_bytes().to_vec(),
            Frame::Error(m) => m.as_bytes().to_vec(),
        }
    }

    /// Encodes the frame, header included. A payload over [`MAX_FRAME`] is
    /// cut to fit (senders split their data into smaller frames).
    pub fn encode(&self) -> Vec<u8> {
        let mut payload = self.payload();
        payload.truncate(MAX_FRAME - 1);
        let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(payload.len() + 5);
        out.extend_from_slice(&len.to_be_bytes());
        out.push(self.type_byte());
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes a frame body (type byte + payload).
    pub fn decode(body: &[u8]) -> Result<Frame, StdioFrameError> {
        let (&t, p) = body.split_first().ok_or(StdioFrameError::BadLength(0))?;
        let int = |what| -> Result<i32, StdioFrameError> {
            Ok(i32::from_be_bytes(
                p.try_into().map_err(|_| StdioFrameError::Malformed(what))?,
            ))
        };
        Ok(match t {
            JSON => Frame::Json(p.to_vec()),
            STDIN => Frame::Stdin(p.to_vec()),
            STDIN_EOF => Frame::StdinEof,
            STDOUT => Frame::Stdout(p.to_vec()),
            STDERR => Frame::Stderr(p.to_vec()),
            RESIZE => {
                let b: [u8; 4] = p
                    .try_into()
                    .map_err(|_| StdioFrameError::Malformed("resize"))?;
                Frame::Resize {
                    rows: u16::from_be_bytes([b[0], b[1]]),
                    cols: u16::from_be_bytes([b[2], b[3]]),
                }
            }
            SIGNAL => Frame::Signal(int("signal")?),
            EXIT => Frame::Exit(int("exit")?),
            ERROR => Frame::Error(String::from_utf8_lossy(p).into_owned()),
            t => return Err(StdioFrameError::UnknownType(t)),
        })
    }

    /// Writes the frame and flushes.
    pub fn write_to<W: Write + ?Sized>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(&self.encode())?;
        w.flush()
    }

    /// Reads one frame; `None` at a clean end of stream between frames.
    pub fn read_from<R: Read + ?Sized>(r: &mut R) -> Result<Option<Frame>, StdioFrameError> {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
        if len == 0 || len > MAX_FRAME {
            return Err(StdioFrameError::BadLength(len));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        Frame::decode(&body).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let bytes = f.encode();
        let got = Frame::read_from(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(got, f);
    }

    #[test]
    fn every_frame_type_roundtrips() {
        roundtrip(Frame::Json(br#"{"kind":"ping"}"#.to_vec()));
        roundtrip(Frame::Stdin(b"in".to_vec()));
        roundtrip(Frame::Stdin(vec![]));
        roundtrip(Frame::StdinEof);
        roundtrip(Frame::Stdout(b"out".to_vec()));
        roundtrip(Frame::Stderr(b"err".to_vec()));
        roundtrip(Frame::Resize {
            rows: 50,
            cols: 132,
        });
        roundtrip(Frame::Signal(2));
        roundtrip(Frame::Exit(-1));
        roundtrip(Frame::Error("no".into()));
    }

    #[test]
    fn clean_eof_is_none_and_torn_frame_is_an_error() {
        assert!(Frame::read_from(&mut &b""[..]).unwrap().is_none());
        let bytes = Frame::Stdout(b"abcdef".to_vec()).encode();
        assert!(matches!(
            Frame::read_from(&mut &bytes[..6]),
            Err(StdioFrameError::Io(_))
        ));
    }

    #[test]
    fn bad_frames_are_rejected() {
        let read = |b: &[u8]| Frame::read_from(&mut &b[..]);
        assert!(matches!(
            read(&[0, 0, 0, 0]),
            Err(StdioFrameError::BadLength(0))
        ));
        assert!(matches!(
            read(&[0xff, 0, 0, 0]),
            Err(StdioFrameError::BadLength(_))
        ));
        assert!(matches!(
            read(&[0, 0, 0, 1, 99]),
            Err(StdioFrameError::UnknownType(99))
        ));
        assert!(matches!(
            read(&[0, 0, 0, 2, EXIT, 1]),
            Err(StdioFrameError::Malformed("exit"))
        ));
        assert!(matches!(
            read(&[0, 0, 0, 2, RESIZE, 1]),
            Err(StdioFrameError::Malformed("resize"))
        ));
        let e: io::Error = StdioFrameError::UnknownType(9).into();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
