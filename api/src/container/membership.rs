//! Keeping user-defined networks current as their members start, stop,
//! connect and disconnect: the firewall pairs ([`crate::net::peers`]) of
//! the container that changed, and the `/etc/hosts` lines of every running
//! member that shares a network with it (each member resolves the others by
//! name, short id and aliases).
//!
//! The members are read from the container store: a container is a member
//! while it has an address and its supervisor runs. Updating another
//! member's hosts goes through its supervisor (`SetHosts`), bounded by the
//! supervisor's agent timeout; a member that does not answer is logged and
//! skipped, never waited on forever.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use husk_proto::agent::HostEntry;

use super::control::Request;
use super::spec::{ContainerConfig, NetworkAttachment};
use super::state::Status;
use super::{ipc, Containers, Handle};

/// A running member of some user-defined network.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its full id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its networks.
    pub networks: Vec<NetworkAttachment>,
}

impl Member {
    /// The member `config` makes at `ip`.
    pub fn new(config: &ContainerConfig, ip: Ipv4Addr) -> Member {
        Member {
            id: config.id.clone(),
            name: config.name.clone(),
            ip,
            networks: config.networks.clone(),
        }
    }

    fn network_names(&self) -> BTreeSet<&str> {
        self.networks.iter().map(|n| n.network.as_str()).collect()
    }

    fn shares_with(&self, other: &Member) -> bool {
        let mine = self.network_names();
        other
            .networks
            .iter()
            .any(|n| mine.contains(n.network.as_str()))
    }
}

/// The running containers attached to a user-defined network.
pub fn running_members(cs: &Containers) -> Vec<Member> {
    let Ok(list) = cs.list() else {
        return Vec::new();
    };
    list.into_iter()
        .filter(|(c, s)| {
            !c.networks.is_empty()
                && matches!(s.status, Status::Running | Status::Created)
                && s.supervisor_pid.is_some()
        })
        .filter_map(|(c, s)| Some(Member::new(&c, s.ip.as_deref()?.parse().ok()?)))
        .collect()
}

/// The `/etc/hosts` lines `me` gets: every other member sharing a network
/// with it, by name, short id and its aliases on the shared networks.
pub fn host_entries(me: &Member, members: &[Member]) -> Vec<HostEntry> {
    let mine = me.network_names();
    members
        .iter()
        .filter(|m| m.id != me.id && me.shares_with(m))
        .map(|m| {
            let mut names = vec![m.name.clone(), m.id.chars().take(12).collect()];
            for a in m
                .networks
                .iter()
                .filter(|n| mine.contains(n.network.as_str()))
                .flat_map(|n| &n.aliases)
            {
                if !names.contains(a) {
                    names.push(a.clone());
                }
            }
            names.truncate(husk_proto::agent::MAX_HOST_NAMES);
            HostEntry { ip: m.ip, names }
        })
        .take(husk_proto::agent::MAX_HOST_ENTRIES)
        .collect()
}

/// The members with `me` in place of its old record (or without it when
/// `me` is `None` and `gone` names it).
fn members_with(cs: &Containers, me: Option<&Member>, gone: &str) -> Vec<Member> {
    let mut all: Vec<Member> = running_members(cs)
        .into_iter()
        .filter(|m| m.id != gone)
        .collect();
    if let Some(me) = me {
        all.retain(|m| m.id != me.id);
        all.push(me.clone());
    }
    all
}

/// How long a member's supervisor has to apply its hosts lines.
const SET_HOSTS_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `h` its hosts lines through its supervisor.
fn send_hosts(h: &Handle, entries: Vec<HostEntry>) {
    if let Err(e) = ipc::request_within(h, &Request::SetHosts { entries }, SET_HOSTS_TIMEOUT) {
        log::warn!(
            "cannot update /etc/hosts of {}: {}",
            h.id,
            crate::error::chain(&e)
        );
    }
}

/// Updates the hosts of every member that shares a network with `changed`
/// (as it is now, or as it was), except `skip`.
fn notify(cs: &Containers, all: &[Member], changed: &Member, skip: &str) {
    for m in all
        .iter()
        .filter(|m| m.id != skip && m.id != changed.id && m.shares_with(changed))
    {
        send_hosts(&cs.handle(&m.id), host_entries(m, all));
    }
}

/// How [`joined`] tells the other members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tell {
    /// The others, on a thread of their own (a starting supervisor: a peer
    /// booting at the same time answers only once it serves its socket).
    OthersLater,
    /// The others and `me` itself, before returning (connect, disconnect).
    Everyone,
}

/// `me` starts (or its networks changed from `previous`): its firewall
/// pairs are made exactly those of its networks' running members, and the
/// hosts of the members of its networks, now and before, are updated;
/// returns its own hosts lines.
pub fn joined(
    data_dir: &Path,
    cs: &Containers,
    me: &Member,
    previous: &[NetworkAttachment],
    tell: Tell,
) -> Vec<HostEntry> {
    let all = members_with(cs, Some(me), "");
    let peers: Vec<Ipv4Addr> = all
        .iter()
        .filter(|m| m.id != me.id && me.shares_with(m))
        .map(|m| m.ip)
        .collect();
    if let Err(e) = crate::net::peers::join(&data_dir.join("net"), me.ip, &peers) {
        log::warn!("network rules of {}: {e}", me.id);
    }
    let mut then_and_now = me.clone();
    then_and_now.networks.extend(previous.iter().cloned());
    let mine = host_entries(me, &all);
    match tell {
        Tell::OthersLater => {
            let cs = cs.clone();
            std::thread::spawn(move || notify(&cs, &all, &then_and_now, ""));
        }
        Tell::Everyone => {
            notify(cs, &all, &then_and_now, "");
            send_hosts(&cs.handle(&me.id), mine.clone());
        }
    }
    mine
}

/// `me` stopped: its firewall pairs go and the others' hosts forget it.
pub fn left(data_dir: &Path, cs: &Containers, me: &Member) {
    if let Err(e) = crate::net::peers::forget(&data_dir.join("net"), me.ip) {
        log::warn!("network rules of {}: {e}", me.id);
    }
    let all = members_with(cs, None, &me.id);
    notify(cs, &all, me, &me.id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, ip: [u8; 4], nets: &[(&str, &[&str])]) -> Member {
        Member {
            id: format!("{id}{}", "0".repeat(64 - id.len())),
            name: format!("proj_{id}_1"),
            ip: ip.into(),
            networks: nets
                .iter()
                .map(|(n, a)| NetworkAttachment {
                    network: n.to_string(),
                    aliases: a.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn entries_name_members_of_shared_networks_only() {
        let web = member("aaa", [10, 88, 0, 2], &[("p1", &["web"])]);
        let db = member(
            "bbb",
            [10, 88, 0, 6],
            &[("p1", &["db", "database"]), ("other", &["x"])],
        );
        let stranger = member("ccc", [10, 88, 0, 10], &[("p2", &["web"])]);
        let all = vec![web.clone(), db.clone(), stranger.clone()];
        let e = host_entries(&web, &all);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].ip, Ipv4Addr::new(10, 88, 0, 6));
        assert_eq!(
            e[0].names,
            vec!["proj_bbb_1", "bbb000000000", "db", "database"],
            "aliases on other networks are not given"
        );
        assert!(host_entries(&stranger, &all).is_empty());
        husk_proto::agent::validate_hosts(&host_entries(&db, &all)).unwrap();
    }
}
