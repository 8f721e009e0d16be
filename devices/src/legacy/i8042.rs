//! The part of the i8042 keyboard controller a microVM needs: its reset line.
//!
//! Linux reboots a PC without ACPI (`reboot=k`) by writing command 0xFE to
//! port 0x64; the device turns that into an `EventFd` signal so the VMM can
//! treat it as "the guest has stopped", as Firecracker does.
//!
//! It has no state to snapshot: status reads are always 0 and the only
//! command it acts on is the reset pulse.

use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

/// First I/O port of the controller (data port 0x60).
pub const I8042_PORT_BASE: u16 = 0x60;
/// Ports 0x60..=0x64 (0x61 is the PC speaker/port B, read as 0).
pub const I8042_PORT_LEN: u16 = 5;

const OFS_STATUS: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 reset line.
#[derive(Debug)]
pub struct I8042 {
    reset_evt: EventFd,
}

impl I8042 {
    /// A controller that signals `reset_evt` when the guest pulses reset.
    pub fn new(reset_evt: EventFd) -> Self {
        I8042 { reset_evt }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, so the guest's
        // `kb_wait()` loop before the reset command finishes at once.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == OFS_STATUS && data.first() == Some(&CMD_RESET_CPU) {
            if let Err(e) = self.reset_evt.write(1) {
                log::error!("i8042: signalling reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals_the_event() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        let mut status = [0xffu8];
        dev.read(OFS_STATUS, &mut status);
        assert_eq!(status, [0]);
        dev.write(0, &[CMD_RESET_CPU]); // data port: not a command
        dev.write(OFS_STATUS, &[0xaa]); // self-test command: ignored
        assert!(evt.read().is_err(), "no reset expected yet");
        dev.write(OFS_STATUS, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
