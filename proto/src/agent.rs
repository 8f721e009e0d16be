//! The host ↔ agent control protocol (see `PROTOCOL.md` beside this crate).
//!
//! Every message is a [`crate::frame`] (a big-endian `u32` length, then
//! JSON). Requests and responses travel in an [`Envelope`] that carries the
//! protocol version and a sequence number the response echoes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::frame::{read_frame, write_frame, FrameError, MAX_FRAME};

/// The protocol version this agent speaks.
pub const PROTOCOL_VERSION: u32 = 2;

/// Protocol errors.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A frame could not be read or written.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A request is well-formed JSON but invalid.
    #[error("invalid request: {reason}")]
    Invalid {
        /// Why.
        reason: String,
    },
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, ProtocolError>;

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
    /// Replace the network members' lines of a container's `/etc/hosts`
    /// (the other containers of its networks); answered by `HostsSet`.
    SetHosts {
        /// Container id.
        id: String,
        /// The lines.
        entries: Vec<HostEntry>,
    },
    /// A microVM restored from another container's snapshot (`husk fork`)
    /// takes its own address: eth0's MAC, address and netmask, and the
    /// default route. Answered by `Readdressed`.
    Readdress(Readdress),
    /// A microVM restored from a template snapshot gets what its container
    /// needs (see [`crate::provision`]). Answered by `Provisioned`.
    Provision(Box<crate::provision::Provision>),
    /// Builder microVMs only (`husk.build`): verify and unpack layers into
    /// the target disk, then unmount it. Answered by `Built`; any other
    /// agent refuses it, and a builder refuses every container request.
    Build(BuildRequest),
}

/// eth0's new identity (see [`Request::Readdress`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Readdress {
    /// The MAC address.
    pub mac: [u8; 6],
    /// The IPv4 address.
    pub ip: std::net::Ipv4Addr,
    /// Its prefix length (0-32).
    pub prefix: u8,
    /// The default gateway.
    #[serde(default)]
    pub gateway: Option<std::net::Ipv4Addr>,
}

/// The most `/etc/hosts` lines a container gets for its network members.
pub const MAX_HOST_ENTRIES: usize = 1024;
/// The most names one line carries.
pub const MAX_HOST_NAMES: usize = 32;

/// One `/etc/hosts` line: another container of the same network, by its
/// name, aliases and short id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// Its address.
    pub ip: std::net::Ipv4Addr,
    /// Its names: `[A-Za-z0-9_.-]{1,253}` each.
    pub names: Vec<String>,
}

/// Whether `n` can be a name on an `/etc/hosts` line: `[A-Za-z0-9_.-]{1,253}`.
pub fn valid_host_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Checks a list of host lines: bounded, and names that cannot break the
/// file's format.
pub fn validate_hosts(entries: &[HostEntry]) -> Result<()> {
    let invalid = |reason: String| Err(ProtocolError::Invalid { reason });
    if entries.len() > MAX_HOST_ENTRIES {
        return invalid(format!("more than {MAX_HOST_ENTRIES} host entries"));
    }
    for e in entries {
        if e.names.is_empty() || e.names.len() > MAX_HOST_NAMES {
            return invalid(format!("host entry {} has {} names", e.ip, e.names.len()));
        }
        for n in &e.names {
            if !valid_host_name(n) {
                return invalid(format!("host name {n:?} is not [A-Za-z0-9_.-]{{1,253}}"));
            }
        }
    }
    Ok(())
}

/// Most layers one image may have (Docker's limit is 127).
pub const MAX_BUILD_LAYERS: usize = 128;
/// Alignment of each blob on a builder's blob disk (bytes).
pub const BLOB_ALIGN: u64 = 4096;

/// One layer blob on a builder's blob disk: `size` bytes at `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobExtent {
    /// `sha256:<64 hex>` of the blob (compressed, as stored).
    pub digest: String,
    /// OCI or Docker schema-2 layer media type.
    pub media_type: String,
    /// Byte offset on the blob disk, a multiple of [`BLOB_ALIGN`].
    pub offset: u64,
    /// Size of the blob in bytes.
    pub size: u64,
}

impl BlobExtent {
    /// The first byte past the blob, or `None` on overflow.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.size)
    }
}

/// `Build`: the image's layers, base first, as extents of the blob disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    /// The layers, in order.
    pub layers: Vec<BlobExtent>,
}

impl BuildRequest {
    /// Checks the layout: 1 to [`MAX_BUILD_LAYERS`] layers, each aligned to
    /// [`BLOB_ALIGN`], in disk order, not overlapping, and not past
    /// `disk_bytes` (the blob disk's size) when given.
    pub fn validate(&self, disk_bytes: Option<u64>) -> Result<()> {
        let invalid = |reason: String| Err(ProtocolError::Invalid { reason });
        if self.layers.is_empty() || self.layers.len() > MAX_BUILD_LAYERS {
            return invalid(format!(
                "{} layers, want 1 to {MAX_BUILD_LAYERS}",
                self.layers.len()
            ));
        }
        let mut next = 0u64;
        for l in &self.layers {
            let Some(end) = l.end() else {
                return invalid(format!("layer {} overflows the blob disk", l.digest));
            };
            if l.offset % BLOB_ALIGN != 0 || l.offset < next {
                return invalid(format!(
                    "layer {} at offset {} is unaligned or overlaps the previous one",
                    l.digest, l.offset
                ));
            }
            if disk_bytes.is_some_and(|d| end > d) {
                return invalid(format!("layer {} ends past the blob disk", l.digest));
            }
            next = end;
        }
        Ok(())
    }
}

/// The cache key of an unpacked image, the same on both sides (the
/// agent's `images/<key>`, the host's rootfs disk `<key>.ext4`): sha256
/// over the layer digests in order, one per line (like OCI's chain id, but
/// over blob digests).
pub fn chain_key<'a>(digests: impl IntoIterator<Item = &'a str>) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for d in digests {
        h.update(d.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
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

pub use crate::mounts::{MountSpec, TmpfsMount};

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

/// A process to run: the one process description husk uses everywhere (a
/// container's `config.json`, `husk exec`, the agent's `create` and `exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Entrypoint (from the image or `--entrypoint`).
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Command, appended to the entrypoint (from the image or the command
    /// line; an exec's whole argv).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory inside the container ("/" when empty; for an exec,
    /// the container's).
    #[serde(default)]
    pub workdir: String,
    /// `user`, `uid`, `user:group` or `uid:gid`; root when empty (for an
    /// exec, the container's).
    #[serde(default)]
    pub user: String,
    /// Give the process a pseudo-terminal (`-t`).
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open (`-i`).
    #[serde(default, alias = "stdin")]
    pub open_stdin: bool,
    /// Initial terminal size when `tty` (set on the pty before the process
    /// starts); the kernel's default (0×0) when absent.
    #[serde(default, deserialize_with = "console_size_compat")]
    pub console_size: Option<ConsoleSize>,
}

impl ProcessSpec {
    /// The argv: entrypoint then cmd.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// Reads a console size written as `{"rows": R, "cols": C}` or, as older
/// husk versions stored it in `config.json`, `[R, C]`.
fn console_size_compat<'de, D>(d: D) -> std::result::Result<Option<ConsoleSize>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Struct(ConsoleSize),
        Pair(u16, u16),
    }
    Ok(Option::<Either>::deserialize(d)?.map(|e| match e {
        Either::Struct(s) => s,
        Either::Pair(rows, cols) => ConsoleSize { rows, cols },
    }))
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
    /// Where its stdio goes.
    #[serde(default)]
    pub stdio: StdioPorts,
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
    /// `/etc/hosts` lines for the other containers of its networks.
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
    /// tmpfs mounts, with `mounts` (the deeper destination over the other).
    #[serde(default)]
    pub tmpfs: Vec<TmpfsMount>,
    /// The root file system is mounted read-only (its mounts are not).
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// Capabilities and `no-new-privileges`, for the init and every exec.
    #[serde(default)]
    pub security: crate::security::Security,
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
        validate_hosts(&self.hosts)?;
        crate::mounts::validate_tmpfs(&self.tmpfs)?;
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
    /// Where its stdio goes.
    #[serde(default)]
    pub stdio: StdioPorts,
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
    /// `/etc/hosts` was updated.
    HostsSet,
    /// eth0 has its new address.
    Readdressed,
    /// The guest has its disks, network, clock and fresh entropy.
    Provisioned,
    /// The process ended.
    Exited {
        /// How.
        status: ExitStatus,
    },
    /// The agent is shutting down.
    ShuttingDown,
    /// The layers were unpacked, the target disk synced and unmounted.
    Built {
        /// Entries read from all layers.
        entries: u64,
        /// Bytes of file content written.
        bytes: u64,
    },
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

    fn extent(offset: u64, size: u64) -> BlobExtent {
        BlobExtent {
            digest: format!("sha256:{}", "a".repeat(64)),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            offset,
            size,
        }
    }

    #[test]
    fn the_chain_key_is_the_sha256_of_the_digest_lines() {
        // printf 'sha256:a\nsha256:b\n' | sha256sum
        assert_eq!(
            chain_key(["sha256:a", "sha256:b"]),
            "5d02884ff145014d7bbd2e791dfad6096dbc4208330b699b82742d4b403d1f56"
        );
        assert_ne!(chain_key(["a", "b"]), chain_key(["b", "a"]));
    }

    #[test]
    fn build_request_layout_is_checked() {
        let ok = BuildRequest {
            layers: vec![extent(0, 5000), extent(8192, 1), extent(12288, 0)],
        };
        ok.validate(Some(12288)).unwrap();
        ok.validate(None).unwrap();
        let json = r#"{"type":"build","layers":[{"digest":"sha256:x","media_type":"m","offset":0,"size":1}]}"#;
        let req: Request = serde_json::from_str(json).unwrap();
        assert!(matches!(req, Request::Build(ref b) if b.layers[0].size == 1));
        for (bad, disk, why) in [
            (vec![], None, "0 layers"),
            (vec![extent(0, 5000), extent(4096, 1)], None, "overlaps"),
            (vec![extent(100, 1)], None, "unaligned"),
            (vec![extent(0, 4097)], Some(4096), "past the blob disk"),
            (vec![extent(u64::MAX - 4095, 4096)], None, "overflows"),
            (vec![extent(0, 0); MAX_BUILD_LAYERS + 1], None, "129 layers"),
        ] {
            let err = BuildRequest { layers: bad }.validate(disk).unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
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
        // An older config.json's pair form and `stdin` are still read.
        let p: ProcessSpec =
            serde_json::from_str(r#"{"cmd":["sh"],"stdin":true,"console_size":[30,100]}"#).unwrap();
        assert!(p.open_stdin);
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
    fn unknown_fields_refused() {
        let json = br#"{"version":1,"seq":1,"body":{"type":"health"},"x":1}"#;
        let mut buf = u32::try_from(json.len()).unwrap().to_be_bytes().to_vec();
        buf.extend_from_slice(json);
        let err = read_frame::<_, Envelope<Request>>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::Json(_)));
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
            stdio: StdioPorts::default(),
            hostname: String::new(),
            mounts: vec![],
            limits: Limits::default(),
            new_network: true,
            hosts: Vec::new(),
            tmpfs: Vec::new(),
            readonly_rootfs: false,
            security: Default::default(),
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
        assert_eq!(c.stdio, StdioPorts::default());
    }
}
