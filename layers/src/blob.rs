//! Blobs: digests, media types and compression detection.
//!
//! A blob is hashed in full before a single entry of it is unpacked
//! ([`verify_file`]), or copied into a temporary file while hashing when it
//! arrives on a stream ([`receive_stream`]).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{LayerError, Result};

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Known layer media types and the compression they announce.
const MEDIA_TYPES: &[(&str, Compression)] = &[
    ("application/vnd.oci.image.layer.v1.tar", Compression::None),
    (
        "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.oci.image.layer.v1.tar+zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        Compression::None,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar",
        Compression::None,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        Compression::Zstd,
    ),
];

/// The compression a media type announces.
pub fn media_type_compression(media_type: &str) -> Result<Compression> {
    MEDIA_TYPES
        .iter()
        .find(|(m, _)| *m == media_type)
        .map(|(_, c)| *c)
        .ok_or_else(|| LayerError::UnsupportedMediaType {
            media_type: media_type.to_string(),
        })
}

/// Detects the compression from the first bytes of a blob.
pub fn sniff(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// A parsed `sha256:<hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || LayerError::InvalidDigest {
            digest: s.to_string(),
        };
        let hex_part = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| bad())?;
        Ok(Self(out))
    }

    /// The hex part.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

/// Hashes everything from `r`, writing it to `sink` too; returns the digest
/// and the byte count. Stops with an error past `cap` bytes.
fn hash_copy<R: Read, W: Write>(
    mut r: R,
    mut sink: W,
    cap: u64,
    what: &Path,
) -> Result<(Digest, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut total: u64 = 0;
    loop {
        let n = r.read(&mut buf).map_err(|source| LayerError::Read {
            path: what.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > cap {
            return Err(LayerError::BlobTooLarge { limit: cap });
        }
        h.update(&buf[..n]);
        sink.write_all(&buf[..n])
            .map_err(|source| LayerError::Write {
                path: what.to_path_buf(),
                source,
            })?;
    }
    Ok((Digest(h.finalize().into()), total))
}

fn check(expected: &Digest, actual: &Digest, size: u64, expected_size: Option<u64>) -> Result<()> {
    if expected != actual {
        return Err(LayerError::DigestMismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    if let Some(want) = expected_size {
        if want != size {
            return Err(LayerError::SizeMismatch {
                expected: want,
                actual: size,
            });
        }
    }
    Ok(())
}

/// Hashes the file at `path` and checks it against `digest` (and `size` when
/// given). Returns the file, rewound, ready for unpacking.
pub fn verify_file(path: &Path, digest: &Digest, size: Option<u64>, cap: u64) -> Result<File> {
    let mut f = File::open(path).map_err(|source| LayerError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let (actual, n) = hash_copy(BufReader::new(&mut f), io::sink(), cap, path)?;
    check(digest, &actual, n, size)?;
    f.seek(SeekFrom::Start(0))
        .map_err(|source| LayerError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(f)
}

/// Hashes the `size` bytes at `offset` of the file at `path` (a blob disk
/// holding several blobs) and checks them against `digest`. Returns the
/// file positioned at `offset`; read at most `size` bytes from it.
pub fn verify_extent(
    path: &Path,
    offset: u64,
    size: u64,
    digest: &Digest,
    cap: u64,
) -> Result<File> {
    if size > cap {
        return Err(LayerError::BlobTooLarge { limit: cap });
    }
    let mut f = File::open(path).map_err(|source| LayerError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let seek = |f: &mut File| {
        f.seek(SeekFrom::Start(offset))
            .map_err(|source| LayerError::Read {
                path: path.to_path_buf(),
                source,
            })
    };
    seek(&mut f)?;
    let (actual, n) = hash_copy(BufReader::new((&mut f).take(size)), io::sink(), cap, path)?;
    // A short read (the disk ends early) is a size mismatch.
    check(digest, &actual, n, Some(size))?;
    seek(&mut f)?;
    Ok(f)
}

/// Copies a streamed blob into an anonymous temporary file in `tmp_dir`
/// while hashing it, checks it, and returns the file rewound.
pub fn receive_stream<R: Read>(
    r: R,
    tmp_dir: &Path,
    digest: &Digest,
    size: u64,
    cap: u64,
) -> Result<File> {
    let what = PathBuf::from(format!("<stream {digest}>"));
    let mut f = tempfile::tempfile_in(tmp_dir).map_err(|source| LayerError::Write {
        path: tmp_dir.to_path_buf(),
        source,
    })?;
    // Read at most one byte past the announced size so an overlong stream
    // is noticed.
    let limited = r.take(size.saturating_add(1));
    let (actual, n) = hash_copy(limited, io::BufWriter::new(&mut f), cap, &what)?;
    check(digest, &actual, n, Some(size))?;
    f.seek(SeekFrom::Start(0))
        .map_err(|source| LayerError::Read { path: what, source })?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_parse() {
        assert!(Digest::parse(EMPTY).is_ok());
        for bad in [
            "sha512:00",
            "sha256:xyz",
            "e3b0",
            &EMPTY.to_uppercase().replace("SHA", "sha"),
        ] {
            assert!(
                matches!(Digest::parse(bad), Err(LayerError::InvalidDigest { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn sniff_magic() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(b"etc/\0\0"), Compression::None);
    }

    #[test]
    fn media_types() {
        assert_eq!(
            media_type_compression("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            Compression::Gzip
        );
        assert!(matches!(
            media_type_compression("text/plain"),
            Err(LayerError::UnsupportedMediaType { .. })
        ));
    }

    #[test]
    fn extents_are_checked_in_place() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("blobs");
        let mut bytes = vec![0u8; 8192];
        bytes[4096..4101].copy_from_slice(b"hello");
        std::fs::write(&disk, &bytes).unwrap();
        let hello = Digest(Sha256::digest(b"hello").into());
        let mut f = verify_extent(&disk, 4096, 5, &hello, 10).unwrap();
        let mut back = String::new();
        (&mut f).take(5).read_to_string(&mut back).unwrap();
        assert_eq!(back, "hello");
        let err = verify_extent(&disk, 4095, 5, &hello, 10).unwrap_err();
        assert!(matches!(err, LayerError::DigestMismatch { .. }), "{err}");
        let err = verify_extent(&disk, 8190, 5, &hello, 10).unwrap_err();
        assert!(matches!(err, LayerError::DigestMismatch { .. }), "{err}");
        let err = verify_extent(&disk, 4096, 11, &hello, 10).unwrap_err();
        assert!(matches!(err, LayerError::BlobTooLarge { .. }), "{err}");
        let err = verify_extent(&d.path().join("none"), 0, 5, &hello, 10).unwrap_err();
        assert!(matches!(err, LayerError::Open { .. }), "{err}");
    }

    #[test]
    fn stream_checks_digest_and_size() {
        let d = tempfile::tempdir().unwrap();
        let empty = Digest::parse(EMPTY).unwrap();
        receive_stream(&b""[..], d.path(), &empty, 0, 10).unwrap();
        let err = receive_stream(&b"x"[..], d.path(), &empty, 1, 10).unwrap_err();
        assert!(matches!(err, LayerError::DigestMismatch { .. }), "{err}");
        let err = receive_stream(&b"0123456789ab"[..], d.path(), &empty, 12, 10).unwrap_err();
        assert!(matches!(err, LayerError::BlobTooLarge { .. }), "{err}");
    }
}
