//! The supervisor: one process per running container, started by `husk
//! run`/`husk start` and detached from the CLI. It prepares the container's
//! disks and network, owns its `husk-vmm`, drives the guest agent over
//! vsock, writes the logs and the state, serves the control socket
//! (`control.rs`) and cleans everything up when the container ends.
//!
//! The CLI learns whether the start worked from one line the supervisor
//! writes on its stdout (a pipe to the CLI): `ready`, or `error STATUS
//! MESSAGE`. Everything the supervisor does not report there goes to
//! `supervisor.log`.
//!
//! Lifetimes: husk-vmm gets `PR_SET_PDEATHSIG` so the VM dies with its
//! supervisor; the TAP is non-persistent (it goes with husk-vmm); the
//! supervisor's flock on `supervisor.lock`, the volume locks and the
//! address lease are released by the kernel when it dies. A supervisor
//! killed with SIGKILL therefore leaves a container that `ps -a` shows as
//! exited (137) and `rm` removes.

use std::fs::{self, File};
use std::io::{self, BufRead, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use husk_agent::protocol::{
    read_frame, write_frame, CreateRequest, ErrorKind, ExecRequest, ExitStatus, ImageSource,
    Limits, MountSpec, ProcessSpec, Request as AgentRequest, Response, StdioPorts,
};
use nix::fcntl::{Flock, FlockArg};

use super::client::{AgentClient, ClientError};
use super::control::{Attach, ExecSpec, Frame, Reply, Request};
use super::logs::{LogWriter, STDERR, STDOUT};
use super::spec::{vm_mem_mib, vm_vcpus, ContainerConfig, NetworkMode};
use super::state::{now_rfc3339, PortBinding, State, Status, Timings};
use super::{Containers, Handle};
use crate::image::store::Store;
use crate::net;
use crate::rootfs::RootfsCache;
use crate::volume::{VolumeLock, Volumes};

/// Guest mount point of the image's rootfs disk.
const GUEST_IMAGE: &str = "/run/husk/image";
/// Where the agent keeps container `c`'s overlay upper, work and etc
/// files: the writable-layer disk is mounted there.
const GUEST_RW: &str = "/run/husk/containers/c";
/// Guest directory of volume mounts.
const GUEST_VOLUMES: &str = "/run/husk/volumes";
/// vsock ports of the init's stdio.
const INIT_STDIO: StdioPorts = StdioPorts {
    stdin: Some(5000),
    stdout: Some(5001),
    stderr: Some(5002),
};

/// Why a start failed: the message and the CLI's exit status.
#[derive(Debug)]
pub struct StartError {
    /// One line.
    pub message: String,
    /// 125 (husk's fault or bad input), 126, 127 (the command).
    pub status: i32,
}

impl<E: std::fmt::Display> From<E> for StartError {
    fn from(e: E) -> Self {
        StartError {
            message: format!("{e:#}"),
            status: 125,
        }
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T, StartError> {
    Err(StartError {
        message: message.into(),
        status: 125,
    })
}

fn agent_error(e: ClientError) -> StartError {
    let status = match &e {
        ClientError::Agent { kind, .. } => match kind {
            ErrorKind::CommandNotFound => 127,
            ErrorKind::CommandNotExecutable => 126,
            _ => 125,
        },
        _ => 125,
    };
    StartError {
        message: error_chain(&e),
        status,
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Exit status of a process as a shell reports it.
pub fn exit_code(s: ExitStatus) -> i32 {
    match s {
        ExitStatus::Code { code } => code,
        ExitStatus::Signal { signal } => 128 + signal,
    }
}

/// What ends the supervisor.
enum Event {
    /// The container's init exited.
    Exited(i32),
    /// husk-vmm ended on its own.
    VmmDied(String),
    /// The init could not be started (status, message).
    StartFailed(i32, String),
    /// Waiting for the init failed (the agent's connection broke).
    WaitFailed(String),
}

/// Resources held while the container runs; dropping them releases them.
struct Held {
    _rootfs: crate::rootfs::RootfsLease,
    _volume_locks: Vec<VolumeLock>,
    _lease: Option<net::Lease>,
    publisher: Option<net::Publisher>,
}

/// The live supervisor, shared by its threads.
struct Sup {
    handle: Handle,
    config: ContainerConfig,
    state: Mutex<State>,
    agent: Mutex<AgentClient>,
    uds: PathBuf,
    /// Clients receiving the init's output.
    clients: Arc<Mutex<Vec<UnixStream>>>,
    /// The init's stdin stream, once the agent connected it.
    stdin: Arc<Mutex<Option<UnixStream>>>,
    started: Mutex<bool>,
    events: Sender<Event>,
    relays: Mutex<Vec<JoinHandle<()>>>,
    /// Dropped once the starting client is attached: the output relays
    /// wait for it, so no output precedes the `ok` reply.
    go: Mutex<Vec<Sender<()>>>,
    next_exec: AtomicU32,
    vmm_pid: i32,
    start_clock: Instant,
    timings: Mutex<Timings>,
}

/// Runs the supervisor of container `id` (the hidden `husk
/// container-supervise` command). `ready` is the pipe to the CLI.
pub fn supervise(data_dir: &Path, id: &str, mut ready: File) -> i32 {
    let t0 = Instant::now();
    let containers = match Containers::open(data_dir) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(ready, "error 125 {e}");
            return 1;
        }
    };
    let h = containers.handle(id);
    // Detach: the CLI may exit at any time; the supervisor goes on.
    let _ = nix::unistd::setsid();
    let lock = match take_lock(&h) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(ready, "error 125 {}", e.message);
            return 1;
        }
    };
    let (tx, rx) = mpsc::channel();
    match boot(data_dir, &h, t0, tx) {
        Ok((sup, held, vmm)) => {
            let _ = writeln!(ready, "ready");
            drop(ready);
            let code = run(&containers, sup, held, vmm, rx);
            drop(lock);
            code
        }
        Err(e) => {
            let mut s = h.state().unwrap_or_default();
            s.status = if s.started_at.is_some() {
                Status::Exited
            } else {
                Status::Created
            };
            s.supervisor_pid = None;
            s.vmm_pid = None;
            s.ports.clear();
            let _ = h.write_state(&s);
            let _ = fs::remove_dir_all(&h.run_dir);
            log_line(&h, &format!("start failed: {}", e.message));
            let _ = writeln!(ready, "error {} {}", e.status, e.message);
            1
        }
    }
}

fn log_line(h: &Handle, msg: &str) {
    if let Ok(mut f) = File::options()
        .create(true)
        .append(true)
        .open(h.dir.join("supervisor.log"))
    {
        let _ = writeln!(f, "{} {msg}", now_rfc3339());
    }
}

fn take_lock(h: &Handle) -> Result<Flock<File>, StartError> {
    let path = h.dir.join("supervisor.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|_| StartError {
        message: format!("container {} is already running", h.id),
        status: 125,
    })
}

/// Prepares everything, boots the VM and creates the container in it.
fn boot(
    data_dir: &Path,
    h: &Handle,
    t0: Instant,
    events: Sender<Event>,
) -> Result<(Arc<Sup>, Held, Child), StartError> {
    let config = h.config()?;
    let mut timings = Timings::default();
    let store = Store::open(&data_dir.join("images"))?;
    let manifest = store.manifest(&config.image_digest)?;
    let t = Instant::now();
    // Held for the VM's life, so `husk gc` cannot remove the disk under it.
    let (rootfs, rootfs_lease) =
        RootfsCache::open(&data_dir.join("rootfs"))?.ensure_held(&store, &manifest)?;
    timings.rootfs_ms = ms(t.elapsed());
    timings.rootfs_built = rootfs.built;

    let assets = crate::assets::find()?;
    let volumes = Volumes::open(&data_dir.join("volumes"))?;
    let mut volume_locks = Vec::new();
    // The writable layer: kept with the container across starts.
    let t = Instant::now();
    let rw = h.dir.join("rw.ext4");
    super::scratch::ensure(&data_dir.join("rootfs"), &rw)?;
    timings.rootfs_ms += ms(t.elapsed());
    let mut disks = vec![
        format!("{},ro", rootfs.path.display()),
        rw.display().to_string(),
    ];
    let mut cmdline = format!(
        "console=ttyS0 reboot=k panic=-1 quiet husk.disk=vda:{GUEST_IMAGE}:ro husk.disk=vdb:{GUEST_RW}"
    );
    let mut mounts = Vec::new();
    for (i, v) in config.volumes.iter().enumerate() {
        let (vol, _) = volumes.ensure(&v.name)?;
        volume_locks.push(volumes.lock(&vol, &h.id)?);
        let dev = disk_name(i + 2);
        disks.push(vol.disk.display().to_string());
        cmdline.push_str(&format!(" husk.disk={dev}:{GUEST_VOLUMES}/{}", v.name));
        mounts.push(MountSpec {
            source: PathBuf::from(format!("{GUEST_VOLUMES}/{}", v.name)),
            destination: PathBuf::from(&v.destination),
            readonly: v.readonly,
        });
    }

    let (lease, publisher, ports) = match config.network {
        NetworkMode::None => (None, None, Vec::new()),
        NetworkMode::Default => {
            let lease = net::allocate(&data_dir.join("net"), &h.id)?;
            let specs = config
                .ports
                .iter()
                .map(|p| p.parse::<net::PortSpec>())
                .collect::<Result<Vec<_>, _>>()?;
            let specs = machine_bind_all(specs);
            let publisher = net::publish(&specs, lease.guest_ip)?;
            let ports = publisher
                .bound()
                .into_iter()
                .map(|p| PortBinding {
                    host_ip: p.host_ip.to_string(),
                    host_port: p.host_port,
                    container_port: p.container_port,
                    proto: p.proto.to_string(),
                })
                .collect();
            cmdline.push(' ');
            cmdline.push_str(&net::guest_cmdline(&lease, &net::dns_servers()));
            (Some(lease), Some(publisher), ports)
        }
    };

    fs::create_dir_all(&h.run_dir).map_err(|e| format!("{}: {e}", h.run_dir.display()))?;
    if let Ok(rd) = fs::read_dir(&h.run_dir) {
        for e in rd.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
    let uds = h.vsock_socket();
    let control = UnixListener::bind(h.control_socket())
        .map_err(|e| format!("{}: {e}", h.control_socket().display()))?;

    let t = Instant::now();
    let mut vmm = spawn_vmm(h, &assets, &config, &disks, &cmdline, lease.as_ref(), &uds)?;
    let vmm_pid = i32::try_from(vmm.id()).unwrap_or(0);
    let mut state = h.state().unwrap_or_default();
    state.status = Status::Created;
    state.supervisor_pid = Some(i32::try_from(std::process::id()).unwrap_or(0));
    state.vmm_pid = Some(vmm_pid);
    state.exit_code = None;
    state.error = None;
    state.finished_at = None;
    state.ports = ports;
    state.ip = lease.as_ref().map(|l| l.guest_ip.to_string());
    h.write_state(&state)?;
    timings.vmm_ms = ms(t0.elapsed());

    if let Some(l) = &lease {
        if let Err(e) = net::configure_host(l, Duration::from_secs(30)) {
            let _ = vmm.kill();
            return Err(e.into());
        }
    }
    let limit = Duration::from_secs(
        std::env::var("HUSK_BOOT_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120),
    );
    let agent = AgentClient::connect_retry(&uds, limit, || matches!(vmm.try_wait(), Ok(None)));
    let agent = match agent {
        Ok(a) => a,
        Err(e) => {
            let why = match vmm.try_wait() {
                Ok(Some(st)) => format!(
                    "the microVM exited ({st}) before its agent answered; see {}",
                    h.dir.join("console.log").display()
                ),
                _ => format!(
                    "{}; see {}",
                    error_chain(&e),
                    h.dir.join("console.log").display()
                ),
            };
            let _ = vmm.kill();
            let _ = vmm.wait();
            return fail(why);
        }
    };
    let booted = t.elapsed();
    timings.kernel_ms = boot_marker_ms(&h.dir.join("vmm.log")).unwrap_or(0.0);
    timings.agent_ms = (ms(booted) - timings.kernel_ms).max(0.0);

    let sup = Arc::new(Sup {
        handle: h.clone(),
        config: config.clone(),
        state: Mutex::new(state),
        agent: Mutex::new(agent),
        uds,
        clients: Arc::default(),
        stdin: Arc::default(),
        started: Mutex::new(false),
        events,
        relays: Mutex::default(),
        go: Mutex::default(),
        next_exec: AtomicU32::new(0),
        vmm_pid,
        start_clock: t0,
        timings: Mutex::new(timings),
    });
    let t = Instant::now();
    let create = create_request(&config, mounts);
    if let Err(e) = lock(&sup.agent).call(AgentRequest::Create(Box::new(create))) {
        let _ = vmm.kill();
        let _ = vmm.wait();
        return Err(agent_error(e));
    }
    lock(&sup.timings).create_ms = ms(t.elapsed());
    let s2 = sup.clone();
    thread::spawn(move || serve_control(s2, control));
    Ok((
        sup,
        Held {
            _rootfs: rootfs_lease,
            _volume_locks: volume_locks,
            _lease: lease,
            publisher,
        },
        vmm,
    ))
}

/// Inside the husk machine, published ports listen on every address: the
/// outer host's QEMU forwards to the machine's own address.
fn machine_bind_all(specs: Vec<net::PortSpec>) -> Vec<net::PortSpec> {
    if std::env::var_os("HUSK_IN_MACHINE").is_none() {
        return specs;
    }
    specs
        .into_iter()
        .map(|mut s| {
            s.host_ip = None;
            s
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `vda`, `vdb`, ... for disk index `i`.
fn disk_name(i: usize) -> String {
    let letter = char::from(b'a' + u8::try_from(i % 26).unwrap_or(0));
    format!("vd{letter}")
}

/// Reads husk-vmm's `guest boot marker: N ms` line.
fn boot_marker_ms(vmm_log: &Path) -> Option<f64> {
    let f = File::open(vmm_log).ok()?;
    io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            let rest = l.split("guest boot marker: ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
}

fn create_request(config: &ContainerConfig, mounts: Vec<MountSpec>) -> CreateRequest {
    let p = &config.process;
    let stdio = StdioPorts {
        stdin: p.stdin.then_some(INIT_STDIO.stdin).flatten(),
        stdout: INIT_STDIO.stdout,
        stderr: (!p.tty).then_some(INIT_STDIO.stderr).flatten(),
    };
    CreateRequest {
        id: "c".into(),
        image: ImageSource::Unpacked {
            path: GUEST_IMAGE.into(),
        },
        process: ProcessSpec {
            entrypoint: p.entrypoint.clone(),
            cmd: p.cmd.clone(),
            env: p.env.clone(),
            workdir: p.workdir.clone(),
            user: p.user.clone(),
            tty: p.tty,
            stdio,
            console_size: p
                .console_size
                .map(|(rows, cols)| husk_agent::protocol::ConsoleSize { rows, cols }),
        },
        hostname: config.hostname.clone(),
        mounts,
        limits: Limits {
            memory_bytes: config.memory_bytes,
            cpu_millis: config.cpu_millis,
            pids: None,
        },
        new_network: config.network == NetworkMode::None,
    }
}

fn spawn_vmm(
    h: &Handle,
    assets: &crate::assets::Assets,
    config: &ContainerConfig,
    disks: &[String],
    cmdline: &str,
    lease: Option<&net::Lease>,
    uds: &Path,
) -> Result<Child, StartError> {
    let log_path = h.dir.join("vmm.log");
    let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut cmd = Command::new(&assets.vmm);
    cmd.arg("--kernel")
        .arg(&assets.kernel)
        .arg("--initrd")
        .arg(&assets.initrd)
        .arg("--vcpus")
        .arg(vm_vcpus(config.cpu_millis).to_string())
        .arg("--mem-mib")
        .arg(vm_mem_mib(config.memory_bytes).to_string())
        .arg("--cmdline")
        .arg(cmdline)
        .arg("--console")
        .arg(format!("file:{}", h.dir.join("console.log").display()))
        .arg("--vsock")
        .arg(format!("3,{}", uds.display()));
    for d in disks {
        cmd.arg("--disk").arg(d);
    }
    if let Some(l) = lease {
        let mac: Vec<String> = l.mac.iter().map(|b| format!("{b:02x}")).collect();
        cmd.arg("--net")
            .arg(format!("tap={},mac={}", l.tap_name, mac.join(":")));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .env("RUST_LOG", "info");
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent; it ties husk-vmm's life to the supervisor's.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("cannot start {}: {e}", assets.vmm.display()).into())
}

/// Listens on `<uds>_<port>` for the agent's stdio connection.
fn stdio_listener(uds: &Path, port: u32) -> io::Result<UnixListener> {
    let p = PathBuf::from(format!("{}_{port}", uds.display()));
    let _ = fs::remove_file(&p);
    UnixListener::bind(p)
}

/// Accepts one agent stdio connection (with a deadline) and reads its hello.
fn accept_stdio(l: &UnixListener, limit: Duration) -> io::Result<UnixStream> {
    l.set_nonblocking(true)?;
    let start = Instant::now();
    loop {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)?;
                let _hello: husk_agent::protocol::StreamHello =
                    read_frame(&mut s).map_err(io::Error::other)?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && start.elapsed() < limit => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Copies an output stream to the log and the attached clients.
fn relay_output(
    mut from: UnixStream,
    stream: u8,
    log: Option<Arc<Mutex<LogWriter>>>,
    clients: Arc<Mutex<Vec<UnixStream>>>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = &buf[..n];
        if let Some(log) = &log {
            let _ = lock(log).write(stream, data);
        }
        let frame = if stream == STDERR {
            Frame::Stderr(data.to_vec())
        } else {
            Frame::Stdout(data.to_vec())
        };
        lock(&clients).retain_mut(|c| frame.write_to(c).is_ok());
    }
}

impl Sup {
    fn reply(s: &mut UnixStream, r: &Reply) {
        let _ = write_frame(s, r);
    }

    fn err_reply(s: &mut UnixStream, e: &StartError) {
        Self::reply(
            s,
            &Reply::Error {
                message: e.message.clone(),
                status: e.status,
            },
        );
    }

    fn write_state(&self, f: impl FnOnce(&mut State)) {
        let mut st = lock(&self.state);
        f(&mut st);
        if let Err(e) = self.handle.write_state(&st) {
            log_line(&self.handle, &format!("writing state: {e}"));
        }
    }

    /// Starts the init: stdio listeners first, then the agent's Start.
    fn start(self: &Arc<Self>, console_size: Option<(u16, u16)>) -> Result<(), StartError> {
        let mut started = lock(&self.started);
        if *started {
            return fail("container already started");
        }
        let p = &self.config.process;
        let log = Arc::new(Mutex::new(
            LogWriter::open(&self.handle.log_path())
                .map_err(|e| format!("{}: {e}", self.handle.log_path().display()))?,
        ));
        let mut outs = vec![(INIT_STDIO.stdout.unwrap_or(0), STDOUT)];
        if !p.tty {
            outs.push((INIT_STDIO.stderr.unwrap_or(0), STDERR));
        }
        let listeners = outs
            .iter()
            .map(|(port, stream)| Ok((stdio_listener(&self.uds, *port)?, *stream)))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| format!("stdio socket: {e}"))?;
        let stdin_l = if p.stdin {
            Some(
                stdio_listener(&self.uds, INIT_STDIO.stdin.unwrap_or(0))
                    .map_err(|e| format!("stdio socket: {e}"))?,
            )
        } else {
            None
        };
        // Accept the agent's connections while Start runs.
        let mut relays = Vec::new();
        for (l, stream) in listeners {
            let (log, clients) = (log.clone(), self.clients.clone());
            let (go_tx, go_rx) = mpsc::channel::<()>();
            lock(&self.go).push(go_tx);
            relays.push(thread::spawn(move || {
                if let Ok(s) = accept_stdio(&l, Duration::from_secs(30)) {
                    let _ = go_rx.recv();
                    relay_output(s, stream, Some(log), clients);
                }
            }));
        }
        let stdin_slot = self.stdin.clone();
        let stdin_t = stdin_l.map(|l| {
            thread::spawn(move || {
                if let Ok(s) = accept_stdio(&l, Duration::from_secs(30)) {
                    *lock(&stdin_slot) = Some(s);
                }
            })
        });
        let t = Instant::now();
        let pid = match lock(&self.agent).call(AgentRequest::Start { id: "c".into() }) {
            Ok(Response::Started { pid }) => pid,
            Ok(other) => return fail(format!("unexpected answer to start: {other:?}")),
            Err(e) => return Err(agent_error(e)),
        };
        // The pty got the size known at creation; a later `start -a` from
        // another terminal brings its own.
        if let Some((rows, cols)) = console_size.filter(|s| Some(*s) != p.console_size) {
            let _ = lock(&self.agent).call(AgentRequest::Resize {
                id: "c".into(),
                exec_id: None,
                rows,
                cols,
            });
        }
        if let Some(t) = stdin_t {
            let _ = t.join();
        }
        *started = true;
        *lock(&self.relays) = relays;
        {
            let mut tm = lock(&self.timings);
            tm.exec_ms = ms(t.elapsed());
            tm.total_ms = ms(self.start_clock.elapsed());
        }
        let timings = lock(&self.timings).clone();
        self.write_state(|s| {
            s.status = Status::Running;
            s.started_at = Some(now_rfc3339());
            s.guest_pid = Some(pid);
            s.timings = Some(timings);
        });
        self.spawn_waiter(None, {
            let tx = self.events.clone();
            move |r| {
                let _ = tx.send(match r {
                    Ok(code) => Event::Exited(code),
                    Err(why) => Event::WaitFailed(why),
                });
            }
        })?;
        Ok(())
    }

    /// Registers a client for the init's output and lets output flow.
    fn attach_started(&self, c: &UnixStream) {
        if let Ok(cc) = c.try_clone() {
            lock(&self.clients).push(cc);
        }
        lock(&self.go).clear();
    }

    /// A thread that waits for a process on its own agent connection.
    fn spawn_waiter(
        &self,
        exec_id: Option<String>,
        done: impl FnOnce(Result<i32, String>) + Send + 'static,
    ) -> Result<(), StartError> {
        let mut c = AgentClient::connect(&self.uds).map_err(agent_error)?;
        thread::spawn(move || {
            let r = match c.call(AgentRequest::Wait {
                id: "c".into(),
                exec_id,
            }) {
                Ok(Response::Exited { status }) => Ok(exit_code(status)),
                Ok(other) => Err(format!("unexpected answer to wait: {other:?}")),
                Err(e) => Err(error_chain(&e)),
            };
            done(r);
        });
        Ok(())
    }

    /// Reads a client's frames: stdin, EOF, resize, signals.
    fn client_input(&self, mut c: UnixStream, exec: Option<(String, UnixStream)>, stdin: bool) {
        let exec_id = exec.as_ref().map(|(id, _)| id.clone());
        let mut exec_stdin = exec.map(|(_, s)| s);
        while let Ok(Some(f)) = Frame::read_from(&mut c) {
            match f {
                Frame::Stdin(d) if stdin => {
                    if let Some(s) = exec_stdin.as_mut() {
                        let _ = s.write_all(&d);
                    } else if let Some(s) = lock(&self.stdin).as_mut() {
                        let _ = s.write_all(&d);
                    }
                }
                Frame::StdinEof if stdin => {
                    if let Some(s) = exec_stdin.as_ref() {
                        let _ = s.shutdown(Shutdown::Write);
                    } else if let Some(s) = lock(&self.stdin).take() {
                        let _ = s.shutdown(Shutdown::Write);
                    }
                }
                Frame::Resize(rows, cols) => {
                    let _ = lock(&self.agent).call(AgentRequest::Resize {
                        id: "c".into(),
                        exec_id: exec_id.clone(),
                        rows,
                        cols,
                    });
                }
                Frame::Signal(signal) => {
                    let _ = lock(&self.agent).call(AgentRequest::Signal {
                        id: "c".into(),
                        exec_id: exec_id.clone(),
                        signal,
                    });
                }
                _ => {}
            }
        }
    }

    fn exec(self: &Arc<Self>, mut c: UnixStream, spec: ExecSpec, attach: Attach) {
        if lock(&self.state).status != Status::Running {
            Self::err_reply(
                &mut c,
                &StartError {
                    message: format!("container {} is not running", self.handle.id),
                    status: 1,
                },
            );
            return;
        }
        let n = self.next_exec.fetch_add(1, Ordering::SeqCst);
        let exec_id = format!("e{n}");
        let base = 5100 + 3 * n;
        let ports = StdioPorts {
            stdin: attach.stdin.then_some(base),
            stdout: Some(base + 1),
            stderr: (!spec.tty).then_some(base + 2),
        };
        let r = (|| -> Result<(), StartError> {
            let mut listeners = Vec::new();
            for (port, stream) in [(ports.stdout, STDOUT), (ports.stderr, STDERR)] {
                if let Some(port) = port {
                    listeners.push((
                        stdio_listener(&self.uds, port).map_err(|e| format!("stdio: {e}"))?,
                        stream,
                    ));
                }
            }
            let stdin_l = match ports.stdin {
                Some(p) => Some(stdio_listener(&self.uds, p).map_err(|e| format!("stdio: {e}"))?),
                None => None,
            };
            let client = Arc::new(Mutex::new(vec![c
                .try_clone()
                .map_err(|e| format!("client socket: {e}"))?]));
            let mut relays = Vec::new();
            let mut go = Vec::new();
            for (l, stream) in listeners {
                let client = client.clone();
                let (go_tx, go_rx) = mpsc::channel::<()>();
                go.push(go_tx);
                relays.push(thread::spawn(move || {
                    if let Ok(s) = accept_stdio(&l, Duration::from_secs(30)) {
                        let _ = go_rx.recv();
                        relay_output(s, stream, None, client);
                    }
                }));
            }
            let stdin_t =
                stdin_l.map(|l| thread::spawn(move || accept_stdio(&l, Duration::from_secs(30))));
            let p = &self.config.process;
            let mut env = p.env.clone();
            env.extend(spec.env.iter().cloned());
            let process = ProcessSpec {
                cmd: spec.argv.clone(),
                env,
                workdir: if spec.workdir.is_empty() {
                    p.workdir.clone()
                } else {
                    spec.workdir.clone()
                },
                user: if spec.user.is_empty() {
                    p.user.clone()
                } else {
                    spec.user.clone()
                },
                tty: spec.tty,
                stdio: ports.clone(),
                console_size: attach
                    .console_size
                    .map(|(rows, cols)| husk_agent::protocol::ConsoleSize { rows, cols }),
                ..ProcessSpec::default()
            };
            lock(&self.agent)
                .call(AgentRequest::Exec(ExecRequest {
                    id: "c".into(),
                    exec_id: exec_id.clone(),
                    process,
                }))
                .map_err(agent_error)?;
            let stdin = stdin_t.and_then(|t| t.join().ok()).and_then(Result::ok);
            let (tx, rx) = mpsc::channel();
            self.spawn_waiter(Some(exec_id.clone()), move |r| {
                let _ = tx.send(r.unwrap_or(137));
            })?;
            Self::reply(&mut c, &Reply::Ok);
            drop(go);
            let input = c.try_clone().map_err(|e| format!("client socket: {e}"))?;
            let me = self.clone();
            let id2 = exec_id.clone();
            thread::spawn(move || me.client_input(input, stdin.map(|s| (id2, s)), attach.stdin));
            let code = rx.recv().unwrap_or(137);
            for r in relays {
                let _ = r.join();
            }
            let _ = Frame::Exit(code).write_to(&mut c);
            Ok(())
        })();
        if let Err(e) = r {
            Self::err_reply(&mut c, &e);
        }
    }

    fn signal(&self, signal: i32) -> Result<(), StartError> {
        if !*lock(&self.started) {
            return fail(format!("container {} is not running", self.handle.id));
        }
        lock(&self.agent)
            .call(AgentRequest::Signal {
                id: "c".into(),
                exec_id: None,
                signal,
            })
            .map_err(agent_error)?;
        Ok(())
    }
}

/// Serves `sup.sock`: one thread per connection.
fn serve_control(sup: Arc<Sup>, listener: UnixListener) {
    for c in listener.incoming() {
        let Ok(mut c) = c else { continue };
        let sup = sup.clone();
        thread::spawn(move || {
            let req: Request = match read_frame(&mut c) {
                Ok(r) => r,
                Err(_) => return,
            };
            match req {
                Request::Start { attach } => {
                    let size = attach.as_ref().and_then(|a| a.console_size);
                    match sup.start(size) {
                        Ok(()) => Sup::reply(&mut c, &Reply::Ok),
                        Err(e) => {
                            Sup::err_reply(&mut c, &e);
                            let _ = sup.events.send(Event::StartFailed(e.status, e.message));
                            return;
                        }
                    }
                    match attach {
                        // Output flows once this client is registered.
                        Some(a) => {
                            sup.attach_started(&c);
                            sup.client_input(c, None, a.stdin);
                        }
                        None => lock(&sup.go).clear(),
                    }
                }
                Request::Attach(a) => {
                    if let Ok(cc) = c.try_clone() {
                        Sup::reply(&mut c, &Reply::Ok);
                        lock(&sup.clients).push(cc);
                        sup.client_input(c, None, a.stdin);
                    }
                }
                Request::Exec { spec, attach } => sup.exec(c, spec, attach),
                Request::Signal { signal } => match sup.signal(signal) {
                    Ok(()) => Sup::reply(&mut c, &Reply::Ok),
                    Err(e) => Sup::err_reply(&mut c, &e),
                },
                Request::Stop { timeout_secs } => {
                    let _ = sup.signal(libc::SIGTERM);
                    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
                    while lock(&sup.state).status == Status::Running && Instant::now() < deadline {
                        thread::sleep(Duration::from_millis(50));
                    }
                    if lock(&sup.state).status == Status::Running {
                        let _ = sup.signal(libc::SIGKILL);
                    }
                    // The reply comes when the supervisor ends (the socket
                    // closes), so `husk stop` returns once it stopped.
                    let mut b = [0u8; 1];
                    let _ = c.read(&mut b);
                }
            }
        });
    }
}

/// Waits for the end, then cleans up and reports it.
fn run(
    containers: &Containers,
    sup: Arc<Sup>,
    held: Held,
    mut vmm: Child,
    rx: Receiver<Event>,
) -> i32 {
    let vmm_pid = sup.vmm_pid;
    let (vtx, vrx) = mpsc::channel::<String>();
    let tx = sup.events.clone();
    // husk-vmm's end: the reaper thread owns the Child.
    let reaper = thread::spawn(move || {
        let st = vmm.wait();
        let why = match st {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        let _ = vtx.send(why.clone());
        let _ = tx.send(Event::VmmDied(why));
    });
    let (code, error, vm_ok) = match rx.recv() {
        Ok(Event::Exited(code)) => (code, None, true),
        Ok(Event::StartFailed(code, why)) => (code, Some(why), true),
        Ok(Event::VmmDied(why)) => (
            137,
            Some(format!("the microVM ended unexpectedly: husk-vmm {why}")),
            false,
        ),
        Ok(Event::WaitFailed(why)) => match rx.recv_timeout(Duration::from_secs(3)) {
            // The VM's end broke the connection: say that.
            Ok(Event::VmmDied(v)) => (
                137,
                Some(format!("the microVM ended unexpectedly: husk-vmm {v}")),
                false,
            ),
            _ => (137, Some(format!("lost the guest agent: {why}")), false),
        },
        Err(_) => (137, Some("supervisor lost its threads".into()), false),
    };
    // Let the output drain (the streams close when the process is gone).
    lock(&sup.go).clear();
    let relays: Vec<_> = lock(&sup.relays).drain(..).collect();
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    for r in relays {
        while !r.is_finished() && Instant::now() < drain_deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if r.is_finished() {
            let _ = r.join();
        }
    }
    sup.write_state(|s| {
        s.mark_exited(code, error.clone());
        s.ports.clear();
    });
    // Power the VM off, or kill it.
    if vm_ok {
        let _ = lock(&sup.agent).call(AgentRequest::Shutdown);
    }
    if vrx.recv_timeout(Duration::from_secs(10)).is_err() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(vmm_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = vrx.recv_timeout(Duration::from_secs(5));
    }
    let _ = reaper.join();
    if let Some(mut p) = held.publisher {
        p.stop();
    }
    drop(held._lease);
    drop(held._volume_locks);
    drop(held._rootfs);
    let _ = fs::remove_dir_all(&sup.handle.run_dir);
    if sup.config.auto_remove {
        let _ = containers.remove(&sup.handle);
    }
    let clients: Vec<UnixStream> = lock(&sup.clients).drain(..).collect();
    for mut c in clients {
        let _ = Frame::Exit(code).write_to(&mut c);
        let _ = c.shutdown(Shutdown::Both);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names() {
        assert_eq!(disk_name(0), "vda");
        assert_eq!(disk_name(2), "vdc");
    }

    #[test]
    fn boot_marker_parse() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vmm.log");
        fs::write(
            &p,
            "[INFO] something\n[2026 INFO husk_devices] guest boot marker: 1520 ms since husk-vmm start\n",
        )
        .unwrap();
        assert_eq!(boot_marker_ms(&p), Some(1520.0));
    }

    #[test]
    fn create_request_shape() {
        let mut c = ContainerConfig::default();
        c.process.cmd = vec!["sh".into()];
        c.process.tty = true;
        c.network = NetworkMode::None;
        let r = create_request(&c, vec![]);
        assert!(r.new_network);
        assert_eq!(r.process.stdio.stderr, None);
        assert_eq!(r.process.stdio.stdin, None);
        r.validate().unwrap();
    }
}
