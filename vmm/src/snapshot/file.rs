//! The snapshot state file: a fixed header (magic, format version, the
//! husk-vmm version that wrote it, payload length, CRC-32 of the payload)
//! followed by the payload, the serde (JSON) encoding of the state.
//!
//! Layout, little endian:
//!
//! ```text
//! 0   8  magic "HUSKSNAP"
//! 8   4  format version
//! 12  2  length V of the husk-vmm version string
//! 14  V  husk-vmm version (UTF-8)
//! ..  8  payload length P
//! ..  4  CRC-32 (IEEE) of the payload
//! ..  P  payload
//! ```
//!
//! A file from another format or husk-vmm version, a truncated file and a
//! payload whose checksum does not match are each refused with one line.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"HUSKSNAP";
/// Version of the layout and of the state types; bumped on any change.
pub const FORMAT_VERSION: u32 = 2;
/// The husk-vmm version that writes snapshots (and the only one it loads).
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");

/// State file errors; each message is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read or written.
    #[error("cannot {op} snapshot file {path}")]
    Io {
        /// "read" or "write".
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a husk-vmm snapshot at all.
    #[error("{path} is not a husk-vmm snapshot (bad magic)")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// Made by another husk-vmm or in another format.
    #[error("snapshot {path} was made by husk-vmm {vmm} (format {format}); this is husk-vmm {VMM_VERSION} (format {FORMAT_VERSION})")]
    Version {
        /// The file.
        path: PathBuf,
        /// husk-vmm version recorded in the file.
        vmm: String,
        /// Format version recorded in the file.
        format: u32,
    },
    /// The file ends early.
    #[error("snapshot {path} is truncated: {have} bytes, {want} expected")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes present.
        have: u64,
        /// Bytes the header announces (at least).
        want: u64,
    },
    /// The file is longer than its header says.
    #[error("snapshot {path} has {extra} bytes of trailing data")]
    Trailing {
        /// The file.
        path: PathBuf,
        /// Bytes past the payload.
        extra: u64,
    },
    /// The payload was changed or damaged.
    #[error(
        "snapshot {path} has a bad checksum (stored {stored:#010x}, computed {computed:#010x})"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// CRC-32 in the header.
        stored: u32,
        /// CRC-32 of the payload.
        computed: u32,
    },
    /// The payload does not decode (checksum fine: a husk-vmm bug).
    #[error("snapshot {path} does not decode: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// serde's message.
        reason: String,
    },
    /// The state could not be encoded.
    #[error("cannot encode the snapshot state: {0}")]
    Encode(String),
}

/// Encodes `state` with the header.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, FileError> {
    let payload = serde_json::to_vec(state).map_err(|e| FileError::Encode(e.to_string()))?;
    encode_with(&payload, FORMAT_VERSION, VMM_VERSION)
}

fn encode_with(payload: &[u8], format: u32, vmm: &str) -> Result<Vec<u8>, FileError> {
    let vlen =
        u16::try_from(vmm.len()).map_err(|_| FileError::Encode("version too long".into()))?;
    let mut out = Vec::with_capacity(payload.len() + 64);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&format.to_le_bytes());
    out.extend_from_slice(&vlen.to_le_bytes());
    out.extend_from_slice(vmm.as_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Reads fields off the front of the file, reporting truncation.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FileError> {
        let end = self.pos.saturating_add(n);
        let got = self.data.get(self.pos..end).ok_or(FileError::Truncated {
            path: self.path.to_path_buf(),
            have: self.data.len() as u64,
            want: end as u64,
        })?;
        self.pos = end;
        Ok(got)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FileError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
}

/// Checks the header and checksum of `data` (read from `path`) and decodes
/// the payload.
pub fn decode<T: DeserializeOwned>(data: &[u8], path: &Path) -> Result<T, FileError> {
    let p = || path.to_path_buf();
    let mut c = Cursor { data, pos: 0, path };
    if c.array::<8>()? != MAGIC {
        return Err(FileError::BadMagic { path: p() });
    }
    let format = u32::from_le_bytes(c.array()?);
    let vlen = u16::from_le_bytes(c.array()?);
    let vmm = String::from_utf8_lossy(c.take(usize::from(vlen))?).into_owned();
    if format != FORMAT_VERSION || vmm != VMM_VERSION {
        return Err(FileError::Version {
            path: p(),
            vmm,
            format,
        });
    }
    let len = u64::from_le_bytes(c.array()?);
    let stored = u32::from_le_bytes(c.array()?);
    let header = c.pos as u64;
    let want = header.saturating_add(len);
    let have = data.len() as u64;
    if have < want {
        return Err(FileError::Truncated {
            path: p(),
            have,
            want,
        });
    }
    if have > want {
        return Err(FileError::Trailing {
            path: p(),
            extra: have - want,
        });
    }
    let payload = data.get(c.pos..).unwrap_or_default();
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(FileError::Checksum {
            path: p(),
            stored,
            computed,
        });
    }
    serde_json::from_slice(payload).map_err(|e| FileError::Decode {
        path: p(),
        reason: e.to_string(),
    })
}

/// Writes `state` to `path`.
pub fn save<T: Serialize>(state: &T, path: &Path) -> Result<(), FileError> {
    let data = encode(state)?;
    std::fs::write(path, data).map_err(|source| FileError::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and checks the state at `path`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let data = std::fs::read(path).map_err(|source| FileError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })?;
    decode(&data, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct S {
        a: u64,
        b: Vec<u8>,
    }

    fn s() -> S {
        S {
            a: 7,
            b: vec![1, 2, 3],
        }
    }

    fn p() -> &'static Path {
        Path::new("/snap/state")
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        save(&s(), &path).unwrap();
        assert_eq!(load::<S>(&path).unwrap(), s());
        let e = load::<S>(&dir.path().join("none")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read snapshot file"));
    }

    #[test]
    fn every_truncation_is_refused_in_one_line() {
        let data = encode(&s()).unwrap();
        for n in 0..data.len() {
            let e = decode::<S>(&data[..n], p()).unwrap_err();
            assert!(matches!(e, FileError::Truncated { .. }), "at {n}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
        let e = decode::<S>(&data[..data.len() - 1], p()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "snapshot /snap/state is truncated: {} bytes, {} expected",
                data.len() - 1,
                data.len()
            )
        );
        let mut long = data.clone();
        long.push(0);
        assert!(matches!(
            decode::<S>(&long, p()),
            Err(FileError::Trailing { extra: 1, .. })
        ));
    }

    #[test]
    fn a_flipped_payload_bit_fails_the_checksum() {
        let mut data = encode(&s()).unwrap();
        let last = data.len() - 2;
        data[last] ^= 1;
        let e = decode::<S>(&data, p()).unwrap_err();
        assert!(matches!(e, FileError::Checksum { .. }));
        assert!(e
            .to_string()
            .starts_with("snapshot /snap/state has a bad checksum"));
    }

    #[test]
    fn other_versions_and_magic_are_refused() {
        let payload = serde_json::to_vec(&s()).unwrap();
        let old = encode_with(&payload, FORMAT_VERSION, "0.0.1-other").unwrap();
        let e = decode::<S>(&old, p()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("snapshot /snap/state was made by husk-vmm 0.0.1-other (format {FORMAT_VERSION}); this is husk-vmm {VMM_VERSION} (format {FORMAT_VERSION})")
        );
        let newer = encode_with(&payload, FORMAT_VERSION + 1, VMM_VERSION).unwrap();
        assert!(matches!(
            decode::<S>(&newer, p()),
            Err(FileError::Version { format, .. }) if format == FORMAT_VERSION + 1
        ));
        let mut bad = encode(&s()).unwrap();
        bad[0] = b'X';
        assert!(matches!(
            decode::<S>(&bad, p()),
            Err(FileError::BadMagic { .. })
        ));
    }
}
