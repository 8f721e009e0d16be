//! The control channel's wire format (see the `machine` module docs for the
//! conversation): length-prefixed frames
//!
//! husk's one stdio frame codec (`husk_proto::stdio`). The first frame
//! from the client is a [`Request`] (a JSON frame). Then the client sends
//! `Stdin`/`StdinEof`/`Resize`/`Signal` frames and the server sends
//! `Stdout`/`Stderr` frames, ending with one `Exit` (or `Error`) frame; a
//! `Ports` request is answered by a JSON frame listing the ports.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Protocol errors.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// A frame could not be read or written.
    #[error("control channel")]
    Frame(#[from] husk_proto::stdio::StdioFrameError),
    /// Writing failed.
    #[error("control channel I/O")]
    Io(#[from] io::Error),
    /// The request is not valid JSON for [`Request`].
    #[error("malformed request")]
    BadRequest(#[source] serde_json::Error),
    /// The opening frame is not a request.
    #[error("the connection did not open with a request")]
    Unexpected,
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
    /// Connect to the Docker API socket of the `husk serve` running inside
    /// the machine, answer `Exit 0` (or `Error`), then relay raw bytes both
    /// ways until each side has closed its half.
    Api,
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

pub use husk_proto::stdio::Frame;

impl Request {
    /// The request as the connection's opening frame.
    pub fn to_frame(&self) -> Frame {
        Frame::Json(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The request an opening frame holds.
    pub fn from_frame(f: &Frame) -> Result<Self> {
        match f {
            Frame::Json(b) => serde_json::from_slice(b).map_err(ProtoError::BadRequest),
            _ => Err(ProtoError::Unexpected),
        }
    }
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, f: &Frame) -> Result<()> {
    Ok(f.write_to(w)?)
}

/// Reads one frame; `None` at a clean end of stream between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>> {
    Ok(Frame::read_from(r)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_travel_as_json_frames() {
        let req = Request {
            token: "t".into(),
            kind: Kind::Ssh,
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            tty: true,
            rows: 24,
            cols: 80,
            env: [("TERM".to_string(), "xterm".to_string())].into(),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req.to_frame()).unwrap();
        let f = read_frame(&mut buf.as_slice()).unwrap().unwrap();
        assert_eq!(Request::from_frame(&f).unwrap(), req);
        assert!(matches!(
            Request::from_frame(&Frame::Json(b"{x".to_vec())),
            Err(ProtoError::BadRequest(_))
        ));
        assert!(matches!(
            Request::from_frame(&Frame::Exit(0)),
            Err(ProtoError::Unexpected)
        ));
    }
}
