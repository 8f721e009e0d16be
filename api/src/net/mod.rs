//! Container networking, host side.
//!
//! Each container's microVM gets a TAP (`husk<index>`, created by husk-vmm
//! and gone with it) and a point-to-point /30 out of 10.88.0.0/16 on it: the
//! host end is the guest's gateway. Outbound traffic is routed (IP
//! forwarding) and masqueraded (one iptables rule for the whole /16), and
//! `-p` ports are published by a user-space TCP/UDP proxy in the container's
//! supervisor, as Docker's `docker-proxy` does. This is Docker's default
//! bridge network minus the bridge: a per-container /30 needs no bridge
//! device to create or clean up, and the proxy needs no DNAT rules, so a
//! SIGKILLed supervisor leaves nothing behind but the shared NAT rule.
//!
//! - [`lease`]: exclusive /30 leases held by `flock`.
//! - [`host`]: address and link of the host end of the TAP, IP forwarding.
//! - [`nat`]: the MASQUERADE rule (iptables).
//! - [`firewall`]: default deny around each container, anti-spoofing.
//! - [`proxy`]: the published-port proxy.
//! - [`ports`]: Docker's `-p` syntax.
//! - [`networks`]: user-defined networks; [`peers`]: their members'
//!   reachability.

pub mod firewall;
pub mod host;
pub mod lease;
pub mod nat;
pub mod networks;
pub mod peers;
pub mod ports;
pub mod proxy;
pub mod verified;

use std::net::Ipv4Addr;
use std::path::Path;

pub use host::configure_host;
pub use lease::{allocate, allocate_at, Lease};
pub use ports::{PortSpec, PortSpecError, Proto, PublishedPort};
pub use proxy::{publish, publish_with, Publisher};

/// Networking errors. Messages are complete one-liners (the cause is part
/// of the message, not a separate source).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A lease lock file could not be created or locked.
    #[error("cannot allocate a network address: {path}: {cause}")]
    Lease {
        /// The lock file or directory.
        path: String,
        /// What went wrong.
        cause: String,
    },
    /// Every /30 of 10.88.0.0/16 is taken.
    #[error("cannot allocate a network address: all of 10.88.0.0/16 is in use")]
    Exhausted,
    /// The address a checkpoint's guest has configured is in use.
    #[error("the checkpoint's address {0} (lease {1}) is in use by another container")]
    Taken(std::net::Ipv4Addr, u32),
    /// The host side of a TAP could not be set up.
    #[error("cannot configure {tap}: {cause}")]
    Host {
        /// The TAP name.
        tap: String,
        /// What went wrong.
        cause: String,
    },
    /// A host port to publish is taken.
    #[error("port is already allocated: {addr}: {cause}")]
    PortInUse {
        /// The address, e.g. `0.0.0.0:8080`.
        addr: String,
        /// The kernel's words.
        cause: String,
    },
    /// A host port could not be bound for another reason.
    #[error("cannot publish {addr}: {cause}")]
    Bind {
        /// The address, e.g. `127.0.0.1:80/udp`.
        addr: String,
        /// What went wrong.
        cause: String,
    },
    /// The proxy's threads could not start.
    #[error("cannot start the port proxy: {0}")]
    Proxy(String),
}

/// Result alias for networking.
pub type Result<T> = std::result::Result<T, NetError>;

/// An I/O error in words, without Rust's " (os error N)" suffix.
pub(crate) fn io_cause(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The guest's network identity for its boot parameters: eth0's address,
/// the default route through the host's end of the /30, and `dns`.
pub fn guest_net(lease: &Lease, dns: &[Ipv4Addr]) -> husk_proto::boot::GuestNet {
    husk_proto::boot::GuestNet {
        ip: lease.guest_ip,
        prefix: lease.prefix,
        gateway: Some(lease.host_ip),
        dns: dns.to_vec(),
    }
}

/// The DNS servers to give containers: the host's IPv4 nameservers from
/// /etc/resolv.conf that are not loopback addresses (a loopback resolver
/// such as systemd-resolved's 127.0.0.53 is unreachable from a guest). When
/// only loopback ones are listed, the upstream servers systemd-resolved
/// writes to /run/systemd/resolve/resolv.conf are used, as Docker does.
/// Otherwise there are none: the guest gets no resolv.conf from husk, and
/// names do not resolve (husk runs no DNS forwarder on the TAP).
pub fn dns_servers() -> Vec<Ipv4Addr> {
    dns_servers_from(&[
        Path::new("/etc/resolv.conf"),
        Path::new("/run/systemd/resolve/resolv.conf"),
    ])
}

/// [`dns_servers`] over the given resolv.conf files: the first with a
/// usable server wins.
pub fn dns_servers_from(files: &[&Path]) -> Vec<Ipv4Addr> {
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|text| parse_nameservers(&text))
        .find(|servers| !servers.is_empty())
        .unwrap_or_default()
}

/// The non-loopback IPv4 `nameserver` entries of a resolv.conf.
pub fn parse_nameservers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_parameters_for_a_lease() {
        let dir = tempfile::tempdir().unwrap();
        let lease = allocate(dir.path(), "x").unwrap();
        let params = husk_proto::boot::BootParams {
            net: Some(guest_net(&lease, &[Ipv4Addr::new(10, 0, 2, 3)])),
            ..Default::default()
        };
        assert_eq!(
            params.render().unwrap(),
            "husk.ip=10.88.0.2/30 husk.gw=10.88.0.1 husk.dns=10.0.2.3"
        );
        let n = guest_net(&lease, &[]);
        assert!(n.dns.is_empty());
        assert_eq!(n.gateway, Some(Ipv4Addr::new(10, 88, 0, 1)));
    }

    #[test]
    fn resolv_conf_parsing() {
        let text = "# generated\nsearch example.com\nnameserver 127.0.0.53\nnameserver  10.0.2.3 \n\
                    nameserver ::1\nnameserver fe80::1%eth0\nnameserver 0.0.0.0\n#nameserver 9.9.9.9\n\
                    nameserver 192.168.1.1\noptions edns0\n";
        assert_eq!(
            parse_nameservers(text),
            vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(192, 168, 1, 1)]
        );
    }

    #[test]
    fn systemd_resolved_falls_back_to_its_upstreams() {
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("stub");
        let upstream = dir.path().join("upstream");
        std::fs::write(&stub, "nameserver 127.0.0.53\noptions edns0\n").unwrap();
        std::fs::write(&upstream, "nameserver 9.9.9.9\n").unwrap();
        assert_eq!(
            dns_servers_from(&[&stub, &upstream]),
            vec![Ipv4Addr::new(9, 9, 9, 9)]
        );
        assert!(dns_servers_from(&[&stub, &dir.path().join("missing")]).is_empty());
        std::fs::write(&stub, "nameserver 10.0.2.3\n").unwrap();
        assert_eq!(
            dns_servers_from(&[&stub, &upstream]),
            vec![Ipv4Addr::new(10, 0, 2, 3)]
        );
    }
}
