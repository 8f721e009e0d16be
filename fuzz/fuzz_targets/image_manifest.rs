//! Registry and image-layout documents from hostile bytes: manifests and
//! indexes. Every descriptor of a manifest that parses has a checked digest
//! (a short or non-hex one is refused at parse time, never sliced later).
#![no_main]

use husk::image::oci::{check_digest, short_digest, Index, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        for d in std::iter::once(&m.config).chain(&m.layers) {
            assert_eq!(check_digest(&d.digest), Ok(()));
            assert_eq!(short_digest(&d.digest).len(), 12);
        }
    }
    if let Ok(i) = serde_json::from_slice::<Index>(data) {
        for d in &i.manifests {
            assert_eq!(check_digest(&d.digest), Ok(()));
        }
    }
});
