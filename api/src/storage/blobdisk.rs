//! What a builder microVM is given: the **blob disk** (a raw, read-only
//! disk that is just an image's layer blobs one after the other, each at a
//! [`BLOB_ALIGN`]-aligned offset, zero-padded between them) with the
//! [`BuildRequest`] naming each blob's digest, media type, offset and
//! size, and the size of the empty **target disk** the guest unpacks into.
//!
//! The host only copies bytes here: it never reads a blob's content, let
//! alone a tar entry (the agent verifies each blob's sha256 in the guest).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use husk_proto::agent::{BlobExtent, BuildRequest, BLOB_ALIGN, MAX_BUILD_LAYERS};

use crate::image::oci::Descriptor;
use crate::image::store::{Store, StoreError};

/// Blob disk errors.
#[derive(Debug, thiserror::Error)]
pub enum BlobDiskError {
    /// A layer blob is not in the store (or its digest is invalid).
    #[error("layer {digest}")]
    Store {
        /// The layer.
        digest: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// A stored blob could not be read.
    #[error("cannot read layer {digest} from {path}")]
    ReadBlob {
        /// The layer.
        digest: String,
        /// Its file in the store.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The blob disk could not be made or written.
    #[error("cannot write the blob disk {path}")]
    Write {
        /// The blob disk.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A blob's file is not as long as its descriptor says.
    #[error("layer {digest}: the stored blob has {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        /// The layer.
        digest: String,
        /// From the manifest.
        expected: u64,
        /// The file's length.
        actual: u64,
    },
    /// The image has no layers or too many, or they do not fit.
    #[error(
        "cannot lay out {layers} layers on a blob disk (at most {MAX_BUILD_LAYERS}, {max} bytes)"
    )]
    Layout {
        /// How many layers.
        layers: usize,
        /// The largest blob disk.
        max: u64,
    },
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, BlobDiskError>;

/// Largest blob disk (the sum of an image's compressed layers).
pub const MAX_BLOB_DISK: u64 = 64 << 30;

/// The extents of `layers` on a blob disk and the disk's size (a multiple
/// of [`BLOB_ALIGN`], at least one block).
pub fn layout(layers: &[Descriptor]) -> Result<(BuildRequest, u64)> {
    let refuse = || BlobDiskError::Layout {
        layers: layers.len(),
        max: MAX_BLOB_DISK,
    };
    if layers.is_empty() || layers.len() > MAX_BUILD_LAYERS {
        return Err(refuse());
    }
    let mut offset = 0u64;
    let mut extents = Vec::with_capacity(layers.len());
    for l in layers {
        extents.push(BlobExtent {
            digest: l.digest.clone(),
            media_type: l.media_type.clone(),
            offset,
            size: l.size,
        });
        offset = offset
            .checked_add(l.size)
            .and_then(|end| end.checked_next_multiple_of(BLOB_ALIGN))
            .filter(|end| *end <= MAX_BLOB_DISK)
            .ok_or_else(refuse)?;
    }
    Ok((BuildRequest { layers: extents }, offset.max(BLOB_ALIGN)))
}

/// Writes the blob disk of `layers` from `store` at `path` (a new file) and
/// returns the request that describes it.
pub fn write(store: &Store, layers: &[Descriptor], path: &Path) -> Result<BuildRequest> {
    let (request, bytes) = layout(layers)?;
    let write_err = |source| BlobDiskError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut disk = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(write_err)?;
    disk.set_len(bytes).map_err(write_err)?;
    for l in &request.layers {
        let blob_path = store
            .blob_path(&l.digest)
            .map_err(|source| BlobDiskError::Store {
                digest: l.digest.clone(),
                source,
            })?;
        let read_err = |source| BlobDiskError::ReadBlob {
            digest: l.digest.clone(),
            path: blob_path.clone(),
            source,
        };
        let blob = File::open(&blob_path).map_err(read_err)?;
        let actual = blob.metadata().map_err(read_err)?.len();
        if actual != l.size {
            return Err(BlobDiskError::SizeMismatch {
                digest: l.digest.clone(),
                expected: l.size,
                actual,
            });
        }
        disk.seek(SeekFrom::Start(l.offset)).map_err(write_err)?;
        let copied = io::copy(&mut blob.take(l.size), &mut disk).map_err(write_err)?;
        if copied != l.size {
            return Err(BlobDiskError::SizeMismatch {
                digest: l.digest.clone(),
                expected: l.size,
                actual: copied,
            });
        }
    }
    disk.sync_all().map_err(write_err)?;
    Ok(request)
}

/// The size of the target disk and its inode count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetSize {
    /// Bytes (a multiple of 4 KiB); the file is sparse.
    pub bytes: u64,
    /// Inodes for `mkfs.ext4 -N`.
    pub inodes: u64,
}

/// How many times its compressed size a layer may unpack to.
pub const EXPANSION: u64 = 8;
/// Room for ext4's own metadata and small images.
pub const HEADROOM: u64 = 64 << 20;
/// Largest target disk (the unpacker's own per-layer limit is as large).
pub const MAX_TARGET: u64 = 64 << 30;
/// Bytes of disk per inode.
const BYTES_PER_INODE: u64 = 8192;

/// The target disk for layers whose compressed sizes add up to
/// `compressed`: [`EXPANSION`] times that plus [`HEADROOM`], at most
/// [`MAX_TARGET`]; one inode per 8 KiB. An image that unpacks to more
/// fails its build with "No space left on device".
pub fn target_size(compressed: u64) -> TargetSize {
    let bytes = compressed
        .saturating_mul(EXPANSION)
        .saturating_add(HEADROOM)
        .min(MAX_TARGET)
        .next_multiple_of(4096);
    TargetSize {
        bytes,
        inodes: bytes / BYTES_PER_INODE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(digest: &str, size: u64) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: digest.into(),
            size,
            platform: None,
            annotations: Default::default(),
        }
    }

    #[test]
    fn blobs_are_aligned_in_order() {
        let (req, bytes) = layout(&[desc("a", 5000), desc("b", 4096), desc("c", 0)]).unwrap();
        let at: Vec<(u64, u64)> = req.layers.iter().map(|l| (l.offset, l.size)).collect();
        assert_eq!(at, [(0, 5000), (8192, 4096), (12288, 0)]);
        assert_eq!(bytes, 12288);
        req.validate(Some(bytes)).unwrap();
        assert_eq!(layout(&[desc("e", 0)]).unwrap().1, BLOB_ALIGN);
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert!(layout(&[]).is_err());
        let many: Vec<Descriptor> = (0..=MAX_BUILD_LAYERS).map(|_| desc("x", 1)).collect();
        assert!(layout(&many).is_err());
        let err = layout(&[desc("x", MAX_BLOB_DISK), desc("y", 1)]).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot lay out 2 layers"),
            "{err}"
        );
        assert!(layout(&[desc("x", u64::MAX)]).is_err());
    }

    #[test]
    fn the_target_is_bounded() {
        let small = target_size(2 << 20);
        assert_eq!(small.bytes, (16 << 20) + HEADROOM);
        assert_eq!(small.inodes, small.bytes / 8192);
        assert_eq!(target_size(0).bytes, HEADROOM);
        assert_eq!(target_size(u64::MAX).bytes, MAX_TARGET);
        assert_eq!(target_size(4097).bytes % 4096, 0);
    }

    #[test]
    fn the_disk_holds_the_blobs_at_their_offsets() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let a = vec![7u8; 5000];
        let b = b"second".to_vec();
        let layers = [
            desc(&store.put_bytes(&a).unwrap(), 5000),
            desc(&store.put_bytes(&b).unwrap(), 6),
        ];
        let path = tmp.path().join("blobs.img");
        let req = write(&store, &layers, &path).unwrap();
        let disk = std::fs::read(&path).unwrap();
        assert_eq!(disk.len(), 12288);
        assert_eq!(&disk[..5000], &a[..]);
        assert!(disk[5000..8192].iter().all(|b| *b == 0));
        assert_eq!(&disk[8192..8198], b"second");
        assert_eq!(req.layers[1].digest, layers[1].digest);
        // An existing file is never overwritten.
        assert!(write(&store, &layers, &path).is_err());
        // A stored blob of the wrong length is named.
        let short = [desc(&layers[1].digest, 7)];
        let err = write(&store, &short, &tmp.path().join("b2")).unwrap_err();
        assert!(
            err.to_string().contains("has 6 bytes, the manifest says 7"),
            "{err}"
        );
    }
}
