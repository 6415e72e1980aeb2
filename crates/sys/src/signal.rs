//! Signal dispositions the binary changes for itself.
//!
//! The Rust runtime starts every program with `SIGPIPE` ignored, so that a write to a
//! closed pipe or socket returns `EPIPE` instead of killing the process. That is right
//! for a daemon, but a command-line tool whose stdout goes to `head` then panics in
//! `println!` ("failed printing to stdout: Broken pipe"). Unix tools die quietly of
//! `SIGPIPE` instead: [`default_sigpipe`] restores that.

use std::io;

/// Restores the default disposition of `SIGPIPE` (terminate the process) for the
/// calling process.
///
/// Only for short-lived commands whose output may go to a pipe: a process that writes
/// to sockets whose peer may vanish (the agent, the shim) must keep `SIGPIPE` ignored.
/// Children started with `std::process::Command` get the default disposition anyway.
pub fn default_sigpipe() -> io::Result<()> {
    // SAFETY: signal(2) with SIG_DFL installs no handler (no code of ours runs in signal
    // context) and touches no memory of ours; it only changes this process's disposition.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if previous == libc::SIG_ERR { Err(io::Error::last_os_error()) } else { Ok(()) }
}
