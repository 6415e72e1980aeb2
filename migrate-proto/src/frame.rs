//! The record files: a sequence of checksummed frames, closed by an END frame.
//!
//! ```text
//! offset  size  field
//!      0     2  kind      u16 LE: 1 PROCESS, 2 PAGES, 3 END (0 and others: refused)
//!      2     2  flags     u16 LE: 0 in format v2 (anything else: refused)
//!      4     4  len       u32 LE: payload bytes; ≤ 64 MiB (PAGES: ≤ 80 MiB)
//!      8   len  payload   PROCESS: postcard ProcessRecord; PAGES: an encoded PageBatch;
//!                         END: postcard { frames: u64 }, the number of frames before it
//!  8+len     4  crc32     u32 LE, crc32 (IEEE) of bytes 0 .. 8+len
//! ```
//!
//! Every byte of a frame is covered by its crc32; a file that stops before its END frame, an
//! END whose count disagrees, or bytes after END are errors, so truncation and splicing are
//! caught. [`RecordWriter`] and [`RecordReader`] also keep the size and a 64-bit XXH3 digest
//! of the whole file as they go ([`FileDigest`]), for the manifest's [`FileSum`], without a
//! second pass: a streaming [`Xxh3`] is fed every byte written or consumed (header, payload,
//! crc).
//!
//! The file digest is deliberately not a CRC: every frame ends with the CRC-32 of its own
//! bytes, and a CRC run over data followed by its own CRC always lands on the same residue,
//! so a whole-file CRC-32 depends only on the frame lengths (after the first), not on their
//! contents. It would miss reordered frames and frames swapped in from another file.
//!
//! A reader checks, for each frame: the length against the cap (before allocating anything
//! for the payload), the crc, the kind, the flags, then decodes the payload and runs the
//! semantic checks ([`crate::validate`]) on process records. Errors name the frame's index
//! and byte offset. After an error the reader or writer is poisoned: a stream cannot be
//! resynchronised safely.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::error::BatchProblem;
use crate::error::{FrameKindName, FrameProblem, ProtoError};
use crate::manifest::FileSum;
use crate::pages::{EncodedHead, PageBatch, PageCodec, append_postcard};
use crate::records::ProcessRecord;
use crate::validate;

/// Frame kind: one [`ProcessRecord`].
pub const KIND_PROCESS: u16 = 1;
/// Frame kind: one encoded [`PageBatch`].
pub const KIND_PAGES: u16 = 2;
/// Frame kind: the end of the file; payload `{ frames: u64 }`.
pub const KIND_END: u16 = 3;

/// The largest payload of a metadata frame (PROCESS, END): 64 MiB.
pub const MAX_META_PAYLOAD: u32 = 64 << 20;
/// The largest payload of a PAGES frame: 80 MiB (64 MiB of pages, stored raw, plus the
/// batch header with room to spare).
pub const MAX_PAGES_PAYLOAD: u32 = 80 << 20;

const HEADER_LEN: usize = 8;
const CRC_LEN: usize = 4;

/// The END frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct EndSummary {
    frames: u64,
}

fn cap_for(kind: u16) -> u32 {
    if kind == KIND_PAGES { MAX_PAGES_PAYLOAD } else { MAX_META_PAYLOAD }
}

/// The size and 64-bit XXH3 digest (`xxh3_64`, seed 0) of a whole file, as the manifest's
/// [`FileSum`] records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileDigest {
    pub size: u64,
    pub xxh3: u64,
}

impl FileDigest {
    /// The manifest entry for this file.
    pub fn sum(self, name: impl Into<String>) -> FileSum {
        FileSum { name: name.into(), size: self.size, xxh3: self.xxh3 }
    }
}

/// Reads `r` to its end; returns its size and XXH3 digest.
pub fn digest_reader<R: Read>(mut r: R) -> io::Result<FileDigest> {
    let mut hasher = Xxh3::new();
    let mut size: u64 = 0;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        size += chunk.len() as u64;
    }
    Ok(FileDigest { size, xxh3: hasher.digest() })
}

/// Reads `r` to its end and checks it against the manifest's entry for it.
pub fn verify_file<R: Read>(sum: &FileSum, r: R) -> Result<(), ProtoError> {
    let digest = digest_reader(r).map_err(|source| ProtoError::FileIo { name: sum.name.clone(), source })?;
    sum.check(digest)
}

/// Writes a record file: frames, then END on [`RecordWriter::finish`].
///
/// Each frame goes to `W` in one or a few `write_all` calls; wrap a file in a `BufWriter`
/// if many records are small. Records are validated and size-checked before anything is
/// written, so a writer never produces a file its reader refuses.
pub struct RecordWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    codec: Option<PageCodec>,
    frames: u64,
    /// The digest of every byte written so far.
    file: Xxh3,
    bytes: u64,
    failed: bool,
}

impl<W: Write> std::fmt::Debug for RecordWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordWriter")
            .field("frames", &self.frames)
            .field("bytes", &self.bytes)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<W: Write> RecordWriter<W> {
    pub fn new(inner: W) -> Self {
        RecordWriter {
            inner,
            buf: Vec::new(),
            codec: None,
            frames: 0,
            file: Xxh3::new(),
            bytes: 0,
            failed: false,
        }
    }

    /// Frames written so far (END not counted).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Writes a PROCESS frame. The record is validated first ([`validate::validate_process`]).
    pub fn process(&mut self, record: &ProcessRecord) -> Result<(), ProtoError> {
        self.check_usable()?;
        validate::validate_process(record)?;
        self.start_frame();
        append_postcard(record, &mut self.buf)?;
        self.emit(KIND_PROCESS, &[])
    }

    /// Writes a PAGES frame: the batch, compressed if that pays.
    pub fn pages(&mut self, batch: &PageBatch) -> Result<(), ProtoError> {
        self.check_usable()?;
        self.start_frame();
        let codec = match &mut self.codec {
            Some(codec) => codec,
            none => none.insert(PageCodec::new()?),
        };
        let tail = codec.encode_parts(batch, &mut self.buf)?;
        self.emit(KIND_PAGES, tail)
    }

    /// Writes a PAGES frame from a batch encoded elsewhere ([`PageCodec::encode_head`]);
    /// `batch` is the one encoded (its data is the payload's tail when it went raw).
    pub fn pages_encoded(&mut self, head: &EncodedHead, batch: &PageBatch) -> Result<(), ProtoError> {
        self.check_usable()?;
        let tail: &[u8] = match head.raw_len {
            None => &[],
            Some(len) if len == batch.data.len() => &batch.data,
            Some(len) => {
                let expected = len as u64;
                return Err(ProtoError::batch(BatchProblem::DataLen {
                    len: batch.data.len() as u64,
                    expected,
                }));
            }
        };
        self.start_frame();
        self.buf.extend_from_slice(&head.bytes);
        self.emit(KIND_PAGES, tail)
    }

    /// Writes the END frame and flushes; returns the inner writer and the file's size and
    /// digest (for the manifest's [`FileSum`]).
    pub fn finish(mut self) -> Result<(W, FileDigest), ProtoError> {
        self.check_usable()?;
        self.start_frame();
        append_postcard(&EndSummary { frames: self.frames }, &mut self.buf)?;
        self.emit(KIND_END, &[])?;
        let (index, offset) = (self.frames, self.bytes);
        self.inner.flush().map_err(|source| ProtoError::Io {
            op: "flushing after",
            index,
            offset,
            source,
        })?;
        Ok((self.inner, FileDigest { size: self.bytes, xxh3: self.file.digest() }))
    }

    fn check_usable(&self) -> Result<(), ProtoError> {
        if self.failed { Err(ProtoError::Poisoned { role: "writer" }) } else { Ok(()) }
    }

    fn start_frame(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; HEADER_LEN]);
    }

    /// Completes the frame in `buf` (header placeholder + payload head), followed by `tail`,
    /// and writes it.
    fn emit(&mut self, kind: u16, tail: &[u8]) -> Result<(), ProtoError> {
        let len = (self.buf.len() - HEADER_LEN) as u64 + tail.len() as u64;
        let cap = cap_for(kind);
        let len32 = match u32::try_from(len) {
            Ok(l) if l <= cap => l,
            _ => {
                let what = match kind {
                    KIND_PROCESS => "PROCESS frame",
                    KIND_PAGES => "PAGES frame",
                    _ => "END frame",
                };
                return Err(ProtoError::TooLarge { what, len, cap: u64::from(cap) });
            }
        };
        let [k0, k1] = kind.to_le_bytes();
        let [l0, l1, l2, l3] = len32.to_le_bytes();
        let header = [k0, k1, 0, 0, l0, l1, l2, l3];
        if let Some(h) = self.buf.get_mut(..HEADER_LEN) {
            h.copy_from_slice(&header);
        }
        let mut frame = crc32fast::Hasher::new();
        frame.update(&self.buf);
        frame.update(tail);
        let crc = frame.finalize().to_le_bytes();

        let (index, offset) = (self.frames, self.bytes);
        let written = if tail.is_empty() {
            self.buf.extend_from_slice(&crc);
            self.inner.write_all(&self.buf)
        } else {
            self.inner
                .write_all(&self.buf)
                .and_then(|()| self.inner.write_all(tail))
                .and_then(|()| self.inner.write_all(&crc))
        };
        if let Err(source) = written {
            self.failed = true;
            return Err(ProtoError::Io { op: "writing", index, offset, source });
        }
        // With no tail, `buf` already ends with the crc.
        self.file.update(&self.buf);
        if !tail.is_empty() {
            self.file.update(tail);
            self.file.update(&crc);
        }
        self.bytes += HEADER_LEN as u64 + len + CRC_LEN as u64;
        if kind != KIND_END {
            self.frames += 1;
        }
        Ok(())
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A validated process record.
    Process(Box<ProcessRecord>),
    /// A structurally checked page batch ([`validate::check_batch`] it against its process).
    Pages(PageBatch),
}

/// What [`RecordReader::next_into`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filled {
    /// A validated process record.
    Process(Box<ProcessRecord>),
    /// A page batch, decoded into the caller's [`PageBatch`].
    Pages,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Done,
    Failed,
}

/// Reads a record file or stream frame by frame, trusting nothing.
pub struct RecordReader<R: Read> {
    inner: R,
    buf: Vec<u8>,
    codec: Option<PageCodec>,
    index: u64,
    offset: u64,
    /// The digest of every byte of the frames read so far.
    file: Xxh3,
    state: State,
}

impl<R: Read> std::fmt::Debug for RecordReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader")
            .field("index", &self.index)
            .field("offset", &self.offset)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<R: Read> RecordReader<R> {
    pub fn new(inner: R) -> Self {
        RecordReader {
            inner,
            buf: Vec::new(),
            codec: None,
            index: 0,
            offset: 0,
            file: Xxh3::new(),
            state: State::Open,
        }
    }

    /// The next record; `Ok(None)` only after a valid END frame that ends the input.
    #[allow(clippy::should_implement_trait)] // fallible, and not an iterator after an error
    pub fn next(&mut self) -> Result<Option<Frame>, ProtoError> {
        let mut batch = PageBatch::default();
        Ok(self.next_into(&mut batch)?.map(|filled| match filled {
            Filled::Process(record) => Frame::Process(record),
            Filled::Pages => Frame::Pages(batch),
        }))
    }

    /// Like [`RecordReader::next`], but decodes a page batch into `pages`, reusing its
    /// buffers (the fast path for restore).
    pub fn next_into(&mut self, pages: &mut PageBatch) -> Result<Option<Filled>, ProtoError> {
        match self.state {
            State::Done => return Ok(None),
            State::Failed => return Err(ProtoError::Poisoned { role: "reader" }),
            State::Open => {}
        }
        let result = self.read_frame(pages);
        match &result {
            Err(_) => self.state = State::Failed,
            Ok(None) => self.state = State::Done,
            Ok(Some(_)) => {}
        }
        result
    }

    /// Frames read so far (END not counted).
    pub fn frames(&self) -> u64 {
        self.index
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The size and digest of the frames read so far: of the whole file once `next` has
    /// returned `Ok(None)`. Compare with the manifest's entry ([`FileSum::check`]).
    pub fn digest(&self) -> FileDigest {
        FileDigest { size: self.offset, xxh3: self.file.digest() }
    }

    fn fail(&self, problem: FrameProblem) -> ProtoError {
        ProtoError::frame(self.index, self.offset, problem)
    }

    fn io_error(&self, source: io::Error) -> ProtoError {
        ProtoError::Io { op: "reading", index: self.index, offset: self.offset, source }
    }

    fn read_frame(&mut self, pages: &mut PageBatch) -> Result<Option<Filled>, ProtoError> {
        // Header. Nothing at all where a frame should start: the file lacks its END.
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut self.inner, &mut header).map_err(|e| self.io_error(e))?;
        if got == 0 {
            return Err(self.fail(FrameProblem::MissingEnd));
        }
        if got < HEADER_LEN {
            return Err(self.fail(FrameProblem::TruncatedHeader { got: got as u64 }));
        }
        let [k0, k1, f0, f1, l0, l1, l2, l3] = header;
        let kind = u16::from_le_bytes([k0, k1]);
        let flags = u16::from_le_bytes([f0, f1]);
        let len = u32::from_le_bytes([l0, l1, l2, l3]);

        // Cap before allocating. The kind is not verified yet, but a wrong kind only picks
        // the other cap; the crc then fails.
        let cap = cap_for(kind);
        if len > cap {
            let kind = FrameKindName(kind);
            return Err(self.fail(FrameProblem::TooLong { kind, len: u64::from(len), cap: u64::from(cap) }));
        }

        // Payload and crc.
        let want = u64::from(len) + CRC_LEN as u64;
        let got = read_payload(&mut self.inner, &mut self.buf, want).map_err(|e| self.io_error(e))?;
        if got < want {
            return Err(self.fail(FrameProblem::TruncatedBody { got, want }));
        }
        let Some((payload, stored)) = self.buf.split_last_chunk::<CRC_LEN>() else {
            return Err(self.fail(FrameProblem::TruncatedBody { got: got as u64, want }));
        };
        let stored = u32::from_le_bytes(*stored);
        let mut frame = crc32fast::Hasher::new();
        frame.update(&header);
        frame.update(payload);
        let computed = frame.finalize();
        if stored != computed {
            return Err(self.fail(FrameProblem::Checksum { stored, computed }));
        }

        let kind_name = FrameKindName(kind);
        if !matches!(kind, KIND_PROCESS | KIND_PAGES | KIND_END) {
            return Err(self.fail(FrameProblem::UnknownKind { kind }));
        }
        if flags != 0 {
            return Err(self.fail(FrameProblem::UnknownFlags { kind: kind_name, flags }));
        }

        let filled = match kind {
            KIND_PROCESS => {
                let record: ProcessRecord = decode_exact(payload, kind_name).map_err(|p| self.fail(p))?;
                if let Err(problem) = validate::check_process(&record) {
                    return Err(self.fail(FrameProblem::Invalid { pid: record.pid, problem }));
                }
                Some(Filled::Process(Box::new(record)))
            }
            KIND_PAGES => {
                let codec = match &mut self.codec {
                    Some(codec) => codec,
                    none => none.insert(PageCodec::new()?),
                };
                if let Err(problem) = codec.decode_inner(payload, pages) {
                    return Err(self.fail(FrameProblem::Pages(problem)));
                }
                Some(Filled::Pages)
            }
            _ => {
                let end: EndSummary = decode_exact(payload, kind_name).map_err(|p| self.fail(p))?;
                if end.frames != self.index {
                    return Err(self.fail(FrameProblem::EndCount { stored: end.frames, counted: self.index }));
                }
                None
            }
        };

        // `buf` is the payload and its crc.
        self.file.update(&header);
        self.file.update(&self.buf);
        self.offset += HEADER_LEN as u64 + want;
        if filled.is_some() {
            self.index += 1;
        } else {
            // END must be the last byte.
            let mut probe = [0u8; 1];
            let got = read_full(&mut self.inner, &mut probe).map_err(|e| self.io_error(e))?;
            if got != 0 {
                return Err(self.fail(FrameProblem::TrailingAfterEnd));
            }
        }
        Ok(filled)
    }
}

/// Decodes a postcard payload that must be consumed entirely.
fn decode_exact<'a, T: Deserialize<'a>>(payload: &'a [u8], kind: FrameKindName) -> Result<T, FrameProblem> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(payload).map_err(|source| FrameProblem::Payload { kind, source })?;
    if !rest.is_empty() {
        return Err(FrameProblem::TrailingPayload { kind, extra: rest.len() as u64 });
    }
    Ok(value)
}

/// Reads up to `want` bytes into `buf` (cleared first); returns how many arrived.
///
/// The buffer grows in chunks no larger than what has already arrived (at least 1 MiB), so a
/// short input claiming a long frame costs about its own size, not the claim; a reused buffer
/// that is already large enough is filled without reallocation.
fn read_payload<R: Read>(r: &mut R, buf: &mut Vec<u8>, want: u64) -> io::Result<u64> {
    const FIRST_CHUNK: u64 = 1 << 20;
    buf.clear();
    let mut got: u64 = 0;
    while got < want {
        let chunk = (want - got).min(got.max(FIRST_CHUNK));
        // Exactly: `reserve` would round up to a power of two and keep twice the payload.
        buf.reserve_exact(usize::try_from(chunk).unwrap_or(usize::MAX));
        let n = r.take(chunk).read_to_end(buf)? as u64;
        got += n;
        if n < chunk {
            break;
        }
    }
    Ok(got)
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n.min(rest.len()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
