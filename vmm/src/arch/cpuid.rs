//! Per-vCPU CPUID: KVM's supported leaves (which include the KVM hypervisor
//! leaves at 0x4000_0000) with the hypervisor bit, APIC ids and topology
//! fixed for each vCPU, so an SMP guest sees one socket of `n` cores.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const ECX_TSC_DEADLINE: u32 = 1 << 24;

const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `n` APIC ids.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts KVM's supported CPUID for vCPU `cpu_index` of `cpu_count`.
pub fn filter_cpuid(entries: &mut [kvm_cpuid_entry2], cpu_index: u8, cpu_count: u8) {
    let id = u32::from(cpu_index);
    let count = u32::from(cpu_count);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: [31:24] initial APIC id, [23:16] logical processors,
                // [15:8] CLFLUSH line size in 8-byte units.
                e.ebx = (id << 24) | (count << 16) | (8 << 8);
                e.ecx |= ECX_HYPERVISOR;
                // The in-kernel LAPIC supports the TSC deadline timer.
                e.ecx |= ECX_TSC_DEADLINE;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1; [25:14]: threads sharing
                // the cache - 1 (core-private below L3, package-wide at L3).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 {
                    count.saturating_sub(1)
                } else {
                    0
                };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | (count.saturating_sub(1) << 26);
            }
            LEAF_EXT_TOPOLOGY => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = id_bits(count);
                        e.ebx = count;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_AMD_SIZE_IDS => {
                // ECX[15:12]: APIC id bits for cores; [7:0]: cores - 1.
                e.ecx = (id_bits(count) << 12) | count.saturating_sub(1);
            }
            LEAF_AMD_EXT_APIC => {
                // EAX: extended APIC id; EBX[7:0]: core id, [15:8]: threads
                // per core - 1; ECX: node id 0, one node.
                e.eax = id;
                e.ebx = id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

/// Whether the set has KVM's hypervisor signature leaf ("KVMKVMKVM").
pub fn has_kvm_signature(entries: &[kvm_cpuid_entry2]) -> bool {
    entries.iter().any(|e| {
        e.function == LEAF_HYPERVISOR
            && e.ebx == u32::from_le_bytes(*b"KVMK")
            && e.ecx == u32::from_le_bytes(*b"VMKV")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_topology() {
        let mut e = vec![
            leaf(LEAF_FEATURES, 0),
            leaf(LEAF_EXT_TOPOLOGY, 0),
            leaf(LEAF_EXT_TOPOLOGY, 1),
            leaf(LEAF_EXT_TOPOLOGY, 2),
            leaf(LEAF_AMD_SIZE_IDS, 0),
        ];
        filter_cpuid(&mut e, 2, 3);
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 3);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].edx, e[1].ebx), (2, 1));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx >> 8), (2, 3, LEVEL_TYPE_CORE));
        assert_eq!(e[3].ebx, 0);
        assert_eq!(e[4].ecx & 0xff, 2);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 64].map(id_bits), [0, 1, 2, 2, 3, 6]);
    }
}
