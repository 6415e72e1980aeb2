//! Errors of the engine: each names the pid or tid, the object (fd, VMA, file, record)
//! and the step that failed.

use std::path::PathBuf;

use migrate_sys::ptrace::PtraceError;

/// A failed checkpoint or restore.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The container holds something this version cannot checkpoint. Raised before
    /// the container is frozen where possible.
    #[error("cannot checkpoint: {0}")]
    Unsupported(String),
    /// The container's processes changed during the freeze: the caller may try again.
    #[error("the container changed while it was frozen: {0}")]
    Changed(String),
    /// The target task ended (ESRCH from ptrace, a pidfd or `/proc`) while we worked on
    /// it: it exited or was killed, not a failure of ours.
    #[error("pid {pid} exited or was killed meanwhile ({op})")]
    TargetDied { pid: i32, op: String },
    /// A failpoint of the tests made the operation fail ([`crate::failpoints`]).
    #[error("failpoint {name} ({action})")]
    Failpoint { name: &'static str, action: String },
    #[error("pid {pid}: {op}")]
    Ptrace {
        pid: i32,
        op: String,
        #[source]
        source: PtraceError,
    },
    /// An injected syscall failed in the task.
    #[error("pid {pid}: injected {call} failed: {errno}")]
    Injected { pid: i32, call: String, errno: nix::errno::Errno },
    /// A helper task, made to recreate a session or group whose leader is gone, did not
    /// do its part.
    #[error("helper for {what}: {problem}")]
    Helper { what: String, problem: String },
    #[error("pid {pid}: reading {what}: {reason}")]
    Proc { pid: i32, what: String, reason: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {file}")]
    Image {
        file: String,
        #[source]
        source: migrate_proto::ProtoError,
    },
    /// There is no image where one was named, or not all of it.
    #[error("{0}")]
    NoImage(String),
    /// The image is well-formed but cannot be restored here.
    #[error("cannot restore: {0}")]
    Incompatible(String),
    #[error(transparent)]
    Cgroup(#[from] migrate_cgroup::CgroupError),
    #[error("memory of pid {pid} at {addr:#x}: {op}")]
    Memory {
        pid: i32,
        addr: u64,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A step failed and so did the cleanup after it ([`EngineError::with_cleanup`]): the
    /// failure is the source, the cleanup's error travels with it.
    #[error("failed, and cleaning up after it failed too ({cleanup})")]
    WithCleanup {
        #[source]
        failure: Box<EngineError>,
        cleanup: String,
    },
}

impl EngineError {
    /// This failure, with what `cleanup` (run after it) returned: a failed cleanup is
    /// named beside it rather than lost. A target that died stays
    /// [`EngineError::TargetDied`]: its cleanup cannot but fail.
    pub fn with_cleanup(self, cleanup: Result<(), EngineError>) -> EngineError {
        match (self, cleanup) {
            (failure, Ok(())) | (failure @ EngineError::TargetDied { .. }, Err(_)) => failure,
            (failure, Err(c)) => {
                EngineError::WithCleanup { failure: Box::new(failure), cleanup: migrate_sys::error_chain(&c) }
            }
        }
    }

    pub fn ptrace(pid: i32, op: impl Into<String>) -> impl FnOnce(PtraceError) -> EngineError {
        let op = op.into();
        move |source| {
            if source.is_gone() {
                EngineError::TargetDied { pid, op }
            } else {
                EngineError::Ptrace { pid, op, source }
            }
        }
    }

    /// For a read or write of the task's memory: a task that is gone (ESRCH, or no live
    /// `/proc/PID` any more: its `mem` then reads as empty) is
    /// [`EngineError::TargetDied`].
    pub fn memory(pid: i32, addr: u64, op: &'static str) -> impl FnOnce(std::io::Error) -> EngineError {
        move |source| {
            let gone = source.raw_os_error() == Some(libc::ESRCH)
                || crate::procfs::read_stat(pid).map_or(true, |s| matches!(s.state, 'Z' | 'X'));
            if gone {
                EngineError::TargetDied { pid, op: format!("{op} its memory at {addr:#x}") }
            } else {
                EngineError::Memory { pid, addr, op, source }
            }
        }
    }

    pub fn proc(pid: i32, what: impl Into<String>) -> impl FnOnce(String) -> EngineError {
        let what = what.into();
        move |reason| EngineError::Proc { pid, what, reason }
    }
}

pub fn io_err<'a>(
    op: &'static str,
    path: impl Into<PathBuf> + 'a,
) -> impl FnOnce(std::io::Error) -> EngineError + 'a {
    move |source| EngineError::Io { op, path: path.into(), source }
}

/// Reads `/proc/PID/NAME` as text. A process that is gone is [`EngineError::TargetDied`].
pub fn read_proc(pid: i32, name: &str) -> Result<String, EngineError> {
    let path = format!("/proc/{pid}/{name}");
    std::fs::read_to_string(&path).map_err(|e| proc_err(pid, "read", path)(e))
}

/// For an operation on `/proc/PID/…` or on the task itself: ESRCH, or ENOENT once
/// `/proc/PID` itself is gone, means the task ended, not that we failed.
pub fn proc_err(
    pid: i32,
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.into();
    move |source| {
        let gone = source.raw_os_error() == Some(libc::ESRCH)
            || (source.kind() == std::io::ErrorKind::NotFound
                && !std::path::Path::new(&format!("/proc/{pid}")).exists());
        if gone {
            EngineError::TargetDied { pid, op: format!("{op} {}", path.display()) }
        } else {
            EngineError::Io { op, path, source }
        }
    }
}

/// Everything that stands in the way of a checkpoint, gathered so that one refusal names
/// all of it: a user fixes them together, not one per attempt.
#[derive(Debug, Default)]
pub struct Refusals(Vec<String>);

impl Refusals {
    /// `r`'s value; a refusal is kept (`None`), any other error passes through.
    pub fn gather<T>(&mut self, r: Result<T, EngineError>) -> Result<Option<T>, EngineError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(EngineError::Unsupported(what)) => {
                self.0.push(what);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub fn push(&mut self, what: String) {
        self.0.push(what);
    }

    /// One [`EngineError::Unsupported`] naming every refusal, if there was any.
    pub fn into_result(self) -> Result<(), EngineError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(EngineError::Unsupported(self.0.concat())),
            n => Err(EngineError::Unsupported(format!(
                "{n} things stand in the way:\n  - {}",
                self.0.join("\n  - ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No pid reaches i32::MAX (`pid_max` is at most 2^22).
    const NO_SUCH_PID: i32 = i32::MAX;

    #[test]
    fn a_vanished_target_is_not_our_failure() {
        let read = read_proc(NO_SUCH_PID, "status");
        assert!(matches!(read, Err(EngineError::TargetDied { pid: NO_SUCH_PID, .. })), "{read:?}");
        let seized = migrate_sys::ptrace::Tracee::seize(NO_SUCH_PID, nix::sys::ptrace::Options::empty())
            .map(drop)
            .map_err(EngineError::ptrace(NO_SUCH_PID, "seize"));
        assert!(matches!(seized, Err(EngineError::TargetDied { pid: NO_SUCH_PID, .. })), "{seized:?}");
        // A file that is missing while its process lives is an error of its own.
        let me = std::process::id() as i32;
        assert!(matches!(read_proc(me, "no-such-file"), Err(EngineError::Io { .. })));
    }

    #[test]
    fn a_failed_cleanup_travels_with_the_failure() {
        let failure = || EngineError::Changed("first".into());
        let cleanup = || Err(EngineError::Changed("second".into()));
        assert!(matches!(failure().with_cleanup(Ok(())), EngineError::Changed(_)));
        let both = migrate_sys::error_chain(&failure().with_cleanup(cleanup()));
        assert!(both.contains("first") && both.contains("second"), "{both}");
        let died = EngineError::TargetDied { pid: 1, op: "x".into() };
        assert!(matches!(died.with_cleanup(cleanup()), EngineError::TargetDied { .. }));
    }
}
