//! Virtio devices over the virtio-mmio transport (virtio 1.2, section 4.2).
//!
//! How the VMM wires a device (see `husk-vmm`'s device manager):
//! - the device model (`Block`, `Vsock`, ...) implements [`VirtioDevice`] and is
//!   wrapped in an [`mmio::MmioTransport`], shared as `Arc<Mutex<_>>`;
//! - the transport is a [`crate::BusDevice`] on the MMIO bus and a
//!   [`crate::VirtioMmioDevice`]: the VMM registers its queue events as
//!   ioeventfds at QueueNotify and its interrupt event as an irqfd;
//! - each device's event handler (an `event_manager::MutEventSubscriber`
//!   holding the same `Arc<Mutex<MmioTransport<_>>>`) runs in the VMM's event
//!   loop and processes queues and backend I/O once the driver has activated
//!   the device.

pub mod block;
pub mod mmio;
pub mod net;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit: the device complies with virtio 1.x.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Interrupt status bit: a used buffer was added.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x1;
/// Interrupt status bit: the configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x2;

/// Device type ids (virtio 1.2, section 5).
pub mod device_type {
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Network card.
    pub const NET: u32 = 1;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// A device's interrupt line and the InterruptStatus register it sets.
#[derive(Debug, Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    evt: Arc<EventFd>,
}

impl Interrupt {
    /// A line that signals `evt`.
    pub fn new(evt: EventFd) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            evt: Arc::new(evt),
        }
    }

    /// Tells the driver a used buffer is ready.
    pub fn signal_used_queue(&self) {
        self.signal(VIRTIO_MMIO_INT_VRING);
    }

    /// Tells the driver the configuration changed.
    pub fn signal_config_change(&self) {
        self.signal(VIRTIO_MMIO_INT_CONFIG);
    }

    fn signal(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::error!("virtio: cannot signal interrupt: {e}");
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The event registered as irqfd.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

/// What a driver has negotiated when it sets DRIVER_OK.
#[derive(Debug)]
pub struct ActivateArgs {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues, configured and ready, in index order.
    pub queues: Vec<Queue>,
    /// The interrupt line.
    pub interrupt: Interrupt,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// Errors a device reports when it cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues.
    #[error("expected {expected} queues, driver set up {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues the driver made ready.
        got: usize,
    },
    /// The backend failed.
    #[error("backend: {0}")]
    Backend(String),
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    /// Virtio device type id.
    fn device_type(&self) -> u32;
    /// Features the device offers.
    fn avail_features(&self) -> u64;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (ignored by default).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::warn!(
            "virtio: ignored {} byte config write at {offset:#x}",
            data.len()
        );
    }
    /// Starts the device after the driver set DRIVER_OK.
    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError>;
    /// Stops the device when the driver resets it; it may be activated again.
    fn reset(&mut self);
    /// `(next_avail, next_used)` of each queue while the device runs, in
    /// queue order (for snapshots); empty when it is not running.
    fn queue_positions(&self) -> Vec<(u16, u16)> {
        Vec::new()
    }
    /// One line on how far the device and its driver got, for a stall's
    /// diagnosis (empty when it is not running).
    fn describe(&self) -> String {
        String::new()
    }
}

/// Each queue as `q<i> avail <device's next>/<driver's idx> used <device's
/// next>/<idx in guest memory>`: a driver index ahead of the device's means
/// buffers the device has not taken.
pub fn describe_queues(mem: &GuestMemoryMmap, queues: &[Queue]) -> String {
    use virtio_queue::QueueT;
    let idx = |r: Result<std::num::Wrapping<u16>, virtio_queue::Error>| {
        r.map_or_else(|_| "?".to_string(), |w| w.0.to_string())
    };
    queues
        .iter()
        .enumerate()
        .map(|(i, q)| {
            format!(
                "q{i} avail {}/{} used {}/{}",
                q.next_avail(),
                idx(q.avail_idx(mem, Ordering::Acquire)),
                q.next_used(),
                idx(q.used_idx(mem, Ordering::Acquire)),
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `(next_avail, next_used)` of `queues`.
pub fn positions(queues: &[Queue]) -> Vec<(u16, u16)> {
    use virtio_queue::QueueT;
    queues
        .iter()
        .map(|q| (q.next_avail(), q.next_used()))
        .collect()
}

/// Copies `src` (a config structure) into `data` at `offset`, zero-filling
/// what lies beyond it.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(avail) = src.get(start..) {
        let n = avail.len().min(data.len());
        data[..n].copy_from_slice(&avail[..n]);
    }
}
