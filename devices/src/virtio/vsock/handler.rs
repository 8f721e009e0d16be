//! Event-loop glue for vsock: queue notifications and the backend's Unix
//! sockets, dispatched to the device. No device logic here.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Vsock;
use crate::virtio::mmio::MmioTransport;
use crate::VirtioMmioDevice;

/// Event data of queue `i` is `QUEUE_EVENT_BASE - i`; backend fds use their
/// fd number.
const QUEUE_EVENT_BASE: u32 = u32::MAX;

/// Subscribes a vsock transport to the VMM's event loop.
#[derive(Debug)]
pub struct VsockHandler {
    transport: Arc<Mutex<MmioTransport<Vsock>>>,
}

impl VsockHandler {
    /// Handles events for `transport`.
    pub fn new(transport: Arc<Mutex<MmioTransport<Vsock>>>) -> Self {
        VsockHandler { transport }
    }
}

impl MutEventSubscriber for VsockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let mut t = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        for (i, evt) in t.queue_events().iter().enumerate() {
            let data = QUEUE_EVENT_BASE - u32::try_from(i).unwrap_or(0);
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                log::error!("vsock: cannot watch queue {i}: {e:?}");
            }
        }
        t.device_mut().muxer().init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut t = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        let data = events.data();
        let queues = u32::try_from(t.queue_events().len()).unwrap_or(0);
        if data > QUEUE_EVENT_BASE - queues {
            let i = usize::try_from(QUEUE_EVENT_BASE - data).unwrap_or(0);
            let _ = t.queue_events()[i].read();
        } else {
            let fd = i32::try_from(data).unwrap_or(-1);
            let dev = t.device_mut();
            if dev.muxer().owns(fd) {
                dev.muxer().handle_event(fd, events.event_set(), ops);
            } else if fd >= 0 {
                // Stale registration of a closed connection.
                let _ = ops.remove(events);
                let _ = fd.as_raw_fd();
            }
        }
        let activated = t.is_activated();
        let dev = t.device_mut();
        dev.finish_reset(ops);
        if activated {
            if let Err(e) = dev.process(ops) {
                log::error!("vsock: {e}; marking the device broken");
                t.mark_broken();
            }
        }
    }
}
