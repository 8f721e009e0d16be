//! Builder mode (`husk.build=BLOBS:TARGET` on the kernel command line): the
//! agent of a builder microVM turns an image's layers into its read-only
//! rootfs disk, so that no layer is ever unpacked on the host.
//!
//! The host attaches two disks: `/dev/BLOBS`, read-only, holding the layer
//! blobs one after the other (the extents of [`BuildRequest`]), and
//! `/dev/TARGET`, an empty ext4 file system PID 1 mounts at
//! [`BUILD_MOUNT`]. Over the control connection the agent answers `hello`,
//! then serves exactly one `build`: it checks the layout, verifies each
//! blob's sha256 in place, unpacks the layers in order with the scoped
//! unpacker (`husk-layers`), syncs and unmounts the target, and answers
//! `built` (or an error naming the layer and the cause). Every container
//! request is refused: a builder runs no image code. PID 1 then powers the
//! VM off.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use husk_layers::{self as layers, LayerError, UnpackOptions, UnpackStats};
use husk_proto::agent::{
    self, BuildRequest, Envelope, ErrorKind, FrameError, ProtocolError, Request, Response,
    PROTOCOL_VERSION,
};
pub use husk_proto::guest::BUILD_MOUNT;

/// Builder errors.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The control stream failed or a request was invalid.
    #[error("control stream")]
    Protocol(#[from] ProtocolError),
    /// A layer failed verification or unpacking.
    #[error("layer {digest}")]
    Layer {
        /// The layer's digest.
        digest: String,
        /// Why.
        #[source]
        source: LayerError,
    },
    /// A disk could not be read, synced or unmounted.
    #[error("cannot {what} {path:?}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The file or mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A request a builder does not serve.
    #[error("a builder microVM serves only hello and build, not {request}")]
    Refused {
        /// The request's type.
        request: &'static str,
    },
    /// A second `build` on the same VM.
    #[error("this builder microVM has already built its disk")]
    AlreadyBuilt,
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, BuildError>;

impl BuildError {
    /// The class sent to the host.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Layer {
                source: LayerError::DigestMismatch { .. } | LayerError::SizeMismatch { .. },
                ..
            } => ErrorKind::DigestMismatch,
            Self::Layer { .. } => ErrorKind::BadLayer,
            Self::Protocol(_) | Self::Refused { .. } => ErrorKind::InvalidRequest,
            Self::AlreadyBuilt => ErrorKind::InvalidState,
            Self::Io { .. } => ErrorKind::Internal,
        }
    }

    /// The message with its chain of causes, on one line.
    pub fn message(&self) -> String {
        husk_proto::error::chain(self)
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The size of the blob disk (a block device or, in tests, a file).
fn disk_size(blobs: &Path) -> Result<u64> {
    let mut f = File::open(blobs).map_err(io_err("open", blobs))?;
    f.seek(SeekFrom::End(0)).map_err(io_err("size", blobs))
}

/// Removes the empty `lost+found` mkfs leaves in a fresh file system (an
/// image that has one gets it from its layers).
fn remove_lost_found(root: &Path) -> Result<()> {
    let path = root.join("lost+found");
    match fs::remove_dir(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &path)(e)),
        _ => Ok(()),
    }
}

/// Verifies and unpacks every layer of `req` from the blob disk `blobs`
/// into `root` (the target file system's mount point), then syncs it.
pub fn unpack_layers(
    blobs: &Path,
    root: &Path,
    req: &BuildRequest,
    opts: &UnpackOptions,
) -> Result<UnpackStats> {
    req.validate(Some(disk_size(blobs)?))?;
    remove_lost_found(root)?;
    let mut total = UnpackStats::default();
    for l in &req.layers {
        let s = layers::apply_layer_extent(
            root,
            blobs,
            l.offset,
            l.size,
            &l.digest,
            &l.media_type,
            opts,
        )
        .map_err(|source| BuildError::Layer {
            digest: l.digest.clone(),
            source,
        })?;
        total.entries += s.entries;
        total.bytes += s.bytes;
        total.whiteouts += s.whiteouts;
        total.skipped += s.skipped;
    }
    let dir = File::open(root).map_err(io_err("open", root))?;
    nix::unistd::syncfs(&dir).map_err(|e| io_err("sync", root)(io::Error::from(e)))?;
    Ok(total)
}

/// In the guest: unpacks into [`BUILD_MOUNT`] from `/dev/<blobs>`, then
/// unmounts the target so that the disk is complete and clean.
pub fn build_in_guest(blobs: &str, req: &BuildRequest) -> Result<Response> {
    let root = Path::new(BUILD_MOUNT);
    let stats = unpack_layers(
        &Path::new("/dev").join(blobs),
        root,
        req,
        &UnpackOptions::default(),
    )?;
    nix::mount::umount(root).map_err(|e| io_err("unmount", root)(io::Error::from(e)))?;
    Ok(Response::Built {
        entries: stats.entries,
        bytes: stats.bytes,
    })
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Hello { .. } => "hello",
        Request::Health => "health",
        Request::Create(_) => "create",
        Request::Start { .. } => "start",
        Request::Exec(_) => "exec",
        Request::Signal { .. } => "signal",
        Request::Resize { .. } => "resize",
        Request::Wait { .. } => "wait",
        Request::Shutdown => "shutdown",
        Request::Build(_) => "build",
        Request::SetHosts { .. } => "set_hosts",
        Request::Readdress(_) => "readdress",
        Request::Provision(_) => "provision",
    }
}

fn reply<S: Write>(stream: &mut S, seq: u64, body: Response) -> Result<()> {
    let env = Envelope {
        version: PROTOCOL_VERSION,
        seq,
        body,
    };
    Ok(agent::write_frame(stream, &env).map_err(ProtocolError::from)?)
}

fn error_response(e: &BuildError) -> Response {
    Response::Error {
        kind: e.kind(),
        message: e.message(),
    }
}

/// Serves one control connection of a builder: `hello` (and `health`) are
/// answered, the one `build` runs `build`, `shutdown` or the host closing
/// ends it; anything else is refused. Returns whether a build succeeded.
pub fn serve<S, F>(mut stream: S, agent_version: &str, mut build: F) -> Result<bool>
where
    S: Read + Write,
    F: FnMut(&BuildRequest) -> Result<Response>,
{
    let mut built = None;
    loop {
        let env: Envelope<Request> = match agent::read_frame(&mut stream) {
            Ok(e) => e,
            Err(FrameError::Closed) => return Ok(built == Some(true)),
            Err(e) => return Err(ProtocolError::from(e).into()),
        };
        let outcome = match (&env.body, built) {
            _ if env.version != PROTOCOL_VERSION => {
                Err(BuildError::Protocol(ProtocolError::Invalid {
                    reason: format!("unsupported protocol version {}", env.version),
                }))
            }
            (Request::Hello { .. } | Request::Health, _) => Ok(Response::Ready {
                version: PROTOCOL_VERSION,
                agent_version: agent_version.to_string(),
                healthy: true,
            }),
            (Request::Shutdown, _) => {
                reply(&mut stream, env.seq, Response::ShuttingDown)?;
                return Ok(built == Some(true));
            }
            (Request::Build(_), Some(_)) => Err(BuildError::AlreadyBuilt),
            (Request::Build(req), None) => {
                let r = build(req);
                built = Some(r.is_ok());
                r
            }
            (other, _) => Err(BuildError::Refused {
                request: request_name(other),
            }),
        };
        let body = outcome.unwrap_or_else(|e| {
            eprintln!("husk-agent: build: {}", e.message());
            error_response(&e)
        });
        reply(&mut stream, env.seq, body)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_proto::agent::{read_frame, write_frame, BlobExtent, BLOB_ALIGN};
    use std::os::unix::net::UnixStream;

    fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            h.set_path(path).unwrap();
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&b.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    fn sha256(b: &[u8]) -> String {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
    }

    /// A blob disk of `blobs` (aligned) and the matching request.
    fn blob_disk(dir: &Path, blobs: &[Vec<u8>]) -> (PathBuf, BuildRequest) {
        let mut disk = Vec::new();
        let mut layers = Vec::new();
        for b in blobs {
            layers.push(BlobExtent {
                digest: sha256(b),
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                offset: disk.len() as u64,
                size: b.len() as u64,
            });
            disk.extend_from_slice(b);
            let align = usize::try_from(BLOB_ALIGN).unwrap();
            disk.resize(disk.len().next_multiple_of(align), 0);
        }
        let path = dir.join("blobs.img");
        fs::write(&path, disk).unwrap();
        (path, BuildRequest { layers })
    }

    #[test]
    fn layers_are_verified_and_unpacked_in_order() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("lost+found")).unwrap();
        let l1 = tar_gz(&[("etc/motd", b"one"), ("etc/gone", b"x")]);
        let l2 = tar_gz(&[("etc/motd", b"two"), ("etc/.wh.gone", b"")]);
        let (disk, req) = blob_disk(d.path(), &[l1, l2]);
        let stats = unpack_layers(&disk, &root, &req, &UnpackOptions::default()).unwrap();
        assert_eq!(stats.entries, 4);
        assert_eq!(fs::read(root.join("etc/motd")).unwrap(), b"two");
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("lost+found").exists());
    }

    #[test]
    fn a_corrupt_blob_is_refused_before_unpacking() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir(&root).unwrap();
        let (disk, req) = blob_disk(d.path(), &[tar_gz(&[("a", b"a")])]);
        let mut bytes = fs::read(&disk).unwrap();
        bytes[10] ^= 0xff;
        fs::write(&disk, bytes).unwrap();
        let err = unpack_layers(&disk, &root, &req, &UnpackOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DigestMismatch);
        let msg = err.message();
        assert!(
            msg.starts_with(&format!("layer {}: digest mismatch", req.layers[0].digest)),
            "{msg}"
        );
        assert!(!root.join("a").exists());
        // An extent past the disk's end is refused by the layout check.
        let mut long = req.clone();
        long.layers[0].size = 1 << 20;
        let err = unpack_layers(&disk, &root, &long, &UnpackOptions::default()).unwrap_err();
        assert!(err.message().contains("past the blob disk"), "{err:?}");
    }

    fn call(s: &mut UnixStream, seq: u64, body: Request) -> Response {
        let env = Envelope {
            version: PROTOCOL_VERSION,
            seq,
            body,
        };
        write_frame(s, &env).unwrap();
        let back: Envelope<Response> = read_frame(s).unwrap();
        assert_eq!(back.seq, seq);
        back.body
    }

    #[test]
    fn a_builder_serves_hello_and_one_build_only() {
        let (mut host, guest) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            serve(guest, "test", |req| {
                Ok(Response::Built {
                    entries: req.layers.len() as u64,
                    bytes: 0,
                })
            })
        });
        let hello = call(
            &mut host,
            1,
            Request::Hello {
                version: PROTOCOL_VERSION,
            },
        );
        assert!(matches!(hello, Response::Ready { healthy: true, .. }));
        let r = call(&mut host, 2, Request::Shutdown);
        assert_eq!(r, Response::ShuttingDown);
        assert!(!agent.join().unwrap().unwrap(), "no build happened");

        let (mut host, guest) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            serve(guest, "test", |_| {
                Ok(Response::Built {
                    entries: 1,
                    bytes: 2,
                })
            })
        });
        let start = call(&mut host, 1, Request::Start { id: "c".into() });
        assert!(
            matches!(&start, Response::Error { kind: ErrorKind::InvalidRequest, message }
                if message == "a builder microVM serves only hello and build, not start"),
            "{start:?}"
        );
        let req = BuildRequest {
            layers: vec![BlobExtent {
                digest: sha256(b""),
                media_type: "m".into(),
                offset: 0,
                size: 0,
            }],
        };
        let built = call(&mut host, 2, Request::Build(req.clone()));
        assert_eq!(
            built,
            Response::Built {
                entries: 1,
                bytes: 2
            }
        );
        let again = call(&mut host, 3, Request::Build(req));
        assert!(
            matches!(
                again,
                Response::Error {
                    kind: ErrorKind::InvalidState,
                    ..
                }
            ),
            "{again:?}"
        );
        drop(host);
        assert!(agent.join().unwrap().unwrap(), "the build succeeded");
    }
}
