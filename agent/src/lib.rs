//! husk-agent as a library: the guest-side container runtime.
//!
//! - [`protocol`]: the framed, versioned JSON control protocol.
//! - [`layers`]: verify and unpack image layers into a root directory.
//! - [`overlay`]: pristine lower + writable upper for a container's rootfs.
//! - [`container`]: namespaces, cgroups, pivot_root, processes.
//! - [`server`]: the request handlers, generic over the stream type.
//! - [`vsock`]: the guest transport; [`vsock::serve`] is what PID 1 calls.
//! - [`reaper`]: exit statuses of container processes (PID 1 reaps all).

pub mod container;
pub mod layers;
pub mod overlay;
pub mod protocol;
pub mod reaper;
pub mod server;
pub mod vsock;
