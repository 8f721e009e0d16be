//! Skipping the firewall's rule checks when nothing changed. Ensuring
//! husk's rules checks each with `iptables -C`, one process per rule
//! (about 50 ms each in the husk machine, most of a restored container's
//! start). Once they were ensured, what `iptables -S` printed for husk's
//! chains and the jumps into them is kept with the rules that were checked
//! (`<net dir>/firewall.verified`). A later start whose rules are all among
//! those, and whose listing (one `iptables -S`) is the same line for line,
//! needs no check; any change behind husk's back (a rule deleted, a chain
//! flushed, another DNS server, another slot) makes it check every rule of
//! its own again.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::io_cause;

/// The file, in the net directory.
const FILE: &str = "firewall.verified";

/// Rules known to be in place, and the listing they were seen in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verified {
    /// Each rule as `CHAIN ARGS...`.
    pub rules: BTreeSet<String>,
    /// husk's lines of `iptables -S` right after they were ensured.
    pub listing: Vec<String>,
}

impl Verified {
    /// The rules known after `wanted` were ensured: those of `known` (seen
    /// with the listing unchanged: ensuring only adds) and `wanted`.
    pub fn extended(known: Option<Self>, wanted: &[String]) -> BTreeSet<String> {
        let mut rules = known.map(|k| k.rules).unwrap_or_default();
        rules.extend(wanted.iter().cloned());
        rules
    }
}

/// A rule as the verified set holds it.
pub fn key(chain: &str, args: &[String]) -> String {
    format!("{chain} {}", args.join(" "))
}

/// husk's lines of the filter table's `iptables -S`: its chains, their
/// rules, and the jumps into them from INPUT and FORWARD.
pub fn listing() -> Result<Vec<String>, String> {
    let bin = super::nat::iptables_path().ok_or("iptables not found")?;
    let out = Command::new(&bin)
        .args(["-w", "-t", "filter", "-S"])
        .output()
        .map_err(|e| format!("{}: {}", bin.display(), io_cause(&e)))?;
    if !out.status.success() {
        return Err(format!(
            "iptables -S: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(husk_lines(&String::from_utf8_lossy(&out.stdout)))
}

/// The lines of an `iptables -S` listing that are husk's.
pub fn husk_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("-N HUSK-")
                || l.starts_with("-A HUSK-")
                || (l.starts_with("-A INPUT ") || l.starts_with("-A FORWARD "))
                    && l.contains(" -j HUSK-")
        })
        .map(String::from)
        .collect()
}

/// What `dir` holds, if it was seen with `listing` (nothing when absent,
/// unreadable or seen with another listing: every rule is checked then).
pub fn load(dir: &Path, listing: &[String]) -> Option<Verified> {
    let text = fs::read(dir.join(FILE)).ok()?;
    serde_json::from_slice::<Verified>(&text)
        .ok()
        .filter(|v| v.listing == listing)
}

/// Keeps `v` in `dir` (written whole, then renamed).
pub fn store(dir: &Path, v: &Verified) -> Result<(), String> {
    let path = dir.join(FILE);
    let tmp = dir.join(format!(".{FILE}.tmp"));
    let json = serde_json::to_vec(v).map_err(|e| e.to_string())?;
    fs::write(&tmp, json)
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| format!("{}: {}", path.display(), io_cause(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "-P INPUT ACCEPT\n-N HUSK-INPUT\n-N DOCKER\n\
        -A INPUT -i husk+ -j HUSK-INPUT\n-A INPUT -j DOCKER\n\
        -A HUSK-INPUT -j DROP\n-A FORWARD -o docker0 -j ACCEPT\n";

    #[test]
    fn only_husks_lines_count() {
        assert_eq!(
            husk_lines(LISTING),
            [
                "-N HUSK-INPUT",
                "-A INPUT -i husk+ -j HUSK-INPUT",
                "-A HUSK-INPUT -j DROP"
            ]
        );
    }

    #[test]
    fn known_rules_are_kept_only_while_nothing_changed() {
        let dir = tempfile::tempdir().unwrap();
        let wanted = vec![key("HUSK-INPUT", &["-j".into(), "DROP".into()])];
        let listing = husk_lines(LISTING);
        let v = Verified {
            rules: Verified::extended(None, &wanted),
            listing: listing.clone(),
        };
        store(dir.path(), &v).unwrap();
        let more = vec!["HUSK-SPOOF -i husk1 -j DROP".to_string()];
        // After ensuring `more` with the listing unchanged, both are known;
        // with it changed, only `more`.
        let known = load(dir.path(), &listing);
        assert_eq!(Verified::extended(known, &more).len(), 2);
        let mut changed = listing.clone();
        changed.pop();
        let known = load(dir.path(), &changed);
        assert_eq!(Verified::extended(known, &more).len(), 1);
    }

    #[test]
    fn stored_and_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let listing = vec!["-N HUSK-X".to_string()];
        assert_eq!(load(dir.path(), &listing), None);
        let v = Verified {
            rules: ["A -j B".to_string()].into(),
            listing: listing.clone(),
        };
        store(dir.path(), &v).unwrap();
        assert_eq!(load(dir.path(), &listing), Some(v));
        assert_eq!(load(dir.path(), &[]), None);
        fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert_eq!(load(dir.path(), &listing), None);
    }
}
