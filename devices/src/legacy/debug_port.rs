//! husk's debug port (I/O port 0x3f0, as Firecracker's boot timer).
//!
//! One-byte writes:
//! - [`DEBUG_PORT_BOOT_MARKER`] (123): the guest has reached its init; the VMM
//!   logs the time since its own start (Firecracker's boot-time marker).
//! - [`DEBUG_PORT_POWER_OFF`] (0xad): the guest asks to power off. With ACPI
//!   compiled out a Linux `poweroff` only halts the CPUs, so husk's agent
//!   writes this before it halts; the VMM then exits with the power-off status.

use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

/// The debug port's I/O address.
pub const DEBUG_PORT: u16 = 0x3f0;
/// Value marking "guest init reached".
pub const DEBUG_PORT_BOOT_MARKER: u8 = 123;
/// Value requesting power-off.
pub const DEBUG_PORT_POWER_OFF: u8 = 0xad;

/// The debug port device.
#[derive(Debug)]
pub struct DebugPort {
    start: Instant,
    power_off_evt: EventFd,
    boot_marker: Option<std::time::Duration>,
}

impl DebugPort {
    /// `start` is the VMM's process start; `power_off_evt` is signalled on a
    /// power-off request.
    pub fn new(start: Instant, power_off_evt: EventFd) -> Self {
        DebugPort {
            start,
            power_off_evt,
            boot_marker: None,
        }
    }

    /// Time from VMM start to the first boot marker, if the guest wrote one.
    pub fn boot_time(&self) -> Option<std::time::Duration> {
        self.boot_marker
    }
}

impl BusDevice for DebugPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        match data.first() {
            Some(&DEBUG_PORT_BOOT_MARKER) => {
                let elapsed = self.start.elapsed();
                if self.boot_marker.is_none() {
                    self.boot_marker = Some(elapsed);
                }
                log::info!(
                    "guest boot marker: {} ms since husk-vmm start",
                    elapsed.as_millis()
                );
            }
            Some(&DEBUG_PORT_POWER_OFF) => {
                if let Err(e) = self.power_off_evt.write(1) {
                    log::error!("debug port: signalling power-off: {e}");
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_records_time_and_power_off_signals() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = DebugPort::new(Instant::now(), evt.try_clone().unwrap());
        assert!(dev.boot_time().is_none());
        dev.write(0, &[7]);
        assert!(dev.boot_time().is_none());
        dev.write(0, &[DEBUG_PORT_BOOT_MARKER]);
        assert!(dev.boot_time().is_some());
        assert!(evt.read().is_err());
        dev.write(0, &[DEBUG_PORT_POWER_OFF]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
