//! Places virtio-mmio devices in the MMIO gap: one 4 KiB slot and one GSI
//! each, queue notifications as ioeventfds, interrupts as irqfds, and the
//! `virtio_mmio.device=` announcements for the kernel command line.

use std::sync::{Arc, Mutex};

use husk_devices::VirtioMmioDevice;
use kvm_ioctls::{IoEventAddress, VmFd};

use crate::bus::{Bus, BusError};
use crate::memory::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};

/// First GSI for virtio devices (0-4 are the PIT, keyboard, cascade, COM2, COM1).
pub const FIRST_VIRTIO_IRQ: u32 = 5;
/// Last GSI the IOAPIC routes.
pub const LAST_VIRTIO_IRQ: u32 = 23;
/// Offset of the QueueNotify register in a virtio-mmio slot.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

/// Device placement errors.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// No GSI left for another device.
    #[error("too many virtio devices: at most {}", LAST_VIRTIO_IRQ - FIRST_VIRTIO_IRQ + 1)]
    TooManyDevices,
    /// KVM refused an ioeventfd or irqfd.
    #[error("KVM {op} failed for the virtio device at {base:#x}")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// The device's MMIO base.
        base: u64,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The slot is already taken on the bus.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Where a device was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// MMIO base address.
    pub base: u64,
    /// Interrupt (GSI).
    pub irq: u32,
}

impl MmioSlot {
    /// The kernel command-line announcement of this slot.
    pub fn cmdline(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base, self.irq)
    }
}

/// Allocates slots and wires devices.
#[derive(Debug, Default)]
pub struct MmioDeviceManager {
    slots: Vec<MmioSlot>,
}

impl MmioDeviceManager {
    /// No devices yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next free slot.
    pub fn next_slot(&self) -> Result<MmioSlot, DeviceManagerError> {
        let n = u32::try_from(self.slots.len()).map_err(|_| DeviceManagerError::TooManyDevices)?;
        let irq = FIRST_VIRTIO_IRQ + n;
        if irq > LAST_VIRTIO_IRQ {
            return Err(DeviceManagerError::TooManyDevices);
        }
        Ok(MmioSlot {
            base: VIRTIO_MMIO_BASE + u64::from(n) * VIRTIO_MMIO_SIZE,
            irq,
        })
    }

    /// Wires `device` into the next slot: ioeventfds for its queues, an
    /// irqfd for its interrupt, and its registers on `mmio`.
    pub fn attach<D: VirtioMmioDevice + 'static>(
        &mut self,
        vm: &VmFd,
        mmio: &mut Bus,
        device: Arc<Mutex<D>>,
    ) -> Result<MmioSlot, DeviceManagerError> {
        let slot = self.next_slot()?;
        let kvm = |op| {
            move |source| DeviceManagerError::Kvm {
                op,
                base: slot.base,
                source,
            }
        };
        {
            let dev = device.lock().unwrap_or_else(|e| e.into_inner());
            for (i, evt) in dev.queue_events().iter().enumerate() {
                let index = u32::try_from(i).map_err(|_| DeviceManagerError::TooManyDevices)?;
                vm.register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(slot.base + QUEUE_NOTIFY_OFFSET),
                    index,
                )
                .map_err(kvm("KVM_IOEVENTFD"))?;
            }
            vm.register_irqfd(dev.interrupt_event(), slot.irq)
                .map_err(kvm("KVM_IRQFD"))?;
        }
        mmio.insert(slot.base, VIRTIO_MMIO_SIZE, device)?;
        self.slots.push(slot);
        Ok(slot)
    }

    /// The command-line announcements of every attached device.
    pub fn cmdline(&self) -> String {
        self.slots
            .iter()
            .map(MmioSlot::cmdline)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_cmdline() {
        let mut m = MmioDeviceManager::new();
        let s0 = m.next_slot().unwrap();
        assert_eq!(
            s0,
            MmioSlot {
                base: 0xd000_0000,
                irq: 5
            }
        );
        assert_eq!(s0.cmdline(), "virtio_mmio.device=4K@0xd0000000:5");
        m.slots.push(s0);
        let s1 = m.next_slot().unwrap();
        assert_eq!(
            s1,
            MmioSlot {
                base: 0xd000_1000,
                irq: 6
            }
        );
        m.slots.push(s1);
        assert_eq!(
            m.cmdline(),
            "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        while m.next_slot().is_ok() {
            let s = m.next_slot().unwrap();
            m.slots.push(s);
        }
        assert_eq!(m.slots.len(), 19);
        assert!(matches!(
            m.next_slot(),
            Err(DeviceManagerError::TooManyDevices)
        ));
    }
}
