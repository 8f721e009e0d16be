//! The vsock device model: config space (the guest's CID), activation, and
//! moving packets between the virtqueues and the [`Muxer`].

use std::io::Read;
use std::path::PathBuf;

use event_manager::EventOps;
use serde::{Deserialize, Serialize};
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::backend::{BackendError, Muxer};
use super::packet::{Header, PacketError, HDR_SIZE};
use crate::virtio::{
    device_type, read_config_bytes, ActivateArgs, ActivateError, Interrupt, VirtioDevice,
};

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];

/// Smallest guest CID (0-2 are reserved).
pub const MIN_GUEST_CID: u32 = 3;

/// A vsock device's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// Host Unix socket: host processes connect here with `CONNECT <port>`;
    /// guest connections to host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// Vsock errors.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// Reserved or out-of-range CID.
    #[error("vsock guest_cid must be at least {MIN_GUEST_CID}, got {0}")]
    BadCid(u32),
    /// The Unix socket could not be set up.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A descriptor chain could not be read or written.
    #[error("bad descriptor chain: {0}")]
    Chain(String),
    /// A packet failed validation.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// The used ring could not be updated.
    #[error("cannot update the used ring: {0}")]
    UsedRing(String),
}

#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Interrupt,
}

/// A virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    cid: u64,
    muxer: Muxer,
    active: Option<Active>,
    reset_pending: bool,
    bad_packets: u64,
}

/// Reads one guest packet (header, then payload) out of a tx chain.
pub fn read_tx_packet(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    guest_cid: u64,
) -> Result<(Header, Vec<u8>), VsockError> {
    let mut reader: Reader<'_> =
        Reader::new(mem, chain).map_err(|e| VsockError::Chain(format!("{e:?}")))?;
    let mut hdr = [0u8; HDR_SIZE];
    let got = reader.available_bytes();
    reader
        .read_exact(&mut hdr)
        .map_err(|_| PacketError::Short(got))?;
    let h = Header::parse_tx(&hdr, reader.available_bytes(), guest_cid)?;
    let mut data = vec![0u8; usize::try_from(h.len).unwrap_or(0)];
    reader
        .read_exact(&mut data)
        .map_err(|e| VsockError::Chain(e.to_string()))?;
    Ok((h, data))
}

impl Vsock {
    /// A device for `cfg`, listening on its Unix socket.
    pub fn new(cfg: &VsockConfig) -> Result<Self, VsockError> {
        if cfg.guest_cid < MIN_GUEST_CID {
            return Err(VsockError::BadCid(cfg.guest_cid));
        }
        let cid = u64::from(cfg.guest_cid);
        Ok(Vsock {
            cid,
            muxer: Muxer::new(cid, &cfg.uds_path)?,
            active: None,
            reset_pending: false,
            bad_packets: 0,
        })
    }

    /// The Unix-socket side.
    pub fn muxer(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// Packets refused since start.
    pub fn bad_packets(&self) -> u64 {
        self.bad_packets
    }

    /// Drops connections after a driver reset (needs the event loop's ops).
    pub fn finish_reset(&mut self, ops: &mut EventOps) {
        if self.reset_pending {
            self.reset_pending = false;
            self.muxer.reset(ops);
        }
    }

    /// Handles everything the guest queued for transmission, then fills the
    /// receive queue. Errors mean the queue itself is unusable.
    pub fn process(&mut self, ops: &mut EventOps) -> Result<(), VsockError> {
        self.process_tx(ops)?;
        self.process_rx(ops)
    }

    fn process_tx(&mut self, ops: &mut EventOps) -> Result<(), VsockError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mut used = false;
        while let Some(chain) = a.queues[TX].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            match read_tx_packet(&a.mem, chain, self.cid) {
                Ok((h, data)) => self.muxer.handle_guest_packet(&h, &data, ops),
                Err(e) => {
                    self.bad_packets += 1;
                    if self.bad_packets.is_power_of_two() {
                        log::warn!(
                            "vsock: dropped bad packet ({} so far): {e}",
                            self.bad_packets
                        );
                    }
                }
            }
            a.queues[TX]
                .add_used(&a.mem, head, 0)
                .map_err(|e| VsockError::UsedRing(format!("{e:?}")))?;
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
        Ok(())
    }

    /// Moves pending packets into the guest's receive buffers.
    pub fn process_rx(&mut self, ops: &mut EventOps) -> Result<(), VsockError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mut used = false;
        while self.muxer.has_rx() {
            let Some(chain) = a.queues[RX].pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let written = match Writer::new(&a.mem, chain) {
                Ok(mut w) => {
                    let mut w: Writer<'_> = w.split_at(0).unwrap_or(w);
                    let room = w.available_bytes();
                    match self.muxer.next_rx(room, &mut w, ops) {
                        None => {
                            // Nothing to send after all: give the buffer back.
                            let prev = a.queues[RX].next_avail().wrapping_sub(1);
                            a.queues[RX].set_next_avail(prev);
                            break;
                        }
                        Some(Ok(n)) => n,
                        Some(Err(e)) => {
                            log::warn!("vsock: receive buffer unusable: {e}");
                            0
                        }
                    }
                }
                Err(e) => {
                    log::warn!("vsock: bad receive chain: {e:?}");
                    0
                }
            };
            a.queues[RX]
                .add_used(&a.mem, head, u32::try_from(written).unwrap_or(0))
                .map_err(|e| VsockError::UsedRing(format!("{e:?}")))?;
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
        Ok(())
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn avail_features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError> {
        if args.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                got: args.queues.len(),
            });
        }
        self.active = Some(Active {
            mem: args.mem,
            queues: args.queues,
            interrupt: args.interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.reset_pending = true;
    }
}
