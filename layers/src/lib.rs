//! Image layers: verify each blob's sha256, detect its compression and
//! unpack it, in order, into a root directory.
//!
//! The `tar` crate only reads entries; [`unpack`] places each one itself
//! through [`scope::resolve`], so nothing lands outside the root. Absolute
//! entry paths are taken as root-relative (as Docker does); `..` in an entry
//! path or a hard-link target, and writes through a symlink that points out
//! of the root (or is absolute), are refused.

pub mod blob;
pub mod scope;
pub mod unpack;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

pub use blob::{Compression, Digest};
pub use unpack::{unpack_tar, UnpackOptions, UnpackStats};

/// Layer errors.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The digest string is not `sha256:<64 lowercase hex>`.
    #[error("invalid digest {digest:?}")]
    InvalidDigest {
        /// As given.
        digest: String,
    },
    /// The blob's sha256 differs from its digest.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The announced digest.
        expected: String,
        /// The blob's digest.
        actual: String,
    },
    /// The blob's size differs from the announced one.
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Announced.
        expected: u64,
        /// Actual.
        actual: u64,
    },
    /// The blob is larger than allowed.
    #[error("blob exceeds the limit of {limit} bytes")]
    BlobTooLarge {
        /// The limit.
        limit: u64,
    },
    /// Unknown layer media type.
    #[error("unsupported layer media type {media_type:?}")]
    UnsupportedMediaType {
        /// As given.
        media_type: String,
    },
    /// The bytes' compression does not match the media type.
    #[error("media type {media_type:?} announces {announced:?} but the blob is {found:?}")]
    CompressionMismatch {
        /// As given.
        media_type: String,
        /// From the media type.
        announced: Compression,
        /// From the magic bytes.
        found: Compression,
    },
    /// An entry path could not be placed safely.
    #[error("entry {entry:?} refused")]
    Scope {
        /// Entry path.
        entry: PathBuf,
        /// Why.
        #[source]
        source: scope::ScopeError,
    },
    /// A hard link's target is missing, a directory or outside the root.
    #[error("hard link {entry:?} -> {target:?} refused: {reason}")]
    BadHardLink {
        /// Entry path.
        entry: PathBuf,
        /// Link target.
        target: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The layer unpacks to more than allowed.
    #[error("layer exceeds the {what} limit of {limit}")]
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// The tar stream is malformed.
    #[error("malformed tar stream")]
    Tar(#[source] io::Error),
    /// Opening a blob failed.
    #[error("cannot open {path:?}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading failed.
    #[error("cannot read {path:?}")]
    Read {
        /// The file or stream.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing into the root failed.
    #[error("cannot write {path:?}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, LayerError>;

/// Wraps a verified blob in the right decompressor, checking the media type
/// against the magic bytes.
pub fn decompressor<'a, R: Read + Send + 'a>(
    blob: R,
    media_type: &str,
) -> Result<Box<dyn Read + Send + 'a>> {
    let announced = blob::media_type_compression(media_type)?;
    let mut r = BufReader::with_capacity(256 << 10, blob);
    let magic = r.fill_buf().map_err(|source| LayerError::Read {
        path: PathBuf::from("<blob>"),
        source,
    })?;
    let found = blob::sniff(magic);
    if found != announced {
        return Err(LayerError::CompressionMismatch {
            media_type: media_type.to_string(),
            announced,
            found,
        });
    }
    Ok(match found {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(r).map_err(LayerError::Tar)?)
        }
    })
}

/// Runs a reader (the decompressor) on its own thread, handing over 256 KiB
/// chunks through a small bounded queue, so decompression and placing
/// entries use two cores (as `tar -xzf` does with its gzip child).
#[derive(Debug)]
pub struct Pipelined {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Pipelined {
    const CHUNK: usize = 256 << 10;

    /// Starts the reading thread.
    pub fn new(mut inner: Box<dyn Read + Send + 'static>) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        std::thread::spawn(move || loop {
            let mut chunk = vec![0u8; Self::CHUNK];
            let mut n = 0;
            // Fill the chunk (decoders return short reads).
            let res = loop {
                match inner.read(&mut chunk[n..]) {
                    Ok(0) => break Ok(()),
                    Ok(k) => {
                        n += k;
                        if n == chunk.len() {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            chunk.truncate(n);
            let done = n < Self::CHUNK;
            if n > 0 && tx.send(Ok(chunk)).is_err() {
                return;
            }
            if let Err(e) = res {
                let _ = tx.send(Err(e));
                return;
            }
            if done {
                return;
            }
        });
        Self {
            rx,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for Pipelined {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Verifies the blob at `path` against `digest` and unpacks it into `root`.
pub fn apply_layer_file(
    root: &Path,
    path: &Path,
    digest: &str,
    media_type: &str,
    size: Option<u64>,
    opts: &UnpackOptions,
) -> Result<UnpackStats> {
    let digest = Digest::parse(digest)?;
    blob::media_type_compression(media_type)?;
    let f: File = blob::verify_file(path, &digest, size, opts.max_blob_bytes)?;
    unpack_tar(root, Pipelined::new(decompressor(f, media_type)?), opts)
}

/// Verifies the blob of `size` bytes at `offset` of the blob disk at
/// `path` against `digest`, then unpacks it into `root`.
pub fn apply_layer_extent(
    root: &Path,
    path: &Path,
    offset: u64,
    size: u64,
    digest: &str,
    media_type: &str,
    opts: &UnpackOptions,
) -> Result<UnpackStats> {
    let digest = Digest::parse(digest)?;
    blob::media_type_compression(media_type)?;
    let f = blob::verify_extent(path, offset, size, &digest, opts.max_blob_bytes)?;
    unpack_tar(
        root,
        Pipelined::new(decompressor(f.take(size), media_type)?),
        opts,
    )
}

/// Receives a streamed blob into `tmp_dir`, verifies it and unpacks it.
pub fn apply_layer_stream<R: Read>(
    root: &Path,
    stream: R,
    tmp_dir: &Path,
    digest: &str,
    media_type: &str,
    size: u64,
    opts: &UnpackOptions,
) -> Result<UnpackStats> {
    let digest = Digest::parse(digest)?;
    blob::media_type_compression(media_type)?;
    let f = blob::receive_stream(stream, tmp_dir, &digest, size, opts.max_blob_bytes)?;
    unpack_tar(root, Pipelined::new(decompressor(f, media_type)?), opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flaky(Vec<u8>, usize);
    impl Read for Flaky {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.1 >= self.0.len() {
                return Err(io::Error::other("broken blob"));
            }
            // Short reads of at most 1000 bytes.
            let n = out.len().min(1000).min(self.0.len() - self.1);
            out[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn pipelined_passes_bytes_and_errors_through() {
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        Pipelined::new(Box::new(io::Cursor::new(data.clone())))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        let mut out = Vec::new();
        let err = Pipelined::new(Box::new(Flaky(data.clone(), 0)))
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.to_string(), "broken blob");
        assert_eq!(out, data, "everything before the error arrives");
    }
}
