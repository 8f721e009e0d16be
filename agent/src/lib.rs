//! husk-agent as a library: the guest-side container runtime.
