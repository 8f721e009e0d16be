//! Snapshot state of a virtio-net device: its transport and the guest's
//! MAC address. Frames in flight are not kept (the network may drop them).

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::{Net, NetConfig};
use crate::virtio::mmio::{MmioRestoreError, MmioState, MmioTransport};

/// A network interface's snapshot state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The transport.
    pub transport: MmioState,
}

/// The state of an interface and its transport.
pub fn save(t: &MmioTransport<Net>) -> NetState {
    NetState {
        mac: t.device().mac(),
        transport: t.save_state(),
    }
}

/// The host-side config (`cfg`: which TAP) with the guest's saved MAC.
pub fn config(cfg: &NetConfig, state: &NetState) -> NetConfig {
    NetConfig {
        mac: Some(state.mac),
        ..cfg.clone()
    }
}

/// Puts an interface opened with [`config`] back in its transport state.
pub fn restore(
    mem: GuestMemoryMmap,
    net: Net,
    state: &NetState,
) -> Result<MmioTransport<Net>, MmioRestoreError> {
    MmioTransport::restore(mem, net, &state.transport)
}
