//! One thread: dumped from its ptrace stop, rebuilt in a task created by an injected
//! `clone3` (or, for a main thread, in the restore stub or the forked child itself).
//!
//! Registers and xstate travel as the kernel gives them. A thread stopped inside an
//! interrupted syscall is set up to restart it; one that the kernel would restart
//! through `restart_syscall` (`-ERESTART_RESTARTBLOCK`, e.g. `nanosleep`) cannot carry
//! that state to another kernel and gets `EINTR` instead, as in CRIU.

use migrate_proto::records::{AltStack, Regs, Rseq, SigInfo, ThreadRecord};

use crate::error::EngineError;
use crate::inject::{Remote, Task};

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;
const PR_GET_TID_ADDRESS: u64 = 40;
const RSEQ_FLAG_UNREGISTER: u64 = 1;

/// Copies the 27 registers field by field between the kernel's `user_regs_struct` and
/// our `Regs` (same names, same order), in either direction.
macro_rules! copy_regs {
    ($to:ident, $r:expr) => {
        $to {
            r15: $r.r15,
            r14: $r.r14,
            r13: $r.r13,
            r12: $r.r12,
            rbp: $r.rbp,
            rbx: $r.rbx,
            r11: $r.r11,
            r10: $r.r10,
            r9: $r.r9,
            r8: $r.r8,
            rax: $r.rax,
            rcx: $r.rcx,
            rdx: $r.rdx,
            rsi: $r.rsi,
            rdi: $r.rdi,
            orig_rax: $r.orig_rax,
            rip: $r.rip,
            cs: $r.cs,
            eflags: $r.eflags,
            rsp: $r.rsp,
            ss: $r.ss,
            fs_base: $r.fs_base,
            gs_base: $r.gs_base,
            ds: $r.ds,
            es: $r.es,
            fs: $r.fs,
            gs: $r.gs,
        }
    };
}

use libc::user_regs_struct;

pub fn regs_from(r: &user_regs_struct) -> Regs {
    copy_regs!(Regs, r)
}

/// The registers to resume with: a syscall the dump interrupted is restarted (or fails
/// with EINTR where only the kernel's own restart block could have resumed it).
pub fn resume_regs(r: &Regs) -> libc::user_regs_struct {
    let mut out = copy_regs!(user_regs_struct, r);
    if (r.orig_rax as i64) >= 0 {
        match -(r.rax as i64) {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                // Back onto the 2-byte `syscall` instruction, with its number again.
                out.rax = r.orig_rax;
                out.rip = r.rip.wrapping_sub(2);
            }
            ERESTART_RESTARTBLOCK => out.rax = (-(libc::EINTR as i64)) as u64,
            _ => {}
        }
    }
    // The kernel must not apply its own restart logic on top of ours.
    out.orig_rax = u64::MAX;
    out
}

/// Dumps the thread `remote.task` (signals blocked, `mask` its real mask).
pub fn dump(remote: &mut Remote<'_>, mask: u64) -> Result<ThreadRecord, EngineError> {
    let (tid, pid) = (remote.task.tid, remote.pid);
    let tracee = &remote.task.tracee;
    let xstate = tracee.xstate().map_err(EngineError::ptrace(tid, "read xstate"))?;
    let rseq = tracee
        .rseq()
        .map_err(EngineError::ptrace(tid, "read the rseq registration"))?
        .map(|(addr, len, signature)| Rseq { addr, len, signature });
    let robust_list = tracee.robust_list().map_err(EngineError::ptrace(tid, "read the robust futex list"))?;
    remote.call(libc::SYS_prctl, &[PR_GET_TID_ADDRESS, remote.scratch.addr], || {
        "prctl(PR_GET_TID_ADDRESS)".into()
    })?;
    let clear_child_tid = u64::from_ne_bytes(remote.read(0, 8)?.try_into().unwrap_or([0; 8]));
    remote.call(libc::SYS_sigaltstack, &[0, remote.scratch.addr], || "sigaltstack".into())?;
    let ss = remote.read(0, 24)?;
    let word = |i: usize| u64::from_ne_bytes(ss[i..i + 8].try_into().unwrap_or([0; 8]));
    let altstack = AltStack { sp: word(0), flags: word(8) as i32, size: word(16) };
    let pending = siginfos(
        remote
            .task
            .tracee
            .pending_signals(false)
            .map_err(EngineError::ptrace(tid, "read pending signals"))?,
    );
    let comm = crate::error::read_proc(pid, &format!("task/{tid}/comm"))?.trim_end_matches('\n').to_string();
    Ok(ThreadRecord {
        tid: 0, // filled in by the caller, in the container's pid namespace
        comm,
        regs: regs_from(&remote.task.saved),
        xstate,
        sigmask: mask,
        rseq,
        robust_list,
        clear_child_tid,
        altstack,
        pending,
        sched: crate::sched::dump(tid)?,
        attrs: crate::attrs::dump_thread(remote)?,
    })
}

pub fn siginfos(raw: Vec<[u8; 128]>) -> Vec<SigInfo> {
    raw.into_iter()
        .map(|b| SigInfo { signo: i32::from_ne_bytes(b[..4].try_into().unwrap_or([0; 4])), raw: b.to_vec() })
        .collect()
}

/// Unregisters the rseq area a restore stub's libc registered, before its memory goes.
pub fn forget_rseq(task: &mut Task, gadget: u64) -> Result<(), EngineError> {
    let tid = task.tid;
    if let Some((addr, len, sig)) =
        task.tracee.rseq().map_err(EngineError::ptrace(tid, "read the rseq registration"))?
    {
        task.call(
            gadget,
            libc::SYS_rseq,
            &[addr, u64::from(len), RSEQ_FLAG_UNREGISTER, u64::from(sig)],
            || "rseq unregister".into(),
        )?;
    }
    Ok(())
}

/// Rebuilds a thread's state in `remote.task` (signals blocked); returns the mask to
/// resume with. `rec.tid` and `tgid_in_ns` are as the container sees them.
pub fn restore(remote: &mut Remote<'_>, rec: &ThreadRecord, tgid_in_ns: i32) -> Result<u64, EngineError> {
    let tid = remote.task.tid;
    remote.call(libc::SYS_set_robust_list, &[rec.robust_list.0, rec.robust_list.1], || {
        format!("set_robust_list({:#x})", rec.robust_list.0)
    })?;
    remote.call(libc::SYS_set_tid_address, &[rec.clear_child_tid], || "set_tid_address".into())?;
    if let Some(r) = rec.rseq {
        remote.call(libc::SYS_rseq, &[r.addr, u64::from(r.len), 0, u64::from(r.signature)], || {
            format!("rseq({:#x})", r.addr)
        })?;
    }
    let a = rec.altstack;
    // SS_ONSTACK is a state, not a setting: the kernel derives it from the stack pointer.
    let flags = (a.flags & !libc::SS_ONSTACK) as u32 as u64;
    let mut ss = Vec::with_capacity(24);
    ss.extend_from_slice(&a.sp.to_ne_bytes());
    ss.extend_from_slice(&flags.to_ne_bytes());
    ss.extend_from_slice(&a.size.to_ne_bytes());
    let at = remote.write(0, &ss)?;
    remote.call(libc::SYS_sigaltstack, &[at, 0], || format!("sigaltstack({:#x})", a.sp))?;
    for sig in &rec.pending {
        let at = remote.write(0, &sig.raw)?;
        remote.call(
            libc::SYS_rt_tgsigqueueinfo,
            &[tgid_in_ns as u64, rec.tid as u64, sig.signo as u64, at],
            || format!("rt_tgsigqueueinfo(signal {})", sig.signo),
        )?;
    }
    let at = remote.path(0, &rec.comm)?;
    remote.call(libc::SYS_prctl, &[libc::PR_SET_NAME as u64, at], || {
        format!("prctl(PR_SET_NAME, {:?})", rec.comm)
    })?;
    let task = &mut *remote.task;
    task.tracee.set_xstate(&rec.xstate).map_err(EngineError::ptrace(tid, "write xstate"))?;
    task.saved = resume_regs(&rec.regs);
    task.tracee.set_regs(task.saved).map_err(EngineError::ptrace(tid, "write registers"))?;
    Ok(rec.sigmask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(rax: i64, orig: i64) -> Regs {
        let mut r = regs_from(&zero_regs());
        r.rax = rax as u64;
        r.orig_rax = orig as u64;
        r.rip = 0x1002;
        r
    }

    fn zero_regs() -> libc::user_regs_struct {
        resume_regs(&Regs {
            r15: 0,
            r14: 0,
            r13: 0,
            r12: 0,
            rbp: 0,
            rbx: 0,
            r11: 0,
            r10: 0,
            r9: 0,
            r8: 0,
            rax: 0,
            rcx: 0,
            rdx: 0,
            rsi: 0,
            rdi: 0,
            orig_rax: u64::MAX,
            rip: 0,
            cs: 0,
            eflags: 0,
            rsp: 0,
            ss: 0,
            fs_base: 0,
            gs_base: 0,
            ds: 0,
            es: 0,
            fs: 0,
            gs: 0,
        })
    }

    #[test]
    fn interrupted_syscalls_restart_or_fail_with_eintr() {
        let r = resume_regs(&regs(-ERESTARTSYS, 7));
        assert_eq!((r.rax, r.rip, r.orig_rax), (7, 0x1000, u64::MAX));
        let r = resume_regs(&regs(-ERESTART_RESTARTBLOCK, 35));
        assert_eq!((r.rax as i64, r.rip), (-(libc::EINTR as i64), 0x1002));
        // A finished syscall's result and a non-syscall stop are left alone.
        let r = resume_regs(&regs(3, 0));
        assert_eq!((r.rax, r.rip), (3, 0x1002));
        let r = resume_regs(&regs(-ERESTARTSYS, -1));
        assert_eq!((r.rax as i64, r.rip), (-ERESTARTSYS, 0x1002));
    }
}
