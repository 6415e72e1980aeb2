//! Memory contents: which pages hold data, read in batches, written in parallel.
//!
//! Stored: present or swapped pages of private anonymous memory; the pages of private
//! file mappings that were copied on write (pagemap's file bit clear); shared anonymous
//! memory once, from the object itself (`map_files` + `SEEK_DATA`), never per mapping.
//! Not stored: file pages (the file has them), the vDSO, and pages that hold only zeros —
//! those mapping the kernel's zero page are known from the pagemap without being read,
//! written zeros are found by a word-wise check of what was read.
//!
//! Dump: the engine thread reads batches with `process_vm_readv` (many runs per call,
//! straight into the batch's buffer) while a second thread encodes, checksums and writes
//! the previous batch ([`dump`]); `/proc/PID/mem` serves what `process_vm_readv` may not
//! read (PROT_NONE and other unreadable pages), as a debugger does. Restore: the engine
//! thread reads and checks batches while worker threads write them into the new process
//! ([`restore_pages`]) with `process_vm_writev`, or `/proc/PID/mem` where the mapping is
//! not writable. No ptrace request leaves the engine thread: only the memory copies do.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use migrate_proto::pages::{PageBatch, PageRun};
use migrate_proto::records::{ProcessRecord, Vma, VmaBacking};
use nix::sys::uio::{RemoteIoVec, process_vm_readv, process_vm_writev};
use nix::unistd::Pid;

use crate::error::{EngineError, io_err};
use crate::image::Writer;

pub const PAGE: u64 = 4096;
const PAGE_USIZE: usize = PAGE as usize;
/// Uncompressed bytes per batch: large enough that per-batch costs (a frame, a few
/// syscalls) vanish, small enough that the batches in flight stay in the CPU's caches
/// between the thread that fills them and the one that writes them.
const BATCH_BYTES: usize = 1 << 20;
const BATCH_PAGES: u64 = BATCH_BYTES as u64 / PAGE;
/// Batches in flight between the two threads of a dump (one filling, the rest queued or
/// being written).
const DUMP_DEPTH: usize = 3;
/// At most this many remote iovecs per `process_vm_readv`/`writev` (`UIO_MAXIOV`).
const MAX_IOV: usize = 1024;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PM_PFN: u64 = (1 << 55) - 1;

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
#[derive(Debug, Clone, Copy)]
struct Span {
    addr: u64,
    npages: u64,
    /// `None`: read from the process at `addr`; `Some(off)`: from the shared object's
    /// file at `off`.
    object_off: Option<u64>,
    vma: usize,
}

/// Dumps the memory of `pid` (stopped; `pid_ns` is its pid in the image) into `out` as
/// page batches. The batches are encoded and written by a second thread while this one
/// reads the next.
pub fn dump(
    pid: i32,
    pid_ns: i32,
    vmas: &[Vma],
    mem: &File,
    out: &mut Writer,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MemStats, EngineError> {
    let (spans, pages_total, pages_zero) = select(pid, vmas)?;
    let todo: u64 = spans.iter().map(|s| s.npages).sum::<u64>() * PAGE;
    let mut stats = MemStats { pages_total, pages_zero, ..MemStats::default() };
    if spans.is_empty() {
        return Ok(stats);
    }
    let (full_tx, full_rx) = mpsc::sync_channel::<PageBatch>(DUMP_DEPTH);
    let (free_tx, free_rx) = mpsc::channel::<PageBatch>();
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("dump-writer".into())
            .spawn_scoped(scope, move || -> Result<(), EngineError> {
                for batch in full_rx {
                    out.inner().pages(&batch).map_err(out.err())?;
                    // The reader may have finished: then the buffer is simply dropped.
                    let _ = free_tx.send(batch);
                }
                Ok(())
            })
            .map_err(io_err("spawn a thread for", "pages.img"))?;
        let mut reader = BatchReader { pid, vmas, mem, objects: vmas.iter().map(|_| None).collect() };
        let mut allocated = 0usize;
        let mut done = 0u64;
        let mut next = Cursor { span: 0, at: 0 };
        let read = (|| -> Result<(), EngineError> {
            // A batch that came back empty (its pages were all zeros) is used again at
            // once: lost, it would leave the reader waiting for a buffer nobody returns.
            let mut spare: Option<PageBatch> = None;
            while next.span < spans.len() {
                let mut batch = match spare.take().map(Ok).unwrap_or_else(|| free_rx.try_recv()) {
                    Ok(b) => b,
                    Err(_) if allocated < DUMP_DEPTH + 1 => {
                        allocated += 1;
                        PageBatch {
                            pid: pid_ns,
                            round: 0,
                            runs: Vec::new(),
                            data: Vec::with_capacity(BATCH_BYTES),
                        }
                    }
                    // Every buffer is in flight: wait for the writer to hand one back.
                    Err(_) => match free_rx.recv() {
                        Ok(b) => b,
                        Err(_) => return Ok(()),
                    },
                };
                let read = reader.fill(&spans, &mut next, &mut batch, &mut stats)?;
                done += read * PAGE;
                progress(done, todo);
                if batch.runs.is_empty() {
                    spare = Some(batch);
                } else if full_tx.send(batch).is_err() {
                    // The writer stopped: its error says why.
                    return Ok(());
                }
            }
            Ok(())
        })();
        drop(full_tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(EngineError::Unsupported("the page writer panicked".into())));
        read.and(written)
    })?;
    Ok(stats)
}

/// Where the next batch starts: a span, and pages already taken from it.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    span: usize,
    at: u64,
}

/// Reads spans of a process into batches.
struct BatchReader<'a> {
    pid: i32,
    vmas: &'a [Vma],
    mem: &'a File,
    /// Shared objects opened from `map_files`, by VMA.
    objects: Vec<Option<File>>,
}

impl BatchReader<'_> {
    /// Fills `batch` (its buffers reused) with the next pages that hold data, up to a
    /// batch's worth; returns how many pages were read (stored or found zero).
    fn fill(
        &mut self,
        spans: &[Span],
        cur: &mut Cursor,
        batch: &mut PageBatch,
        stats: &mut MemStats,
    ) -> Result<u64, EngineError> {
        batch.runs.clear();
        batch.data.clear();
        // The pieces of spans this batch takes, read into `data` back to back.
        let mut pieces: Vec<Span> = Vec::new();
        let mut npages = 0u64;
        while npages < BATCH_PAGES && cur.span < spans.len() {
            let s = spans[cur.span];
            let n = (s.npages - cur.at).min(BATCH_PAGES - npages);
            pieces.push(Span {
                addr: s.addr + cur.at * PAGE,
                npages: n,
                object_off: s.object_off.map(|o| o + cur.at * PAGE),
                vma: s.vma,
            });
            npages += n;
            cur.at += n;
            if cur.at == s.npages {
                *cur = Cursor { span: cur.span + 1, at: 0 };
            }
        }
        batch.data.resize((npages * PAGE) as usize, 0);
        let mut off = 0usize;
        let mut i = 0;
        while i < pieces.len() {
            let p = pieces[i];
            if p.object_off.is_some() || self.vmas[p.vma].prot & libc::PROT_READ as u32 == 0 {
                let len = (p.npages * PAGE) as usize;
                self.read_slow(p, &mut batch.data[off..off + len])?;
                off += len;
                i += 1;
                continue;
            }
            // Consecutive pieces of readable process memory: one process_vm_readv.
            let mut j = i;
            let mut remote = Vec::new();
            let mut len = 0usize;
            while j < pieces.len()
                && remote.len() < MAX_IOV
                && pieces[j].object_off.is_none()
                && self.vmas[pieces[j].vma].prot & libc::PROT_READ as u32 != 0
            {
                let l = (pieces[j].npages * PAGE) as usize;
                remote.push(RemoteIoVec { base: pieces[j].addr as usize, len: l });
                len += l;
                j += 1;
            }
            let buf = &mut batch.data[off..off + len];
            let got =
                process_vm_readv(Pid::from_raw(self.pid), &mut [IoSliceMut::new(buf)], &remote).unwrap_or(0);
            if got < len {
                // A page it may not read (or a race with nothing: the task is stopped):
                // the rest of these pieces through /proc/PID/mem.
                let mut skip = got;
                let mut at = off;
                for p in &pieces[i..j] {
                    let l = (p.npages * PAGE) as usize;
                    if skip >= l {
                        skip -= l;
                        at += l;
                        continue;
                    }
                    let done = skip / PAGE_USIZE * PAGE_USIZE;
                    let rest = Span {
                        addr: p.addr + done as u64,
                        npages: p.npages - (done / PAGE_USIZE) as u64,
                        ..*p
                    };
                    self.read_slow(rest, &mut batch.data[at + done..at + l])?;
                    skip = 0;
                    at += l;
                }
            }
            off += len;
            i = j;
        }
        // Drop the pages that hold only zeros, moving the others down over them.
        let mut kept = 0usize;
        let mut src = 0usize;
        // A run never spans two VMAs.
        let mut last_vma = usize::MAX;
        for p in &pieces {
            for k in 0..p.npages {
                let page = src..src + PAGE_USIZE;
                src += PAGE_USIZE;
                if is_zero(&batch.data[page.clone()]) {
                    stats.pages_zero += 1;
                    continue;
                }
                if page.start != kept {
                    batch.data.copy_within(page, kept);
                }
                kept += PAGE_USIZE;
                stats.pages_stored += 1;
                let addr = p.addr + k * PAGE;
                match batch.runs.last_mut() {
                    Some(r) if r.addr + u64::from(r.npages) * PAGE == addr && p.vma == last_vma => {
                        r.npages += 1
                    }
                    _ => batch.runs.push(PageRun { addr, npages: 1 }),
                }
                last_vma = p.vma;
            }
        }
        batch.data.truncate(kept);
        Ok(npages)
    }

    /// Reads a piece through `/proc/PID/mem` or the shared object's file.
    fn read_slow(&mut self, p: Span, buf: &mut [u8]) -> Result<(), EngineError> {
        match p.object_off {
            None => self.mem.read_exact_at(buf, p.addr),
            Some(off) => {
                object(&mut self.objects, p.vma, self.pid, &self.vmas[p.vma])?.read_exact_at(buf, off)
            }
        }
        .map_err(|source| EngineError::Memory { pid: self.pid, addr: p.addr, op: "read", source })
    }
}

/// Whether a page holds only zeros. Or-folds 64 bytes at a time (which the compiler
/// vectorizes) and stops at the first block that is not zero: data pages cost one block.
fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(64).all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

fn object<'a>(objects: &'a mut [Option<File>], i: usize, pid: i32, v: &Vma) -> Result<&'a File, EngineError> {
    let slot = &mut objects[i];
    if slot.is_none() {
        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
        *slot = Some(File::open(&path).map_err(io_err("open", path))?);
    }
    slot.as_ref().ok_or_else(|| EngineError::Unsupported("shared object vanished".into()))
}

/// The page frame number of the kernel's shared zero page, as pagemap shows it to us
/// (`None` when PFNs are hidden, without CAP_SYS_ADMIN): a page that maps it was read
/// but never written, and holds zeros without being read.
fn zero_pfn() -> Option<u64> {
    static PFN: OnceLock<Option<u64>> = OnceLock::new();
    *PFN.get_or_init(|| {
        let m = migrate_sys::mem::AnonMapping::new(PAGE_USIZE).ok()?;
        // A read fault on untouched private anonymous memory maps the zero page.
        std::hint::black_box(m.as_slice()[0]);
        let e = migrate_sys::pagemap::Pagemap::open(None).ok()?.entry(m.addr()).ok()?;
        e.pfn().filter(|&pfn| pfn != 0)
    })
}

/// Which pages hold data, per VMA; how many pages the dumpable VMAs span; and how many of
/// them map the zero page (skipped without being read).
fn select(pid: i32, vmas: &[Vma]) -> Result<(Vec<Span>, u64, u64), EngineError> {
    let pm_path = format!("/proc/{pid}/pagemap");
    let pagemap = File::open(&pm_path).map_err(io_err("open", &pm_path))?;
    let zero = zero_pfn();
    let mut spans = Vec::new();
    let mut total = 0;
    let mut zeros = 0;
    let mut raw = Vec::new();
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
                raw.resize((npages * 8) as usize, 0);
                pagemap.read_exact_at(&mut raw, v.start / PAGE * 8).map_err(|source| {
                    EngineError::Memory { pid, addr: v.start, op: "read the pagemap", source }
                })?;
                let mut run: Option<(u64, u64)> = None;
                for (p, e) in raw.chunks_exact(8).enumerate() {
                    let e = u64::from_ne_bytes(e.try_into().unwrap_or([0; 8]));
                    let present = e & PM_PRESENT != 0;
                    let is_zero_page = present && zero.is_some_and(|z| e & PM_PFN == z);
                    zeros += u64::from(is_zero_page);
                    let keep =
                        !is_zero_page && (e & PM_SWAPPED != 0 || (present && (anon || e & PM_FILE == 0)));
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
    Ok((spans, total, zeros))
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

/// Batches in flight per restore worker (queued or being written).
const RESTORE_DEPTH: usize = 2;

/// Writes the page batches of one process into `host`'s memory (its VMAs already
/// mapped). `next` fills a batch (its buffers reused) with the process's next batch and
/// returns false when there is none; each batch is checked against `rec` here, on the
/// calling thread, before a worker writes it. `progress` hears of each batch's pages.
/// Returns the pages written, once every one of them is in place.
pub fn restore_pages(
    host: i32,
    mem: &File,
    rec: &ProcessRecord,
    next: &mut dyn FnMut(&mut PageBatch) -> Result<bool, EngineError>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, EngineError> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    let (free_tx, free_rx) = mpsc::channel::<PageBatch>();
    let failed: Mutex<Option<EngineError>> = Mutex::new(None);
    let mut pages = 0u64;
    std::thread::scope(|scope| -> Result<(), EngineError> {
        let mut queues = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = mpsc::sync_channel::<PageBatch>(RESTORE_DEPTH);
            let (free_tx, failed) = (free_tx.clone(), &failed);
            std::thread::Builder::new()
                .name(format!("restore-{w}"))
                .spawn_scoped(scope, move || {
                    for batch in rx {
                        if let Err(e) = write_batch(mem, host, &rec.vmas, &batch) {
                            failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                            return;
                        }
                        let _ = free_tx.send(batch);
                    }
                })
                .map_err(io_err("spawn a thread for", format!("/proc/{host}/mem")))?;
            queues.push(tx);
        }
        drop(free_tx);
        let mut allocated = 0usize;
        let mut turn = 0usize;
        loop {
            let mut batch = match free_rx.try_recv() {
                Ok(b) => b,
                Err(_) if allocated < workers * (RESTORE_DEPTH + 1) + 1 => {
                    allocated += 1;
                    PageBatch::default()
                }
                Err(_) => match free_rx.recv() {
                    Ok(b) => b,
                    // Every worker stopped: one of them failed.
                    Err(_) => break,
                },
            };
            if !next(&mut batch)? {
                break;
            }
            migrate_proto::validate::check_batch(&batch, rec)
                .map_err(|source| EngineError::Image { file: crate::image::PAGES.into(), source })?;
            let n: u64 = batch.runs.iter().map(|r| u64::from(r.npages)).sum();
            if queues[turn % workers].send(batch).is_err() {
                break;
            }
            turn += 1;
            pages += n;
            progress(n);
        }
        // Closing the queues ends the workers; the scope waits for them.
        Ok(())
    })?;
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(pages),
    }
}

/// Writes one batch into `host`'s memory: `process_vm_writev` for runs in writable
/// mappings (many runs per call), `/proc/PID/mem` for the others and for whatever the
/// first could not write.
fn write_batch(mem: &File, host: i32, vmas: &[Vma], batch: &PageBatch) -> Result<(), EngineError> {
    let writable = |addr: u64| {
        let i = vmas.partition_point(|v| v.end <= addr);
        vmas.get(i).is_some_and(|v| v.start <= addr && v.prot & libc::PROT_WRITE as u32 != 0)
    };
    let chunks: Vec<(PageRun, &[u8])> = batch.chunks().collect();
    if chunks.len() != batch.runs.len() {
        return Err(EngineError::Incompatible("page batch shorter than its runs".into()));
    }
    let slow = |run: PageRun, data: &[u8]| {
        mem.write_all_at(data, run.addr).map_err(|source| EngineError::Memory {
            pid: host,
            addr: run.addr,
            op: "write",
            source,
        })
    };
    let mut i = 0;
    while i < chunks.len() {
        if !writable(chunks[i].0.addr) {
            slow(chunks[i].0, chunks[i].1)?;
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chunks.len() && j - i < MAX_IOV && writable(chunks[j].0.addr) {
            j += 1;
        }
        let local: Vec<IoSlice<'_>> = chunks[i..j].iter().map(|(_, d)| IoSlice::new(d)).collect();
        let remote: Vec<RemoteIoVec> =
            chunks[i..j].iter().map(|(r, d)| RemoteIoVec { base: r.addr as usize, len: d.len() }).collect();
        let len: usize = remote.iter().map(|r| r.len).sum();
        let got = process_vm_writev(Pid::from_raw(host), &local, &remote).unwrap_or(0);
        if got < len {
            let mut skip = got;
            for &(run, data) in &chunks[i..j] {
                if skip >= data.len() {
                    skip -= data.len();
                    continue;
                }
                let done = skip / PAGE_USIZE * PAGE_USIZE;
                slow(PageRun { addr: run.addr + done as u64, npages: run.npages }, &data[done..])?;
                skip = 0;
            }
        }
        i = j;
    }
    Ok(())
}
