//! Records of a process's POSIX timers (`timer_create`) and membarrier registrations,
//! with the checks [`crate::validate`] runs on them.
//!
//! Both belong to the process as a whole (the signal struct and the mm), not to an fd or
//! a thread: they are fields of [`super::ProcessRecord`].

use serde::{Deserialize, Serialize};

use crate::error::Invalid;

/// One POSIX timer, as `/proc/PID/timers` and an injected `timer_gettime` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    /// The kernel's timer id, which the program holds (`timer_t`, or inside glibc's
    /// `SIGEV_THREAD` bookkeeping): 0..=`i32::MAX`.
    pub id: i32,
    /// The clock as the program named it: `CLOCK_REALTIME` (0), `CLOCK_MONOTONIC` (1),
    /// `CLOCK_PROCESS_CPUTIME_ID` (2), `CLOCK_THREAD_CPUTIME_ID` (3), `CLOCK_BOOTTIME`
    /// (7), `CLOCK_TAI` (11), or a negative CPU clock (`clock_getcpuclockid`,
    /// `pthread_getcpuclockid`) of the process itself or one of its threads.
    pub clock: i32,
    pub notify: TimerNotify,
    /// `sigev_signo`: the signal sent at each expiry (kept, and shown, for
    /// [`TimerNotify::None`] too).
    pub signo: i32,
    /// `sigev_value`, handed to the handler in `si_value`.
    pub value: u64,
    /// Time left until the next expiry at the checkpoint; 0: disarmed.
    pub left_ns: u64,
    /// The period; 0: a one-shot timer.
    pub interval_ns: u64,
    /// Set with `TIMER_ABSTIME` on `CLOCK_REALTIME` or `CLOCK_TAI`: the next expiry on
    /// that clock, which it keeps (a relative one keeps its time left). `None` for a
    /// relative timer, or one whose kind could not be seen.
    pub abs_ns: Option<u64>,
}

/// How a timer tells its expiry (`sigev_notify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimerNotify {
    /// `SIGEV_NONE`: nothing; the program polls it with `timer_gettime`.
    None,
    /// `SIGEV_SIGNAL`: a signal to the process.
    Signal,
    /// `SIGEV_THREAD_ID`: a signal to one thread of the process, by its tid in the
    /// container (glibc's `SIGEV_THREAD` is this, aimed at its helper thread).
    Thread { tid: i32 },
}

/// The most timers a process may carry (the kernel has no ceiling but
/// `RLIMIT_SIGPENDING`; an image with more would only make the restore crawl).
pub const MAX_TIMERS: usize = 1 << 16;

/// The `MEMBARRIER_CMD_REGISTER_*` commands a process may have run, each the bit
/// `MEMBARRIER_CMD_GET_REGISTRATIONS` reports for it, with its name: the one list the
/// checkpoint, the restore, the validation and `inspect` go by.
pub const MEMBARRIER: [(u32, &str); 4] =
    [(4, "global-expedited"), (16, "private-expedited"), (64, "private-expedited-sync-core"), (256, "rseq")];

/// Every bit of [`MEMBARRIER`].
pub const MEMBARRIER_REGISTRATIONS: u32 =
    MEMBARRIER[0].0 | MEMBARRIER[1].0 | MEMBARRIER[2].0 | MEMBARRIER[3].0;

/// Why a timer on `clock` cannot be made again in a process of `threads` threads, if it
/// cannot. `own(p, thread)` says whether `p` (an id in the container) is the process
/// itself (`thread` false) or one of its threads. The one rule of the checkpoint, which
/// refuses such a timer, and of the validation of an image, which should hold none.
pub fn clock_refusal(clock: i32, threads: usize, own: impl Fn(i32, bool) -> bool) -> Option<&'static str> {
    const CALLING_THREAD: &str = "the calling thread's CPU clock, in a process of several threads: which thread made it (and whose CPU time it counts) shows nowhere";
    match clock {
        // REALTIME, MONOTONIC, PROCESS_CPUTIME_ID, BOOTTIME, TAI.
        0 | 1 | 2 | 7 | 11 => None,
        // THREAD_CPUTIME_ID: the creator's thread.
        3 if threads > 1 => Some(CALLING_THREAD),
        3 => None,
        // REALTIME_ALARM, BOOTTIME_ALARM.
        8 | 9 => Some("an alarm clock, which wakes the host from suspend: not supported yet"),
        c if c < 0 => match cpu_clock(c) {
            (_, _, 3) => Some("not a CPU clock"),
            (0, true, _) if threads > 1 => Some(CALLING_THREAD),
            (0, _, _) => None,
            (p, thread, _) if own(p, thread) => None,
            _ => Some("a CPU clock of another process: not supported yet"),
        },
        _ => Some("a clock a timer cannot be restored on"),
    }
}

/// The clock of a timer, named for a person.
pub fn clock_name(clock: i32) -> String {
    match clock {
        0 => "CLOCK_REALTIME".into(),
        1 => "CLOCK_MONOTONIC".into(),
        2 => "CLOCK_PROCESS_CPUTIME_ID".into(),
        3 => "CLOCK_THREAD_CPUTIME_ID".into(),
        7 => "CLOCK_BOOTTIME".into(),
        11 => "CLOCK_TAI".into(),
        c if c < 0 => {
            let (pid, thread, kind) = cpu_clock(c);
            let who = match (pid, thread) {
                (0, true) => "the creating thread's".to_string(),
                (0, false) => "its own process's".to_string(),
                (p, true) => format!("thread {p}'s"),
                (p, false) => format!("process {p}'s"),
            };
            let kind = ["user+system (PROF)", "user (VIRT)", "scheduler", "invalid"][kind as usize];
            format!("{who} {kind} CPU clock ({c})")
        }
        c => format!("clock {c}"),
    }
}

/// A negative clock id's parts: the pid or tid (0: the caller), whether it is a thread's
/// clock, and its kind (0 PROF, 1 VIRT, 2 SCHED). The kernel encodes them as
/// `~pid << 3 | thread << 2 | kind` (`MAKE_PROCESS_CPUCLOCK`, `MAKE_THREAD_CPUCLOCK`).
pub fn cpu_clock(clock: i32) -> (i32, bool, u32) {
    (!(clock >> 3), clock & 4 != 0, (clock & 3) as u32)
}

/// Names the registrations of a `MEMBARRIER_CMD_GET_REGISTRATIONS` mask.
pub fn membarrier_names(mask: u32) -> Vec<&'static str> {
    MEMBARRIER.into_iter().filter(|(bit, _)| mask & bit != 0).map(|(_, name)| name).collect()
}

fn bad(problem: String) -> Result<(), Invalid> {
    Err(Invalid::Field { field: "timers", problem })
}

/// A process's timers: few enough, each id once, clocks a restore can make, signals in
/// range, a `SIGEV_THREAD_ID` target among `tids` (the process's own threads).
pub(crate) fn check_timers(timers: &[PosixTimer], tids: &[i32]) -> Result<(), Invalid> {
    // Beyond this, a time (seconds) no longer fits the kernel's ktime.
    const MAX_NS: u64 = i64::MAX as u64;
    if timers.len() > MAX_TIMERS {
        return bad(format!("{} timers, more than {MAX_TIMERS}", timers.len()));
    }
    let mut ids = std::collections::HashSet::with_capacity(timers.len());
    for t in timers {
        if t.id < 0 || !ids.insert(t.id) {
            return bad(format!("timer id {} is negative or listed twice", t.id));
        }
        let own = |p, thread| if thread { tids.contains(&p) } else { tids.first() == Some(&p) };
        if let Some(why) = clock_refusal(t.clock, tids.len(), own) {
            return bad(format!("timer {}: {}, {why}", t.id, clock_name(t.clock)));
        }
        if t.notify != TimerNotify::None && !(1..=64).contains(&t.signo) {
            return bad(format!("timer {}: signal {} is not a signal (1..=64)", t.id, t.signo));
        }
        if let TimerNotify::Thread { tid } = t.notify
            && !tids.contains(&tid)
        {
            return bad(format!("timer {}: thread {tid} is not a thread of the process", t.id));
        }
        if t.abs_ns.is_some() && (!matches!(t.clock, 0 | 11) || t.left_ns == 0) {
            return bad(format!(
                "timer {}: absolute, but disarmed or on a clock other than REALTIME or TAI",
                t.id
            ));
        }
        if t.left_ns > MAX_NS || t.interval_ns > MAX_NS || t.abs_ns.is_some_and(|a| a > MAX_NS) {
            return bad(format!("timer {}: time beyond the kernel's range", t.id));
        }
    }
    Ok(())
}

pub(crate) fn check_membarrier(mask: u32) -> Result<(), Invalid> {
    if mask & !MEMBARRIER_REGISTRATIONS != 0 {
        return Err(Invalid::Field {
            field: "membarrier",
            problem: format!("{mask:#x} holds bits that are not registrations"),
        });
    }
    Ok(())
}
