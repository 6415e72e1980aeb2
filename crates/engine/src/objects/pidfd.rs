//! pidfd: a handle on a process (or, with `PIDFD_THREAD`, a thread) of the container,
//! by its pid there; or on one that has exited and was reaped.
//!
//! Dump: the fdinfo has `Pid:` (in our namespace; -1 once the process was reaped) and
//! `NSpid:` (down to the container's namespace: the last one is the container's); the
//! fd's flags hold `PIDFD_NONBLOCK` (`O_NONBLOCK`) and `PIDFD_THREAD` (`O_EXCL`). The
//! process must be one of the container's tree: in its pid namespace, with every
//! ancestor up to its PID 1 there too (a process entered from outside, as by `migrate
//! exec`, is not); a pidfd of any other is refused, naming that process.
//!
//! Restore: a pidfd can only be made once its process exists, and a process's fds are
//! installed before its children are forked, so [`crate::files`] leaves pidfds out and
//! [`restore`] makes them once the whole tree and its threads exist: an injected
//! `pidfd_open(pid, flags)` — the tasks have their old pids — in the first process
//! holding the description, copied from there to every other holder (`pidfd_getfd`),
//! so it stays shared (an epoll set watching a pidfd must be rebuilt after this). A
//! zombie of the image is still a process here: `pidfd_open` takes it. A pidfd of a
//! reaped process is made on a helper: the holder forks a child by an injected `clone`
//! with no exit signal (no SIGCHLD for anybody), opens a pidfd of it while it is
//! stopped, lets it end, and reaps it with `wait4(…, __WALL)`; the pidfd then refers to a process that has exited and was
//! reaped, as before. The kernel keeps such a process's wait status for its pidfds
//! (`PIDFD_GET_INFO` with `PIDFD_INFO_EXIT`, 6.15 on): the dump reads it, and the helper
//! ends the same way, by `exit_group(code)` or a SIGKILL of itself; one killed by
//! another signal is refused (making a helper die of it would run its handler, or dump
//! core).

use std::collections::HashMap;
use std::os::fd::AsFd;

use migrate_proto::records::{FdKind, FdRecord, PidFd};
use migrate_sys::ptrace::StoppedTracee;

use super::{Classified, FdSeen, install};
use crate::error::EngineError;
use crate::inject::{Remote, Task};
use crate::procfs;

/// `PIDFD_THREAD` (linux/pidfd.h): `O_EXCL`.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// The container's pid of `target` (ours; a thread's tid for a thread's pidfd), if it is
/// in the same tree as `holder`: its process and every ancestor up to PID 1 of
/// `holder`'s pid namespace are in that namespace.
fn in_container(holder: i32, target: i32) -> Option<i32> {
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let home = ns(holder)?;
    let status = procfs::read_status(target).ok()?;
    let ns_pid = procfs::innermost(&status.nspid, "NSpid").ok()?;
    // From its process: a thread's PPid is its process's parent.
    let mut cur = status.tgid;
    // A tree is at most PID_MAX deep; a loop would mean a /proc that changes under us.
    for _ in 0..migrate_proto::validate::PID_MAX {
        if ns(cur).as_ref() != Some(&home) {
            return None;
        }
        let status = procfs::read_status(cur).ok()?;
        if procfs::innermost(&status.nspid, "NSpid").ok()? == 1 {
            return Some(ns_pid);
        }
        cur = status.ppid;
    }
    None
}

pub fn dump(seen: &FdSeen<'_>) -> Result<Classified, EngineError> {
    let host: i32 = seen.field("Pid")?;
    let (_, flags) = procfs::parse_fdinfo(seen.info).map_err(|reason| EngineError::Proc {
        pid: seen.pid,
        what: format!("fdinfo of fd {}", seen.fd),
        reason,
    })?;
    let thread = flags & PIDFD_THREAD != 0;
    if host <= 0 {
        let copy = crate::files::take(seen.pid, seen.fd)?;
        let status = migrate_sys::anon::pidfd_exit_status(copy.as_fd()).map_err(|e| EngineError::Proc {
            pid: seen.pid,
            what: format!("pidfd at fd {}", seen.fd),
            reason: format!("PIDFD_GET_INFO: {e}"),
        })?;
        if let Some(s) = status
            && s & 0x7f != 0
            && s != libc::SIGKILL
        {
            return Ok(Err(format!(
                "a pidfd of a process that was killed by signal {} and reaped: the restore can only make one that exited or was killed by SIGKILL",
                s & 0x7f
            )));
        }
        return Ok(Ok(FdKind::PidFd(PidFd { pid: None, thread, status })));
    }
    Ok(match in_container(seen.pid, host) {
        Some(pid) => Ok(FdKind::PidFd(PidFd { pid: Some(pid), thread, status: None })),
        None => {
            let comm = std::fs::read_to_string(format!("/proc/{host}/comm")).unwrap_or_default();
            Err(format!(
                "a pidfd of pid {host} ({}), a process outside the container: it cannot come along",
                comm.trim()
            ))
        }
    })
}

/// Where each pidfd description was made: file id → (container pid, fd).
pub type Made = HashMap<u64, (i32, u64)>;

/// Makes the pidfds of process `pid_ns` (`remote`), once every process of the image
/// exists; a description made in another process already is copied from there.
pub fn restore(
    remote: &mut Remote<'_>,
    pid_ns: i32,
    fds: &[FdRecord],
    made: &mut Made,
) -> Result<(), EngineError> {
    for rec in fds {
        let FdKind::PidFd(p) = &rec.kind else { continue };
        let cloexec = if rec.flags & libc::O_CLOEXEC as u32 != 0 { libc::O_CLOEXEC as u64 } else { 0 };
        let target = rec.fd as u64;
        if let Some(&(from, fd)) = made.get(&rec.file_id) {
            crate::files::copy_from(remote.task, remote.gadget, from, fd, target, cloexec)?;
            continue;
        }
        let flags = u64::from(rec.flags & libc::O_NONBLOCK as u32)
            | if p.thread { u64::from(PIDFD_THREAD) } else { 0 };
        let fd = match p.pid {
            Some(pid) => remote.call(libc::SYS_pidfd_open, &[pid as u64, flags], || {
                format!("pidfd_open({pid}) for fd {target}")
            })?,
            None => of_reaped(remote, flags, target, p.status)?,
        };
        install(remote, fd, target, cloexec)?;
        if cloexec == 0 {
            // pidfd_open always sets close-on-exec; an fd that landed on its number kept it.
            remote.call(libc::SYS_fcntl, &[target, libc::F_SETFD as u64, 0], || {
                format!("fcntl(F_SETFD) of fd {target}")
            })?;
        }
        made.insert(rec.file_id, (pid_ns, target));
    }
    Ok(())
}

/// A pidfd, in `remote`, of a process that has exited (with `status`) and was reaped: a
/// helper child, forked, opened, let exit and reaped.
fn of_reaped(
    remote: &mut Remote<'_>,
    flags: u64,
    target: u64,
    status: Option<i32>,
) -> Result<u64, EngineError> {
    let what = || format!("the exited process of pidfd fd {target}");
    let mut born = None;
    // clone(flags 0: no exit signal, a copy of everything; the stack is the holder's,
    // but the child runs nothing of the holder's code: it is stopped at birth).
    let child =
        remote.syscall_cloning(libc::SYS_clone, &[0, 0, 0, 0, 0], |t| born = Some(t))?.map_err(|errno| {
            EngineError::Injected { pid: remote.pid, call: format!("clone for {}", what()), errno }
        })?;
    let host = born.ok_or_else(|| EngineError::Helper { what: what(), problem: "no clone event".into() })?;
    let tracee = StoppedTracee::adopt(host).map_err(EngineError::ptrace(host, "take the helper"))?;
    let task = Task::new(host, tracee)?;
    let ours = migrate_sys::pidfd::PidFd::open(host)
        .map_err(|e| EngineError::Helper { what: what(), problem: e.to_string() });
    let fd =
        remote.call(libc::SYS_pidfd_open, &[child, flags], || format!("pidfd_open({child}) for fd {target}"));
    // It exits whatever happened above: it must never run the holder's code.
    let (nr, args) = match status {
        Some(libc::SIGKILL) => (libc::SYS_kill, [child, libc::SIGKILL as u64]),
        status => (libc::SYS_exit_group, [status.unwrap_or(0) as u64 >> 8, 0]),
    };
    crate::session::last_call(task, remote.gadget, nr, &args)?;
    let ours = ours?;
    crate::session::wait_exit(&ours).map_err(|problem| EngineError::Helper { what: what(), problem })?;
    let got = remote.call(libc::SYS_wait4, &[child, 0, libc::__WALL as u64, 0], || {
        format!("wait4({child}, __WALL) for {}", what())
    })?;
    if got != child {
        return Err(EngineError::Helper { what: what(), problem: format!("wait4 reaped pid {got} instead") });
    }
    fd
}
