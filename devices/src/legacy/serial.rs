//! The 8250 UART at COM1 (0x3f8, IRQ 4), built on `vm-superio`.
//!
//! Output goes to any `Write` (stdout or a file); the interrupt line is an
//! `EventFd` that the VMM registers as an irqfd.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

/// I/O port base of COM1.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// Number of I/O ports the UART decodes.
pub const SERIAL_PORT_LEN: u16 = 8;
/// Interrupt line of COM1.
pub const SERIAL_IRQ: u32 = 4;

/// An interrupt line backed by an `EventFd` (registered by the VMM as an irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }

    /// The underlying event, for registering it with the hypervisor.
    pub fn event(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The UART's registers and receive FIFO, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch, low and high byte.
    pub baud_divisor: [u8; 2],
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// Bytes the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

impl From<vm_superio::serial::SerialState> for SerialState {
    fn from(s: vm_superio::serial::SerialState) -> Self {
        SerialState {
            baud_divisor: [s.baud_divisor_low, s.baud_divisor_high],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialState> for vm_superio::serial::SerialState {
    fn from(s: &SerialState) -> Self {
        vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor[0],
            baud_divisor_high: s.baud_divisor[1],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// COM1 as a bus device.
pub struct Serial {
    inner: vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART that raises its interrupt through `irq` and writes what the
    /// guest transmits to `out`.
    pub fn new(irq: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Serial {
            inner: vm_superio::Serial::new(irq, out),
        }
    }

    /// A UART in a saved state (from [`Serial::state`]).
    pub fn from_state(
        state: &SerialState,
        irq: EventFdTrigger,
        out: Box<dyn Write + Send>,
    ) -> io::Result<Self> {
        let inner = vm_superio::Serial::from_state(&state.into(), irq, NoEvents, out)
            .map_err(|e| io::Error::other(format!("serial state: {e:?}")))?;
        Ok(Serial { inner })
    }

    /// The registers and receive FIFO.
    pub fn state(&self) -> SerialState {
        self.inner.state().into()
    }

    /// Bytes for the guest to receive (console input).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner
            .enqueue_raw_bytes(bytes)
            .map(|_| ())
            .map_err(|e| io::Error::other(format!("serial input: {e:?}")))
    }

    /// Flushes the console output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.writer_mut().flush()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(off), 1) => data[0] = self.inner.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            if let Err(e) = self.inner.write(off, *value) {
                log::warn!("serial: write at offset {off}: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_bytes_and_raises_thr_interrupt() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = EventFdTrigger::new(evt.try_clone().unwrap());
        let buf = SharedBuf::default();
        let mut serial = Serial::new(irq, Box::new(buf.clone()));
        // Enable the "transmitter holding register empty" interrupt (IER bit 1).
        serial.write(1, &[0x02]);
        for b in b"hi" {
            serial.write(0, &[*b]);
        }
        assert_eq!(&*buf.0.lock().unwrap(), b"hi");
        assert!(evt.read().unwrap() >= 1);
    }

    #[test]
    fn state_round_trip_keeps_registers_and_input() {
        let irq = || EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut serial = Serial::new(irq(), Box::new(io::sink()));
        serial.write(7, &[0x5a]); // scratch
        serial.write(3, &[0x03]); // LCR: 8N1
        serial.enqueue_input(b"ok").unwrap();
        let state = serial.state();
        let via_superio = SerialState::from(vm_superio::serial::SerialState::from(&state));
        assert_eq!(via_superio, state);
        let mut back = Serial::from_state(&state, irq(), Box::new(io::sink())).unwrap();
        let mut b = [0u8];
        back.read(7, &mut b);
        assert_eq!(b, [0x5a]);
        back.read(3, &mut b);
        assert_eq!(b, [0x03]);
        back.read(0, &mut b);
        assert_eq!(b, [b'o']);
    }

    #[test]
    fn odd_sized_accesses_are_ignored() {
        let irq = EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let buf = SharedBuf::default();
        let mut serial = Serial::new(irq, Box::new(buf.clone()));
        serial.write(0, b"ab");
        let mut wide = [0u8; 4];
        serial.read(5, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        assert!(buf.0.lock().unwrap().is_empty());
    }
}
