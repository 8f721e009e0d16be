//! Length-prefixed JSON frames: a big-endian `u32` length, then that many
//! bytes of JSON. Frames larger than [`MAX_FRAME`] are refused before their
//! body is read. The agent protocol and the supervisor's control socket use
//! them for every message.

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Serialize};

/// The largest frame accepted or sent (bytes of JSON).
pub const MAX_FRAME: u32 = 4 << 20;

/// Frame errors.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed.
    #[error("cannot read or write a frame")]
    Io(#[from] io::Error),
    /// A frame announced more than [`MAX_FRAME`] bytes.
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge {
        /// Announced length.
        len: u64,
    },
    /// A frame did not hold the expected JSON.
    #[error("malformed message")]
    Json(#[from] serde_json::Error),
    /// The peer closed the stream between frames.
    #[error("peer closed the connection")]
    Closed,
}

/// Writes one frame holding `msg` as JSON.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or(FrameError::TooLarge {
            len: u64::try_from(body.len()).unwrap_or(u64::MAX),
        })?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame and decodes it. A clean end of stream before the length
/// gives [`FrameError::Closed`].
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len: len.into() });
    }
    let mut body = Vec::new();
    r.take(u64::from(len)).read_to_end(&mut body)?;
    if body.len() != len as usize {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &vec![1u32, 2, 3]).unwrap();
        assert_eq!(&buf[..4], &7u32.to_be_bytes());
        let back: Vec<u32> = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, vec![1, 2, 3]);
    }

    #[test]
    fn oversized_frame_refused_before_reading() {
        let buf = (MAX_FRAME + 1).to_be_bytes();
        let err = read_frame::<_, u32>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn eof_is_closed_and_truncation_is_an_error() {
        let err = read_frame::<_, u32>(&mut [].as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::Closed));
        let mut buf = 10u32.to_be_bytes().to_vec();
        buf.extend_from_slice(b"[1");
        let err = read_frame::<_, u32>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::Io(_)), "{err}");
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic fuzz loop: hostile bytes give errors, never panics.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = usize::try_from(x % 24).unwrap_or(0);
            let bytes: Vec<u8> = (0..n)
                .map(|i| x.rotate_left(u32::try_from(i).unwrap_or(0)).to_le_bytes()[0])
                .collect();
            let _ = read_frame::<_, serde_json::Value>(&mut bytes.as_slice());
        }
    }
}
