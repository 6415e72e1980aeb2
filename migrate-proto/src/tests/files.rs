//! Manifest and record files: round trips, truncation, bit flips, versions, caps, framing errors.

use super::{batch, manifest, process};
use crate::error::{FrameProblem, ManifestProblem, ProtoError};
use crate::frame::{
    KIND_END, KIND_PAGES, KIND_PROCESS, RecordReader, RecordWriter, digest_reader, verify_file,
};
use crate::manifest::{FileSum, decode_manifest, encode_manifest};
use crate::pages::PageBatch;
use crate::{FORMAT_VERSION, Filled, Frame};
use xxhash_rust::xxh3::xxh3_64;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A small record file: one process, two batches (one compressible, one not).
fn record_file() -> Result<Vec<u8>> {
    let mut w = RecordWriter::new(Vec::new());
    w.process(&process(1))?;
    w.pages(&batch(1, None))?;
    w.pages(&one_random_page())?;
    let (bytes, digest) = w.finish()?;
    assert_eq!(digest.size, bytes.len() as u64);
    assert_eq!(digest.xxh3, xxh3_64(&bytes));
    assert_eq!(digest, digest_reader(bytes.as_slice())?);
    Ok(bytes)
}

/// A batch of one pseudo-random page: stored raw.
fn one_random_page() -> PageBatch {
    random_page(7)
}

/// A batch of one pseudo-random page from `seed`: stored raw, so every such batch makes a
/// frame of the same length.
fn random_page(seed: u64) -> PageBatch {
    let mut b = batch(1, Some(seed));
    b.runs.truncate(1);
    b.runs[0].npages = 1;
    b.data.truncate(4096);
    b
}

/// The byte ranges of the frames of a valid record file, END included.
fn frame_ranges(bytes: &[u8]) -> Result<Vec<std::ops::Range<usize>>> {
    let mut r = RecordReader::new(bytes);
    let mut ranges = Vec::new();
    let mut start = 0;
    while r.next()?.is_some() {
        ranges.push(start..r.offset() as usize);
        start = r.offset() as usize;
    }
    ranges.push(start..bytes.len());
    Ok(ranges)
}

/// Reads every frame; the first error, if any.
fn read_all(bytes: &[u8]) -> std::result::Result<Vec<Frame>, ProtoError> {
    let mut r = RecordReader::new(bytes);
    let mut frames = Vec::new();
    while let Some(f) = r.next()? {
        frames.push(f);
    }
    Ok(frames)
}

/// One frame, built by hand: kind, flags, payload, crc.
fn raw_frame(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&kind.to_le_bytes());
    f.extend_from_slice(&flags.to_le_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    let crc = crc32fast::hash(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

fn end_frame(frames: u64) -> Vec<u8> {
    let payload = postcard::to_allocvec(&frames).unwrap_or_default();
    raw_frame(KIND_END, 0, &payload)
}

#[test]
fn manifest_round_trip() -> Result {
    let m = manifest();
    let bytes = encode_manifest(&m)?;
    assert_eq!(&bytes[..8], b"MIGRATE\0");
    assert_eq!(decode_manifest(&bytes)?, m);
    let mut with_room = m.clone();
    with_room.parent = Some("../snap-1".into());
    with_room.auth_tag = Some(vec![1; 32]);
    with_room.container.ip = "fd00::5".into();
    with_room.container.prefix = 64;
    assert_eq!(decode_manifest(&encode_manifest(&with_room)?)?, with_room);
    Ok(())
}

#[test]
fn manifest_every_truncation_is_an_error() -> Result {
    let bytes = encode_manifest(&manifest())?;
    for cut in 0..bytes.len() {
        assert!(decode_manifest(&bytes[..cut]).is_err(), "prefix of {cut} bytes decoded");
    }
    Ok(())
}

#[test]
fn manifest_every_flipped_bit_is_an_error() -> Result {
    let bytes = encode_manifest(&manifest())?;
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut m = bytes.clone();
            m[i] ^= 1 << bit;
            assert!(decode_manifest(&m).is_err(), "flipping bit {bit} of byte {i} went unnoticed");
        }
    }
    Ok(())
}

/// Rewrites the header version and fixes the crc, as a newer (or older) writer would.
fn with_version(bytes: &[u8], version: u32) -> Vec<u8> {
    let mut m = bytes[..bytes.len() - 4].to_vec();
    m[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&m);
    m.extend_from_slice(&crc.to_le_bytes());
    m
}

#[test]
fn manifest_newer_version_says_upgrade() -> Result {
    let bytes = encode_manifest(&manifest())?;
    let next = FORMAT_VERSION + 1;
    let err = decode_manifest(&with_version(&bytes, next)).err().ok_or("accepted")?;
    assert_eq!(
        err.to_string(),
        format!(
            "image format version {next} is newer than this migrate understands ({FORMAT_VERSION}): upgrade migrate"
        )
    );

    // A newer format may frame its manifest differently: the version error still wins.
    let mut reframed = with_version(&bytes, 7);
    reframed.extend_from_slice(b"new trailer");
    assert!(matches!(
        decode_manifest(&reframed),
        Err(ProtoError::NewerFormat { found: 7, ours: FORMAT_VERSION })
    ));
    let mut short = b"MIGRATE\0".to_vec();
    short.extend_from_slice(&9u32.to_le_bytes());
    assert!(matches!(decode_manifest(&short), Err(ProtoError::NewerFormat { found: 9, .. })));
    Ok(())
}

#[test]
fn manifest_older_version_is_refused_clearly() -> Result {
    let bytes = encode_manifest(&manifest())?;
    let err = decode_manifest(&with_version(&bytes, 0)).err().ok_or("accepted")?;
    assert!(matches!(err, ProtoError::OlderFormat { found: 0, ours: FORMAT_VERSION }));
    let older = format!("image format version 0 is older than this migrate understands ({FORMAT_VERSION})");
    assert!(err.to_string().starts_with(&older));
    Ok(())
}

#[test]
fn manifest_header_and_payload_must_agree() {
    let mut m = manifest();
    m.format_version = FORMAT_VERSION + 1;
    assert!(encode_manifest(&m).is_err());
}

#[test]
fn manifest_bad_magic_is_named() -> Result {
    let mut bytes = encode_manifest(&manifest())?;
    bytes[0] = b'N';
    let n = bytes.len();
    let crc = crc32fast::hash(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    let err = decode_manifest(&bytes).err().ok_or("accepted")?;
    assert!(err.to_string().contains("not a migrate manifest"), "{err}");
    Ok(())
}

#[test]
fn manifest_semantic_checks() -> Result {
    type Mutation = Box<dyn Fn(&mut crate::Manifest)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("must be plain names", Box::new(|m| m.files[0].name = "../etc/passwd".into())),
        ("must be plain names", Box::new(|m| m.files[0].name = "a/b".into())),
        ("is not a file name", Box::new(|m| m.files[0].name = "..".into())),
        ("is empty", Box::new(|m| m.files[0].name = String::new())),
        ("listed twice", Box::new(|m| m.files[1].name = "process.img".into())),
        ("more than the", Box::new(|m| m.files[0].size = u64::MAX)),
        ("not an IP address", Box::new(|m| m.container.ip = "10.77.1".into())),
        ("too long", Box::new(|m| m.container.prefix = 33)),
        ("not a MAC address", Box::new(|m| m.container.mac = "02:42".into())),
        ("not a plain name", Box::new(|m| m.container.name = "a/b".into())),
        ("container.host", Box::new(|m| m.container.host = "../host-a".into())),
        ("after the checkpoint", Box::new(|m| m.container.created_ms = m.created_ms + 1)),
        ("zero pages of only", Box::new(|m| m.stats.pages_zero = u64::MAX)),
        ("NUL", Box::new(|m| m.kernel.release = "6.8\0".into())),
        ("last_pid -1 is not a pid", Box::new(|m| m.last_pid = -1)),
    ];
    let good = encode_manifest(&manifest())?;
    for (want, mutate) in cases {
        let mut m = manifest();
        mutate(&mut m);
        // The encoder refuses it…
        let err = encode_manifest(&m).err().ok_or(format!("encoder accepted: {want}"))?;
        assert!(err.to_string().contains(want), "{err} (wanted {want:?})");
        // …and so does the decoder, given the bytes a careless writer would produce.
        let mut bytes = good[..16].to_vec();
        let payload = postcard::to_allocvec(&m)?;
        bytes[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let err = decode_manifest(&bytes).err().ok_or(format!("decoder accepted: {want}"))?;
        assert!(err.to_string().contains(want), "{err} (wanted {want:?})");
    }
    Ok(())
}

#[test]
fn manifest_size_cap() {
    let huge = vec![0u8; (crate::manifest::MAX_MANIFEST + 1) as usize];
    let err = decode_manifest(&huge).err();
    assert!(
        matches!(err, Some(ProtoError::Manifest(ref p)) if matches!(**p, ManifestProblem::TooLarge { .. }))
    );
}

#[test]
fn records_round_trip() -> Result {
    let bytes = record_file()?;
    let frames = read_all(&bytes)?;
    assert_eq!(
        frames,
        vec![
            Frame::Process(Box::new(process(1))),
            Frame::Pages(batch(1, None)),
            Frame::Pages(one_random_page())
        ]
    );

    // The reusing path, and the reader's digest of the whole file.
    let mut r = RecordReader::new(bytes.as_slice());
    let mut pages = PageBatch::default();
    let mut n = 0;
    while let Some(filled) = r.next_into(&mut pages)? {
        if filled == Filled::Pages {
            crate::check_batch(&pages, &process(1))?;
        }
        n += 1;
    }
    assert_eq!(n, 3);
    assert_eq!(r.next()?, None, "stays at the end");
    let digest = r.digest();
    assert_eq!(digest, digest_reader(bytes.as_slice())?);
    let sum = digest.sum("process.img");
    verify_file(&sum, bytes.as_slice())?;
    let wrong = FileSum { xxh3: sum.xxh3 ^ 1, ..sum.clone() };
    let err = verify_file(&wrong, bytes.as_slice()).err().ok_or("accepted")?;
    assert_eq!(
        err.to_string(),
        format!(
            "file process.img: size {0} and digest {1:#018x} do not match the manifest's \
             size {0} and digest {2:#018x}",
            bytes.len(),
            sum.xxh3,
            wrong.xxh3
        )
    );
    let longer = FileSum { size: sum.size + 1, ..sum.clone() };
    assert!(verify_file(&longer, bytes.as_slice()).is_err());
    Ok(())
}

/// Every frame ends with the crc32 of its own bytes, so a crc32 of a whole record file
/// depends only on its frame lengths (the residue property): the same for any two files of
/// one frame and END. The file digest must tell them apart.
#[test]
fn records_different_files_have_different_digests() -> Result {
    let mut files = Vec::new();
    let mut w = RecordWriter::new(Vec::new());
    w.process(&process(1))?;
    files.push(w.finish()?);
    let mut w = RecordWriter::new(Vec::new());
    w.pages(&batch(1, None))?;
    files.push(w.finish()?);
    for seed in [1, 2] {
        let mut w = RecordWriter::new(Vec::new());
        w.pages(&random_page(seed))?;
        files.push(w.finish()?);
    }
    // What the manifest used to record: one constant for all of them.
    let crcs: Vec<u32> = files.iter().map(|(bytes, _)| crc32fast::hash(bytes)).collect();
    assert!(crcs.iter().all(|&c| c == crcs[0]), "{crcs:08x?}");
    for (i, (a, da)) in files.iter().enumerate() {
        assert_eq!(*da, digest_reader(a.as_slice())?);
        for (b, db) in &files[i + 1..] {
            assert_ne!(a, b);
            assert_ne!(da.xxh3, db.xxh3);
        }
    }
    Ok(())
}

/// A file whose frames are each intact (valid crcs, valid END count) but reordered, or with
/// one frame replaced by a valid frame of the same length from another file, reads cleanly
/// frame by frame; only the manifest's digest can catch it.
#[test]
fn records_reordered_or_swapped_frames_fail_verify_file() -> Result {
    let write = |pages: &[PageBatch]| -> Result<(Vec<u8>, FileSum)> {
        let mut w = RecordWriter::new(Vec::new());
        w.process(&process(1))?;
        for b in pages {
            w.pages(b)?;
        }
        let (bytes, digest) = w.finish()?;
        Ok((bytes, digest.sum("pages.img")))
    };
    let (a, b, c) = (random_page(1), random_page(2), random_page(3));
    let (bytes, sum) = write(&[a.clone(), b.clone()])?;
    verify_file(&sum, bytes.as_slice())?;
    let ranges = frame_ranges(&bytes)?;
    assert_eq!(ranges.len(), 4);
    let (process_frame, first, second, end) = (&ranges[0], &ranges[1], &ranges[2], &ranges[3]);
    assert_eq!(first.len(), second.len());

    // The two page frames swapped.
    let reordered =
        [&bytes[process_frame.clone()], &bytes[second.clone()], &bytes[first.clone()], &bytes[end.clone()]]
            .concat();
    // The second page frame replaced by the same-placed frame of another image.
    let (other, _) = write(&[a.clone(), c.clone()])?;
    let spliced = [&bytes[..second.start], &other[second.clone()], &bytes[second.end..]].concat();

    for (what, tampered, frames) in
        [("reordered", reordered, vec![b, a.clone()]), ("spliced", spliced, vec![a, c])]
    {
        assert_eq!(tampered.len(), bytes.len(), "{what}");
        // Every frame checks out on its own...
        let read = read_all(&tampered)?;
        let pages: Vec<Frame> = frames.into_iter().map(Frame::Pages).collect();
        assert_eq!(read[1..], pages[..], "{what}");
        // ...and a whole-file crc32 would not have noticed...
        assert_eq!(crc32fast::hash(&tampered), crc32fast::hash(&bytes), "{what}");
        // ...but the digest does.
        let err = verify_file(&sum, tampered.as_slice()).err().ok_or(format!("{what} file verified"))?;
        let msg = err.to_string();
        assert!(msg.starts_with("file pages.img: size"), "{what}: {msg}");
        assert!(msg.contains("and digest 0x"), "{what}: {msg}");
        assert!(matches!(err, ProtoError::FileMismatch { .. }), "{what}: {err:?}");
        let mut r = RecordReader::new(tampered.as_slice());
        while r.next()?.is_some() {}
        assert!(sum.check(r.digest()).is_err(), "{what}");
    }
    Ok(())
}

#[test]
fn records_compress_only_when_it_pays() -> Result {
    let bytes = record_file()?;
    // The compressible batch shrinks a lot; the random page is stored raw (a little larger).
    let mut r = RecordReader::new(bytes.as_slice());
    r.next()?;
    let after_process = r.offset();
    r.next()?;
    let compressible = r.offset() - after_process;
    r.next()?;
    let random = r.offset() - after_process - compressible;
    assert!(compressible < 5 * 4096 / 8, "compressible batch took {compressible} bytes");
    assert!(random > 4096 && random < 4096 + 128, "random batch took {random} bytes");
    Ok(())
}

#[test]
fn records_empty_file_has_just_end() -> Result {
    let (bytes, digest) = RecordWriter::new(Vec::new()).finish()?;
    assert_eq!(bytes, end_frame(0));
    assert_eq!(digest.size, 13);
    assert_eq!(digest.xxh3, xxh3_64(&bytes));
    assert!(read_all(&bytes)?.is_empty());
    Ok(())
}

#[test]
fn records_every_truncation_is_an_error() -> Result {
    let bytes = record_file()?;
    for cut in 0..bytes.len() {
        let err = read_all(&bytes[..cut]).err().ok_or(format!("prefix of {cut} bytes read"))?;
        assert!(err.to_string().contains("truncated"), "cut at {cut}: {err}");
    }
    Ok(())
}

#[test]
fn records_every_flipped_byte_is_an_error() -> Result {
    let bytes = record_file()?;
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80] {
            let mut f = bytes.clone();
            f[i] ^= mask;
            assert!(read_all(&f).is_err(), "flipping {mask:#x} at byte {i} went unnoticed");
        }
    }
    Ok(())
}

#[test]
fn records_checksum_error_names_frame_and_offset() -> Result {
    let mut bytes = record_file()?;
    let mut r = RecordReader::new(bytes.as_slice());
    r.next()?;
    let second = r.offset() as usize;
    bytes[second + 20] ^= 0xff;
    let err = read_all(&bytes).err().ok_or("accepted")?;
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("frame 1 at byte {second}: checksum mismatch (stored 0x")), "{msg}");
    assert!(msg.contains(", computed 0x"), "{msg}");
    Ok(())
}

#[test]
fn records_caps_are_checked_before_allocating() {
    // A header claiming 4 GiB: refused at once, from 8 bytes.
    let mut f = Vec::new();
    f.extend_from_slice(&KIND_PAGES.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = read_all(&f).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("frame 0 at byte 0: PAGES frame claims 4294967295 payload bytes"), "{err}");

    // Just over the metadata cap.
    let mut f = Vec::new();
    f.extend_from_slice(&KIND_PROCESS.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&((64u32 << 20) + 1).to_le_bytes());
    assert!(
        read_all(&f).err().map(|e| e.to_string()).unwrap_or_default().contains("more than the 67108864-byte")
    );

    // Within the cap but absent: a truncation error, after reading only what is there.
    let mut f = Vec::new();
    f.extend_from_slice(&KIND_PAGES.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&(80u32 << 20).to_le_bytes());
    f.extend_from_slice(&[0; 100]);
    let err = read_all(&f).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("truncated: the file ends inside the frame (100 of 83886084 bytes"), "{err}");
}

#[test]
fn records_framing_errors() -> Result {
    let process_payload = postcard::to_allocvec(&process(1))?;
    let good = raw_frame(KIND_PROCESS, 0, &process_payload);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        ([raw_frame(9, 0, b"x"), end_frame(1)].concat(), "frame 0 at byte 0: unknown frame kind 9"),
        ([raw_frame(0, 0, b""), end_frame(1)].concat(), "unknown frame kind 0"),
        (
            [raw_frame(KIND_PROCESS, 4, &process_payload), end_frame(1)].concat(),
            "PROCESS frame has unknown flags 0x0004",
        ),
        ([good.clone(), end_frame(2)].concat(), "END says 2 frames came before it, but 1 did"),
        ([good.clone(), end_frame(1), vec![0]].concat(), "unexpected bytes after the END frame"),
        ([good.clone(), end_frame(1), end_frame(1)].concat(), "unexpected bytes after the END frame"),
        (good.clone(), "frame 1 at byte"),
        (good.clone(), "without an END frame"),
        (
            [raw_frame(KIND_PROCESS, 0, &[process_payload.clone(), vec![0]].concat()), end_frame(1)].concat(),
            "1 unexpected bytes",
        ),
        ([raw_frame(KIND_PROCESS, 0, &process_payload[..50]), end_frame(1)].concat(), "bad PROCESS payload"),
        ([raw_frame(KIND_PAGES, 0, b"\x01\x00"), end_frame(1)].concat(), "page batch"),
        ([raw_frame(KIND_END, 0, &[1, 2]), end_frame(1)].concat(), "END payload has 1 unexpected bytes"),
        (vec![3, 0, 0], "truncated: the file ends inside the frame header (3 of 8 bytes)"),
    ];
    for (bytes, want) in cases {
        let err = read_all(&bytes).err().ok_or(format!("accepted; wanted {want}"))?;
        assert!(err.to_string().contains(want), "{err} (wanted {want:?})");
    }
    Ok(())
}

#[test]
fn records_reader_validates_and_is_poisoned_after_an_error() -> Result {
    let mut bad = process(1);
    bad.threads[0].tid = 99;
    let bytes = [raw_frame(KIND_PROCESS, 0, &postcard::to_allocvec(&bad)?), end_frame(1)].concat();
    let mut r = RecordReader::new(bytes.as_slice());
    let err = r.next().err().ok_or("accepted")?;
    assert_eq!(
        err.to_string(),
        "frame 0 at byte 0: pid 1: the first thread is 99, not the main thread (tid == pid)"
    );
    assert!(matches!(r.next(), Err(ProtoError::Poisoned { .. })));

    // The writer refuses to write it in the first place.
    let mut w = RecordWriter::new(Vec::new());
    assert!(w.process(&bad).is_err());
    assert_eq!(w.bytes_written(), 0);
    Ok(())
}

#[test]
fn records_writer_refuses_unreadable_batches() -> Result {
    let mut w = RecordWriter::new(Vec::new());
    let mut b = batch(1, None);
    b.data.pop();
    assert!(w.pages(&b).err().map(|e| e.to_string()).unwrap_or_default().contains("data holds"));
    let mut b = batch(1, None);
    b.runs.swap(0, 1);
    assert!(w.pages(&b).is_err());
    assert_eq!(w.frames(), 0);
    // Nothing was written, so the file is still good.
    let (bytes, _) = w.finish()?;
    assert!(read_all(&bytes)?.is_empty());
    Ok(())
}

#[test]
fn records_writer_is_poisoned_by_io_errors() {
    struct Full;
    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = RecordWriter::new(Full);
    let err = w.process(&process(1)).err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(err, "writing frame 0 at byte 0");
    assert!(matches!(w.pages(&batch(1, None)), Err(ProtoError::Poisoned { role: "writer" })));
}

#[test]
fn frame_problem_messages_are_one_line() {
    let e =
        ProtoError::frame(12, 4096, FrameProblem::Checksum { stored: 0x1234_abcd, computed: 0x9988_7766 });
    assert_eq!(
        e.to_string(),
        "frame 12 at byte 4096: checksum mismatch (stored 0x1234abcd, computed 0x99887766)"
    );
}
