//! Records of the fds behind an anonymous inode (`anon_inode:[…]` links): eventfd,
//! timerfd, signalfd, inotify and pidfd, with the checks [`crate::validate`] runs on them.

use serde::{Deserialize, Serialize};

use crate::error::{Invalid, PathOwner};

/// An eventfd (`eventfd2`): its counter and whether it counts as a semaphore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFd {
    /// At most `u64::MAX - 1`: the kernel's ceiling.
    pub count: u64,
    /// `EFD_SEMAPHORE`: each read takes 1.
    pub semaphore: bool,
}

/// A timerfd (`timerfd_create` + `timerfd_settime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerFd {
    /// `CLOCK_REALTIME` (0), `CLOCK_MONOTONIC` (1), `CLOCK_BOOTTIME` (7),
    /// `CLOCK_REALTIME_ALARM` (8) or `CLOCK_BOOTTIME_ALARM` (9).
    pub clock: i32,
    /// Time left until the next expiry at the checkpoint; 0: disarmed.
    pub left_ns: u64,
    /// The period; 0: a one-shot timer.
    pub interval_ns: u64,
    /// Set with `TFD_TIMER_ABSTIME`: the expiry, on `clock` as the container saw it
    /// (inside its time namespace). `None` for a relative timer.
    pub abs_ns: Option<u64>,
    /// `TFD_TIMER_CANCEL_ON_SET` (only with an absolute `CLOCK_REALTIME*` timer).
    pub cancel_on_set: bool,
    /// Expirations not yet read.
    pub ticks: u64,
}

impl TimerFd {
    pub fn clock_name(&self) -> &'static str {
        match self.clock {
            0 => "CLOCK_REALTIME",
            1 => "CLOCK_MONOTONIC",
            7 => "CLOCK_BOOTTIME",
            8 => "CLOCK_REALTIME_ALARM",
            9 => "CLOCK_BOOTTIME_ALARM",
            _ => "an unknown clock",
        }
    }
}

/// The clocks a timerfd may use.
pub const TIMERFD_CLOCKS: [i32; 5] = [0, 1, 7, 8, 9];

/// A signalfd (`signalfd4`): the signals it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalFd {
    /// Bit `n - 1` for signal `n`.
    pub mask: u64,
}

/// An inotify instance: its watches, by watch descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inotify {
    /// In increasing `wd` order.
    pub watches: Vec<InotifyWatch>,
}

/// One watch of an inotify instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyWatch {
    /// Its watch descriptor, as the program knows it.
    pub wd: i32,
    /// The watched file or directory, as the container names it.
    pub path: String,
    /// `IN_*` events with `IN_ONESHOT` and `IN_EXCL_UNLINK` (the bits the kernel keeps).
    pub mask: u32,
}

/// The bits of an inotify watch's mask: `IN_ALL_EVENTS`, `IN_EXCL_UNLINK`, `IN_ONESHOT`.
pub const INOTIFY_MASK: u32 = 0xfff | 0x0400_0000 | 0x8000_0000;
/// The most watches one instance may carry (`fs.inotify.max_user_watches` is far
/// larger, but an image with more would make the restore crawl).
pub const MAX_WATCHES: usize = 1 << 16;
/// The highest watch descriptor a restore reaches: each number below it costs an
/// added and removed watch.
pub const MAX_WD: i32 = 1 << 16;

/// The most throwaway watches a whole restore may add: the sum, over the image's inotify
/// descriptions, of their highest wd (each is made once; a crafted image of many
/// instances at [`MAX_WD`] would otherwise keep a restore adding watches for days).
pub const MAX_WD_TOTAL: u64 = 1 << 20;

/// A pidfd (`pidfd_open`, `clone3(CLONE_PIDFD)`) of a process of the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidFd {
    /// The process (or, with `thread`, the thread) it refers to, in the container's pid
    /// namespace; `None`: one that has exited and was reaped.
    pub pid: Option<i32>,
    /// `PIDFD_THREAD`: it refers to one thread, not a whole process.
    pub thread: bool,
    /// For a reaped process, its wait status as the kernel keeps it for pidfds
    /// (`PIDFD_GET_INFO`, 6.15 on): an exit code (`code << 8`) or SIGKILL (9).
    pub status: Option<i32>,
}

fn bad(fd: i32, problem: String) -> Result<(), Invalid> {
    Err(Invalid::Fd { fd, problem })
}

pub(crate) fn check_timerfd(fd: i32, t: &TimerFd) -> Result<(), Invalid> {
    // Beyond this, a time (seconds) no longer fits the kernel's ktime.
    const MAX_NS: u64 = i64::MAX as u64;
    if !TIMERFD_CLOCKS.contains(&t.clock) {
        return bad(fd, format!("timerfd clock {} is not one a timerfd takes", t.clock));
    }
    if t.left_ns > MAX_NS || t.interval_ns > MAX_NS || t.abs_ns.is_some_and(|a| a > MAX_NS) {
        return bad(fd, "timerfd time beyond the kernel's range".into());
    }
    if t.cancel_on_set && (t.abs_ns.is_none() || !matches!(t.clock, 0 | 8)) {
        return bad(fd, "timerfd TFD_TIMER_CANCEL_ON_SET without an absolute CLOCK_REALTIME timer".into());
    }
    if t.ticks == u64::MAX {
        return bad(fd, "timerfd ticks beyond what a read can return".into());
    }
    Ok(())
}

pub(crate) fn check_signalfd(fd: i32, s: &SignalFd) -> Result<(), Invalid> {
    // SIGKILL (9) and SIGSTOP (19) are never read through a signalfd.
    if s.mask & ((1 << 8) | (1 << 18)) != 0 {
        return bad(fd, format!("signalfd mask {:#x} holds SIGKILL or SIGSTOP", s.mask));
    }
    Ok(())
}

pub(crate) fn check_inotify(fd: i32, i: &Inotify) -> Result<(), Invalid> {
    if i.watches.len() > MAX_WATCHES {
        return bad(fd, format!("inotify has {} watches, more than {MAX_WATCHES}", i.watches.len()));
    }
    let mut last = 0;
    for w in &i.watches {
        if w.wd <= last || w.wd > MAX_WD {
            return bad(fd, format!("inotify wd {} is out of order or beyond {MAX_WD}", w.wd));
        }
        last = w.wd;
        if w.mask & !INOTIFY_MASK != 0 || w.mask & 0xfff == 0 {
            return bad(fd, format!("inotify wd {}: mask {:#x} is not a watch's mask", w.wd, w.mask));
        }
        crate::validate::check_path(PathOwner::Fd(fd), &w.path)?;
    }
    Ok(())
}

/// The inotify descriptions of the whole image reach at most [`MAX_WD_TOTAL`] wds
/// together.
pub(crate) fn check_inotify_tree(processes: &[super::ProcessRecord]) -> Result<(), String> {
    let mut highest = std::collections::HashMap::new();
    for f in processes.iter().flat_map(|p| &p.fds) {
        if let super::FdKind::Inotify(i) = &f.kind {
            highest.insert(f.file_id, i.watches.last().map_or(0, |w| w.wd.max(0) as u64));
        }
    }
    let total: u64 = highest.values().sum();
    if total > MAX_WD_TOTAL {
        return Err(format!(
            "the inotify instances reach {total} watch descriptors together, more than {MAX_WD_TOTAL}"
        ));
    }
    Ok(())
}

pub(crate) fn check_pidfd(fd: i32, p: &PidFd) -> Result<(), Invalid> {
    if let Some(pid) = p.pid
        && !(1..crate::validate::PID_MAX).contains(&pid)
    {
        return bad(fd, format!("pidfd of pid {pid}, out of range"));
    }
    if let Some(status) = p.status
        && (p.pid.is_some() || !(status == 9 || (status & 0xff == 0 && (0..=0xffff).contains(&status))))
    {
        return bad(
            fd,
            format!("pidfd exit status {status:#x} is not an exit code or SIGKILL of a reaped process"),
        );
    }
    Ok(())
}
