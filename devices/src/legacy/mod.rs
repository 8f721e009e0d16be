//! Legacy port-I/O devices of a microVM: the 8250 serial console, the i8042
//! reset line and husk's debug port.

mod debug_port;
mod i8042;
mod serial;

pub use debug_port::{
    BootMarkerHook, DebugPort, DEBUG_PORT, DEBUG_PORT_BOOT_MARKER, DEBUG_PORT_POWER_OFF,
};
pub use i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use serial::{
    EventFdTrigger, Serial, SerialState, SERIAL_IRQ, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};
