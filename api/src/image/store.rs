//! The content store under the data directory:
//!
//! - `blobs/sha256/<hex>`: manifests, configs and layers by digest, shared by
//!   every image, each written to `tmp/` while hashed and renamed into place
//!   only once its digest matched (so a killed pull leaves no half blob);
//! - `refs.json`: image name → manifest digest, rewritten atomically;
//! - `lock`: an exclusive `flock` held while refs change or blobs are
//!   collected, so several `husk pull` at once are safe.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::Flock;
use sha2::{Digest, Sha256};

use super::oci::{digest_hex, DigestError, Index, Manifest, MT_DOCKER_LIST, MT_OCI_INDEX};
use super::reference::Reference;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O on a store file.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Content did not hash to its digest.
    #[error("digest mismatch for {expected}: content hashes to {actual}")]
    DigestMismatch {
        /// Expected digest.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// Content has the wrong size.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: String,
        /// Expected size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// Content is longer than its descriptor says (reading stopped there).
    #[error("{digest} is longer than the {expected} bytes its descriptor gives")]
    TooLong {
        /// The blob.
        digest: String,
        /// The size from the descriptor.
        expected: u64,
    },
    /// Not `sha256:<64 hex>`.
    #[error(transparent)]
    BadDigest(#[from] DigestError),
    /// No such image.
    #[error("no such image: {0}")]
    NoImage(String),
    /// A manifest or index could not be parsed.
    #[error("invalid {what} {digest}")]
    Json {
        /// "manifest", "index", "refs".
        what: &'static str,
        /// Its digest or path.
        digest: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Result alias for the store.
pub type Result<T> = std::result::Result<T, StoreError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A content-addressed image store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// The exclusive store lock; released on drop.
#[derive(Debug)]
pub struct StoreLock(#[allow(dead_code)] Flock<File>);

/// An image resolved from the store.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// The reference it was found under.
    pub reference: Reference,
    /// Manifest digest.
    pub manifest_digest: String,
    /// The manifest.
    pub manifest: Manifest,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        for d in [root.join("blobs/sha256"), root.join("tmp")] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the exclusive lock (waits for other husk processes).
    pub fn lock(&self) -> Result<StoreLock> {
        let path = self.root.join("lock");
        crate::lockfile::lock_exclusive(&path)
            .map(StoreLock)
            .map_err(io_err(&path))
    }

    /// Path of a blob (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    /// Whether the blob is present.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// A fresh temporary file path inside the store.
    fn tmp_path(&self) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}.partial", std::process::id()))
    }

    /// Streams `src` into the store, hashing as it goes; the blob appears
    /// only if it hashes to `expected` (and has `size` bytes, if given: no
    /// more than `size + 1` bytes are read from `src` then).
    pub fn put_blob<R: Read + ?Sized>(
        &self,
        src: &mut R,
        expected: &str,
        size: Option<u64>,
    ) -> Result<PathBuf> {
        let dest = self.blob_path(expected)?;
        let tmp = self.tmp_path();
        let mut src = src.take(size.map_or(u64::MAX, |s| s.saturating_add(1)));
        let res = (|| {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut n_total = 0u64;
            loop {
                let n = src.read(&mut buf).map_err(io_err(&tmp))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                f.write_all(&buf[..n]).map_err(io_err(&tmp))?;
                n_total += n as u64;
            }
            if let Some(expected_size) = size.filter(|s| n_total > *s) {
                return Err(StoreError::TooLong {
                    digest: expected.to_string(),
                    expected: expected_size,
                });
            }
            let actual = format!("sha256:{}", hex::encode(h.finalize()));
            if actual != expected {
                return Err(StoreError::DigestMismatch {
                    expected: expected.to_string(),
                    actual,
                });
            }
            if let Some(s) = size.filter(|s| *s != n_total) {
                return Err(StoreError::SizeMismatch {
                    digest: expected.to_string(),
                    expected: s,
                    actual: n_total,
                });
            }
            f.sync_all().map_err(io_err(&tmp))?;
            fs::rename(&tmp, &dest).map_err(io_err(&dest))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res.map(|()| dest)
    }

    /// Stores bytes whose digest is computed here; returns the digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<String> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        if !self.has_blob(&digest) {
            self.put_blob(&mut &bytes[..], &digest, Some(bytes.len() as u64))?;
        }
        Ok(digest)
    }

    /// Reads a whole blob.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.blob_path(digest)?;
        fs::read(&p).map_err(io_err(&p))
    }

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    /// Every name → manifest digest.
    pub fn refs(&self) -> Result<BTreeMap<String, String>> {
        let p = self.refs_path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| StoreError::Json {
                what: "refs",
                digest: p.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    fn write_refs(&self, refs: &BTreeMap<String, String>) -> Result<()> {
        let p = self.refs_path();
        let tmp = self.tmp_path();
        let body = serde_json::to_vec_pretty(refs).map_err(|source| StoreError::Json {
            what: "refs",
            digest: p.display().to_string(),
            source,
        })?;
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&body).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &p).map_err(io_err(&p))
    }

    /// Points `reference` at a stored manifest (under the lock).
    pub fn tag(&self, reference: &Reference, manifest_digest: &str) -> Result<()> {
        let _l = self.lock()?;
        let mut refs = self.refs()?;
        refs.insert(reference.to_string(), manifest_digest.to_string());
        self.write_refs(&refs)
    }

    /// Removes a name; returns whether it existed.
    pub fn untag(&self, reference: &Reference) -> Result<bool> {
        let _l = self.lock()?;
        let mut refs = self.refs()?;
        let had = refs.remove(&reference.to_string()).is_some();
        if had {
            self.write_refs(&refs)?;
        }
        Ok(had)
    }

    /// Parses a stored manifest.
    pub fn manifest(&self, digest: &str) -> Result<Manifest> {
        let b = self.read_blob(digest)?;
        serde_json::from_slice(&b).map_err(|source| StoreError::Json {
            what: "manifest",
            digest: digest.to_string(),
            source,
        })
    }

    /// Resolves a reference to a stored image: by name, or by digest when
    /// the reference is pinned and the manifest is present.
    pub fn image(&self, reference: &Reference) -> Result<StoredImage> {
        let refs = self.refs()?;
        let digest = match (&reference.digest, refs.get(&reference.to_string())) {
            (_, Some(d)) => d.clone(),
            (Some(d), None) if self.has_blob(d) => d.clone(),
            _ => return Err(StoreError::NoImage(reference.familiar())),
        };
        let manifest = self.manifest(&digest)?;
        Ok(StoredImage {
            reference: reference.clone(),
            manifest_digest: digest,
            manifest,
        })
    }

    /// Deletes blobs no name reaches and stale temporary files; returns the
    /// number of blobs removed.
    pub fn gc(&self) -> Result<usize> {
        let _l = self.lock()?;
        let mut keep = BTreeSet::new();
        for d in self.refs()?.values() {
            keep.insert(d.clone());
            if let Ok(m) = self.manifest(d) {
                keep.insert(m.config.digest.clone());
                keep.extend(m.layers.iter().map(|l| l.digest.clone()));
            }
        }
        let dir = self.root.join("blobs/sha256");
        let mut removed = 0;
        for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let digest = format!("sha256:{}", e.file_name().to_string_lossy());
            if !keep.contains(&digest) {
                fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
                removed += 1;
            }
        }
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        Ok(removed)
    }
}

/// Whether a media type is an index or manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == MT_OCI_INDEX || media_type == MT_DOCKER_LIST
}

/// Parses an index.
pub fn parse_index(bytes: &[u8], digest: &str) -> Result<Index> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Json {
        what: "index",
        digest: digest.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let d = s.put_bytes(b"hello").unwrap();
        assert!(s.has_blob(&d));
        assert_eq!(s.read_blob(&d).unwrap(), b"hello");
        let wrong = format!("sha256:{}", "0".repeat(64));
        let e = s.put_blob(&mut &b"hello"[..], &wrong, None).unwrap_err();
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
        assert!(!s.has_blob(&wrong));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let e = s.put_blob(&mut &b"hello"[..], &d, Some(6)).unwrap_err();
        assert!(matches!(e, StoreError::SizeMismatch { .. }), "{e}");
        let e = s.put_blob(&mut &b"hello"[..], &d, Some(4)).unwrap_err();
        assert!(matches!(e, StoreError::TooLong { .. }), "{e}");
        assert!(matches!(
            s.blob_path("sha256:../x"),
            Err(StoreError::BadDigest(_))
        ));
        // Reading stops one byte past the size the descriptor gives.
        let mut endless = io::repeat(b'x');
        let e = s.put_blob(&mut endless, &d, Some(5)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{d} is longer than the 5 bytes its descriptor gives")
        );
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn messages_do_not_repeat_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let missing = format!("sha256:{}", "1".repeat(64));
        let e = s.read_blob(&missing).unwrap_err();
        let chain = crate::error::chain(&e);
        assert_eq!(chain.matches("No such file").count(), 1, "{chain}");
        let md = s.put_bytes(b"{not json").unwrap();
        let e = s.manifest(&md).unwrap_err();
        let chain = crate::error::chain(&e);
        assert!(
            chain.starts_with(&format!("invalid manifest {md}: ")),
            "{chain}"
        );
        assert_eq!(chain.matches("key must be a string").count(), 1, "{chain}");
    }

    #[test]
    fn refs_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let layer = s.put_bytes(b"layer").unwrap();
        let config = s.put_bytes(b"{}").unwrap();
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{config}","size":2}},"layers":[{{"mediaType":"l","digest":"{layer}","size":5}}]}}"#
        );
        let md = s.put_bytes(m.as_bytes()).unwrap();
        let orphan = s.put_bytes(b"orphan").unwrap();
        fs::write(dir.path().join("tmp/123-0.partial"), b"half").unwrap();
        let r = Reference::parse("busybox").unwrap();
        s.tag(&r, &md).unwrap();
        assert_eq!(s.image(&r).unwrap().manifest.layers[0].digest, layer);
        assert_eq!(s.gc().unwrap(), 1);
        assert!(!s.has_blob(&orphan) && s.has_blob(&layer));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(s.untag(&r).unwrap());
        assert!(matches!(s.image(&r), Err(StoreError::NoImage(_))));
        assert_eq!(s.gc().unwrap(), 3);
    }
}
