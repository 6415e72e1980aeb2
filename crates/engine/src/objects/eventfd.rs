//! eventfd: a 64-bit counter, and whether reads take it whole or one at a time
//! (`EFD_SEMAPHORE`).
//!
//! Dump: the fdinfo has both (`eventfd-count:` in hex, `eventfd-semaphore:`), so nothing
//! is read from the fd itself and nothing is consumed. Restore: an injected `eventfd2`
//! with the semaphore flag; the counter is then written (`eventfd2`'s initial value is
//! 32 bits wide, a counter is 64).

use migrate_proto::records::{EventFd, FdKind, FdRecord};

use super::{Classified, FdSeen, create_flags, install};
use crate::error::EngineError;
use crate::inject::Remote;

pub fn dump(seen: &FdSeen<'_>) -> Result<Classified, EngineError> {
    let count = crate::procfs::status_field(seen.info, "eventfd-count")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| EngineError::Proc {
            pid: seen.pid,
            what: format!("fdinfo of fd {}", seen.fd),
            reason: "no eventfd-count".into(),
        })?;
    let semaphore = seen.field::<u8>("eventfd-semaphore")? != 0;
    Ok(Ok(FdKind::EventFd(EventFd { count, semaphore })))
}

pub fn restore(
    remote: &mut Remote<'_>,
    rec: &FdRecord,
    e: &EventFd,
    cloexec: u64,
) -> Result<(), EngineError> {
    let flags = create_flags(rec, cloexec) | if e.semaphore { libc::EFD_SEMAPHORE as u64 } else { 0 };
    let fd = remote.call(libc::SYS_eventfd2, &[0, flags], || format!("eventfd2 for fd {}", rec.fd))?;
    install(remote, fd, rec.fd as u64, cloexec)?;
    if e.count != 0 {
        let at = remote.write(0, &e.count.to_ne_bytes())?;
        remote.call(libc::SYS_write, &[rec.fd as u64, at, 8], || {
            format!("write the counter ({}) of eventfd fd {}", e.count, rec.fd)
        })?;
    }
    Ok(())
}
