//! Scheduling of another task, from outside: its nice value and its policy. (`nix` has
//! the CPU affinity calls, not these.)

use std::io;

/// `getpriority(PRIO_PROCESS, tid)` as a nice value (-20..=19).
pub fn nice(tid: i32) -> io::Result<i32> {
    // The raw syscall answers 20 - nice, never negative, so an error is told apart
    // without errno games (glibc's wrapper returns the nice value, and -1 is legal).
    // SAFETY: plain integer arguments; nothing is read or written through pointers.
    let r = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, tid) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(20 - r as i32) }
}

/// `setpriority(PRIO_PROCESS, tid, nice)`.
pub fn set_nice(tid: i32, nice: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `sched_getscheduler(tid)` (with `SCHED_RESET_ON_FORK` if set) and its
/// `sched_priority`.
pub fn scheduler(tid: i32) -> io::Result<(i32, i32)> {
    // SAFETY: an integer argument.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    if policy < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, writable sched_param for the call's duration.
    let r = unsafe { libc::sched_getparam(tid, &mut param) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok((policy, param.sched_priority)) }
}

/// `sched_setscheduler(tid, policy, {priority})`.
pub fn set_scheduler(tid: i32, policy: i32, priority: i32) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: `param` is a valid sched_param that outlives the call.
    let r = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
