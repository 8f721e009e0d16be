//! One vCPU: KVM set-up for its index, and the run loop that dispatches
//! port-I/O and MMIO exits to the buses until the guest stops it.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::{cpuid, regs};
use crate::bus::Bus;
use crate::snapshot::vcpu::{self as vcpu_state, VcpuState, VcpuStateError};

/// vCPU errors.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM refused to create the vCPU.
    #[error("cannot create vCPU {index}")]
    Create {
        /// vCPU index.
        index: u8,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// CPUID set-up failed.
    #[error("cannot set CPUID of vCPU {index}")]
    Cpuid {
        /// vCPU index.
        index: u8,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Restoring a snapshot's state failed.
    #[error(transparent)]
    Restore(#[from] VcpuStateError),
    /// The vCPU thread did not answer.
    #[error("vCPU {index} did not {what} within {secs} s")]
    NoAnswer {
        /// vCPU index.
        index: u8,
        /// "pause", "resume", "save its state".
        what: &'static str,
        /// The time waited.
        secs: u64,
    },
    /// The kick signal could not be set up or sent.
    #[error("cannot signal vCPU {index}")]
    Kick {
        /// vCPU index.
        index: u8,
        /// The cause.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// Register set-up failed.
    #[error("cannot set up registers of vCPU {index}")]
    Regs {
        /// vCPU index.
        index: u8,
        /// The cause.
        #[source]
        source: regs::RegsError,
    },
}

/// Why a vCPU stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// Triple fault (`KVM_EXIT_SHUTDOWN`), with where the vCPU stopped.
    TripleFault(String),
    /// The guest asked for a reset through a KVM system event.
    Reset,
    /// The guest asked to power off through a KVM system event.
    PowerOff,
    /// KVM could not run the guest (internal error, failed entry, or an exit
    /// husk does not handle).
    Failure(String),
}

/// A vCPU ready to run.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
}

impl Vcpu {
    /// Creates vCPU `index` of `count` and sets CPUID, MSRs, registers and
    /// LAPIC for entry at `entry` in `mode`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kvm: &Kvm,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        (index, count): (u8, u8),
        entry: u64,
        mode: regs::EntryMode,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        let mut supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| VcpuError::Cpuid { index, source })?;
        cpuid::filter_cpuid(supported.as_mut_slice(), index, count);
        fd.set_cpuid2(&supported)
            .map_err(|source| VcpuError::Cpuid { index, source })?;
        let regs_err = |source| VcpuError::Regs { index, source };
        regs::setup_vcpu_regs(&fd, mem, entry, mode).map_err(regs_err)?;
        regs::setup_lapic(&fd).map_err(regs_err)?;
        Ok(Vcpu {
            fd,
            index,
            pio,
            mmio,
        })
    }

    /// Creates vCPU `index` with no set-up, for a snapshot's state to be
    /// loaded into with [`Vcpu::restore_state`].
    pub fn create_for_restore(
        vm: &VmFd,
        index: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Vcpu {
            fd,
            index,
            pio,
            mmio,
        })
    }

    /// Loads a snapshot's state into this vCPU.
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), VcpuError> {
        Ok(vcpu_state::restore(&self.fd, state)?)
    }

    /// Wraps an already configured vCPU (used by tests with hand-made guests).
    pub fn from_fd(fd: VcpuFd, index: u8, pio: Arc<Bus>, mmio: Arc<Bus>) -> Self {
        Vcpu {
            fd,
            index,
            pio,
            mmio,
        }
    }

    /// The KVM vCPU.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// This vCPU's index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Runs the guest until something stops this vCPU.
    pub fn run(&mut self) -> VcpuStop {
        loop {
            if let Some(stop) = self.run_once() {
                return stop;
            }
        }
    }

    /// Where the vCPU stopped, for a guest that faulted: its index and
    /// the registers that locate the fault.
    fn where_stopped(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => format!(
                "vCPU {} at rip {:#x} rsp {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}",
                self.index, r.rip, r.rsp, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
            ),
            (Err(e), _) | (_, Err(e)) => {
                format!("vCPU {} (registers unreadable: {e})", self.index)
            }
        }
    }

    /// Runs until one exit; `Some` when the vCPU must stop.
    pub fn run_once(&mut self) -> Option<VcpuStop> {
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    data.fill(0);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::Shutdown) => Some(VcpuStop::TripleFault(self.where_stopped())),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Some(VcpuStop::PowerOff),
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => Some(VcpuStop::Reset),
                other => Some(VcpuStop::Failure(format!(
                    "vCPU {}: system event {other}",
                    self.index
                ))),
            },
            Ok(VcpuExit::Hlt) => Some(VcpuStop::Failure(format!(
                "vCPU {}: halted with no interrupt controller to wake it",
                self.index
            ))),
            Ok(VcpuExit::InternalError) => Some(VcpuStop::Failure(format!(
                "vCPU {}: KVM internal error (emulation failure)",
                self.index
            ))),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VcpuStop::Failure(format!(
                "vCPU {}: KVM entry failed, hardware reason {reason:#x} on host CPU {cpu}",
                self.index
            ))),
            Ok(other) => Some(VcpuStop::Failure(format!(
                "vCPU {}: unexpected exit {other:?}",
                self.index
            ))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(VcpuStop::Failure(format!(
                "vCPU {}: KVM_RUN failed: {e}",
                self.index
            ))),
        }
    }
}

/// What the VMM asks of a running vCPU thread.
#[derive(Debug)]
pub enum VcpuCommand {
    /// Leave KVM_RUN, finish pending I/O and wait.
    Pause,
    /// Run again.
    Resume,
    /// Save the KVM state (only while paused) with these MSRs.
    Save(Arc<Vec<u32>>),
}

/// A vCPU thread's answer.
#[derive(Debug)]
pub enum VcpuReply {
    /// Paused.
    Paused,
    /// Running again.
    Resumed,
    /// The saved state.
    Saved(Box<Result<VcpuState, VcpuStateError>>),
}

/// The thread side: channels and the events that report a stop.
#[derive(Debug)]
pub struct VcpuChannels {
    /// Commands from the VMM.
    pub commands: Receiver<VcpuCommand>,
    /// Answers to the VMM.
    pub replies: Sender<VcpuReply>,
    /// Why the vCPU stopped (read by the VMM's exit watcher).
    pub stops: Sender<VcpuStop>,
    /// Signalled with each stop.
    pub stop_evt: EventFd,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal's only job is to make KVM_RUN return EINTR.
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the (empty) kick handler once per process.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_signal_handler(kick_signal(), kick_handler));
    result
}

impl Vcpu {
    /// Completes an I/O exit's pending work (KVM finishes an emulated IN
    /// or OUT only on the next KVM_RUN) without running the guest, so the
    /// state read next is consistent (KVM API, "immediate_exit").
    fn settle(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Serves commands while paused; false when the VMM has gone.
    fn paused(&mut self, ch: &VcpuChannels, running_allowed: bool) -> bool {
        loop {
            let reply = match ch.commands.recv() {
                Ok(VcpuCommand::Pause) => VcpuReply::Paused,
                Ok(VcpuCommand::Save(msrs)) => {
                    VcpuReply::Saved(Box::new(vcpu_state::save(&self.fd, self.index, &msrs)))
                }
                Ok(VcpuCommand::Resume) => {
                    let _ = ch.replies.send(VcpuReply::Resumed);
                    if running_allowed {
                        return true;
                    }
                    continue;
                }
                Err(_) => return false,
            };
            let _ = ch.replies.send(reply);
        }
    }

    /// Runs the guest, pausing, saving and resuming on command, until the
    /// guest stops the vCPU; then keeps answering commands (without
    /// running) until the VMM drops its side.
    pub fn run_controlled(&mut self, ch: &VcpuChannels) {
        loop {
            match ch.commands.try_recv() {
                Ok(VcpuCommand::Pause) => {
                    self.settle();
                    let _ = ch.replies.send(VcpuReply::Paused);
                    if !self.paused(ch, true) {
                        return;
                    }
                }
                Ok(VcpuCommand::Resume) => {
                    let _ = ch.replies.send(VcpuReply::Resumed);
                }
                Ok(VcpuCommand::Save(_)) => {
                    // Only a paused vCPU has a consistent state.
                    let _ = ch.replies.send(VcpuReply::Saved(Box::new(Err(
                        VcpuStateError::NotPaused { index: self.index },
                    ))));
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
            }
            if let Some(stop) = self.run_once() {
                let _ = ch.stops.send(stop);
                let _ = ch.stop_evt.write(1);
                self.paused(ch, false);
                return;
            }
        }
    }
}

/// The VMM's side of a running vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    index: u8,
    commands: Sender<VcpuCommand>,
    replies: Receiver<VcpuReply>,
    thread: JoinHandle<()>,
}

/// How long a vCPU thread gets to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a vCPU that has not paused yet is kicked again (a kick that
/// lands just before KVM_RUN is entered is lost).
const KICK_INTERVAL: Duration = Duration::from_millis(10);

impl VcpuHandle {
    /// Wraps a started thread and its channels.
    pub fn new(
        index: u8,
        commands: Sender<VcpuCommand>,
        replies: Receiver<VcpuReply>,
        thread: JoinHandle<()>,
    ) -> Self {
        VcpuHandle {
            index,
            commands,
            replies,
            thread,
        }
    }

    fn no_answer(&self, what: &'static str) -> VcpuError {
        VcpuError::NoAnswer {
            index: self.index,
            what,
            secs: ANSWER_TIMEOUT.as_secs(),
        }
    }

    /// Pauses the vCPU: asks, then kicks it out of KVM_RUN until it answers.
    pub fn pause(&self) -> Result<(), VcpuError> {
        self.commands
            .send(VcpuCommand::Pause)
            .map_err(|_| self.no_answer("pause"))?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        while Instant::now() < deadline {
            self.thread
                .kill(kick_signal())
                .map_err(|source| VcpuError::Kick {
                    index: self.index,
                    source,
                })?;
            match self.replies.recv_timeout(KICK_INTERVAL) {
                Ok(VcpuReply::Paused) => return Ok(()),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Err(self.no_answer("pause"))
    }

    /// Lets a paused vCPU run again.
    pub fn resume(&self) -> Result<(), VcpuError> {
        self.commands
            .send(VcpuCommand::Resume)
            .map_err(|_| self.no_answer("resume"))?;
        match self.replies.recv_timeout(ANSWER_TIMEOUT) {
            Ok(VcpuReply::Resumed) => Ok(()),
            _ => Err(self.no_answer("resume")),
        }
    }

    /// The state of a paused vCPU.
    pub fn save(&self, msrs: Arc<Vec<u32>>) -> Result<VcpuState, VcpuError> {
        self.commands
            .send(VcpuCommand::Save(msrs))
            .map_err(|_| self.no_answer("save its state"))?;
        match self.replies.recv_timeout(ANSWER_TIMEOUT) {
            Ok(VcpuReply::Saved(r)) => Ok((*r)?),
            _ => Err(self.no_answer("save its state")),
        }
    }
}
