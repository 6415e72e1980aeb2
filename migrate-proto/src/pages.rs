//! Memory contents: batches of page runs, zstd-compressed when that pays.
//!
//! Pages are not serde records (design §2): a [`PageBatch`] is a list of runs
//! `(addr, npages)` plus the run's bytes back to back. Encoded, a batch is a small postcard
//! [`BatchHeader`] (pid, round, runs, codec, raw length) followed by the data, either raw or
//! as one zstd frame (level 1, kept only when it saves at least 1/8). The header comes first
//! so that a reader can list a batch's runs (a page index, `inspect`) without decompressing.
//!
//! The engine pushes about 1 GiB/s through here, so the codec keeps its zstd contexts
//! ([`PageCodec`]), encodes into a caller's buffer, compresses straight into the output
//! without a scratch copy, and decodes into a caller's [`PageBatch`] whose buffers are reused.
//! Every length is checked before anything is allocated for it: `raw_len` must equal the runs'
//! size, which must not exceed [`MAX_BATCH_BYTES`], and decompression writes into a buffer of
//! exactly that much room.

use std::fmt;
use std::io::Cursor;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::PAGE_SIZE;
use crate::error::{BatchProblem, ProtoError};

/// The most page bytes one batch may carry, uncompressed (64 MiB).
pub const MAX_BATCH_BYTES: u64 = 64 << 20;

/// The most runs one batch may have: every run holds at least one page.
pub const MAX_BATCH_RUNS: usize = (MAX_BATCH_BYTES / PAGE_SIZE) as usize;

/// The zstd level: level 1 compresses at several hundred MB/s per core, and memory
/// compresses well even so (zero-filled tails, text, pointers).
const ZSTD_LEVEL: i32 = 1;

/// Batches of at least this many bytes are sampled before they are compressed.
const SAMPLE_MIN: usize = 256 << 10;
/// How many slices a sample takes, and how long each is.
const SAMPLES: usize = 4;
const SAMPLE_LEN: usize = 16 << 10;

/// `npages` pages starting at `addr`, which is page-aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    pub addr: u64,
    pub npages: u32,
}

impl PageRun {
    /// The run's size in bytes.
    pub fn bytes(&self) -> u64 {
        u64::from(self.npages) * PAGE_SIZE
    }

    /// The address one past the run, or `None` if it overflows.
    pub fn end(&self) -> Option<u64> {
        self.addr.checked_add(self.bytes())
    }
}

/// Pages of one process, or of one object of the image: `data` holds the runs' bytes,
/// uncompressed, back to back (`sum(npages) × 4096` bytes).
///
/// `round` numbers pre-copy rounds (0 = the first full pass): a later round may send an
/// address again, and the later round wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageBatch {
    pub pid: i32,
    /// 0: the process's memory, runs at its addresses. Otherwise the id of an object
    /// ([`crate::records::ObjectRecord`]) that `pid` owns, runs at offsets into it.
    pub object: u64,
    pub round: u32,
    pub runs: Vec<PageRun>,
    pub data: Vec<u8>,
}

impl PageBatch {
    /// The size `data` must have for these runs; `None` if the runs are not valid (see
    /// [`BatchHeader`]) or exceed [`MAX_BATCH_BYTES`].
    pub fn raw_len(&self) -> Option<u64> {
        check_runs(&self.runs).ok()
    }

    /// Each run with its bytes; stops early if `data` is shorter than the runs claim.
    pub fn chunks(&self) -> impl Iterator<Item = (PageRun, &[u8])> + '_ {
        let mut rest: &[u8] = &self.data;
        self.runs.iter().map_while(move |run| {
            let len = usize::try_from(run.bytes()).ok()?;
            let (chunk, tail) = rest.split_at_checked(len)?;
            rest = tail;
            Some((*run, chunk))
        })
    }

    /// Appends the encoded batch to `out`. For many batches, a [`PageCodec`] reuses its zstd
    /// context.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        PageCodec::new()?.encode_into(self, out)
    }

    /// Decodes one encoded batch. For many batches, [`PageCodec::decode_into`] reuses both the
    /// zstd context and the batch's buffers.
    pub fn decode(bytes: &[u8]) -> Result<PageBatch, ProtoError> {
        let mut batch = PageBatch::default();
        PageCodec::new()?.decode_into(bytes, &mut batch)?;
        Ok(batch)
    }
}

/// How a batch's data is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    /// As is.
    Raw,
    /// One zstd frame that decompresses to exactly `raw_len` bytes.
    Zstd,
}

/// The encoded batch's header, in front of its data. Decoding it alone
/// ([`BatchHeader::decode`]) lists the runs without touching the data.
///
/// Checked on decode: at least one run; every run has `npages ≥ 1`, a page-aligned address
/// and does not overflow; runs are sorted and disjoint; `raw_len == sum(npages) × 4096 ≤`
/// [`MAX_BATCH_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeader {
    pub pid: i32,
    pub object: u64,
    pub round: u32,
    #[serde(deserialize_with = "bounded_runs")]
    pub runs: Vec<PageRun>,
    pub codec: Codec,
    pub raw_len: u64,
}

/// [`BatchHeader`] as written: borrows the runs (postcard encodes a slice as a `Vec`).
#[derive(Serialize)]
struct BatchHeaderRef<'a> {
    pid: i32,
    object: u64,
    round: u32,
    runs: &'a [PageRun],
    codec: Codec,
    raw_len: u64,
}

impl BatchHeader {
    /// Decodes and checks the header of an encoded batch; returns it with the data that
    /// follows it.
    pub fn decode(bytes: &[u8]) -> Result<(BatchHeader, &[u8]), ProtoError> {
        decode_header(bytes).map_err(ProtoError::batch)
    }
}

fn decode_header(bytes: &[u8]) -> Result<(BatchHeader, &[u8]), BatchProblem> {
    let (header, rest) = postcard::take_from_bytes::<BatchHeader>(bytes).map_err(BatchProblem::Header)?;
    let expected = check_runs(&header.runs)?;
    if header.raw_len != expected {
        return Err(BatchProblem::RawLen { raw_len: header.raw_len, expected });
    }
    Ok((header, rest))
}

/// Checks the runs' structure; returns their size in bytes.
fn check_runs(runs: &[PageRun]) -> Result<u64, BatchProblem> {
    if runs.is_empty() {
        return Err(BatchProblem::Empty);
    }
    let mut total: u64 = 0;
    let mut prev_end: Option<u64> = None;
    for run in runs {
        if run.npages == 0 {
            return Err(BatchProblem::EmptyRun { addr: run.addr });
        }
        if !run.addr.is_multiple_of(PAGE_SIZE) {
            return Err(BatchProblem::UnalignedRun { addr: run.addr });
        }
        let end = run.end().ok_or(BatchProblem::RunOverflow { addr: run.addr, npages: run.npages })?;
        if let Some(prev_end) = prev_end
            && run.addr < prev_end
        {
            return Err(BatchProblem::RunOrder { addr: run.addr, prev_end });
        }
        prev_end = Some(end);
        // Each run is at most u32::MAX pages, so the sum of at most MAX_BATCH_RUNS + 1 of them
        // cannot overflow; compare on every step so a huge run fails at once.
        total = total.saturating_add(run.bytes());
        if total > MAX_BATCH_BYTES {
            return Err(BatchProblem::TooLarge { bytes: total, cap: MAX_BATCH_BYTES });
        }
    }
    Ok(total)
}

/// Deserializes the run list, refusing more than [`MAX_BATCH_RUNS`] runs before storing
/// them, so a hostile header cannot make the reader build a list far larger than any valid
/// batch.
fn bounded_runs<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<PageRun>, D::Error> {
    struct RunsVisitor;
    impl<'de> Visitor<'de> for RunsVisitor {
        type Value = Vec<PageRun>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "at most {MAX_BATCH_RUNS} page runs")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let hint = seq.size_hint().unwrap_or(0);
            if hint > MAX_BATCH_RUNS {
                return Err(serde::de::Error::invalid_length(hint, &self));
            }
            let mut runs = Vec::with_capacity(hint);
            while let Some(run) = seq.next_element::<PageRun>()? {
                if runs.len() >= MAX_BATCH_RUNS {
                    return Err(serde::de::Error::invalid_length(runs.len() + 1, &self));
                }
                runs.push(run);
            }
            Ok(runs)
        }
    }
    de.deserialize_seq(RunsVisitor)
}

/// The encoded head of a page batch ([`PageCodec::encode_head`]): its header and, when
/// compression paid, the compressed data. Only a codec makes one, so a frame writer
/// given one ([`crate::frame::RecordWriter::pages_encoded`]) never writes a payload its
/// reader would refuse. Encoding and framing may then run on different threads — several
/// encoders at once, one writer keeping the batches' order.
#[derive(Debug, Default)]
pub struct EncodedHead {
    pub(crate) bytes: Vec<u8>,
    /// The batch's data follows raw: the frame's payload ends with it.
    pub(crate) raw_len: Option<usize>,
}

/// Encodes and decodes page batches, keeping its zstd contexts between batches.
pub struct PageCodec {
    compressor: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
    /// Room for one compressed sample ([`PageCodec::worth_compressing`]).
    sample: Vec<u8>,
}

impl fmt::Debug for PageCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageCodec").field("level", &ZSTD_LEVEL).finish_non_exhaustive()
    }
}

impl PageCodec {
    /// Sets up the zstd contexts (fails only if zstd cannot allocate them).
    pub fn new() -> Result<Self, ProtoError> {
        let compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)
            .map_err(|source| ProtoError::Zstd { op: "compressor setup", source })?;
        let decompressor = zstd::bulk::Decompressor::new()
            .map_err(|source| ProtoError::Zstd { op: "decompressor setup", source })?;
        let sample = Vec::with_capacity(zstd::zstd_safe::compress_bound(SAMPLE_LEN));
        Ok(PageCodec { compressor, decompressor, sample })
    }

    /// Appends the encoded `batch` to `out`. Refuses a batch that a reader would refuse
    /// (bad runs, `data` of the wrong size, more than [`MAX_BATCH_BYTES`]).
    pub fn encode_into(&mut self, batch: &PageBatch, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        let tail = self.encode_parts(batch, out)?;
        out.extend_from_slice(tail);
        Ok(())
    }

    /// Encodes `batch` into `head` (its buffer reused): the batch's data must go with it
    /// to the frame writer, which appends it when it was not compressed.
    pub fn encode_head(&mut self, batch: &PageBatch, head: &mut EncodedHead) -> Result<(), ProtoError> {
        head.bytes.clear();
        let tail = self.encode_parts(batch, &mut head.bytes)?;
        head.raw_len = (!tail.is_empty()).then_some(tail.len());
        Ok(())
    }

    /// Appends the header, and the compressed data if compression pays, to `out`; returns the
    /// bytes that must follow `out` (the raw data, or nothing). Lets the frame writer send raw
    /// pages without copying them.
    pub(crate) fn encode_parts<'b>(
        &mut self,
        batch: &'b PageBatch,
        out: &mut Vec<u8>,
    ) -> Result<&'b [u8], ProtoError> {
        let raw_len = check_runs(&batch.runs).map_err(ProtoError::batch)?;
        let len = batch.data.len() as u64;
        if len != raw_len {
            return Err(ProtoError::batch(BatchProblem::DataLen { len, expected: raw_len }));
        }
        let start = out.len();
        let header = |codec| BatchHeaderRef {
            pid: batch.pid,
            object: batch.object,
            round: batch.round,
            runs: &batch.runs,
            codec,
            raw_len,
        };
        append_postcard(&header(Codec::Zstd), out)?;

        // A large batch whose samples do not compress is stored raw without trying the
        // whole: random or already compressed memory costs a few percent of a full pass.
        if !self.worth_compressing(&batch.data) {
            out.truncate(start);
            append_postcard(&header(Codec::Raw), out)?;
            return Ok(&batch.data);
        }

        // Compress straight into `out`, behind the header. Keep the result only if it saves
        // at least 1/8; otherwise (or if zstd gives up) store the data raw.
        let limit = batch.data.len() - batch.data.len() / 8;
        let pos = out.len();
        out.reserve(limit);
        let mut cursor = Cursor::new(&mut *out);
        cursor.set_position(pos as u64);
        let compressed = self.compressor.compress_to_buffer(&batch.data, &mut cursor);
        match compressed {
            Ok(n) if n <= limit && out.len() == pos + n => Ok(&[]),
            _ => {
                // The codec is the header's only byte that differs, and postcard encodes both
                // variants in one byte, but re-encode rather than patch a byte in place.
                out.truncate(start);
                append_postcard(&header(Codec::Raw), out)?;
                Ok(&batch.data)
            }
        }
    }

    /// Whether compressing `data` may pay: always for a small batch; for a large one, when
    /// [`SAMPLES`] slices of [`SAMPLE_LEN`] bytes spread over it shrink by at least 1/16
    /// together (compressed apart, they shrink less than the whole would, hence a lower
    /// bar than the 1/8 the whole must save to be kept).
    fn worth_compressing(&mut self, data: &[u8]) -> bool {
        if data.len() < SAMPLE_MIN {
            return true;
        }
        let step = data.len() / SAMPLES;
        let mut packed = 0usize;
        for i in 0..SAMPLES {
            let Some(slice) = data.get(i * step..i * step + SAMPLE_LEN) else { return true };
            self.sample.clear();
            match self.compressor.compress_to_buffer(slice, &mut self.sample) {
                Ok(n) => packed += n,
                Err(_) => packed += SAMPLE_LEN,
            }
        }
        packed * 16 <= SAMPLES * SAMPLE_LEN * 15
    }

    /// Decodes one encoded batch into `batch`, reusing its buffers.
    ///
    /// On error `batch` holds no meaningful data.
    pub fn decode_into(&mut self, bytes: &[u8], batch: &mut PageBatch) -> Result<(), ProtoError> {
        self.decode_inner(bytes, batch).map_err(ProtoError::batch)
    }

    pub(crate) fn decode_inner(&mut self, bytes: &[u8], batch: &mut PageBatch) -> Result<(), BatchProblem> {
        let (header, data) = decode_header(bytes)?;
        // decode_header checked raw_len ≤ MAX_BATCH_BYTES, so this is a small number.
        let raw_len = usize::try_from(header.raw_len)
            .map_err(|_| BatchProblem::TooLarge { bytes: header.raw_len, cap: MAX_BATCH_BYTES })?;
        batch.data.clear();
        match header.codec {
            Codec::Raw => {
                if data.len() != raw_len {
                    return Err(BatchProblem::DataLen { len: data.len() as u64, expected: header.raw_len });
                }
                batch.data.extend_from_slice(data);
            }
            Codec::Zstd => {
                let got = decompress_exact(&mut self.decompressor, data, &mut batch.data, raw_len)?;
                if got != raw_len {
                    batch.data.clear();
                    return Err(BatchProblem::DecompressedLen { got: got as u64, expected: header.raw_len });
                }
            }
        }
        batch.pid = header.pid;
        batch.object = header.object;
        batch.round = header.round;
        batch.runs = header.runs;
        Ok(())
    }
}

/// Decompresses `src` into the empty `out`, writing at most `max` bytes: a stream that would
/// produce more fails instead of growing the buffer or running on. Returns the bytes written.
fn decompress_exact(
    dctx: &mut zstd::bulk::Decompressor<'static>,
    src: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<usize, BatchProblem> {
    out.clear();
    out.reserve_exact(max);
    let result = if out.capacity() == max {
        // Exactly the room: zstd fills the spare capacity, with no zero-fill first.
        dctx.decompress_to_buffer(src, out)
    } else {
        // A reused buffer with more room than this batch needs: give zstd a slice of exactly
        // `max` bytes so the bound holds whatever the capacity.
        out.resize(max, 0);
        dctx.decompress_to_buffer(src, out.as_mut_slice()).inspect(|&n| out.truncate(n))
    };
    result.map_err(|e| {
        out.clear();
        BatchProblem::Decompress(e)
    })
}

/// Appends `value`, postcard-encoded, to `out`.
pub(crate) fn append_postcard<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let buf = std::mem::take(out);
    *out = postcard::to_extend(value, buf).map_err(|source| ProtoError::Encode { what: "record", source })?;
    Ok(())
}
