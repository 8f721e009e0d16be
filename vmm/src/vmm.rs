//! A built microVM and its run loop: one thread per vCPU, and the VMM's
//! event loop (event-manager) on the calling thread, which waits for the
//! guest or a signal to end the VM.

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{Kvm, VmFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::builder::LegacyDevices;
use crate::vcpu::{Vcpu, VcpuStop};

/// A device's event handler in the VMM's event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// How a VM ended. `main` maps each to a documented exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (husk debug port, or a KVM power-off event).
    PowerOff,
    /// The guest reset itself (i8042 reset line, `reboot`).
    Reset,
    /// A vCPU triple-faulted.
    TripleFault,
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
    vm: VmFd,
    _kvm: Kvm,
    mem: GuestMemoryMmap,
    exits: ExitEvents,
    legacy: LegacyDevices,
    subscribers: Vec<Subscriber>,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.vcpus.len())
            .field("devices", &self.subscribers.len())
            .finish_non_exhaustive()
    }
}

const EV_RESET: u32 = 1;
const EV_POWER_OFF: u32 = 2;
const EV_VCPU: u32 = 3;
const EV_SIGNAL: u32 = 4;

/// Watches everything that can end the VM.
struct ExitWatcher {
    exits: ExitEvents,
    signals: SignalFd,
    vcpu_stops: mpsc::Receiver<VcpuStop>,
    result: Option<VmExit>,
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
                    Ok(VcpuStop::TripleFault) => VmExit::TripleFault,
                    Ok(VcpuStop::Reset) => VmExit::Reset,
                    Ok(VcpuStop::PowerOff) => VmExit::PowerOff,
                    Ok(VcpuStop::Failure(why)) => VmExit::Failure(why),
                    Err(_) => return,
                }
            }
            EV_SIGNAL => match self.signals.read_signal() {
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
        subscribers: Vec<Subscriber>,
    ) -> Self {
        Vmm {
            vcpus,
            vm,
            _kvm: kvm,
            mem,
            exits,
            legacy,
            subscribers,
        }
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
        mask.thread_block().map_err(RunError::Signals)?;
        let signals =
            SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK).map_err(RunError::Signals)?;

        let (tx, rx) = mpsc::channel();
        for mut vcpu in std::mem::take(&mut self.vcpus) {
            let tx = tx.clone();
            let evt = self
                .exits
                .vcpu
                .try_clone()
                .map_err(|source| RunError::Thread {
                    index: vcpu.index(),
                    source,
                })?;
            let index = vcpu.index();
            std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    let stop = vcpu.run();
                    let _ = tx.send(stop);
                    let _ = evt.write(1);
                    // Keep the vCPU fd open: closing it while the VM runs
                    // would tear down state other vCPUs may still use.
                    std::mem::forget(vcpu);
                })
                .map_err(|source| RunError::Thread { index, source })?;
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
        }));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().map_err(RunError::EventLoop)?;
        em.add_subscriber(watcher.clone());
        for s in &self.subscribers {
            em.add_subscriber(s.clone());
        }
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

fn clone_evt(evt: &EventFd) -> Result<EventFd, RunError> {
    evt.try_clone()
        .map_err(|source| RunError::Thread { index: 0, source })
}
