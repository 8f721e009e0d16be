//! husk-vmm: one KVM microVM per process.
//!
//! [`builder::build_microvm`] turns a validated [`config::VmConfig`] into a
//! [`vmm::Vmm`]; [`vmm::Vmm::run`] runs it until the guest powers off,
//! resets, faults, or a signal stops it.

pub mod arch;
pub mod builder;
pub mod bus;
pub mod config;
pub mod console;
pub mod device_manager;
pub mod events;
pub mod jail;
pub mod keyhold;
pub mod memory;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod vmm;
