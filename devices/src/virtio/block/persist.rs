//! Snapshot state of a virtio-blk device: its transport, and the disk size
//! it had, so a restore onto a different image is refused.

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::Block;
use crate::virtio::mmio::{MmioRestoreError, MmioState, MmioTransport};

/// Restore errors.
#[derive(Debug, thiserror::Error)]
pub enum BlockPersistError {
    /// The disk image changed size since the snapshot.
    #[error("disk image has {now} sectors, the snapshot was taken with {saved}")]
    Capacity {
        /// Sectors at snapshot time.
        saved: u64,
        /// Sectors now.
        now: u64,
    },
    /// The transport state does not fit.
    #[error(transparent)]
    Transport(#[from] MmioRestoreError),
}

/// A disk's snapshot state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// The transport.
    pub transport: MmioState,
}

/// The state of a disk and its transport.
pub fn save(t: &MmioTransport<Block>) -> BlockState {
    BlockState {
        capacity: t.device().capacity(),
        transport: t.save_state(),
    }
}

/// Puts a freshly opened disk back in its transport state.
pub fn restore(
    mem: GuestMemoryMmap,
    block: Block,
    state: &BlockState,
) -> Result<MmioTransport<Block>, BlockPersistError> {
    if block.capacity() != state.capacity {
        return Err(BlockPersistError::Capacity {
            saved: state.capacity,
            now: block.capacity(),
        });
    }
    Ok(MmioTransport::restore(mem, block, &state.transport)?)
}
