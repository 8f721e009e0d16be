//! Reachability between the running members of user-defined networks
//! ([`super::networks`]): husk's chain `HUSK-NETS`, entered from
//! `HUSK-FORWARD` for container-to-container traffic before that chain's
//! drop, holds one `ACCEPT` per ordered pair of member addresses that share
//! a network. Source addresses are trustworthy here: `HUSK-SPOOF` has
//! already dropped a guest's packets with another address than its own.
//!
//! A container's rules are removed when it stops, and before it starts on
//! an address ([`join`] forgets the address first), so the rules a killed
//! supervisor left behind never give a later holder of the address its
//! predecessor's networks.

use std::net::Ipv4Addr;
use std::path::Path;

use super::firewall::FORWARD_CHAIN;
use super::nat::{iptables, list_rules, lock};

/// The chain of allowed member pairs.
pub const NETS_CHAIN: &str = "HUSK-NETS";

/// The jump into [`NETS_CHAIN`]: container to container only.
fn jump() -> [&'static str; 6] {
    ["-i", "husk+", "-o", "husk+", "-j", NETS_CHAIN]
}

/// The rule that lets `from` reach `to`.
fn pair(from: Ipv4Addr, to: Ipv4Addr) -> Vec<String> {
    vec![
        "-s".into(),
        format!("{from}/32"),
        "-d".into(),
        format!("{to}/32"),
        "-j".into(),
        "ACCEPT".into(),
    ]
}

fn ensure_chain() -> Result<(), String> {
    super::firewall::ensure_chain(NETS_CHAIN)?;
    let j = jump();
    if !iptables(&[&["-t", "filter", "-C", FORWARD_CHAIN][..], &j].concat())? {
        // Position 3: after the spoof check and the accepted replies, before
        // the drop of anything else towards a container.
        iptables(&[&["-t", "filter", "-I", FORWARD_CHAIN, "3"][..], &j].concat())?;
    }
    Ok(())
}

/// The rules of `HUSK-NETS` that name `ip`, as `-A` lines.
fn rules_of(ip: Ipv4Addr) -> Result<Vec<String>, String> {
    let host = format!("{ip}/32");
    Ok(list_rules("filter", NETS_CHAIN)?
        .into_iter()
        .filter(|l| l.starts_with("-A "))
        .filter(|l| l.split_whitespace().any(|w| w == host))
        .collect())
}

fn forget_locked(ip: Ipv4Addr) -> Result<(), String> {
    for line in rules_of(ip)? {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        iptables(&[&["-t", "filter", "-D"][..], &args].concat())?;
    }
    Ok(())
}

/// Removes every pair rule of `ip` (serialised by `<lock_dir>/nat.lock`).
pub fn forget(lock_dir: &Path, ip: Ipv4Addr) -> Result<(), String> {
    let _lock = lock(lock_dir)?;
    ensure_chain()?;
    forget_locked(ip)
}

/// Makes `ip`'s rules exactly: reach each of `peers` and be reached by
/// them.
pub fn join(lock_dir: &Path, ip: Ipv4Addr, peers: &[Ipv4Addr]) -> Result<(), String> {
    let _lock = lock(lock_dir)?;
    ensure_chain()?;
    forget_locked(ip)?;
    for p in peers.iter().filter(|p| **p != ip) {
        for rule in [pair(ip, *p), pair(*p, ip)] {
            let args: Vec<&str> = rule.iter().map(String::as_str).collect();
            iptables(&[&["-t", "filter", "-A", NETS_CHAIN][..], &args].concat())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::nat::tests::test_lock_dir;

    #[test]
    fn join_and_forget_keep_pairs_exact() {
        let dir = test_lock_dir();
        let (a, b, c) = (
            Ipv4Addr::new(10, 88, 250, 2),
            Ipv4Addr::new(10, 88, 250, 6),
            Ipv4Addr::new(10, 88, 250, 10),
        );
        join(&dir, a, &[b]).unwrap();
        join(&dir, c, &[a, b]).unwrap();
        assert_eq!(
            rules_of(a).unwrap().len(),
            4,
            "a-b both ways, a-c both ways"
        );
        assert_eq!(rules_of(c).unwrap().len(), 4);
        // Joining again replaces, never duplicates.
        join(&dir, c, &[a]).unwrap();
        assert_eq!(rules_of(c).unwrap().len(), 2);
        assert_eq!(rules_of(b).unwrap().len(), 2, "b keeps a only");
        for ip in [a, b, c] {
            forget(&dir, ip).unwrap();
            assert!(rules_of(ip).unwrap().is_empty());
        }
        let rules = list_rules("filter", FORWARD_CHAIN).unwrap();
        let want = format!("-A {FORWARD_CHAIN} {}", jump().join(" "));
        assert_eq!(rules.iter().filter(|l| **l == want).count(), 1);
    }
}
