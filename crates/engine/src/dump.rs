//! `checkpoint`: freeze, seize, collect, write the image, release.

use std::path::PathBuf;
use std::time::Instant;

use migrate_cgroup::Cgroup;
use migrate_proto::manifest::{ContainerMeta, Manifest, Stats};
use migrate_proto::records::ProcessRecord;
use nix::sys::ptrace::Options;

use crate::error::EngineError;
use crate::files::{self, ExternalPipe};
use crate::host;
use crate::image::{self, Writer};
use crate::inject::Scratch;
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
    /// Thaw the container afterwards instead of leaving it frozen for the caller to kill.
    pub leave_running: bool,
}

/// What a checkpoint did and how long it took.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CheckpointReport {
    /// From the freeze until the tasks were released (or frozen for good).
    pub frozen_ms: u64,
    pub collect_ms: u64,
    pub memory_ms: u64,
    pub total_ms: u64,
    pub stats: Stats,
    /// Bytes in the image directory.
    pub image_bytes: u64,
    pub dir: PathBuf,
}

/// Refuses what this version cannot checkpoint, before anything is frozen.
pub fn precheck(pid: i32, cgroup: &Cgroup, external: &[ExternalPipe]) -> Result<(), EngineError> {
    let pids = cgroup.pids()?;
    if pids != [pid] {
        let others: Vec<String> = pids.iter().filter(|&&p| p != pid).map(|p| p.to_string()).collect();
        return Err(EngineError::Unsupported(format!(
            "the container has {} processes (PID 1 is {pid}; also {}): process trees come in a later version",
            pids.len(),
            others.join(", ")
        )));
    }
    let f = process::facts(pid)?;
    if f.seccomp != 0 {
        return Err(EngineError::Unsupported(format!(
            "pid {pid} runs under seccomp (mode {}): not supported yet",
            f.seccomp
        )));
    }
    if f.root != "/" {
        return Err(EngineError::Unsupported(format!(
            "pid {pid} is chrooted to {}: not supported yet",
            f.root
        )));
    }
    files::dump(pid, external)?;
    mm::dump_vmas(pid)?;
    Ok(())
}

/// Checkpoints one process into `req.dir`.
pub fn checkpoint(
    req: CheckpointRequest<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<CheckpointReport, EngineError> {
    let t0 = Instant::now();
    precheck(req.pid, req.cgroup, &req.external)?;
    image::prepare_dir(&req.dir)?;
    progress(Progress::Phase("freeze"));
    let clocks = host::container_clocks(req.pid)?;
    let mut seized = seize::seize(req.pid, req.cgroup, Options::empty())?;
    let frozen_at = Instant::now();
    let result = collect_and_write(&req, &mut seized, clocks, progress);
    let (process, written) = match result {
        Ok(v) => v,
        Err(e) => {
            // The source goes on as before: threads are put back by the guard's drop.
            drop(seized);
            let _ = std::fs::remove_dir_all(&req.dir);
            return Err(e);
        }
    };
    progress(Progress::Phase(if req.leave_running { "resume" } else { "stop" }));
    seized.release(if req.leave_running { None } else { Some(req.cgroup) })?;
    let frozen_ms = frozen_at.elapsed().as_millis() as u64;
    let _ = process;
    Ok(CheckpointReport { frozen_ms, total_ms: t0.elapsed().as_millis() as u64, ..written })
}

fn collect_and_write(
    req: &CheckpointRequest<'_>,
    seized: &mut seize::Seized,
    clocks: migrate_proto::manifest::Clocks,
    progress: &mut dyn FnMut(Progress),
) -> Result<(ProcessRecord, CheckpointReport), EngineError> {
    progress(Progress::Phase("collect"));
    let t_collect = Instant::now();
    let pid = req.pid;
    let gadget = seized.gadget;
    let facts = process::facts(pid)?;
    let tids_ns = thread_ids_in_ns(pid, seized)?;
    let scratch = Scratch::map(seized.main(), gadget, None)?;
    let collected = (|| {
        let mem = seized.mem.try_clone().map_err(crate::error::io_err("dup", format!("/proc/{pid}/mem")))?;
        let mut threads = Vec::new();
        for ((task, &mask), &tid_ns) in seized.tasks.iter_mut().zip(&seized.masks).zip(&tids_ns) {
            let mut t = thread::dump(task, mask, gadget, &mem, pid, scratch)?;
            t.tid = tid_ns;
            threads.push(t);
        }
        let main = seized.main();
        let sigactions = process::dump_sigactions(main, gadget, &mem, pid, scratch)?;
        let itimers = process::dump_itimers(main, gadget, &mem, pid, scratch)?;
        let brk = main.call(gadget, libc::SYS_brk, &[0], || "brk(0)".into())?;
        let shared_pending = thread::siginfos(
            main.tracee.pending_signals(true).map_err(EngineError::ptrace(pid, "read pending signals"))?,
        );
        // struct utsname: six 65-byte fields; the nodename is the second.
        main.call(gadget, libc::SYS_uname, &[scratch.addr], || "uname".into())?;
        let uts = scratch.read(&mem, pid, 65, 65)?;
        let hostname = String::from_utf8_lossy(&uts[..uts.iter().position(|&b| b == 0).unwrap_or(uts.len())])
            .into_owned();
        Ok::<_, EngineError>((threads, sigactions, itimers, brk, shared_pending, hostname))
    })();
    // The scratch page must be gone before the VMAs are read, so it never enters the image.
    let unmapped = scratch.unmap(seized.main(), gadget);
    let (threads, sigactions, itimers, brk, shared_pending, hostname) = collected?;
    unmapped?;
    let vmas = mm::dump_vmas(pid)?;
    let record = ProcessRecord {
        pid: facts.pid_ns,
        // PID 1 of its namespace: its parent (the shim) is outside it.
        ppid: 0,
        sid: facts.sid_ns,
        pgid: facts.pgid_ns,
        comm: facts.comm.clone(),
        threads,
        mm: mm::dump_mm(pid, brk)?,
        vmas,
        fds: files::dump(pid, &req.external)?,
        creds: facts.creds,
        rlimits: facts.rlimits,
        cwd: facts.cwd,
        root: facts.root,
        umask: facts.umask,
        sigactions,
        shared_pending,
        itimers,
        personality: facts.personality,
    };
    migrate_proto::validate::validate_process(&record)
        .map_err(|source| EngineError::Image { file: "(dump)".into(), source })?;
    let collect_ms = t_collect.elapsed().as_millis() as u64;

    progress(Progress::Phase("memory"));
    let t_mem = Instant::now();
    let mut pages = Writer::create(&req.dir, image::PAGES)?;
    let mut sink = |b: &migrate_proto::pages::PageBatch| {
        pages.inner().pages(b).map_err(|source| EngineError::Image { file: image::PAGES.into(), source })
    };
    let mem_stats =
        memory::dump(pid, record.pid, &record.vmas, &seized.mem, &mut sink, &mut |done, total| {
            progress(Progress::Bytes { done, total })
        })?;
    let pages_sum = pages.finish()?;
    let memory_ms = t_mem.elapsed().as_millis() as u64;

    let mut procw = Writer::create(&req.dir, image::PROCESS)?;
    procw
        .inner()
        .process(&record)
        .map_err(|source| EngineError::Image { file: image::PROCESS.into(), source })?;
    let proc_sum = procw.finish()?;
    let stats = Stats {
        processes: 1,
        threads: record.threads.len() as u32,
        vmas: record.vmas.len() as u32,
        pages_stored: mem_stats.pages_stored,
        pages_zero: mem_stats.pages_zero,
        pages_total: mem_stats.pages_total,
        bytes_raw: mem_stats.pages_stored * memory::PAGE,
        bytes_stored: pages_sum.size,
    };
    let manifest = Manifest {
        format_version: migrate_proto::FORMAT_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        created_ms: host::now_ms(),
        kernel: host::kernel_id()?,
        cpu: host::cpu_id(record.threads.first().map(|t| t.xstate.as_slice()).unwrap_or(&[])),
        clocks,
        container: ContainerMeta { hostname, ..req.container.clone() },
        files: vec![proc_sum.clone(), pages_sum.clone()],
        stats,
        parent: None,
        auth_tag: None,
    };
    let manifest_bytes = image::write_manifest(&req.dir, &manifest)?;
    let report = CheckpointReport {
        frozen_ms: 0,
        collect_ms,
        memory_ms,
        total_ms: 0,
        stats,
        image_bytes: manifest_bytes + proc_sum.size + pages_sum.size,
        dir: req.dir.clone(),
    };
    Ok((record, report))
}

/// Each seized thread's id inside the container's pid namespace (`NSpid`, last value).
fn thread_ids_in_ns(pid: i32, seized: &seize::Seized) -> Result<Vec<i32>, EngineError> {
    seized
        .tasks
        .iter()
        .map(|t| {
            let status = crate::error::read_proc(pid, &format!("task/{}/status", t.tid))?;
            crate::procfs::ns_value(&status, "NSpid").map_err(EngineError::proc(t.tid, "status"))
        })
        .collect()
}
