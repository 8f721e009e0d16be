//! Event-loop glue for virtio-net: queue notifications and TAP readiness.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Net;
use crate::virtio::mmio::MmioTransport;
use crate::VirtioMmioDevice;

const RX_QUEUE: u32 = 0;
const TX_QUEUE: u32 = 1;
const TAP: u32 = 2;

/// Subscribes a net transport to the VMM's event loop.
#[derive(Debug)]
pub struct NetHandler {
    transport: Arc<Mutex<MmioTransport<Net>>>,
    tap_polled: bool,
}

impl NetHandler {
    /// Handles events for `transport`.
    pub fn new(transport: Arc<Mutex<MmioTransport<Net>>>) -> Self {
        NetHandler {
            transport,
            tap_polled: false,
        }
    }
}

impl MutEventSubscriber for NetHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let t = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        for (i, data) in [(0usize, RX_QUEUE), (1, TX_QUEUE)] {
            if let Err(e) = ops.add(Events::with_data(&t.queue_events()[i], data, EventSet::IN)) {
                log::error!("virtio-net: cannot watch queue {i}: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut t = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        match events.data() {
            RX_QUEUE => {
                let _ = t.queue_events()[0].read();
                t.device_mut().rx_buffers_added();
            }
            TX_QUEUE => {
                let _ = t.queue_events()[1].read();
            }
            _ => {}
        }
        if !t.is_activated() {
            return;
        }
        let dev = t.device_mut();
        let res = dev.process_tx().and_then(|()| dev.process_rx());
        let want = dev.wants_tap_reads();
        if want != self.tap_polled {
            let fd = dev.tap().as_raw_fd();
            let ev = Events::with_data_raw(fd, TAP, EventSet::IN);
            let r = if want { ops.add(ev) } else { ops.remove(ev) };
            match r {
                Ok(()) => self.tap_polled = want,
                Err(e) => log::error!("virtio-net: cannot change TAP polling: {e:?}"),
            }
        }
        if let Err(e) = res {
            log::error!("virtio-net: {e}; marking the device broken");
            t.mark_broken();
        }
    }
}
