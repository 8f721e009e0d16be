//! The muxer's bounded receive queue, as Firecracker's `muxer_rxq.rs`: the
//! order in which connections get the guest's receive buffers.
//!
//! The queue holds only *where* to look (a connection key), never packets:
//! what to send is kept in each connection's pending state ([`PendingRx`])
//! and built when a receive buffer is there. It holds at most [`RXQ_CAP`]
//! entries. A push into a full queue is refused and the queue marks itself
//! out of sync; once it has drained, the muxer rebuilds it from the pending
//! state of its connections, so nothing a connection owes the guest is lost
//! while a guest that posts no receive buffers cannot grow it.

use std::collections::VecDeque;

/// Most entries in the receive queue.
pub const RXQ_CAP: usize = 256;

/// (host port, guest port).
pub type ConnKey = (u32, u32);

/// What an entry points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxItem {
    /// A connection with pending packets.
    Conn(ConnKey),
    /// A former (or refused) connection the guest is owed a reset for.
    Rst(ConnKey),
}

/// The bounded, possibly out-of-sync queue.
#[derive(Debug)]
pub struct RxQueue {
    q: VecDeque<RxItem>,
    synced: bool,
}

impl Default for RxQueue {
    fn default() -> Self {
        RxQueue {
            q: VecDeque::with_capacity(RXQ_CAP),
            synced: true,
        }
    }
}

impl RxQueue {
    /// Queues `item`, or refuses it (and goes out of sync) when full or
    /// already out of sync. Returns whether it was queued.
    pub fn push(&mut self, item: RxItem) -> bool {
        if self.synced && self.q.len() < RXQ_CAP {
            self.q.push_back(item);
            return true;
        }
        self.synced = false;
        false
    }

    /// The next entry.
    pub fn pop(&mut self) -> Option<RxItem> {
        self.q.pop_front()
    }

    /// Entries queued.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether no entry is queued.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Whether every pending item is queued (no push was refused).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Whether something may be pending: queued entries, or refused pushes
    /// to recover by [`RxQueue::rebuild`].
    pub fn has_pending(&self) -> bool {
        !self.q.is_empty() || !self.synced
    }

    /// The queue's allocation, in entries (stays at [`RXQ_CAP`]).
    pub fn capacity(&self) -> usize {
        self.q.capacity()
    }

    /// Starts a rebuild: an out-of-sync queue that has drained is synced
    /// again, to be refilled by the caller from its pending state (pushes
    /// that do not fit put it out of sync again). Returns whether to refill.
    pub fn begin_rebuild(&mut self) -> bool {
        if self.synced || !self.q.is_empty() {
            return false;
        }
        self.synced = true;
        true
    }

    /// Empties the queue (device reset).
    pub fn clear(&mut self) {
        self.q.clear();
        self.synced = true;
    }
}

/// Control packets a connection owes the guest, plus "data may be ready".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingRx(u8);

impl PendingRx {
    /// The host asks to connect (`REQUEST`).
    pub const REQUEST: PendingRx = PendingRx(1);
    /// The guest's connection was accepted (`RESPONSE`).
    pub const RESPONSE: PendingRx = PendingRx(2);
    /// The guest should hear how much the host consumed (`CREDIT_UPDATE`).
    pub const CREDIT_UPDATE: PendingRx = PendingRx(4);
    /// The host stream may have data (or EOF) for the guest.
    pub const DATA: PendingRx = PendingRx(8);

    /// Adds `p`.
    pub fn insert(&mut self, p: PendingRx) {
        self.0 |= p.0;
    }

    /// Removes `p`.
    pub fn remove(&mut self, p: PendingRx) {
        self.0 &= !p.0;
    }

    /// Whether `p` is pending.
    pub fn contains(self, p: PendingRx) -> bool {
        self.0 & p.0 == p.0
    }

    /// Whether nothing is pending.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Takes the most urgent control item (connection setup first, then
    /// credit), leaving `DATA`.
    pub fn take_control(&mut self) -> Option<PendingRx> {
        let next = [Self::REQUEST, Self::RESPONSE, Self::CREDIT_UPDATE]
            .into_iter()
            .find(|p| self.contains(*p))?;
        self.remove(next);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_refuses_and_goes_out_of_sync() {
        let mut q = RxQueue::default();
        for i in 0..RXQ_CAP {
            assert!(q.push(RxItem::Rst((1, u32::try_from(i).unwrap()))));
        }
        assert!(q.is_synced());
        assert!(!q.push(RxItem::Conn((1, 1))));
        assert!(!q.is_synced());
        // Room again, but still out of sync: pushes keep being refused
        // until a rebuild, so the order stays the rebuild's.
        assert_eq!(q.pop(), Some(RxItem::Rst((1, 0))));
        assert!(!q.push(RxItem::Conn((1, 1))));
        assert_eq!(q.len(), RXQ_CAP - 1);
        assert_eq!(q.capacity(), RXQ_CAP);
    }

    #[test]
    fn rebuild_only_once_drained_and_may_go_out_of_sync_again() {
        let mut q = RxQueue::default();
        for i in 0..=RXQ_CAP {
            q.push(RxItem::Conn((0, u32::try_from(i).unwrap())));
        }
        assert!(!q.begin_rebuild(), "not drained: no rebuild");
        while q.pop().is_some() {}
        assert!(q.has_pending());
        assert!(q.begin_rebuild());
        assert!(!q.begin_rebuild(), "synced: nothing to rebuild");
        let pushed = (0..1000u32)
            .filter(|p| q.push(RxItem::Conn((2, *p))))
            .count();
        assert_eq!((pushed, q.len()), (RXQ_CAP, RXQ_CAP));
        assert!(!q.is_synced(), "1000 items do not fit");
        while q.pop().is_some() {}
        assert!(q.begin_rebuild());
        assert!(q.push(RxItem::Rst((3, 3))));
        assert!(q.is_synced());
        assert_eq!(q.pop(), Some(RxItem::Rst((3, 3))));
        assert!(!q.has_pending());
    }

    #[test]
    fn pending_set_takes_setup_before_credit_and_keeps_data() {
        let mut p = PendingRx::default();
        p.insert(PendingRx::DATA);
        p.insert(PendingRx::CREDIT_UPDATE);
        p.insert(PendingRx::RESPONSE);
        assert_eq!(p.take_control(), Some(PendingRx::RESPONSE));
        assert_eq!(p.take_control(), Some(PendingRx::CREDIT_UPDATE));
        assert_eq!(p.take_control(), None);
        assert!(p.contains(PendingRx::DATA));
        p.remove(PendingRx::DATA);
        assert!(p.is_empty());
    }
}
