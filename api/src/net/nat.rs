//! The host's NAT and forwarding rules for 10.88.0.0/16, set with the
//! `iptables` command.
//!
//! Why iptables: it is what Docker uses, Debian 12 installs it by default
//! (`/usr/sbin/iptables`, the nf_tables flavour via alternatives, so rules
//! land in the same ruleset as Docker's and firewalld's), and its `-C`
//! check makes the rules idempotent. `nft` is not installed by default, and
//! speaking nf_tables netlink directly would need libnftnl or a hand-written
//! encoder. `HUSK_IPTABLES` names another binary (e.g. iptables-legacy).
//!
//! The rule, added once (checked with `-C` under a lock file, so
//! concurrent supervisors do not add it twice) and never removed (it is
//! shared by all containers and matches nothing when none runs):
//! `-t nat POSTROUTING -s 10.88.0.0/16 ! -d 10.88.0.0/16 -j MASQUERADE`.
//! What a container may reach is [`super::firewall`]'s.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};

use super::io_cause;

/// The masquerade rule's arguments after `-t nat -X POSTROUTING`.
pub const MASQUERADE: &[&str] = &[
    "-s",
    "10.88.0.0/16",
    "!",
    "-d",
    "10.88.0.0/16",
    "-j",
    "MASQUERADE",
];
/// The iptables binary: `$HUSK_IPTABLES`, else the first of
/// /usr/sbin/iptables, /sbin/iptables, /usr/bin/iptables that exists.
pub fn iptables_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HUSK_IPTABLES") {
        return Some(PathBuf::from(p));
    }
    ["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Runs iptables with `args`; Ok(true) on success, Ok(false) on a failed
/// `-C` check (exit status 1), Err with iptables' message otherwise.
pub(crate) fn iptables(args: &[&str]) -> Result<bool, String> {
    let bin = iptables_path().ok_or("iptables not found (install the iptables package)")?;
    let out = Command::new(&bin)
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("{}: {}", bin.display(), io_cause(&e)))?;
    if out.status.success() {
        return Ok(true);
    }
    let is_check = args.contains(&"-C");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if is_check && out.status.code() == Some(1) && stderr.contains("does a matching rule exist") {
        return Ok(false);
    }
    let msg = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("failed")
        .to_string();
    Err(format!("iptables {}: {msg}", args.join(" ")))
}

/// Adds `rule` to `table`/`chain` unless it is there (`-A` or `-I`).
pub(super) fn ensure(table: &str, chain: &str, add: &str, rule: &[&str]) -> Result<(), String> {
    let check = [&["-t", table, "-C", chain][..], rule].concat();
    if iptables(&check)? {
        return Ok(());
    }
    iptables(&[&["-t", table, add, chain][..], rule].concat()).map(|_| ())
}

/// Ensures the masquerade rule exists, serialised by `<lock_dir>/nat.lock`.
pub fn ensure_rules(lock_dir: &Path) -> Result<(), String> {
    let _lock = lock(lock_dir)?;
    ensure("nat", "POSTROUTING", "-A", MASQUERADE)
}

pub(super) fn lock(dir: &Path) -> Result<Flock<File>, String> {
    let path = dir.join("nat.lock");
    let fail = |e: std::io::Error| format!("{}: {}", path.display(), io_cause(&e));
    fs::create_dir_all(dir).map_err(fail)?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(fail)?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| fail(e.into()))
}

/// The rules of `chain` in `table`, as `iptables -S` prints them.
pub(crate) fn list_rules(table: &str, chain: &str) -> Result<Vec<String>, String> {
    let bin = iptables_path().ok_or("iptables not found")?;
    let out = Command::new(&bin)
        .args(["-w", "-t", table, "-S", chain])
        .output()
        .map_err(|e| format!("{}: {}", bin.display(), io_cause(&e)))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect())
}

/// How many copies of the masquerade rule the nat table holds.
pub fn count_masquerade_rules() -> Result<usize, String> {
    let want = format!("-A POSTROUTING {}", MASQUERADE.join(" "));
    Ok(list_rules("nat", "POSTROUTING")?
        .iter()
        .filter(|l| **l == want)
        .count())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The lock directory every test that touches the rules shares (real
    /// supervisors share the data directory's net/).
    pub(crate) fn test_lock_dir() -> PathBuf {
        std::env::temp_dir().join("husk-net-tests")
    }

    #[test]
    fn rules_are_added_once() {
        ensure_rules(&test_lock_dir()).unwrap();
        ensure_rules(&test_lock_dir()).unwrap();
        assert_eq!(count_masquerade_rules().unwrap(), 1);
    }

    #[test]
    fn iptables_errors_are_one_line() {
        let err = iptables(&["-t", "nosuchtable", "-S"]).unwrap_err();
        assert!(err.starts_with("iptables -t nosuchtable -S: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
