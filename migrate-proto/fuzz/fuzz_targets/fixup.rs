//! Checksum repair, so that the fuzzer gets past the crc32s to the parsers behind them.
//!
//! Blind mutation almost never produces a valid crc32, so half of the inputs (first byte
//! odd) are taken as the rest of the bytes with every length and checksum recomputed. The
//! other half go in as they are, to exercise the checks themselves.

// Each target uses one of the two repairs.
#![allow(dead_code)]

/// Returns the input to decode: `data[1..]`, repaired by `repair` when `data[0]` is odd.
pub fn choose(data: &[u8], repair: fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => repair(rest),
        Some((_, rest)) => rest.to_vec(),
        None => Vec::new(),
    }
}

/// Re-frames a record file: keeps each frame's kind, flags and payload (as far as its
/// length field reaches) and rewrites its crc.
pub fn repair_records(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rest.len());
    while let Some((header, tail)) = rest.split_first_chunk::<8>() {
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let len = len.min(tail.len());
        let (payload, tail) = tail.split_at(len);
        let start = out.len();
        out.extend_from_slice(&header[..4]);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(payload);
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        // Skip the old crc, if there was room for one.
        rest = tail.get(4..).unwrap_or_default();
    }
    out
}

/// Rewrites a manifest's length and crc around whatever follows its 16-byte head.
pub fn repair_manifest(data: &[u8]) -> Vec<u8> {
    let Some((head, payload)) = data.split_first_chunk::<16>() else { return data.to_vec() };
    let mut out = head[..12].to_vec();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}
