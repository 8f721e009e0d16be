//! Per-vCPU KVM state, saved and restored in the order Firecracker
//! documents (its `arch/x86_64/vcpu.rs`): the getters start with
//! `KVM_GET_MP_STATE` (it may change LAPIC state) and end with
//! `KVM_GET_VCPU_EVENTS`; the setters start with CPUID, put SREGS before
//! the LAPIC (SREGS carries the APIC base), the LAPIC before the MSRs (the
//! TSC deadline needs it), and the vCPU events last (SET_REGS clears
//! pending exceptions that the events bring back).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

/// IA32_TSC: restored before anything that depends on it.
const MSR_IA32_TSC: u32 = 0x10;
/// IA32_TSC_DEADLINE: restored after IA32_TSC and the LAPIC.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// A TSC frequency within this many parts per million needs no scaling.
const TSC_KHZ_TOLERANCE_PPM: i64 = 250;

/// vCPU state errors: the failing KVM call is named.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {index}: {op} failed")]
    Kvm {
        /// vCPU index.
        index: u8,
        /// The ioctl.
        op: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM set fewer MSRs than given.
    #[error("vCPU {index}: KVM_SET_MSRS set {set} of {total} MSRs (first refused: {first:#x})")]
    MsrsIncomplete {
        /// vCPU index.
        index: u8,
        /// MSRs set.
        set: usize,
        /// MSRs given.
        total: usize,
        /// The first one KVM refused.
        first: u32,
    },
    /// The vCPU was running when its state was asked for.
    #[error("vCPU {index} is running; pause the VM first")]
    NotPaused {
        /// vCPU index.
        index: u8,
    },
    /// A saved list (CPUID, MSRs) is longer than KVM accepts.
    #[error("vCPU {index}: saved {what} list is too long")]
    TooLong {
        /// vCPU index.
        index: u8,
        /// "CPUID" or "MSR".
        what: &'static str,
    },
}

/// Everything KVM holds for one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index (its APIC id).
    pub index: u8,
    /// KVM_GET_MP_STATE.
    pub mp_state: kvm_mp_state,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX state (legacy 4 KiB XSAVE area).
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// TSC frequency in kHz, if KVM reports it.
    pub tsc_khz: Option<u32>,
    /// The CPUID the vCPU was given.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// MSRs KVM can save, in restore order (TSC deadline last).
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, SMM state.
    pub vcpu_events: kvm_vcpu_events,
}

fn kvm(index: u8, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Kvm { index, op, source }
}

/// The MSRs worth saving: every index KVM lists (IA32_TSC_DEADLINE moved
/// to the end).
pub fn msrs_to_save(kvm_sys: &Kvm) -> Result<Vec<u32>, kvm_ioctls::Error> {
    let list = kvm_sys.get_msr_index_list()?;
    let mut v: Vec<u32> = list
        .as_slice()
        .iter()
        .copied()
        .filter(|i| *i != MSR_IA32_TSC_DEADLINE)
        .collect();
    if list.as_slice().contains(&MSR_IA32_TSC_DEADLINE) {
        v.push(MSR_IA32_TSC_DEADLINE);
    }
    Ok(v)
}

/// Reads `indices`; MSRs KVM lists but refuses to read are skipped (and
/// logged) rather than failing the snapshot.
fn get_msrs(fd: &VcpuFd, index: u8, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let n = rest.len().min(kvm_bindings::KVM_MAX_MSR_ENTRIES);
        let entries: Vec<kvm_msr_entry> = rest[..n]
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|_| VcpuStateError::TooLong { index, what: "MSR" })?;
        let got = fd.get_msrs(&mut msrs).map_err(kvm(index, "KVM_GET_MSRS"))?;
        out.extend_from_slice(msrs.as_slice().get(..got).unwrap_or_default());
        if got < n {
            log::debug!("vCPU {index}: MSR {:#x} not readable, skipped", rest[got]);
            rest = &rest[got + 1..];
        } else {
            rest = &rest[n..];
        }
    }
    fix_zero_tsc_deadline(&mut out);
    Ok(out)
}

/// A zero TSC deadline with a timer pending would never fire after restore;
/// set it to the TSC so it fires at once (as Firecracker does).
fn fix_zero_tsc_deadline(msrs: &mut [kvm_msr_entry]) {
    let Some(tsc) = msrs
        .iter()
        .find(|m| m.index == MSR_IA32_TSC)
        .map(|m| m.data)
    else {
        return;
    };
    for m in msrs.iter_mut() {
        if m.index == MSR_IA32_TSC_DEADLINE && m.data == 0 {
            m.data = tsc;
        }
    }
}

/// Saves the state of a paused vCPU (`index` names it in errors).
pub fn save(fd: &VcpuFd, index: u8, msr_indices: &[u32]) -> Result<VcpuState, VcpuStateError> {
    let mp_state = fd.get_mp_state().map_err(kvm(index, "KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(kvm(index, "KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(kvm(index, "KVM_GET_SREGS"))?;
    let xsave = fd.get_xsave().map_err(kvm(index, "KVM_GET_XSAVE"))?;
    let xcrs = fd.get_xcrs().map_err(kvm(index, "KVM_GET_XCRS"))?;
    let debug_regs = fd
        .get_debug_regs()
        .map_err(kvm(index, "KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(kvm(index, "KVM_GET_LAPIC"))?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm(index, "KVM_GET_CPUID2"))?
        .as_slice()
        .to_vec();
    let msrs = get_msrs(fd, index, msr_indices)?;
    let vcpu_events = fd
        .get_vcpu_events()
        .map_err(kvm(index, "KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        index,
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        tsc_khz,
        cpuid,
        msrs,
        vcpu_events,
    })
}

/// Whether the saved TSC frequency differs from this vCPU's beyond the
/// calibration tolerance.
fn tsc_needs_scaling(fd: &VcpuFd, saved_khz: u32) -> bool {
    match fd.get_tsc_khz() {
        Ok(now) => {
            let diff = (i64::from(now) - i64::from(saved_khz)).abs();
            diff * 1_000_000 > i64::from(saved_khz) * TSC_KHZ_TOLERANCE_PPM
        }
        Err(_) => false,
    }
}

/// TR's type: an available 64-bit TSS.
const TSS_AVAILABLE: u8 = 9;
/// TR's type: a busy 64-bit TSS.
const TSS_BUSY: u8 = 11;

/// The special registers to load on this host. KVM on AMD (SVM) reports
/// TR as busy whatever the guest loaded, because AMD CPUs do not keep the
/// busy flag in TR's hidden state; an emulated SVM CPU (QEMU's TCG, as in
/// the nested test host and the husk machine) then refuses every I/O
/// permission check against that TSS, so after a restore a user-space
/// `out` that `ioperm` allowed (husk-agent's power-off) raised #GP. On AMD
/// hosts TR goes back as the available TSS the guest's `ltr` loaded;
/// Intel's VM entry requires the busy type, so it stays there.
fn sregs_for_host(saved: &kvm_sregs, amd: bool) -> kvm_sregs {
    let mut sregs = *saved;
    if amd && sregs.tr.type_ == TSS_BUSY {
        sregs.tr.type_ = TSS_AVAILABLE;
    }
    sregs
}

/// Whether this host's CPU is AMD's (CPUID vendor `AuthenticAMD`).
fn host_is_amd() -> bool {
    let id = std::arch::x86_64::__cpuid(0);
    [id.ebx, id.edx, id.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .eq(*b"AuthenticAMD")
}

/// Loads `state` into a freshly created vCPU.
pub fn restore(fd: &VcpuFd, state: &VcpuState) -> Result<(), VcpuStateError> {
    let index = state.index;
    if let Some(khz) = state.tsc_khz.filter(|k| tsc_needs_scaling(fd, *k)) {
        fd.set_tsc_khz(khz).map_err(kvm(index, "KVM_SET_TSC_KHZ"))?;
    }
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| VcpuStateError::TooLong {
        index,
        what: "CPUID",
    })?;
    fd.set_cpuid2(&cpuid)
        .map_err(kvm(index, "KVM_SET_CPUID2"))?;
    fd.set_mp_state(state.mp_state)
        .map_err(kvm(index, "KVM_SET_MP_STATE"))?;
    fd.set_regs(&state.regs)
        .map_err(kvm(index, "KVM_SET_REGS"))?;
    fd.set_sregs(&sregs_for_host(&state.sregs, host_is_amd()))
        .map_err(kvm(index, "KVM_SET_SREGS"))?;
    // SAFETY: `state.xsave` is a whole `kvm_xsave` (the legacy 4 KiB area
    // KVM_GET_XSAVE filled), so KVM reads only memory we own.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(kvm(index, "KVM_SET_XSAVE"))?;
    fd.set_xcrs(&state.xcrs)
        .map_err(kvm(index, "KVM_SET_XCRS"))?;
    fd.set_debug_regs(&state.debug_regs)
        .map_err(kvm(index, "KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&state.lapic)
        .map_err(kvm(index, "KVM_SET_LAPIC"))?;
    set_msrs(fd, index, &state.msrs)?;
    fd.set_vcpu_events(&state.vcpu_events)
        .map_err(kvm(index, "KVM_SET_VCPU_EVENTS"))?;
    // Tell a kvmclock guest it was stopped, so its watchdogs do not fire;
    // KVM refuses this when the guest has no kvmclock, which is fine.
    if let Err(e) = fd.kvmclock_ctrl() {
        log::debug!("vCPU {index}: KVM_KVMCLOCK_CTRL: {e}");
    }
    Ok(())
}

fn set_msrs(fd: &VcpuFd, index: u8, entries: &[kvm_msr_entry]) -> Result<(), VcpuStateError> {
    for chunk in entries.chunks(kvm_bindings::KVM_MAX_MSR_ENTRIES) {
        let msrs = Msrs::from_entries(chunk)
            .map_err(|_| VcpuStateError::TooLong { index, what: "MSR" })?;
        let set = fd.set_msrs(&msrs).map_err(kvm(index, "KVM_SET_MSRS"))?;
        if set < chunk.len() {
            return Err(VcpuStateError::MsrsIncomplete {
                index,
                set,
                total: chunk.len(),
                first: chunk.get(set).map_or(0, |m| m.index),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tr_goes_back_available_on_amd_only() {
        let mut saved = kvm_sregs::default();
        saved.tr.type_ = TSS_BUSY;
        saved.tr.base = 0xffff_fe00_0000_3000;
        let amd = sregs_for_host(&saved, true);
        assert_eq!(amd.tr.type_, TSS_AVAILABLE);
        assert_eq!(amd.tr.base, saved.tr.base);
        assert_eq!(sregs_for_host(&saved, false).tr.type_, TSS_BUSY);
        let vendor = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        assert_eq!(host_is_amd(), vendor.contains("AuthenticAMD"));
    }

    #[test]
    fn zero_tsc_deadline_takes_the_tsc() {
        let e = |index, data| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        };
        let mut m = vec![e(MSR_IA32_TSC, 1234), e(MSR_IA32_TSC_DEADLINE, 0)];
        fix_zero_tsc_deadline(&mut m);
        assert_eq!(m[1].data, 1234);
        let mut m = vec![e(MSR_IA32_TSC, 1234), e(MSR_IA32_TSC_DEADLINE, 99)];
        fix_zero_tsc_deadline(&mut m);
        assert_eq!(m[1].data, 99);
    }
}
