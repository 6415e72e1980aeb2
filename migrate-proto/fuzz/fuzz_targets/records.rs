//! Any bytes as a record file: the reader must return frames or an error, never panic, and
//! whatever it returns must be safe to check further.
#![no_main]

use libfuzzer_sys::fuzz_target;
use migrate_proto::{Frame, RecordReader, check_batch, digest_reader, validate_process};

#[path = "fixup.rs"]
mod fixup;

fuzz_target!(|data: &[u8]| {
    let data = fixup::choose(data, fixup::repair_records);
    let data = data.as_slice();
    let mut reader = RecordReader::new(data);
    let mut processes = Vec::new();
    loop {
        match reader.next() {
            Ok(Some(Frame::Process(p))) => {
                // The reader validated it; validation is deterministic.
                assert!(validate_process(&p).is_ok());
                processes.push(p);
            }
            Ok(Some(Frame::Pages(batch))) => {
                assert_eq!(batch.raw_len(), Some(batch.data.len() as u64));
                for p in &processes {
                    let _ = check_batch(&batch, p);
                }
            }
            Ok(None) => {
                // Only a complete file ends cleanly, and its digest covers every byte.
                let digest = reader.digest();
                assert_eq!(digest.size, data.len() as u64);
                assert_eq!(Some(digest), digest_reader(data).ok());
                break;
            }
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
});
