//! VM-wide KVM state: the PIT, kvmclock and the in-kernel irqchip (PIC
//! master, PIC slave, IOAPIC). Saved PIT, clock, irqchips; restored in the
//! same order, after the VM's irqchip and PIT exist and before the vCPUs'
//! LAPICs are set.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// VM state errors: the failing KVM call is named.
#[derive(Debug, thiserror::Error)]
#[error("VM: {op} failed")]
pub struct VmStateError {
    /// The ioctl.
    pub op: &'static str,
    /// The cause.
    #[source]
    pub source: kvm_ioctls::Error,
}

/// The VM's in-kernel devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    /// The i8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
    /// The master 8259 PIC.
    pub pic_master: kvm_irqchip,
    /// The slave 8259 PIC.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError { op, source }
}

fn get_chip(vm: &VmFd, chip_id: u32, op: &'static str) -> Result<kvm_irqchip, VmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(kvm(op))?;
    Ok(chip)
}

/// Saves the VM state (vCPUs paused).
pub fn save(vm: &VmFd) -> Result<VmState, VmStateError> {
    let pit = vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?;
    let mut clock = vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?;
    // KVM_SET_CLOCK accepts no flags but KVM_CLOCK_REALTIME; the stable-TSC
    // flag is a property of the host it was read on.
    clock.flags &= !KVM_CLOCK_TSC_STABLE;
    Ok(VmState {
        pit,
        clock,
        pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (PIC master)")?,
        pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (PIC slave)")?,
        ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?,
    })
}

/// Loads `state` into a VM that has its irqchip and PIT.
pub fn restore(vm: &VmFd, state: &VmState) -> Result<(), VmStateError> {
    vm.set_pit2(&state.pit).map_err(kvm("KVM_SET_PIT2"))?;
    vm.set_clock(&state.clock).map_err(kvm("KVM_SET_CLOCK"))?;
    vm.set_irqchip(&state.pic_master)
        .map_err(kvm("KVM_SET_IRQCHIP (PIC master)"))?;
    vm.set_irqchip(&state.pic_slave)
        .map_err(kvm("KVM_SET_IRQCHIP (PIC slave)"))?;
    vm.set_irqchip(&state.ioapic)
        .map_err(kvm("KVM_SET_IRQCHIP (IOAPIC)"))?;
    Ok(())
}
