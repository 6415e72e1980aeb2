//! Freeze → seize every thread → thaw (design §4.1–2), and the reverse.
//!
//! On our kernel a frozen task stops at once on `PTRACE_INTERRUPT`, but an injected
//! syscall only runs once the cgroup is thawed; after the thaw every thread stays in its
//! ptrace stop. Signals are blocked in every thread while we work, so that no signal
//! delivery can interleave with injected calls; the masks are put back on release.
//! Dropping a [`Seized`] without releasing it puts every thread back as it was and
//! detaches: a failed dump leaves the source running as before. A process being built by
//! a restore is killed instead ([`Seized::kill_on_drop`]): nothing half-built runs.

use std::fs::File;
use std::time::Duration;

use migrate_cgroup::Cgroup;
use migrate_sys::ptrace::{StoppedTracee, Tracee};
use nix::sys::ptrace::Options;

use crate::error::{EngineError, read_proc};
use crate::inject::{Task, find_gadget, open_mem};

const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every thread of one process, stopped under ptrace.
#[derive(Debug)]
pub struct Seized {
    /// The main thread first.
    pub tasks: Vec<Task>,
    /// The signal masks the threads had, in `tasks` order.
    pub masks: Vec<u64>,
    pub mem: File,
    /// A `syscall` instruction in the process's vDSO.
    pub gadget: u64,
    released: bool,
    /// Dropped unreleased, the process is killed rather than put back.
    kill_on_drop: bool,
}

/// The thread ids of `pid`, main thread first.
pub fn thread_ids(pid: i32) -> Result<Vec<i32>, EngineError> {
    let dir = format!("/proc/{pid}/task");
    let mut tids: Vec<i32> = std::fs::read_dir(&dir)
        .map_err(crate::error::io_err("list", &dir))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_by_key(|&t| (t != pid, t));
    Ok(tids)
}

/// Stops every thread of every live process in `pids` (zombies, which have no threads,
/// get `None`). The cgroup must be frozen ([`freeze_settled`]): every thread is seized and
/// asked to stop while nothing can run or fork; the stops are collected after the thaw
/// (a frozen task reaches its ptrace stop before it returns to user space).
///
/// `journal` is given every thread's signal mask before any is blocked: an agent that
/// dies after the blocking leaves threads with every signal blocked, which only a record
/// of their masks made beforehand can undo ([`crate::journal`]).
pub fn seize_frozen(
    pids: &[i32],
    cgroup: &Cgroup,
    options: Options,
    journal: &mut BeforeBlock<'_>,
) -> Result<Vec<Option<Seized>>, EngineError> {
    let asked: Result<Vec<Option<Asked>>, EngineError> = pids
        .iter()
        .map(|&pid| if is_zombie(pid) { Ok(None) } else { ask_stop(pid, options).map(Some) })
        .collect();
    let thawed = cgroup.thaw(FREEZE_TIMEOUT);
    let mut seized = Vec::with_capacity(pids.len());
    for (&pid, threads) in pids.iter().zip(asked?) {
        let Some(threads) = threads else {
            seized.push(None);
            continue;
        };
        let mut tasks = Vec::with_capacity(threads.len());
        for (tid, t) in threads {
            tasks.push(Task::new(tid, t.stopped().map_err(EngineError::ptrace(tid, "seize"))?)?);
        }
        seized.push(Some(wrap(pid, tasks)?));
    }
    thawed?;
    journal(&seized)?;
    for s in seized.iter_mut().flatten() {
        s.block_signals()?;
    }
    Ok(seized)
}

/// What [`seize_frozen`] calls with every seized process, its masks read and none of its
/// signals blocked yet.
pub type BeforeBlock<'a> = dyn FnMut(&[Option<Seized>]) -> Result<(), EngineError> + 'a;

/// The threads of one process, seized and asked to stop: `(tid, tracee)`.
type Asked = Vec<(i32, Tracee)>;

fn ask_stop(pid: i32, options: Options) -> Result<Asked, EngineError> {
    let mut out = Vec::new();
    for tid in thread_ids(pid)? {
        let t = Tracee::seize(tid, options).map_err(EngineError::ptrace(tid, "seize"))?;
        t.request_stop().map_err(EngineError::ptrace(tid, "seize"))?;
        out.push((tid, t));
    }
    Ok(out)
}

/// Freezes the cgroup at a moment where no task waits in vfork: ptrace cannot stop a
/// vfork parent while its child is frozen or stopped, so such a moment is let pass.
pub fn freeze_settled(cgroup: &Cgroup) -> Result<(), EngineError> {
    for _ in 0..100 {
        cgroup.freeze(FREEZE_TIMEOUT)?;
        let in_vfork = cgroup.pids()?.iter().any(|&p| {
            thread_ids(p).unwrap_or_default().iter().any(|t| {
                std::fs::read_to_string(format!("/proc/{p}/task/{t}/stack"))
                    .is_ok_and(|w| w.contains("vfork"))
            })
        });
        if !in_vfork {
            return Ok(());
        }
        // A vfork ends when its child execs or exits: let it run a moment.
        cgroup.thaw(FREEZE_TIMEOUT)?;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Err(EngineError::Unsupported(
        "a process of the container stays in vfork (waiting for its child to exec): try again".into(),
    ))
}

/// Whether `pid` is a zombie (state `Z` in `/proc/PID/stat`).
pub fn is_zombie(pid: i32) -> bool {
    crate::procfs::read_stat(pid).is_ok_and(|s| s.state == 'Z')
}

/// Wraps already stopped tasks of one process (e.g. a restore stub) and blocks their
/// signals.
pub fn take(pid: i32, tasks: Vec<Task>) -> Result<Seized, EngineError> {
    let mut seized = wrap(pid, tasks)?;
    seized.block_signals()?;
    Ok(seized)
}

/// Wraps already stopped tasks of one process and reads their signal masks; their
/// signals are not blocked yet.
fn wrap(pid: i32, tasks: Vec<Task>) -> Result<Seized, EngineError> {
    let mem = open_mem(pid)?;
    let vdso = vdso_range(pid)?.ok_or_else(|| {
        EngineError::Unsupported(format!("pid {pid} has no [vdso]: cannot inject syscalls"))
    })?;
    let gadget = find_gadget(&mem, pid, vdso)?;
    let mut seized = Seized { tasks, masks: Vec::new(), mem, gadget, released: false, kill_on_drop: false };
    for t in &seized.tasks {
        let mask = t.tracee.sigmask().map_err(EngineError::ptrace(t.tid, "read the signal mask"))?;
        seized.masks.push(mask);
    }
    Ok(seized)
}

/// The `[vdso]` mapping of `pid`.
pub fn vdso_range(pid: i32) -> Result<Option<(u64, u64)>, EngineError> {
    let maps = read_proc(pid, "maps")?;
    Ok(maps.lines().find(|l| l.ends_with("[vdso]")).and_then(|l| {
        let (s, e) = l.split_whitespace().next()?.split_once('-')?;
        Some((u64::from_str_radix(s, 16).ok()?, u64::from_str_radix(e, 16).ok()?))
    }))
}

impl Seized {
    pub fn main(&mut self) -> &mut Task {
        &mut self.tasks[0]
    }

    /// A process a restore builds: if it is dropped before the restore lets it go, it is
    /// killed while still stopped, never put back to run half-built.
    pub fn kill_on_drop(mut self) -> Self {
        self.kill_on_drop = true;
        self
    }

    /// Blocks every signal in every thread (their masks were read by [`wrap`]).
    fn block_signals(&mut self) -> Result<(), EngineError> {
        for t in &self.tasks {
            t.tracee.set_sigmask(!0).map_err(EngineError::ptrace(t.tid, "block signals"))?;
        }
        Ok(())
    }

    /// Puts every thread back (registers, signal mask) and detaches. A caller that wants
    /// them to stay stopped freezes their cgroup first: without a tracer, only the freezer
    /// holds them.
    pub fn release(mut self) -> Result<(), EngineError> {
        self.released = true;
        let tasks = std::mem::take(&mut self.tasks);
        let masks = std::mem::take(&mut self.masks);
        let mut first_err = None;
        for (i, t) in tasks.into_iter().enumerate() {
            if let Err(e) = put_back(t, masks.get(i).copied()) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Kills the process while its threads are still stopped (none of them runs again)
    /// and lets go of them.
    pub fn kill(mut self) -> Result<(), EngineError> {
        self.released = true;
        self.sigkill()
    }

    fn sigkill(&self) -> Result<(), EngineError> {
        let Some(main) = self.tasks.first() else { return Ok(()) };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(main.tid), nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| match e {
                nix::errno::Errno::ESRCH => {
                    EngineError::TargetDied { pid: main.tid, op: "SIGKILL it".into() }
                }
                e => EngineError::Proc {
                    pid: main.tid,
                    what: "the process".into(),
                    reason: format!("SIGKILL: {e}"),
                },
            })
    }

    /// Detaches every thread with the registers and masks the caller has set.
    pub fn detach_as_is(mut self) -> Result<(), EngineError> {
        self.released = true;
        for t in std::mem::take(&mut self.tasks) {
            t.tracee.detach().map_err(EngineError::ptrace(t.tid, "detach"))?;
        }
        Ok(())
    }

    /// Adds a thread created by an injected clone (already in its first stop).
    pub fn adopt(&mut self, tid: i32, tracee: StoppedTracee, mask: u64) -> Result<&mut Task, EngineError> {
        tracee.set_sigmask(!0).map_err(EngineError::ptrace(tid, "block signals"))?;
        self.tasks.push(Task::new(tid, tracee)?);
        self.masks.push(mask);
        let last = self.tasks.len() - 1;
        Ok(&mut self.tasks[last])
    }
}

fn put_back(t: Task, mask: Option<u64>) -> Result<(), EngineError> {
    t.tracee.set_regs(t.saved).map_err(EngineError::ptrace(t.tid, "restore registers"))?;
    if let Some(mask) = mask {
        t.tracee.set_sigmask(mask).map_err(EngineError::ptrace(t.tid, "restore the signal mask"))?;
    }
    t.tracee.detach().map_err(EngineError::ptrace(t.tid, "detach"))
}

impl Drop for Seized {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if self.kill_on_drop {
            if let Err(e) = self.sigkill() {
                tracing::warn!(error = %e, "killing a half-built process failed");
            }
            return;
        }
        let masks = std::mem::take(&mut self.masks);
        for (i, t) in std::mem::take(&mut self.tasks).into_iter().enumerate() {
            if let Err(e) = put_back(t, masks.get(i).copied()) {
                tracing::warn!(error = %e, "putting a thread back failed");
            }
        }
    }
}
