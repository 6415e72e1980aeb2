//! A process's POSIX timers (`timer_create`) and its membarrier registrations: both
//! belong to the process as a whole (its signal struct, its mm), neither to an fd nor to
//! a thread, and nothing but the process itself can read or make them.
//!
//! **Timers.** `/proc/PID/timers` (Linux 3.10 on; the `procfs` crate has no reader for
//! it, hence [`parse`]) lists each timer as four lines:
//!
//! ```text
//! ID: 3
//! signal: 34/0000000000001234      sigev_signo / sigev_value, in hex
//! notify: signal/tid.4242          none|signal / pid|tid (SIGEV_THREAD_ID) . in /proc's pid namespace
//! ClockID: -6                      as the program named it (glibc makes CPU clocks negative)
//! ```
//!
//! It shows neither the time left nor the period: an injected `timer_gettime` (inside
//! the process, the only place its timer ids mean anything) tells those, and
//! `timer_getoverrun` the overrun count of the last expiry the program was told of. No
//! call sets an overrun count, so a timer with one is refused.
//!
//! Whether a `CLOCK_REALTIME` (or `CLOCK_TAI`) timer was set with `TIMER_ABSTIME` shows
//! only in where the kernel queues it: an absolute one on the realtime (TAI) hrtimer
//! base, expiring at a wall-clock time; a relative one on the monotonic base, which
//! clock changes do not move. `/proc/timer_list` lists every base's queued timers
//! (`posix_timer_fn`) with their expiry; an entry on the realtime base at exactly the
//! time `timer_gettime` reported, read between two readings of the clock around it,
//! is that timer, and it is restored absolute, at that wall-clock time (so a timer that
//! was due while the container was away fires at once). Every other timer is restored
//! relative, with its time left; so is an absolute one that is not queued at the
//! checkpoint (`SIGEV_NONE`, or its signal not yet taken): nothing tells it apart.
//!
//! A timer whose signal waits to be taken: its `SI_TIMER` siginfo (with the timer's id
//! and value) is among the pending signals the thread and process records carry, and
//! comes back as it was. A one-shot timer is disarmed once it fired (Linux 6.13 on:
//! `timer_gettime` reads 0 even while its signal waits), and is restored so; a periodic
//! one is armed with the time to its next expiry.
//!
//! Restore makes each timer again with its id: with `PR_TIMER_CREATE_RESTORE_IDS` on
//! (Linux 6.17 on), `timer_create` takes the wanted id from `*timerid` and fails with
//! `EBUSY` rather than hand out another, so a restore either gets every id or fails.
//! The prctl is turned off again before the process runs: a program's own later
//! `timer_create` would otherwise read its id from whatever its `timer_t` held. Timers
//! are made after the process's threads (a `SIGEV_THREAD_ID` target, or a thread's CPU
//! clock, must exist) and armed relative: `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` go on
//! in the container's time namespace from where they stood, CPU clocks count the CPU
//! time still to run. Timers are not inherited by `fork`, so a parent's never reach the
//! children forked from it.
//!
//! **membarrier.** The registrations (`MEMBARRIER_CMD_REGISTER_*`) live in the mm and
//! are not in `/proc`; an injected `MEMBARRIER_CMD_GET_REGISTRATIONS` (Linux 6.3 on)
//! reads them without side effects. They are inherited by `fork`, so they are made again
//! only after the process's children are forked: a child the parent forked before it
//! registered must not get them.

use migrate_proto::records::{
    MEMBARRIER, PosixTimer, ProcessRecord, TimerNotify, clock_name, clock_refusal, cpu_clock,
};

use linux_raw_sys::general::membarrier_cmd as mb;
use linux_raw_sys::prctl::{
    PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_GET, PR_TIMER_CREATE_RESTORE_IDS_OFF,
    PR_TIMER_CREATE_RESTORE_IDS_ON,
};

use crate::error::EngineError;
use crate::inject::Remote;
use crate::objects::timerfd::{container_now, itimerspec};

/// One timer as `/proc/PID/timers` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub id: i32,
    pub signo: i32,
    pub value: u64,
    /// `SIGEV_NONE`, not a signal.
    pub none: bool,
    /// `SIGEV_THREAD_ID`: `target` is a thread, not the process.
    pub thread: bool,
    /// The process or thread signalled, in the pid namespace of the `/proc` read.
    pub target: i32,
    pub clock: i32,
}

/// Parses `/proc/PID/timers`.
pub fn parse(text: &str) -> Result<Vec<Listed>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    while let Some(first) = lines.next() {
        let bad = |what: &str| format!("timer listing: {what} near {first:?}");
        let mut field = |key: &str| {
            let line = if key == "ID" { Some(first) } else { lines.next() };
            line.and_then(|l| l.strip_prefix(key)?.strip_prefix(':')).map(str::trim).ok_or_else(|| bad(key))
        };
        let id = field("ID")?.parse().map_err(|_| bad("ID"))?;
        let (signo, value) = field("signal")?.split_once('/').ok_or_else(|| bad("signal"))?;
        let notify = field("notify")?;
        let clock = field("ClockID")?.parse().map_err(|_| bad("ClockID"))?;
        let (kind, who) = notify.split_once('/').ok_or_else(|| bad("notify"))?;
        let (scope, target) = who.split_once('.').ok_or_else(|| bad("notify"))?;
        out.push(Listed {
            id,
            signo: signo.parse().map_err(|_| bad("signal"))?,
            value: u64::from_str_radix(value, 16).map_err(|_| bad("signal value"))?,
            none: match kind {
                "none" => true,
                "signal" => false,
                _ => return Err(bad("notify kind")),
            },
            thread: scope == "tid",
            target: target.parse().map_err(|_| bad("notify target"))?,
            clock,
        });
    }
    Ok(out)
}

/// The timers of `pid` (host pid), refused by name where a restore could not make them
/// again: an alarm or other clock a timer cannot be restored on, a CPU clock of another
/// process, or the calling thread's CPU clock in a process of several threads (which
/// thread made the timer, and so whose CPU time it counts, shows nowhere).
pub fn check(pid: i32) -> Result<Vec<Listed>, EngineError> {
    let listed = parse(&crate::error::read_proc(pid, "timers")?).map_err(EngineError::proc(pid, "timers"))?;
    if listed.is_empty() {
        return Ok(listed);
    }
    let threads = crate::seize::thread_ids(pid)?;
    // The container's ids of the process and its threads matter only to a CPU clock that
    // names one: read only then.
    let (ns_pid, ns_tids) = if listed.iter().any(|t| t.clock < 0 && cpu_clock(t.clock).0 != 0) {
        let tids = threads.iter().map(|&t| crate::procfs::ns_pid(t)).collect::<Result<Vec<_>, _>>()?;
        (crate::procfs::ns_pid(pid)?, tids)
    } else {
        (0, Vec::new())
    };
    let own = |p, thread| if thread { ns_tids.contains(&p) } else { p == ns_pid };
    let mut refusals = Vec::new();
    for t in &listed {
        let why = clock_refusal(t.clock, threads.len(), own);
        let target_ok = if t.thread { threads.contains(&t.target) } else { t.target == pid };
        let why =
            why.or((!t.none && !target_ok).then_some("a signal to another process or thread: not supported"));
        if let Some(why) = why {
            refusals.push(format!(
                "{} has a POSIX timer (id {}) on {}, {why}",
                crate::files::describe_process(pid),
                t.id,
                clock_name(t.clock)
            ));
        }
    }
    match refusals.len() {
        0 => Ok(listed),
        _ => Err(EngineError::Unsupported(refusals.join("; "))),
    }
}

/// Reads `remote`'s timers (as [`check`] listed them) and membarrier registrations.
/// `tids` maps each thread's host tid to its tid in the container.
pub fn dump(
    remote: &mut Remote<'_>,
    listed: &[Listed],
    tids: &[(i32, i32)],
) -> Result<(Vec<PosixTimer>, u32), EngineError> {
    let pid = remote.pid;
    let who = || crate::files::describe_process(pid);
    let mut timers = Vec::with_capacity(listed.len());
    // The window of expiries an absolute timer may have on its clock (see the module doc).
    let mut windows = Vec::new();
    for t in listed {
        let id = t.id as u64;
        let wall = matches!(t.clock, libc::CLOCK_REALTIME | libc::CLOCK_TAI) && !t.none;
        let start = if wall { Some(container_now(pid, t.clock)?) } else { None };
        remote
            .call(libc::SYS_timer_gettime, &[id, remote.scratch.addr], || format!("timer_gettime({id})"))?;
        let end = if wall { Some(container_now(pid, t.clock)?) } else { None };
        // struct itimerspec: it_interval then it_value, each seconds then nanoseconds.
        const _: () = assert!(size_of::<libc::itimerspec>() == 32);
        let b = remote.read(0, size_of::<libc::itimerspec>())?;
        let words: Vec<u64> =
            b.chunks_exact(8).filter_map(|w| w.try_into().ok()).map(u64::from_ne_bytes).collect();
        let [int_s, int_ns, left_s, left_ns] = words[..] else {
            return Err(EngineError::Proc {
                pid,
                what: format!("timer_gettime({id})"),
                reason: format!("{} bytes read back, not an itimerspec", b.len()),
            });
        };
        let ns = |s: u64, ns: u64| s.saturating_mul(1_000_000_000).saturating_add(ns);
        let (interval_ns, left_ns) = (ns(int_s, int_ns), ns(left_s, left_ns));
        let overrun = remote.call(libc::SYS_timer_getoverrun, &[id], || format!("timer_getoverrun({id})"))?;
        if overrun != 0 {
            return Err(EngineError::Unsupported(format!(
                "{} has a POSIX timer (id {id}) whose last expiry overran {overrun} times (timer_getoverrun), a count no call sets again: checkpoint again after its next signal",
                who()
            )));
        }
        if let (Some(start), Some(end), true) = (start, end, left_ns > 0) {
            windows.push((timers.len(), start.saturating_add(left_ns)..=end.saturating_add(left_ns)));
        }
        let notify = match (t.none, t.thread) {
            (true, _) => TimerNotify::None,
            (false, false) => TimerNotify::Signal,
            (false, true) => TimerNotify::Thread {
                tid: tids.iter().find(|(host, _)| *host == t.target).map(|(_, ns)| *ns).ok_or_else(|| {
                    EngineError::Changed(format!("the thread {} timer {id} signals is gone", t.target))
                })?,
            },
        };
        timers.push(PosixTimer {
            id: t.id,
            clock: t.clock,
            notify,
            signo: t.signo,
            value: t.value,
            left_ns,
            interval_ns,
            abs_ns: None,
        });
    }
    if !windows.is_empty() {
        let list = std::fs::read_to_string("/proc/timer_list")
            .map_err(crate::error::io_err("read", "/proc/timer_list"))?;
        let queued = wall_expiries(&list);
        for (i, window) in windows {
            let t: &mut PosixTimer = &mut timers[i];
            t.abs_ns = queued.iter().find(|(c, at)| *c == t.clock && window.contains(at)).map(|(_, at)| *at);
        }
    }
    timers.sort_by_key(|t| t.id);
    // Only a checkpointer turns it on; the restore could not tell the program's own
    // setting from the one it needs.
    if let Ok(1) = remote.syscall(
        libc::SYS_prctl,
        &[u64::from(PR_TIMER_CREATE_RESTORE_IDS), u64::from(PR_TIMER_CREATE_RESTORE_IDS_GET)],
    )? {
        return Err(EngineError::Unsupported(format!(
            "{} has PR_TIMER_CREATE_RESTORE_IDS on (it is restoring timers itself): not supported",
            who()
        )));
    }
    let get = mb::MEMBARRIER_CMD_GET_REGISTRATIONS as u64;
    let membarrier = remote
        .call(libc::SYS_membarrier, &[get, 0, 0], || "membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)".into())?;
    Ok((timers, membarrier as u32))
}

/// Makes `rec`'s timers again, with their ids, and arms them; then its membarrier
/// registrations. In `remote`'s main thread, once its threads and children exist.
pub fn restore(remote: &mut Remote<'_>, rec: &ProcessRecord) -> Result<(), EngineError> {
    if !rec.timers.is_empty() {
        let prctl = |on: u32| [u64::from(PR_TIMER_CREATE_RESTORE_IDS), u64::from(on)];
        remote.call(libc::SYS_prctl, &prctl(PR_TIMER_CREATE_RESTORE_IDS_ON), || {
            "prctl(PR_TIMER_CREATE_RESTORE_IDS, ON): this kernel cannot make timers with given ids (Linux 6.17 on)".into()
        })?;
        let made = rec.timers.iter().try_for_each(|t| create(remote, t));
        let off = remote.call(libc::SYS_prctl, &prctl(PR_TIMER_CREATE_RESTORE_IDS_OFF), || {
            "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)".into()
        });
        made?;
        off?;
    }
    // The image's bits are the register commands themselves (see the table's doc).
    const _: () = assert!(
        MEMBARRIER[0].0 == mb::MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED as u32
            && MEMBARRIER[1].0 == mb::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED as u32
            && MEMBARRIER[2].0 == mb::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE as u32
            && MEMBARRIER[3].0 == mb::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ as u32
    );
    for (bit, name) in MEMBARRIER.into_iter().filter(|(b, _)| rec.membarrier & b != 0) {
        remote
            .call(libc::SYS_membarrier, &[u64::from(bit), 0, 0], || format!("membarrier(register {name})"))?;
    }
    Ok(())
}

/// The kernel's `struct sigevent` for `t`, as libc lays it out: the engine has no
/// `unsafe` to fill libc's type (its padding is private), so the fields are written at
/// libc's offsets.
fn sigevent(t: &PosixTimer) -> Vec<u8> {
    use std::mem::{offset_of, size_of};
    const _: () = assert!(size_of::<libc::sigevent>() == 64);
    let (notify, tid) = match t.notify {
        TimerNotify::None => (libc::SIGEV_NONE, 0),
        TimerNotify::Signal => (libc::SIGEV_SIGNAL, 0),
        TimerNotify::Thread { tid } => (libc::SIGEV_THREAD_ID, tid),
    };
    let mut b = vec![0u8; size_of::<libc::sigevent>()];
    let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
    put(offset_of!(libc::sigevent, sigev_value), &t.value.to_ne_bytes());
    put(offset_of!(libc::sigevent, sigev_signo), &t.signo.to_ne_bytes());
    put(offset_of!(libc::sigevent, sigev_notify), &notify.to_ne_bytes());
    put(offset_of!(libc::sigevent, sigev_notify_thread_id), &tid.to_ne_bytes());
    b
}

fn create(remote: &mut Remote<'_>, t: &PosixTimer) -> Result<(), EngineError> {
    let sev = remote.write(0, &sigevent(t))?;
    let id_at = remote.write(64, &t.id.to_ne_bytes())?;
    remote.call(libc::SYS_timer_create, &[t.clock as u64, sev, id_at], || {
        format!("timer_create of timer {} on {}", t.id, clock_name(t.clock))
    })?;
    let got = remote.read(64, 4)?;
    if got != t.id.to_ne_bytes() {
        return Err(EngineError::Incompatible(format!("timer {} was made with another id ({got:?})", t.id)));
    }
    if t.left_ns > 0 {
        let (value, flags) = match t.abs_ns {
            Some(at) => (at, libc::TIMER_ABSTIME as u64),
            None => (t.left_ns, 0),
        };
        let spec = remote.write(128, &itimerspec(value, t.interval_ns))?;
        remote.call(libc::SYS_timer_settime, &[t.id as u64, flags, spec, 0], || {
            format!("timer_settime({})", t.id)
        })?;
    }
    Ok(())
}

/// The POSIX timers queued on the host's realtime and TAI hrtimer bases, as
/// `/proc/timer_list` shows them: (the clock, `CLOCK_REALTIME` or `CLOCK_TAI`; the hard
/// expiry on it, in ns). Bases are numbered as the kernel's `hrtimer_base_type`: 1 and 5
/// are realtime (hard, soft), 3 and 7 TAI.
fn wall_expiries(text: &str) -> Vec<(i32, u64)> {
    let mut out = Vec::new();
    let mut clock = None;
    let mut ours = false;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("clock ").and_then(|r| r.strip_suffix(':')) {
            clock = match n.parse::<u32>() {
                Ok(1 | 5) => Some(libc::CLOCK_REALTIME),
                Ok(3 | 7) => Some(libc::CLOCK_TAI),
                _ => None,
            };
        } else if line.starts_with('#') && line.contains(", posix_timer_fn,") {
            ours = true;
            continue;
        } else if let (true, Some(c), Some(range)) = (ours, clock, line.strip_prefix("# expires at ")) {
            let hard = range
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
                .and_then(|(_, h)| h.parse().ok());
            out.extend(hard.map(|h| (c, h)));
        }
        ours = false;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_listing_is_parsed() {
        let text = "ID: 77\nsignal: 14/000000000000004d\nnotify: signal/pid.19658\nClockID: 1\n\
                    ID: 3\nsignal: 32/000055b8d0d82460\nnotify: signal/tid.19660\nClockID: -6\n\
                    ID: 1\nsignal: 36/0000000000001234\nnotify: none/pid.19658\nClockID: 7\n";
        let got = parse(text).unwrap_or_default();
        assert_eq!(
            got,
            vec![
                Listed {
                    id: 77,
                    signo: 14,
                    value: 0x4d,
                    none: false,
                    thread: false,
                    target: 19658,
                    clock: 1
                },
                Listed {
                    id: 3,
                    signo: 32,
                    value: 0x55b8_d0d8_2460,
                    none: false,
                    thread: true,
                    target: 19660,
                    clock: -6
                },
                Listed {
                    id: 1,
                    signo: 36,
                    value: 0x1234,
                    none: true,
                    thread: false,
                    target: 19658,
                    clock: 7
                },
            ]
        );
        assert!(parse("ID: 1\nsignal: 14/0\n").is_err());
        assert!(parse("ID: 1\nsignal: 14/0\nnotify: thread/pid.1\nClockID: 0\n").is_err());
        assert_eq!(parse("").ok(), Some(vec![]));
    }

    #[test]
    fn posix_timers_on_the_wall_clock_bases_are_found_in_the_timer_list() {
        let text = "cpu: 0\n clock 0:\n  .index:      0\nactive timers:\n \
                    #0: <00000000431578d8>, posix_timer_fn, S:01\n \
                    # expires at 15124140703697-15124140703697 nsecs [in 8 to 8 nsecs]\n \
                    clock 1:\n  .index:      1\nactive timers:\n \
                    #0: <000000007a4596b0>, posix_timer_fn, S:01\n \
                    # expires at 1796343216000000000-1796343216000000001 nsecs [in 4 to 4 nsecs]\n \
                    #1: <000000007a4596b1>, hrtimer_wakeup, S:01\n \
                    # expires at 1796343217000000000-1796343217000000000 nsecs [in 4 to 4 nsecs]\n \
                    clock 3:\n  .index:      3\nactive timers:\n \
                    #0: <000000007a4596b2>, posix_timer_fn, S:01\n \
                    # expires at 1796343253000000000-1796343253000000000 nsecs [in 4 to 4 nsecs]\n";
        assert_eq!(
            wall_expiries(text),
            vec![
                (libc::CLOCK_REALTIME, 1_796_343_216_000_000_001),
                (libc::CLOCK_TAI, 1_796_343_253_000_000_000)
            ]
        );
    }

    #[test]
    fn a_sigevent_has_libc_layout() {
        let t = PosixTimer {
            id: 3,
            clock: 1,
            notify: TimerNotify::Thread { tid: 42 },
            signo: 34,
            value: 0x1122_3344_5566_7788,
            left_ns: 0,
            interval_ns: 0,
            abs_ns: None,
        };
        let b = sigevent(&t);
        assert_eq!(&b[0..8], &0x1122_3344_5566_7788u64.to_ne_bytes());
        assert_eq!(&b[8..12], &34i32.to_ne_bytes());
        assert_eq!(&b[12..16], &4i32.to_ne_bytes());
        assert_eq!(&b[16..20], &42i32.to_ne_bytes());
    }
}
