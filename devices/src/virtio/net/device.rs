//! The virtio-net device model: MAC in config space, a receive and a
//! transmit queue, frames passed to and from a TAP with their virtio-net
//! header. No offloads are offered, so headers carry no checksum or GSO work.

use std::io::{self, Read, Write};

use virtio_queue::{QueueT, Reader, Writer};

use super::tap::{Tap, VNET_HDR_LEN};
use crate::virtio::{device_type, read_config_bytes, ActivateArgs, ActivateError, VirtioDevice};

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
const VIRTIO_NET_F_MAC: u32 = 5;
/// Largest frame with its header (64 KiB plus header), as a TAP may deliver.
const MAX_FRAME: usize = 65562;

pub use husk_proto::vm::NetConfig;

/// Network device errors.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP could not be opened.
    #[error("cannot open tap device {name:?}")]
    Tap {
        /// Requested name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The used ring could not be updated.
    #[error("cannot update the used ring: {0}")]
    UsedRing(String),
}

/// A running device keeps what the driver negotiated.
type Active = ActivateArgs;

/// A virtio-net device.
#[derive(Debug)]
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    active: Option<Active>,
    /// A frame read from the TAP that no receive buffer could take yet.
    pending: Option<Vec<u8>>,
    /// The TAP is not polled until the guest adds receive buffers.
    rx_blocked: bool,
    errors: u64,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl Net {
    /// Opens the TAP of `cfg`.
    pub fn new(cfg: &NetConfig) -> Result<Self, NetError> {
        let name = cfg.tap_name.clone().unwrap_or_default();
        let tap = Tap::open(&name).map_err(|source| NetError::Tap { name, source })?;
        Ok(Net {
            tap,
            mac: cfg.mac.unwrap_or([0x06, 0x00, 0x48, 0x55, 0x53, 0x4b]),
            active: None,
            pending: None,
            rx_blocked: false,
            errors: 0,
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The TAP.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Whether the TAP should be polled for frames.
    pub fn wants_tap_reads(&self) -> bool {
        self.active.is_some() && !self.rx_blocked
    }

    fn error(&mut self, what: &str, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.errors.is_power_of_two() {
            log::warn!("virtio-net: {what}: {e} ({} errors so far)", self.errors);
        }
    }

    /// Sends every frame the guest queued to the TAP.
    pub fn process_tx(&mut self) -> Result<(), NetError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mut used = false;
        let mut frame = Vec::with_capacity(MAX_FRAME);
        let mut errs = Vec::new();
        while let Some(chain) = a.queues[TX].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            frame.clear();
            match Reader::new(&a.mem, chain) {
                Ok(mut r) => {
                    let r: &mut Reader<'_> = &mut r;
                    let len = r.available_bytes();
                    if !(VNET_HDR_LEN..=MAX_FRAME).contains(&len) {
                        errs.push(format!("tx frame of {len} bytes dropped"));
                    } else if let Err(e) = r.take(len as u64).read_to_end(&mut frame) {
                        errs.push(format!("tx chain: {e}"));
                    } else if let Err(e) = self.tap.write(&frame) {
                        // A full TAP queue drops the frame, as a NIC would;
                        // so does a TAP whose host side is not up yet (EIO:
                        // a restored guest sends while the host sets it up).
                        let dropped = e.kind() == io::ErrorKind::WouldBlock
                            || e.raw_os_error() == Some(libc::EIO);
                        if !dropped {
                            errs.push(format!("tap write: {e}"));
                        }
                    }
                }
                Err(e) => errs.push(format!("tx chain: {e:?}")),
            }
            a.queues[TX]
                .add_used(&a.mem, head, 0)
                .map_err(|e| NetError::UsedRing(format!("{e:?}")))?;
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
        for e in errs {
            self.error("transmit", e);
        }
        Ok(())
    }

    /// Moves frames from the TAP into receive buffers until either runs dry.
    pub fn process_rx(&mut self) -> Result<(), NetError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mut used = false;
        let mut errs = Vec::new();
        loop {
            let frame = match self.pending.take() {
                Some(f) => f,
                None => {
                    let mut buf = vec![0u8; MAX_FRAME];
                    match self.tap.read(&mut buf) {
                        Ok(n) => {
                            buf.truncate(n);
                            buf
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            errs.push(format!("tap read: {e}"));
                            break;
                        }
                    }
                }
            };
            let Some(chain) = a.queues[RX].pop_descriptor_chain(&a.mem) else {
                // No buffer: keep the frame and stop polling the TAP until
                // the guest adds buffers.
                self.pending = Some(frame);
                self.rx_blocked = true;
                break;
            };
            let head = chain.head_index();
            let written = match Writer::new(&a.mem, chain) {
                Ok(mut w) => {
                    let w: &mut Writer<'_> = &mut w;
                    if w.available_bytes() < frame.len() {
                        errs.push(format!(
                            "receive buffer of {} bytes too small for a {}-byte frame",
                            w.available_bytes(),
                            frame.len()
                        ));
                        0
                    } else {
                        let mut f = frame;
                        // num_buffers (bytes 10..12) is 1 without MRG_RXBUF.
                        if f.len() >= VNET_HDR_LEN {
                            f[10] = 1;
                            f[11] = 0;
                        }
                        match w.write_all(&f) {
                            Ok(()) => f.len(),
                            Err(e) => {
                                errs.push(format!("rx chain: {e}"));
                                0
                            }
                        }
                    }
                }
                Err(e) => {
                    errs.push(format!("rx chain: {e:?}"));
                    0
                }
            };
            a.queues[RX]
                .add_used(&a.mem, head, u32::try_from(written).unwrap_or(0))
                .map_err(|e| NetError::UsedRing(format!("{e:?}")))?;
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
        for e in errs {
            self.error("receive", e);
        }
        Ok(())
    }

    /// The guest added receive buffers: poll the TAP again.
    pub fn rx_buffers_added(&mut self) {
        self.rx_blocked = false;
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_NET_F_MAC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config starts with `u8 mac[6]`.
        read_config_bytes(&self.mac, offset, data);
    }

    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError> {
        if args.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                got: args.queues.len(),
            });
        }
        self.active = Some(args);
        self.rx_blocked = false;
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
    }

    fn queue_positions(&self) -> Vec<(u16, u16)> {
        self.active
            .as_ref()
            .map(|a| crate::virtio::positions(&a.queues))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("06:00:ab:cd:ef:01"),
            Some([6, 0, 0xab, 0xcd, 0xef, 1])
        );
        assert_eq!(parse_mac("06:00:ab:cd:ef"), None);
        assert_eq!(parse_mac("06:00:ab:cd:ef:01:02"), None);
        assert_eq!(parse_mac("zz:00:ab:cd:ef:01"), None);
    }
}

#[cfg(test)]
mod device_tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::test_utils::{desc, guest_memory, Harness, BUF_BASE, F_NEXT, F_WRITE};

    fn net() -> Net {
        assert!(
            std::path::Path::new("/dev/net/tun").exists(),
            "/dev/net/tun is missing: these tests need a real TAP (modprobe tun)"
        );
        Net::new(&NetConfig {
            tap_name: None,
            mac: Some([6, 0, 0, 0, 0, 9]),
        })
        .expect("opening a TAP needs root (CAP_NET_ADMIN)")
    }

    #[test]
    fn config_space_has_the_mac() {
        let dev = net();
        assert!(dev.tap().name().starts_with("tap"));
        let mut mac = [0u8; 6];
        dev.read_config(0, &mut mac);
        assert_eq!(mac, [6, 0, 0, 0, 0, 9]);
        assert_ne!(dev.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
    }

    #[test]
    fn malicious_tx_and_rx_chains_do_not_panic_or_stall() {
        let mem = guest_memory();
        let h = Harness::new(&mem, net());
        let end = crate::virtio::test_utils::MEM_SIZE as u64;
        mem.write_slice(&[0u8; 64], GuestAddress(BUF_BASE)).unwrap();
        let chains = [
            vec![desc(end + 0x1000, 64, 0, 0)],   // outside memory
            vec![desc(BUF_BASE, 4, 0, 0)],        // shorter than the header
            vec![desc(BUF_BASE, u32::MAX, 0, 0)], // huge
            vec![desc(BUF_BASE, 64, F_NEXT, 0)],  // loop
            vec![desc(BUF_BASE, 64, F_WRITE, 0)], // wrong direction
            vec![desc(BUF_BASE, 12 + 60, 0, 0)],  // a plain frame
        ];
        for (i, c) in chains.iter().enumerate() {
            h.add(1, c);
            h.with_device(|d| d.process_tx()).unwrap();
            assert_eq!(
                h.used_idx(1),
                u16::try_from(i + 1).unwrap(),
                "tx chain {i} not completed"
            );
        }
        // Receive side: bad buffers are completed with length 0, never panic.
        h.add(
            0,
            &[
                desc(end + 0x1000, 4096, F_WRITE, 0),
                desc(BUF_BASE, 4096, 0, 0),
            ],
        );
        h.with_device(|d| {
            d.pending = Some(vec![0u8; 100]);
            d.process_rx()
        })
        .unwrap();
        assert!(h.used_idx(0) >= 1);
    }
}
