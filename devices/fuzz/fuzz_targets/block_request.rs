//! virtio-blk: arbitrary descriptor chains over arbitrary guest memory,
//! parsed and executed against a real image file.
#![no_main]
use husk_devices::virtio::block::{Block, BlockConfig};
use husk_devices::virtio::test_utils::{guest_memory, Harness, BUF_BASE};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

mod common;

fuzz_target!(|data: &[u8]| {
    let (descs, content) = common::descriptors(data);
    let mem = guest_memory();
    let _ = mem.write_slice(&content[..content.len().min(4096)], GuestAddress(BUF_BASE));
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(64 * 512).unwrap();
    let dev = Block::new(&BlockConfig {
        path: img.path().to_path_buf(),
        read_only: data.len() % 2 == 0,
        serial: None,
    })
    .unwrap();
    let h = Harness::new(&mem, dev);
    if descs.is_empty() {
        return;
    }
    h.add(0, &descs);
    h.with_device(|d| d.process_queue()).unwrap();
    assert_eq!(h.used_idx(0), h.avail_idx(0), "every chain must complete");
});
