//! Muxer tests driven directly (no virtqueues), inside a real event loop so
//! the muxer gets its `EventOps`.

use std::io::{Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::vsock::rxq::RXQ_CAP;

type Em = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;
type Job = Box<dyn FnOnce(&mut Muxer, &mut EventOps) + Send>;
const JOB_DATA: u32 = u32::MAX;

/// Runs jobs on the muxer from inside the event loop.
struct MuxSub {
    mux: Muxer,
    evt: EventFd,
    job: Arc<Mutex<Option<Job>>>,
}

impl MutEventSubscriber for MuxSub {
    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::with_data(&self.evt, JOB_DATA, EventSet::IN))
            .unwrap();
        self.mux.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == JOB_DATA {
            let _ = self.evt.read();
            if let Some(job) = self.job.lock().unwrap().take() {
                job(&mut self.mux, ops);
            }
        } else {
            self.mux.handle_event(events.fd(), events.event_set(), ops);
        }
    }
}

pub(super) struct MuxRig {
    em: Em,
    evt: EventFd,
    job: Arc<Mutex<Option<Job>>>,
    pub(super) uds: PathBuf,
    _dir: tempfile::TempDir,
}

impl MuxRig {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let job = Arc::new(Mutex::new(None));
        let sub = MuxSub {
            mux: Muxer::new(3, &uds).unwrap(),
            evt: evt.try_clone().unwrap(),
            job: job.clone(),
        };
        let mut em: Em = EventManager::new().unwrap();
        let sub: Arc<Mutex<dyn MutEventSubscriber + Send>> = Arc::new(Mutex::new(sub));
        em.add_subscriber(sub);
        MuxRig {
            em,
            evt,
            job,
            uds,
            _dir: dir,
        }
    }

    /// Runs `f` on the muxer inside the event loop.
    pub(super) fn with<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Muxer, &mut EventOps) -> R + Send + 'static,
    ) -> R {
        let out = Arc::new(Mutex::new(None));
        let slot = out.clone();
        *self.job.lock().unwrap() = Some(Box::new(move |m, ops| {
            *slot.lock().unwrap() = Some(f(m, ops));
        }));
        self.evt.write(1).unwrap();
        while out.lock().unwrap().is_none() {
            self.em.run_with_timeout(1000).unwrap();
        }
        let r = out.lock().unwrap().take().unwrap();
        r
    }

    /// Lets the muxer handle socket readiness.
    pub(super) fn pump(&mut self) {
        for _ in 0..5 {
            self.em.run_with_timeout(20).unwrap();
        }
    }

    /// The guest sends control packet `op` from `src` to host port `dst`.
    pub(super) fn send(&mut self, op: u16, src: u32, dst: u32, flags: u32) {
        self.with(move |m, ops| m.handle_guest_packet(&guest(op, src, dst, flags), &[], ops));
    }

    /// Every packet the muxer has for the guest, given big buffers.
    pub(super) fn drain(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.with(|m, ops| {
            let mut got = Vec::new();
            let mut buf = Vec::new();
            while let Some(r) = m.next_rx(4096, &mut buf, ops) {
                let n = r.unwrap();
                let h = Header::from_bytes(buf[..HDR_SIZE].try_into().unwrap());
                got.push((h, buf[HDR_SIZE..n].to_vec()));
                buf.clear();
            }
            got
        })
    }
}

pub(super) fn guest(op: u16, src_port: u32, dst_port: u32, flags: u32) -> Header {
    Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

/// Replies the guest got for its port `guest_port`.
fn ops_for(got: &[(Header, Vec<u8>)], guest_port: u32) -> Vec<u16> {
    got.iter()
        .filter(|(h, _)| h.dst_port == guest_port)
        .map(|(h, _)| h.op)
        .collect()
}

#[test]
fn ten_million_bogus_packets_keep_the_rx_queue_bounded_and_lose_nothing_pending() {
    let mut r = MuxRig::new();
    let listener = UnixListener::bind(format!("{}_5000", r.uds.display())).unwrap();
    // Three legitimate connections, replies drained.
    for port in [1, 2, 3] {
        r.send(op::REQUEST, port, 5000, 0);
    }
    let got = r.drain();
    assert_eq!(got.len(), 3, "{got:?}");
    let mut hosts: Vec<UnixStream> = (0..3).map(|_| listener.accept().unwrap().0).collect();
    let start = r.with(|m, _| m.rx_backlog());
    assert_eq!((start.queued, start.owed_resets), (0, 0));

    // The flood: no receive buffers, 10 million packets that each want a
    // reset (unknown connections) or ask for credit.
    let max = r.with(|m, ops| {
        let mut max = m.rx_backlog();
        for i in 0..10_000_000u32 {
            let o = [
                op::CREDIT_REQUEST,
                op::CREDIT_UPDATE,
                op::SHUTDOWN,
                op::RESPONSE,
            ][(i % 4) as usize];
            m.handle_guest_packet(&guest(o, 100 + i % 50_000, 7000 + i % 3, 0), &[], ops);
            if i % 4096 == 0 {
                // Credit requests on a live connection too.
                m.handle_guest_packet(&guest(op::CREDIT_REQUEST, 1, 5000, 0), &[], ops);
                let b = m.rx_backlog();
                max.queued = max.queued.max(b.queued);
                max.allocated = max.allocated.max(b.allocated);
                max.owed_resets = max.owed_resets.max(b.owed_resets);
            }
        }
        max
    });
    assert!(max.queued <= RXQ_CAP, "{max:?}");
    assert_eq!(
        max.allocated, start.allocated,
        "the queue's allocation stays flat"
    );
    assert!(max.owed_resets + 3 <= MAX_CONNECTIONS, "{max:?}");

    // Legitimate state that arises while the queue is out of sync: data
    // from the host on connection 2, a full shutdown of connection 3.
    hosts[1].write_all(b"hello").unwrap();
    r.pump();
    r.send(op::SHUTDOWN, 3, 5000, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert!(r.with(|m, _| m.has_rx()));

    // Receive buffers at last: everything owed arrives.
    let got = r.drain();
    assert_eq!(
        ops_for(&got, 1),
        vec![op::CREDIT_UPDATE],
        "one credit update"
    );
    let data: Vec<_> = got.iter().filter(|(h, _)| h.dst_port == 2).collect();
    assert_eq!(data.len(), 1, "{data:?}");
    assert_eq!(
        (data[0].0.op, data[0].1.as_slice()),
        (op::RW, &b"hello"[..])
    );
    assert_eq!(ops_for(&got, 3), vec![op::RST]);
    assert!(got.len() <= MAX_CONNECTIONS + 2, "{}", got.len());
    let end = r.with(|m, _| (m.has_rx(), m.rx_backlog()));
    assert!(!end.0);
    assert_eq!((end.1.queued, end.1.owed_resets), (0, 0));
    // Connection 3's host end sees EOF; the others still work.
    let mut b = [0u8; 1];
    assert_eq!(hosts[2].read(&mut b).unwrap(), 0);
    let data = vec![9u8; 3];
    let h = Header {
        len: 3,
        ..guest(op::RW, 1, 5000, 0)
    };
    r.with(move |m, ops| m.handle_guest_packet(&h, &data, ops));
    let mut got3 = [0u8; 3];
    hosts[0].read_exact(&mut got3).unwrap();
    assert_eq!(got3, [9, 9, 9]);
}

#[test]
fn a_new_request_cancels_an_owed_reset_and_a_guest_reset_needs_no_reply() {
    let mut r = MuxRig::new();
    r.send(op::CREDIT_REQUEST, 10, 6000, 0); // unknown: owes a reset
    r.send(op::CREDIT_REQUEST, 11, 6000, 0);
    r.send(op::RST, 11, 6000, 0); // the guest already gave up on it
    let _l = UnixListener::bind(format!("{}_6000", r.uds.display())).unwrap();
    r.send(op::REQUEST, 10, 6000, 0);
    let got = r.drain();
    assert_eq!(ops_for(&got, 10), vec![op::RESPONSE], "{got:?}");
    assert!(ops_for(&got, 11).is_empty(), "{got:?}");
}

#[test]
fn resets_beyond_the_connection_budget_are_dropped() {
    let mut r = MuxRig::new();
    let n = u32::try_from(MAX_CONNECTIONS).unwrap() + 500;
    r.with(move |m, ops| {
        for p in 0..n {
            m.handle_guest_packet(&guest(op::CREDIT_UPDATE, p, 1, 0), &[], ops);
        }
    });
    let b = r.with(|m, _| m.rx_backlog());
    assert_eq!((b.queued, b.owed_resets), (RXQ_CAP, MAX_CONNECTIONS));
    assert_eq!(r.drain().len(), MAX_CONNECTIONS);
}
