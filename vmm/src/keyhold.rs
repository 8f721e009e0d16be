//! `husk-vmm --hold-kvm-keys`: keeps one idle VM (in-kernel irqchip, one
//! vCPU that never runs) open until the process is killed.
//!
//! Why: KVM flips kernel static keys on the first and last VM of a host
//! (`preempt_notifier_key` at VM create/destroy, the LAPIC's
//! `apic_sw_disabled` at vCPU create/free), and each flip rewrites kernel
//! text with `text_poke_bp` (an int3 at the site, an IPI to every CPU, then
//! the new instruction). On a host that is itself emulated by QEMU's
//! multi-threaded TCG (the husk machine, the nested test host), a vCPU now
//! and then keeps executing a stale translation of the int3 after the other
//! CPU has written the new instruction: the kernel sees an int3 that is no
//! longer in memory, returns to it, and both CPUs loop there for ever (seen
//! in a wedged machine: both RIPs in `exc_int3`, the frame's RIP at a
//! patched jump in `__schedule`). With one VM held open for the host's
//! lifetime the keys never go back to zero, so starting and stopping
//! microVMs rewrites no kernel text at all.

use std::convert::Infallible;

use kvm_ioctls::Kvm;

/// Why the idle VM could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyHoldError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VM` failed.
    #[error("cannot create the idle VM: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_IRQCHIP` failed.
    #[error("cannot create the idle VM's irqchip: {0}")]
    Irqchip(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VCPU` failed.
    #[error("cannot create the idle VM's vCPU: {0}")]
    Vcpu(#[source] kvm_ioctls::Error),
}

/// The process's name while it holds the VM: `ps` and tests counting
/// `husk-vmm` processes see microVMs only.
const NAME: &[u8] = b"husk-kvm-hold\0";

/// Makes the idle VM and holds it until the process is killed.
pub fn hold() -> Result<Infallible, KeyHoldError> {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
    // bytes from a pointer valid for the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, NAME.as_ptr()) };
    let kvm = Kvm::new().map_err(KeyHoldError::OpenKvm)?;
    let vm = kvm.create_vm().map_err(KeyHoldError::CreateVm)?;
    // The irqchip first, so the vCPU gets an in-kernel LAPIC (a vCPU
    // without one flips yet another key, `kvm_has_noapic_vcpu`).
    vm.create_irq_chip().map_err(KeyHoldError::Irqchip)?;
    let _vcpu = vm.create_vcpu(0).map_err(KeyHoldError::Vcpu)?;
    log::info!("holding an idle VM so KVM rewrites no kernel text per microVM");
    loop {
        // park() may return spuriously; the VM and vCPU stay owned here.
        std::thread::park();
    }
}
