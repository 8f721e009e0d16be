//! The scoped layer unpacker over hostile tar bytes (plain, or gzip/zstd
//! when the bytes say so): it unpacks into a fresh directory or refuses,
//! never panics, and never writes outside that directory (the directory's
//! parent holds nothing else afterwards).
#![no_main]

use husk_layers::{unpack_tar, UnpackOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let outer = tempfile::tempdir().expect("temp dir");
    let root = outer.path().join("root");
    std::fs::create_dir(&root).expect("root dir");
    let opts = UnpackOptions {
        max_blob_bytes: 1 << 20,
        max_unpacked_bytes: 8 << 20,
        max_entries: 10_000,
        preserve_owners: false,
        devices: false,
        xattrs: false,
    };
    let _ = unpack_tar(&root, data, &opts);
    let names: Vec<_> = std::fs::read_dir(outer.path())
        .expect("read the parent")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("root")],
        "wrote beside the root"
    );
});
