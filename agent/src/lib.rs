//! husk-agent as a library: the guest-side container runtime.
//!
//! - the control protocol is `husk_proto::agent`.
//! - layers are verified and unpacked by the `husk-layers` crate.
//! - [`overlay`]: pristine lower + writable upper for a container's rootfs.
//! - [`container`]: namespaces, cgroups, pivot_root, processes.
//! - [`server`]: the request handlers, generic over the stream type.
//! - [`vsock`]: the guest transport; [`vsock::serve`] is what PID 1 calls.
//! - [`reaper`]: exit statuses of container processes (PID 1 reaps all).
//! - [`provision`]: a guest restored from a template snapshot gets its
//!   disks, address, clock and fresh entropy.
//! - [`build`]: builder mode, unpacking an image's layers into its rootfs
//!   disk inside a builder microVM.

pub mod build;
pub mod container;
pub mod netconf;
pub mod overlay;
pub mod provision;
pub mod reaper;
pub mod server;
pub mod vsock;
