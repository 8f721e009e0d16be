//! Driver-side helpers for device tests, benches and fuzzing: guest memory,
//! a `MockSplitQueue` per virtqueue, and a transport activated over them the
//! way Linux's driver does it.

use std::sync::{Arc, Mutex};

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
pub use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::{test_utils::activate, MmioTransport};
use super::VirtioDevice;

/// Size of test guest memory.
pub const MEM_SIZE: usize = 16 << 20;
/// Queue size used by tests.
pub const QUEUE_LEN: u16 = 16;
/// Where test buffers start (queues live below).
pub const BUF_BASE: u64 = 0x10_0000;

/// Descriptor flag: the chain continues.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: device-writable.
pub const F_WRITE: u16 = 2;

/// Fresh zeroed guest memory.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("test guest memory")
}

/// A raw descriptor.
pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// A device behind an activated transport with one mock queue per virtqueue.
pub struct Harness<'a, D: VirtioDevice> {
    /// The mock queues, in index order.
    pub queues: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    /// The activated transport, shared as the VMM shares it.
    pub transport: Arc<Mutex<MmioTransport<D>>>,
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
}

impl<D: VirtioDevice> std::fmt::Debug for Harness<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").finish_non_exhaustive()
    }
}

impl<'a, D: VirtioDevice> Harness<'a, D> {
    /// Activates `device` with queues laid out at 64 KiB steps.
    pub fn new(mem: &'a GuestMemoryMmap, device: D) -> Self {
        let n = device.queue_max_sizes().len();
        let queues: Vec<_> = (0..n)
            .map(|i| {
                MockSplitQueue::create(mem, GuestAddress(0x1_0000 * (i as u64 + 1)), QUEUE_LEN)
            })
            .collect();
        let mut transport = MmioTransport::new(mem.clone(), device).expect("transport");
        let addrs: Vec<_> = queues
            .iter()
            .map(|q| (q.desc_table_addr(), q.avail_addr(), q.used_addr()))
            .collect();
        activate(&mut transport, 0, &addrs, QUEUE_LEN);
        assert!(transport.is_activated(), "test device failed to activate");
        Harness {
            queues,
            transport: Arc::new(Mutex::new(transport)),
            mem,
        }
    }

    /// Runs `f` on the device model.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        f(self.transport.lock().expect("transport lock").device_mut())
    }

    /// Makes the descriptors available on queue `q` as one or more chains
    /// (flags and `next` are taken as given: malformed chains stay malformed).
    pub fn add(&self, q: usize, descs: &[RawDescriptor]) {
        self.queues[q].add_desc_chains(descs, 0).expect("add chain");
    }

    /// The used ring's index of queue `q`.
    pub fn used_idx(&self, q: usize) -> u16 {
        let addr = self.queues[q].used_addr().unchecked_add(2);
        self.mem.read_obj::<u16>(addr).expect("used idx")
    }

    /// The available ring's index of queue `q` (chains the driver offered).
    pub fn avail_idx(&self, q: usize) -> u16 {
        let addr = self.queues[q].avail_addr().unchecked_add(2);
        self.mem.read_obj::<u16>(addr).expect("avail idx")
    }

    /// Used element `i` of queue `q`: (descriptor id, length).
    pub fn used_elem(&self, q: usize, i: u16) -> (u32, u32) {
        let base = self.queues[q]
            .used_addr()
            .unchecked_add(4 + 8 * u64::from(i));
        let id: u32 = self.mem.read_obj(base).expect("used id");
        let len: u32 = self.mem.read_obj(base.unchecked_add(4)).expect("used len");
        (id, len)
    }
}
