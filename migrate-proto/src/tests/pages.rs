//! Page batches: round trips, codec choice, structural checks, bounded decompression.

use super::{XorShift, batch};
use crate::PAGE_SIZE;
use crate::pages::{BatchHeader, Codec, MAX_BATCH_BYTES, PageBatch, PageCodec, PageRun};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Encodes a header followed by `data`, bypassing the encoder's checks.
fn hand_encoded(runs: &[PageRun], codec: Codec, raw_len: u64, data: &[u8]) -> Vec<u8> {
    let header = BatchHeader { pid: 1, object: 0, round: 0, runs: runs.to_vec(), codec, raw_len };
    let mut out = postcard::to_allocvec(&header).unwrap_or_default();
    out.extend_from_slice(data);
    out
}

fn decode_err(bytes: &[u8]) -> String {
    PageBatch::decode(bytes).err().map(|e| e.to_string()).unwrap_or_else(|| "decoded".into())
}

#[test]
fn round_trip_and_codec_choice() -> Result {
    let mut codec = PageCodec::new()?;
    let mut out = Vec::new();
    let mut back = PageBatch::default();
    for b in [batch(5, None), batch(5, Some(1)), PageBatch { round: 3, ..batch(5, Some(2)) }] {
        out.clear();
        out.extend_from_slice(b"prefix");
        codec.encode_into(&b, &mut out)?;
        assert_eq!(&out[..6], b"prefix", "encode_into appends");
        let (header, _) = BatchHeader::decode(&out[6..])?;
        assert_eq!(header.runs, b.runs);
        let random = b.data.iter().filter(|&&x| x == 0).count() < b.data.len() / 2;
        assert_eq!(header.codec, if random { Codec::Raw } else { Codec::Zstd });
        codec.decode_into(&out[6..], &mut back)?;
        assert_eq!(back, b);
    }
    // Decoding a small batch into a buffer that held a bigger one reuses it.
    let small = PageBatch {
        pid: 5,
        object: 0,
        round: 1,
        runs: vec![PageRun { addr: 0x1000, npages: 1 }],
        data: vec![7; 4096],
    };
    out.clear();
    small.encode_into(&mut out)?;
    codec.decode_into(&out, &mut back)?;
    assert_eq!(back, small);
    Ok(())
}

#[test]
fn chunks_split_data_by_run() {
    let b = batch(1, Some(3));
    let chunks: Vec<_> = b.chunks().collect();
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[1].0, PageRun { addr: 0x60_3000, npages: 1 });
    assert_eq!(chunks[1].1, &b.data[2 * 4096..3 * 4096]);
    assert_eq!(b.raw_len(), Some(5 * PAGE_SIZE));
}

#[test]
fn structural_checks() {
    let page = vec![0u8; 4096];
    let two = vec![0u8; 8192];
    let cases: Vec<(Vec<PageRun>, u64, &[u8], &str)> = vec![
        (vec![], 0, &[], "no page runs"),
        (vec![PageRun { addr: 0x1000, npages: 0 }], 0, &[], "has no pages"),
        (vec![PageRun { addr: 0x1001, npages: 1 }], 4096, &page, "not page-aligned"),
        (vec![PageRun { addr: u64::MAX - 4095, npages: 2 }], 8192, &two, "past the end of the address space"),
        (
            vec![PageRun { addr: 0x2000, npages: 1 }, PageRun { addr: 0x1000, npages: 1 }],
            8192,
            &two,
            "must be sorted and disjoint",
        ),
        (
            vec![PageRun { addr: 0x1000, npages: 2 }, PageRun { addr: 0x2000, npages: 1 }],
            12288,
            &two,
            "must be sorted and disjoint",
        ),
        (vec![PageRun { addr: 0x1000, npages: 1 }], 8192, &page, "raw_len 8192 does not match"),
        (
            vec![PageRun { addr: 0x1000, npages: 1 }],
            4096,
            &two,
            "data holds 8192 bytes but the runs need 4096",
        ),
        (vec![PageRun { addr: 0x1000, npages: 1 }], 4096, &page[..100], "data holds 100 bytes"),
    ];
    for (runs, raw_len, data, want) in cases {
        let err = decode_err(&hand_encoded(&runs, Codec::Raw, raw_len, data));
        assert!(err.contains(want), "{err} (wanted {want:?})");
    }
}

#[test]
fn oversized_claims_fail_before_allocating() {
    // One run of u32::MAX pages (16 TiB), four bytes of data: refused from the header.
    let err = decode_err(&hand_encoded(
        &[PageRun { addr: 0, npages: u32::MAX }],
        Codec::Zstd,
        u64::MAX,
        &[1, 2, 3, 4],
    ));
    assert!(err.contains("more than the 67108864-byte batch limit"), "{err}");
    let err = decode_err(&hand_encoded(
        &[PageRun { addr: 0, npages: (MAX_BATCH_BYTES / PAGE_SIZE) as u32 + 1 }],
        Codec::Raw,
        MAX_BATCH_BYTES + PAGE_SIZE,
        &[],
    ));
    assert!(err.contains("batch limit"), "{err}");
    // A run count far beyond what any batch can hold: refused while decoding the header.
    let mut bytes = postcard::to_allocvec(&1i32).unwrap_or_default();
    bytes.extend_from_slice(&postcard::to_allocvec(&0u32).unwrap_or_default());
    bytes.extend_from_slice(&postcard::to_allocvec(&(u32::MAX as usize)).unwrap_or_default());
    let err = decode_err(&bytes);
    assert!(err.contains("bad header"), "{err}");
}

#[test]
fn decompression_is_bounded_by_raw_len() -> Result {
    // A zstd frame of 8 MiB of zeros, announced as one page.
    let bomb = zstd::bulk::compress(&vec![0u8; 8 << 20], 1)?;
    let runs = [PageRun { addr: 0x1000, npages: 1 }];
    let err = decode_err(&hand_encoded(&runs, Codec::Zstd, 4096, &bomb));
    assert!(err.contains("does not decompress"), "{err}");
    // A frame that produces less than announced.
    let short = zstd::bulk::compress(&[0u8; 100], 1)?;
    let err = decode_err(&hand_encoded(&runs, Codec::Zstd, 4096, &short));
    assert!(err.contains("decompresses to 100 bytes, not the 4096 announced"), "{err}");
    // Not zstd at all.
    let err = decode_err(&hand_encoded(&runs, Codec::Zstd, 4096, b"garbage"));
    assert!(err.contains("does not decompress"), "{err}");
    // The same bomb into a reused buffer with plenty of spare room is still refused.
    let mut codec = PageCodec::new()?;
    let mut big = PageBatch { data: Vec::with_capacity(16 << 20), ..PageBatch::default() };
    assert!(codec.decode_into(&hand_encoded(&runs, Codec::Zstd, 4096, &bomb), &mut big).is_err());
    Ok(())
}

#[test]
fn largest_batch_round_trips() -> Result {
    let npages = (MAX_BATCH_BYTES / PAGE_SIZE) as u32;
    let mut data = vec![0u8; MAX_BATCH_BYTES as usize];
    // Random enough that it is stored raw: the frame's 80 MiB cap must hold it.
    XorShift::new(9).fill(&mut data);
    let b = PageBatch { pid: 1, object: 0, round: 0, runs: vec![PageRun { addr: 0x10_0000, npages }], data };
    let mut w = crate::RecordWriter::new(Vec::new());
    w.pages(&b)?;
    let (bytes, _) = w.finish()?;
    let mut r = crate::RecordReader::new(bytes.as_slice());
    assert_eq!(r.next()?, Some(crate::Frame::Pages(b)));
    // One page more is refused by the writer, for its size (its data fits its runs).
    let over = PageBatch {
        pid: 1,
        object: 0,
        round: 0,
        runs: vec![PageRun { addr: 0, npages: npages + 1 }],
        data: vec![0; (MAX_BATCH_BYTES + PAGE_SIZE) as usize],
    };
    let err =
        crate::RecordWriter::new(Vec::new()).pages(&over).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("batch limit"), "{err}");
    Ok(())
}

/// Batches encoded apart from the writer (as a dump's encoder threads do) make the same
/// frames as `pages`, raw and compressed; a head framed with another batch is refused.
#[test]
fn heads_encoded_elsewhere_frame_like_pages() -> Result {
    use crate::frame::{Frame, RecordReader, RecordWriter};
    let batches = [batch(5, None), batch(5, Some(1))];
    let (mut direct, mut apart) = (RecordWriter::new(Vec::new()), RecordWriter::new(Vec::new()));
    let mut codec = PageCodec::new()?;
    let mut head = crate::pages::EncodedHead::default();
    for b in &batches {
        direct.pages(b)?;
        codec.encode_head(b, &mut head)?;
        apart.pages_encoded(&head, b)?;
    }
    let (direct, _) = direct.finish()?;
    let (apart, _) = apart.finish()?;
    assert_eq!(direct, apart);
    let mut reader = RecordReader::new(&apart[..]);
    for b in &batches {
        assert!(matches!(reader.next()?, Some(Frame::Pages(got)) if got == *b));
    }
    // The raw one (random data) framed with a batch of another size.
    codec.encode_head(&batches[1], &mut head)?;
    let other = PageBatch {
        runs: vec![PageRun { addr: 0x1000, npages: 1 }],
        data: vec![7; 4096],
        ..batches[1].clone()
    };
    let mut w = RecordWriter::new(Vec::new());
    let err = w.pages_encoded(&head, &other).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("data"), "{err}");
    Ok(())
}
