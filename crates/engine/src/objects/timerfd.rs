//! timerfd: its clock, the time left, the period, whether it was set with an absolute
//! time (`TFD_TIMER_ABSTIME`, with `TFD_TIMER_CANCEL_ON_SET`), and the expirations not
//! yet read.
//!
//! Dump: `timerfd_gettime` on a copy of the fd (`pidfd_getfd`) gives the time left and
//! the period. It first does what a read would: an interval timer that expired counts
//! the periods that passed since into its ticks and is rearmed (until then the fdinfo
//! shows it expired, with 0 left). The fdinfo, read afterwards, gives `clockid`, `ticks`
//! and `settime flags` (octal). The program cannot tell: it is what its own
//! `timerfd_gettime` would have done.
//!
//! Restore, inside the task: `timerfd_create` with the clock, `timerfd_settime` with the
//! flags, then the unread ticks with the `TFD_IOC_SET_TICKS` ioctl (settime zeroes
//! them; an expiry in between, which the ioctl overwrote, shows in the fdinfo as an
//! expired timer with exactly those ticks, and is counted again). That ioctl exists only with `CONFIG_CHECKPOINT_RESTORE`: the dump probes it
//! once, and refuses a timerfd with ticks unread where it is missing.
//! `CLOCK_REALTIME_ALARM` and `CLOCK_BOOTTIME_ALARM` need CAP_WAKE_ALARM, which the
//! restore has (fds are made before the process's own credentials are set).
//!
//! Time, with the container's time namespace, whose offsets the restore sets so that
//! `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` continue from the freeze:
//! - a relative timer (any clock) gets the time it had left, from the restore on: the
//!   time the container spent frozen or in transit does not count, as it does not on
//!   its monotonic clocks;
//! - an absolute timer on `CLOCK_MONOTONIC` or `CLOCK_BOOTTIME(_ALARM)` keeps its expiry
//!   in the container's clock (the dump adds the namespace's offsets to the host's clock),
//!   so it fires at the same reading of that clock as before;
//! - an absolute timer on `CLOCK_REALTIME(_ALARM)` keeps its wall-clock expiry, and
//!   wall-clock time went on meanwhile: an expiry that passed fires at once, and an
//!   interval timer counts the periods missed into its ticks, as if the program had run.
//!
//! A timer cancelled by a wall-clock change (`TFD_TIMER_CANCEL_ON_SET`) but not yet read
//! is not seen (nothing shows it short of a read, which would consume it): it comes back
//! armed.

use std::os::fd::AsFd;
use std::sync::OnceLock;

use migrate_proto::records::{FdKind, FdRecord, TimerFd};

use super::{Classified, FdSeen, create_flags, install};
use crate::error::EngineError;
use crate::inject::Remote;

const NS: u64 = 1_000_000_000;

/// Whether this kernel lets the restore set a timerfd's ticks, probed once.
fn can_set_ticks() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| migrate_sys::anon::timerfd_can_set_ticks().unwrap_or(false))
}

fn ns_of(t: &libc::timespec) -> u64 {
    (t.tv_sec.max(0) as u64).saturating_mul(NS).saturating_add(t.tv_nsec.max(0) as u64)
}

/// `clock` now, as the container reads it: the host's, plus its time namespace's offset
/// for the monotonic and boot-time clocks.
pub(crate) fn container_now(pid: i32, clock: i32) -> Result<u64, EngineError> {
    // An alarm clock reads as its base clock (and clock_gettime refuses it without an
    // RTC, as here).
    let base = match clock {
        libc::CLOCK_REALTIME_ALARM => libc::CLOCK_REALTIME,
        libc::CLOCK_BOOTTIME_ALARM => libc::CLOCK_BOOTTIME,
        other => other,
    };
    let now = nix::time::clock_gettime(nix::time::ClockId::from_raw(base)).map_err(|e| {
        EngineError::Proc { pid, what: format!("clock {clock}"), reason: format!("clock_gettime: {e}") }
    })?;
    let now = now.tv_sec() as i128 * NS as i128 + now.tv_nsec() as i128;
    let (mono, boot) = crate::host::timens_offsets(pid)?;
    let off = match clock {
        libc::CLOCK_MONOTONIC => mono,
        libc::CLOCK_BOOTTIME | libc::CLOCK_BOOTTIME_ALARM => boot,
        _ => 0,
    };
    Ok((now + off).max(0) as u64)
}

pub fn dump(seen: &FdSeen<'_>) -> Result<Classified, EngineError> {
    let copy = crate::files::take(seen.pid, seen.fd)?;
    let spec = migrate_sys::anon::timerfd_gettime(copy.as_fd()).map_err(|e| EngineError::Proc {
        pid: seen.pid,
        what: format!("timerfd at fd {}", seen.fd),
        reason: format!("timerfd_gettime: {e}"),
    })?;
    // Read again: gettime has just counted the expirations into `ticks`.
    let info = crate::error::read_proc(seen.pid, &format!("fdinfo/{}", seen.fd))?;
    let seen = FdSeen { info: &info, ..*seen };
    let clock: i32 = seen.field("clockid")?;
    let ticks: u64 = seen.field("ticks")?;
    let flags = crate::procfs::status_field(&info, "settime flags")
        .and_then(|v| u32::from_str_radix(v, 8).ok())
        .ok_or_else(|| EngineError::Proc {
            pid: seen.pid,
            what: format!("fdinfo of fd {}", seen.fd),
            reason: "no settime flags".into(),
        })?;
    if ticks > 0 && !can_set_ticks() {
        return Ok(Err(format!(
            "a timerfd ({}) with {ticks} expirations not yet read: this kernel cannot set them again (TFD_IOC_SET_TICKS needs CONFIG_CHECKPOINT_RESTORE)",
            seen.link
        )));
    }
    let interval_ns = ns_of(&spec.it_interval);
    let mut left_ns = ns_of(&spec.it_value);
    if left_ns == 0 && interval_ns > 0 {
        // Caught at the very instant of an expiry: still armed.
        left_ns = 1;
    }
    let armed = left_ns > 0;
    let abs = armed && flags & libc::TFD_TIMER_ABSTIME as u32 != 0;
    let abs_ns = if abs { Some(container_now(seen.pid, clock)? + left_ns) } else { None };
    let cancel_on_set = abs && flags & libc::TFD_TIMER_CANCEL_ON_SET as u32 != 0;
    Ok(Ok(FdKind::TimerFd(TimerFd { clock, left_ns, interval_ns, abs_ns, cancel_on_set, ticks })))
}

/// A `struct itimerspec` (x86-64: interval, then value; each seconds and nanoseconds)
/// for the scratch page. libc's type is the layout; its fields are written in order, as
/// the engine has no `unsafe` to copy it whole.
pub(crate) fn itimerspec(value_ns: u64, interval_ns: u64) -> Vec<u8> {
    const _: () = assert!(std::mem::size_of::<libc::itimerspec>() == 32);
    [interval_ns / NS, interval_ns % NS, value_ns / NS, value_ns % NS]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

pub fn restore(
    remote: &mut Remote<'_>,
    rec: &FdRecord,
    t: &TimerFd,
    cloexec: u64,
) -> Result<(), EngineError> {
    let fd = remote.call(libc::SYS_timerfd_create, &[t.clock as u64, create_flags(rec, cloexec)], || {
        format!("timerfd_create({}) for fd {}", t.clock_name(), rec.fd)
    })?;
    install(remote, fd, rec.fd as u64, cloexec)?;
    let target = rec.fd as u64;
    if t.left_ns > 0 {
        let (value, flags) = match t.abs_ns {
            Some(at) => {
                let cancel = if t.cancel_on_set { libc::TFD_TIMER_CANCEL_ON_SET as u64 } else { 0 };
                (at, libc::TFD_TIMER_ABSTIME as u64 | cancel)
            }
            None => (t.left_ns, 0),
        };
        let at = remote.write(0, &itimerspec(value, t.interval_ns))?;
        remote.call(libc::SYS_timerfd_settime, &[target, flags, at, 0], || {
            format!("timerfd_settime of fd {target}")
        })?;
    }
    if t.ticks > 0 {
        set_ticks(remote, target, t.ticks)?;
        // An expiry between settime and the ioctl was counted, then overwritten. An
        // expired timer stays expired (0 left) until it is read, so no other expiry
        // can come while this looks.
        let info = crate::error::read_proc(remote.pid, &format!("fdinfo/{target}"))?;
        let expired = crate::procfs::status_field(&info, "it_value") == Some("(0, 0)");
        let now = crate::procfs::status_field(&info, "ticks").and_then(|v| v.parse::<u64>().ok());
        if t.left_ns > 0 && expired && now == Some(t.ticks) {
            set_ticks(remote, target, t.ticks + 1)?;
        }
    }
    Ok(())
}

fn set_ticks(remote: &mut Remote<'_>, fd: u64, ticks: u64) -> Result<(), EngineError> {
    let at = remote.write(0, &ticks.to_ne_bytes())?;
    remote.call(libc::SYS_ioctl, &[fd, migrate_sys::anon::TFD_IOC_SET_TICKS, at], || {
        format!("ioctl(TFD_IOC_SET_TICKS, {ticks}) of fd {fd}")
    })?;
    Ok(())
}
