//! The host ↔ agent control protocol (see `agent/PROTOCOL.md`).
//!
//! Every message is a frame: a big-endian `u32` length followed by that many
//! bytes of JSON. Requests and responses travel in an [`Envelope`] that
//! carries the protocol version and a sequence number the response echoes.
//! Frames larger than [`MAX_FRAME`] are refused before anything is read.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The protocol version this agent speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The largest frame accepted or sent (bytes of JSON).
pub const MAX_FRAME: u32 = 4 << 20;

/// Protocol errors.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The stream failed.
    #[error("cannot read or write a frame")]
    Io(#[from] io::Error),
    /// A frame announced more than [`MAX_FRAME`] bytes.
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME}")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
    },
    /// A frame did not hold the expected JSON.
    #[error("malformed message")]
    Json(#[from] serde_json::Error),
    /// The peer closed the stream between frames.
    #[error("peer closed the connection")]
    Closed,
    /// A request is well-formed JSON but invalid.
    #[error("invalid request: {reason}")]
    Invalid {
        /// Why.
        reason: String,
    },
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, ProtocolError>;

/// Writes one frame holding `msg` as JSON.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or(ProtocolError::FrameTooLarge {
            len: body.len() as u64,
        })?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&body)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame and decodes it. A clean end of stream before the length
/// gives [`ProtocolError::Closed`].
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ProtocolError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge { len: len.into() });
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

/// A versioned message with a sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope<T> {
    /// Protocol version of the sender.
    pub version: u32,
    /// Chosen by the host; the response carries the same number.
    pub seq: u64,
    /// The request or response.
    pub body: T,
}

/// Requests from the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// First message: the host's protocol version. Answered by `Ready`.
    Hello {
        /// Host's protocol version.
        version: u32,
    },
    /// Health check. Answered by `Ready`.
    Health,
    /// Build a container's root filesystem and prepare it (nothing runs yet).
    Create(Box<CreateRequest>),
    /// Start a created container's entrypoint.
    Start {
        /// Container id.
        id: String,
    },
    /// Run another process in a running container.
    Exec(ExecRequest),
    /// Send a signal to the container's init or to an exec'd process.
    Signal {
        /// Container id.
        id: String,
        /// Exec id, or none for the container's init.
        #[serde(default)]
        exec_id: Option<String>,
        /// Signal number.
        signal: i32,
    },
    /// Set the terminal size of a `tty` process (`TIOCSWINSZ` on its pty;
    /// the kernel then sends `SIGWINCH` to its foreground process group).
    /// Answered by `Resized`.
    Resize {
        /// Container id.
        id: String,
        /// Exec id, or none for the container's init.
        #[serde(default)]
        exec_id: Option<String>,
        /// Rows (lines).
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Block until the process exits; answered by `Exited`.
    Wait {
        /// Container id.
        id: String,
        /// Exec id, or none for the container's init.
        #[serde(default)]
        exec_id: Option<String>,
    },
    /// Kill every container and end the serve loop (PID 1 then powers off).
    Shutdown,
}

/// How a blob reaches the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BlobSource {
    /// A file in the guest, e.g. on a read-only virtio-blk disk.
    Path {
        /// Absolute guest path.
        path: PathBuf,
    },
    /// Streamed: the agent connects to this port and reads exactly `size`
    /// bytes.
    Stream {
        /// vsock port on the host.
        port: u32,
    },
}

/// One image layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// `sha256:<64 hex>` of the blob as stored (compressed).
    pub digest: String,
    /// OCI or Docker schema-2 layer media type.
    pub media_type: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Where the blob is.
    pub source: BlobSource,
}

/// Where the container's pristine root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ImageSource {
    /// Layers to verify and unpack, in order (base first).
    Layers {
        /// The layers.
        layers: Vec<Layer>,
    },
    /// An already unpacked tree (e.g. the host's cached ext4 image mounted
    /// read-only); used as the overlay's lower directory as is.
    Unpacked {
        /// Guest path of the tree.
        path: PathBuf,
    },
}

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// Guest path.
    pub source: PathBuf,
    /// Path inside the container (scoped to its rootfs).
    pub destination: PathBuf,
    /// Mount read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// cgroup v2 limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// `memory.max` in bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU quota in millicpus (1000 = one CPU), written as `cpu.max`.
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    /// `pids.max`.
    #[serde(default)]
    pub pids: Option<u64>,
}

/// Ports the agent connects to for a process's stdio. Each connection first
/// receives a [`StreamHello`] frame. A missing port means /dev/null.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioPorts {
    /// stdin.
    #[serde(default)]
    pub stdin: Option<u32>,
    /// stdout (and stderr when `tty`).
    #[serde(default)]
    pub stdout: Option<u32>,
    /// stderr.
    #[serde(default)]
    pub stderr: Option<u32>,
}

/// The first frame on a stdio connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamHello {
    /// Container id.
    pub id: String,
    /// Exec id, none for the init process.
    pub exec_id: Option<String>,
    /// "stdin", "stdout" or "stderr".
    pub stream: String,
}

/// A process to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Image entrypoint.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Image cmd (appended to the entrypoint).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory inside the container ("/" when empty).
    #[serde(default)]
    pub workdir: String,
    /// `user`, `uid`, `user:group` or `uid:gid`; root when empty.
    #[serde(default)]
    pub user: String,
    /// Give the process a pseudo-terminal.
    #[serde(default)]
    pub tty: bool,
    /// Where stdio goes.
    #[serde(default)]
    pub stdio: StdioPorts,
    /// Initial terminal size when `tty` (set on the pty before the process
    /// starts); the kernel's default (0×0) when absent.
    #[serde(default)]
    pub console_size: Option<ConsoleSize>,
}

/// A terminal size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSize {
    /// Rows (lines).
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// `Create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Container id: `[A-Za-z0-9_.-]{1,64}`.
    pub id: String,
    /// The image.
    pub image: ImageSource,
    /// The entrypoint process.
    pub process: ProcessSpec,
    /// UTS hostname.
    #[serde(default)]
    pub hostname: String,
    /// Extra bind mounts.
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// cgroup limits.
    #[serde(default)]
    pub limits: Limits,
    /// Give the container its own network namespace (with only `lo`).
    /// When false it shares the guest's (eth0).
    #[serde(default = "default_true")]
    pub new_network: bool,
}

impl CreateRequest {
    /// Checks what can be checked without the image: the id, a non-empty
    /// argv, at least one layer, relative-or-absolute mount destinations
    /// without `..`, and absolute bind sources.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(ProtocolError::Invalid { reason });
        if !valid_id(&self.id) {
            return invalid(format!(
                "container id {:?} is not [A-Za-z0-9_.-]{{1,64}}",
                self.id
            ));
        }
        if self.process.entrypoint.is_empty() && self.process.cmd.is_empty() {
            return invalid("empty entrypoint and cmd".into());
        }
        match &self.image {
            ImageSource::Layers { layers } if layers.is_empty() => {
                return invalid("no layers".into())
            }
            ImageSource::Unpacked { path } if !path.is_absolute() => {
                return invalid(format!("unpacked image path {path:?} is not absolute"))
            }
            _ => {}
        }
        for m in &self.mounts {
            if !m.source.is_absolute() {
                return invalid(format!("mount source {:?} is not absolute", m.source));
            }
            if m.destination
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                return invalid(format!(
                    "mount destination {:?} contains '..'",
                    m.destination
                ));
            }
        }
        Ok(())
    }
}

/// A container or exec id: `[A-Za-z0-9_.-]{1,64}`, not `.` or `..`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn default_true() -> bool {
    true
}

/// `Exec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Container id.
    pub id: String,
    /// Exec id, unique in the container.
    pub exec_id: String,
    /// The process (`entrypoint` ++ `cmd` is the argv).
    pub process: ProcessSpec,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExitStatus {
    /// `exit(code)`.
    Code {
        /// Exit code.
        code: i32,
    },
    /// Killed by a signal.
    Signal {
        /// Signal number.
        signal: i32,
    },
}

/// Error classes, so the host can react without parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was malformed or invalid.
    InvalidRequest,
    /// Unknown protocol version.
    UnsupportedVersion,
    /// No such container or exec.
    NotFound,
    /// The id is taken.
    AlreadyExists,
    /// Wrong state for the request (e.g. start twice).
    InvalidState,
    /// A blob's digest did not match.
    DigestMismatch,
    /// A layer was malformed or tried to escape the rootfs.
    BadLayer,
    /// Creating or running the process failed.
    Runtime,
    /// The command was not found in the container (`ENOENT` from `execve`
    /// for every `PATH` candidate); the host exits 127, as Docker does.
    CommandNotFound,
    /// The command exists but cannot be executed (no execute permission, a
    /// directory, a bad format); the host exits 126, as Docker does.
    CommandNotExecutable,
    /// Anything else.
    Internal,
}

/// Responses from the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Answer to `Hello` and `Health`.
    Ready {
        /// Agent protocol version.
        version: u32,
        /// Agent build version.
        agent_version: String,
        /// Whether the agent can take requests.
        healthy: bool,
    },
    /// The container exists, its rootfs is ready.
    Created {
        /// Container id.
        id: String,
    },
    /// A process started.
    Started {
        /// Its pid in the guest.
        pid: i32,
    },
    /// The signal was delivered.
    Signalled,
    /// The terminal size was set.
    Resized,
    /// The process ended.
    Exited {
        /// How.
        status: ExitStatus,
    },
    /// The agent is shutting down.
    ShuttingDown,
    /// The request failed.
    Error {
        /// Class.
        kind: ErrorKind,
        /// Human-readable message with its causes.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip() {
        let msg = Envelope {
            version: PROTOCOL_VERSION,
            seq: 7,
            body: Request::Signal {
                id: "c".into(),
                exec_id: None,
                signal: 15,
            },
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg).unwrap();
        assert_eq!(
            &buf[..4],
            &u32::try_from(buf.len() - 4).unwrap().to_be_bytes()
        );
        let back: Envelope<Request> = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn resize_and_console_size_json_shape() {
        let req: Request =
            serde_json::from_str(r#"{"type":"resize","id":"c","rows":24,"cols":80}"#).unwrap();
        assert_eq!(
            req,
            Request::Resize {
                id: "c".into(),
                exec_id: None,
                rows: 24,
                cols: 80
            }
        );
        let p: ProcessSpec = serde_json::from_str(
            r#"{"cmd":["sh"],"tty":true,"console_size":{"rows":30,"cols":100}}"#,
        )
        .unwrap();
        assert_eq!(
            p.console_size,
            Some(ConsoleSize {
                rows: 30,
                cols: 100
            })
        );
        // Older hosts send neither: still accepted.
        let p: ProcessSpec = serde_json::from_str(r#"{"cmd":["sh"]}"#).unwrap();
        assert_eq!(p.console_size, None);
        assert_eq!(
            serde_json::to_string(&Response::Resized).unwrap(),
            r#"{"type":"resized"}"#
        );
        assert_eq!(
            serde_json::to_string(&ErrorKind::CommandNotFound).unwrap(),
            r#""command_not_found""#
        );
        assert_eq!(
            serde_json::to_string(&ErrorKind::CommandNotExecutable).unwrap(),
            r#""command_not_executable""#
        );
    }

    #[test]
    fn oversized_frame_refused_before_reading() {
        let buf = (MAX_FRAME + 1).to_be_bytes();
        let err = read_frame::<_, Request>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }), "{err}");
    }

    #[test]
    fn eof_is_closed() {
        let err = read_frame::<_, Request>(&mut [].as_slice()).unwrap_err();
        assert!(matches!(err, ProtocolError::Closed));
    }

    #[test]
    fn unknown_fields_refused() {
        let json = br#"{"version":1,"seq":1,"body":{"type":"health"},"x":1}"#;
        let mut buf = u32::try_from(json.len()).unwrap().to_be_bytes().to_vec();
        buf.extend_from_slice(json);
        let err = read_frame::<_, Envelope<Request>>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, ProtocolError::Json(_)));
    }

    #[test]
    fn create_validate() {
        let ok = CreateRequest {
            id: "c".into(),
            image: ImageSource::Unpacked {
                path: "/img".into(),
            },
            process: ProcessSpec {
                cmd: vec!["sh".into()],
                ..Default::default()
            },
            hostname: String::new(),
            mounts: vec![],
            limits: Limits::default(),
            new_network: true,
        };
        ok.validate().unwrap();
        let mut bad = ok.clone();
        bad.id = "../x".into();
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("container id"));
        let mut bad = ok.clone();
        bad.process.cmd.clear();
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("empty entrypoint"));
        let mut bad = ok.clone();
        bad.image = ImageSource::Layers { layers: vec![] };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no layers"));
        let mut bad = ok.clone();
        bad.mounts.push(MountSpec {
            source: "/d".into(),
            destination: "/a/../../b".into(),
            readonly: false,
        });
        assert!(bad.validate().unwrap_err().to_string().contains("'..'"));
        let mut bad = ok;
        bad.mounts.push(MountSpec {
            source: "rel".into(),
            destination: "/b".into(),
            readonly: false,
        });
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not absolute"));
    }

    #[test]
    fn create_json_shape() {
        let json = r#"{"type":"create","id":"c1",
            "image":{"kind":"layers","layers":[{"digest":"sha256:00","media_type":"application/vnd.oci.image.layer.v1.tar+gzip","size":3,"source":{"kind":"path","path":"/blobs/x"}}]},
            "process":{"cmd":["sh"]}}"#;
        let req: Request = serde_json::from_str(json).unwrap();
        let Request::Create(c) = req else {
            panic!("not create")
        };
        assert!(c.new_network);
        assert_eq!(c.process.cmd, vec!["sh".to_string()]);
    }
}
