//! Semantic checks of decoded records, run before anything live is built from them.
//!
//! Restoring an image runs its contents as root, and the restore engine takes records as
//! given: it maps VMAs where they say, opens the paths they name, installs fds at their
//! numbers. So every record passes here first (as Firecracker's `persist.rs` sanity-checks
//! device state before building devices): the [`crate::frame::RecordReader`] runs
//! [`validate_process`] on every PROCESS frame, the [`crate::frame::RecordWriter`] runs it
//! before writing one, and restore runs [`check_batch`] on each page batch against its
//! process. The checks are structural: they make a record safe and self-consistent to act
//! on (addresses in user space, no overlaps, ids in range, paths that cannot leave the
//! container's root), not a promise that the kernel will accept every value.

use std::collections::HashSet;

use crate::error::{Invalid, PathOwner, PathProblem, ProtoError, SigOwner, VmaProblem};
use crate::pages::PageBatch;
use crate::records::{
    FdKind, MmFields, ObjectKind, ProcessRecord, SigInfo, ThreadRecord, TmpfsKind, Vma, VmaBacking, anon,
};
use crate::{PAGE_SIZE, USER_END};

/// The character devices an fd may name: a container may simply open them again.
pub const DEVICES: [&str; 5] = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

/// The kernel's `PID_MAX_LIMIT` (2^22): no pid or tid is larger.
pub const PID_MAX: i32 = 1 << 22;
/// The most xstate a thread may carry (`NT_X86_XSTATE`; a few KiB on real CPUs).
pub const MAX_XSTATE: usize = 64 << 10;
/// fds are below this (`fs.nr_open`'s default ceiling).
pub const FD_LIMIT: i32 = 1 << 20;
/// The longest path accepted (`PATH_MAX`).
pub const PATH_MAX: usize = 4096;
/// The most auxv words (pairs × 2).
pub const MAX_AUXV: usize = 512;
/// rlimit resources are below `RLIM_NLIMITS` (16).
pub const RLIM_NLIMITS: u32 = 16;
/// The size of the kernel's `siginfo_t`.
pub const SIGINFO_SIZE: usize = 128;
/// Supplementary groups are at most `NGROUPS_MAX`.
pub const NGROUPS_MAX: usize = 65536;

const SIGKILL: i32 = 9;
const SIGSTOP: i32 = 19;
const SIGRTMAX: i32 = 64;

/// Checks a decoded process record; the error names the pid and what is wrong.
pub fn validate_process(record: &ProcessRecord) -> Result<(), ProtoError> {
    check_process(record).map_err(|problem| ProtoError::invalid(record.pid, problem))
}

/// Checks that a page batch belongs to `process` and that every run lies inside one of its
/// VMAs that holds dumped pages (anonymous, or a private file or object mapping), or, for
/// an object's batch, inside an object `process` owns. `process` should have passed
/// [`validate_process`] (its VMAs sorted).
pub fn check_batch(batch: &PageBatch, process: &ProcessRecord) -> Result<(), ProtoError> {
    check_batch_inner(batch, process).map_err(|problem| ProtoError::invalid(process.pid, problem))
}

fn check_batch_inner(batch: &PageBatch, process: &ProcessRecord) -> Result<(), Invalid> {
    if batch.pid != process.pid {
        return Err(Invalid::BatchPid { batch_pid: batch.pid });
    }
    if batch.object != 0 {
        let Some(obj) = process.objects.iter().find(|o| o.id == batch.object) else {
            return Err(Invalid::Field {
                field: "pages",
                problem: format!("a batch of object {}, which this process does not own", batch.object),
            });
        };
        // A linked file is not copied: its bytes are the file's own, not the image's.
        if obj.link.is_some() {
            return Err(Invalid::Field {
                field: "pages",
                problem: format!("a batch of object {}, a file the image does not carry", obj.id),
            });
        }
        // Runs are sorted: the last ends furthest. A file's last page may be partial.
        let end = batch.runs.last().and_then(|r| r.end());
        if end.is_none_or(|e| obj.size.checked_next_multiple_of(PAGE_SIZE).is_none_or(|room| e > room)) {
            return Err(Invalid::Field {
                field: "pages",
                problem: format!("a batch of object {} reaches beyond its {} bytes", obj.id, obj.size),
            });
        }
        return Ok(());
    }
    for run in &batch.runs {
        let outside = Invalid::RunOutsideVma { addr: run.addr, npages: run.npages };
        let Some(vma) = vma_holding(&process.vmas, run) else { return Err(outside) };
        let backing = match &vma.backing {
            VmaBacking::Anon
            | VmaBacking::File { shared: false, .. }
            | VmaBacking::Object { shared: false, .. } => continue,
            VmaBacking::File { shared: true, .. } => "shared file mapping",
            VmaBacking::Object { shared: true, .. } => "shared object mapping",
            VmaBacking::SysvShm { .. } => "System V shared memory",
            VmaBacking::Vdso => "[vdso]",
            VmaBacking::Vvar => "[vvar]",
            VmaBacking::VvarVclock => "[vvar_vclock]",
        };
        return Err(Invalid::RunNotDumpable {
            addr: run.addr,
            npages: run.npages,
            start: vma.start,
            end: vma.end,
            backing,
        });
    }
    Ok(())
}

/// The bits of `/proc/PID/coredump_filter` (MMF_DUMP_FILTER_BITS: anonymous private and
/// shared, file private and shared, ELF headers, huge pages private and shared, DAX
/// private and shared).
const COREDUMP_FILTER_BITS: u32 = 0x1ff;

pub(crate) fn check_process(p: &ProcessRecord) -> Result<(), Invalid> {
    check_id("pid", p.pid, 1)?;
    check_id("ppid", p.ppid, 0)?;
    check_id("sid", p.sid, 0)?;
    check_id("pgid", p.pgid, 0)?;
    if p.comm.len() > 64 {
        return Err(Invalid::Field {
            field: "comm",
            problem: format!("is {} bytes, more than 64", p.comm.len()),
        });
    }
    if !(-1000..=1000).contains(&p.oom_score_adj) {
        return Err(Invalid::Field {
            field: "oom_score_adj",
            problem: format!("{} is not within -1000..=1000", p.oom_score_adj),
        });
    }
    if p.coredump_filter & !COREDUMP_FILTER_BITS != 0 {
        return Err(Invalid::Field {
            field: "coredump_filter",
            problem: format!("{:#x} has bits beyond the nine the kernel knows", p.coredump_filter),
        });
    }
    if !crate::records::vma::check_mlockall(p.mlockall) {
        return Err(Invalid::Field {
            field: "mlockall",
            problem: format!("{:#x} is not MCL_FUTURE, with or without MCL_ONFAULT", p.mlockall),
        });
    }
    if let Some(status) = p.zombie {
        // The wait status of an exit: `code << 8`, or a signal (1..=64, maybe with the
        // core-dump bit 0x80) and no code.
        let (code, core_sig) = (status >> 8, status & 0xff);
        let exited = (0..=0xff).contains(&code) && core_sig == 0;
        let killed = code == 0 && (1..=SIGRTMAX).contains(&(core_sig & 0x7f));
        if !exited && !killed {
            return Err(Invalid::Field {
                field: "zombie",
                problem: format!("{status:#x} is not the wait status of an exit"),
            });
        }
        // A zombie is only an exit status waiting for its parent.
        if !p.threads.is_empty()
            || !p.vmas.is_empty()
            || !p.fds.is_empty()
            || p.mm.is_some()
            || !p.pipes.is_empty()
            || !p.objects.is_empty()
            || !p.inherited.is_empty()
            || !p.timers.is_empty()
            || p.membarrier != 0
        {
            return Err(Invalid::Field {
                field: "zombie",
                problem: "a zombie holds no threads, memory or fds".into(),
            });
        }
        return Ok(());
    }
    check_threads(p.pid, &p.threads)?;
    let tids: Vec<i32> = p.threads.iter().map(|t| t.tid).collect();
    crate::records::check_timers(&p.timers, &tids)?;
    crate::records::check_membarrier(p.membarrier)?;
    check_vmas(&p.vmas)?;
    match &p.mm {
        Some(mm) => check_mm(mm)?,
        None => return Err(Invalid::Field { field: "mm", problem: "missing for a live process".into() }),
    }
    check_fds(p)?;
    check_pipes(p)?;
    check_objects(p)?;
    check_tmpfs(p)?;
    match &p.ipc {
        Some(_) if p.pid != 1 => {
            return Err(Invalid::Field {
                field: "ipc",
                problem: "only PID 1 carries the IPC namespace".into(),
            });
        }
        Some(ns) => crate::records::check_ipc(ns, &p.objects)?,
        None if p.objects.iter().any(|o| matches!(o.kind, ObjectKind::SysvShm { .. })) => {
            return Err(Invalid::Field {
                field: "ipc",
                problem: "System V shared memory without a namespace".into(),
            });
        }
        None => {}
    }
    if p.creds.groups.len() > NGROUPS_MAX {
        return Err(Invalid::Field {
            field: "creds.groups",
            problem: format!("has {} groups, more than {NGROUPS_MAX}", p.creds.groups.len()),
        });
    }
    let mut resources = HashSet::new();
    for r in &p.rlimits {
        if r.resource >= RLIM_NLIMITS {
            return Err(Invalid::Rlimit {
                resource: r.resource,
                problem: "is not a resource (RLIM_NLIMITS is 16)",
            });
        }
        if !resources.insert(r.resource) {
            return Err(Invalid::Rlimit { resource: r.resource, problem: "is listed twice" });
        }
        if r.cur > r.max {
            return Err(Invalid::Rlimit {
                resource: r.resource,
                problem: "soft limit is above the hard limit",
            });
        }
    }
    check_path(PathOwner::Cwd, &p.cwd)?;
    check_path(PathOwner::Root, &p.root)?;
    if p.umask > 0o777 {
        return Err(Invalid::Field {
            field: "umask",
            problem: format!("{:#o} has bits beyond 0o777", p.umask),
        });
    }
    let mut signals = HashSet::new();
    for sa in &p.sigactions {
        if !(1..=SIGRTMAX).contains(&sa.signo) {
            return Err(Invalid::SigAction { signo: sa.signo, problem: "not a signal (1..=64)" });
        }
        if sa.signo == SIGKILL || sa.signo == SIGSTOP {
            return Err(Invalid::SigAction {
                signo: sa.signo,
                problem: "SIGKILL and SIGSTOP cannot be caught",
            });
        }
        if !signals.insert(sa.signo) {
            return Err(Invalid::SigAction { signo: sa.signo, problem: "is listed twice" });
        }
    }
    check_siginfos(SigOwner::Process, &p.shared_pending)?;
    crate::records::attrs::check_securebits(p.creds.securebits)?;
    crate::records::attrs::check_process(p.pid, &p.attrs)?;
    Ok(())
}

fn check_id(what: &'static str, value: i32, min: i32) -> Result<(), Invalid> {
    if (min..=PID_MAX).contains(&value) { Ok(()) } else { Err(Invalid::Id { what, value }) }
}

fn check_threads(pid: i32, threads: &[ThreadRecord]) -> Result<(), Invalid> {
    let Some(first) = threads.first() else { return Err(Invalid::NoThreads) };
    if first.tid != pid {
        return Err(Invalid::MainThreadNotFirst { tid: first.tid });
    }
    let mut tids = HashSet::with_capacity(threads.len());
    for t in threads {
        if !(1..=PID_MAX).contains(&t.tid) {
            return Err(Invalid::BadTid { tid: t.tid });
        }
        if !tids.insert(t.tid) {
            return Err(Invalid::DuplicateTid { tid: t.tid });
        }
        if t.xstate.len() > MAX_XSTATE {
            return Err(Invalid::XstateTooLarge {
                tid: t.tid,
                len: t.xstate.len() as u64,
                cap: MAX_XSTATE as u64,
            });
        }
        if t.comm.len() > 15 || t.comm.contains('\0') {
            return Err(Invalid::Field {
                field: "comm",
                problem: format!("thread {}: {:?} is not a task name", t.tid, t.comm),
            });
        }
        check_siginfos(SigOwner::Thread(t.tid), &t.pending)?;
        check_sched(t.tid, &t.sched)?;
        crate::records::attrs::check_thread(t.tid, &t.attrs)?;
    }
    Ok(())
}

/// The CPUs a mask may name (the kernel's own ceiling, `NR_CPUS`, is at most 8192).
const MAX_CPU: u32 = 8192;

/// A policy a restore sets with `sched_setscheduler` (OTHER, FIFO, RR, BATCH, IDLE, maybe
/// with RESET_ON_FORK), the priority that policy takes, a nice value, a sorted CPU list.
fn check_sched(tid: i32, s: &crate::records::Sched) -> Result<(), Invalid> {
    let bad =
        |problem: String| Err(Invalid::Field { field: "sched", problem: format!("thread {tid}: {problem}") });
    let realtime = match s.policy & !0x4000_0000 {
        1 | 2 => true,
        0 | 3 | 5 => false,
        other => return bad(format!("policy {other} is not one a restore sets")),
    };
    if realtime != (1..=99).contains(&s.priority) || (!realtime && s.priority != 0) {
        return bad(format!("priority {} does not go with policy {}", s.priority, s.policy));
    }
    if !(-20..=19).contains(&s.nice) {
        return bad(format!("nice {} is not a nice value", s.nice));
    }
    if s.cpus.windows(2).any(|w| w[0] >= w[1]) || s.cpus.iter().any(|&c| c >= MAX_CPU) {
        return bad("its CPUs are not a sorted set of CPU numbers".into());
    }
    Ok(())
}

fn check_siginfos(owner: SigOwner, infos: &[SigInfo]) -> Result<(), Invalid> {
    for info in infos {
        if !(1..=SIGRTMAX).contains(&info.signo) {
            return Err(Invalid::SigInfo { owner, signo: info.signo, problem: "is not a signal (1..=64)" });
        }
        if info.raw.len() != SIGINFO_SIZE {
            return Err(Invalid::SigInfo { owner, signo: info.signo, problem: "siginfo is not 128 bytes" });
        }
    }
    Ok(())
}

fn check_vmas(vmas: &[Vma]) -> Result<(), Invalid> {
    let mut prev: Option<&Vma> = None;
    let mut vdso: Option<u64> = None;
    let mut vvar: Option<u64> = None;
    let mut vclock: Option<u64> = None;
    for v in vmas {
        let bad = |problem| Invalid::Vma { start: v.start, end: v.end, problem };
        if v.start >= v.end {
            return Err(bad(VmaProblem::Empty));
        }
        if !v.start.is_multiple_of(PAGE_SIZE) || !v.end.is_multiple_of(PAGE_SIZE) {
            return Err(bad(VmaProblem::Unaligned));
        }
        if v.end > USER_END {
            return Err(bad(VmaProblem::OutsideUser));
        }
        if let Some(p) = prev {
            if v.start < p.start {
                return Err(bad(VmaProblem::Unsorted { start: p.start, end: p.end }));
            }
            if v.start < p.end {
                return Err(bad(VmaProblem::Overlaps { start: p.start, end: p.end }));
            }
        }
        prev = Some(v);
        if v.prot & !0b111 != 0 {
            return Err(bad(VmaProblem::BadProt(v.prot)));
        }
        let special = match &v.backing {
            VmaBacking::File { file, .. } => {
                if !v.offset.is_multiple_of(PAGE_SIZE) || v.offset.checked_add(v.end - v.start).is_none() {
                    return Err(bad(VmaProblem::BadOffset(v.offset)));
                }
                check_path(PathOwner::Vma { start: v.start, end: v.end }, &file.path)?;
                None
            }
            VmaBacking::Object { .. } | VmaBacking::SysvShm { .. } => {
                if !v.offset.is_multiple_of(PAGE_SIZE) || v.offset.checked_add(v.end - v.start).is_none() {
                    return Err(bad(VmaProblem::BadOffset(v.offset)));
                }
                None
            }
            VmaBacking::Anon => None,
            VmaBacking::Vdso => Some(("[vdso]", &mut vdso)),
            VmaBacking::Vvar => Some(("[vvar]", &mut vvar)),
            VmaBacking::VvarVclock => Some(("[vvar_vclock]", &mut vclock)),
        };
        if let Some((name, seen)) = special {
            if let Some(first) = *seen {
                return Err(bad(VmaProblem::DuplicateSpecial(name, first)));
            }
            *seen = Some(v.start);
        }
        if v.name.len() > PATH_MAX {
            return Err(bad(VmaProblem::NameTooLong(v.name.len())));
        }
        crate::records::vma::check(&v.advice, v.backing == VmaBacking::Anon, &v.name).map_err(bad)?;
    }
    Ok(())
}

fn check_mm(mm: &MmFields) -> Result<(), Invalid> {
    let ordered = [
        ("start_code", mm.start_code, "end_code", mm.end_code),
        ("start_data", mm.start_data, "end_data", mm.end_data),
        ("start_brk", mm.start_brk, "brk", mm.brk),
        ("arg_start", mm.arg_start, "arg_end", mm.arg_end),
        ("env_start", mm.env_start, "env_end", mm.env_end),
    ];
    for (low_name, low, high_name, high) in ordered {
        if low > high {
            return Err(Invalid::MmOrder { low_name, low, high_name, high });
        }
        // high ≥ low, so checking high covers both.
        if high > USER_END {
            return Err(Invalid::MmOutside { name: high_name, value: high });
        }
    }
    if mm.start_stack > USER_END {
        return Err(Invalid::MmOutside { name: "start_stack", value: mm.start_stack });
    }
    let n = mm.auxv.len();
    if !n.is_multiple_of(2) {
        return Err(Invalid::Auxv { problem: format!("has {n} words, not pairs") });
    }
    if n > MAX_AUXV {
        return Err(Invalid::Auxv { problem: format!("has {n} words, more than {MAX_AUXV}") });
    }
    if n > 0 && mm.auxv.last_chunk::<2>() != Some(&[0, 0]) {
        return Err(Invalid::Auxv { problem: "does not end with AT_NULL".into() });
    }
    check_path(PathOwner::Exe, &mm.exe.path)
}

fn check_fds(p: &ProcessRecord) -> Result<(), Invalid> {
    let mut fds = HashSet::with_capacity(p.fds.len());
    for f in &p.fds {
        if !(0..FD_LIMIT).contains(&f.fd) {
            return Err(Invalid::BadFd { fd: f.fd });
        }
        if !fds.insert(f.fd) {
            return Err(Invalid::DuplicateFd { fd: f.fd });
        }
        for l in &f.locks {
            if l.end.is_some_and(|e| e < l.start) || i64::try_from(l.end.unwrap_or(l.start)).is_err() {
                return Err(Invalid::Fd {
                    fd: f.fd,
                    problem: format!("lock range {}..{:?} is not a file range", l.start, l.end),
                });
            }
        }
        let owner = PathOwner::Fd(f.fd);
        match &f.kind {
            FdKind::File { file, pos } => {
                check_path(owner, &file.path)?;
                check_pos(f.fd, *pos)?;
            }
            FdKind::Dir { path, pos } => {
                check_path(owner, path)?;
                check_pos(f.fd, *pos)?;
            }
            // Only these: a restore opens the path, and another one (a FIFO) could block it.
            FdKind::Device { path } if DEVICES.contains(&path.as_str()) => {}
            FdKind::Device { path } => {
                return Err(Invalid::Fd {
                    fd: f.fd,
                    problem: format!(
                        "device {:?} is not one of {}",
                        crate::manifest::truncated(path),
                        DEVICES.join(", ")
                    ),
                });
            }
            FdKind::Object { pos, .. } => check_pos(f.fd, *pos)?,
            FdKind::Pipe { .. } => {}
            FdKind::EventFd(e) if e.count == u64::MAX => {
                return Err(Invalid::Fd { fd: f.fd, problem: "eventfd counter beyond its ceiling".into() });
            }
            FdKind::EventFd(_) => {}
            FdKind::TimerFd(t) => anon::check_timerfd(f.fd, t)?,
            FdKind::SignalFd(s) => anon::check_signalfd(f.fd, s)?,
            FdKind::Inotify(i) => anon::check_inotify(f.fd, i)?,
            FdKind::PidFd(p) => anon::check_pidfd(f.fd, p)?,
            FdKind::Epoll(e) => e.check(f.fd, f.file_id)?,
            FdKind::Inet(s) => s.check().map_err(|problem| Invalid::Fd { fd: f.fd, problem })?,
            FdKind::Mqueue { name } => crate::records::check_mqueue_fd(f.fd, name, p)?,
            FdKind::Unix(u) => {
                u.check().map_err(|problem| Invalid::Fd {
                    fd: f.fd,
                    problem: format!("unix socket: {problem}"),
                })?;
                if let Some(path) = u.path() {
                    check_path(owner, path)?;
                }
            }
            FdKind::External { name } => {
                if name.is_empty() || name.len() > 255 || name.contains('\0') {
                    return Err(Invalid::Fd {
                        fd: f.fd,
                        problem: "external name must be 1 to 255 bytes without NUL".into(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Pipes: at most 1 GiB of capacity (the kernel's own ceiling is far below), no more
/// bytes buffered than fit, each inode once; a FIFO's path is one the restore may open,
/// its mode permission bits only.
fn check_pipes(p: &ProcessRecord) -> Result<(), Invalid> {
    let mut seen = HashSet::with_capacity(p.pipes.len());
    for pipe in &p.pipes {
        let bad = |problem: String| Err(Invalid::Field { field: "pipes", problem });
        if !seen.insert(pipe.inode) {
            return bad(format!("pipe:[{}] is listed twice", pipe.inode));
        }
        if pipe.size == 0 || pipe.size > 1 << 30 {
            return bad(format!("pipe:[{}] has a capacity of {} bytes", pipe.inode, pipe.size));
        }
        if pipe.data.len() > pipe.size as usize {
            return bad(format!(
                "pipe:[{}] holds {} bytes, more than its capacity {}",
                pipe.inode,
                pipe.data.len(),
                pipe.size
            ));
        }
        if let Some(fifo) = &pipe.fifo {
            check_path(PathOwner::Fifo(pipe.inode), &fifo.path)?;
            if fifo.mode > 0o7777 {
                return bad(format!("the FIFO {}: mode {:o} is not a permission mode", fifo.path, fifo.mode));
            }
        }
    }
    Ok(())
}

/// The largest object accepted (1 TiB): the kernel's own files are far smaller here, and
/// a hostile size must not make a restore create a huge file.
pub const MAX_OBJECT: u64 = 1 << 40;

/// Objects: ids above 0 and listed once, sizes within [`MAX_OBJECT`], names and paths
/// that the restore may use.
fn check_objects(p: &ProcessRecord) -> Result<(), Invalid> {
    let mut seen = HashSet::with_capacity(p.objects.len());
    for o in &p.objects {
        let bad = |problem: String| Err(Invalid::Field { field: "objects", problem });
        if o.id == 0 || !seen.insert(o.id) {
            return bad(format!("object id {} is 0 or listed twice", o.id));
        }
        if o.size > MAX_OBJECT {
            return bad(format!("object {} claims {} bytes, more than {MAX_OBJECT}", o.id, o.size));
        }
        match (&o.kind, &o.meta) {
            (ObjectKind::Memfd { .. } | ObjectKind::Deleted { .. }, Some(m)) => {
                crate::records::attrs::check_meta(&format!("object {}", o.id), m)?
            }
            (ObjectKind::Memfd { .. } | ObjectKind::Deleted { .. }, None) => {}
            (_, Some(_)) => {
                return bad(format!("object {}: only a memfd or a deleted file has file attributes", o.id));
            }
            (_, None) => {}
        }
        match (&o.kind, &o.link) {
            (ObjectKind::Deleted { path, .. }, Some(link)) if o.meta.is_none() => {
                check_path(PathOwner::Object(o.id), link)?;
                // The checkpoint looks for the other name only in the deleted one's
                // directory: one elsewhere would have the restore hard-link any host file
                // to a name of the image's choosing.
                if link.rsplit_once('/').map(|l| l.0) != path.rsplit_once('/').map(|d| d.0) {
                    return bad(format!(
                        "object {}: its other name {link:?} is not in the directory of {path:?}",
                        o.id
                    ));
                }
            }
            (_, Some(_)) => {
                return bad(format!(
                    "object {}: only a deleted file without file attributes has a link",
                    o.id
                ));
            }
            (_, None) => {}
        }
        match &o.kind {
            ObjectKind::AnonShared => {}
            ObjectKind::SysvShm { .. } if p.pid != 1 => {
                return bad(format!("object {}: System V shared memory is PID 1's", o.id));
            }
            ObjectKind::SysvShm { .. } => {}
            ObjectKind::Memfd { name, seals } => {
                // memfd_create: at most 249 bytes of name; F_SEAL_* are the low 6 bits.
                if name.len() > 249 || name.contains('\0') || name.contains('/') {
                    return bad(format!("object {}: {:?} is not a memfd name", o.id, name));
                }
                if seals & !0x3f != 0 {
                    return bad(format!("object {}: seals {seals:#x} are not F_SEAL_* bits", o.id));
                }
            }
            ObjectKind::Deleted { path, mode, .. } => {
                check_path(PathOwner::Object(o.id), path)?;
                if *mode > 0o7777 {
                    return bad(format!("object {}: mode {mode:o} is not a permission mode", o.id));
                }
            }
        }
    }
    let mut prev_end = 0;
    for r in &p.inherited {
        let bad = || {
            Err(Invalid::Field {
                field: "inherited",
                problem: format!(
                    "run {:#x}+{} pages is unsorted, overlapping or outside a VMA",
                    r.addr, r.npages
                ),
            })
        };
        let Some(end) = r.end() else { return bad() };
        if !r.addr.is_multiple_of(PAGE_SIZE) || r.addr < prev_end || vma_holding(&p.vmas, r).is_none() {
            return bad();
        }
        prev_end = end;
    }
    Ok(())
}

/// The mounts whose contents an image may carry.
pub const TMPFS_MOUNTS: [&str; 2] = ["/dev/shm", "/run"];

/// tmpfs entries: only PID 1 carries them, each path absolute, inside one of
/// [`TMPFS_MOUNTS`], with no `..`, listed once.
fn check_tmpfs(p: &ProcessRecord) -> Result<(), Invalid> {
    if p.tmpfs.is_empty() {
        return Ok(());
    }
    let bad = |problem: String| Err(Invalid::Field { field: "tmpfs", problem });
    if p.pid != 1 {
        return bad(format!("pid {} carries tmpfs contents; only PID 1 may", p.pid));
    }
    let mut seen = HashSet::with_capacity(p.tmpfs.len());
    let mut dirs: HashSet<&str> = TMPFS_MOUNTS.into_iter().collect();
    for e in &p.tmpfs {
        check_path(PathOwner::Tmpfs, &e.path)?;
        if !TMPFS_MOUNTS.iter().any(|m| e.path.strip_prefix(m).is_some_and(|rest| rest.starts_with('/'))) {
            return bad(format!("{} is not inside {}", e.path, TMPFS_MOUNTS.join(" or ")));
        }
        if !seen.insert(e.path.as_str()) {
            return bad(format!("{} is listed twice", e.path));
        }
        // Made in a directory made just before (or a mount's root), never through a
        // symlink: one pointing at `/etc` would have the restore write on the host.
        let parent = e.path.rsplit_once('/').map_or("", |(dir, _)| dir);
        if !dirs.contains(parent) {
            return bad(format!("{}: its parent {parent} is not a directory listed before it", e.path));
        }
        if e.kind == TmpfsKind::Dir {
            dirs.insert(e.path.as_str());
        }
        if e.mode > 0o7777 {
            return bad(format!("{}: mode {:o} is not a permission mode", e.path, e.mode));
        }
    }
    Ok(())
}

fn check_pos(fd: i32, pos: u64) -> Result<(), Invalid> {
    // File positions are `loff_t`, signed.
    if i64::try_from(pos).is_err() {
        return Err(Invalid::Fd { fd, problem: format!("position {pos} is beyond the largest file offset") });
    }
    Ok(())
}

/// A path the restore may open or map: absolute, no NUL, no `..` component (so that, resolved
/// inside the container's root, it cannot climb out of it), at most [`PATH_MAX`] bytes.
pub(crate) fn check_path(owner: PathOwner, path: &str) -> Result<(), Invalid> {
    let problem = if path.len() > PATH_MAX {
        Some(PathProblem::TooLong(path.len()))
    } else if !path.starts_with('/') {
        Some(PathProblem::NotAbsolute)
    } else if path.contains('\0') {
        Some(PathProblem::Nul)
    } else if path.split('/').any(|c| c == "..") {
        Some(PathProblem::DotDot)
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => {
            let mut shown: String = path.chars().take(256).collect();
            if shown.len() < path.len() {
                shown.push('…');
            }
            Err(Invalid::Path { owner, path: shown, problem })
        }
    }
}

/// Checks a whole tree of processes, after each was checked alone: unique pids, one
/// root (pid 1, parent outside), every other parent in the image, no cycle; every pipe
/// an fd names has exactly one record; fds that share a description agree on its kind.
pub fn validate_tree(processes: &[ProcessRecord]) -> Result<(), ProtoError> {
    validate_tree_inner(processes).map_err(|problem| ProtoError::Tree { problem })
}

fn validate_tree_inner(processes: &[ProcessRecord]) -> Result<(), String> {
    use std::collections::HashMap;
    let mut parent_of = HashMap::with_capacity(processes.len());
    for p in processes {
        if parent_of.insert(p.pid, p.ppid).is_some() {
            return Err(format!("pid {} appears twice", p.pid));
        }
    }
    let roots: Vec<i32> =
        processes.iter().filter(|p| !parent_of.contains_key(&p.ppid)).map(|p| p.pid).collect();
    if roots != [1] {
        return Err(format!("the tree must have exactly one root, pid 1, but its roots are {roots:?}"));
    }
    // Walking up must reach the root within as many steps as there are processes; a pid
    // known to reach it ends the walk early, so that a long chain costs one pass.
    let mut reach_root: HashSet<i32> = HashSet::with_capacity(processes.len());
    for p in processes {
        let (mut cur, mut path) = (p.pid, Vec::new());
        while let Some(&up) = parent_of.get(&cur) {
            if reach_root.contains(&cur) {
                break;
            }
            path.push(cur);
            cur = up;
            if path.len() > processes.len() {
                return Err(format!("pid {} is in a cycle of parents", p.pid));
            }
        }
        reach_root.extend(path);
    }
    let mut pipes = HashSet::new();
    for p in processes {
        for pipe in &p.pipes {
            if !pipes.insert(pipe.inode) {
                return Err(format!("pipe:[{}] has two records", pipe.inode));
            }
        }
    }
    let mut objects = HashSet::new();
    for p in processes {
        for o in &p.objects {
            if !objects.insert(o.id) {
                return Err(format!("object {} has two records", o.id));
            }
        }
    }
    crate::records::anon::check_inotify_tree(processes)?;
    let by_pid: HashMap<i32, &ProcessRecord> = processes.iter().map(|p| (p.pid, p)).collect();
    let ipc_names = crate::records::ipc_names(processes);
    for p in processes {
        if let Some(id) = p.object_ids().find(|id| !objects.contains(id)) {
            return Err(format!("pid {} refers to object {id}, which has no record", p.pid));
        }
        crate::records::check_ipc_refs(p, &ipc_names)?;
        if let Some(r) = p.inherited.first() {
            // Binary searches: a hostile record may hold millions of runs and VMAs.
            let same = by_pid.get(&p.ppid).is_some_and(|parent| {
                p.inherited.iter().all(|r| {
                    vma_holding(&p.vmas, r).is_some_and(|v| {
                        let i = parent.vmas.partition_point(|w| w.start < v.start);
                        parent.vmas.get(i).is_some_and(|w| inheritable(w, v))
                    })
                })
            });
            if !same {
                return Err(format!(
                    "pid {} inherits pages (at {:#x}…) from its parent (pid {}), which has no such VMA",
                    p.pid, r.addr, p.ppid
                ));
            }
        }
    }
    let mut kinds: HashMap<u64, &FdKind> = HashMap::new();
    for p in processes {
        for f in &p.fds {
            if let FdKind::Pipe { inode, .. } = f.kind
                && !pipes.contains(&inode)
            {
                return Err(format!("pid {} fd {} is pipe:[{inode}], which has no record", p.pid, f.fd));
            }
            match kinds.get(&f.file_id) {
                Some(k) if *k != &f.kind => {
                    return Err(format!(
                        "pid {} fd {}: file {} is shared with an fd of another kind",
                        p.pid, f.fd, f.file_id
                    ));
                }
                _ => {
                    kinds.insert(f.file_id, &f.kind);
                }
            }
        }
    }
    crate::records::check_epoll_tree(processes)
}

/// The VMA of `vmas` (sorted, as [`validate_process`] requires) that holds all of `run`.
pub fn vma_holding<'a>(vmas: &'a [Vma], run: &crate::pages::PageRun) -> Option<&'a Vma> {
    let end = run.end()?;
    // The first VMA that ends above the run's start is the only one that can hold it.
    let vma = vmas.get(vmas.partition_point(|v| v.end <= run.addr))?;
    (run.npages > 0 && vma.start <= run.addr && end <= vma.end).then_some(vma)
}

/// Whether a child's VMA `child` is the parent's VMA `parent` carried over by fork: same
/// range, protection, backing and flags, and not one fork leaves out (`MADV_DONTFORK`).
/// A restore forks the child from its rebuilt parent and keeps such a VMA as it is.
pub fn inheritable(parent: &Vma, child: &Vma) -> bool {
    crate::records::vma::same_but_locks(parent, child)
        && !matches!(child.backing, VmaBacking::Vdso | VmaBacking::Vvar | VmaBacking::VvarVclock)
        && !child.advice.iter().any(|a| a == "dc")
}
