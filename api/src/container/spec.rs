//! What a container was asked to be (`config.json`): written once by
//! `husk run`/`husk create`, read by its supervisor and by `inspect`.

use std::collections::BTreeMap;

use super::logs::LogConfig;
use super::restart::RestartPolicy;
use husk_proto::agent::{ProcessSpec, TmpfsMount};
use husk_proto::security::{self, Security, UnknownCapability};
use serde::{Deserialize, Serialize};

/// How the container reaches the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// A virtio-net interface with NAT to the outside and published ports.
    #[default]
    Default,
    /// Only loopback.
    None,
}

/// A user-defined network the container is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAttachment {
    /// The network's name.
    pub network: String,
    /// Extra names its members resolve the container by (besides its name
    /// and short id).
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// A named volume mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// Volume name.
    pub name: String,
    /// Absolute path in the container.
    pub destination: String,
    /// Mounted read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// A container's configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// 64-hex id.
    pub id: String,
    /// Name (unique).
    pub name: String,
    /// Creation time, RFC 3339.
    #[serde(default)]
    pub created: String,
    /// The image as the user named it.
    #[serde(default)]
    pub image: String,
    /// The image's manifest digest.
    #[serde(default)]
    pub image_digest: String,
    /// The process.
    #[serde(default)]
    pub process: ProcessSpec,
    /// Hostname.
    #[serde(default)]
    pub hostname: String,
    /// `-p` specifications as given.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Named volumes.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// Memory limit in bytes (`--memory`).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU limit in millicpus (`--cpus`).
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    /// Network mode.
    #[serde(default)]
    pub network: NetworkMode,
    /// Remove the container when it exits (`--rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// User labels (`--label`, the API's `Labels`); absent in configs
    /// written before labels existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// User-defined networks (with the default network's NAT besides).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachment>,
    /// The restart policy.
    #[serde(default, skip_serializing_if = "RestartPolicy::is_no")]
    pub restart: RestartPolicy,
    /// Boot the guest, never restore a template snapshot (`--no-snapshot`,
    /// `HUSK_SNAPSHOT=0`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cold_boot: bool,
    /// How much log it keeps (`--log-opt max-size=…`, `max-file=…`); the
    /// defaults in configs written before it existed.
    #[serde(default, skip_serializing_if = "LogConfig::is_default")]
    pub log: LogConfig,
    /// `--pids-limit`, `--read-only`, `--tmpfs`.
    #[serde(default, skip_serializing_if = "Restrictions::is_default")]
    pub restrictions: Restrictions,
}

/// What a container is held to beyond its memory and CPU limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restrictions {
    /// At most this many tasks in its cgroup (`--pids-limit`, `pids.max`).
    #[serde(default)]
    pub pids_limit: Option<u64>,
    /// Its root file system is read-only (`--read-only`); its volumes,
    /// tmpfs mounts and `/etc/hosts`-like files are not.
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// tmpfs mounts (`--tmpfs`).
    #[serde(default)]
    pub tmpfs: Vec<TmpfsMount>,
    /// `--cap-add`, as given.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// `--cap-drop`, as given.
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// `--security-opt no-new-privileges`.
    #[serde(default)]
    pub no_new_privileges: bool,
}

impl Restrictions {
    /// None asked for (Docker's defaults).
    pub fn is_default(&self) -> bool {
        *self == Restrictions::default()
    }

    /// What the container's processes keep: Docker's default capabilities
    /// with `cap_add` and `cap_drop` applied, and `no_new_privileges`.
    pub fn security(&self) -> Result<Security, UnknownCapability> {
        Ok(Security {
            capabilities: Some(security::capability_set(&self.cap_add, &self.cap_drop)?),
            no_new_privileges: self.no_new_privileges,
        })
    }

    /// Docker's `HostConfig.SecurityOpt`.
    pub fn security_opt(&self) -> Vec<&'static str> {
        if self.no_new_privileges {
            vec!["no-new-privileges"]
        } else {
            Vec::new()
        }
    }
}

/// A `--security-opt` (Docker's `HostConfig.SecurityOpt` entry) husk does
/// not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("husk cannot apply --security-opt {0:?}: only no-new-privileges (the microVM is the boundary: no seccomp, AppArmor or SELinux profile inside it)")]
pub struct UnsupportedSecurityOpt(pub String);

/// Parses `--security-opt` values: `no-new-privileges` (`:true`, `=true`,
/// `:false`); returns whether it is set.
pub fn parse_security_opts(opts: &[String]) -> Result<bool, UnsupportedSecurityOpt> {
    let mut nnp = false;
    for o in opts {
        let (key, value) = match o.split_once([':', '=']) {
            Some((k, v)) => (k, v),
            None => (o.as_str(), "true"),
        };
        match (key, value) {
            ("no-new-privileges", "true") => nnp = true,
            ("no-new-privileges", "false") => nnp = false,
            _ => return Err(UnsupportedSecurityOpt(o.clone())),
        }
    }
    Ok(nnp)
}

/// Guest memory for a container: its limit plus room for the guest kernel
/// and agent, or 512 MiB (only touched pages cost host memory).
pub fn vm_mem_mib(memory_bytes: Option<u64>) -> u32 {
    match memory_bytes {
        Some(b) => u32::try_from(b.div_ceil(1 << 20) + 128).unwrap_or(u32::MAX),
        None => 512,
    }
}

/// vCPUs for a container: enough for its CPU limit, capped at 32; without
/// one, 2, but never more than the host's CPUs less one, so that husk-vmm's
/// device thread and the host keep a CPU (on a 2-CPU host: 1 vCPU). That
/// also keeps nested hosts, such as the husk machine, responsive: a guest
/// whose vCPUs hold every CPU of an emulated host can stall it.
pub fn vm_vcpus(cpu_millis: Option<u64>) -> u32 {
    let host = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    default_vcpus(cpu_millis, u32::try_from(host).unwrap_or(32))
}

fn default_vcpus(cpu_millis: Option<u64>, host: u32) -> u32 {
    match cpu_millis {
        Some(m) => u32::try_from(m.div_ceil(1000)).unwrap_or(32).clamp(1, 32),
        None => host.saturating_sub(1).clamp(1, 2),
    }
}

/// Parses Docker's memory sizes: `512m`, `1g`, `1048576`, `100k`, `1.5g`.
pub fn parse_memory(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let v: f64 = num.parse().ok()?;
    if !v.is_finite() || v <= 0.0 {
        return None;
    }
    let bytes = v * mult as f64;
    // The range is checked first, so the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    (bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Parses `--cpus` (`1.5`) into millicpus.
pub fn parse_cpus(s: &str) -> Option<u64> {
    let v: f64 = s.trim().parse().ok()?;
    // At most 1,024,000: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    (v.is_finite() && v > 0.0 && v <= 1024.0).then(|| (v * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_memory("512m"), Some(512 << 20));
        assert_eq!(parse_memory("1g"), Some(1 << 30));
        assert_eq!(parse_memory("1GB"), Some(1 << 30));
        assert_eq!(parse_memory("1.5g"), Some(3 << 29));
        assert_eq!(parse_memory("4096"), Some(4096));
        assert_eq!(parse_memory("x"), None);
        assert_eq!(parse_memory("-1m"), None);
        assert_eq!(parse_cpus("1.5"), Some(1500));
        assert_eq!(parse_cpus("0"), None);
        assert_eq!(vm_vcpus(Some(1500)), 2);
        assert_eq!(vm_vcpus(Some(500)), 1);
        assert_eq!(default_vcpus(None, 1), 1);
        assert_eq!(default_vcpus(None, 2), 1);
        assert_eq!(default_vcpus(None, 3), 2);
        assert_eq!(default_vcpus(None, 64), 2);
        assert_eq!(default_vcpus(Some(100_000), 2), 32);
        assert_eq!(vm_mem_mib(Some(256 << 20)), 384);
    }

    #[test]
    fn configs_without_labels_still_load() {
        let old = r#"{"id":"ab","name":"web","auto_remove":true}"#;
        let c: ContainerConfig = serde_json::from_str(old).unwrap();
        assert!(c.labels.is_empty() && c.auto_remove);
        let mut c = c;
        c.labels.insert("app".into(), "web".into());
        let back: ContainerConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.labels["app"], "web");
        assert_eq!(back.log, LogConfig::default());
    }

    #[test]
    fn log_limits_are_kept() {
        let c = ContainerConfig {
            log: LogConfig {
                max_size: 10 << 20,
                max_file: 3,
            },
            ..ContainerConfig::default()
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.contains(r#""log":{"max_size":10485760,"max_file":3}"#),
            "{json}"
        );
        let back: ContainerConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back.log, c.log);
        let default = serde_json::to_string(&ContainerConfig::default()).unwrap();
        assert!(!default.contains("\"log\""), "{default}");
        let half = r#"{"id":"ab","name":"web","log":{"max_file":2}}"#;
        let c: ContainerConfig = serde_json::from_str(half).unwrap();
        assert_eq!((c.log.max_size, c.log.max_file), (20 << 20, 2));
    }

    #[test]
    fn security_opts() {
        let v = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!parse_security_opts(&[]).unwrap());
        for on in [
            "no-new-privileges",
            "no-new-privileges:true",
            "no-new-privileges=true",
        ] {
            assert!(parse_security_opts(&v(&[on])).unwrap(), "{on}");
        }
        assert!(
            !parse_security_opts(&v(&["no-new-privileges", "no-new-privileges:false"])).unwrap()
        );
        for bad in [
            "seccomp=unconfined",
            "label=disable",
            "no-new-privileges:maybe",
        ] {
            assert!(parse_security_opts(&v(&[bad])).is_err(), "{bad}");
        }
    }
}
