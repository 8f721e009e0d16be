//! One vCPU: KVM set-up for its index, and the run loop that dispatches
//! port-I/O and MMIO exits to the buses until the guest stops it.

use std::sync::Arc;

use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::arch::{cpuid, regs};
use crate::bus::Bus;

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
    /// Triple fault (`KVM_EXIT_SHUTDOWN`).
    TripleFault,
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
            Ok(VcpuExit::Shutdown) => Some(VcpuStop::TripleFault),
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
