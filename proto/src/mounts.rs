//! A container's mounts besides its image: bind mounts of guest paths
//! (volumes, the generated `/etc` files), tmpfs mounts (`--tmpfs`), and
//! whether its root file system is read-only (`--read-only`).

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent::{ProtocolError, Result};

/// At most this many tmpfs mounts per container.
pub const MAX_TMPFS: usize = 64;

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// Guest path.
    pub source: PathBuf,
    /// Path inside the container (scoped to its rootfs).
    pub destination: PathBuf,
    /// Mount read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// A tmpfs mount in the container (Docker's `--tmpfs PATH[:OPTIONS]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsMount {
    /// Absolute path inside the container.
    pub destination: PathBuf,
    /// Size limit in bytes (`size=`); the kernel's default (half the
    /// guest's memory) when unset.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// Permissions of its root directory (`mode=`, octal); 1777 when unset.
    #[serde(default)]
    pub mode: Option<u32>,
    /// Mount flags; Docker's default is none of them set (`noexec`,
    /// `nosuid`, `nodev`), read-write.
    #[serde(default)]
    pub allow: TmpfsAllow,
    /// Mounted read-only (`ro`).
    #[serde(default)]
    pub readonly: bool,
}

/// What a tmpfs mount allows that Docker's default does not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsAllow {
    /// Executables (`exec`).
    #[serde(default)]
    pub exec: bool,
    /// Set-user-id bits (`suid`).
    #[serde(default)]
    pub suid: bool,
    /// Device nodes (`dev`).
    #[serde(default)]
    pub dev: bool,
}

/// Checks a destination inside the container: absolute, not the root,
/// without `..`.
pub fn check_destination(what: &str, dest: &Path) -> Result<()> {
    let invalid = |why: &str| {
        Err(ProtocolError::Invalid {
            reason: format!("{what} destination {dest:?} {why}"),
        })
    };
    if !dest.is_absolute() {
        return invalid("is not absolute");
    }
    if dest.components().any(|c| c == Component::ParentDir) {
        return invalid("contains '..'");
    }
    if dest.components().all(|c| c == Component::RootDir) {
        return invalid("is the container's root");
    }
    Ok(())
}

/// Checks tmpfs mounts: at most [`MAX_TMPFS`], each destination valid and
/// given once, modes within 0o7777.
pub fn validate_tmpfs(mounts: &[TmpfsMount]) -> Result<()> {
    let invalid = |reason: String| Err(ProtocolError::Invalid { reason });
    if mounts.len() > MAX_TMPFS {
        return invalid(format!("more than {MAX_TMPFS} tmpfs mounts"));
    }
    for (i, m) in mounts.iter().enumerate() {
        check_destination("tmpfs", &m.destination)?;
        if m.mode.is_some_and(|mode| mode > 0o7777) {
            return invalid(format!("tmpfs mode {:o} is over 7777", m.mode.unwrap_or(0)));
        }
        if mounts
            .iter()
            .take(i)
            .any(|o| o.destination == m.destination)
        {
            return invalid(format!("tmpfs {:?} is given twice", m.destination));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfs(dest: &str) -> TmpfsMount {
        TmpfsMount {
            destination: dest.into(),
            ..Default::default()
        }
    }

    #[test]
    fn tmpfs_destinations_and_modes_are_checked() {
        assert!(validate_tmpfs(&[tmpfs("/tmp"), tmpfs("/run/x")]).is_ok());
        for (bad, why) in [
            ("tmp", "is not absolute"),
            ("/a/../etc", "contains '..'"),
            ("/", "is the container's root"),
        ] {
            let e = validate_tmpfs(&[tmpfs(bad)]).unwrap_err().to_string();
            assert!(e.ends_with(why), "{e}");
        }
        let e = validate_tmpfs(&[tmpfs("/tmp"), tmpfs("/tmp")]).unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
        let mode = TmpfsMount {
            mode: Some(0o17777),
            ..tmpfs("/tmp")
        };
        assert!(validate_tmpfs(&[mode]).is_err());
        let many: Vec<_> = (0..=MAX_TMPFS).map(|i| tmpfs(&format!("/t{i}"))).collect();
        assert!(validate_tmpfs(&many).is_err());
    }
}
