//! The vsock device model: config space (the guest's CID), activation, and
//! moving packets between the virtqueues and the [`Muxer`].

use std::io::Read;

use event_manager::EventOps;
use virtio_queue::{DescriptorChain, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::backend::{BackendError, Muxer};
use super::packet::{Header, PacketError, HDR_SIZE};
use crate::virtio::{device_type, read_config_bytes, ActivateArgs, ActivateError, VirtioDevice};

const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
/// `virtio_vsock_event.id` telling the driver every connection is gone
/// (virtio 1.2, 5.10.6.7).
const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];

/// Smallest guest CID (0-2 are reserved).
pub const MIN_GUEST_CID: u32 = 3;

pub use husk_proto::vm::VsockConfig;

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

/// A running device keeps what the driver negotiated.
type Active = ActivateArgs;

/// A virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    cid: u64,
    muxer: Muxer,
    active: Option<Active>,
    reset_pending: bool,
    bad_packets: u64,
    /// After a TRANSPORT_RESET: the driver's event-queue index when it was
    /// sent. Nothing is received until the driver has handled the event
    /// (it then posts a new event buffer): a connection request it took
    /// before would be reset with the old ones.
    held_for_reset: Option<u16>,
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
            held_for_reset: None,
        })
    }

    /// The Unix-socket side.
    pub fn muxer(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// The Unix-socket side, read-only.
    pub fn muxer_ref(&self) -> &Muxer {
        &self.muxer
    }

    /// The guest's context id.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// Puts a TRANSPORT_RESET event in the event queue (after a snapshot
    /// restore: the host side's connections are gone). False when the
    /// device is not running or the driver left no event buffer.
    pub fn send_transport_reset(&mut self) -> Result<bool, VsockError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(false);
        };
        let Some(chain) = a.queues[EVENT].pop_descriptor_chain(&a.mem) else {
            return Ok(false);
        };
        let head = chain.head_index();
        let mut w: Writer<'_> =
            Writer::new(&a.mem, chain).map_err(|e| VsockError::Chain(format!("{e:?}")))?;
        let id = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
        std::io::Write::write_all(&mut w, &id).map_err(|e| VsockError::Chain(e.to_string()))?;
        a.queues[EVENT]
            .add_used(&a.mem, head, 4)
            .map_err(|e| VsockError::UsedRing(format!("{e:?}")))?;
        self.held_for_reset = Some(driver_index(a, EVENT));
        a.interrupt.signal_used_queue();
        Ok(true)
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

    /// Whether the driver has handled the transport reset (see
    /// `held_for_reset`).
    fn reset_handled(&mut self) -> bool {
        let (Some(sent_at), Some(a)) = (self.held_for_reset, self.active.as_ref()) else {
            return true;
        };
        if driver_index(a, EVENT) == sent_at {
            return false;
        }
        self.held_for_reset = None;
        true
    }

    /// Moves pending packets into the guest's receive buffers.
    pub fn process_rx(&mut self, ops: &mut EventOps) -> Result<(), VsockError> {
        if !self.reset_handled() {
            return Ok(());
        }
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

/// The driver's avail index of queue `q` (0 if unreadable).
fn driver_index(a: &Active, q: usize) -> u16 {
    a.queues
        .get(q)
        .and_then(|q| {
            q.avail_idx(&a.mem, std::sync::atomic::Ordering::Acquire)
                .ok()
        })
        .map_or(0, |w| w.0)
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
        self.active = Some(args);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.reset_pending = true;
        self.held_for_reset = None;
    }

    fn queue_positions(&self) -> Vec<(u16, u16)> {
        self.active
            .as_ref()
            .map(|a| crate::virtio::positions(&a.queues))
            .unwrap_or_default()
    }

    fn describe(&self) -> String {
        let Some(a) = self.active.as_ref() else {
            return "not running".into();
        };
        let backlog = self.muxer.rx_backlog();
        format!(
            "{}; interrupt {:#x}; {} connections, {} queued for the guest (pending: {}), {} resets owed, {} bad packets; {}",
            crate::virtio::describe_queues(&a.mem, &a.queues),
            a.interrupt.status(),
            self.muxer.connections(),
            backlog.queued,
            self.muxer.has_rx(),
            backlog.owed_resets,
            self.bad_packets,
            self.muxer.describe_conns(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::test_utils::{desc, guest_memory, Harness, BUF_BASE, F_NEXT, F_WRITE};
    use crate::virtio::vsock::packet::{op, HOST_CID, TYPE_STREAM};
    use crate::virtio::vsock::VsockHandler;
    use crate::VirtioMmioDevice;

    type Em = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    const RX_BUFS: u64 = BUF_BASE;
    const TX_BUF: u64 = BUF_BASE + 0x10_0000;

    struct Rig<'a> {
        h: Harness<'a, Vsock>,
        em: Em,
        uds: std::path::PathBuf,
        rx_seen: u16,
        _dir: tempfile::TempDir,
    }

    fn rig(mem: &GuestMemoryMmap) -> Rig<'_> {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let dev = Vsock::new(&VsockConfig {
            guest_cid: 3,
            uds_path: uds.clone(),
        })
        .unwrap();
        let h = Harness::new(mem, dev);
        // Eight 4 KiB receive buffers.
        let bufs: Vec<_> = (0..8)
            .map(|i| desc(RX_BUFS + i * 0x1000, 4096, F_WRITE, 0))
            .collect();
        h.add(0, &bufs);
        let mut em = Em::new().unwrap();
        em.add_subscriber(Arc::new(Mutex::new(VsockHandler::new(h.transport.clone()))));
        Rig {
            h,
            em,
            uds,
            rx_seen: 0,
            _dir: dir,
        }
    }

    fn pkt(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }

    impl Rig<'_> {
        /// The guest transmits raw bytes as one packet.
        fn send_raw(&mut self, bytes: &[u8]) {
            self.h.mem.write_slice(bytes, GuestAddress(TX_BUF)).unwrap();
            let len = u32::try_from(bytes.len()).unwrap();
            self.h.add(1, &[desc(TX_BUF, len, 0, 0)]);
            self.kick(1);
        }

        fn send(&mut self, h: Header, data: &[u8]) {
            let mut b = h.to_bytes().to_vec();
            b.extend_from_slice(data);
            self.send_raw(&b);
        }

        fn kick(&mut self, q: usize) {
            self.h.transport.lock().unwrap().queue_events()[q]
                .write(1)
                .unwrap();
            self.pump();
        }

        fn pump(&mut self) {
            for _ in 0..5 {
                self.em.run_with_timeout(20).unwrap();
            }
        }

        /// Next packet the device put in a receive buffer.
        fn recv(&mut self) -> Option<(Header, Vec<u8>)> {
            self.pump();
            if self.h.used_idx(0) == self.rx_seen {
                return None;
            }
            let (id, len) = self.h.used_elem(0, self.rx_seen);
            self.rx_seen += 1;
            let addr = RX_BUFS + u64::from(id) * 0x1000;
            let mut buf = vec![0u8; usize::try_from(len).unwrap()];
            self.h.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            let hdr = Header::from_bytes(buf[..HDR_SIZE].try_into().unwrap());
            Some((hdr, buf[HDR_SIZE..].to_vec()))
        }
    }

    #[test]
    fn guest_connects_to_a_host_unix_socket() {
        let mem = guest_memory();
        let mut r = rig(&mem);
        let listener = UnixListener::bind(format!("{}_5000", r.uds.display())).unwrap();
        r.send(pkt(op::REQUEST, 1234, 5000, 0), &[]);
        let (resp, _) = r.recv().expect("RESPONSE");
        assert_eq!(
            (resp.op, resp.src_port, resp.dst_port, resp.dst_cid),
            (op::RESPONSE, 5000, 1234, 3)
        );
        let (mut host, _) = listener.accept().unwrap();
        r.send(pkt(op::RW, 1234, 5000, 5), b"hello");
        let mut got = [0u8; 5];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        host.write_all(b"world").unwrap();
        let (rw, data) = r.recv().expect("RW");
        assert_eq!((rw.op, rw.len, data.as_slice()), (op::RW, 5, &b"world"[..]));
        // Guest closes: the device resets and the host sees EOF.
        let mut shut = pkt(op::SHUTDOWN, 1234, 5000, 0);
        shut.flags = 3;
        r.send(shut, &[]);
        let (rst, _) = r.recv().expect("RST");
        assert_eq!(rst.op, op::RST);
        assert_eq!(host.read(&mut got).unwrap(), 0);
    }

    #[test]
    fn guest_connect_without_listener_is_reset() {
        let mem = guest_memory();
        let mut r = rig(&mem);
        r.send(pkt(op::REQUEST, 1234, 5001, 0), &[]);
        assert_eq!(r.recv().expect("RST").0.op, op::RST);
        // Data for an unknown connection is reset too.
        r.send(pkt(op::RW, 1, 2, 3), b"abc");
        assert_eq!(r.recv().expect("RST").0.op, op::RST);
    }

    #[test]
    fn host_connects_to_a_guest_port() {
        let mem = guest_memory();
        let mut r = rig(&mem);
        let mut host = UnixStream::connect(&r.uds).unwrap();
        host.write_all(b"CONNECT 52\n").unwrap();
        r.pump();
        let (req, _) = r.recv().expect("REQUEST");
        assert_eq!(
            (req.op, req.dst_port, req.dst_cid, req.src_cid),
            (op::REQUEST, 52, 3, HOST_CID)
        );
        r.send(pkt(op::RESPONSE, 52, req.src_port, 0), &[]);
        let mut line = [0u8; 14];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, format!("OK {}\n", req.src_port).as_bytes());
        // The handshake line is not guest data: fwd_cnt stays 0.
        host.write_all(b"ping").unwrap();
        let (rw, data) = r.recv().expect("RW");
        assert_eq!((data.as_slice(), rw.fwd_cnt), (&b"ping"[..], 0));
    }

    #[test]
    fn describe_shows_how_far_each_queue_got() {
        let mem = guest_memory();
        let mut r = rig(&mem);
        let mut host = UnixStream::connect(&r.uds).unwrap();
        host.write_all(b"CONNECT 52\n").unwrap();
        r.pump();
        let text = r.h.with_device(|d| VirtioDevice::describe(d));
        // Eight receive buffers offered, one used for the REQUEST.
        assert!(
            text.starts_with("q0 avail 1/8 used 1/1, q1 avail 0/0"),
            "{text}"
        );
        assert!(text.contains("1 connections, 0 queued"), "{text}");
        assert!(
            text.contains("[1073741824->52 HostConnecting: 0 B for the host"),
            "{text}"
        );
    }

    #[test]
    fn nothing_is_received_until_the_driver_has_handled_a_transport_reset() {
        let mem = guest_memory();
        let mut r = rig(&mem);
        let event_buf = BUF_BASE + 0x20_0000;
        r.h.add(2, &[desc(event_buf, 8, F_WRITE, 0)]);
        assert!(r.h.with_device(|d| d.send_transport_reset().unwrap()));
        let mut host = UnixStream::connect(&r.uds).unwrap();
        host.write_all(b"CONNECT 52\n").unwrap();
        r.pump();
        assert!(r.recv().is_none(), "a request before the reset was handled");
        // The driver handled the event and posts a new event buffer.
        r.h.add(2, &[desc(event_buf, 8, F_WRITE, 0)]);
        r.kick(2);
        let (req, _) = r.recv().expect("REQUEST once the reset was handled");
        assert_eq!((req.op, req.dst_port), (op::REQUEST, 52));
    }

    #[test]
    fn bad_connect_lines_are_refused() {
        let mem = guest_memory();
        let mut r = rig(&mem);
        let mut host = UnixStream::connect(&r.uds).unwrap();
        host.write_all(b"HELLO 52\n").unwrap();
        r.pump();
        let mut reply = String::new();
        host.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("ERR"), "{reply:?}");
        assert!(r.recv().is_none());
    }

    #[test]
    fn malicious_packets_are_dropped_without_stalling() {
        let mem = guest_memory();
        let mut r = rig(&mem);
        let mut wrong_cid = pkt(op::REQUEST, 1, 2, 0);
        wrong_cid.src_cid = 99;
        let mut bad_type = pkt(op::REQUEST, 1, 2, 0);
        bad_type.type_ = 2;
        let overlong = pkt(op::RW, 1, 2, 1000);
        r.send_raw(&[0u8; 10]);
        r.send(wrong_cid, &[]);
        r.send(bad_type, &[]);
        r.send(overlong, b"short");
        // A chain pointing outside guest memory, and a loop.
        let end = crate::virtio::test_utils::MEM_SIZE as u64;
        r.h.add(1, &[desc(end + 4096, 44, 0, 0)]);
        r.kick(1);
        r.h.add(1, &[desc(TX_BUF, 44, F_NEXT, 0)]);
        r.kick(1);
        assert_eq!(r.h.used_idx(1), 6, "every bad packet is completed");
        assert_eq!(r.h.with_device(|d| d.bad_packets()), 6);
        assert!(r.recv().is_none(), "no reply to dropped packets");
        // Still works.
        r.send(pkt(op::REQUEST, 1234, 5002, 0), &[]);
        assert_eq!(r.recv().expect("RST").0.op, op::RST);
    }

    #[test]
    fn guest_overrunning_its_credit_is_reset() {
        let mem = guest_memory();
        let mut r = rig(&mem);
        let listener = UnixListener::bind(format!("{}_5003", r.uds.display())).unwrap();
        r.send(pkt(op::REQUEST, 7, 5003, 0), &[]);
        assert_eq!(r.recv().unwrap().0.op, op::RESPONSE);
        let (_host, _) = listener.accept().unwrap(); // never reads
        let chunk = vec![0u8; 60 * 1024];
        let mut reset = false;
        for _ in 0..40 {
            r.send(pkt(op::RW, 7, 5003, 60 * 1024), &chunk);
            if let Some((h, _)) = r.recv() {
                if h.op == op::RST {
                    reset = true;
                    break;
                }
            }
        }
        assert!(reset, "a guest sending past its credit must be reset");
    }

    #[test]
    fn a_host_listener_with_a_full_backlog_does_not_stall_the_device() {
        use std::sync::atomic::{AtomicBool, Ordering};

        use crate::virtio::vsock::uds::{connect_nonblocking, tests::tiny_backlog_listener};

        let mem = guest_memory();
        let mut r = rig(&mem);
        let stuck = std::path::PathBuf::from(format!("{}_5100", r.uds.display()));
        let _never_accepts = tiny_backlog_listener(&stuck);
        let held: Vec<_> = std::iter::from_fn(|| connect_nonblocking(&stuck).ok())
            .take(16)
            .collect();
        assert!(held.len() < 16, "backlog never filled");
        // A blocking connect would hang the test: fail it instead.
        let done = Arc::new(AtomicBool::new(false));
        let watch = done.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(30));
            if !watch.load(Ordering::SeqCst) {
                eprintln!("the vsock device thread blocked on a full listener backlog");
                std::process::abort();
            }
        });
        r.send(pkt(op::REQUEST, 40, 5100, 0), &[]);
        assert_eq!(r.recv().expect("RST").0.op, op::RST);
        // Other connections keep flowing.
        let listener = UnixListener::bind(format!("{}_5101", r.uds.display())).unwrap();
        r.send(pkt(op::REQUEST, 41, 5101, 0), &[]);
        assert_eq!(r.recv().expect("RESPONSE").0.op, op::RESPONSE);
        let (mut host, _) = listener.accept().unwrap();
        r.send(pkt(op::RW, 41, 5101, 2), b"ok");
        let mut got = [0u8; 2];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ok");
        done.store(true, Ordering::SeqCst);
    }
}
