//! Snapshot state of a virtio-blk device: its transport, and the disk size
//! it had, so a restore onto a different image is refused. A disk that was
//! empty (0 sectors) when the snapshot was taken is a slot: it may be
//! restored onto any image, and the driver is told its capacity changed
//! (how a template snapshot gets its container's disks).

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
    let filled_slot = state.capacity == 0 && block.capacity() != 0;
    if block.capacity() != state.capacity && !filled_slot {
        return Err(BlockPersistError::Capacity {
            saved: state.capacity,
            now: block.capacity(),
        });
    }
    let mut t = MmioTransport::restore(mem, block, &state.transport)?;
    if filled_slot && t.is_activated() {
        t.notify_config_change();
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{guest_memory, Harness};
    use husk_proto::vm::BlockConfig;

    fn block(sectors: u64) -> (tempfile::NamedTempFile, Block) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(sectors * 512).unwrap();
        let cfg = BlockConfig {
            path: f.path().to_path_buf(),
            read_only: false,
            serial: None,
        };
        let b = Block::new(&cfg).unwrap();
        (f, b)
    }

    #[test]
    fn an_empty_slot_takes_any_disk_and_tells_the_driver() {
        let mem = guest_memory();
        let (_empty, slot) = block(0);
        let saved = save(&Harness::new(&mem, slot).transport.lock().unwrap());
        assert_eq!(saved.capacity, 0);
        let (_disk, disk) = block(8);
        let t = restore(mem.clone(), disk, &saved).unwrap();
        assert_eq!(t.device().capacity(), 8);
        assert_eq!(t.save_state().interrupt_status & 0x2, 0x2);
        assert_eq!(
            t.save_state().config_generation,
            saved.transport.config_generation.wrapping_add(1)
        );
    }

    #[test]
    fn a_disk_of_another_size_is_refused() {
        let mem = guest_memory();
        let (_a, a) = block(8);
        let saved = save(&Harness::new(&mem, a).transport.lock().unwrap());
        let (_b, b) = block(16);
        let e = restore(mem.clone(), b, &saved).unwrap_err().to_string();
        assert_eq!(
            e,
            "disk image has 16 sectors, the snapshot was taken with 8"
        );
        let (_c, c) = block(0);
        assert!(restore(mem, c, &saved).is_err());
    }
}
