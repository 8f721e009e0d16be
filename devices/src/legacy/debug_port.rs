//! husk's debug port (I/O port 0x3f0, as Firecracker's boot timer).
//!
//! One-byte writes:
//! - [`DEBUG_PORT_BOOT_MARKER`] (123): the guest has reached its init; the VMM
//!   logs the time since its own start (Firecracker's boot-time marker).
//!   Only the first marker counts; a guest repeating it gets one warning and
//!   is otherwise ignored, so it cannot flood the VMM's log.
//! - [`DEBUG_PORT_POWER_OFF`] (0xad): the guest asks to power off. With ACPI
//!   compiled out a Linux `poweroff` only halts the CPUs, so husk's agent
//!   writes this before it halts; the VMM then exits with the power-off status.

use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

pub use husk_proto::guest::{DEBUG_PORT, DEBUG_PORT_BOOT_MARKER, DEBUG_PORT_POWER_OFF};

/// The debug port device.
#[derive(Debug)]
pub struct DebugPort {
    start: Instant,
    power_off_evt: EventFd,
    boot_marker: Option<std::time::Duration>,
    on_boot_marker: Option<BootMarkerHook>,
    /// Markers after the first.
    repeated_markers: u64,
}

/// Called once, with the time since the VMM's start, when the guest first
/// writes the boot marker.
pub struct BootMarkerHook(pub Box<dyn FnMut(std::time::Duration) + Send>);

impl std::fmt::Debug for BootMarkerHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootMarkerHook")
    }
}

impl DebugPort {
    /// `start` is the VMM's process start; `power_off_evt` is signalled on a
    /// power-off request.
    pub fn new(start: Instant, power_off_evt: EventFd) -> Self {
        DebugPort {
            start,
            power_off_evt,
            boot_marker: None,
            on_boot_marker: None,
            repeated_markers: 0,
        }
    }

    /// Sets the hook called at the guest's first boot marker.
    pub fn set_boot_marker_hook(&mut self, hook: BootMarkerHook) {
        self.on_boot_marker = Some(hook);
    }

    /// Time from VMM start to the first boot marker, if the guest wrote one.
    pub fn boot_time(&self) -> Option<std::time::Duration> {
        self.boot_marker
    }

    /// Boot markers written after the first (ignored).
    pub fn repeated_markers(&self) -> u64 {
        self.repeated_markers
    }

    fn boot_marker(&mut self) {
        if self.boot_marker.is_some() {
            self.repeated_markers = self.repeated_markers.saturating_add(1);
            if self.repeated_markers == 1 {
                log::warn!("guest wrote the boot marker again; ignoring repeats");
            }
            return;
        }
        let elapsed = self.start.elapsed();
        self.boot_marker = Some(elapsed);
        if let Some(BootMarkerHook(hook)) = self.on_boot_marker.as_mut() {
            hook(elapsed);
        }
        log::info!(
            "guest boot marker: {} ms since husk-vmm start",
            elapsed.as_millis()
        );
    }
}

impl BusDevice for DebugPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        match data.first() {
            Some(&DEBUG_PORT_BOOT_MARKER) => self.boot_marker(),
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

    /// Keeps this module's records, per thread.
    struct Counter;
    thread_local! {
        static LOGGED: std::cell::RefCell<Vec<(log::Level, String)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    impl log::Log for Counter {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, r: &log::Record<'_>) {
            if !r.target().ends_with("debug_port") {
                return;
            }
            LOGGED.with(|l| l.borrow_mut().push((r.level(), r.args().to_string())));
        }
        fn flush(&self) {}
    }

    #[test]
    fn a_repeated_marker_is_logged_once_and_warned_about_once() {
        // Another test may have installed a logger first; this one only
        // counts its own thread's records.
        let _ = log::set_logger(&Counter);
        log::set_max_level(log::LevelFilter::Info);
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = DebugPort::new(Instant::now(), evt);
        dev.write(0, &[DEBUG_PORT_BOOT_MARKER]);
        let first = dev.boot_time();
        for _ in 0..100_000 {
            dev.write(0, &[DEBUG_PORT_BOOT_MARKER]);
        }
        assert_eq!(dev.boot_time(), first, "only the first marker counts");
        assert_eq!(dev.repeated_markers(), 100_000);
        let logged = LOGGED.with(|l| l.borrow().clone());
        let info = logged
            .iter()
            .filter(|(l, _)| *l == log::Level::Info)
            .count();
        let warn = logged
            .iter()
            .filter(|(l, _)| *l == log::Level::Warn)
            .count();
        assert_eq!((info, warn), (1, 1), "{logged:?}");
    }
}
