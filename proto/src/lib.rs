//! `husk-proto`: everything husk's host side and its guest must agree on,
//! in one place (as Kata's `protocols` crate).
//!
//! - [`agent`]: the control protocol between the host and `husk-agent`
//!   (requests, responses, the one [`agent::ProcessSpec`]); `PROTOCOL.md`
//!   beside this crate is its contract in prose.
//! - [`frame`]: the length-prefixed JSON frame every control message travels in.
//! - [`stdio`]: the one binary frame codec for streamed stdio, resizes,
//!   signals and exit statuses (the supervisor's control socket and the husk
//!   machine's control channel).
//! - [`boot`]: the guest's boot parameters, rendered to and parsed from the
//!   kernel command line.
//! - [`provision`]: what a guest restored from a template snapshot is given
//!   before its container is created (disks, network, clock, entropy).
//! - [`mounts`]: a container's bind and tmpfs mounts.
//! - [`security`]: the capabilities a container keeps, `no-new-privileges`.
//! - [`guest`]: guest paths, vsock ports and debug-port values.
//! - [`vm`]: the microVM configuration `husk-vmm` reads (`vm.json`) and the
//!   typed events it reports to its supervisor.
//! - [`error`]: how every husk binary prints an error (its whole chain on
//!   one line).

#![deny(missing_docs)]

pub mod agent;
pub mod boot;
pub mod error;
pub mod frame;
pub mod guest;
pub mod mounts;
pub mod provision;
pub mod security;
pub mod stdio;
pub mod vm;
