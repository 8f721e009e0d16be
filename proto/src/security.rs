//! What a container's processes may do inside its microVM: the capability
//! set they keep (Docker's default set, tweaked by `--cap-add` and
//! `--cap-drop` as Docker does) and `no-new-privileges`.

use serde::{Deserialize, Serialize};

/// Linux capabilities by number (`CAP_` omitted), up to
/// `CAP_CHECKPOINT_RESTORE` (40).
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default capability set for a container.
pub const DOCKER_DEFAULT: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// A container's processes' privileges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// The capabilities they keep, bit N for capability N (the bounding
    /// set; the others are dropped before they run); `None` keeps all.
    #[serde(default)]
    pub capabilities: Option<u64>,
    /// `prctl(PR_SET_NO_NEW_PRIVS)`: set-user-id programs and file
    /// capabilities grant nothing.
    #[serde(default)]
    pub no_new_privileges: bool,
}

/// An unknown capability name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability: {0:?}")]
pub struct UnknownCapability(pub String);

/// A capability's number: `NET_ADMIN`, `CAP_NET_ADMIN`, any case.
pub fn capability(name: &str) -> Result<u32, UnknownCapability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITIES
        .iter()
        .position(|c| *c == bare)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| UnknownCapability(name.to_string()))
}

fn mask(names: &[&str]) -> Result<u64, UnknownCapability> {
    names
        .iter()
        .try_fold(0u64, |m, n| Ok(m | 1u64 << capability(n)?))
}

/// The names but `ALL`.
fn named(v: &[String]) -> Vec<&str> {
    v.iter()
        .map(String::as_str)
        .filter(|n| !is_all(n))
        .collect()
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// The set Docker gives for `--cap-add add --cap-drop drop`: with `ALL`
/// added, every capability but those dropped; with `ALL` dropped, only
/// those added; else the default set without those dropped, with those
/// added.
pub fn capability_set(add: &[String], drop: &[String]) -> Result<u64, UnknownCapability> {
    let (add_named, drop_named) = (mask(&named(add))?, mask(&named(drop))?);
    let all = (1u64 << CAPABILITIES.len()) - 1;
    Ok(if add.iter().any(|n| is_all(n)) {
        all & !drop_named
    } else if drop.iter().any(|n| is_all(n)) {
        add_named
    } else {
        (mask(&DOCKER_DEFAULT)? & !drop_named) | add_named
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn docker_semantics() {
        let default = capability_set(&[], &[]).unwrap();
        assert_eq!(default.count_ones(), 14);
        assert_eq!(default & (1 << 21), 0, "no SYS_ADMIN by default");
        let s = capability_set(&v(&["net_admin"]), &v(&["CAP_NET_RAW"])).unwrap();
        assert_eq!(s, (default | 1 << 12) & !(1 << 13));
        assert_eq!(capability_set(&[], &v(&["ALL"])).unwrap(), 0);
        assert_eq!(
            capability_set(&v(&["CHOWN"]), &v(&["all"])).unwrap(),
            1,
            "ALL dropped: only those added"
        );
        let all_but_admin = capability_set(&v(&["ALL"]), &v(&["SYS_ADMIN"])).unwrap();
        assert_eq!(all_but_admin.count_ones(), 40);
        assert_eq!(
            capability_set(&v(&["NET_TELEPATHY"]), &[])
                .unwrap_err()
                .to_string(),
            "unknown capability: \"NET_TELEPATHY\""
        );
    }
}
