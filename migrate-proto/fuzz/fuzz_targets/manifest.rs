//! Any bytes as `manifest.img`: decode never panics, and whatever decodes re-encodes to a
//! manifest that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use migrate_proto::{decode_manifest, encode_manifest};

#[path = "fixup.rs"]
mod fixup;

fuzz_target!(|data: &[u8]| {
    let data = fixup::choose(data, fixup::repair_manifest);
    if let Ok(manifest) = decode_manifest(&data) {
        let bytes = encode_manifest(&manifest).expect("a decoded manifest re-encodes");
        let again = decode_manifest(&bytes).expect("a re-encoded manifest decodes");
        assert_eq!(again, manifest);
    }
});
