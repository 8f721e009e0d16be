//! The contract between a container's supervisor and its `husk-vmm`: the
//! microVM configuration (`vm.json`, read with `husk-vmm --config`) and the
//! typed events husk-vmm reports on its event descriptor (`--events-fd`),
//! one JSON object per line. The supervisor learns the boot marker and a
//! failure's reason from these events, never from log text.
//!
//! The same [`VmConfig`] is what a snapshot of the VM records.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Most vCPUs a husk microVM supports (the MP table must fit the 1 KiB EBDA).
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest memory that boots the guest kernel.
pub const MIN_MEM_MIB: u32 = 32;
/// Largest guest memory (1 TiB).
pub const MAX_MEM_MIB: u32 = 1 << 20;
/// Longest kernel command line the x86 boot protocol accepts (bytes, without NUL).
pub const MAX_CMDLINE_LEN: usize = 2047;
/// The kernel command line husk uses when none is given; the boot
/// parameters ([`crate::boot::BootParams`]) go after it.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Console {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Discarded.
    Off,
    /// Appended to a file.
    File(PathBuf),
}

impl std::str::FromStr for Console {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(Console::Stdout),
            "off" | "none" => Ok(Console::Off),
            "" => Err("console must be stdout, off or file:PATH".into()),
            other => match other.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Console::File(PathBuf::from(p))),
                _ => Err(format!(
                    "console must be stdout, off or file:PATH, got {other:?}"
                )),
            },
        }
    }
}

/// A disk's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Attach read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Serial returned by GET_ID (20 bytes at most); default: the file name.
    #[serde(default)]
    pub serial: Option<String>,
}

/// A network interface's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// TAP to open (created if missing); none lets the kernel pick `tapN`.
    #[serde(default)]
    pub tap_name: Option<String>,
    /// The guest's MAC address; default: a locally administered one.
    #[serde(default)]
    pub mac: Option<[u8; 6]>,
}

/// A vsock device's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// Host Unix socket: host processes connect here with `CONNECT <port>`;
    /// guest connections to host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// A microVM: kernel, initramfs, command line, vCPUs, memory, console and
/// devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an ELF `vmlinux` (PVH or 64-bit entry) or a `bzImage`.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Initramfs (cpio, optionally compressed) loaded beside the kernel.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; husk-vmm appends its device announcements to it.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Number of vCPUs (1..=32).
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Guest memory in MiB.
    #[serde(default = "default_mem_mib")]
    pub mem_mib: u32,
    /// Serial console destination.
    #[serde(default)]
    pub console: Console,
    /// Enter an ELF kernel through its PVH entry when it has one (else the
    /// 64-bit Linux boot protocol entry).
    #[serde(default = "default_pvh")]
    pub pvh: bool,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    #[serde(default)]
    pub disks: Vec<BlockConfig>,
    /// virtio-net interfaces (eth0, eth1, ...), each on a host TAP.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// The virtio-vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}
fn default_vcpus() -> u32 {
    1
}
fn default_mem_mib() -> u32 {
    256
}
fn default_pvh() -> bool {
    true
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: None,
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: default_vcpus(),
            mem_mib: default_mem_mib(),
            console: Console::default(),
            pvh: true,
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
        }
    }
}

/// What husk-vmm reports to its supervisor, one JSON object per line on
/// its event descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum VmmEvent {
    /// The guest wrote the boot marker (its init started).
    BootMarker {
        /// Milliseconds since husk-vmm started.
        ms: f64,
    },
    /// husk-vmm could not build or run the VM; it exits with status 1.
    Failed {
        /// The error and its causes on one line.
        message: String,
    },
    /// The VM ended.
    Stopped {
        /// Why: `power_off`, `reset`, `triple_fault: WHERE`, `vcpu_failure: ...`,
        /// `signal N`.
        reason: String,
    },
}

/// The longest event line a supervisor reads (longer ones are cut).
pub const MAX_EVENT_LINE: usize = 8 << 10;

impl VmmEvent {
    /// The event as one line of JSON, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"));
        s.push('\n');
        s
    }

    /// Parses one event line.
    pub fn from_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_json_shape() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","disks":[{"path":"/d,with comma:and colon","read_only":true}],
               "nets":[{"tap_name":"tap0","mac":[6,0,0,0,0,1]}],
               "vsock":{"guest_cid":3,"uds_path":"/a b/v.sock"},"console":{"file":"/c.log"}}"#,
        )
        .unwrap();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.disks[0].path, PathBuf::from("/d,with comma:and colon"));
        assert_eq!(c.console, Console::File("/c.log".into()));
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<VmConfig>(r#"{"bogus":1}"#).is_err());
    }

    #[test]
    fn events_roundtrip_as_lines() {
        for e in [
            VmmEvent::BootMarker { ms: 1520.5 },
            VmmEvent::Failed {
                message: "cannot open /dev/kvm: No such file or directory".into(),
            },
            VmmEvent::Stopped {
                reason: "power_off".into(),
            },
        ] {
            let line = e.to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(VmmEvent::from_line(&line).unwrap(), e);
        }
        assert_eq!(
            VmmEvent::BootMarker { ms: 3.0 }.to_line(),
            "{\"event\":\"boot_marker\",\"ms\":3.0}\n"
        );
    }

    #[test]
    fn console_parse() {
        assert_eq!("off".parse::<Console>().unwrap(), Console::Off);
        assert_eq!(
            "file:/x".parse::<Console>().unwrap(),
            Console::File("/x".into())
        );
        assert!("file:".parse::<Console>().is_err());
    }
}
