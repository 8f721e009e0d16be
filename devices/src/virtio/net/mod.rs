//! virtio-net (virtio 1.2, section 5.1) over a host TAP device.

pub mod device;
pub mod handler;
pub mod persist;
pub mod tap;

pub use device::{Net, NetConfig, NetError};
pub use handler::NetHandler;
