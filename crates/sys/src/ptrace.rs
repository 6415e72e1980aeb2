//! ptrace as a typestate: a [`Tracee`] is seized and running; only a [`StoppedTracee`]
//! exposes registers, and resuming or detaching consumes it (after reverie's safeptrace).
//!
//! `PTRACE_SEIZE` (not `ATTACH`) is used: it sends no `SIGSTOP`, and `PTRACE_INTERRUPT`
//! then stops the task in a `PTRACE_EVENT_STOP` — also a task frozen by the cgroup
//! freezer, at once (design §4). Dropping a handle detaches the task (stopping it first
//! if it runs, since the kernel only detaches stopped tracees), so a failed dump never
//! leaves a task traced by a tracer that moved on.
//!
//! The calls are nix's; this module adds the states, the waiting and the errors. Every
//! ptrace request must come from the thread that seized the task.

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// A failed ptrace operation.
#[derive(Debug, thiserror::Error)]
pub enum PtraceError {
    #[error("{op} of pid {pid}")]
    Op {
        op: &'static str,
        pid: i32,
        #[source]
        source: Errno,
    },
    #[error("pid {pid} ended while traced ({status})")]
    Gone { pid: i32, status: String },
}

impl PtraceError {
    /// The task is gone (it exited or was killed): not our failure.
    pub fn is_gone(&self) -> bool {
        match self {
            PtraceError::Op { source, .. } => *source == Errno::ESRCH,
            PtraceError::Gone { .. } => true,
        }
    }
}

fn op_err(op: &'static str, pid: Pid) -> impl FnOnce(Errno) -> PtraceError {
    move |source| PtraceError::Op { op, pid: pid.as_raw(), source }
}

/// A seized task, possibly running.
#[derive(Debug)]
pub struct Tracee {
    pid: Pid,
    /// False once the handle was consumed into another state (no detach on drop).
    armed: bool,
}

/// A seized task in a ptrace stop: its registers can be read and written.
#[derive(Debug)]
pub struct StoppedTracee {
    pid: Pid,
    /// The signal of a signal-delivery stop, delivered when the task resumes.
    pending: Option<Signal>,
    armed: bool,
}

impl Tracee {
    /// `PTRACE_SEIZE` with `options` (e.g. `PTRACE_O_TRACESYSGOOD`).
    pub fn seize(pid: i32, options: ptrace::Options) -> Result<Tracee, PtraceError> {
        let pid = Pid::from_raw(pid);
        ptrace::seize(pid, options).map_err(op_err("PTRACE_SEIZE", pid))?;
        Ok(Tracee { pid, armed: true })
    }

    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// `PTRACE_INTERRUPT`, then waits for the task's stop.
    pub fn interrupt(mut self) -> Result<StoppedTracee, PtraceError> {
        ptrace::interrupt(self.pid).map_err(op_err("PTRACE_INTERRUPT", self.pid))?;
        let pending = wait_stop(self.pid)?;
        self.armed = false;
        Ok(StoppedTracee { pid: self.pid, pending, armed: true })
    }

    /// Stops the task and detaches from it.
    pub fn detach(self) -> Result<(), PtraceError> {
        self.interrupt()?.detach()
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if self.armed && ptrace::interrupt(self.pid).is_ok() && wait_stop(self.pid).is_ok() {
            let _ = ptrace::detach(self.pid, None);
        }
    }
}

/// Waits until `pid` is in a ptrace stop; returns the signal of a signal-delivery stop.
fn wait_stop(pid: Pid) -> Result<Option<Signal>, PtraceError> {
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::PtraceEvent(_, _, _)) | Ok(WaitStatus::PtraceSyscall(_)) => return Ok(None),
            Ok(WaitStatus::Stopped(_, sig)) => return Ok(Some(sig)),
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                return Err(PtraceError::Gone { pid: pid.as_raw(), status: format!("{status:?}") });
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(op_err("waitpid", pid)(e)),
        }
    }
}

impl StoppedTracee {
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// The signal that stopped the task, if this is a signal-delivery stop; it is
    /// delivered when the task resumes or is detached.
    pub fn pending_signal(&self) -> Option<Signal> {
        self.pending
    }

    /// `PTRACE_GETREGS`.
    pub fn regs(&self) -> Result<libc::user_regs_struct, PtraceError> {
        ptrace::getregs(self.pid).map_err(op_err("PTRACE_GETREGS", self.pid))
    }

    /// `PTRACE_SETREGS`.
    pub fn set_regs(&self, regs: libc::user_regs_struct) -> Result<(), PtraceError> {
        ptrace::setregs(self.pid, regs).map_err(op_err("PTRACE_SETREGS", self.pid))
    }

    /// `PTRACE_CONT`: the task runs on, still traced.
    pub fn resume(mut self) -> Result<Tracee, PtraceError> {
        ptrace::cont(self.pid, self.pending).map_err(op_err("PTRACE_CONT", self.pid))?;
        self.armed = false;
        Ok(Tracee { pid: self.pid, armed: true })
    }

    /// `PTRACE_DETACH`: the task runs on, untraced.
    pub fn detach(mut self) -> Result<(), PtraceError> {
        self.armed = false;
        ptrace::detach(self.pid, self.pending).map_err(op_err("PTRACE_DETACH", self.pid))
    }
}

impl Drop for StoppedTracee {
    fn drop(&mut self) {
        if self.armed {
            let _ = ptrace::detach(self.pid, self.pending);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn seize_interrupt_getregs_detach() -> Result<(), Box<dyn std::error::Error>> {
        let mut child = Command::new("sleep").arg("30").spawn()?;
        let result = (|| -> Result<(), Box<dyn std::error::Error>> {
            let t = Tracee::seize(child.id() as i32, ptrace::Options::empty())?;
            let stopped = t.interrupt()?;
            assert_eq!(stopped.pending_signal(), None);
            let regs = stopped.regs()?;
            assert!(regs.rip != 0 && regs.rsp != 0);
            let running = stopped.resume()?;
            running.detach()?;
            // Detached: a second seize works.
            drop(Tracee::seize(child.id() as i32, ptrace::Options::empty())?);
            Ok(())
        })();
        child.kill()?;
        child.wait()?;
        result
    }

    #[test]
    fn seize_missing_process() {
        let err = Tracee::seize(i32::MAX, ptrace::Options::empty()).err();
        assert!(err.as_ref().is_some_and(PtraceError::is_gone), "{err:?}");
    }
}
