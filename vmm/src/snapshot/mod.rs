//! Snapshots of a running microVM: pause the vCPUs, write the whole VM
//! state (vCPUs, in-kernel irqchip/PIT/clock, devices) as one checked state
//! file and guest memory as another; restore maps the memory file
//! copy-on-write, puts every state back and runs on.
//!
//! A snapshot is a directory holding [`STATE_FILE`] (see [`file`] for its
//! header: magic, format version, husk-vmm version, CRC-32) and
//! [`MEMORY_FILE`]. Host-side resources (disk images, TAPs, the vsock Unix
//! socket) are not in it: the restoring husk-vmm is given them again.

pub mod api;
pub mod diff;
pub mod file;
pub mod layers;
pub mod memory;
pub mod vcpu;
pub mod vm;

use std::path::{Path, PathBuf};

use husk_devices::legacy::SerialState;
use husk_devices::virtio::block::persist::BlockState;
use husk_devices::virtio::net::persist::NetState;
use husk_devices::virtio::vsock::persist::VsockState;
use serde::{Deserialize, Serialize};

use self::file::FileError;
use self::memory::{MemoryFileError, MemoryState};
use self::vcpu::VcpuState;
use self::vm::{VmState, VmStateError};

/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The guest memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Snapshot errors.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state file is unusable.
    #[error(transparent)]
    File(#[from] FileError),
    /// Guest memory could not be saved or mapped.
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    /// VM-wide KVM state could not be saved.
    #[error(transparent)]
    Vm(#[from] VmStateError),
    /// A vCPU could not be paused or saved.
    #[error(transparent)]
    Vcpu(#[from] crate::vcpu::VcpuError),
    /// The VM is running.
    #[error("the VM is running; pause it first")]
    NotPaused,
    /// The snapshot directory could not be created.
    #[error("cannot create snapshot directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The MSR list could not be read.
    #[error("KVM_GET_MSR_INDEX_LIST failed")]
    MsrList(#[source] kvm_ioctls::Error),
}

/// Every virtio device, in the order they were attached.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DevicesState {
    /// Disks (vda, vdb, ...).
    pub disks: Vec<BlockState>,
    /// Network interfaces.
    pub nets: Vec<NetState>,
    /// The vsock device.
    pub vsock: Option<VsockState>,
}

/// The whole state of a microVM except guest memory's content.
#[derive(Debug, Serialize, Deserialize)]
pub struct MicrovmState {
    /// Guest memory layout.
    pub memory: MemoryState,
    /// PIT, clock, irqchip.
    pub vm: VmState,
    /// Each vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// Virtio devices and their transports.
    pub devices: DevicesState,
    /// COM1.
    pub serial: SerialState,
}

/// The state file of snapshot directory `dir`.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// The memory file of snapshot directory `dir`.
pub fn memory_path(dir: &Path) -> PathBuf {
    dir.join(MEMORY_FILE)
}

/// Reads and checks the state of snapshot `dir`.
pub fn load_state(dir: &Path) -> Result<MicrovmState, SnapshotError> {
    Ok(file::load(&state_path(dir))?)
}
