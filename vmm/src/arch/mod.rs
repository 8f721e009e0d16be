//! x86_64 specifics: boot vCPU state, CPUID, the MP table and kernel loading.

pub mod boot;
pub mod cpuid;
pub mod mptable;
pub mod regs;
