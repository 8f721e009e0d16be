//! husk's emulated devices: legacy port-I/O devices and the virtio-mmio
//! transport with its virtio devices. Device logic never touches KVM: the VMM
//! hands devices plain `EventFd`s (queue notifications registered by the VMM as
//! ioeventfds, interrupts registered as irqfds) and routes guest accesses to
//! them through [`BusDevice`].
#![deny(missing_docs)]

pub mod legacy;
pub mod virtio;

use vmm_sys_util::eventfd::EventFd;

/// A device that sits on the port-I/O or MMIO bus.
///
/// `offset` is relative to the device's base address; `data` holds the bytes of
/// one guest access (1, 2, 4 or 8 bytes, little endian).
pub trait BusDevice: Send {
    /// Handle a guest read; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handle a guest write of `data`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// What the VMM needs to wire a virtio-mmio device to the hypervisor: the
/// queue-notify events it registers as ioeventfds (at the transport's
/// QueueNotify register, datamatch = queue index) and the interrupt event it
/// registers as an irqfd for the device's GSI.
pub trait VirtioMmioDevice: BusDevice {
    /// One event per virtqueue, in queue order.
    fn queue_events(&self) -> &[EventFd];
    /// The device's interrupt line.
    fn interrupt_event(&self) -> &EventFd;
}
