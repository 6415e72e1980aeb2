//! Unix sockets: stream, datagram and seqpacket.
//!
//! Not carried yet: every one is refused.

use std::os::fd::OwnedFd;

use super::{Classified, FdSeen};
use crate::error::EngineError;

pub fn dump(seen: &FdSeen<'_>, _sock: &OwnedFd) -> Result<Classified, EngineError> {
    Ok(Err(format!("a unix socket ({}): not supported yet", seen.link)))
}
