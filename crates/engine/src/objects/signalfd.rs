//! signalfd: the set of signals it reads (`sigmask:` in its fdinfo, hex).
//!
//! Restore: an injected `signalfd4(-1, mask, 8, flags)`. The signals waiting to be read
//! through it are not the fd's: they are the pending signals of the process and its
//! threads, which travel with them ([`crate::thread`], `shared_pending`), so a read
//! through the new fd after the restore finds them again.

use migrate_proto::records::{FdKind, FdRecord, SignalFd};

use super::{Classified, FdSeen, create_flags, install};
use crate::error::EngineError;
use crate::inject::Remote;

pub fn dump(seen: &FdSeen<'_>) -> Result<Classified, EngineError> {
    let mask = crate::procfs::status_field(seen.info, "sigmask")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| EngineError::Proc {
            pid: seen.pid,
            what: format!("fdinfo of fd {}", seen.fd),
            reason: "no sigmask".into(),
        })?;
    Ok(Ok(FdKind::SignalFd(SignalFd { mask })))
}

pub fn restore(
    remote: &mut Remote<'_>,
    rec: &FdRecord,
    s: &SignalFd,
    cloexec: u64,
) -> Result<(), EngineError> {
    let at = remote.write(0, &s.mask.to_ne_bytes())?;
    let fd = remote.call(libc::SYS_signalfd4, &[u64::MAX, at, 8, create_flags(rec, cloexec)], || {
        format!("signalfd4({:#x}) for fd {}", s.mask, rec.fd)
    })?;
    install(remote, fd, rec.fd as u64, cloexec)
}
