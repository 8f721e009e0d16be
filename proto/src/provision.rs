//! What a guest restored from a template snapshot gets before its
//! container is created ([`crate::agent::Request::Provision`]).
//!
//! A template is a guest booted with no disks, no address and no container,
//! then snapshotted; every microVM restored from it starts as the same
//! machine: the same clock reading, the same random state. The host
//! therefore sends, before anything of the container runs: fresh entropy
//! (the guest mixes it in and reseeds its generator, so two guests from one
//! template never share random numbers), the host's time, eth0's identity,
//! and the disks to mount (husk-vmm filled the template's empty disk slots;
//! the guest waits until it sees their new capacity).

use serde::{Deserialize, Serialize};

use crate::agent::ProtocolError;
use crate::boot::{DiskMount, GuestNet};

/// Fewest bytes of entropy a provision carries.
pub const MIN_ENTROPY: usize = 32;
/// Most bytes of entropy a provision carries.
pub const MAX_ENTROPY: usize = 512;
/// Most disks a provision mounts.
pub const MAX_DISKS: usize = 64;
/// Most name servers a provision sets.
pub const MAX_DNS: usize = 8;

/// eth0's identity in a restored guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionNet {
    /// The MAC address.
    pub mac: [u8; 6],
    /// Address, prefix, gateway and name servers.
    pub net: GuestNet,
}

/// Everything a restored guest is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provision {
    /// Fresh random bytes from the host.
    pub entropy: Vec<u8>,
    /// The host's time: nanoseconds since the Unix epoch.
    pub unix_time_ns: u64,
    /// eth0's identity; none leaves eth0 down.
    #[serde(default)]
    pub net: Option<ProvisionNet>,
    /// Disks to mount, in order.
    #[serde(default)]
    pub disks: Vec<DiskMount>,
}

impl Provision {
    /// Checks the bounds and shapes the guest relies on.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let invalid = |reason: String| Err(ProtocolError::Invalid { reason });
        if !(MIN_ENTROPY..=MAX_ENTROPY).contains(&self.entropy.len()) {
            return invalid(format!(
                "{} bytes of entropy, not {MIN_ENTROPY} to {MAX_ENTROPY}",
                self.entropy.len()
            ));
        }
        if self.disks.len() > MAX_DISKS {
            return invalid(format!("more than {MAX_DISKS} disks"));
        }
        for d in &self.disks {
            let device_ok = !d.device.is_empty()
                && d.device.len() <= 32
                && d.device.bytes().all(|b| b.is_ascii_alphanumeric());
            if !device_ok {
                return invalid(format!("disk device {:?} is not a device name", d.device));
            }
            if !d.path.starts_with('/') || d.path.split('/').any(|c| c == "..") {
                return invalid(format!("disk mount point {:?} is not absolute", d.path));
            }
        }
        if let Some(n) = &self.net {
            if n.net.prefix > 32 {
                return invalid(format!("prefix {} is over 32", n.net.prefix));
            }
            if n.net.dns.len() > MAX_DNS {
                return invalid(format!("more than {MAX_DNS} name servers"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provision() -> Provision {
        Provision {
            entropy: vec![7; 64],
            unix_time_ns: 1_800_000_000_000_000_000,
            net: Some(ProvisionNet {
                mac: [6, 0, 0, 0, 0, 1],
                net: GuestNet {
                    ip: "10.88.0.2".parse().unwrap(),
                    prefix: 30,
                    gateway: Some("10.88.0.1".parse().unwrap()),
                    dns: vec!["1.1.1.1".parse().unwrap()],
                },
            }),
            disks: vec![DiskMount {
                device: "vda".into(),
                path: "/husk/image".into(),
                read_only: true,
            }],
        }
    }

    #[test]
    fn a_provision_roundtrips_and_validates() {
        let p = provision();
        p.validate().unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Provision>(&json).unwrap(), p);
    }

    #[test]
    fn bad_provisions_are_refused() {
        let mut p = provision();
        p.entropy = vec![1; 8];
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("8 bytes of entropy"));
        let mut p = provision();
        p.disks[0].device = "../sda".into();
        assert!(p.validate().is_err());
        let mut p = provision();
        p.disks[0].path = "/husk/../etc".into();
        assert!(p.validate().is_err());
        let mut p = provision();
        if let Some(n) = p.net.as_mut() {
            n.net.prefix = 33;
        }
        assert!(p.validate().is_err());
        let mut p = provision();
        p.disks = vec![p.disks[0].clone(); MAX_DISKS + 1];
        assert!(p.validate().is_err());
    }
}
