//! The host side of virtio-vsock, as Firecracker designed it: guest streams
//! are multiplexed onto Unix sockets.
//!
//! - A host process connects to the device's Unix socket `uds_path` and
//!   writes `CONNECT <port>\n`; once the guest listener on `<port>` accepts,
//!   it reads `OK <host_port>\n` and the stream is connected.
//! - A guest connection to host port P is connected to the Unix socket
//!   `<uds_path>_P`; nothing listening there resets it.
//!
//! Flow control follows virtio 1.2, 5.10.6.3: husk never sends the guest
//! more than the credit it advertised, and advertises a receive buffer of
//! [`CONN_BUF_ALLOC`] bytes per connection, which bounds what it buffers for
//! a slow host reader. A guest that sends beyond its credit is reset.
//!
//! Everything a hostile guest can make husk hold is bounded: connections
//! and owed resets together by [`MAX_CONNECTIONS`], the receive queue by
//! [`RXQ_CAP`](super::rxq::RXQ_CAP) (see [`super::rxq`]). Replies are not
//! queued as packets but kept as per-connection pending state, built when
//! the guest posts a receive buffer. Connecting to a host socket never
//! blocks (see [`super::uds`]): a host listener with a full backlog refuses.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::{EventOps, Events};
use vmm_sys_util::epoll::EventSet;

use super::packet::{
    op, Header, HDR_SIZE, HOST_CID, MAX_PKT_DATA, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::rxq::{ConnKey, PendingRx, RxItem, RxQueue};
use super::uds::connect_nonblocking;

/// Receive buffer husk advertises for each connection.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Most connections at once, counting former ones still owed a reset.
pub const MAX_CONNECTIONS: usize = 1024;
/// First host port for host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;

/// Errors setting up the backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The Unix socket could not be created.
    #[error("cannot listen on vsock socket {path}")]
    Listen {
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host asked to connect; waiting for the guest's RESPONSE.
    HostConnecting,
    Established,
}

/// At most this many connections are described (see
/// [`Muxer::describe_conns`]).
const DESCRIBED_CONNS: usize = 8;

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Bytes of guest data written to the host stream.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest data the host stream did not take yet.
    to_stream: VecDeque<u8>,
    /// Bytes at the front of `to_stream` that are husk's own (the `OK`
    /// handshake line), not guest data: they never count as credit.
    handshake_bytes: usize,
    /// What this connection owes the guest.
    pending: PendingRx,
    /// An `RxItem::Conn` for it is in the receive queue.
    queued: bool,
    /// Interest registered with the event loop, if any.
    registered: Option<EventSet>,
    /// The host end hung up (epoll HUP): no longer polled.
    hup: bool,
    /// The host stream reached EOF and the guest was told.
    host_eof: bool,
    /// The guest will send no more: shut the host stream's write side once
    /// `to_stream` drains.
    guest_done_sending: bool,
}

impl Conn {
    fn new(stream: UnixStream, state: State, peer: &Header) -> Self {
        Conn {
            stream,
            state,
            peer_buf_alloc: peer.buf_alloc,
            peer_fwd_cnt: Wrapping(peer.fwd_cnt),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            to_stream: VecDeque::new(),
            handshake_bytes: 0,
            pending: PendingRx::default(),
            queued: false,
            registered: None,
            hup: false,
            host_eof: false,
            guest_done_sending: false,
        }
    }

    /// Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.pending.contains(PendingRx::DATA)
            && !self.host_eof
            && self.peer_credit() > 0
    }
}

#[derive(Debug)]
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The size of what waits for the guest's receive buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxBacklog {
    /// Receive-queue entries.
    pub queued: usize,
    /// Receive-queue allocation, in entries.
    pub allocated: usize,
    /// Former or refused connections owed a reset.
    pub owed_resets: usize,
}

/// Connections between guest streams and host Unix sockets.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<ConnKey, Conn>,
    by_fd: HashMap<RawFd, ConnKey>,
    pending: HashMap<RawFd, PendingHost>,
    rxq: RxQueue,
    /// Keys owed a reset and no longer (or never) connections.
    owed_rst: HashSet<ConnKey>,
    /// Resets not sent because [`MAX_CONNECTIONS`] was reached.
    dropped_rst: u64,
    next_local_port: u32,
}

fn fd_data(fd: RawFd) -> u32 {
    u32::try_from(fd).unwrap_or(u32::MAX)
}

impl Muxer {
    /// Listens on `uds_path` (replacing a stale socket file).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, BackendError> {
        let listen_err = |source| BackendError::Listen {
            path: uds_path.to_path_buf(),
            source,
        };
        if std::fs::symlink_metadata(uds_path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            std::fs::remove_file(uds_path).map_err(listen_err)?;
        }
        let listener = UnixListener::bind(uds_path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            pending: HashMap::new(),
            rxq: RxQueue::default(),
            owed_rst: HashSet::new(),
            dropped_rst: 0,
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// Registers the listening socket.
    pub fn init(&mut self, ops: &mut EventOps) {
        let fd = self.listener.as_raw_fd();
        if let Err(e) = ops.add(Events::with_data(&self.listener, fd_data(fd), EventSet::IN)) {
            log::error!("vsock: cannot watch {}: {e:?}", self.uds_path.display());
        }
    }

    /// Whether `fd` belongs to this backend.
    pub fn owns(&self, fd: RawFd) -> bool {
        fd == self.listener.as_raw_fd()
            || self.by_fd.contains_key(&fd)
            || self.pending.contains_key(&fd)
    }

    /// Whether packets wait for the guest's receive queue.
    pub fn has_rx(&self) -> bool {
        self.rxq.has_pending()
    }

    /// What waits for the guest's receive buffers, and what it holds.
    pub fn rx_backlog(&self) -> RxBacklog {
        RxBacklog {
            queued: self.rxq.len(),
            allocated: self.rxq.capacity(),
            owed_resets: self.owed_rst.len(),
        }
    }

    /// Number of live connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The flow-control state of the first [`DESCRIBED_CONNS`] connections,
    /// for the diagnosis of a stalled stream: bytes waiting for the host
    /// stream and whether it is polled for room, its hang-up, the credit
    /// not yet reported to the guest, the guest's credit, what is owed.
    pub fn describe_conns(&self) -> String {
        self.conns
            .iter()
            .take(DESCRIBED_CONNS)
            .map(|((local, peer), c)| {
                format!(
                    "[{local}->{peer} {:?}: {} B for the host (polled for room: {}), hup {}, host eof {}, {} B credit unreported, guest credit {} B, owes {:?}, queued {}]",
                    c.state,
                    c.to_stream.len(),
                    c.registered.is_some_and(|r| r.contains(EventSet::OUT)),
                    c.hup,
                    c.host_eof,
                    (c.fwd_cnt - c.last_fwd_cnt_sent).0,
                    c.peer_credit(),
                    c.pending,
                    c.queued
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn header(&self, key: ConnKey, op: u16, len: u32, flags: u32) -> Header {
        let fwd_cnt = self.conns.get(&key).map_or(0, |c| c.fwd_cnt.0);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt,
        }
    }

    /// Records that connection `key` owes the guest `p`, and queues the
    /// connection unless it is queued already.
    fn mark(&mut self, key: ConnKey, p: PendingRx) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        c.pending.insert(p);
        if !c.queued {
            c.queued = self.rxq.push(RxItem::Conn(key));
        }
    }

    /// Owes the guest a reset for `key`, which is not a connection (any
    /// more). Refused when former connections and live ones together reach
    /// [`MAX_CONNECTIONS`]; a connection just removed always has room.
    fn owe_reset(&mut self, key: ConnKey) {
        if self.owed_rst.contains(&key) {
            return;
        }
        if self.owed_rst.len() + self.conns.len() >= MAX_CONNECTIONS {
            self.dropped_rst += 1;
            if self.dropped_rst.is_power_of_two() {
                log::warn!(
                    "vsock: guest is owed too many resets; dropped {} so far",
                    self.dropped_rst
                );
            }
            return;
        }
        self.owed_rst.insert(key);
        self.rxq.push(RxItem::Rst(key));
    }

    /// Drops connection `key` and owes the guest a reset for it.
    fn reset_conn(&mut self, key: ConnKey, ops: &mut EventOps) {
        self.remove_conn(key, ops);
        self.owe_reset(key);
    }

    /// Whether the guest can have another connection.
    fn has_room(&self) -> bool {
        self.conns.len() + self.owed_rst.len() + self.pending.len() < MAX_CONNECTIONS
    }

    fn remove_conn(&mut self, key: ConnKey, ops: &mut EventOps) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            if let Some(set) = c.registered {
                let _ = ops.remove(Events::with_data(&c.stream, fd_data(fd), set));
            }
        }
    }

    /// Makes the event-loop interest of a connection match its state.
    fn sync(&mut self, key: ConnKey, ops: &mut EventOps) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let read = c.wants_read();
        if c.hup {
            // No longer polled: whatever is left in the socket is read when
            // the guest has room.
            if read {
                self.mark(key, PendingRx::DATA);
            }
            return;
        }
        let mut want = EventSet::empty();
        if read {
            want |= EventSet::IN;
        }
        if !c.to_stream.is_empty() {
            want |= EventSet::OUT;
        }
        let fd = c.stream.as_raw_fd();
        let ev = Events::with_data(&c.stream, fd_data(fd), want);
        let res = match c.registered {
            None => ops.add(ev),
            Some(cur) if cur != want => ops.modify(ev),
            Some(_) => Ok(()),
        };
        match res {
            Ok(()) => {
                log::trace!(
                    "vsock: {key:?} interest {want:?} credit {}",
                    c.peer_credit()
                );
                c.registered = Some(want)
            }
            Err(e) => log::error!("vsock: cannot watch connection {key:?}: {e:?}"),
        }
    }

    /// Handles one packet the guest sent (already validated by
    /// [`Header::parse_tx`]); `data` is its payload.
    pub fn handle_guest_packet(&mut self, h: &Header, data: &[u8], ops: &mut EventOps) {
        let key = (h.dst_port, h.src_port);
        log::trace!(
            "vsock: guest op {} on {key:?} len {} buf_alloc {} fwd_cnt {}",
            h.op,
            h.len,
            h.buf_alloc,
            h.fwd_cnt
        );
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        }
        match h.op {
            op::REQUEST => self.guest_connect(key, h, ops),
            op::RESPONSE => self.guest_accepted(key, ops),
            op::RST => {
                // The guest's side is gone: it needs no reset from us.
                self.owed_rst.remove(&key);
                self.remove_conn(key, ops);
            }
            op::SHUTDOWN => self.guest_shutdown(key, h.flags, ops),
            op::RW => self.guest_data(key, data, ops),
            op::CREDIT_UPDATE => {
                if !self.conns.contains_key(&key) {
                    self.owe_reset(key);
                }
            }
            op::CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.mark(key, PendingRx::CREDIT_UPDATE);
                } else {
                    self.owe_reset(key);
                }
            }
            _ => self.owe_reset(key),
        }
        self.sync(key, ops);
    }

    fn guest_connect(&mut self, key: ConnKey, h: &Header, ops: &mut EventOps) {
        if self.conns.contains_key(&key) {
            return self.reset_conn(key, ops);
        }
        // A new request from this port supersedes a reset still owed to it.
        self.owed_rst.remove(&key);
        if !self.has_room() {
            return self.owe_reset(key);
        }
        let path = PathBuf::from(format!("{}_{}", self.uds_path.display(), key.0));
        match connect_nonblocking(&path) {
            Ok(s) => {
                self.by_fd.insert(s.as_raw_fd(), key);
                self.conns.insert(key, Conn::new(s, State::Established, h));
                self.mark(key, PendingRx::RESPONSE);
            }
            Err(e) => {
                log::debug!("vsock: guest connect to {}: {e}", path.display());
                self.owe_reset(key);
            }
        }
    }

    fn guest_accepted(&mut self, key: ConnKey, ops: &mut EventOps) {
        match self.conns.get_mut(&key) {
            Some(c) if c.state == State::HostConnecting => {
                c.state = State::Established;
                let line = format!("OK {}\n", key.0);
                c.handshake_bytes = line.len();
                c.to_stream.extend(line.as_bytes());
                self.flush_to_stream(key, ops);
            }
            Some(_) => self.reset_conn(key, ops),
            None => self.owe_reset(key),
        }
    }

    fn guest_shutdown(&mut self, key: ConnKey, flags: u32, ops: &mut EventOps) {
        let Some(c) = self.conns.get_mut(&key) else {
            return self.owe_reset(key);
        };
        if flags & SHUTDOWN_SEND != 0 {
            c.guest_done_sending = true;
        }
        if flags & SHUTDOWN_RCV != 0 && flags & SHUTDOWN_SEND != 0 {
            // Full close: flush what we can, then reset (the guest waits for it).
            let _ = write_some(&mut c.stream, &mut c.to_stream);
            return self.reset_conn(key, ops);
        }
        self.flush_to_stream(key, ops);
    }

    fn guest_data(&mut self, key: ConnKey, data: &[u8], ops: &mut EventOps) {
        let Some(c) = self.conns.get_mut(&key) else {
            return self.owe_reset(key);
        };
        if c.state != State::Established {
            return self.reset_conn(key, ops);
        }
        let buffered = c.to_stream.len().saturating_add(data.len());
        if u32::try_from(buffered).map_or(true, |b| b > CONN_BUF_ALLOC) {
            log::warn!("vsock: guest overran its credit on {key:?}; resetting");
            return self.reset_conn(key, ops);
        }
        c.to_stream.extend(data);
        self.flush_to_stream(key, ops);
    }

    /// Writes buffered guest data to the host stream; credits the guest.
    fn flush_to_stream(&mut self, key: ConnKey, ops: &mut EventOps) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        match write_some(&mut c.stream, &mut c.to_stream) {
            Ok(n) => {
                let ours = n.min(c.handshake_bytes);
                c.handshake_bytes -= ours;
                c.fwd_cnt += Wrapping(u32::try_from(n - ours).unwrap_or(u32::MAX));
                if c.to_stream.is_empty() && c.guest_done_sending {
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                }
                let unreported = (c.fwd_cnt - c.last_fwd_cnt_sent).0;
                if unreported >= CONN_BUF_ALLOC / 4 {
                    self.mark(key, PendingRx::CREDIT_UPDATE);
                }
            }
            Err(e) => {
                log::debug!("vsock: host stream {key:?}: {e}");
                self.reset_conn(key, ops);
            }
        }
    }

    /// Handles readiness of one of the backend's fds.
    pub fn handle_event(&mut self, fd: RawFd, set: EventSet, ops: &mut EventOps) {
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
        } else if self.pending.contains_key(&fd) {
            self.read_connect_line(fd, ops);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            self.conn_event(key, set, ops);
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if !self.has_room() || s.set_nonblocking(true).is_err() {
                        continue; // dropped: closes the stream
                    }
                    let fd = s.as_raw_fd();
                    if ops
                        .add(Events::with_data(&s, fd_data(fd), EventSet::IN))
                        .is_ok()
                    {
                        self.pending.insert(
                            fd,
                            PendingHost {
                                stream: s,
                                line: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    return;
                }
            }
        }
    }

    fn drop_pending(&mut self, fd: RawFd, ops: &mut EventOps) {
        if let Some(p) = self.pending.remove(&fd) {
            let _ = ops.remove(Events::with_data(&p.stream, fd_data(fd), EventSet::IN));
        }
    }

    fn read_connect_line(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        // Byte by byte: nothing after the newline belongs to the handshake.
        loop {
            match p.stream.read(&mut byte) {
                Ok(0) => return self.drop_pending(fd, ops),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) if p.line.len() < MAX_CONNECT_LINE => p.line.push(byte[0]),
                Ok(_) => return self.drop_pending(fd, ops),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.drop_pending(fd, ops),
            }
        }
        let port = std::str::from_utf8(&p.line)
            .ok()
            .and_then(|l| l.trim_end_matches('\r').strip_prefix("CONNECT "))
            .and_then(|n| n.trim().parse::<u32>().ok());
        let Some(port) = port else {
            let _ = p.stream.write_all(b"ERR expected CONNECT <port>\n");
            return self.drop_pending(fd, ops);
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let local = self.alloc_local_port(port);
        let key = (local, port);
        let hello = Header {
            buf_alloc: 0,
            ..Header::default()
        };
        let mut c = Conn::new(p.stream, State::HostConnecting, &hello);
        c.registered = Some(EventSet::IN);
        self.by_fd.insert(fd, key);
        self.conns.insert(key, c);
        log::debug!("vsock: host connects to guest port {port} as host port {local}");
        self.mark(key, PendingRx::REQUEST);
        self.sync(key, ops);
    }

    /// The host port the next host-initiated connection gets.
    pub fn next_host_port(&self) -> u32 {
        self.next_local_port
    }

    /// Goes on from host port `port` (after a snapshot's restore: the
    /// guest may still hold sockets of the ports given before).
    pub fn continue_host_ports(&mut self, port: u32) {
        self.next_local_port = port.max(FIRST_LOCAL_PORT);
    }

    fn alloc_local_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer)) {
                return p;
            }
        }
    }

    fn conn_event(&mut self, key: ConnKey, set: EventSet, ops: &mut EventOps) {
        if set.contains(EventSet::OUT) {
            self.flush_to_stream(key, ops);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) && !c.hup {
            c.hup = true;
            if let Some(cur) = c.registered.take() {
                let fd = c.stream.as_raw_fd();
                let _ = ops.remove(Events::with_data(&c.stream, fd_data(fd), cur));
            }
            if c.state == State::HostConnecting {
                // The host gave up before the guest answered.
                return self.reset_conn(key, ops);
            }
        }
        if set.intersects(EventSet::IN | EventSet::HANG_UP) && c.wants_read() {
            self.mark(key, PendingRx::DATA);
        }
        self.sync(key, ops);
    }

    /// Fills one guest receive buffer with the next pending packet. Returns
    /// the bytes written, or `None` when nothing is pending. `room` is the
    /// buffer's size; `write` stores the header and payload.
    pub fn next_rx<W: Write>(
        &mut self,
        room: usize,
        out: &mut W,
        ops: &mut EventOps,
    ) -> Option<io::Result<usize>> {
        if room < HDR_SIZE {
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("receive buffer of {room} bytes is smaller than a header"),
            )));
        }
        // One pass over the queue at most: a connection that yields nothing
        // (no credit, no data yet) may requeue itself.
        for _ in 0..=super::rxq::RXQ_CAP {
            if self.rxq.is_empty() {
                self.resync();
            }
            match self.rxq.pop()? {
                RxItem::Rst(key) => {
                    if self.owed_rst.remove(&key) {
                        let h = self.header(key, op::RST, 0, 0);
                        return Some(out.write_all(&h.to_bytes()).map(|()| HDR_SIZE));
                    }
                }
                RxItem::Conn(key) => {
                    if let Some(r) = self.conn_rx(key, room - HDR_SIZE, out, ops) {
                        return Some(r);
                    }
                }
            }
        }
        None
    }

    /// Rebuilds an out-of-sync, drained receive queue from the owed resets
    /// and the connections' pending state. What does not fit leaves the
    /// queue out of sync again, for the next rebuild.
    fn resync(&mut self) {
        if !self.rxq.begin_rebuild() {
            return;
        }
        for key in &self.owed_rst {
            if !self.rxq.push(RxItem::Rst(*key)) {
                break;
            }
        }
        for (key, c) in &mut self.conns {
            c.queued = !c.pending.is_empty() && self.rxq.push(RxItem::Conn(*key));
        }
    }

    /// Builds the next packet connection `key` owes the guest: a control
    /// packet first, else data. Requeues the connection if it owes more.
    fn conn_rx<W: Write>(
        &mut self,
        key: ConnKey,
        room: usize,
        out: &mut W,
        ops: &mut EventOps,
    ) -> Option<io::Result<usize>> {
        let c = self.conns.get_mut(&key)?;
        c.queued = false;
        let r = if let Some(p) = c.pending.take_control() {
            let op = if p == PendingRx::REQUEST {
                op::REQUEST
            } else if p == PendingRx::RESPONSE {
                op::RESPONSE
            } else {
                c.last_fwd_cnt_sent = c.fwd_cnt;
                op::CREDIT_UPDATE
            };
            let h = self.header(key, op, 0, 0);
            Some(out.write_all(&h.to_bytes()).map(|()| HDR_SIZE))
        } else if c.pending.contains(PendingRx::DATA) {
            self.rx_data(key, room, out, ops)
        } else {
            None
        };
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.pending.is_empty() && !c.queued {
                c.queued = self.rxq.push(RxItem::Conn(key));
            }
        }
        r
    }

    fn rx_data<W: Write>(
        &mut self,
        key: ConnKey,
        room: usize,
        out: &mut W,
        ops: &mut EventOps,
    ) -> Option<io::Result<usize>> {
        let c = self.conns.get_mut(&key)?;
        c.pending.remove(PendingRx::DATA);
        let max = [
            c.peer_credit(),
            MAX_PKT_DATA,
            u32::try_from(room).unwrap_or(u32::MAX),
        ]
        .into_iter()
        .min()
        .unwrap_or(0);
        if max == 0 || c.state != State::Established || c.host_eof {
            self.sync(key, ops);
            return None;
        }
        let mut buf = vec![0u8; usize::try_from(max).unwrap_or(0)];
        match c.stream.read(&mut buf) {
            Ok(0) => {
                c.host_eof = true;
                let h = self.header(key, op::SHUTDOWN, 0, SHUTDOWN_SEND);
                self.sync(key, ops);
                Some(out.write_all(&h.to_bytes()).map(|()| HDR_SIZE))
            }
            Ok(n) => {
                let len = u32::try_from(n).unwrap_or(0);
                c.rx_cnt += Wrapping(len);
                c.last_fwd_cnt_sent = c.fwd_cnt;
                let h = self.header(key, op::RW, len, 0);
                self.sync(key, ops);
                let r = out
                    .write_all(&h.to_bytes())
                    .and_then(|()| out.write_all(&buf[..n]))
                    .map(|()| HDR_SIZE + n);
                Some(r)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.sync(key, ops);
                None
            }
            Err(e) => {
                log::debug!("vsock: reading host stream {key:?}: {e}");
                self.remove_conn(key, ops);
                let h = self.header(key, op::RST, 0, 0);
                Some(out.write_all(&h.to_bytes()).map(|()| HDR_SIZE))
            }
        }
    }

    /// Drops every connection (device reset).
    pub fn reset(&mut self, ops: &mut EventOps) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove_conn(k, ops);
        }
        let fds: Vec<RawFd> = self.pending.keys().copied().collect();
        for fd in fds {
            self.drop_pending(fd, ops);
        }
        self.rxq.clear();
        self.owed_rst.clear();
    }
}

/// Writes as much of `buf` as the stream takes; returns the bytes written.
fn write_some(stream: &mut UnixStream, buf: &mut VecDeque<u8>) -> io::Result<usize> {
    let mut total = 0;
    while !buf.is_empty() {
        let (a, _) = buf.as_slices();
        match stream.write(a) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf.drain(..n);
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
