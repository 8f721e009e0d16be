//! Default deny around each container (iptables, filter table).
//!
//! A container on the default network reaches the outside (forwarded and
//! masqueraded, see [`super::nat`]) and its DNS servers (outside too), and
//! nothing else of the host: not other containers, not any of the host's
//! own addresses (its gateway included), not link-local 169.254.0.0/16
//! (cloud metadata), and inside the husk machine not 10.0.2.2, QEMU's alias
//! for the outer host's loopback. Published ports keep working: the `-p`
//! proxy is a host process that connects to the guest, so only its replies
//! come in, as established traffic.
//!
//! Rules live in husk's own chains, entered only for traffic of `husk+`
//! interfaces (the jumps are inserted first in INPUT and FORWARD), so they
//! never open other traffic on the host:
//! - `HUSK-SPOOF`: per address slot, `-i huskN ! -s GUEST_IP -j DROP` and
//!   `-i huskN -m mac ! --mac-source MAC -j DROP`: a guest that sends with
//!   another source address or MAC than its own is dropped on its TAP.
//! - `HUSK-INPUT` (to the host itself): spoof check, DNS (port 53) to the
//!   servers husk gives the guests (a resolver on one of the host's own
//!   addresses, such as a dnsmasq, keeps answering), replies to the host's
//!   own connections accepted, the rest dropped.
//! - `HUSK-FORWARD`: spoof check, replies to containers accepted, any other
//!   traffic towards a container dropped (container to container, or from
//!   another network), then the forbidden destinations dropped and the rest
//!   of a container's traffic accepted.
//!
//! Like the NAT rule, the chains are made once (checked with `-C` under the
//! lock, or found unchanged since they were: [`super::verified`]) and stay: a slot's TAP name, address and MAC are fixed by the slot
//! ([`super::lease`]), so its rules are right for whichever container holds
//! it later, and match nothing while no container runs.

use std::net::Ipv4Addr;
use std::path::Path;

use super::nat::{ensure, iptables, lock};
use super::{verified, Lease};

/// husk's chains in the filter table.
pub const SPOOF_CHAIN: &str = "HUSK-SPOOF";
/// Traffic from containers to the host itself.
pub const INPUT_CHAIN: &str = "HUSK-INPUT";
/// Traffic routed from or to containers.
pub const FORWARD_CHAIN: &str = "HUSK-FORWARD";
/// Inside the husk machine: QEMU's user network maps this address to the
/// outer host's loopback.
pub const QEMU_HOST_LOOPBACK: &str = "10.0.2.2/32";
/// Link-local addresses (cloud metadata services live there).
pub const LINK_LOCAL: &str = "169.254.0.0/16";

/// One rule: the chain it goes in and its arguments.
pub type Rule = (&'static str, Vec<String>);

fn rule(chain: &'static str, args: &[&str]) -> Rule {
    (chain, args.iter().map(|a| a.to_string()).collect())
}

/// The rules of husk's INPUT and FORWARD chains, in order.
pub fn base_rules(in_machine: bool) -> Vec<Rule> {
    let established = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"];
    let mut rules = vec![
        rule(INPUT_CHAIN, &["-j", SPOOF_CHAIN]),
        rule(INPUT_CHAIN, &[&established[..], &["-j", "ACCEPT"]].concat()),
        rule(INPUT_CHAIN, &["-j", "DROP"]),
        rule(FORWARD_CHAIN, &["-i", "husk+", "-j", SPOOF_CHAIN]),
        rule(
            FORWARD_CHAIN,
            &[&["-o", "husk+"][..], &established, &["-j", "ACCEPT"]].concat(),
        ),
        rule(FORWARD_CHAIN, &["-o", "husk+", "-j", "DROP"]),
        rule(FORWARD_CHAIN, &["-d", LINK_LOCAL, "-j", "DROP"]),
    ];
    if in_machine {
        rules.push(rule(
            FORWARD_CHAIN,
            &["-d", QEMU_HOST_LOOPBACK, "-j", "DROP"],
        ));
    }
    rules.push(rule(FORWARD_CHAIN, &["-i", "husk+", "-j", "ACCEPT"]));
    rules
}

/// The jumps into husk's chains, inserted first in the host's chains.
pub fn jumps() -> Vec<Rule> {
    vec![
        rule("INPUT", &["-i", "husk+", "-j", INPUT_CHAIN]),
        rule("FORWARD", &["-o", "husk+", "-j", FORWARD_CHAIN]),
        rule("FORWARD", &["-i", "husk+", "-j", FORWARD_CHAIN]),
    ]
}

/// The anti-spoofing rules of one address slot.
pub fn spoof_rules(lease: &Lease) -> Vec<Rule> {
    let tap = lease.tap_name.as_str();
    let ip = lease.guest_ip.to_string();
    let mac = lease.mac_string();
    vec![
        rule(SPOOF_CHAIN, &["-i", tap, "!", "-s", &ip, "-j", "DROP"]),
        rule(
            SPOOF_CHAIN,
            &[
                "-i",
                tap,
                "-m",
                "mac",
                "!",
                "--mac-source",
                &mac,
                "-j",
                "DROP",
            ],
        ),
    ]
}

/// The rules that let guests ask `dns` servers on the host itself (UDP and
/// TCP port 53), placed right after the spoof check of `HUSK-INPUT`.
pub fn dns_rules(dns: &[Ipv4Addr]) -> Vec<Rule> {
    let mut rules = Vec::new();
    for ip in dns {
        let ip = ip.to_string();
        for proto in ["udp", "tcp"] {
            rules.push(rule(
                INPUT_CHAIN,
                &["-d", &ip, "-p", proto, "--dport", "53", "-j", "ACCEPT"],
            ));
        }
    }
    rules
}

/// Ensures husk's chains, their rules, the jumps into them, `lease`'s
/// anti-spoofing rules and DNS to the guests' servers
/// ([`super::dns_servers`]), serialised by `<lock_dir>/nat.lock`.
pub fn ensure_rules(lock_dir: &Path, lease: &Lease, in_machine: bool) -> Result<(), String> {
    ensure_rules_with(lock_dir, lease, in_machine, &super::dns_servers())
}

/// [`ensure_rules`] with these DNS servers.
pub fn ensure_rules_with(
    lock_dir: &Path,
    lease: &Lease,
    in_machine: bool,
    dns: &[Ipv4Addr],
) -> Result<(), String> {
    let _lock = lock(lock_dir)?;
    let spoof = spoof_rules(lease);
    let base = base_rules(in_machine);
    let dns = dns_rules(dns);
    let jumps = jumps();
    let wanted: Vec<String> = [&spoof, &base, &dns, &jumps]
        .into_iter()
        .flatten()
        .map(|(chain, args)| verified::key(chain, args))
        .collect();
    let known = verified::load(lock_dir, &verified::listing()?);
    let is_known = |r: &Rule| {
        known
            .as_ref()
            .is_some_and(|k| k.rules.contains(&verified::key(r.0, &r.1)))
    };
    let new_spoof: Vec<&Rule> = spoof.iter().filter(|r| !is_known(r)).collect();
    // With the listing unchanged, all but this slot's spoof rules known:
    // only those (their order does not matter: each drops).
    if [&base, &dns, &jumps].into_iter().flatten().all(is_known) {
        if new_spoof.is_empty() {
            return Ok(());
        }
        for (chain, args) in new_spoof {
            ensure("filter", chain, "-A", &strs(args))?;
        }
    } else {
        ensure_each(&spoof, &base, &dns, &jumps)?;
    }
    let v = verified::Verified {
        rules: verified::Verified::extended(known, &wanted),
        listing: verified::listing()?,
    };
    verified::store(lock_dir, &v)
}

/// Checks every rule (`-C`) and adds those missing: the chains, this
/// slot's spoof rules, husk's INPUT chain (the spoof check, DNS, the rest)
/// and FORWARD chain in order, the jumps at the top of INPUT and FORWARD.
fn ensure_each(spoof: &[Rule], base: &[Rule], dns: &[Rule], jumps: &[Rule]) -> Result<(), String> {
    for chain in [SPOOF_CHAIN, INPUT_CHAIN, FORWARD_CHAIN] {
        ensure_chain(chain)?;
    }
    for (chain, args) in spoof {
        ensure("filter", chain, "-A", &strs(args))?;
    }
    let of = |chain: &str| -> Vec<&[String]> {
        base.iter()
            .filter(|(c, _)| *c == chain)
            .map(|(_, a)| a.as_slice())
            .collect()
    };
    // The DNS rules go right after the spoof check.
    let mut input = of(INPUT_CHAIN);
    let at = 1.min(input.len());
    input.splice(at..at, dns.iter().map(|(_, a)| a.as_slice()));
    ensure_in_order(INPUT_CHAIN, &input)?;
    ensure_in_order(FORWARD_CHAIN, &of(FORWARD_CHAIN))?;
    // Inserted at the top, so the last one inserted comes first.
    for (chain, args) in jumps.iter().rev() {
        ensure("filter", chain, "-I", &strs(args))?;
    }
    Ok(())
}

/// Makes `rules` follow one another in `chain` in this order (other
/// rules may sit between them). Each is checked; from the first missing
/// one on, those present are deleted and all appended again in order: a
/// missing drop appended after the final accept would never match.
fn ensure_in_order(chain: &str, rules: &[&[String]]) -> Result<(), String> {
    let mut present = Vec::with_capacity(rules.len());
    for args in rules {
        present.push(iptables(
            &[&["-t", "filter", "-C", chain][..], &strs(args)].concat(),
        )?);
    }
    let Some(first_missing) = present.iter().position(|p| !p) else {
        return Ok(());
    };
    for (args, here) in rules.iter().zip(&present).skip(first_missing) {
        if *here {
            iptables(&[&["-t", "filter", "-D", chain][..], &strs(args)].concat())?;
        }
    }
    for args in &rules[first_missing..] {
        iptables(&[&["-t", "filter", "-A", chain][..], &strs(args)].concat())?;
    }
    Ok(())
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Creates `chain` in the filter table unless it exists (iptables-nft
/// cannot list a chain that does not exist without an error of its own,
/// so creation is tried and "already exists" is success).
pub(super) fn ensure_chain(chain: &str) -> Result<(), String> {
    match iptables(&["-t", "filter", "-N", chain]) {
        Err(e) if e.ends_with("Chain already exists.") => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Whether husk runs inside the husk machine.
pub fn in_machine() -> bool {
    std::env::var_os("HUSK_IN_MACHINE").is_some_and(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::nat::tests::test_lock_dir;

    fn lease(index: u32) -> Lease {
        let dir = tempfile::tempdir().unwrap();
        let l = crate::net::allocate(dir.path(), "t").unwrap();
        assert_eq!(l.tap_name, format!("husk{index}"));
        l
    }

    #[test]
    fn forwarding_accepts_only_after_every_drop() {
        for machine in [false, true] {
            let rules = base_rules(machine);
            let accept = rules
                .iter()
                .position(|(c, a)| *c == FORWARD_CHAIN && a == &["-i", "husk+", "-j", "ACCEPT"])
                .unwrap();
            assert_eq!(accept, rules.len() - 1);
            let drops: Vec<_> = rules
                .iter()
                .filter(|(c, a)| *c == FORWARD_CHAIN && a.last().is_some_and(|t| t == "DROP"))
                .collect();
            assert_eq!(drops.len(), if machine { 3 } else { 2 });
            assert_eq!(
                rules
                    .iter()
                    .any(|(_, a)| a.iter().any(|w| w == QEMU_HOST_LOOPBACK)),
                machine
            );
            assert_eq!(rules.last().map(|(c, _)| *c), Some(FORWARD_CHAIN));
            assert_eq!(
                rules.iter().rfind(|(c, _)| *c == INPUT_CHAIN).unwrap().1,
                ["-j", "DROP"]
            );
        }
    }

    #[test]
    fn spoofing_rules_name_the_slot() {
        let l = lease(0);
        let rules = spoof_rules(&l);
        assert_eq!(rules[0].1.join(" "), "-i husk0 ! -s 10.88.0.2 -j DROP");
        assert_eq!(
            rules[1].1.join(" "),
            "-i husk0 -m mac ! --mac-source 02:68:75:00:00:00 -j DROP"
        );
    }

    /// On this host's real iptables: twice gives the same ruleset, in order.
    #[test]
    fn rules_are_made_once_in_order() {
        let l = lease(0);
        let dns = [Ipv4Addr::new(192, 0, 2, 53)];
        ensure_rules_with(&test_lock_dir(), &l, false, &dns).unwrap();
        let first = list(FORWARD_CHAIN);
        let input = list(INPUT_CHAIN);
        ensure_rules_with(&test_lock_dir(), &l, false, &dns).unwrap();
        assert_eq!(list(INPUT_CHAIN), input);
        assert_eq!(input[0], "-A HUSK-INPUT -j HUSK-SPOOF");
        let at = |want: &str| input.iter().position(|r| r == want).unwrap();
        let dns_udp = at("-A HUSK-INPUT -d 192.0.2.53/32 -p udp -m udp --dport 53 -j ACCEPT");
        let dns_tcp = at("-A HUSK-INPUT -d 192.0.2.53/32 -p tcp -m tcp --dport 53 -j ACCEPT");
        assert!(dns_udp < at("-A HUSK-INPUT -j DROP") && dns_tcp < at("-A HUSK-INPUT -j DROP"));
        assert_eq!(list(FORWARD_CHAIN), first);
        assert_eq!(first.last().unwrap(), "-A HUSK-FORWARD -i husk+ -j ACCEPT");
        let husk0: Vec<_> = list(SPOOF_CHAIN)
            .into_iter()
            .filter(|r| r.contains(" -i husk0 "))
            .collect();
        assert_eq!(husk0.len(), 2, "{husk0:?}");
        let forward = list("FORWARD");
        assert_eq!(forward[0], "-A FORWARD -o husk+ -j HUSK-FORWARD");
        assert_eq!(forward[1], "-A FORWARD -i husk+ -j HUSK-FORWARD");
        assert_eq!(list("INPUT")[0], "-A INPUT -i husk+ -j HUSK-INPUT");
        // A rule deleted behind husk's back is noticed and put back (in
        // this test: another one could be checking the chains meanwhile).
        let rule = [
            "-t",
            "filter",
            "-D",
            FORWARD_CHAIN,
            "-d",
            LINK_LOCAL,
            "-j",
            "DROP",
        ];
        iptables(&rule).unwrap();
        let gone = "-A HUSK-FORWARD -d 169.254.0.0/16 -j DROP";
        assert!(!list(FORWARD_CHAIN).iter().any(|r| r == gone));
        ensure_rules_with(&test_lock_dir(), &l, false, &dns).unwrap();
        assert_eq!(list(FORWARD_CHAIN), first);
        // Another slot, with nothing else changed, gets its spoof rules.
        let dir = tempfile::tempdir().unwrap();
        crate::net::allocate(dir.path(), "a").unwrap();
        let l1 = crate::net::allocate(dir.path(), "b").unwrap();
        ensure_rules_with(&test_lock_dir(), &l1, false, &dns).unwrap();
        let tap1 = format!(" -i {} ", l1.tap_name);
        let slot1 = list(SPOOF_CHAIN)
            .iter()
            .filter(|r| r.contains(&tap1))
            .count();
        assert_eq!(slot1, 2, "{}", l1.tap_name);
        assert_eq!(list(FORWARD_CHAIN), first);
    }

    fn list(chain: &str) -> Vec<String> {
        let bin = crate::net::nat::iptables_path().unwrap();
        let out = std::process::Command::new(bin)
            .args(["-w", "-t", "filter", "-S", chain])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(String::from)
            .collect()
    }
}
