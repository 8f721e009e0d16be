//! Snapshot state files from hostile bytes. A fork's state is written by
//! its parent's jailed husk-vmm (a guest may have taken it over) and read
//! by the fork's husk-vmm before it drops root: the header and checksum
//! are checked, the payload decoded, and the memory layout checked before
//! any file is opened or mapped. A layout that passes the check has
//! regions and runs that guest addresses can be found for.
#![no_main]

use std::path::Path;

use husk_vmm::snapshot::file::decode;
use husk_vmm::snapshot::memory::MemoryState;
use husk_vmm::snapshot::MicrovmState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<MicrovmState>(data, Path::new("state"));
    // Past the checksum (a CRC, not a secret): the payload itself, and
    // its memory layout alone (reached far more often).
    if let Ok(state) = serde_json::from_slice::<MicrovmState>(data) {
        checked(&state.memory);
    }
    if let Ok(memory) = serde_json::from_slice::<MemoryState>(data) {
        checked(&memory);
    }
});

/// A layout that passes the check has its runs inside the memory file.
fn checked(memory: &MemoryState) {
    if memory.check().is_ok() {
        assert!(memory.total() > 0);
        for layer in memory.base.iter().flat_map(|b| &b.layers) {
            for run in &layer.runs {
                assert!(run
                    .offset
                    .checked_add(run.len)
                    .is_some_and(|e| e <= memory.total()));
            }
        }
    }
}
