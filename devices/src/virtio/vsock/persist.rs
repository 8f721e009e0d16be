//! Snapshot state of a virtio-vsock device: its transport and the guest's
//! CID. Connections are not kept: after a restore the device tells the
//! driver with a TRANSPORT_RESET event (virtio 1.2, 5.10.6.7), the guest's
//! sockets see their connections reset, listeners stay, and host programs
//! connect again. The muxer's next host port is kept: a guest socket of a
//! reset connection lives on until its program closes it, and a new
//! connection from the same host port would be taken for it (and reset).

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::{Vsock, VsockConfig, VsockError};
use crate::virtio::mmio::{MmioRestoreError, MmioState, MmioTransport};

/// Restore errors.
#[derive(Debug, thiserror::Error)]
pub enum VsockPersistError {
    /// The transport state does not fit.
    #[error(transparent)]
    Transport(#[from] MmioRestoreError),
    /// The reset event could not be delivered.
    #[error("cannot send the transport-reset event")]
    Event(#[source] VsockError),
}

/// The vsock device's snapshot state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest's context id.
    pub guest_cid: u32,
    /// The transport.
    pub transport: MmioState,
    /// The host port the muxer gives the next host-initiated connection.
    #[serde(default)]
    pub next_host_port: Option<u32>,
}

/// The state of the device and its transport.
pub fn save(t: &MmioTransport<Vsock>) -> VsockState {
    VsockState {
        guest_cid: u32::try_from(t.device().cid()).unwrap_or(u32::MAX),
        transport: t.save_state(),
        next_host_port: Some(t.device().muxer_ref().next_host_port()),
    }
}

/// The host-side config (`cfg`: which Unix socket) with the saved CID.
pub fn config(cfg: &VsockConfig, state: &VsockState) -> VsockConfig {
    VsockConfig {
        guest_cid: state.guest_cid,
        ..cfg.clone()
    }
}

/// Puts a device made with [`config`] back in its transport state and, if
/// the driver was running it, sends the transport-reset event.
pub fn restore(
    mem: GuestMemoryMmap,
    vsock: Vsock,
    state: &VsockState,
) -> Result<MmioTransport<Vsock>, VsockPersistError> {
    let mut t = MmioTransport::restore(mem, vsock, &state.transport)?;
    if let Some(port) = state.next_host_port {
        t.device_mut().muxer().continue_host_ports(port);
    }
    if t.is_activated() {
        let sent = t
            .device_mut()
            .send_transport_reset()
            .map_err(VsockPersistError::Event)?;
        if !sent {
            log::warn!("vsock: no event buffer for the transport reset after restore");
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::test_utils::{desc, guest_memory, Harness, BUF_BASE, F_WRITE};

    fn vsock(dir: &std::path::Path, cid: u32) -> (Vsock, VsockConfig) {
        let cfg = VsockConfig {
            guest_cid: cid,
            uds_path: dir.join("v.sock"),
        };
        (Vsock::new(&cfg).unwrap(), cfg)
    }

    #[test]
    fn restore_keeps_cid_and_queues_and_sends_transport_reset() {
        let mem = guest_memory();
        let dir = tempfile::tempdir().unwrap();
        let (dev, _) = vsock(dir.path(), 7);
        let h = Harness::new(&mem, dev);
        let event_buf = BUF_BASE + 0x8000;
        mem.write_obj(0xffff_ffff_u32, GuestAddress(event_buf))
            .unwrap();
        h.add(2, &[desc(event_buf, 8, F_WRITE, 0)]);
        h.add(0, &[desc(BUF_BASE, 4096, F_WRITE, 0)]);
        let state = save(&h.transport.lock().unwrap());
        assert_eq!(state.guest_cid, 7);
        assert!(state.transport.activated);

        // The restoring side is given another socket and the default CID;
        // the CID comes from the snapshot.
        let dir2 = tempfile::tempdir().unwrap();
        let (_, cfg) = vsock(dir2.path(), 3);
        let cfg = config(&cfg, &state);
        assert_eq!(cfg.guest_cid, 7);
        let t = restore(mem.clone(), Vsock::new(&cfg).unwrap(), &state).unwrap();
        assert!(t.is_activated());
        assert_eq!(t.device().cid(), 7);
        // One event used, 4 bytes: VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (0).
        assert_eq!(h.used_idx(2), 1);
        assert_eq!(h.used_elem(2, 0), (0, 4));
        assert_eq!(mem.read_obj::<u32>(GuestAddress(event_buf)).unwrap(), 0);
        // The receive buffer is still the driver's, not consumed.
        assert_eq!(h.used_idx(0), 0);
        assert_eq!(t.save_state().queues[2].next_used, 1);
    }

    #[test]
    fn restored_host_ports_go_on_from_the_snapshot() {
        let mem = guest_memory();
        let dir = tempfile::tempdir().unwrap();
        let (mut dev, cfg) = vsock(dir.path(), 5);
        dev.muxer().continue_host_ports((1 << 30) + 41);
        let t = MmioTransport::new(mem.clone(), dev).unwrap();
        let state = save(&t);
        assert_eq!(state.next_host_port, Some((1 << 30) + 41));
        drop(t);
        let t = restore(mem, Vsock::new(&cfg).unwrap(), &state).unwrap();
        assert_eq!(t.device().muxer_ref().next_host_port(), (1 << 30) + 41);
    }

    #[test]
    fn an_inactive_device_restores_without_an_event() {
        let mem = guest_memory();
        let dir = tempfile::tempdir().unwrap();
        let (dev, cfg) = vsock(dir.path(), 5);
        let t = MmioTransport::new(mem.clone(), dev).unwrap();
        let state = save(&t);
        drop(t);
        let t = restore(mem, Vsock::new(&cfg).unwrap(), &state).unwrap();
        assert!(!t.is_activated());
    }
}
