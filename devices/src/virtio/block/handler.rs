//! Event-loop glue for virtio-blk: the queue notification. No logic here.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Block;
use crate::virtio::mmio::MmioTransport;
use crate::VirtioMmioDevice;

/// Subscribes a block transport to the VMM's event loop.
#[derive(Debug)]
pub struct BlockHandler {
    transport: Arc<Mutex<MmioTransport<Block>>>,
}

impl BlockHandler {
    /// Handles events for `transport`.
    pub fn new(transport: Arc<Mutex<MmioTransport<Block>>>) -> Self {
        BlockHandler { transport }
    }
}

impl MutEventSubscriber for BlockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let t = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = ops.add(Events::new(&t.queue_events()[0], EventSet::IN)) {
            log::error!("virtio-blk: cannot watch the queue: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut t = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        let _ = t.queue_events()[0].read();
        if !t.is_activated() {
            return;
        }
        if let Err(e) = t.device_mut().process_queue() {
            log::error!("virtio-blk: {e}; marking the device broken");
            t.mark_broken();
        }
    }
}
