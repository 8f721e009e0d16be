//! A built microVM and its run loop: one thread per vCPU, and the VMM's
//! event loop (event-manager) on the calling thread, which waits for the
//! guest or a signal to end the VM.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{Kvm, VmFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::builder::{LegacyDevices, VirtioDevices};
use crate::seccomp::{self, Filters, SeccompError, ThreadKind};
use crate::snapshot::api::{ApiServer, Command, Pending};
use crate::snapshot::{self, MicrovmState, SnapshotError};
use crate::vcpu::{install_kick_handler, Vcpu, VcpuChannels, VcpuHandle, VcpuStop};

/// A device's event handler in the VMM's event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// How a VM ended. `main` maps each to a documented exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (husk debug port, or a KVM power-off event).
    PowerOff,
    /// The guest reset itself (i8042 reset line, `reboot`).
    Reset,
    /// A vCPU triple-faulted (where it stopped).
    TripleFault(String),
    /// KVM could not run a vCPU.
    Failure(String),
    /// husk-vmm was told to stop by a signal.
    Signal(i32),
}

/// Run-time errors.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Signal set-up failed.
    #[error("cannot set up signal handling")]
    Signals(#[source] nix::Error),
    /// The event loop failed.
    #[error("event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    /// The vCPU kick signal could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
    /// The VMM thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A vCPU thread could not be started.
    #[error("cannot start vCPU thread {index}")]
    Thread {
        /// vCPU index.
        index: u8,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The eventfds through which devices and vCPUs end the VM.
#[derive(Debug)]
pub struct ExitEvents {
    /// i8042 reset line.
    pub reset: EventFd,
    /// Debug-port power-off request.
    pub power_off: EventFd,
    /// A vCPU thread stopped (reason on the channel).
    pub vcpu: EventFd,
}

/// A built microVM.
pub struct Vmm {
    // Field order matters for drop: vCPUs before the VM, the VM before memory.
    vcpus: Vec<Vcpu>,
    handles: Vec<VcpuHandle>,
    vm: VmFd,
    kvm: Kvm,
    mem: GuestMemoryMmap,
    exits: ExitEvents,
    legacy: LegacyDevices,
    devices: VirtioDevices,
    api: Option<ApiServer>,
    paused: bool,
    filters: Filters,
    forbidden_test: bool,
    /// The file guest memory is mapped from (a restored VM): snapshots
    /// for a fork are written as a diff against it.
    mapped_from: Option<snapshot::layers::MappedFrom>,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.vcpus.len())
            .field("devices", &self.devices.subscribers.len())
            .finish_non_exhaustive()
    }
}

const EV_RESET: u32 = 1;
const EV_POWER_OFF: u32 = 2;
const EV_VCPU: u32 = 3;
const EV_SIGNAL: u32 = 4;
#[allow(clippy::cast_sign_loss)]
const SIGUSR2: u32 = libc::SIGUSR2 as u32;

/// Watches everything that can end the VM.
struct ExitWatcher {
    exits: ExitEvents,
    signals: SignalFd,
    vcpu_stops: mpsc::Receiver<VcpuStop>,
    result: Option<VmExit>,
    forbidden_test: bool,
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let regs = [
            (self.exits.reset.as_raw_fd(), EV_RESET),
            (self.exits.power_off.as_raw_fd(), EV_POWER_OFF),
            (self.exits.vcpu.as_raw_fd(), EV_VCPU),
            (self.signals.as_raw_fd(), EV_SIGNAL),
        ];
        for (fd, data) in regs {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                log::error!("cannot watch exit event {data}: {e:?}");
                self.result = Some(VmExit::Failure("event loop set-up failed".into()));
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let exit = match events.data() {
            EV_RESET => {
                let _ = self.exits.reset.read();
                // husk-agent requests power-off, then resets as a fallback for
                // other VMMs. The power-off request is signalled before the
                // guest can go on to reset, so it is always pending here.
                if self.exits.power_off.read().is_ok() {
                    VmExit::PowerOff
                } else {
                    VmExit::Reset
                }
            }
            EV_POWER_OFF => {
                let _ = self.exits.power_off.read();
                VmExit::PowerOff
            }
            EV_VCPU => {
                let _ = self.exits.vcpu.read();
                match self.vcpu_stops.try_recv() {
                    Ok(VcpuStop::TripleFault(at)) => VmExit::TripleFault(at),
                    Ok(VcpuStop::Reset) => VmExit::Reset,
                    Ok(VcpuStop::PowerOff) => VmExit::PowerOff,
                    Ok(VcpuStop::Failure(why)) => VmExit::Failure(why),
                    Err(_) => return,
                }
            }
            EV_SIGNAL => match self.signals.read_signal() {
                Ok(Some(info)) if self.forbidden_test && info.ssi_signo == SIGUSR2 => {
                    log::warn!("test: making a system call outside the seccomp filter");
                    seccomp::forbidden_syscall();
                    return;
                }
                Ok(Some(info)) => VmExit::Signal(i32::try_from(info.ssi_signo).unwrap_or(0)),
                _ => return,
            },
            _ => return,
        };
        // The first reason wins; later ones are consequences.
        self.result.get_or_insert(exit);
    }
}

impl Vmm {
    /// Assembles a built VM (see `builder::build_microvm`).
    pub fn new(
        kvm: Kvm,
        vm: VmFd,
        mem: GuestMemoryMmap,
        vcpus: Vec<Vcpu>,
        exits: ExitEvents,
        legacy: LegacyDevices,
        devices: VirtioDevices,
    ) -> Self {
        Vmm {
            vcpus,
            handles: Vec::new(),
            vm,
            kvm,
            mem,
            exits,
            legacy,
            devices,
            api: None,
            paused: false,
            filters: Filters::disabled(),
            forbidden_test: false,
            mapped_from: None,
        }
    }

    /// Guest memory is mapped from this file (a restored VM).
    pub fn set_mapped_from(&mut self, from: snapshot::layers::MappedFrom) {
        self.mapped_from = Some(from);
    }

    /// Serves the control socket (pause, resume, snapshot) while running.
    pub fn set_api(&mut self, api: ApiServer) {
        self.api = Some(api);
    }

    /// Runs every thread under its seccomp filter (installed before the
    /// guest's first instruction); without this call none is installed.
    pub fn set_seccomp(&mut self, filters: Filters) {
        self.filters = filters;
    }

    /// For the jail's test only: SIGUSR2 makes the event loop make a
    /// system call outside its filter.
    pub fn set_forbidden_syscall_test(&mut self, on: bool) {
        self.forbidden_test = on;
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The KVM VM.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// Time from VMM start to the guest's boot marker, if written.
    pub fn boot_time(&self) -> Option<std::time::Duration> {
        self.legacy
            .debug_port
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .boot_time()
    }

    /// Calls `hook` (once) when the guest first writes the boot marker.
    pub fn on_boot_marker(&self, hook: husk_devices::legacy::BootMarkerHook) {
        self.legacy
            .debug_port
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_boot_marker_hook(hook);
    }

    /// Runs the VM until the guest ends it or SIGINT/SIGTERM arrives.
    ///
    /// vCPU threads are left running when this returns: the caller exits
    /// the process, which is how a one-VM-per-process VMM ends a VM.
    pub fn run(&mut self) -> Result<VmExit, RunError> {
        // Block the stop signals before any thread starts, so every thread
        // inherits the mask and the signalfd alone receives them.
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGTERM);
        if self.forbidden_test {
            mask.add(Signal::SIGUSR2);
        }
        mask.thread_block().map_err(RunError::Signals)?;
        let signals =
            SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK).map_err(RunError::Signals)?;

        install_kick_handler().map_err(RunError::KickHandler)?;
        let (tx, rx) = mpsc::channel();
        // The vCPU threads install their filter, then wait here until the
        // VMM thread has installed its own: no guest instruction runs
        // before every thread is filtered.
        let go = Arc::new(Barrier::new(self.vcpus.len() + 1));
        for vcpu in std::mem::take(&mut self.vcpus) {
            let handle = self.spawn_vcpu(vcpu, tx.clone(), go.clone())?;
            self.handles.push(handle);
        }

        let watcher = Arc::new(Mutex::new(ExitWatcher {
            exits: ExitEvents {
                reset: clone_evt(&self.exits.reset)?,
                power_off: clone_evt(&self.exits.power_off)?,
                vcpu: clone_evt(&self.exits.vcpu)?,
            },
            signals,
            vcpu_stops: rx,
            result: None,
            forbidden_test: self.forbidden_test,
        }));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().map_err(RunError::EventLoop)?;
        em.add_subscriber(watcher.clone());
        for s in &self.devices.subscribers {
            em.add_subscriber(s.clone());
        }
        let pending = self.api.take().map(|api| {
            let pending = api.pending();
            em.add_subscriber(Arc::new(Mutex::new(api)));
            pending
        });
        // On failure the vCPUs stay parked until the process exits.
        seccomp::install(ThreadKind::Vmm, self.filters.vmm.as_ref())?;
        go.wait();
        let exit = loop {
            if let Some(exit) = watcher
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .result
                .take()
            {
                break exit;
            }
            em.run().map_err(RunError::EventLoop)?;
            if let Some(p) = &pending {
                self.serve(p);
            }
        };
        if let Err(e) = self
            .legacy
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush()
        {
            log::warn!("cannot flush the console: {e}");
        }
        Ok(exit)
    }
}

/// A vCPU thread's stack. Rust's default, 2 MiB, is the size of a
/// transparent huge page: with THP `always` (Debian's kernels) the kernel
/// backs the whole stack with one on its first touch, 2 MiB of memory per
/// vCPU for the few KiB a vCPU thread uses. Half a MiB cannot hold one.
const VCPU_STACK: usize = 512 << 10;

impl Vmm {
    fn spawn_vcpu(
        &self,
        mut vcpu: Vcpu,
        stops: mpsc::Sender<VcpuStop>,
        go: Arc<Barrier>,
    ) -> Result<VcpuHandle, RunError> {
        let index = vcpu.index();
        let thread_err = |source| RunError::Thread { index, source };
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (reply_tx, reply_rx) = mpsc::channel();
        let ch = VcpuChannels {
            commands: cmd_rx,
            replies: reply_tx,
            stops,
            stop_evt: self.exits.vcpu.try_clone().map_err(thread_err)?,
        };
        let filter = self.filters.vcpu.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .stack_size(VCPU_STACK)
            .spawn(move || {
                let filtered = seccomp::install(ThreadKind::Vcpu, filter.as_ref());
                go.wait();
                if let Err(e) = filtered {
                    // Never run the guest unfiltered.
                    let _ = ch
                        .stops
                        .send(VcpuStop::Failure(husk_proto::error::chain(&e)));
                    let _ = ch.stop_evt.write(1);
                    std::mem::forget(vcpu);
                    return;
                }
                vcpu.run_controlled(&ch);
                // Keep the vCPU fd open: closing it while the VM runs
                // would tear down state other vCPUs may still use.
                std::mem::forget(vcpu);
            })
            .map_err(thread_err)?;
        Ok(VcpuHandle::new(index, cmd_tx, reply_rx, thread))
    }

    /// Runs the control requests the event loop accepted.
    fn serve(&mut self, pending: &Pending) {
        let requests = std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
        for r in requests {
            let result = match &r.command {
                Command::Pause => self.pause().map(|()| String::new()),
                Command::Resume => self.resume().map(|()| String::new()),
                Command::Snapshot(dir) => self.snapshot(dir, false).map(|()| String::new()),
                Command::SnapshotDiff(dir) => self.snapshot(dir, true).map(|()| String::new()),
                Command::Queues => Ok(self.devices.describe()),
            }
            .map_err(|e| chain(&e));
            match &result {
                Ok(_) => log::info!("control: {:?} done", r.command),
                Err(e) => log::error!("control: {:?} failed: {e}", r.command),
            }
            r.reply(result);
        }
    }

    /// Pauses every vCPU (a no-op when paused).
    pub fn pause(&mut self) -> Result<(), SnapshotError> {
        if !self.paused {
            for h in &self.handles {
                h.pause()?;
            }
            self.paused = true;
        }
        Ok(())
    }

    /// Resumes every vCPU (a no-op when running).
    pub fn resume(&mut self) -> Result<(), SnapshotError> {
        if self.paused {
            for h in &self.handles {
                h.resume()?;
            }
            self.paused = false;
        }
        Ok(())
    }

    /// Writes a snapshot of the paused VM into `dir`; with `diff`, guest
    /// memory mapped from a file still there is written as a diff against
    /// it (a snapshot to be restored at once, as a fork's), else whole.
    pub fn snapshot(&mut self, dir: &Path, diff: bool) -> Result<(), SnapshotError> {
        if !self.paused {
            return Err(SnapshotError::NotPaused);
        }
        std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let msrs =
            Arc::new(snapshot::vcpu::msrs_to_save(&self.kvm).map_err(SnapshotError::MsrList)?);
        let vcpus = self
            .handles
            .iter()
            .map(|h| h.save(msrs.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let vm = snapshot::vm::save(&self.vm)?;
        let devices = self.devices.save();
        let serial = self
            .legacy
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state();
        let t = std::time::Instant::now();
        let path = snapshot::memory_path(dir);
        let base = self
            .mapped_from
            .as_mut()
            .filter(|m| diff && m.still_there());
        let (memory, written) = match base {
            Some(from) => {
                let (memory, bytes) = from.save_layer(&self.mem, dir)?;
                let layers = memory.base.as_ref().map_or(0, |b| b.layers.len());
                (
                    memory,
                    format!("a diff of {} KiB, {layers} layers", bytes >> 10),
                )
            }
            None => {
                let memory = snapshot::memory::save(&self.mem, &path)?;
                (memory, "whole".to_string())
            }
        };
        log::info!(
            "guest memory ({} MiB, {written}) written in {} ms",
            memory.total() >> 20,
            t.elapsed().as_millis()
        );
        let state = MicrovmState {
            memory,
            vm,
            vcpus,
            devices,
            serial,
        };
        snapshot::file::save(&state, &snapshot::state_path(dir))?;
        Ok(())
    }
}

pub use husk_proto::error::chain;

fn clone_evt(evt: &EventFd) -> Result<EventFd, RunError> {
    evt.try_clone()
        .map_err(|source| RunError::Thread { index: 0, source })
}
