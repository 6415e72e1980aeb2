//! Memory contents: which pages hold data, read in batches, written in parallel.
//!
//! Stored: present or swapped pages of private anonymous memory; the pages of private
//! file mappings that were copied on write (pagemap's file bit clear); the image's objects
//! (shared anonymous memory, memfds, deleted files: [`crate::objects::shmem`]) once, from the
//! object itself (`SEEK_DATA` over it), never per mapping, as batches of the object. A
//! page a child shares copy-on-write with its parent (the same frame, or the same swap
//! slot, at the same address of a VMA fork carried over) is not stored again: the record
//! lists it as inherited.
//! Not stored: file pages (the file has them), the vDSO, and pages that hold only zeros —
//! those mapping the kernel's zero page are known from the pagemap without being read,
//! written zeros are found by a word-wise check of what was read.
//!
//! Dump: the engine thread reads batches with `process_vm_readv` (many runs per call,
//! straight into the batch's buffer) while a second thread encodes and checksums the
//! previous batch and a third writes it (`pipeline.rs`) ([`dump`]); `/proc/PID/mem` serves what `process_vm_readv` may not
//! read (PROT_NONE and other unreadable pages), as a debugger does. Restore: the engine
//! thread reads and checks batches while worker threads write them into the new process
//! ([`restore_pages`]) with `process_vm_writev`, or `/proc/PID/mem` where the mapping is
//! not writable. No ptrace request leaves the engine thread: only the memory copies do.

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use migrate_proto::pages::{EncodedHead, PageBatch, PageCodec, PageRun};
use migrate_proto::records::{ProcessRecord, Vma, VmaBacking};
use nix::sys::uio::{RemoteIoVec, process_vm_readv, process_vm_writev};
use nix::unistd::Pid;

use crate::error::{EngineError, io_err};
use crate::image::{self, Writer};
use crate::objects::shmem::Live;

pub const PAGE: u64 = 4096;
const PAGE_USIZE: usize = PAGE as usize;
/// Uncompressed bytes per batch: large enough that per-batch costs (a frame, a few
/// syscalls) vanish, small enough that the batches in flight stay in the CPU's caches
/// between the thread that fills them and the one that writes them.
const BATCH_BYTES: usize = 1 << 20;
const BATCH_PAGES: u64 = BATCH_BYTES as u64 / PAGE;
/// Batches in flight between the threads of a dump beyond two per encoder (one filling,
/// the rest queued or being written).
const DUMP_DEPTH: usize = 3;
/// Encoder threads of a dump, at most (one per CPU up to this).
const MAX_ENCODERS: usize = 4;
/// At most this many remote iovecs per `process_vm_readv`/`writev` (`UIO_MAXIOV`).
const MAX_IOV: usize = 1024;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PM_EXCLUSIVE: u64 = 1 << 56;
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
    /// An address of the process, or an offset into the object.
    addr: u64,
    npages: u64,
    src: Src,
    /// Pages the process shares with another (copy-on-write after fork): read through
    /// `/proc/PID/mem`. `process_vm_readv` pins what it reads, and since Linux 5.19 a pin
    /// of a shared anonymous page makes the kernel give the process a copy of its own:
    /// the dump would break the sharing and double the container's memory.
    shared: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    /// The process's memory, in its VMA of this index.
    Vma(usize),
    /// The object of this index of the dump's list.
    Object(usize),
}

/// The pagemap entries of the pages a process's private VMAs hold, `(addr, entry)` sorted
/// per VMA, kept while its children are dumped.
pub type Pagemaps = Vec<(Vma, Vec<(u64, u64)>)>;

/// An object a process owns, dumped with it: its id, where to read it, its size.
#[derive(Debug, Clone, Copy)]
pub struct ObjectSource<'a> {
    pub id: u64,
    pub path: &'a str,
    pub size: u64,
}

/// What a memory dump of one process found besides its pages.
#[derive(Debug, Default)]
pub struct Dumped {
    pub stats: MemStats,
    /// Pages shared copy-on-write with the parent, not stored.
    pub inherited: Vec<PageRun>,
    /// Its own pagemap, for its children's dumps.
    pub pagemaps: Pagemaps,
}

/// Dumps the memory of `pid` (stopped; `pid_ns` is its pid in the image), then the
/// objects it owns, into `out` as page batches. Pages it shares with its parent, whose
/// pagemap is `parent`, are listed, not stored. The batches are encoded and written by a
/// second thread while this one reads the next.
#[allow(clippy::too_many_arguments)]
pub fn dump(
    pid: i32,
    pid_ns: i32,
    vmas: &[Vma],
    mem: &File,
    objects: &[ObjectSource<'_>],
    parent: Option<&Pagemaps>,
    out: &mut Writer,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Dumped, EngineError> {
    let mut sel = select(pid, vmas, parent)?;
    let mut files = Vec::with_capacity(objects.len());
    for (k, o) in objects.iter().enumerate() {
        let f = File::open(o.path).map_err(io_err("open", o.path))?;
        object_spans(&f, o.path, o.size, k, &mut sel.spans)?;
        sel.total += o.size.div_ceil(PAGE);
        files.push(f);
    }
    let spans = std::mem::take(&mut sel.spans);
    let todo: u64 = spans.iter().map(|s| s.npages).sum::<u64>() * PAGE;
    let mut stats = MemStats { pages_total: sel.total, pages_zero: sel.zeros, ..MemStats::default() };
    let finish = |stats| Dumped { stats, inherited: sel.inherited, pagemaps: sel.pagemaps };
    if spans.is_empty() {
        return Ok(finish(stats));
    }
    // Compressing is most of a dump's CPU: several encoders take the batches in turn, and
    // one writer frames them in the order they were read.
    let encoders = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_ENCODERS);
    let (free_tx, free_rx) = mpsc::channel::<PageBatch>();
    std::thread::scope(|scope| {
        let mut to_encoders = Vec::with_capacity(encoders);
        let mut encoded = Vec::with_capacity(encoders);
        let mut heads_back = Vec::with_capacity(encoders);
        let mut threads = Vec::with_capacity(encoders);
        for k in 0..encoders {
            let (tx, rx) = mpsc::sync_channel::<PageBatch>(1);
            let (done_tx, done_rx) = mpsc::sync_channel::<(PageBatch, EncodedHead)>(1);
            let (head_tx, head_rx) = mpsc::channel::<EncodedHead>();
            to_encoders.push(tx);
            encoded.push(done_rx);
            heads_back.push(head_tx);
            let encoder = std::thread::Builder::new()
                .name(format!("dump-encode-{k}"))
                .spawn_scoped(scope, move || -> Result<(), EngineError> {
                    let err = |source| EngineError::Image { file: image::PAGES.into(), source };
                    let mut codec = PageCodec::new().map_err(err)?;
                    for batch in rx {
                        let mut head = head_rx.try_recv().unwrap_or_default();
                        codec.encode_head(&batch, &mut head).map_err(err)?;
                        if done_tx.send((batch, head)).is_err() {
                            // The writer stopped: its error says why.
                            break;
                        }
                    }
                    Ok(())
                })
                .map_err(io_err("spawn a thread for", "pages.img"))?;
            threads.push(encoder);
        }
        let writer = std::thread::Builder::new()
            .name("dump-writer".into())
            .spawn_scoped(scope, move || -> Result<u64, EngineError> {
                // Batch i went to encoder i % encoders: taking them in that order keeps the
                // reader's; the first encoder with nothing more marks the end.
                let mut pages = 0;
                for k in (0..encoders).cycle() {
                    let Ok((batch, head)) = encoded[k].recv() else { break };
                    out.inner().pages_encoded(&head, &batch).map_err(out.err())?;
                    pages += batch.data.len() as u64 / PAGE;
                    // The encoder or the reader may have finished: the buffer is dropped.
                    let _ = heads_back[k].send(head);
                    let _ = free_tx.send(batch);
                }
                Ok(pages)
            })
            .map_err(io_err("spawn a thread for", "pages.img"))?;
        let ids: Vec<u64> = objects.iter().map(|o| o.id).collect();
        let mut reader = BatchReader { pid, vmas, mem, files: &files, ids: &ids };
        let mut allocated = 0usize;
        let mut sent = 0usize;
        let mut done = 0u64;
        let mut next = Cursor { span: 0, at: 0 };
        let read = (|| -> Result<(), EngineError> {
            // A batch that came back empty (its pages were all zeros) is used again at
            // once: lost, it would leave the reader waiting for a buffer nobody returns.
            let mut spare: Option<PageBatch> = None;
            while next.span < spans.len() {
                let mut batch = match spare.take().map(Ok).unwrap_or_else(|| free_rx.try_recv()) {
                    Ok(b) => b,
                    Err(_) if allocated < DUMP_DEPTH + 2 * encoders => {
                        allocated += 1;
                        PageBatch {
                            pid: pid_ns,
                            object: 0,
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
                    continue;
                }
                // Counted only when sent: the writer takes batch i from encoder i % encoders.
                if to_encoders[sent % encoders].send(batch).is_err() {
                    // An encoder or the writer stopped: its error says why.
                    return Ok(());
                }
                sent += 1;
            }
            Ok(())
        })();
        drop(to_encoders);
        // Every thread is joined. A thread that stops makes the others end quietly (a
        // closed channel is not an error), so the first error found is the cause.
        let panicked = || EngineError::Unsupported("a page thread panicked".into());
        let mut result = read;
        for t in threads {
            result = result.and(t.join().unwrap_or_else(|_| Err(panicked())));
        }
        let written = result.and(writer.join().unwrap_or_else(|_| Err(panicked())))?;
        // Never an image that lacks pages it counts: a restore could not tell.
        if written != stats.pages_stored {
            return Err(EngineError::Proc {
                pid,
                what: "its memory".into(),
                reason: format!("{written} pages written of the {} read", stats.pages_stored),
            });
        }
        Ok(())
    })?;
    Ok(finish(stats))
}

/// Where the next batch starts: a span, and pages already taken from it.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    span: usize,
    at: u64,
}

/// Reads spans of a process and its objects into batches.
struct BatchReader<'a> {
    pid: i32,
    vmas: &'a [Vma],
    mem: &'a File,
    /// The objects, opened, and their ids.
    files: &'a [File],
    ids: &'a [u64],
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
        // The pieces of spans this batch takes, read into `data` back to back: of the
        // process, or of one object.
        let key = |s: &Span| match s.src {
            Src::Vma(_) => 0,
            Src::Object(k) => self.ids[k],
        };
        batch.object = key(&spans[cur.span]);
        let mut pieces: Vec<Span> = Vec::new();
        let mut npages = 0u64;
        while npages < BATCH_PAGES && cur.span < spans.len() && key(&spans[cur.span]) == batch.object {
            let s = spans[cur.span];
            let n = (s.npages - cur.at).min(BATCH_PAGES - npages);
            pieces.push(Span { addr: s.addr + cur.at * PAGE, npages: n, ..s });
            npages += n;
            cur.at += n;
            if cur.at == s.npages {
                *cur = Cursor { span: cur.span + 1, at: 0 };
            }
        }
        batch.data.resize((npages * PAGE) as usize, 0);
        let mut off = 0usize;
        let mut i = 0;
        let readable = |s: &Span| {
            !s.shared && matches!(s.src, Src::Vma(v) if self.vmas[v].prot & libc::PROT_READ as u32 != 0)
        };
        while i < pieces.len() {
            let p = pieces[i];
            if !readable(&p) {
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
            while j < pieces.len() && remote.len() < MAX_IOV && readable(&pieces[j]) {
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
        let mut last_src = None;
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
                    Some(r) if r.addr + u64::from(r.npages) * PAGE == addr && Some(p.src) == last_src => {
                        r.npages += 1
                    }
                    _ => batch.runs.push(PageRun { addr, npages: 1 }),
                }
                last_src = Some(p.src);
            }
        }
        batch.data.truncate(kept);
        Ok(npages)
    }

    /// Reads a piece through `/proc/PID/mem` or the object's file (zeros past its end:
    /// its last page may be partial).
    fn read_slow(&mut self, p: Span, buf: &mut [u8]) -> Result<(), EngineError> {
        match p.src {
            Src::Vma(_) => self.mem.read_exact_at(buf, p.addr),
            Src::Object(k) => read_full_at(&self.files[k], buf, p.addr),
        }
        .map_err(EngineError::memory(self.pid, p.addr, "read"))
    }
}

/// Whether a page holds only zeros. Or-folds 64 bytes at a time (which the compiler
/// vectorizes) and stops at the first block that is not zero: data pages cost one block.
fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(64).all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    buf[got..].fill(0);
    Ok(())
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

/// What [`select`] finds.
#[derive(Debug, Default)]
struct Selection {
    spans: Vec<Span>,
    /// Pages the dumpable VMAs span.
    total: u64,
    /// Of those, pages mapping the zero page (skipped without being read).
    zeros: u64,
    inherited: Vec<PageRun>,
    pagemaps: Pagemaps,
}

/// Whether two pagemap entries are one page: the same frame, or the same swap slot.
fn same_page(a: u64, b: u64) -> bool {
    let kind = PM_PRESENT | PM_SWAPPED;
    a & kind != 0 && a & kind == b & kind && a & PM_PFN != 0 && a & PM_PFN == b & PM_PFN
}

/// Which pages of the process hold data, per VMA, and which of those it shares with its
/// parent (`parent`: the parent's pagemaps).
fn select(pid: i32, vmas: &[Vma], parent: Option<&Pagemaps>) -> Result<Selection, EngineError> {
    let pagemap = migrate_sys::pagemap::Pagemap::open(Some(pid)).map_err(|e| EngineError::Proc {
        pid,
        what: "pagemap".into(),
        reason: migrate_sys::error_chain(&e),
    })?;
    let pm_err = |addr| {
        move |e: migrate_sys::pagemap::PagemapError| EngineError::Memory {
            pid,
            addr,
            op: "read the pagemap",
            source: std::io::Error::other(migrate_sys::error_chain(&e)),
        }
    };
    let zero = zero_pfn();
    let mut sel = Selection::default();
    let mut raw = Vec::new();
    for (i, v) in vmas.iter().enumerate() {
        let anon = match &v.backing {
            VmaBacking::Anon => true,
            VmaBacking::File { shared: false, .. } | VmaBacking::Object { shared: false, .. } => false,
            // Shared mappings' pages are their file's or object's; the vDSO is the kernel's.
            _ => continue,
        };
        sel.total += (v.end - v.start) / PAGE;
        // What the parent holds in the same VMA, if fork carried it over: (addr, entry),
        // sorted, walked along with this VMA's pages.
        let from_parent = parent
            .and_then(|pm| pm.iter().find(|(pv, _)| migrate_proto::validate::inheritable(pv, v)))
            .map_or(&[][..], |(_, e)| e.as_slice());
        let mut in_parent = from_parent.iter().peekable();
        let mut kept = Vec::new();
        // Only the populated runs: a reservation of terabytes costs nothing here.
        for (start, end) in pagemap.populated(v.start, v.end).map_err(pm_err(v.start))? {
            pagemap.entries(start, end, &mut raw).map_err(pm_err(start))?;
            // (start, pages, shared with another process); runs end with the region.
            let mut run: Option<(u64, u64, bool)> = None;
            let mut shared: Option<PageRun> = None;
            for (p, &e) in raw.iter().enumerate() {
                let addr = start + p as u64 * PAGE;
                let present = e & PM_PRESENT != 0;
                let is_zero_page = present && zero.is_some_and(|z| e & PM_PFN == z);
                sel.zeros += u64::from(is_zero_page);
                let mut keep =
                    !is_zero_page && (e & PM_SWAPPED != 0 || (present && (anon || e & PM_FILE == 0)));
                while in_parent.next_if(|(a, _)| *a < addr).is_some() {}
                let inherited = in_parent.peek().is_some_and(|&&(a, pe)| a == addr && same_page(pe, e));
                if keep {
                    kept.push((addr, e));
                }
                if keep && inherited {
                    keep = false;
                    match shared.as_mut() {
                        Some(r) if r.end() == Some(addr) && r.npages < u32::MAX => r.npages += 1,
                        _ => sel.inherited.extend(shared.replace(PageRun { addr, npages: 1 })),
                    }
                }
                let not_mine = present && e & PM_EXCLUSIVE == 0;
                run = match (run, keep) {
                    (Some((s, n, sh)), true) if sh == not_mine => Some((s, n + 1, sh)),
                    (Some((s, n, sh)), true) => {
                        sel.spans.push(Span { addr: s, npages: n, src: Src::Vma(i), shared: sh });
                        Some((addr, 1, not_mine))
                    }
                    (None, true) => Some((addr, 1, not_mine)),
                    (Some((s, n, sh)), false) => {
                        sel.spans.push(Span { addr: s, npages: n, src: Src::Vma(i), shared: sh });
                        None
                    }
                    (None, false) => None,
                };
            }
            if let Some((s, n, sh)) = run {
                sel.spans.push(Span { addr: s, npages: n, src: Src::Vma(i), shared: sh });
            }
            sel.inherited.extend(shared);
        }
        sel.pagemaps.push((v.clone(), kept));
    }
    Ok(sel)
}

/// The data ranges of object `k` (the file `f` at `path`, `size` bytes), found with
/// `SEEK_DATA`/`SEEK_HOLE`, as spans at their offsets.
fn object_spans(f: &File, path: &str, size: u64, k: usize, spans: &mut Vec<Span>) -> Result<(), EngineError> {
    let mut pos = 0;
    while pos < size {
        let data = match seek_data(f, pos) {
            Ok(Some(d)) if d < size => d,
            Ok(_) => break,
            Err(e) => return Err(EngineError::Io { op: "SEEK_DATA in", path: path.into(), source: e }),
        };
        let hole = seek_hole(f, data).map_err(io_err("SEEK_HOLE in", path))?.min(size);
        let start = data / PAGE * PAGE;
        let stop = hole.next_multiple_of(PAGE);
        spans.push(Span { addr: start, npages: (stop - start) / PAGE, src: Src::Object(k), shared: false });
        pos = stop;
    }
    Ok(())
}

fn seek_data(f: &File, from: u64) -> std::io::Result<Option<u64>> {
    match nix::unistd::lseek(f, from as i64, nix::unistd::Whence::SeekData) {
        Ok(off) => Ok(Some(off as u64)),
        Err(nix::errno::Errno::ENXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn seek_hole(f: &File, from: u64) -> std::io::Result<u64> {
    nix::unistd::lseek(f, from as i64, nix::unistd::Whence::SeekHole).map(|o| o as u64).map_err(Into::into)
}

/// Batches in flight per restore worker (queued or being written).
const RESTORE_DEPTH: usize = 2;

/// Writes the page batches of one process into `host`'s memory (its VMAs already
/// mapped), and those of the objects it owns into `objects`. `next` fills a batch (its
/// buffers reused) with the process's next batch and returns false when there is none;
/// each batch is checked against `rec` here, on the calling thread, before a worker
/// writes it (an object's batch is written here). `progress` hears of each batch's
/// pages. Returns the pages written, once every one of them is in place.
pub fn restore_pages(
    host: i32,
    mem: &File,
    rec: &ProcessRecord,
    objects: &HashMap<u64, Live>,
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
        let mut spare: Option<PageBatch> = None;
        loop {
            let mut batch = match spare.take().map(Ok).unwrap_or_else(|| free_rx.try_recv()) {
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
            if batch.object != 0 {
                let obj = objects.get(&batch.object).ok_or_else(|| {
                    EngineError::Incompatible(format!("pages of object {}, which was not made", batch.object))
                })?;
                for (run, data) in batch.chunks() {
                    obj.write(run.addr, data)?;
                }
                pages += n;
                progress(n);
                spare = Some(batch);
                continue;
            }
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
        mem.write_all_at(data, run.addr).map_err(EngineError::memory(host, run.addr, "write"))
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
