//! Scheduling state: each thread's policy, real-time priority, nice value and CPU
//! affinity, and the process's `oom_score_adj`; beside them the process's
//! `coredump_filter`, another `/proc` file the engine reads and writes from outside
//! (`%08lx` in hex; a write takes the low nine bits, kernel ≥ 2.6.23).
//!
//! Everything is read and set from outside, by the engine (root), on the host tids: no
//! injected call, and no need for the task's own privileges (a restored thread may
//! already have dropped them when its scheduling is set; raising a priority needs
//! CAP_SYS_NICE). `SCHED_DEADLINE` (runtime, deadline, period) is refused. An affinity
//! mask naming CPUs this host lacks cannot be given: the restore fails, naming them,
//! rather than run the thread elsewhere.

use migrate_proto::records::Sched;
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

use crate::error::{EngineError, io_err};

fn err(tid: i32, what: &str) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |e| EngineError::Proc { pid: tid, what: what.to_string(), reason: e.to_string() }
}

/// The scheduling of thread `tid` (host tid).
pub fn dump(tid: i32) -> Result<Sched, EngineError> {
    let (policy, priority) = migrate_sys::sched::scheduler(tid).map_err(err(tid, "its scheduling policy"))?;
    if policy & !libc::SCHED_RESET_ON_FORK == libc::SCHED_DEADLINE {
        return Err(EngineError::Unsupported(format!(
            "thread {tid} runs under SCHED_DEADLINE: not supported yet"
        )));
    }
    let nice = migrate_sys::sched::nice(tid).map_err(err(tid, "its nice value"))?;
    let set = sched_getaffinity(Pid::from_raw(tid)).map_err(|e| err(tid, "its CPU affinity")(e.into()))?;
    let cpus: Vec<u32> =
        (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).map(|c| c as u32).collect();
    // Every CPU of this host: the thread was never pinned, and must not be on a host
    // with more (or fail on one with fewer).
    let cpus = if online_cpus()?.iter().all(|c| cpus.contains(c)) { Vec::new() } else { cpus };
    Ok(Sched { policy, priority, nice, cpus })
}

/// The CPUs online on this host (`/sys/devices/system/cpu/online`: `0-3,8,10-11`).
fn online_cpus() -> Result<Vec<u32>, EngineError> {
    let path = "/sys/devices/system/cpu/online";
    let text = std::fs::read_to_string(path).map_err(io_err("read", path))?;
    let bad = || EngineError::Proc {
        pid: 0,
        what: path.into(),
        reason: format!("{:?} is not a CPU list", text.trim()),
    };
    let mut out = Vec::new();
    for part in text.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        out.extend(a..=b.min(a.saturating_add(65535)));
    }
    Ok(out)
}

/// Gives thread `tid` (host tid) the scheduling `s`, and checks the kernel took it all.
pub fn restore(tid: i32, s: &Sched) -> Result<(), EngineError> {
    let mut set = CpuSet::new();
    if s.cpus.is_empty() {
        // Unpinned: every CPU this host has (the kernel keeps the online ones).
        for c in 0..CpuSet::count() {
            let _ = set.set(c);
        }
    }
    for &c in &s.cpus {
        set.set(c as usize).map_err(|_| {
            EngineError::Incompatible(format!("thread {tid}: CPU {c} is beyond what a CPU mask holds here"))
        })?;
    }
    let pid = Pid::from_raw(tid);
    sched_setaffinity(pid, &set).map_err(|e| {
        EngineError::Incompatible(format!(
            "thread {tid} may run on CPUs {:?} only, which this host cannot give it: {e}",
            s.cpus
        ))
    })?;
    let now = sched_getaffinity(pid).map_err(|e| err(tid, "its CPU affinity")(e.into()))?;
    if let Some(&c) = s.cpus.iter().find(|&&c| !now.is_set(c as usize).unwrap_or(false)) {
        return Err(EngineError::Incompatible(format!(
            "thread {tid} may run on CPUs {:?}; CPU {c} is not online on this host",
            s.cpus
        )));
    }
    // The nice value first: a real-time thread's load weight (it counts again if the
    // thread goes back to SCHED_OTHER) is set from its nice when its policy changes,
    // while a nice given to a real-time thread only changes its static priority.
    migrate_sys::sched::set_nice(tid, s.nice).map_err(err(tid, "set its nice value"))?;
    migrate_sys::sched::set_scheduler(tid, s.policy, s.priority)
        .map_err(err(tid, "set its scheduling policy"))?;
    Ok(())
}

/// `/proc/PID/oom_score_adj` of process `pid` (host pid).
pub fn dump_oom(pid: i32) -> Result<i32, EngineError> {
    let text = crate::error::read_proc(pid, "oom_score_adj")?;
    text.trim()
        .parse()
        .map_err(|_| EngineError::proc(pid, "oom_score_adj")(format!("{text:?} is not a number")))
}

pub fn restore_oom(pid: i32, value: i32) -> Result<(), EngineError> {
    let path = format!("/proc/{pid}/oom_score_adj");
    std::fs::write(&path, value.to_string()).map_err(io_err("write", path))
}

/// `/proc/PID/coredump_filter` of process `pid` (host pid).
pub fn dump_coredump_filter(pid: i32) -> Result<u32, EngineError> {
    let text = crate::error::read_proc(pid, "coredump_filter")?;
    u32::from_str_radix(text.trim(), 16)
        .map_err(|_| EngineError::proc(pid, "coredump_filter")(format!("{text:?} is not a hex number")))
}

pub fn restore_coredump_filter(pid: i32, value: u32) -> Result<(), EngineError> {
    let path = format!("/proc/{pid}/coredump_filter");
    std::fs::write(&path, format!("{value:#x}")).map_err(io_err("write", path))
}
