//! virtio-vsock (virtio 1.2, section 5.10) with Firecracker's host-side
//! design: guest streams multiplexed onto Unix sockets (see [`backend`]).

pub mod backend;
pub mod device;
pub mod handler;
pub mod packet;
pub mod persist;
pub mod rxq;
pub mod uds;

pub use device::{Vsock, VsockConfig, VsockError};
pub use handler::VsockHandler;
