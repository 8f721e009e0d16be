//! The control server: one `do_*` handler per request, tying layers,
//! overlay and container together. Generic over the control stream
//! (`Read + Write`) and over a [`Connector`] that opens the data
//! connections (stdio, streamed blobs): vsock in the guest, Unix sockets in
//! tests.
//!
//! Each control connection is served by [`Server::serve`]; `Wait` blocks its
//! connection, so a host that waits opens another connection for the rest.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::container::relay::Reopen;
use crate::container::sys::RealSys;
use crate::container::{etc, Container, ContainerConfig, Stdio};
use crate::overlay::OverlayLayout;
use crate::reaper::{ReapMode, Reaper};
use husk_layers::{self as layers, UnpackOptions};
use husk_proto::agent::{
    self, BlobSource, ConsoleSize, CreateRequest, Envelope, ExecRequest, FrameError, ImageSource,
    ProtocolError, Request, Response, StdioPorts, StreamHello, PROTOCOL_VERSION,
};

mod error;

pub use error::{Result, ServerError};

/// Opens data connections to the host.
pub trait Connector: Send + Sync + Clone + 'static {
    /// The stream type; a process's stdio is relayed to it (or pumped, for
    /// a terminal).
    type Stream: Read + Write + Into<OwnedFd> + Send + 'static;
    /// Connects to `port` on the host.
    fn connect(&self, port: u32) -> io::Result<Self::Stream>;
}

/// Connects to Unix sockets `<prefix>_<port>` (Firecracker's layout of
/// guest-initiated vsock connections; used by tests).
#[derive(Debug, Clone)]
pub struct UnixConnector {
    /// Socket path prefix.
    pub prefix: PathBuf,
}

impl Connector for UnixConnector {
    type Stream = std::os::unix::net::UnixStream;
    fn connect(&self, port: u32) -> io::Result<Self::Stream> {
        let mut p = self.prefix.clone().into_os_string();
        p.push(format!("_{port}"));
        std::os::unix::net::UnixStream::connect(p)
    }
}

/// Run-once mode: how long an exited init's status may stay unclaimed by a
/// `wait` before the agent ends anyway.
pub const RUN_ONCE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The guest's run directory (on tmpfs: the overlay uppers live there).
pub use husk_proto::guest::RUN_DIR as GUEST_RUN_DIR;
/// The guest's cgroup v2 mount.
pub const GUEST_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The guest's resolver configuration.
pub const GUEST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// The guest's network interface.
pub const GUEST_INTERFACE: &str = "eth0";

/// Server settings; directories are injected.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Working directory: `images/<chain key>` (unpacked lowers, reused by
    /// later containers of the same image) and `containers/<id>/{upper,work,rootfs}`.
    pub run_dir: PathBuf,
    /// cgroup v2 root for container cgroups.
    pub cgroup_root: PathBuf,
    /// Unpack limits.
    pub unpack: UnpackOptions,
    /// Run-once mode: [`Server::serve_all`] returns (and PID 1 powers off)
    /// once every started container's init has exited and its exit status
    /// was sent to the host (or [`RUN_ONCE_GRACE`] passed).
    pub run_once: bool,
    /// How children are reaped: `All` as PID 1.
    pub reap: ReapMode,
    /// The agent's version string.
    pub agent_version: String,
    /// The guest's resolver configuration, copied into each container as
    /// `/etc/resolv.conf` when it exists (PID 1 writes it from the kernel
    /// command line).
    pub resolv_conf: Option<PathBuf>,
    /// The interface whose IPv4 address names the container's hostname in
    /// its `/etc/hosts` when it shares the guest's network.
    pub network_interface: String,
}

impl ServerConfig {
    /// The settings for PID 1 in a husk guest.
    pub fn guest(agent_version: &str) -> Self {
        Self {
            run_dir: GUEST_RUN_DIR.into(),
            cgroup_root: GUEST_CGROUP_ROOT.into(),
            unpack: UnpackOptions::default(),
            run_once: false,
            reap: ReapMode::All,
            agent_version: agent_version.to_string(),
            resolv_conf: Some(GUEST_RESOLV_CONF.into()),
            network_interface: GUEST_INTERFACE.into(),
        }
    }
}

/// What ended a [`Server::serve`] loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The host closed the connection.
    Closed,
    /// The host asked for shutdown; every container was killed.
    Shutdown,
}

#[derive(Debug)]
struct Entry {
    container: Container,
    overlay: OverlayLayout,
    /// Where the init's stdio goes (from `create`).
    init_stdio: StdioPorts,
}

/// The agent's state, shared by all control connections.
#[derive(Debug)]
pub struct Server<C> {
    config: ServerConfig,
    connector: C,
    reaper: Reaper,
    containers: Mutex<HashMap<String, Arc<Mutex<Entry>>>>,
    /// Containers whose init's exit status reached the host.
    reported: Mutex<std::collections::HashSet<String>>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<C: Connector> Server<C> {
    /// A server with its reaper.
    pub fn new(config: ServerConfig, connector: C) -> Self {
        let reaper = Reaper::new(config.reap);
        Self {
            config,
            connector,
            reaper,
            containers: Mutex::default(),
            reported: Mutex::default(),
        }
    }

    /// Run-once state: `None` while a started init runs (or none started),
    /// else whether every exit status was reported to the host.
    fn run_once_state(&self) -> Option<bool> {
        let entries: Vec<(String, Arc<Mutex<Entry>>)> = lock(&self.containers)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut started = 0;
        let mut all_reported = true;
        for (id, e) in entries {
            let Ok(pid) = lock(&e).container.pid(None) else {
                continue;
            };
            started += 1;
            self.reaper.try_status(pid)?;
            all_reported &= lock(&self.reported).contains(&id);
        }
        (started > 0).then_some(all_reported)
    }

    /// Accepts control connections with `accept` and serves each on its own
    /// thread; returns once one of them has handled `Shutdown`.
    pub fn serve_all<S, A>(self: Arc<Self>, mut accept: A)
    where
        S: Read + Write + Send + 'static,
        A: FnMut() -> io::Result<S> + Send + 'static,
        C: 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let watch_tx = tx.clone();
        let self_run_once = self.config.run_once;
        let self_for_watch = self.clone();
        std::thread::spawn(move || loop {
            let conn = match accept() {
                Ok(c) => c,
                Err(e) => {
                    log::error!("accepting a control connection failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            let server = self.clone();
            let tx = tx.clone();
            std::thread::spawn(move || match server.serve(conn) {
                Ok(Outcome::Shutdown) => {
                    let _ = tx.send(());
                }
                Ok(Outcome::Closed) => {}
                // The host's side went away (a restored microVM's old
                // connections are reset): nothing to report.
                Err(e) if e.connection_lost() => {}
                Err(e) => log::error!("control connection failed: {}", e.message()),
            });
        });
        if self_run_once {
            let server = self_for_watch;
            std::thread::spawn(move || {
                let mut exited_since: Option<std::time::Instant> = None;
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    match server.run_once_state() {
                        None => exited_since = None,
                        Some(true) => break,
                        Some(false) => {
                            let t = *exited_since.get_or_insert_with(std::time::Instant::now);
                            if t.elapsed() >= RUN_ONCE_GRACE {
                                break;
                            }
                        }
                    }
                }
                log::info!("run-once: every container has exited");
                let _ = watch_tx.send(());
            });
        }
        let _ = rx.recv();
    }

    /// Serves one control connection until it closes or `Shutdown`.
    pub fn serve<S: Read + Write>(&self, mut stream: S) -> Result<Outcome> {
        loop {
            let env: Envelope<Request> = match agent::read_frame(&mut stream) {
                Ok(e) => e,
                Err(FrameError::Closed) => return Ok(Outcome::Closed),
                Err(FrameError::Json(e)) => {
                    let err = ServerError::Protocol(FrameError::Json(e).into());
                    self.reply(&mut stream, 0, error_response(&err))?;
                    continue;
                }
                Err(e) => return Err(ProtocolError::from(e).into()),
            };
            let shutdown = env.body == Request::Shutdown;
            let init_wait = match &env.body {
                Request::Wait { id, exec_id: None } => Some(id.clone()),
                _ => None,
            };
            let body = if env.version != PROTOCOL_VERSION {
                error_response(&ServerError::UnsupportedVersion {
                    version: env.version,
                })
            } else {
                self.handle(env.body).unwrap_or_else(|e| {
                    log::error!("request failed: {}", e.message());
                    error_response(&e)
                })
            };
            let exited = matches!(body, Response::Exited { .. });
            self.reply(&mut stream, env.seq, body)?;
            if let (Some(id), true) = (init_wait, exited) {
                lock(&self.reported).insert(id);
            }
            if shutdown {
                return Ok(Outcome::Shutdown);
            }
        }
    }

    fn reply<S: Write>(&self, stream: &mut S, seq: u64, body: Response) -> Result<()> {
        let env = Envelope {
            version: PROTOCOL_VERSION,
            seq,
            body,
        };
        Ok(agent::write_frame(stream, &env).map_err(ProtocolError::from)?)
    }

    /// Handles one request.
    pub fn handle(&self, req: Request) -> Result<Response> {
        match req {
            Request::Hello { version } => self.do_hello(version),
            Request::Health => self.do_hello(PROTOCOL_VERSION),
            Request::Create(c) => self.do_create(*c),
            Request::Start { id } => self.do_start(&id),
            Request::Exec(e) => self.do_exec(e),
            Request::Signal {
                id,
                exec_id,
                signal,
            } => self.do_signal(&id, exec_id.as_deref(), signal),
            Request::Resize {
                id,
                exec_id,
                rows,
                cols,
            } => self.do_resize(&id, exec_id.as_deref(), ConsoleSize { rows, cols }),
            Request::Wait { id, exec_id } => self.do_wait(&id, exec_id.as_deref()),
            Request::Shutdown => self.do_shutdown(),
            Request::SetHosts { id, entries } => self.do_set_hosts(&id, &entries),
            Request::Readdress(r) => self.do_readdress(&r),
            Request::Provision(p) => self.do_provision(&p),
            Request::Build(_) => Err(ServerError::Protocol(ProtocolError::Invalid {
                reason: "build is served by builder microVMs only".into(),
            })),
        }
    }

    fn do_hello(&self, version: u32) -> Result<Response> {
        if version != PROTOCOL_VERSION {
            return Err(ServerError::UnsupportedVersion { version });
        }
        Ok(Response::Ready {
            version: PROTOCOL_VERSION,
            agent_version: self.config.agent_version.clone(),
            healthy: true,
        })
    }

    fn entry(&self, id: &str) -> Result<Arc<Mutex<Entry>>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| ServerError::NotFound { id: id.to_string() })
    }

    fn do_create(&self, req: CreateRequest) -> Result<Response> {
        req.validate()?;
        if lock(&self.containers).contains_key(&req.id) {
            return Err(ServerError::AlreadyExists { id: req.id });
        }
        let dir = self.config.run_dir.join("containers").join(&req.id);
        // The host may have mounted a disk there for the container's
        // writable layer (kept across VMs): then the directory exists, as a
        // mount point, and is reused; its content is never removed here.
        let kept = is_mount_point(&dir);
        if dir.exists() && !kept {
            return Err(ServerError::AlreadyExists { id: req.id });
        }
        let init_stdio = req.stdio.clone();
        let lower = match &req.image {
            ImageSource::Layers { layers } => self.unpack_image(&req.id, layers)?,
            ImageSource::Unpacked { path } => path.clone(),
        };
        let overlay = OverlayLayout::under(&dir, &lower);
        overlay.mount(&RealSys)?;
        let hostname = if req.hostname.is_empty() {
            req.id.clone()
        } else {
            req.hostname
        };
        // Sharing the guest's network, the hostname resolves to its address.
        let addr = if req.new_network {
            None
        } else {
            etc::interface_ipv4(&self.config.network_interface)
        };
        let config = etc::write(
            &dir,
            &hostname,
            addr,
            &req.hosts,
            self.config.resolv_conf.as_deref(),
        )
        .map(|etc_files| ContainerConfig {
            id: req.id.clone(),
            rootfs: overlay.merged.clone(),
            process: req.process,
            hostname,
            mounts: crate::container::rootfs::UserMounts {
                binds: req.mounts,
                tmpfs: req.tmpfs,
                readonly_root: req.readonly_rootfs,
            },
            limits: req.limits,
            new_network: req.new_network,
            etc_files,
            cgroup_root: self.config.cgroup_root.clone(),
            security: req.security,
        });
        let container = match config.and_then(Container::create) {
            Ok(c) => c,
            Err(e) => {
                overlay.unmount();
                if !kept {
                    let _ = fs::remove_dir_all(&dir);
                }
                return Err(e.into());
            }
        };
        let entry = Arc::new(Mutex::new(Entry {
            container,
            overlay,
            init_stdio,
        }));
        lock(&self.containers).insert(req.id.clone(), entry);
        Ok(Response::Created { id: req.id })
    }

    /// Verifies and unpacks the layers into `images/<chain key>` unless a
    /// previous container already did; returns that directory.
    fn unpack_image(&self, id: &str, layers: &[agent::Layer]) -> Result<PathBuf> {
        let images = self.config.run_dir.join("images");
        fs::create_dir_all(&images).map_err(io_err(&images))?;
        let key = agent::chain_key(layers.iter().map(|l| l.digest.as_str()));
        let done = images.join(&key);
        if done.is_dir() {
            log::info!("image {key} already unpacked");
            return Ok(done);
        }
        let tmp = images.join(format!(".tmp-{key}-{id}"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        let result = layers
            .iter()
            .try_for_each(|l| self.apply_layer(id, &tmp, &images, l));
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp, &done) {
            // Another create of the same image won the race.
            let _ = fs::remove_dir_all(&tmp);
            if !done.is_dir() {
                return Err(io_err(&done)(e));
            }
        }
        Ok(done)
    }

    fn apply_layer(&self, id: &str, root: &Path, tmp_dir: &Path, l: &agent::Layer) -> Result<()> {
        let wrap = |source| ServerError::Layer {
            digest: l.digest.clone(),
            source,
        };
        let opts = &self.config.unpack;
        match &l.source {
            BlobSource::Path { path } => {
                layers::apply_layer_file(root, path, &l.digest, &l.media_type, Some(l.size), opts)
                    .map_err(wrap)?;
            }
            BlobSource::Stream { port } => {
                let hello = StreamHello {
                    id: id.to_string(),
                    exec_id: None,
                    stream: format!("layer {}", l.digest),
                };
                let s = self.open(*port, &hello)?;
                layers::apply_layer_stream(
                    root,
                    s,
                    tmp_dir,
                    &l.digest,
                    &l.media_type,
                    l.size,
                    opts,
                )
                .map_err(wrap)?;
            }
        }
        Ok(())
    }

    fn open(&self, port: u32, hello: &StreamHello) -> Result<C::Stream> {
        let connect = |source| ServerError::Connect { port, source };
        let mut s = self.connector.connect(port).map_err(connect)?;
        agent::write_frame(&mut s, hello).map_err(ProtocolError::from)?;
        Ok(s)
    }

    fn stdio(&self, id: &str, exec_id: Option<&str>, ports: &StdioPorts) -> Result<Stdio> {
        let open = |port: Option<u32>, name: &str| -> Result<Option<OwnedFd>> {
            port.map(|port| {
                let hello = StreamHello {
                    id: id.to_string(),
                    exec_id: exec_id.map(str::to_string),
                    stream: name.to_string(),
                };
                self.open(port, &hello).map(Into::into)
            })
            .transpose()
        };
        Ok(Stdio {
            stdin: open(ports.stdin, "stdin")?,
            stdout: open(ports.stdout, "stdout")?,
            stderr: open(ports.stderr, "stderr")?,
            reopen: None,
        })
    }

    /// Opens the init's output connections again after they broke (see
    /// [`Reopen`]).
    fn reopen_init(&self, id: &str, ports: &StdioPorts) -> Reopen {
        let (connector, id, ports) = (self.connector.clone(), id.to_string(), ports.clone());
        Reopen(Arc::new(move |name| {
            let port = match name {
                "stdout" => ports.stdout,
                _ => ports.stderr,
            }
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
            let mut s = connector.connect(port)?;
            let hello = StreamHello {
                id: id.clone(),
                exec_id: None,
                stream: name.to_string(),
            };
            agent::write_frame(&mut s, &hello).map_err(io::Error::other)?;
            Ok(s.into())
        }))
    }

    fn do_start(&self, id: &str) -> Result<Response> {
        let entry = self.entry(id)?;
        let mut e = lock(&entry);
        let ports = e.init_stdio.clone();
        let mut stdio = self.stdio(id, None, &ports)?;
        stdio.reopen = Some(self.reopen_init(id, &ports));
        let pid = e.container.start(stdio, &self.reaper)?;
        Ok(Response::Started { pid })
    }

    fn do_exec(&self, req: ExecRequest) -> Result<Response> {
        let entry = self.entry(&req.id)?;
        let mut e = lock(&entry);
        let stdio = self.stdio(&req.id, Some(&req.exec_id), &req.stdio)?;
        let pid = e
            .container
            .exec(&req.exec_id, &req.process, stdio, &self.reaper)?;
        Ok(Response::Started { pid })
    }

    fn do_signal(&self, id: &str, exec_id: Option<&str>, signal: i32) -> Result<Response> {
        let entry = self.entry(id)?;
        lock(&entry)
            .container
            .signal(exec_id, signal, &self.reaper)?;
        Ok(Response::Signalled)
    }

    fn do_resize(&self, id: &str, exec_id: Option<&str>, size: ConsoleSize) -> Result<Response> {
        let entry = self.entry(id)?;
        lock(&entry).container.resize(exec_id, size, &self.reaper)?;
        Ok(Response::Resized)
    }

    /// Answers once the process has exited and its output is relayed and
    /// the stream connections closed (see [`crate::container::relay`]).
    fn do_wait(&self, id: &str, exec_id: Option<&str>) -> Result<Response> {
        let entry = self.entry(id)?;
        let (pid, relay) = {
            let e = lock(&entry);
            (e.container.pid(exec_id)?, e.container.relay(exec_id))
        };
        let status = self
            .reaper
            .wait(pid)
            .ok_or_else(|| ServerError::NotFound { id: id.to_string() })?;
        if let Some(relay) = relay {
            relay.wait();
        }
        Ok(Response::Exited { status })
    }

    fn do_readdress(&self, r: &husk_proto::agent::Readdress) -> Result<Response> {
        if r.prefix > 32 {
            return Err(ServerError::Protocol(ProtocolError::Invalid {
                reason: format!("prefix {} is over 32", r.prefix),
            }));
        }
        let iface = &self.config.network_interface;
        crate::netconf::readdress(iface, r.mac, (r.ip, r.prefix), r.gateway)?;
        Ok(Response::Readdressed)
    }

    /// Only before any container exists: provisioning is what a restored
    /// template needs before its one container is created.
    fn do_provision(&self, p: &husk_proto::provision::Provision) -> Result<Response> {
        if !lock(&self.containers).is_empty() {
            return Err(ServerError::Protocol(ProtocolError::Invalid {
                reason: "provision comes before any container".into(),
            }));
        }
        crate::provision::provision(&self.config.network_interface, p)?;
        Ok(Response::Provisioned)
    }

    fn do_set_hosts(&self, id: &str, entries: &[husk_proto::agent::HostEntry]) -> Result<Response> {
        husk_proto::agent::validate_hosts(entries)?;
        self.entry(id)?;
        let dir = self.config.run_dir.join("containers").join(id);
        etc::set_members(&dir, entries)?;
        Ok(Response::HostsSet)
    }

    fn do_shutdown(&self) -> Result<Response> {
        let all: Vec<_> = lock(&self.containers).drain().collect();
        for (_, entry) in all {
            let e = lock(&entry);
            e.container.kill_all(&self.reaper);
            e.overlay.unmount();
        }
        Ok(Response::ShuttingDown)
    }
}

/// Whether `dir` is the root of a mounted file system (its device differs
/// from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(d), Some(Ok(p))) = (
        fs::symlink_metadata(dir),
        dir.parent().map(fs::symlink_metadata),
    ) else {
        return false;
    };
    d.is_dir() && d.dev() != p.dev()
}

fn error_response(e: &ServerError) -> Response {
    Response::Error {
        kind: e.kind(),
        message: e.message(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_proto::agent::ErrorKind;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn a_reset_control_connection_is_not_a_fault() {
        let io_err = |k: io::ErrorKind| {
            ServerError::Protocol(ProtocolError::Frame(FrameError::Io(io::Error::from(k))))
        };
        assert!(io_err(io::ErrorKind::ConnectionReset).connection_lost());
        assert!(io_err(io::ErrorKind::NotConnected).connection_lost());
        assert!(!io_err(io::ErrorKind::PermissionDenied).connection_lost());
        assert!(!ServerError::NotFound { id: "c".into() }.connection_lost());
    }

    fn server(dir: &Path) -> Server<UnixConnector> {
        let cfg = ServerConfig {
            run_dir: dir.join("run"),
            cgroup_root: dir.join("cg"),
            unpack: UnpackOptions::default(),
            run_once: false,
            reap: ReapMode::Tracked,
            agent_version: "t".into(),
            resolv_conf: None,
            network_interface: "lo".into(),
        };
        Server::new(
            cfg,
            UnixConnector {
                prefix: dir.join("v"),
            },
        )
    }

    fn call(s: &mut UnixStream, version: u32, body: Request) -> Envelope<Response> {
        agent::write_frame(
            s,
            &Envelope {
                version,
                seq: 9,
                body,
            },
        )
        .unwrap();
        agent::read_frame(s).unwrap()
    }

    #[test]
    fn serve_all_until_shutdown() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("ctl");
        let l = UnixListener::bind(&sock).unwrap();
        let srv = Arc::new(server(d.path()));
        let t = std::thread::spawn(move || srv.serve_all(move || l.accept().map(|(s, _)| s)));
        let mut a = UnixStream::connect(&sock).unwrap();
        let mut b = UnixStream::connect(&sock).unwrap();
        let r = call(
            &mut a,
            PROTOCOL_VERSION,
            Request::Hello {
                version: PROTOCOL_VERSION,
            },
        );
        assert_eq!(r.seq, 9);
        assert!(matches!(r.body, Response::Ready { healthy: true, .. }));
        let r = call(&mut b, 7, Request::Health);
        assert!(matches!(
            r.body,
            Response::Error {
                kind: ErrorKind::UnsupportedVersion,
                ..
            }
        ));
        // Malformed JSON gets an error and the connection stays usable.
        let junk = b"{not json";
        a.write_all(&u32::try_from(junk.len()).unwrap().to_be_bytes())
            .unwrap();
        a.write_all(junk).unwrap();
        let r: Envelope<Response> = agent::read_frame(&mut a).unwrap();
        assert!(matches!(
            r.body,
            Response::Error {
                kind: ErrorKind::InvalidRequest,
                ..
            }
        ));
        let r = call(
            &mut b,
            PROTOCOL_VERSION,
            Request::Wait {
                id: "x".into(),
                exec_id: None,
            },
        );
        assert!(matches!(
            r.body,
            Response::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ));
        assert_eq!(
            call(&mut a, PROTOCOL_VERSION, Request::Shutdown).body,
            Response::ShuttingDown
        );
        t.join().unwrap();
    }
}
