//! virtio-net: arbitrary transmit chains sent to a real TAP (run as root).
#![no_main]
use husk_devices::virtio::net::{Net, NetConfig};
use husk_devices::virtio::test_utils::{guest_memory, Harness, BUF_BASE};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

mod common;

fuzz_target!(|data: &[u8]| {
    let (descs, content) = common::descriptors(data);
    if descs.is_empty() {
        return;
    }
    let mem = guest_memory();
    let _ = mem.write_slice(&content[..content.len().min(4096)], GuestAddress(BUF_BASE));
    let dev = Net::new(&NetConfig { tap_name: Some("huskfuzz0".into()), mac: None }).unwrap();
    let h = Harness::new(&mem, dev);
    h.add(1, &descs);
    h.with_device(|d| d.process_tx()).unwrap();
    assert_eq!(h.used_idx(1), h.avail_idx(1), "every chain must complete");
});
