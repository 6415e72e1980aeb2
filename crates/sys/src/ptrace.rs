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
    #[error("pid {pid} stopped unexpectedly while running an injected syscall: {what}")]
    UnexpectedStop { pid: i32, what: String },
}

/// `NT_X86_XSTATE` (elf.h): the regset of the XSAVE area.
const NT_X86_XSTATE: usize = 0x202;
/// The largest XSAVE area a CPU has today is ~11 KiB (AMX); room to spare.
const XSTATE_MAX: usize = 64 * 1024;

impl PtraceError {
    /// The task is gone (it exited or was killed): not our failure.
    pub fn is_gone(&self) -> bool {
        match self {
            PtraceError::Op { source, .. } => *source == Errno::ESRCH,
            PtraceError::Gone { .. } => true,
            PtraceError::UnexpectedStop { .. } => false,
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

    /// `PTRACE_INTERRUPT` without waiting: the task stops at its next chance (a frozen
    /// task once it is thawed). Collect the stop with [`Tracee::stopped`].
    pub fn request_stop(&self) -> Result<(), PtraceError> {
        ptrace::interrupt(self.pid).map_err(op_err("PTRACE_INTERRUPT", self.pid))
    }

    /// Waits for the stop that [`Tracee::request_stop`] asked for.
    pub fn stopped(mut self) -> Result<StoppedTracee, PtraceError> {
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
/// How long a task may take to reach a ptrace stop. A task blocked where ptrace cannot
/// stop it (a vfork parent waiting for a frozen child, an uninterruptible sleep on a dead
/// NFS server) would otherwise hang its tracer forever.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until `pid` is in a ptrace stop; returns the signal of a signal-delivery stop.
fn wait_stop(pid: Pid) -> Result<Option<Signal>, PtraceError> {
    let deadline = std::time::Instant::now() + STOP_TIMEOUT;
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::PtraceEvent(_, _, _)) | Ok(WaitStatus::PtraceSyscall(_)) => return Ok(None),
            Ok(WaitStatus::Stopped(_, sig)) => return Ok(Some(sig)),
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                return Err(PtraceError::Gone { pid: pid.as_raw(), status: format!("{status:?}") });
            }
            Ok(WaitStatus::StillAlive) => {
                if std::time::Instant::now() >= deadline {
                    return Err(PtraceError::UnexpectedStop {
                        pid: pid.as_raw(),
                        what: format!(
                            "it did not stop within {STOP_TIMEOUT:?} (blocked where it cannot be stopped, e.g. in vfork)"
                        ),
                    });
                }
                // Stops take microseconds; this only spins while one is late.
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(op_err("waitpid", pid)(e)),
        }
    }
}

impl StoppedTracee {
    /// Takes over a task the kernel attached to us because a tracee created it
    /// (`PTRACE_O_TRACECLONE`): waits for its first stop. The stop's own `SIGSTOP` is not
    /// delivered later.
    pub fn adopt(tid: i32) -> Result<StoppedTracee, PtraceError> {
        let pid = Pid::from_raw(tid);
        wait_stop(pid)?;
        Ok(StoppedTracee { pid, pending: None, armed: true })
    }

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

    /// Runs one injected syscall: sets `regs` (the caller points `rip` at a `syscall`
    /// instruction and fills `rax` and the arguments), single-steps over it and returns
    /// the registers after it (`rax` holds the result). The caller restores the task's
    /// own registers afterwards.
    ///
    /// Signals must be blocked (see [`StoppedTracee::set_sigmask`]) or a signal-delivery
    /// stop could come first; one that comes anyway is an error naming the signal.
    /// `on_clone` receives the tid of a task created by the syscall (with
    /// `PTRACE_O_TRACECLONE`/`TRACEFORK` set, the kernel reports it in an event stop first).
    pub fn run_syscall(
        &mut self,
        regs: libc::user_regs_struct,
        mut on_clone: impl FnMut(i32),
    ) -> Result<libc::user_regs_struct, PtraceError> {
        self.set_regs(regs)?;
        loop {
            ptrace::step(self.pid, None).map_err(op_err("PTRACE_SINGLESTEP", self.pid))?;
            match waitpid(self.pid, Some(WaitPidFlag::__WALL)) {
                Ok(WaitStatus::Stopped(_, Signal::SIGTRAP)) => break,
                Ok(WaitStatus::PtraceEvent(
                    _,
                    _,
                    libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK,
                )) => {
                    let msg = ptrace::getevent(self.pid).map_err(op_err("PTRACE_GETEVENTMSG", self.pid))?;
                    on_clone(msg as i32);
                }
                Ok(WaitStatus::Stopped(_, sig)) => {
                    return Err(PtraceError::UnexpectedStop {
                        pid: self.pid.as_raw(),
                        what: format!("signal {sig}"),
                    });
                }
                Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                    self.armed = false;
                    return Err(PtraceError::Gone { pid: self.pid.as_raw(), status: format!("{status:?}") });
                }
                Ok(other) => {
                    return Err(PtraceError::UnexpectedStop {
                        pid: self.pid.as_raw(),
                        what: format!("{other:?}"),
                    });
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(op_err("waitpid", self.pid)(e)),
            }
        }
        self.pending = None;
        self.regs()
    }

    /// The extended register state (`PTRACE_GETREGSET NT_X86_XSTATE`): x87, SSE, AVX, …
    pub fn xstate(&self) -> Result<Vec<u8>, PtraceError> {
        let mut buf = vec![0u8; XSTATE_MAX];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: PTRACE_GETREGSET writes at most `iov_len` bytes into the live buffer
        // `buf` and stores the length it wrote back into `iov`, which outlives the call.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGSET,
                self.pid.as_raw(),
                NT_X86_XSTATE,
                &mut iov as *mut libc::iovec,
            )
        };
        if r < 0 {
            return Err(op_err("PTRACE_GETREGSET NT_X86_XSTATE", self.pid)(Errno::last()));
        }
        buf.truncate(iov.iov_len);
        Ok(buf)
    }

    /// `PTRACE_SETREGSET NT_X86_XSTATE` with a buffer from [`StoppedTracee::xstate`].
    pub fn set_xstate(&self, xstate: &[u8]) -> Result<(), PtraceError> {
        let mut buf = xstate.to_vec();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: the kernel reads at most `iov_len` bytes from the live buffer `buf`.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_SETREGSET,
                self.pid.as_raw(),
                NT_X86_XSTATE,
                &mut iov as *mut libc::iovec,
            )
        };
        if r < 0 {
            return Err(op_err("PTRACE_SETREGSET NT_X86_XSTATE", self.pid)(Errno::last()));
        }
        Ok(())
    }

    /// The blocked-signal mask (`PTRACE_GETSIGMASK`), bit n-1 for signal n.
    pub fn sigmask(&self) -> Result<u64, PtraceError> {
        let mut mask = 0u64;
        // SAFETY: the kernel writes `addr` = 8 bytes into the live u64 `mask`.
        let r = unsafe {
            libc::ptrace(libc::PTRACE_GETSIGMASK, self.pid.as_raw(), 8usize, &mut mask as *mut u64)
        };
        if r < 0 {
            return Err(op_err("PTRACE_GETSIGMASK", self.pid)(Errno::last()));
        }
        Ok(mask)
    }

    /// `PTRACE_SETSIGMASK` (SIGKILL and SIGSTOP stay unblockable, as always).
    pub fn set_sigmask(&self, mask: u64) -> Result<(), PtraceError> {
        let mut mask = mask;
        // SAFETY: the kernel reads `addr` = 8 bytes from the live u64 `mask`.
        let r = unsafe {
            libc::ptrace(libc::PTRACE_SETSIGMASK, self.pid.as_raw(), 8usize, &mut mask as *mut u64)
        };
        if r < 0 {
            return Err(op_err("PTRACE_SETSIGMASK", self.pid)(Errno::last()));
        }
        Ok(())
    }

    /// The queued signals (`PTRACE_PEEKSIGINFO`): the thread's own, or with `shared` the
    /// whole process's. Each entry is the kernel's 128-byte `siginfo_t`.
    pub fn pending_signals(&self, shared: bool) -> Result<Vec<[u8; 128]>, PtraceError> {
        #[repr(C)]
        struct PeekArgs {
            off: u64,
            flags: u32,
            nr: i32,
        }
        const _: () = assert!(std::mem::size_of::<PeekArgs>() == 16);
        let mut out = Vec::new();
        loop {
            let mut buf = [[0u8; 128]; 16];
            let mut args = PeekArgs { off: out.len() as u64, flags: u32::from(shared), nr: buf.len() as i32 };
            // SAFETY: `args` is a live ptrace_peeksiginfo_args; the kernel writes at most
            // `nr` siginfo_t (128 bytes each) into the live buffer `buf`.
            let n = unsafe {
                libc::ptrace(
                    libc::PTRACE_PEEKSIGINFO,
                    self.pid.as_raw(),
                    &mut args as *mut PeekArgs,
                    buf.as_mut_ptr(),
                )
            };
            if n < 0 {
                return Err(op_err("PTRACE_PEEKSIGINFO", self.pid)(Errno::last()));
            }
            let n = n as usize;
            out.extend_from_slice(&buf[..n.min(buf.len())]);
            if n < buf.len() {
                return Ok(out);
            }
        }
    }

    /// The thread's rseq registration, if any (`PTRACE_GET_RSEQ_CONFIGURATION`):
    /// `(address, length, signature)`.
    pub fn rseq(&self) -> Result<Option<(u64, u32, u32)>, PtraceError> {
        let mut conf = linux_raw_sys::ptrace::ptrace_rseq_configuration {
            rseq_abi_pointer: 0,
            rseq_abi_size: 0,
            signature: 0,
            flags: 0,
            pad: 0,
        };
        let size = std::mem::size_of_val(&conf);
        // SAFETY: the kernel writes at most `size` bytes into the live struct `conf`.
        let r = unsafe {
            libc::ptrace(
                linux_raw_sys::ptrace::PTRACE_GET_RSEQ_CONFIGURATION as libc::c_uint,
                self.pid.as_raw(),
                size,
                &mut conf as *mut linux_raw_sys::ptrace::ptrace_rseq_configuration,
            )
        };
        if r < 0 {
            return Err(op_err("PTRACE_GET_RSEQ_CONFIGURATION", self.pid)(Errno::last()));
        }
        Ok((conf.rseq_abi_pointer != 0).then_some((
            conf.rseq_abi_pointer,
            conf.rseq_abi_size,
            conf.signature,
        )))
    }

    /// The thread's robust futex list: `(head, len)` (`get_robust_list`).
    pub fn robust_list(&self) -> Result<(u64, u64), PtraceError> {
        let mut head: u64 = 0;
        let mut len: usize = 0;
        // SAFETY: the kernel writes one pointer into `head` and one size into `len`,
        // both live locals.
        let r = unsafe {
            libc::syscall(
                libc::SYS_get_robust_list,
                self.pid.as_raw(),
                &mut head as *mut u64,
                &mut len as *mut usize,
            )
        };
        if r < 0 {
            return Err(op_err("get_robust_list", self.pid)(Errno::last()));
        }
        Ok((head, len as u64))
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
