//! pidfds: a process handle that cannot be confused with a recycled pid, and
//! `pidfd_getfd`, which copies a file descriptor out of another process (the dumper reads
//! sockets, pipes, eventfds, … of a target through its own copy of each, design §4).
//!
//! `pidfd_getfd` needs `PTRACE_MODE_ATTACH_REALCREDS` over the target (Linux 5.6): root,
//! or a tracer of it. The copy has `FD_CLOEXEC` set.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A failed pidfd operation.
#[derive(Debug, thiserror::Error)]
pub enum PidfdError {
    #[error("pidfd_open(pid {pid})")]
    Open {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("pidfd_getfd(pid {pid}, fd {fd})")]
    GetFd {
        pid: i32,
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("pidfd_send_signal(pid {pid}, signal {signal})")]
    Signal {
        pid: i32,
        signal: i32,
        #[source]
        source: io::Error,
    },
}

impl PidfdError {
    /// The process is gone (ESRCH): it exited, it was not our failure.
    pub fn is_gone(&self) -> bool {
        let source = match self {
            PidfdError::Open { source, .. }
            | PidfdError::GetFd { source, .. }
            | PidfdError::Signal { source, .. } => source,
        };
        source.raw_os_error() == Some(libc::ESRCH)
    }
}

/// A pidfd (`pidfd_open`).
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: i32,
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PidFd {
    /// `pidfd_open(pid, 0)`.
    pub fn open(pid: i32) -> Result<PidFd, PidfdError> {
        // SAFETY: plain syscall with integer arguments; returns a new fd or -1.
        let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if ret < 0 {
            return Err(PidfdError::Open { pid, source: io::Error::last_os_error() });
        }
        // SAFETY: `ret` is a new descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(ret as RawFd) };
        Ok(PidFd { fd, pid })
    }

    /// The pid this handle was opened for (in the caller's pid namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// `pidfd_getfd(pidfd, target_fd, 0)`: a copy of the target's fd `target_fd`.
    pub fn get_fd(&self, target_fd: RawFd) -> Result<OwnedFd, PidfdError> {
        // SAFETY: plain syscall on a live pidfd with integer arguments; returns a new fd
        // in this process or -1.
        let ret = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.fd.as_raw_fd(), target_fd, 0) };
        if ret < 0 {
            return Err(PidfdError::GetFd {
                pid: self.pid,
                fd: target_fd,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `ret` is a new descriptor owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
    }

    /// `pidfd_send_signal(pidfd, signal, NULL, 0)`: cannot hit a recycled pid.
    pub fn send_signal(&self, signal: i32) -> Result<(), PidfdError> {
        // SAFETY: plain syscall; a null `siginfo` makes the kernel fill in a default one.
        let ret = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.fd.as_raw_fd(), signal, std::ptr::null::<u8>(), 0)
        };
        if ret < 0 {
            return Err(PidfdError::Signal { pid: self.pid, signal, source: io::Error::last_os_error() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::process::Command;

    use crate::process::{Step, spawn};

    #[test]
    fn take_a_pipe_from_a_child() -> Result<(), Box<dyn std::error::Error>> {
        let (rd, wr) = std::io::pipe()?;
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut child = spawn(&mut cmd, vec![Step::pass_fd(wr.as_fd(), 7)?])?;
        drop(wr);
        let result = (|| -> Result<(), Box<dyn std::error::Error>> {
            let pidfd = PidFd::open(child.id() as i32)?;
            let taken = pidfd.get_fd(7)?;
            std::fs::File::from(taken).write_all(b"ping")?;
            let mut buf = [0u8; 4];
            let mut rd = rd;
            rd.read_exact(&mut buf)?;
            assert_eq!(&buf, b"ping");
            let err = pidfd.get_fd(99).err().ok_or("pidfd_getfd of a closed fd succeeded")?;
            assert!(!err.is_gone());
            pidfd.send_signal(libc::SIGKILL)?;
            Ok(())
        })();
        let _ = child.kill();
        let _ = child.wait();
        result
    }

    #[test]
    fn open_a_missing_process() {
        // pid_max is at most 2^22: this pid never exists.
        let err = PidFd::open(i32::MAX).err();
        assert!(err.as_ref().is_some_and(PidfdError::is_gone), "{err:?}");
    }
}
