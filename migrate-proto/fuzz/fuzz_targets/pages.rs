//! Any bytes as an encoded page batch: decode never panics, never yields data of the wrong
//! size, and whatever decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use migrate_proto::{BatchHeader, PageBatch, PageCodec};

fuzz_target!(|data: &[u8]| {
    let _ = BatchHeader::decode(data);
    let Ok(mut codec) = PageCodec::new() else { return };
    let mut batch = PageBatch::default();
    if codec.decode_into(data, &mut batch).is_ok() {
        assert_eq!(batch.raw_len(), Some(batch.data.len() as u64));
        let mut out = Vec::new();
        codec.encode_into(&batch, &mut out).expect("a decoded batch re-encodes");
        let mut again = PageBatch::default();
        codec.decode_into(&out, &mut again).expect("a re-encoded batch decodes");
        assert_eq!(again, batch);
    }
});
