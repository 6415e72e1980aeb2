//! `checkpoint`: freeze, seize every thread of every process, collect, write the image,
//! release.
//!
//! The cgroup stays frozen from the freeze to the release, thawed only while a process
//! runs injected calls, and each stage is written down first in a journal
//! ([`crate::journal`]): an agent killed at any moment leaves the container frozen and
//! the means to put it back, which the next agent does at its start.

use std::path::PathBuf;
use std::time::Instant;

use migrate_cgroup::Cgroup;
use migrate_proto::manifest::{ContainerMeta, Manifest, Stats};
use migrate_proto::records::ProcessRecord;
use nix::sys::ptrace::Options;

use crate::error::{EngineError, Refusals};
use crate::failpoints::{self, Failpoint};
use crate::files::{self, ExternalPipe};
use crate::host;
use crate::image::{self, Writer};
use crate::inject::{Remote, Scratch};
use crate::journal::{Journal, Stage};
use crate::seize::Seized;
use crate::{Progress, memory, mm, process, seize, thread};

/// What to checkpoint.
#[derive(Debug)]
pub struct CheckpointRequest<'a> {
    /// PID 1 of the container, in our pid namespace.
    pub pid: i32,
    pub cgroup: &'a Cgroup,
    /// The container's stdio pipes to its shim.
    pub external: Vec<ExternalPipe>,
    pub container: ContainerMeta,
    pub dir: PathBuf,
    /// The container's stdout/stderr log: the image carries its tail ([`image::LOG_CAP`]).
    pub log: Option<PathBuf>,
    /// Let the container run on afterwards; otherwise its processes are killed (the caller
    /// removes what is left of it).
    pub leave_running: bool,
    /// Where to keep the journal that lets a restarted agent undo an interrupted
    /// checkpoint ([`crate::journal`]); removed when the checkpoint returns.
    pub journal: Option<PathBuf>,
}

/// What a checkpoint did and how long it took.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CheckpointReport {
    /// From the freeze until the tasks were released (or frozen for good).
    pub frozen_ms: u64,
    /// Checks before anything is frozen (processes, files, maps).
    #[serde(default)]
    pub precheck_ms: u64,
    /// Freezing the cgroup, until the kernel says it is frozen.
    #[serde(default)]
    pub freeze_ms: u64,
    /// Seizing every thread, and the thaw that follows (the tasks stay stopped).
    #[serde(default)]
    pub seize_ms: u64,
    pub collect_ms: u64,
    pub memory_ms: u64,
    /// Writing the process records and the manifest, after the memory.
    #[serde(default)]
    pub write_ms: u64,
    /// Letting go of the threads: put back (--leave-running) or killed.
    #[serde(default)]
    pub release_ms: u64,
    pub total_ms: u64,
    pub stats: Stats,
    /// Bytes in the image directory.
    pub image_bytes: u64,
    pub dir: PathBuf,
}

/// What [`precheck`] found, kept for the dump (the tree stays frozen in between).
#[derive(Debug)]
pub struct Prechecked {
    /// The processes of the container (host pids) in the order the restore builds them:
    /// PID 1 first, each parent before its children ([`crate::session::build_order`]).
    pub pids: Vec<i32>,
    /// What was read of each live process (`None` for a zombie), and the objects its
    /// VMAs map.
    live: Vec<Option<Live>>,
    objects: crate::objects::shmem::Registry,
    /// The IPC namespace, and the files its segments are read from.
    ipc: Option<(migrate_proto::records::IpcNamespace, crate::objects::sysv::Held)>,
}

/// What the precheck read of one live process, kept for the collect: the container
/// stays frozen in between, and each of these costs frozen time.
#[derive(Debug)]
struct Live {
    facts: process::ProcFacts,
    /// Its POSIX timers as `/proc/PID/timers` lists them.
    timers: Vec<crate::timers::Listed>,
    vmas: Vec<migrate_proto::records::Vma>,
}

/// Finds the container's processes and refuses what this version cannot restore.
///
/// Some refusals only injected calls can see, so they come later, from the collect (the
/// container still runs on, put back as it was): a POSIX timer whose last expiry overran
/// (`timer_getoverrun`), `PR_TIMER_CREATE_RESTORE_IDS` turned on ([`crate::timers`]), and
/// a record that would not pass the restore's validation (it holds what the injected
/// calls read).
pub fn precheck(pid: i32, cgroup: &Cgroup, external: &[ExternalPipe]) -> Result<Prechecked, EngineError> {
    let members = cgroup.pids()?;
    if !members.contains(&pid) {
        return Err(EngineError::Unsupported(format!("PID 1 ({pid}) is not in the container's cgroup")));
    }
    let levels = pid_levels(pid)?;
    // Every refusal, not only the first: see `Refusals`.
    let mut refusals = Refusals::default();
    let pids = build_order(tree_order(pid, &members)?, &mut refusals)?;
    for &p in &pids {
        refusals.gather(check_state(p, levels))?;
    }
    // System V ids and POSIX queue names mean something in one IPC namespace only, and
    // the restore puts every process in the container's.
    for p in crate::procfs::outside_ns(pid, &pids, "ipc")? {
        refusals.push(format!(
            "{} runs in an IPC namespace of its own, not the container's: not supported yet",
            crate::files::describe_process(p)
        ));
    }
    let mut objects = crate::objects::shmem::Registry::default();
    // Before the maps: attachments find their segment by inode.
    let ipc = refusals.gather(crate::objects::sysv::dump(pid, &mut objects))?;
    let mut live = Vec::with_capacity(pids.len());
    for (i, &p) in pids.iter().enumerate() {
        if seize::is_zombie(p) {
            live.push(None);
            continue;
        }
        let f = process::facts(p)?;
        let who = || crate::files::describe_process(p);
        if f.seccomp != 0 {
            refusals.push(format!("{} runs under seccomp (mode {}): not supported yet", who(), f.seccomp));
        }
        // A directory removed while it is the cwd: no path leads to it any more.
        if std::fs::metadata(format!("/proc/{p}/cwd"))
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::nlink(&m) == 0)
        {
            refusals.push(format!("{} has a deleted directory as its cwd ({}): not supported", who(), f.cwd));
        }
        let timers = refusals.gather(crate::timers::check(p))?;
        if f.root != "/" {
            refusals.push(format!("{} is chrooted to {}: not supported yet", who(), f.root));
        }
        // Read once, here: smaps costs ~12 ms per GiB mapped, all of it frozen time.
        let vmas = refusals.gather(mm::dump_vmas(p, i, &mut objects))?;
        // `None` only beside a refusal, which ends the precheck below.
        live.push(timers.zip(vmas).map(|(timers, vmas)| Live { facts: f, timers, vmas }));
    }
    files::check(&pids, external, &mut refusals)?;
    crate::attrs::check(&pids, &mut refusals)?;
    crate::mounts::check(&pids, &mut refusals)?;
    refusals.into_result()?;
    Ok(Prechecked { pids, live, objects, ipc })
}

/// The tree `pids` (PID 1 first) in the order the restore builds it, after the restore's
/// own check of its sessions and groups ([`crate::session::check`]): a tree the restore
/// would refuse is refused here, with the same words, while the container runs on.
/// Among the processes one process forks, group leaders come first
/// ([`crate::session::Ids::dump_rank`]).
fn build_order(pids: Vec<i32>, refusals: &mut Refusals) -> Result<Vec<i32>, EngineError> {
    let mut tree = Vec::with_capacity(pids.len());
    for (i, &p) in pids.iter().enumerate() {
        // The ids alone, which a zombie still tells.
        let f = process::zombie_facts(p)?;
        // PID 1's parent (the shim) is outside the container.
        let ppid = if i == 0 { 0 } else { f.ppid_ns };
        tree.push((p, crate::session::Ids::new(f.pid_ns, ppid, f.sid_ns, f.pgid_ns, seize::is_zombie(p))));
    }
    tree.sort_by_key(|(_, i)| i.dump_rank());
    let (pids, ids): (Vec<i32>, Vec<crate::session::Ids>) = tree.into_iter().unzip();
    if let Err(problem) = crate::session::check(&ids) {
        refusals.push(format!("its process tree could not be rebuilt: {problem}"));
        return Ok(pids);
    }
    Ok(crate::session::build_order(&ids).into_iter().map(|i| pids[i]).collect())
}

/// How many pid namespaces `pid` is in (the values of `NSpid`).
fn pid_levels(pid: i32) -> Result<usize, EngineError> {
    Ok(crate::procfs::read_status(pid)?.nspid.map_or(1, |v| v.len()))
}

/// Refuses a process this version cannot dump for what it is doing: stopped, traced, in
/// a pid namespace of its own, or with a main thread that exited while others run.
fn check_state(pid: i32, levels: usize) -> Result<(), EngineError> {
    let who = crate::files::describe_process(pid);
    let text = crate::error::read_proc(pid, "status")?;
    let status = crate::procfs::parse_status(&text).map_err(EngineError::proc(pid, "status"))?;
    let refuse = |what: String| Err(EngineError::Unsupported(format!("{who} {what}")));
    let tracer = status.tracerpid;
    if tracer != 0 {
        let by = crate::files::describe_process(tracer);
        return refuse(format!("is traced by {by}: a process has one tracer; stop that one first"));
    }
    match status.state.chars().next() {
        Some('T') => {
            return refuse(
                "is stopped (SIGSTOP or job control): stopped processes are not supported yet; continue it (SIGCONT) and checkpoint again".into(),
            );
        }
        Some('Z') if seize::thread_ids(pid).is_ok_and(|t| t.len() > 1) => {
            return refuse(
                "has exited its main thread while its other threads run: not supported yet".into(),
            );
        }
        _ => {}
    }
    let nspids = status.nspid.unwrap_or_default();
    if nspids.len() != levels {
        // Named as the container sees it, not as its own namespace does.
        let known = |p: Option<&i32>| p.map_or_else(|| "?".to_string(), i32::to_string);
        let outer = known(nspids.get(levels.saturating_sub(1)));
        let inner = known(nspids.last());
        return Err(EngineError::Unsupported(format!(
            "PID {outer} ({}, host pid {pid}) runs in a pid namespace of its own (as pid {inner}), nested in the container's: not supported yet",
            crate::procfs::status_field(&text, "Name").unwrap_or("")
        )));
    }
    Ok(())
}

/// The processes of the tree under `root`, depth first (each parent before its
/// children, each subtree together), to be put in the restore's order by
/// [`build_order`]. The tree is
/// read from `/proc/PID/task/TID/children`, which, unlike `cgroup.procs`, also lists
/// zombies; every live member of the cgroup must be in it.
fn tree_order(root: i32, members: &[i32]) -> Result<Vec<i32>, EngineError> {
    let children = |p: i32| -> Vec<i32> {
        let mut kids: Vec<i32> = crate::seize::thread_ids(p)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| std::fs::read_to_string(format!("/proc/{p}/task/{t}/children")).ok())
            .flat_map(|s| s.split_whitespace().filter_map(|c| c.parse().ok()).collect::<Vec<i32>>())
            .collect();
        kids.sort_unstable();
        kids
    };
    let mut order = Vec::with_capacity(members.len());
    let mut stack = vec![root];
    while let Some(cur) = stack.pop() {
        order.push(cur);
        // Pushed in reverse, so the lowest pid is built first.
        stack.extend(children(cur).into_iter().rev());
    }
    if let Some(&stray) = members.iter().find(|p| !order.contains(p)) {
        return Err(EngineError::Unsupported(format!(
            "{} is in the container's cgroup but not a descendant of its PID 1 (host pid {root}): a process `migrate exec` started? Let it end first",
            crate::files::describe_process(stray)
        )));
    }
    Ok(order)
}

/// Checkpoints the container's processes into `req.dir`.
pub fn checkpoint(
    req: CheckpointRequest<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<CheckpointReport, EngineError> {
    let t0 = Instant::now();
    image::prepare_dir(&req.dir)?;
    // Dropped last: once the guards below have put the container back, or it is gone,
    // there is nothing left to undo.
    let mut journal =
        JournalGuard::start(req.journal.as_deref(), &req.dir, req.leave_running).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&req.dir);
        })?;
    // Until the image is complete, a failure removes the directory; a failure thaws the
    // container, after the seized threads were put back.
    let mut dir = DirGuard { dir: &req.dir, keep: false };
    let _frozen = ThawGuard(req.cgroup);
    // The tree is read and checked while frozen: nothing can fork or exit meanwhile. A
    // refusal thaws at once, so the container is frozen only for that look.
    progress(Progress::Phase("freeze"));
    let frozen_at = Instant::now();
    seize::freeze_settled(req.cgroup)?;
    failpoints::hit(Failpoint::CheckpointFrozen)?;
    let freeze_ms = frozen_at.elapsed().as_millis() as u64;
    let t_pre = Instant::now();
    let pre = precheck(req.pid, req.cgroup, &req.external)?;
    let precheck_ms = t_pre.elapsed().as_millis() as u64;
    let t_seize = Instant::now();
    // The seize thaws the cgroup; frozen again at once (see the module doc).
    // The masks are journaled before the seize blocks every signal.
    let seized = seize::seize_frozen(&pre.pids, req.cgroup, Options::empty(), &mut |seized| {
        journal.seized(seized)?;
        failpoints::hit(Failpoint::CheckpointMasksJournaled)
    });
    let mut seized = freeze(req.cgroup).and(seized)?;
    failpoints::hit(Failpoint::CheckpointSeized)?;
    let seize_ms = t_seize.elapsed().as_millis() as u64;
    // On an error the source goes on as before: each guard puts its threads back on drop.
    let written = host::container_clocks(req.pid)
        .and_then(|clocks| collect_and_write(&req, pre, &mut seized, &mut journal, clocks, progress))?;
    // Before the journal says so: an interruption here still undoes the checkpoint, the
    // image removed, as `recover` does for any stage before `Written`.
    failpoints::hit(Failpoint::CheckpointWritten)?;
    journal.written()?;
    dir.keep = true;
    progress(Progress::Phase(if req.leave_running { "resume" } else { "stop" }));
    let t_release = Instant::now();
    // Every process is let go (or killed) even if one of them fails.
    let mut failed = None;
    for (i, s) in seized.into_iter().flatten().enumerate() {
        // Killed where they stand, still stopped: nothing runs after the image was taken.
        let done = if req.leave_running { s.release() } else { s.kill() };
        if let Err(e) = done {
            failed.get_or_insert(e);
        }
        if i == 0
            && let Err(e) = failpoints::hit(Failpoint::CheckpointMidRelease)
        {
            failed.get_or_insert(e);
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let frozen_ms = frozen_at.elapsed().as_millis() as u64;
    let release_ms = t_release.elapsed().as_millis() as u64;
    Ok(CheckpointReport {
        frozen_ms,
        precheck_ms,
        freeze_ms,
        seize_ms,
        release_ms,
        total_ms: t0.elapsed().as_millis() as u64,
        ..written
    })
}

/// Freezes the container's cgroup.
fn freeze(cgroup: &Cgroup) -> Result<(), EngineError> {
    Ok(cgroup.freeze(std::time::Duration::from_secs(10))?)
}

/// The checkpoint's journal ([`crate::journal`]), if the caller keeps one: saved at each
/// stage, removed on drop.
struct JournalGuard<'a> {
    path: Option<&'a std::path::Path>,
    journal: Journal,
}

impl<'a> JournalGuard<'a> {
    fn start(
        path: Option<&'a std::path::Path>,
        dir: &std::path::Path,
        leave_running: bool,
    ) -> Result<Self, EngineError> {
        let journal = Journal {
            stage: Stage::Frozen,
            dir: dir.to_path_buf(),
            leave_running,
            masks: Vec::new(),
            injecting: None,
        };
        let guard = JournalGuard { path, journal };
        guard.save()?;
        Ok(guard)
    }

    fn save(&self) -> Result<(), EngineError> {
        self.path.map_or(Ok(()), |p| self.journal.save(p))
    }

    fn seized(&mut self, seized: &[Option<Seized>]) -> Result<(), EngineError> {
        self.journal.stage = Stage::Seized;
        self.journal.masks = seized
            .iter()
            .flatten()
            .flat_map(|s| s.tasks.iter().map(|t| t.tid).zip(s.masks.iter().copied()))
            .collect();
        self.save()
    }

    /// `pid` runs injected calls (thawed), or none does.
    fn injecting(&mut self, pid: Option<i32>) -> Result<(), EngineError> {
        self.journal.injecting = pid;
        self.save()
    }

    fn written(&mut self) -> Result<(), EngineError> {
        self.journal.stage = Stage::Written;
        self.save()
    }
}

impl Drop for JournalGuard<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.path
            && let Err(e) = crate::journal::remove(p)
        {
            tracing::warn!(error = %migrate_sys::error_chain(&e), "removing the checkpoint's journal");
        }
    }
}

/// Removes a checkpoint's image directory on drop, unless the image was completed.
struct DirGuard<'a> {
    dir: &'a std::path::Path,
    keep: bool,
}

impl Drop for DirGuard<'_> {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(self.dir);
        }
    }
}

/// Thaws the container on drop.
struct ThawGuard<'a>(&'a Cgroup);

impl Drop for ThawGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.thaw(std::time::Duration::from_secs(10)) {
            tracing::warn!(error = %migrate_sys::error_chain(&e), "thawing the container after a checkpoint");
        }
    }
}

/// What injected calls collect from one process.
struct Injected {
    threads: Vec<migrate_proto::records::ThreadRecord>,
    sigactions: Vec<migrate_proto::records::SigAction>,
    itimers: [migrate_proto::records::ITimer; 3],
    brk: u64,
    shared_pending: Vec<migrate_proto::records::SigInfo>,
    hostname: String,
    /// The pid namespace's `ns_last_pid`, read by PID 1 (`root`) only.
    last_pid: i32,
    attrs: migrate_proto::records::ProcessAttrs,
    securebits: u32,
    /// `mlockall` flags for mappings to come ([`mm::dump_mlockall`]).
    mlockall: u32,

    timers: Vec<migrate_proto::records::PosixTimer>,
    membarrier: u32,
}

fn inject_collect(
    pid: i32,
    seized: &mut Seized,
    root: bool,
    listed: &[crate::timers::Listed],
) -> Result<Injected, EngineError> {
    let gadget = seized.gadget;
    let tids_ns = thread_ids_in_ns(seized)?;
    // Low if it can be: the first VMA in smaps, which `dump_mlockall` then reads alone.
    let scratch = match Scratch::map(seized.main(), gadget, Some(mm::PROBE_AT)) {
        Err(EngineError::Injected { .. }) => Scratch::map(seized.main(), gadget, None)?,
        other => other?,
    };
    let collected = (|| {
        let mem = seized.mem.try_clone().map_err(crate::error::io_err("dup", format!("/proc/{pid}/mem")))?;
        let mut threads = Vec::new();
        for ((task, &mask), &tid_ns) in seized.tasks.iter_mut().zip(&seized.masks).zip(&tids_ns) {
            let mut t = thread::dump(&mut Remote { task, gadget, mem: &mem, pid, scratch }, mask)?;
            t.tid = tid_ns;
            threads.push(t);
        }
        let mut main = Remote { task: seized.main(), gadget, mem: &mem, pid, scratch };
        let sigactions = process::dump_sigactions(&mut main)?;
        let itimers = process::dump_itimers(&mut main)?;
        let brk = main.call(libc::SYS_brk, &[0], || "brk(0)".into())?;
        let shared_pending = thread::siginfos(
            main.task
                .tracee
                .pending_signals(true)
                .map_err(EngineError::ptrace(pid, "read pending signals"))?,
        );
        // struct utsname: six 65-byte fields; the nodename is the second, the domain name
        // the sixth.
        main.call(libc::SYS_uname, &[scratch.addr], || "uname".into())?;
        let uts = main.read(0, 6 * 65)?;
        let field = |i: usize| {
            let f = &uts[i * 65..(i + 1) * 65];
            String::from_utf8_lossy(&f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())]).into_owned()
        };
        let hostname = field(1);
        let last_pid = if root { process::dump_last_pid(&mut main)? } else { 0 };
        let (attrs, securebits) = crate::attrs::dump_process(&mut main, root.then(|| field(5)))?;
        let mlockall = mm::dump_mlockall(pid, &scratch)?;

        let host_ns: Vec<(i32, i32)> =
            seized.tasks.iter().map(|t| t.tid).zip(tids_ns.iter().copied()).collect();
        let mut main = Remote { task: seized.main(), gadget, mem: &mem, pid, scratch };
        let (timers, membarrier) = crate::timers::dump(&mut main, listed, &host_ns)?;
        Ok::<_, EngineError>(Injected {
            threads,
            sigactions,
            itimers,
            brk,
            shared_pending,
            hostname,
            last_pid,
            attrs,
            securebits,
            mlockall,

            timers,
            membarrier,
        })
    })();
    // The scratch page must be gone before the VMAs are read, so it never enters the image.
    let unmapped = scratch.unmap(seized.main(), gadget);
    match collected {
        Ok(injected) => unmapped.map(|()| injected),
        Err(e) => Err(e.with_cleanup(unmapped)),
    }
}

fn collect_and_write(
    req: &CheckpointRequest<'_>,
    pre: Prechecked,
    seized: &mut [Option<Seized>],
    journal: &mut JournalGuard<'_>,
    clocks: migrate_proto::manifest::Clocks,
    progress: &mut dyn FnMut(Progress),
) -> Result<CheckpointReport, EngineError> {
    progress(Progress::Phase("collect"));
    let t_collect = Instant::now();
    let Prechecked { pids, mut live, mut objects, ipc } = pre;
    // Held until the memory is written: the segments' contents are read through them.
    let (mut ipc, _held) = ipc.unzip();
    let mut records = Vec::with_capacity(pids.len());
    let mut hostname = req.container.hostname.clone();
    let mut last_pid = 0;
    for (i, (&pid, s)) in pids.iter().zip(seized.iter_mut()).enumerate() {
        let Some(s) = s else {
            let facts = process::zombie_facts(pid)?;
            records.push(zombie_record(pid, &facts)?);
            continue;
        };
        let Live { facts, timers, vmas } =
            live[i].take().ok_or_else(|| EngineError::Changed(format!("pid {pid} became a zombie")))?;
        // Injected calls run only in a thawed cgroup: thawed for them alone.
        journal.injecting(Some(pid))?;
        req.cgroup.thaw(std::time::Duration::from_secs(10))?;
        let inj = inject_collect(pid, s, i == 0, &timers);
        freeze(req.cgroup)?;
        journal.injecting(None)?;
        let inj = inj?;
        if i == 0 {
            failpoints::hit(Failpoint::CheckpointMidCollect)?;
        }
        if i == 0 {
            hostname = inj.hostname.clone();
            last_pid = inj.last_pid;
        }
        records.push(ProcessRecord {
            pid: facts.pid_ns,
            // PID 1's parent (the shim) is outside the container.
            ppid: if i == 0 { 0 } else { facts.ppid_ns },
            sid: facts.sid_ns,
            pgid: facts.pgid_ns,
            comm: facts.comm.clone(),
            threads: inj.threads,
            mm: Some(mm::dump_mm(pid, inj.brk)?),
            vmas,
            fds: Vec::new(),
            creds: migrate_proto::records::Creds { securebits: inj.securebits, ..facts.creds },
            rlimits: facts.rlimits,
            cwd: facts.cwd,
            root: facts.root,
            umask: facts.umask,
            sigactions: inj.sigactions,
            shared_pending: inj.shared_pending,
            itimers: inj.itimers,
            personality: facts.personality,
            pipes: Vec::new(),
            tmpfs: if i == 0 { crate::objects::tmpfs::dump(pid)? } else { Vec::new() },
            objects: Vec::new(),
            inherited: Vec::new(),
            oom_score_adj: crate::sched::dump_oom(pid)?,
            zombie: None,
            ipc: if i == 0 { ipc.take() } else { None },
            coredump_filter: crate::sched::dump_coredump_filter(pid)?,
            attrs: inj.attrs,
            mlockall: inj.mlockall,

            timers: inj.timers,
            membarrier: inj.membarrier,
        });
    }
    let live: Vec<(i32, usize)> =
        pids.iter().enumerate().filter(|(_, p)| !seize::is_zombie(**p)).map(|(i, &p)| (p, i)).collect();
    let (fds, pipes) = files::dump_all(&live, &req.external, &mut objects)?;
    for ((_, i), (f, p)) in live.iter().zip(fds.into_iter().zip(pipes)) {
        records[*i].fds = f;
        records[*i].pipes = p;
    }
    for found in &objects.found {
        records[found.owner].objects.push(found.record.clone());
    }
    // The restore's check of each record, before the memory is read rather than when the
    // record is written, and named as a refusal: the container runs on.
    for (r, &p) in records.iter().zip(&pids) {
        migrate_proto::validate_process(r).map_err(|e| {
            EngineError::Unsupported(format!(
                "{}: its record would not pass the restore's check: {}",
                files::describe_process(p),
                migrate_sys::error_chain(&e)
            ))
        })?;
    }
    failpoints::hit(Failpoint::CheckpointCollected)?;
    let collect_ms = t_collect.elapsed().as_millis() as u64;

    progress(Progress::Phase("memory"));
    let t_mem = Instant::now();
    let mut pages = Writer::create(&req.dir, image::PAGES)?;
    let mut mem_stats = memory::MemStats::default();
    // Each parent's pagemap, kept until its children are dumped (they come later).
    let mut pagemaps: std::collections::HashMap<i32, memory::Pagemaps> = Default::default();
    let ids: Vec<crate::session::Ids> = records.iter().map(crate::session::Ids::of).collect();
    // A process adopted for its parent is forked from another's memory in the restore:
    // it shares no page with its parent there, and stores them all.
    let builders = crate::session::builders(&ids);
    let builds = |r: &ProcessRecord, c: &ProcessRecord| builders.get(&c.pid) == Some(&r.pid);
    for (i, (&pid, s)) in pids.iter().zip(seized.iter()).enumerate() {
        let Some(s) = s else { continue };
        let owned: Vec<memory::ObjectSource<'_>> = objects
            .found
            .iter()
            // A deleted file with another link is reopened, not copied.
            .filter(|f| f.owner == i && f.record.link.is_none())
            .map(|f| memory::ObjectSource { id: f.record.id, path: &f.source, size: f.record.size })
            .collect();
        let rec = &records[i];
        let d = memory::dump(
            pid,
            rec.pid,
            &rec.vmas,
            &s.mem,
            &owned,
            pagemaps.get(&rec.ppid).filter(|_| builders.get(&rec.pid) == Some(&rec.ppid)),
            &mut pages,
            &mut |done, total| progress(Progress::Bytes { done, total }),
        )?;
        if records.iter().any(|c| c.ppid == rec.pid && builds(rec, c) && c.zombie.is_none()) {
            pagemaps.insert(rec.pid, d.pagemaps);
        }
        records[i].inherited = d.inherited;
        mem_stats.pages_total += d.stats.pages_total;
        mem_stats.pages_stored += d.stats.pages_stored;
        mem_stats.pages_zero += d.stats.pages_zero;
        if i == 0 {
            failpoints::hit(Failpoint::CheckpointMidMemory)?;
        }
    }
    drop(pagemaps);
    // Once, with the inherited pages known; each record is checked again as it is written.
    migrate_proto::validate_tree(&records)
        .map_err(|source| EngineError::Image { file: "(dump)".into(), source })?;
    let pages_sum = pages.finish()?;
    failpoints::hit(Failpoint::CheckpointMemory)?;
    let memory_ms = t_mem.elapsed().as_millis() as u64;
    let t_write = Instant::now();

    let mut procw = Writer::create(&req.dir, image::PROCESS)?;
    for r in &records {
        procw
            .inner()
            .process(r)
            .map_err(|source| EngineError::Image { file: image::PROCESS.into(), source })?;
    }
    let proc_sum = procw.finish()?;
    let mut files = vec![proc_sum.clone(), pages_sum.clone()];
    // While frozen, so the log ends where the memory was taken.
    let mut log_bytes = 0;
    if let Some(log) = &req.log {
        let sum = image::carry_log(&req.dir, log)?;
        log_bytes = sum.size;
        files.push(sum);
    }
    let stats = Stats {
        processes: records.len() as u32,
        threads: records.iter().map(|r| r.threads.len() as u32).sum(),
        vmas: records.iter().map(|r| r.vmas.len() as u32).sum(),
        pages_stored: mem_stats.pages_stored,
        pages_zero: mem_stats.pages_zero,
        pages_total: mem_stats.pages_total,
        bytes_raw: mem_stats.pages_stored * memory::PAGE,
        bytes_stored: pages_sum.size,
    };
    let xstate = records.iter().find_map(|r| r.threads.first()).map(|t| t.xstate.as_slice()).unwrap_or(&[]);
    let manifest = Manifest {
        format_version: migrate_proto::FORMAT_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        created_ms: host::now_ms(),
        kernel: host::kernel_id()?,
        cpu: host::cpu_id(xstate)?,
        clocks,
        last_pid,
        container: ContainerMeta { hostname, ..req.container.clone() },
        files,
        stats,
        parent: None,
        auth_tag: None,
    };
    let manifest_bytes = image::write_manifest(&req.dir, &manifest)?;
    Ok(CheckpointReport {
        frozen_ms: 0,
        precheck_ms: 0,
        freeze_ms: 0,
        seize_ms: 0,
        collect_ms,
        memory_ms,
        write_ms: t_write.elapsed().as_millis() as u64,
        release_ms: 0,
        total_ms: 0,
        stats,
        image_bytes: manifest_bytes + proc_sum.size + pages_sum.size + log_bytes,
        dir: req.dir.clone(),
    })
}

/// A zombie: only its ids and its wait status (`exit_code`, field 52 of `/proc/PID/stat`,
/// since Linux 3.5).
fn zombie_record(pid: i32, facts: &process::ProcFacts) -> Result<ProcessRecord, EngineError> {
    let status = crate::procfs::read_stat(pid)?
        .exit_code
        .ok_or_else(|| EngineError::proc(pid, "stat")("no exit code (field 52)".into()))?;
    Ok(ProcessRecord {
        pid: facts.pid_ns,
        ppid: facts.ppid_ns,
        sid: facts.sid_ns,
        pgid: facts.pgid_ns,
        comm: facts.comm.clone(),
        threads: Vec::new(),
        vmas: Vec::new(),
        mm: None,
        fds: Vec::new(),
        creds: facts.creds.clone(),
        rlimits: Vec::new(),
        cwd: "/".into(),
        root: "/".into(),
        umask: 0,
        sigactions: Vec::new(),
        shared_pending: Vec::new(),
        itimers: Default::default(),
        personality: 0,
        pipes: Vec::new(),
        tmpfs: Vec::new(),
        objects: Vec::new(),
        inherited: Vec::new(),
        oom_score_adj: 0,
        zombie: Some(status),
        ipc: None,
        // A zombie has no memory left to dump; the kernel's default.
        coredump_filter: 0x33,
        attrs: Default::default(),
        mlockall: 0,

        timers: Vec::new(),
        membarrier: 0,
    })
}

/// Each seized thread's id inside the container's pid namespace (`NSpid`, last value).
fn thread_ids_in_ns(seized: &Seized) -> Result<Vec<i32>, EngineError> {
    seized.tasks.iter().map(|t| crate::procfs::ns_pid(t.tid)).collect()
}
