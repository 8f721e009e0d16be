//! The microVM's configuration: one serde type read from `vm.json` and
//! filled from command-line flags, validated before anything is built.

use std::path::{Path, PathBuf};

pub use husk_proto::vm::{
    BlockConfig, Console, NetConfig, VmConfig, VsockConfig, DEFAULT_CMDLINE, MAX_CMDLINE_LEN,
    MAX_MEM_MIB, MAX_VCPUS, MIN_MEM_MIB,
};

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The JSON file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The JSON is malformed or has unknown fields.
    #[error("invalid config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// No kernel given.
    #[error("no kernel given (use --kernel or \"kernel\" in the config file)")]
    NoKernel,
    /// A path that must be a readable file is not.
    #[error("{what} {path}: {reason}")]
    BadFile {
        /// Which file ("kernel", "initrd").
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// vCPU count out of range.
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u32),
    /// Memory size out of range.
    #[error("mem_mib must be between {MIN_MEM_MIB} and {MAX_MEM_MIB}, got {0}")]
    Memory(u32),
    /// A device option is malformed.
    #[error("invalid {what} {value:?}: {reason}")]
    Device {
        /// "--disk" or "--vsock".
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Command line too long or containing a NUL.
    #[error(
        "kernel command line is {len} bytes long or has a NUL; the limit is {MAX_CMDLINE_LEN}"
    )]
    Cmdline {
        /// Its length.
        len: usize,
    },
}

/// Result alias for configuration.
pub type Result<T> = std::result::Result<T, ConfigError>;

/// Reading and checking a [`VmConfig`].
pub trait VmConfigExt: Sized {
    /// Reads a JSON config file.
    fn from_file(path: &Path) -> Result<Self>;
    /// Checks every value; the VMM builds nothing from an invalid config.
    fn validate(&self) -> Result<()>;
}

impl VmConfigExt for VmConfig {
    fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    fn validate(&self) -> Result<()> {
        let kernel = self.kernel.as_ref().ok_or(ConfigError::NoKernel)?;
        check_file("kernel", kernel)?;
        if let Some(initrd) = &self.initrd {
            check_file("initrd", initrd)?;
        }
        if self.vcpus == 0 || self.vcpus > u32::from(MAX_VCPUS) {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::Memory(self.mem_mib));
        }
        for d in &self.disks {
            check_disk(d)?;
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 {
                return Err(ConfigError::Device {
                    what: "vsock",
                    value: v.guest_cid.to_string(),
                    reason: "guest_cid must be 3 or more",
                });
            }
        }
        if self.cmdline.len() > MAX_CMDLINE_LEN || self.cmdline.contains('\0') {
            return Err(ConfigError::Cmdline {
                len: self.cmdline.len(),
            });
        }
        Ok(())
    }
}

fn check_disk(d: &BlockConfig) -> Result<()> {
    let bad = |reason: String| ConfigError::BadFile {
        what: "disk",
        path: d.path.clone(),
        reason,
    };
    let meta = std::fs::metadata(&d.path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() % 512 != 0 {
        return Err(bad(format!("size {} is not a multiple of 512", meta.len())));
    }
    if d.serial.as_ref().is_some_and(|s| s.len() > 20) {
        return Err(bad("serial longer than 20 bytes".into()));
    }
    Ok(())
}

/// Parses `--disk PATH[,ro][,serial=ID]`.
pub fn parse_disk(s: &str) -> std::result::Result<BlockConfig, String> {
    let mut parts = s.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("--disk needs a path")?;
    let mut cfg = BlockConfig {
        path: PathBuf::from(path),
        read_only: false,
        serial: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => cfg.read_only = true,
            None if opt == "rw" => cfg.read_only = false,
            Some(("serial", v)) => cfg.serial = Some(v.to_string()),
            _ => return Err(format!("unknown disk option {opt:?} (ro, rw, serial=ID)")),
        }
    }
    Ok(cfg)
}

/// Parses `--net tap=NAME[,mac=AA:BB:CC:DD:EE:FF]` (or just `NAME`).
pub fn parse_net(s: &str) -> std::result::Result<NetConfig, String> {
    let mut cfg = NetConfig {
        tap_name: None,
        mac: None,
    };
    for opt in s.split(',').filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            Some(("tap", v)) => cfg.tap_name = Some(v.to_string()),
            Some(("mac", v)) => {
                cfg.mac = Some(
                    husk_devices::virtio::net::device::parse_mac(v)
                        .ok_or_else(|| format!("invalid MAC address {v:?}"))?,
                )
            }
            None => cfg.tap_name = Some(opt.to_string()),
            _ => return Err(format!("unknown net option {opt:?} (tap=NAME, mac=MAC)")),
        }
    }
    if cfg.tap_name.as_ref().is_some_and(|n| n.len() > 15) {
        return Err("tap name longer than 15 bytes".into());
    }
    Ok(cfg)
}

/// Parses `--vsock CID,PATH`.
pub fn parse_vsock(s: &str) -> std::result::Result<VsockConfig, String> {
    let (cid, path) = s
        .split_once(',')
        .ok_or("--vsock takes CID,UNIX_SOCKET_PATH")?;
    let guest_cid = cid
        .parse::<u32>()
        .map_err(|_| format!("vsock CID {cid:?} is not a number"))?;
    if path.is_empty() {
        return Err("--vsock needs a Unix socket path".into());
    }
    Ok(VsockConfig {
        guest_cid,
        uds_path: PathBuf::from(path),
    })
}

fn check_file(what: &'static str, path: &Path) -> Result<()> {
    let bad = |reason: String| ConfigError::BadFile {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() == 0 {
        return Err(bad("file is empty".into()));
    }
    std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_kernel() -> (tempfile::NamedTempFile, VmConfig) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, b"\x7fELF").unwrap();
        let cfg = VmConfig {
            kernel: Some(f.path().to_path_buf()),
            ..VmConfig::default()
        };
        (f, cfg)
    }

    #[test]
    fn json_defaults_and_unknown_fields() {
        let cfg: VmConfig = serde_json::from_str(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!(cfg.vcpus, 1);
        assert_eq!(cfg.mem_mib, 256);
        assert_eq!(cfg.cmdline, DEFAULT_CMDLINE);
        assert_eq!(cfg.console, Console::Stdout);
        let err = serde_json::from_str::<VmConfig>(r#"{"kernel": "/k", "vcpu": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `vcpu`"), "{err}");
        let cfg: VmConfig =
            serde_json::from_str(r#"{"kernel": "/k", "console": {"file": "/tmp/c"}}"#).unwrap();
        assert_eq!(cfg.console, Console::File("/tmp/c".into()));
    }

    #[test]
    fn validate_rejects_bad_values() {
        let (_f, good) = with_kernel();
        good.validate().unwrap();
        let msg = |c: VmConfig| c.validate().unwrap_err().to_string();
        assert!(msg(VmConfig {
            vcpus: 0,
            ..good.clone()
        })
        .contains("vcpus"));
        assert!(msg(VmConfig {
            vcpus: 33,
            ..good.clone()
        })
        .contains("vcpus"));
        assert!(msg(VmConfig {
            mem_mib: 8,
            ..good.clone()
        })
        .contains("mem_mib"));
        assert!(msg(VmConfig {
            cmdline: "x".repeat(3000),
            ..good.clone()
        })
        .contains("command line"));
        let missing = msg(VmConfig {
            kernel: Some("/nonexistent/vmlinux".into()),
            ..good.clone()
        });
        assert!(
            missing.starts_with("kernel /nonexistent/vmlinux"),
            "{missing}"
        );
        assert!(msg(VmConfig {
            kernel: Some("/".into()),
            ..good.clone()
        })
        .contains("not a regular file"));
        assert!(msg(VmConfig {
            kernel: None,
            ..good
        })
        .contains("no kernel"));
    }

    #[test]
    fn device_flags() {
        let d = parse_disk("/a.img,ro,serial=x1").unwrap();
        assert_eq!(
            (d.path.to_str(), d.read_only, d.serial.as_deref()),
            (Some("/a.img"), true, Some("x1"))
        );
        assert!(parse_disk("").is_err());
        assert!(parse_disk("/a,bogus").is_err());
        let v = parse_vsock("3,/tmp/v.sock").unwrap();
        assert_eq!((v.guest_cid, v.uds_path.to_str()), (3, Some("/tmp/v.sock")));
        assert!(parse_vsock("x,/p").is_err());
        assert!(parse_vsock("3").is_err());
        let (_f, mut cfg) = with_kernel();
        cfg.vsock = Some(parse_vsock("2,/tmp/v").unwrap());
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("guest_cid"));
        cfg.vsock = None;
        let mut odd = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut odd, &[0; 100]).unwrap();
        cfg.disks = vec![parse_disk(odd.path().to_str().unwrap()).unwrap()];
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("multiple of 512"));
    }

    #[test]
    fn console_from_str() {
        assert_eq!("stdout".parse::<Console>().unwrap(), Console::Stdout);
        assert_eq!("off".parse::<Console>().unwrap(), Console::Off);
        assert_eq!(
            "file:/x".parse::<Console>().unwrap(),
            Console::File("/x".into())
        );
        assert!("file:".parse::<Console>().is_err());
        assert!("tty".parse::<Console>().is_err());
    }
}
