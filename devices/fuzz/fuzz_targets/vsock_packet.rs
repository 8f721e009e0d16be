//! virtio-vsock: header parsing of arbitrary bytes, and reading a packet out
//! of arbitrary descriptor chains.
#![no_main]
use husk_devices::virtio::test_utils::{guest_memory, BUF_BASE};
use husk_devices::virtio::vsock::device::read_tx_packet;
use husk_devices::virtio::vsock::packet::Header;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse_tx(data, data.len().saturating_sub(44), 3) {
        assert!(h.len <= 64 * 1024);
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
    }
    let (descs, content) = common::descriptors(data);
    if descs.is_empty() {
        return;
    }
    let mem = guest_memory();
    let _ = mem.write_slice(&content[..content.len().min(4096)], GuestAddress(BUF_BASE));
    let q = virtio_queue::mock::MockSplitQueue::new(&mem, 16);
    if let Ok(chain) = q.build_multiple_desc_chains(&descs) {
        if let Ok((h, payload)) = read_tx_packet(&mem, chain, 3) {
            assert_eq!(payload.len(), h.len as usize);
        }
    }
});
