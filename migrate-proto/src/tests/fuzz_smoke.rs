//! A quick, stable fuzz smoke test: a few thousand seeded pseudo-random and mutated inputs
//! through every decoder, which must return (Ok or Err) and never panic. The coverage-guided
//! fuzzer lives in `fuzz/` (nightly); this runs on every `cargo test`.
//!
//! Mutations that only flip bytes die at the checksums, so half of them repair the crc (and
//! length) afterwards, to reach postcard decoding, the batch checks and validation.

use super::{XorShift, batch, manifest, process};
use crate::frame::RecordReader;
use crate::manifest::{decode_manifest, encode_manifest};
use crate::pages::{BatchHeader, PageBatch, PageCodec};
use crate::validate::{check_batch, validate_process, validate_tree};
use crate::{Frame, RecordWriter};

const ITERATIONS: u64 = 6000;

/// Feeds `bytes` to every decoder; returns how many accepted it.
fn feed(bytes: &[u8], codec: &mut PageCodec) -> u32 {
    let mut accepted = 0;
    let mut reader = RecordReader::new(bytes);
    let mut processes = Vec::new();
    for _ in 0..64 {
        match reader.next() {
            Ok(Some(Frame::Process(p))) => processes.push(*p),
            Ok(Some(Frame::Pages(b))) => {
                for p in &processes {
                    let _ = check_batch(&b, p);
                }
            }
            Ok(None) => {
                accepted += 1;
                // What the restore checks next, on the whole tree (fuzz target `tree`).
                let _ = validate_tree(&processes);
                break;
            }
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
    if let Ok(m) = decode_manifest(bytes) {
        accepted += 1;
        assert!(encode_manifest(&m).is_ok(), "a decoded manifest must re-encode");
    }
    let mut b = PageBatch::default();
    if codec.decode_into(bytes, &mut b).is_ok() {
        accepted += 1;
        assert_eq!(b.raw_len(), Some(b.data.len() as u64));
        let _ = check_batch(&b, &process(1));
    }
    let _ = BatchHeader::decode(bytes);
    accepted
}

/// Applies one random mutation.
fn mutate(rng: &mut XorShift, input: &mut Vec<u8>) {
    let len = input.len();
    match rng.below(8) {
        0 if len > 0 => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)];
        }
        2 => {
            let i = rng.below(len + 1);
            let n = rng.below(16) + 1;
            let mut extra = vec![0; n];
            rng.fill(&mut extra);
            input.splice(i..i, extra);
        }
        3 if len > 0 => {
            let i = rng.below(len);
            let n = rng.below(len - i) + 1;
            input.drain(i..i + n);
        }
        4 => input.truncate(rng.below(len + 1)),
        5 if len > 0 => {
            let i = rng.below(len);
            let n = rng.below((len - i).min(64)) + 1;
            let copy = input[i..i + n].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, copy);
        }
        6 if len >= 4 => {
            // A varint-sized field set to something huge.
            let i = rng.below(len - 3);
            input[i..i + 4].copy_from_slice(&[0xff, 0xff, 0xff, 0x0f]);
        }
        _ => {
            input.resize(rng.below(300), 0);
            rng.fill(input);
        }
    }
}

/// Splits a record file into frames and rebuilds it after mutating one frame's payload,
/// with correct lengths and crcs.
fn mutate_records_past_crc(rng: &mut XorShift, file: &[u8]) -> Vec<u8> {
    let mut frames = Vec::new();
    let mut rest = file;
    while rest.len() >= 12 {
        let kind = [rest[0], rest[1]];
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let Some(payload) = rest.get(8..8 + len) else { break };
        frames.push((kind, payload.to_vec()));
        rest = &rest[(8 + len + 4).min(rest.len())..];
    }
    if !frames.is_empty() {
        let i = rng.below(frames.len());
        mutate(rng, &mut frames[i].1);
    }
    let mut out = Vec::new();
    for (kind, payload) in frames {
        let start = out.len();
        out.extend_from_slice(&kind);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    out
}

/// Mutates a manifest's payload and repairs its length and crc.
fn mutate_manifest_past_crc(rng: &mut XorShift, file: &[u8]) -> Vec<u8> {
    let mut payload = file[16..file.len() - 4].to_vec();
    mutate(rng, &mut payload);
    let mut out = file[..12].to_vec();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[test]
fn decoders_never_panic() -> Result<(), crate::ProtoError> {
    let mut w = RecordWriter::new(Vec::new());
    w.process(&process(1))?;
    w.pages(&batch(1, None))?;
    w.pages(&batch(1, Some(3)))?;
    let (records, _) = w.finish()?;
    let manifest = encode_manifest(&manifest())?;
    let mut pages = Vec::new();
    batch(1, None).encode_into(&mut pages)?;
    let mut codec = PageCodec::new()?;

    // The seeds themselves decode.
    assert!(feed(&records, &mut codec) >= 1);
    assert!(feed(&manifest, &mut codec) >= 1);
    assert!(feed(&pages, &mut codec) >= 1);

    let mut accepted = 0;
    for seed in 0..ITERATIONS {
        let mut rng = XorShift::new(seed);
        let input = match seed % 6 {
            0 => {
                let mut v = records.clone();
                mutate(&mut rng, &mut v);
                v
            }
            1 => mutate_records_past_crc(&mut rng, &records),
            2 => {
                let mut v = manifest.clone();
                mutate(&mut rng, &mut v);
                v
            }
            3 => mutate_manifest_past_crc(&mut rng, &manifest),
            4 => {
                let mut v = pages.clone();
                mutate(&mut rng, &mut v);
                v
            }
            _ => {
                let mut v = Vec::new();
                mutate(&mut rng, &mut v);
                v
            }
        };
        accepted += feed(&input, &mut codec);
    }
    // Sanity: some mutations are harmless (inside xstate, page data…), most are caught.
    assert!(accepted > 0 && u64::from(accepted) < ITERATIONS, "accepted {accepted}");

    // And a decoded record that passes validation re-validates: the reader validated it.
    let mut r = RecordReader::new(records.as_slice());
    while let Some(frame) = r.next()? {
        if let Frame::Process(p) = frame {
            validate_process(&p)?;
        }
    }
    Ok(())
}
