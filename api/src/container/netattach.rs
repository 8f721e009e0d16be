//! `network connect` and `disconnect` of a container (created or running),
//! and which containers a network has: the container's record changes, and
//! a running container's firewall pairs and its and its peers' hosts follow
//! ([`super::membership`]).

use std::path::Path;

use super::membership::{self, Member};
use super::spec::{NetworkAttachment, NetworkMode};
use super::{ContainerError, Containers, Handle};
use crate::net::networks::Network;

/// Attach errors.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The container store failed.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// Already attached.
    #[error("endpoint with name {container} already exists in network {network}")]
    Already {
        /// Container name.
        container: String,
        /// Network name.
        network: String,
    },
    /// Not attached.
    #[error("container {container} is not connected to network {network}")]
    NotAttached {
        /// Container name.
        container: String,
        /// Network name.
        network: String,
    },
    /// A container without a network cannot join one.
    #[error("container {0} has --network none: it cannot join a network")]
    NoNetwork(String),
    /// An alias that cannot be a host name.
    #[error("invalid network alias {0:?}: only [a-zA-Z0-9_.-] are allowed")]
    BadAlias(String),
}

/// The running container of `h` as a member, when it runs with an address.
fn running_member(h: &Handle, config: &super::spec::ContainerConfig) -> Option<Member> {
    let s = h.live_state().ok()?;
    if s.supervisor_pid.is_none() || !h.supervisor_alive() {
        return None;
    }
    Some(Member::new(config, s.ip.as_deref()?.parse().ok()?))
}

/// Attaches `h` to `net` with `aliases`.
pub fn connect(
    data_dir: &Path,
    cs: &Containers,
    h: &Handle,
    net: &Network,
    aliases: Vec<String>,
) -> Result<(), AttachError> {
    if let Some(bad) = aliases.iter().find(|a| !super::create::valid_alias(a)) {
        return Err(AttachError::BadAlias(bad.clone()));
    }
    let mut config = h.config()?;
    if config.network == NetworkMode::None {
        return Err(AttachError::NoNetwork(config.name));
    }
    if config.networks.iter().any(|n| n.network == net.name) {
        return Err(AttachError::Already {
            container: config.name,
            network: net.name.clone(),
        });
    }
    let previous = config.networks.clone();
    config.networks.push(NetworkAttachment {
        network: net.name.clone(),
        aliases,
    });
    h.write_config(&config)?;
    if let Some(me) = running_member(h, &config) {
        membership::joined(data_dir, cs, &me, &previous, membership::Tell::Everyone);
    }
    Ok(())
}

/// Detaches `h` from `net`.
pub fn disconnect(
    data_dir: &Path,
    cs: &Containers,
    h: &Handle,
    net: &Network,
) -> Result<(), AttachError> {
    let mut config = h.config()?;
    let previous = config.networks.clone();
    config.networks.retain(|n| n.network != net.name);
    if config.networks.len() == previous.len() {
        return Err(AttachError::NotAttached {
            container: config.name,
            network: net.name.clone(),
        });
    }
    h.write_config(&config)?;
    if let Some(me) = running_member(h, &config) {
        membership::joined(data_dir, cs, &me, &previous, membership::Tell::Everyone);
    }
    Ok(())
}

/// The containers (any state) attached to `net`, as (config, state).
pub fn attached(
    cs: &Containers,
    net: &str,
) -> Vec<(super::spec::ContainerConfig, super::state::State)> {
    cs.list()
        .unwrap_or_default()
        .into_iter()
        .filter(|(c, _)| c.networks.iter().any(|n| n.network == net))
        .collect()
}
