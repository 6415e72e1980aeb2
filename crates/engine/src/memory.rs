//! Memory contents: which pages hold data, read in runs, written in batches.
//!
//! Stored: present or swapped pages of private anonymous memory; the pages of private
//! file mappings that were copied on write (pagemap's file bit clear); shared anonymous
//! memory once, from the object itself (`map_files` + `SEEK_DATA`), never per mapping.
//! Not stored: file pages (the file has them), the vDSO, and pages that hold only zeros.
//! Reading and writing go through `/proc/PID/mem`, which also reaches pages the task
//! itself may not read or write (PROT_NONE, read-only), as a debugger does.

use std::fs::File;
use std::os::unix::fs::FileExt;

use migrate_proto::pages::{PageBatch, PageRun};
use migrate_proto::records::{Vma, VmaBacking};

use crate::error::{EngineError, io_err};

pub const PAGE: u64 = 4096;
/// Uncompressed bytes per batch: large enough for zstd to pay, small enough to overlap
/// reading and writing later.
const BATCH_BYTES: usize = 4 << 20;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// Counts of a memory dump.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemStats {
    /// Pages mapped in dumpable VMAs.
    pub pages_total: u64,
    /// Pages that held data and were stored.
    pub pages_stored: u64,
    /// Pages that held only zeros and were skipped.
    pub pages_zero: u64,
}

/// A range of pages to store, and where to read them from.
struct Span {
    addr: u64,
    npages: u64,
    /// `None`: read from `/proc/PID/mem` at `addr`; `Some(off)`: from the shared
    /// object's file at `off`.
    object_off: Option<u64>,
    vma: usize,
}

/// Collects batches and hands each full one to `sink`.
struct Batcher<'a> {
    batch: PageBatch,
    /// The VMA of the last page pushed: a run never spans two VMAs.
    last_vma: usize,
    sink: &'a mut dyn FnMut(&PageBatch) -> Result<(), EngineError>,
}

impl Batcher<'_> {
    fn push_page(&mut self, vma: usize, addr: u64, page: &[u8]) -> Result<(), EngineError> {
        match self.batch.runs.last_mut() {
            Some(r) if vma == self.last_vma && r.addr + u64::from(r.npages) * PAGE == addr => r.npages += 1,
            _ => self.batch.runs.push(PageRun { addr, npages: 1 }),
        }
        self.last_vma = vma;
        self.batch.data.extend_from_slice(page);
        if self.batch.data.len() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EngineError> {
        if !self.batch.runs.is_empty() {
            (self.sink)(&self.batch)?;
            self.batch.runs.clear();
            self.batch.data.clear();
        }
        Ok(())
    }
}

/// Dumps the memory of `pid` (stopped) as page batches into `sink`.
pub fn dump(
    pid: i32,
    pid_ns: i32,
    vmas: &[Vma],
    mem: &File,
    sink: &mut dyn FnMut(&PageBatch) -> Result<(), EngineError>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MemStats, EngineError> {
    let (spans, pages_total) = select(pid, vmas)?;
    let todo: u64 = spans.iter().map(|s| s.npages).sum();
    let mut stats = MemStats { pages_total, ..MemStats::default() };
    let mut batcher = Batcher {
        last_vma: usize::MAX,
        batch: PageBatch {
            pid: pid_ns,
            round: 0,
            runs: Vec::new(),
            data: Vec::with_capacity(BATCH_BYTES + PAGE as usize),
        },
        sink,
    };
    let mut buf = vec![0u8; BATCH_BYTES];
    let mut done = 0u64;
    let mut objects: Vec<Option<File>> = vmas.iter().map(|_| None).collect();
    for s in &spans {
        let mut at = 0u64;
        while at < s.npages {
            let n = (s.npages - at).min(BATCH_BYTES as u64 / PAGE);
            let chunk = &mut buf[..(n * PAGE) as usize];
            let addr = s.addr + at * PAGE;
            match s.object_off {
                None => mem.read_exact_at(chunk, addr),
                Some(off) => {
                    object(&mut objects, s.vma, pid, &vmas[s.vma])?.read_exact_at(chunk, off + at * PAGE)
                }
            }
            .map_err(|source| EngineError::Memory { pid, addr, op: "read", source })?;
            for (i, page) in chunk.chunks_exact(PAGE as usize).enumerate() {
                if page.iter().all(|&b| b == 0) {
                    stats.pages_zero += 1;
                } else {
                    stats.pages_stored += 1;
                    batcher.push_page(s.vma, addr + i as u64 * PAGE, page)?;
                }
            }
            at += n;
            done += n;
            progress(done * PAGE, todo * PAGE);
        }
    }
    batcher.flush()?;
    Ok(stats)
}

fn object<'a>(objects: &'a mut [Option<File>], i: usize, pid: i32, v: &Vma) -> Result<&'a File, EngineError> {
    let slot = &mut objects[i];
    if slot.is_none() {
        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
        *slot = Some(File::open(&path).map_err(io_err("open", path))?);
    }
    slot.as_ref().ok_or_else(|| EngineError::Unsupported("shared object vanished".into()))
}

/// Which pages hold data, per VMA; and how many pages the dumpable VMAs span.
fn select(pid: i32, vmas: &[Vma]) -> Result<(Vec<Span>, u64), EngineError> {
    let pm_path = format!("/proc/{pid}/pagemap");
    let pagemap = File::open(&pm_path).map_err(io_err("open", &pm_path))?;
    let mut spans = Vec::new();
    let mut total = 0;
    for (i, v) in vmas.iter().enumerate() {
        let npages = (v.end - v.start) / PAGE;
        match &v.backing {
            VmaBacking::Vdso
            | VmaBacking::Vvar
            | VmaBacking::VvarVclock
            | VmaBacking::File { shared: true, .. } => {}
            VmaBacking::AnonShared => {
                total += npages;
                shared_spans(pid, i, v, &mut spans)?;
            }
            VmaBacking::Anon | VmaBacking::File { shared: false, .. } => {
                total += npages;
                let anon = matches!(v.backing, VmaBacking::Anon);
                let mut raw = vec![0u8; (npages * 8) as usize];
                pagemap.read_exact_at(&mut raw, v.start / PAGE * 8).map_err(|source| {
                    EngineError::Memory { pid, addr: v.start, op: "read the pagemap", source }
                })?;
                let mut run: Option<(u64, u64)> = None;
                for (p, e) in raw.chunks_exact(8).enumerate() {
                    let e = u64::from_ne_bytes(e.try_into().unwrap_or([0; 8]));
                    let keep = e & PM_SWAPPED != 0 || (e & PM_PRESENT != 0 && (anon || e & PM_FILE == 0));
                    let addr = v.start + p as u64 * PAGE;
                    run = match (run, keep) {
                        (Some((s, n)), true) => Some((s, n + 1)),
                        (None, true) => Some((addr, 1)),
                        (Some((s, n)), false) => {
                            spans.push(Span { addr: s, npages: n, object_off: None, vma: i });
                            None
                        }
                        (None, false) => None,
                    };
                }
                if let Some((s, n)) = run {
                    spans.push(Span { addr: s, npages: n, object_off: None, vma: i });
                }
            }
        }
    }
    Ok((spans, total))
}

/// The data ranges of a shared anonymous object, found with `SEEK_DATA`/`SEEK_HOLE`.
fn shared_spans(pid: i32, i: usize, v: &Vma, spans: &mut Vec<Span>) -> Result<(), EngineError> {
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
    let mut f = File::open(&path).map_err(io_err("open", &path))?;
    let len = v.end - v.start;
    let mut pos = v.offset;
    let end = v.offset + len;
    while pos < end {
        let data = match seek_data(&mut f, pos) {
            Ok(Some(d)) if d < end => d,
            Ok(_) => break,
            Err(e) => return Err(EngineError::Io { op: "SEEK_DATA in", path: path.into(), source: e }),
        };
        let hole = seek_hole(&mut f, data).map_err(io_err("SEEK_HOLE in", &path))?.min(end);
        let start = data / PAGE * PAGE;
        let stop = hole.next_multiple_of(PAGE);
        spans.push(Span {
            addr: v.start + (start - v.offset),
            npages: (stop - start) / PAGE,
            object_off: Some(start),
            vma: i,
        });
        pos = stop;
    }
    Ok(())
}

fn seek_data(f: &mut File, from: u64) -> std::io::Result<Option<u64>> {
    match nix::unistd::lseek(&*f, from as i64, nix::unistd::Whence::SeekData) {
        Ok(off) => Ok(Some(off as u64)),
        Err(nix::errno::Errno::ENXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn seek_hole(f: &mut File, from: u64) -> std::io::Result<u64> {
    nix::unistd::lseek(&*f, from as i64, nix::unistd::Whence::SeekHole).map(|o| o as u64).map_err(Into::into)
}

/// Writes one batch into the stub's memory.
pub fn write_batch(mem: &File, pid: i32, batch: &PageBatch) -> Result<(), EngineError> {
    let mut off = 0usize;
    for r in &batch.runs {
        let len = r.npages as usize * PAGE as usize;
        let data = batch
            .data
            .get(off..off + len)
            .ok_or_else(|| EngineError::Incompatible("page batch shorter than its runs".into()))?;
        mem.write_all_at(data, r.addr).map_err(|source| EngineError::Memory {
            pid,
            addr: r.addr,
            op: "write",
            source,
        })?;
        off += len;
    }
    Ok(())
}
