//! `restore`: rebuild a tree of processes inside a stub, from the outside, by ptrace.
//!
//! The stub is PID 1 of the container's fresh namespaces (started by its shim like any
//! container, so cgroup, network, hostname and mounts are already the container's). In
//! it, in order: its own rseq is unregistered; everything but its vDSO is unmapped; the
//! vDSO moves to the dumped address; a scratch page is mapped where no process of the
//! image has anything; the objects it owns are made; every VMA is mapped, memory written
//! (each batch checked before it is written), mm fields set; fds installed; sigactions
//! set. Then each child is forked from it by an injected `clone3` with `set_tid` (so it
//! has its pid, its parent, and inherits what is shared) and rebuilt the same way,
//! recursively (a child keeps the VMAs fork carried over); zombies are forked and made to
//! exit with their status. Sessions and groups whose leader has exited are made again by
//! short-lived helper tasks ([`crate::session`]). Then rlimits and credentials, the
//! process's other threads (`clone3(CLONE_THREAD, set_tid)`) and every thread's state;
//! registers last. Then the pidfds, whose processes all exist only now
//! ([`crate::objects::pidfd`]). Only when the whole tree is built are the threads
//! detached and run.
//! On any error each process being built is killed while still stopped, and the caller
//! removes the container: nothing half-built ever runs.
//!
//! Nor if the agent dies: the stub is seized with `PTRACE_O_EXITKILL`, and every task
//! the restore forks or clones from it inherits its tracer and its options (with
//! `PTRACE_O_TRACEFORK`/`TRACECLONE` the kernel copies `ptrace` flags to the new task), so
//! the death of the tracer SIGKILLs every task not yet let go. Resuming is all-or-nothing:
//! every fallible step (scratch pages, spare fds, signal masks) is done for every task
//! first; then the container's cgroup is frozen, each task detached (a detached task of a
//! freezing cgroup traps into the freezer before it reaches user space), and the cgroup
//! thawed: the one moment at which all of them start. A failure or a death before the
//! thaw leaves no task of the image having run an instruction.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::time::Instant;

use migrate_proto::frame::{Frame, RecordReader};
use migrate_proto::pages::PageBatch;
use migrate_proto::records::ProcessRecord;
use migrate_sys::ptrace::{StoppedTracee, Tracee};
use nix::sys::ptrace::Options;

use crate::error::EngineError;
use crate::failpoints::{self, Failpoint};
use crate::files::FdWorld;
use crate::image::{self, Image};
use crate::inject::{Remote, Scratch, Task};
use crate::seize::{self, Seized};
use crate::session::{Forks, Sessions};
use crate::{Progress, files, host, memory, mm, objects, process, thread};

/// What a restore did and how long it took.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RestoreReport {
    pub total_ms: u64,
    pub memory_ms: u64,
    pub pages: u64,
    /// Threads of every process.
    pub threads: usize,
    pub processes: usize,
    /// What could not be restored exactly (e.g. an rlimit above our hard limit).
    pub warnings: Vec<String>,
}

/// A process built and waiting for the others: released all together at the end.
struct Built<'a> {
    rec: &'a ProcessRecord,
    seized: Seized,
    scratch: Scratch,
}

/// Everything a restore carries from one process to the next.
struct Ctx<'a> {
    img: &'a Image,
    pages: PageFeed,
    world: FdWorld,
    /// Free in every process of the image: where the vDSO may be parked and the scratch
    /// page lives.
    park: u64,
    built: Vec<Built<'a>>,
    sessions: Sessions,
    warnings: Vec<String>,
    memory_ms: u64,
}

/// Builds the image's processes, PID 1 in the stub `stub` (its pid in our namespace),
/// and lets them all run; the caller keeps what it made on the filesystem ([`Made`]).
pub fn restore(
    img: &Image,
    stub: i32,
    cgroup: &migrate_cgroup::Cgroup,
    progress: &mut dyn FnMut(Progress),
) -> Result<(RestoreReport, Made), EngineError> {
    let t0 = Instant::now();
    let Plan { root, sessions, park } = plan(&img.processes)?;
    host::check_compatible(&img.manifest)?;
    crate::attrs::check_audit(stub, &img.processes)?;
    progress(Progress::Phase("seize"));
    // EXITKILL: see the module doc; inherited by every task forked or cloned from here.
    let options = Options::PTRACE_O_TRACECLONE | Options::PTRACE_O_TRACEFORK | Options::PTRACE_O_EXITKILL;
    let tracee = Tracee::seize(stub, options)
        .and_then(Tracee::interrupt)
        .map_err(EngineError::ptrace(stub, "seize the restore stub"))?;
    let mut s = seize::take(stub, vec![Task::new(stub, tracee)?])?.kill_on_drop();
    failpoints::hit(Failpoint::RestoreStubSeized)?;
    check_cpu(&mut s, root, stub)?;
    let mut world = FdWorld::default();
    for p in &img.processes {
        world.records.extend(p.pipes.iter().map(|r| (r.inode, r.clone())));
        world.unix.records.extend(p.fds.iter().filter_map(|f| match &f.kind {
            migrate_proto::records::FdKind::Unix(u) => Some((u.inode, u.clone())),
            _ => None,
        }));
    }
    // Before any process: one may map a file there.
    crate::objects::tmpfs::restore(stub, &root.tmpfs)?;
    check_cwds(stub, img)?;
    let mut ctx = Ctx {
        img,
        pages: PageFeed::open(img)?,
        world,
        park,
        built: Vec::new(),
        sessions,
        warnings: Vec::new(),
        memory_ms: 0,
    };
    // The IPC namespace before any process: they attach its segments.
    if let Some(ns) = &root.ipc {
        let segments = objects::sysv::restore(stub, ns, &root.objects)?;
        ctx.world.objects.extend(segments);
    }
    build(&mut ctx, root, s, stub, None, progress)?;
    ctx.pages.finish()?;
    if ctx.pages.pages != img.manifest.stats.pages_stored {
        return Err(EngineError::Incompatible(format!(
            "{} holds {} pages, the manifest counts {}",
            image::PAGES,
            ctx.pages.pages,
            img.manifest.stats.pages_stored
        )));
    }
    // pidfds once every process and thread they may refer to exists.
    let mut pidfds = objects::pidfd::Made::new();
    for p in &img.processes {
        let Some(b) = ctx.built.iter_mut().find(|b| b.rec.pid == p.pid) else { continue };
        let (gadget, scratch, host) = (b.seized.gadget, b.scratch, b.seized.tasks[0].tid);
        let mut remote =
            Remote { task: &mut b.seized.tasks[0], gadget, mem: &b.seized.mem, pid: host, scratch };
        objects::pidfd::restore(&mut remote, p.pid, &p.fds, &mut pidfds)?;
    }
    if let Some(ns) = &root.ipc {
        objects::sysv::finish(stub, ns)?;
    }
    // Creators of a group who had moved to another one move now that every member of
    // theirs is in it (see session.rs).
    for b in &mut ctx.built {
        if let Some(group) = ctx.sessions.moves(b.rec.pid) {
            let (gadget, pid) = (b.seized.gadget, b.rec.pid);
            b.seized.main().call(gadget, libc::SYS_setpgid, &[0, group as u64], || {
                format!("setpgid(0, {group}) in pid {pid}")
            })?;
        }
    }

    // Seals last: a write seal would refuse the contents, and mappings made after it.
    for o in ctx.world.objects.values() {
        o.finish()?;
    }
    failpoints::hit(Failpoint::RestoreBeforeResume)?;
    progress(Progress::Phase("resume"));
    let (threads, processes) = (ctx.built.iter().map(|b| b.seized.tasks.len()).sum(), img.processes.len());
    let spares = std::mem::take(&mut ctx.world.spares);
    // After every clone3(set_tid), which leave the counter where the stub left it.
    if let Some(b) = ctx.built.iter_mut().find(|b| b.rec.pid == 1) {
        let (gadget, scratch) = (b.seized.gadget, b.scratch);
        let mem =
            b.seized.mem.try_clone().map_err(crate::error::io_err("dup", format!("/proc/{stub}/mem")))?;
        let last = img.manifest.last_pid.max(img.processes.iter().map(|p| p.pid).max().unwrap_or(1));
        let mut remote = Remote { task: b.seized.main(), gadget, mem: &mem, pid: stub, scratch };
        ctx.warnings.extend(process::restore_last_pid(&mut remote, last)?);
    }
    for b in &mut ctx.built {
        // Last, once every helper has exited and every credential is set: see attrs.
        crate::attrs::restore(&mut b.seized, b.scratch, b.rec)?;
        let gadget = b.seized.gadget;
        for &(_, fd) in spares.iter().filter(|(p, _)| *p == b.rec.pid) {
            b.seized.main().call(gadget, libc::SYS_close, &[fd], || format!("close({fd})"))?;
        }
        b.scratch.unmap(b.seized.main(), gadget)?;
        // The masks too, while every task is still stopped: nothing fallible is left
        // for the moment they are let go.
        for (t, mask) in b.seized.tasks.iter().zip(&b.seized.masks) {
            t.tracee.set_sigmask(*mask).map_err(EngineError::ptrace(t.tid, "set the signal mask"))?;
        }
    }
    resume(ctx.built, cgroup)?;
    ctx.warnings.iter().for_each(|w| tracing::warn!("{w}"));
    let report = RestoreReport {
        total_ms: t0.elapsed().as_millis() as u64,
        memory_ms: ctx.memory_ms,
        pages: ctx.pages.pages,
        threads,
        processes,
        warnings: ctx.warnings,
    };
    Ok((report, Made(std::mem::take(&mut ctx.world.created))))
}

/// What a restore made on the host's filesystem (FIFOs, re-created deleted files),
/// removed on drop unless kept. Everything runs once the restore returns, but the
/// caller keeps it only once it has recorded the container as restored: a failure to
/// record it still removes them with the container.
///
/// Known gap: an agent that dies between the resume and that record leaves the files
/// behind; the restarted agent removes the container's remains, not them (their names
/// are not in the record).
#[derive(Debug)]
#[must_use = "dropped, it removes what the restore made"]
pub struct Made(crate::hostfs::Created);

impl Made {
    /// The restore is over for good: what it made stays.
    pub fn keep(mut self) {
        self.0.keep();
    }
}

/// What a restore decides from the image's records alone, before it touches anything.
struct Plan<'a> {
    root: &'a ProcessRecord,
    sessions: Sessions,
    /// See [`Ctx::park`].
    park: u64,
}

/// The checks a restore makes on the records alone, after `validate_tree`: a live PID 1,
/// sessions and groups it can rebuild, room for the scratch page. Pure (no process is
/// touched), so that the fuzzer (`migrate-proto/fuzz`, target `tree`) runs exactly them.
pub fn check_records(processes: &[ProcessRecord]) -> Result<(), EngineError> {
    plan(processes).map(drop)
}

fn plan(processes: &[ProcessRecord]) -> Result<Plan<'_>, EngineError> {
    let root = processes
        .iter()
        .find(|p| p.pid == 1)
        .ok_or_else(|| EngineError::Incompatible("the image has no PID 1".into()))?;
    if root.zombie.is_some() {
        return Err(EngineError::Incompatible("the image's PID 1 is a zombie".into()));
    }
    let sessions = Sessions::check(processes)?;
    let all_vmas: Vec<_> = processes.iter().flat_map(|p| p.vmas.iter().cloned()).collect();
    let park = mm::find_gap(&all_vmas, 32 << 20)
        .ok_or_else(|| EngineError::Incompatible("no free address range for the scratch page".into()))?;
    Ok(Plan { root, sessions, park })
}

/// Every process's working directory must be there (in the container's view: the tmpfs
/// mounts are back by now), before anything is built rather than when a process is
/// almost done.
fn check_cwds(stub: i32, img: &Image) -> Result<(), EngineError> {
    let root = std::path::PathBuf::from(format!("/proc/{stub}/root"));
    for p in img.processes.iter().filter(|p| p.zombie.is_none()) {
        let at = root.join(p.cwd.trim_start_matches('/'));
        if !std::fs::metadata(&at).is_ok_and(|m| m.is_dir()) {
            return Err(EngineError::Incompatible(format!(
                "the working directory {} of PID {} ({}) no longer exists",
                p.cwd, p.pid, p.comm
            )));
        }
    }
    Ok(())
}

/// The image's xstate must fit this CPU (same features, same layout size).
fn check_cpu(s: &mut Seized, root: &ProcessRecord, stub: i32) -> Result<(), EngineError> {
    let here = s.main().tracee.xstate().map_err(EngineError::ptrace(stub, "read xstate"))?;
    let there = &root.threads[0].xstate;
    let want = host::xfeatures(there);
    if want & !host::xfeatures(&here) != 0 || here.len() != there.len() {
        return Err(EngineError::Incompatible(format!(
            "the image's CPU state (xfeatures {want:#x}, {} bytes) does not fit this CPU (xfeatures {:#x}, {} bytes)",
            there.len(),
            host::xfeatures(&here),
            here.len()
        )));
    }
    Ok(())
}

/// Builds `rec` in `s` (a stub, or a fresh fork of its parent `parent`), then its
/// children, then its threads.
fn build<'a>(
    ctx: &mut Ctx<'a>,
    rec: &'a ProcessRecord,
    mut s: Seized,
    host: i32,
    parent: Option<&ProcessRecord>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), EngineError> {
    progress(Progress::Phase("address space"));
    let mm_fields =
        rec.mm.as_ref().ok_or_else(|| EngineError::Incompatible(format!("pid {} has no mm", rec.pid)))?;
    let mut gadget = s.gadget;
    thread::forget_rseq(s.main(), gadget)?;
    // A child keeps what fork carried over unchanged from its parent: the pages it
    // shares copy-on-write, and shared mappings. A process adopted for its parent was
    // forked from another process's memory: it is rebuilt whole (the dump stored it so).
    let kept = parent.filter(|p| p.pid == rec.ppid).map(|p| mm::kept(&rec.vmas, &p.vmas)).unwrap_or_default();
    mm::clear_stub(s.main(), gadget, host, &kept)?;
    gadget = mm::move_vdso(s.main(), gadget, host, &rec.vmas, ctx.park)?;
    s.gadget = gadget;
    let scratch = Scratch::map(s.main(), gadget, Some(ctx.park + (16 << 20)))?;
    // A handle of its own: `remote` borrows all of `s`, through `s.main()`.
    let mem = s.mem.try_clone().map_err(crate::error::io_err("dup", format!("/proc/{host}/mem")))?;
    let mut remote = Remote { task: s.main(), gadget, mem: &mem, pid: host, scratch };
    // Spare fds above every fd of the image (see files::restore).
    let base = rec.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) as u64 + 48;
    // A System V segment was made with the IPC namespace.
    for o in
        rec.objects.iter().filter(|o| !matches!(o.kind, migrate_proto::records::ObjectKind::SysvShm { .. }))
    {
        let (anchor, live) = objects::shmem::create(&mut remote, rec.pid, o, base, &mut ctx.world.created)?;
        ctx.world.spares.push((rec.pid, anchor));
        ctx.world.objects.insert(o.id, live);
    }
    mm::map_vmas(&mut remote, &rec.vmas, &kept, &ctx.world, ctx.park)?;
    mm::drop_uninherited(remote.task, gadget, &kept, &rec.inherited)?;
    failpoints::hit(Failpoint::RestoreAddressSpace)?;

    progress(Progress::Phase("memory"));
    let t_mem = Instant::now();
    ctx.pages.write_for(rec, &mem, host, &ctx.world.objects, progress)?;
    ctx.memory_ms += t_mem.elapsed().as_millis() as u64;
    failpoints::hit(Failpoint::RestoreMidMemory)?;

    progress(Progress::Phase("state"));
    mm::set_mm(&mut remote, mm_fields)?;
    if let Some(parent) = parent {
        ctx.sessions.settle(&mut remote, rec, parent)?;
    }
    files::restore(&mut remote, rec.pid, &rec.fds, &mut ctx.world)?;
    failpoints::hit(Failpoint::RestoreFds)?;
    process::restore_sigactions(&mut remote, &rec.sigactions)?;

    let img = ctx.img;
    let children = ctx.sessions.built_by(rec.pid, &img.processes);
    let mut forks = Forks::new(rec, &children, &ctx.sessions);
    for child in children {
        let Some(child_host) = forks.fork(&mut remote, &mut ctx.sessions, child)? else {
            continue;
        };
        let tracee = StoppedTracee::adopt(child_host)
            .map_err(EngineError::ptrace(child_host, "take the new process"))?;
        match child.zombie {
            Some(status) => {
                // Put in its session and group while it can still run calls: a zombie
                // keeps them, and may be what keeps its group alive.
                let mut unborn = Unborn::new(Task::new(child_host, tracee)?);
                let zmem = crate::inject::open_mem(child_host)?;
                let mut zombie =
                    Remote { task: unborn.task()?, gadget, mem: &zmem, pid: child_host, scratch };
                ctx.sessions.settle(&mut zombie, child, rec)?;
                if child.ppid == rec.pid {
                    make_zombie(unborn, gadget, child_host, scratch, child, status)?
                } else {
                    forks.adopted_zombie(unborn, child, status)
                }
            }
            None => {
                let cs = seize::take(child_host, vec![Task::new(child_host, tracee)?])?.kill_on_drop();
                build(ctx, child, cs, child_host, Some(rec), progress)?;
                failpoints::hit(Failpoint::RestoreFirstChild)?;
            }
        }
    }
    forks.finish(remote.task, gadget, scratch)?;
    // Locks and seals once the children are forked (a child rebuilds its own), and
    // before the credentials: the locks were taken with the privilege of the time.
    mm::lock_and_verify(&mut remote, &rec.vmas, rec.mlockall)?;
    mm::seal(&mut remote, &rec.vmas)?;

    // Credentials after the children: they are forked with the stub's (root's), which
    // every step of building them needs, and each sets its own.
    crate::attrs::before_creds(&mut remote, rec)?;
    ctx.warnings.extend(process::restore_misc(&mut remote, rec)?);
    create_threads(&mut s, rec, gadget, &mem, host, scratch)?;
    failpoints::hit(Failpoint::RestoreThreads)?;
    // The main thread by field, not by `main()`: its mask is set beside it.
    let mut remote = Remote { task: &mut s.tasks[0], gadget, mem: &mem, pid: host, scratch };
    s.masks[0] = thread::restore(&mut remote, &rec.threads[0], rec.pid)?;
    for sig in &rec.shared_pending {
        let at = remote.write(0, &sig.raw)?;
        remote.call(libc::SYS_rt_sigqueueinfo, &[rec.pid as u64, sig.signo as u64, at], || {
            format!("rt_sigqueueinfo(signal {})", sig.signo)
        })?;
    }
    process::restore_itimers(&mut remote, &rec.itimers)?;
    // After the threads (a timer may signal one) and the children (they inherit
    // membarrier registrations, and must not get those made after they were forked).
    crate::timers::restore(&mut remote, rec)?;
    // From outside, as root: the threads may have dropped the privilege a priority needs.
    for (task, t) in s.tasks.iter().zip(&rec.threads) {
        crate::sched::restore(task.tid, &t.sched)?;
    }
    crate::sched::restore_oom(host, rec.oom_score_adj)?;
    crate::sched::restore_coredump_filter(host, rec.coredump_filter)?;
    ctx.built.push(Built { rec, seized: s, scratch });
    Ok(())
}

/// Forks a child with pid `pid` (in the container's namespace) from `remote.task`, the
/// main thread of `remote`; returns its pid in ours. The child is stopped at birth
/// (`PTRACE_O_TRACEFORK`).
pub(crate) fn fork(remote: &mut Remote<'_>, pid: i32) -> Result<i32, EngineError> {
    clone3(remote, pid, 0, libc::SIGCHLD as u64)
}

/// `clone3` with `set_tid = [tid]`, injected in `remote.task` (a thread of `remote`).
pub(crate) fn clone3(
    remote: &mut Remote<'_>,
    tid: i32,
    flags: u64,
    exit_signal: u64,
) -> Result<i32, EngineError> {
    let set_tid_at = remote.write(512, &(tid as u32).to_ne_bytes())?;
    // struct clone_args (linux/sched.h, CLONE_ARGS_SIZE_VER2 = 88 bytes): flags, pidfd,
    // child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size,
    // cgroup. The new task starts on the caller's stack, but it is stopped before it runs
    // and gets its own registers.
    let args = [flags, 0, 0, 0, exit_signal, 0, 0, 0, set_tid_at, 1, 0];
    let bytes: Vec<u8> = args.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let at = remote.write(0, &bytes)?;
    let mut created = None;
    let res = remote.syscall_cloning(libc::SYS_clone3, &[at, bytes.len() as u64], |t| created = Some(t))?;
    let got = res.map_err(|errno| EngineError::Injected {
        pid: remote.pid,
        call: format!("clone3(set_tid {tid})"),
        errno,
    })?;
    if got != tid as u64 {
        return Err(EngineError::Incompatible(format!("task {tid} was created as {got}")));
    }
    created.ok_or_else(|| EngineError::Incompatible(format!("no clone event for task {tid}")))
}

/// Makes a freshly forked child exit with `status`, so that it is a zombie of its parent
/// until the parent reaps it.
pub(crate) fn make_zombie(
    mut unborn: Unborn,
    gadget: u64,
    host: i32,
    scratch: Scratch,
    rec: &ProcessRecord,
    status: i32,
) -> Result<(), EngineError> {
    let (code, sig, pid_ns) = ((status >> 8) & 0xff, status & 0x7f, rec.pid);
    // Its own memory: the scratch page it inherited is a copy, not its parent's.
    let mem = &crate::inject::open_mem(host)?;
    let mut remote = Remote { task: unborn.task()?, gadget, mem, pid: host, scratch };
    // Its name is all `ps` still shows of it.
    let at = remote.path(0, &rec.comm)?;
    remote.call(libc::SYS_prctl, &[libc::PR_SET_NAME as u64, at], || {
        format!("prctl(PR_SET_NAME, {:?})", rec.comm)
    })?;
    let mut regs = remote.task.saved;
    regs.rip = gadget;
    regs.orig_rax = u64::MAX;
    if sig == 0 {
        regs.rax = libc::SYS_exit_group as u64;
        regs.rdi = code as u64;
    } else {
        // Killed by `sig`: its default action must run, and it must not be blocked (SIGKILL
        // cannot be either). No core file here: the process died at the source.
        if sig != libc::SIGKILL {
            let dfl = [0u8; 32];
            let at = remote.write(0, &dfl)?;
            remote
                .call(libc::SYS_rt_sigaction, &[sig as u64, at, 0, 8], || format!("rt_sigaction({sig})"))?;
        }
        let no_core = remote.write(0, &[0u8; 16])?;
        remote.call(libc::SYS_prlimit64, &[0, libc::RLIMIT_CORE as u64, no_core, 0], || {
            "prlimit64(RLIMIT_CORE, 0)".into()
        })?;
        remote
            .task
            .tracee
            .set_sigmask(!(1u64 << (sig - 1)))
            .map_err(EngineError::ptrace(host, "unblock the signal"))?;
        regs.rax = libc::SYS_tgkill as u64;
        regs.rdi = pid_ns as u64;
        regs.rsi = pid_ns as u64;
        regs.rdx = sig as u64;
    }
    let task = unborn.task()?;
    task.tracee.set_regs(regs).map_err(EngineError::ptrace(host, "set up the exit"))?;
    unborn.release()?.tracee.detach().map_err(EngineError::ptrace(host, "let the zombie exit"))
}

/// A forked process that is to end as a zombie of the image, held stopped until its
/// last call. Dropped before that (an error on the way) it is SIGKILLed while still
/// stopped: a bare [`Task`] would detach on drop and let it run half-built.
#[derive(Debug)]
pub(crate) struct Unborn(Option<Task>);

impl Unborn {
    pub(crate) fn new(task: Task) -> Unborn {
        Unborn(Some(task))
    }

    pub(crate) fn task(&mut self) -> Result<&mut Task, EngineError> {
        self.0.as_mut().ok_or_else(Unborn::gone)
    }

    /// Its task, to be let go by the caller (it is no longer killed on drop).
    fn release(&mut self) -> Result<Task, EngineError> {
        self.0.take().ok_or_else(Unborn::gone)
    }

    fn gone() -> EngineError {
        EngineError::Changed("a zombie being made was already let go".into())
    }
}

impl Drop for Unborn {
    fn drop(&mut self) {
        // Killed before its task drops and detaches it: it never returns to user space.
        if let Some(task) = &self.0
            && let Err(e) = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(task.tid),
                nix::sys::signal::Signal::SIGKILL,
            )
        {
            tracing::warn!(pid = task.tid, error = %e, "killing a half-built zombie failed");
        }
    }
}

/// Creates every thread but the main one with its tid, by `clone3(CLONE_THREAD, set_tid)`
/// injected in the main thread, and rebuilds its state.
fn create_threads(
    s: &mut Seized,
    rec: &ProcessRecord,
    gadget: u64,
    mem: &File,
    host: i32,
    scratch: Scratch,
) -> Result<(), EngineError> {
    for t in rec.threads.iter().skip(1) {
        let flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM) as u64;
        let host_tid =
            clone3(&mut Remote { task: s.main(), gadget, mem, pid: host, scratch }, t.tid, flags, 0)?;
        let tracee =
            StoppedTracee::adopt(host_tid).map_err(EngineError::ptrace(host_tid, "take the new thread"))?;
        // The new thread is rebuilt through itself, in the same process.
        let task = s.adopt(host_tid, tracee, 0)?;
        let mask = thread::restore(&mut Remote { task, gadget, mem, pid: host, scratch }, t, rec.pid)?;
        if let Some(m) = s.masks.last_mut() {
            *m = mask;
        }
    }
    Ok(())
}

/// Lets every built process run, all at once (see the module doc): frozen, detached one
/// by one, thawed. Until the thaw, an error kills them all where they stand: those still
/// traced by their guard, those let go by the caller's removal of the frozen cgroup.
fn resume(built: Vec<Built<'_>>, cgroup: &migrate_cgroup::Cgroup) -> Result<(), EngineError> {
    cgroup.freeze(std::time::Duration::from_secs(10))?;
    for (i, b) in built.into_iter().enumerate() {
        b.seized.detach_as_is()?;
        if i == 0 {
            failpoints::hit(Failpoint::RestoreMidResume)?;
        }
    }
    cgroup.thaw(std::time::Duration::from_secs(10))?;
    Ok(())
}

/// The page batches of `pages.img`, in the image's process order, handed out process by
/// process; each batch is checked against its process before it is written.
struct PageFeed {
    reader: RecordReader<BufReader<File>>,
    /// The manifest's entry for `pages.img`, checked once the whole file is read.
    sum: migrate_proto::manifest::FileSum,
    pending: Option<PageBatch>,
    total: u64,
    pages: u64,
}

impl PageFeed {
    fn open(img: &Image) -> Result<PageFeed, EngineError> {
        let sum = img.manifest.files.iter().find(|f| f.name == image::PAGES).cloned().ok_or_else(|| {
            EngineError::Incompatible(format!("the manifest does not list {}", image::PAGES))
        })?;
        Ok(PageFeed {
            reader: image::records(&img.dir, image::PAGES)?,
            sum,
            pending: None,
            total: img.manifest.stats.pages_stored.saturating_mul(memory::PAGE),
            pages: 0,
        })
    }

    fn next(&mut self) -> Result<Option<PageBatch>, EngineError> {
        if let Some(b) = self.pending.take() {
            return Ok(Some(b));
        }
        match self.reader.next().map_err(|source| EngineError::Image { file: image::PAGES.into(), source })? {
            Some(Frame::Pages(b)) => Ok(Some(b)),
            Some(Frame::Process(_)) => {
                Err(EngineError::Incompatible(format!("{} holds a record that is not pages", image::PAGES)))
            }
            None => Ok(None),
        }
    }

    /// Fills `batch` (its buffers reused) with the next batch if it belongs to `pid`;
    /// false when there is none, or it belongs to the next process (kept for it).
    fn next_for(&mut self, pid: i32, batch: &mut PageBatch) -> Result<bool, EngineError> {
        if let Some(b) = self.pending.take() {
            if b.pid != pid {
                self.pending = Some(b);
                return Ok(false);
            }
            *batch = b;
            return Ok(true);
        }
        match self
            .reader
            .next_into(batch)
            .map_err(|source| EngineError::Image { file: image::PAGES.into(), source })?
        {
            Some(migrate_proto::frame::Filled::Pages) if batch.pid == pid => Ok(true),
            Some(migrate_proto::frame::Filled::Pages) => {
                self.pending = Some(std::mem::take(batch));
                Ok(false)
            }
            Some(migrate_proto::frame::Filled::Process(_)) => {
                Err(EngineError::Incompatible(format!("{} holds a record that is not pages", image::PAGES)))
            }
            None => Ok(false),
        }
    }

    /// Writes the batches of `rec` (they come together, in the image's process order):
    /// read and checked here, written by worker threads ([`memory::restore_pages`]).
    fn write_for(
        &mut self,
        rec: &ProcessRecord,
        mem: &File,
        host: i32,
        objects: &HashMap<u64, objects::shmem::Live>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), EngineError> {
        let (total, mut done) = (self.total, self.pages);
        let written =
            memory::restore_pages(host, mem, rec, objects, &mut |b| self.next_for(rec.pid, b), &mut |n| {
                done += n;
                progress(Progress::Bytes { done: done * memory::PAGE, total })
            })?;
        self.pages += written;
        Ok(())
    }

    /// Every batch must have been written: one left over belongs to no process built.
    fn finish(&mut self) -> Result<(), EngineError> {
        match self.next()? {
            // Frames can each be sound and the file still wrong (reordered, swapped in
            // from another image): its digest decides, before anything resumes.
            None => self
                .sum
                .check(self.reader.digest())
                .map_err(|source| EngineError::Image { file: image::PAGES.into(), source }),
            Some(b) => Err(EngineError::Incompatible(format!(
                "{} holds pages of pid {} out of order, or of no process of the image",
                image::PAGES,
                b.pid
            ))),
        }
    }
}
