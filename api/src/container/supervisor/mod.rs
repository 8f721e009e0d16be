//! The supervisor: one process per running container, started by `husk
//! run`/`husk start` and detached from the CLI. It prepares the container's
//! disks and network, owns its `husk-vmm`, drives the guest agent over
//! vsock, writes the logs and the state, serves the control socket
//! (`control.rs`) and cleans everything up when the container ends.
//!
//! The CLI learns whether the start worked from one typed message
//! ([`SupervisorReady`], a JSON frame) the supervisor writes on its stdout
//! (a pipe to the CLI). Everything the supervisor does not report there
//! goes to `supervisor.log`.
//!
//! Lifetimes: husk-vmm gets `PR_SET_PDEATHSIG` so the VM dies with its
//! supervisor; the TAP is non-persistent (it goes with husk-vmm); the
//! supervisor's flock on `supervisor.lock`, the volume locks and the
//! address lease are released by the kernel when it dies. A supervisor
//! killed with SIGKILL therefore leaves a container that `ps -a` shows as
//! exited (137) and `rm` removes.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use husk_proto::agent::{
    read_frame, write_frame, CreateRequest, ErrorKind, ExecRequest, ExitStatus, ImageSource,
    Limits, MountSpec, ProcessSpec, Request as AgentRequest, Response, StdioPorts,
};
use nix::fcntl::{Flock, FlockArg};

use super::client::{AgentClient, ClientError};
use super::control::{Attach, Frame, Reply, Request, SupervisorReady};
use super::logs::{LogWriter, STDERR, STDOUT};
use super::spec::{vm_mem_mib, vm_vcpus, ContainerConfig, NetworkMode};
use super::state::{now_rfc3339, PortBinding, State, Status, Timings};
use super::{Containers, Handle};
use crate::image::store::Store;
use crate::net;
use crate::storage::rootfs::RootfsCache;
use crate::storage::volume::{VolumeLock, Volumes};
use husk_proto::agent::ConsoleSize;
use husk_proto::guest::{exec_stdio_ports, CONTAINER_ID, INIT_STDIO_PORTS};

mod boot;
mod builder;
mod checkpoint;

pub use checkpoint::FORK_CHECKPOINT;
mod guest_wait;
mod jail;
mod layers;
mod session;
mod stdio;
mod template;
mod vmm;

use boot::{boot, ms};

/// Why a start failed: the message and the CLI's exit status.
#[derive(Debug)]
pub struct StartError {
    /// One line.
    pub message: String,
    /// 125 (husk's fault or bad input), 126, 127 (the command).
    pub status: i32,
}

impl StartError {
    /// husk's own failure (status 125) with this message.
    pub fn new(message: impl Into<String>) -> Self {
        StartError {
            message: message.into(),
            status: 125,
        }
    }
}

/// Any error becomes a start failure whose message is its whole chain of
/// causes on one line.
impl<E: std::error::Error> From<E> for StartError {
    fn from(e: E) -> Self {
        StartError::new(crate::error::chain(&e))
    }
}

/// The supervisor's own failures (those of the steps it runs are their
/// modules' errors).
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A file or socket operation failed.
    #[error("{what}")]
    Io {
        /// What was attempted, on what.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Context for an I/O error: `what` failed.
fn io_ctx(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> SupervisorError {
    let what = what.to_string();
    move |source| SupervisorError::Io { what, source }
}

fn fail<T>(message: impl Into<String>) -> Result<T, StartError> {
    Err(StartError::new(message))
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
        message: crate::error::chain(&e),
        status,
    }
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
    /// A checkpoint was made and the container stops.
    Checkpointed,
}

/// Resources held while the container runs; dropping them releases them.
struct Held {
    _rootfs: crate::storage::rootfs::RootfsLease,
    _volume_locks: Vec<VolumeLock>,
    _lease: Option<net::Lease>,
    _publisher: Option<net::Publisher>,
}

/// The container's microVM as the supervisor knows it.
struct VmInfo {
    /// husk-vmm's vsock Unix socket.
    uds: PathBuf,
    /// husk-vmm's pid.
    pid: i32,
    /// husk-vmm's control socket (pause, resume).
    api_sock: PathBuf,
    /// When the supervisor started (for the timings).
    start_clock: Instant,
    /// husk killed husk-vmm on purpose (`stop` or `kill` of a guest that
    /// did not answer).
    killed: std::sync::atomic::AtomicBool,
    /// What a checkpoint needs, and whether this VM came from one.
    snapshot: checkpoint::SnapshotInfo,
}

/// The init's stdio as the supervisor relays it.
#[derive(Default)]
struct InitIo {
    /// Clients receiving the init's output.
    clients: Arc<Mutex<Vec<UnixStream>>>,
    /// The init's stdin stream, once the agent connected it.
    stdin: Arc<Mutex<Option<UnixStream>>>,
    /// The output relay threads, and whether each has its connection
    /// (a restored init's comes only when it next writes on that stream).
    relays: Mutex<Vec<(JoinHandle<()>, Arc<AtomicBool>)>>,
    /// Dropped once the starting client is attached: the output relays
    /// wait for it, so no output precedes the `ok` reply.
    go: Mutex<Vec<Sender<()>>>,
}

/// The live supervisor, shared by its threads.
struct Sup {
    handle: Handle,
    config: ContainerConfig,
    state: Mutex<State>,
    agent: Mutex<AgentClient>,
    vm: VmInfo,
    io: InitIo,
    started: Mutex<bool>,
    events: Sender<Event>,
    next_exec: AtomicU32,
    timings: Mutex<Timings>,
    /// A stop or kill ended it: its restart policy does not apply.
    by_user: AtomicBool,
}

impl Sup {
    fn new(
        handle: Handle,
        config: ContainerConfig,
        state: State,
        agent: AgentClient,
        vm: VmInfo,
        events: Sender<Event>,
        timings: Timings,
    ) -> Self {
        Sup {
            handle,
            config,
            state: Mutex::new(state),
            agent: Mutex::new(agent),
            vm,
            io: InitIo::default(),
            started: Mutex::new(false),
            events,
            next_exec: AtomicU32::new(0),
            timings: Mutex::new(timings),
            by_user: AtomicBool::new(false),
        }
    }
}

/// Runs the supervisor of container `id` (the hidden `husk
/// container-supervise` command). `ready` is the pipe to the CLI.
pub fn supervise(data_dir: &Path, id: &str, checkpoint: Option<&str>, mut ready: File) -> i32 {
    let t0 = Instant::now();
    let containers = match Containers::open(data_dir) {
        Ok(c) => c,
        Err(e) => {
            report_ready(&mut ready, Err(&StartError::from(e)));
            return 1;
        }
    };
    let h = containers.handle(id);
    // Detach: the CLI may exit at any time; the supervisor goes on.
    let _ = nix::unistd::setsid();
    let lock = match take_lock(&h) {
        Ok(l) => l,
        Err(e) => {
            report_ready(&mut ready, Err(&e));
            return 1;
        }
    };
    let (tx, rx) = mpsc::channel();
    match boot(data_dir, &h, t0, tx, checkpoint) {
        Ok((sup, held, vmm)) => {
            log::info!(
                "ready {:.0} ms after the supervisor started",
                ms(t0.elapsed())
            );
            report_ready(&mut ready, Ok(()));
            drop(ready);
            let restart_in = run(data_dir, &containers, sup, held, vmm, rx);
            drop(lock);
            if let Some(delay) = restart_in {
                restart_later(data_dir, &containers, &h, delay);
            }
            0
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
            report_ready(&mut ready, Err(&e));
            1
        }
    }
}

/// Tells the CLI that started this supervisor how the start went.
fn report_ready(ready: &mut File, result: Result<(), &StartError>) {
    let msg = match result {
        Ok(()) => SupervisorReady::Ready,
        Err(e) => SupervisorReady::Failed {
            message: e.message.clone(),
            status: e.status,
        },
    };
    let _ = write_frame(ready, &msg);
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
    crate::lockfile::lock_file(&path, FlockArg::LockExclusiveNonblock)
        .map_err(io_ctx(path.display()))?
        .ok_or_else(|| StartError {
            message: format!("container {} is already running", h.id),
            status: 125,
        })
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
                        None => lock(&sup.io.go).clear(),
                    }
                }
                Request::Attach(a) => {
                    if let Ok(cc) = c.try_clone() {
                        Sup::reply(&mut c, &Reply::Ok);
                        lock(&sup.io.clients).push(cc);
                        sup.client_input(c, None, a.stdin);
                    }
                }
                Request::Exec { spec, attach } => sup.exec(c, spec, attach),
                Request::Signal { signal } => match sup.signal_by_user(signal) {
                    Ok(()) => Sup::reply(&mut c, &Reply::Ok),
                    Err(e) => Sup::err_reply(&mut c, &e),
                },
                Request::Pause => match sup.pause(true) {
                    Ok(()) => Sup::reply(&mut c, &Reply::Ok),
                    Err(e) => Sup::err_reply(&mut c, &e),
                },
                Request::SetHosts { entries } => match sup.set_hosts(entries) {
                    Ok(()) => Sup::reply(&mut c, &Reply::Ok),
                    Err(e) => Sup::err_reply(&mut c, &e),
                },
                Request::Checkpoint {
                    name,
                    leave_running,
                } => match sup.checkpoint(&name, leave_running) {
                    Ok(()) => Sup::reply(&mut c, &Reply::Ok),
                    Err(e) => Sup::err_reply(&mut c, &e),
                },
                Request::Fork { into } => match sup.fork(&into) {
                    Ok(()) => Sup::reply(&mut c, &Reply::Ok),
                    Err(e) => Sup::err_reply(&mut c, &e),
                },
                Request::Unpause => match sup.pause(false) {
                    Ok(()) => Sup::reply(&mut c, &Reply::Ok),
                    Err(e) => Sup::err_reply(&mut c, &e),
                },
                Request::Stop { timeout_secs } => {
                    sup.by_user.store(true, Ordering::SeqCst);
                    sup.stop(Duration::from_secs(timeout_secs));
                    // The reply comes when the supervisor ends (the socket
                    // closes), so `husk stop` returns once it stopped.
                    let mut b = [0u8; 1];
                    let _ = c.read(&mut b);
                }
            }
        });
    }
}

fn vmm_died(why: &str) -> String {
    format!("the microVM ended unexpectedly: husk-vmm {why}")
}

/// Waits for the end, then cleans up and reports it. Returns when to
/// start the container again, if its restart policy says so.
fn run(
    data_dir: &Path,
    containers: &Containers,
    sup: Arc<Sup>,
    held: Held,
    vmm: vmm::VmmProcess,
    rx: Receiver<Event>,
) -> Option<Duration> {
    let (vtx, vrx) = mpsc::channel::<String>();
    let tx = sup.events.clone();
    // husk-vmm's end: the reaper thread owns the Child.
    let vmm::VmmProcess {
        mut child,
        events,
        reader,
        cgroup,
    } = vmm;
    let reaper = thread::spawn(move || {
        let st = child.wait();
        let limit = Duration::from_secs(2);
        let why = match (events.failure(limit), events.stop_reason(limit), st) {
            (Some(message), _, _) => format!("failed: {message}"),
            (None, Some(reason), Ok(s)) => format!("{s}: the guest stopped ({reason})"),
            (None, None, Ok(s)) => vmm::describe_exit(&s),
            (None, _, Err(e)) => e.to_string(),
        };
        let _ = vtx.send(why.clone());
        let _ = tx.send(Event::VmmDied(why));
    });
    // husk-vmm killed on purpose (stop or kill of a guest that did not
    // answer) ends the container as Docker's SIGKILL does: 137, no error.
    let vmm_end = |why: &str| (!sup.vm.killed.load(Ordering::SeqCst)).then(|| vmm_died(why));
    let (code, error, vm_ok) = match rx.recv() {
        Ok(Event::Exited(code)) => (code, None, true),
        // husk-vmm is being killed: the checkpoint holds the container.
        Ok(Event::Checkpointed) => (0, None, false),
        Ok(Event::StartFailed(code, why)) => {
            // As Docker: a process that could not start is not restarted.
            sup.by_user.store(true, Ordering::SeqCst);
            (code, Some(why), true)
        }
        Ok(Event::VmmDied(why)) => (137, vmm_end(&why), false),
        Ok(Event::WaitFailed(why)) => match rx.recv_timeout(Duration::from_secs(3)) {
            // The VM's end broke the connection: say that.
            Ok(Event::VmmDied(v)) => (137, vmm_end(&v), false),
            _ => (137, Some(format!("lost the guest agent: {why}")), false),
        },
        Err(_) => (137, Some("supervisor lost its threads".into()), false),
    };
    let ended = Instant::now();
    // Let the output drain (the streams close when the process is gone).
    lock(&sup.io.go).clear();
    let relays: Vec<_> = lock(&sup.io.relays).drain(..).collect();
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    for (r, connected) in relays {
        // A stream the init never wrote on has nothing to drain.
        if !connected.load(Ordering::SeqCst) {
            continue;
        }
        while !r.is_finished() && Instant::now() < drain_deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if r.is_finished() {
            let _ = r.join();
        }
    }
    let policy = sup.config.restart;
    let by_user = sup.by_user.load(Ordering::SeqCst) || sup.config.auto_remove;
    let mut restart_in = None;
    sup.write_state(|s| {
        s.mark_exited(code, error.clone());
        s.ports.clear();
        if policy.restarts_after(code, by_user, s.restart_count) {
            s.restarting = true;
            restart_in = Some(super::restart::delay(
                s.restart_count,
                sup.vm.start_clock.elapsed(),
            ));
        }
    });
    if let Some(me) = sup.member() {
        super::membership::left(data_dir, containers, &me);
    }
    log::info!("state written {:.0} ms after the end", ms(ended.elapsed()));
    end_vm(&sup, vm_ok, &vrx);
    let _ = reaper.join();
    let _ = reader.join();
    log::info!(
        "the microVM ended {:.0} ms after the end",
        ms(ended.elapsed())
    );
    drop(cgroup);
    // Ports, address lease, volume locks, the rootfs disk hold.
    drop(held);
    log::info!("cleaned up {:.0} ms after the end", ms(ended.elapsed()));
    let _ = fs::remove_dir_all(&sup.handle.run_dir);
    if sup.config.auto_remove {
        let _ = containers.remove(&sup.handle);
    }
    let clients: Vec<UnixStream> = lock(&sup.io.clients).drain(..).collect();
    for mut c in clients {
        let _ = Frame::Exit(code).write_to(&mut c);
        let _ = c.shutdown(Shutdown::Both);
    }
    restart_in
}

/// Ends the microVM once its container has ended: the agent powers the
/// guest off (its disks flushed), or husk-vmm is killed when the guest
/// cannot (`vm_ok` false) or does not within 10 s. A container removed at
/// its end (`--rm`) without volumes keeps nothing of its guest, so its
/// microVM is killed at once instead of waiting for the guest's power-off.
fn end_vm(sup: &Sup, vm_ok: bool, ended: &Receiver<String>) {
    let keeps_nothing = sup.config.auto_remove && sup.config.volumes.is_empty();
    if vm_ok && !keeps_nothing {
        let _ = lock(&sup.agent).call_within(AgentRequest::Shutdown, Some(Duration::from_secs(5)));
    }
    let grace = if keeps_nothing {
        Duration::ZERO
    } else {
        Duration::from_secs(10)
    };
    if ended.recv_timeout(grace).is_err() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(sup.vm.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = ended.recv_timeout(Duration::from_secs(5));
    }
}

/// Starts container `h` again after `delay`, by its restart policy, unless
/// it was removed, started or stopped in the meantime (which clears
/// `restarting`).
fn restart_later(data_dir: &Path, containers: &Containers, h: &Handle, delay: Duration) {
    thread::sleep(delay);
    let Ok(mut s) = h.state() else { return };
    if !s.restarting || s.status == Status::Running || h.supervisor_alive() {
        return;
    }
    s.restart_count = s.restart_count.saturating_add(1);
    if h.write_state(&s).is_err() {
        return;
    }
    log_line(
        h,
        &format!(
            "restarting by the restart policy (restart {})",
            s.restart_count
        ),
    );
    if let Err(e) = super::create::start(data_dir, containers, h, None, false) {
        log_line(h, &format!("restart failed: {}", crate::error::chain(&e)));
        if let Ok(mut s) = h.state() {
            s.restarting = false;
            let _ = h.write_state(&s);
        }
    }
}
