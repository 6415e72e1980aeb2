//! `clone3` (Linux 5.3) with `set_tid` (5.5): creating a process at a chosen pid, which
//! restore needs so that every pid and tid of the tree matches the dump (design §5).
//!
//! `set_tid[i]` is the pid wanted in the i-th namespace counted from the *innermost*
//! one; it needs `CAP_SYS_ADMIN` or `CAP_CHECKPOINT_RESTORE` over every namespace whose
//! pid is chosen. A fresh pid namespace starts at 1: its first process, whatever it asks,
//! is its init, and only once it exists can other pids be chosen in it.
//!
//! Without `CLONE_VM`, `clone3` forks: the child gets a copy of the caller's memory and
//! only the calling thread. [`clone3`] is therefore unsafe for the same reason as
//! `fork`: in the child of a multi-threaded process, locks other threads held stay held.
//! [`verify_set_tid`] is a safe, self-contained use whose children make raw syscalls only.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use linux_raw_sys::general as g;

const _: () = assert!(size_of::<g::clone_args>() == g::CLONE_ARGS_SIZE_VER2 as usize);

/// Flags that would make the child share the caller's memory or thread state, which a
/// fork-like call cannot allow: the child would run on the caller's stack.
const REFUSED_FLAGS: u64 = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND | libc::CLONE_SETTLS)
    as u64
    | (libc::CLONE_VFORK as u64)
    | (libc::CLONE_PARENT_SETTID | libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64;

/// The arguments of a fork-like [`clone3`].
#[derive(Debug, Clone, Default)]
pub struct CloneArgs {
    /// `CLONE_NEW*` namespace flags, `CLONE_PIDFD`, `CLONE_PARENT`, `CLONE_INTO_CGROUP`, …
    pub flags: u64,
    /// The signal sent to the parent when the child exits (usually `SIGCHLD`).
    pub exit_signal: u64,
    /// The pid wanted in each pid namespace, innermost first (empty: any).
    pub set_tid: Vec<libc::pid_t>,
    /// With `CLONE_INTO_CGROUP`: an fd of the cgroup v2 directory the child starts in.
    pub cgroup: Option<RawFd>,
}

/// Which side of a [`clone3`] the caller is on.
#[derive(Debug)]
pub enum Clone3Result {
    /// In the parent: the child's pid (in the caller's namespace), and its pidfd when
    /// `CLONE_PIDFD` was asked.
    Parent { pid: libc::pid_t, pidfd: Option<OwnedFd> },
    /// In the child.
    Child,
}

/// `clone3(args)` without a new stack: a fork with namespaces, pids and a cgroup chosen.
///
/// Flags that share memory or thread state with the caller (`CLONE_VM`, `CLONE_THREAD`,
/// `CLONE_SETTLS`, …) are refused with `EINVAL`.
///
/// # Safety
///
/// As for `fork`: if the calling process has other threads, the child may only make
/// async-signal-safe calls (raw syscalls, no allocation, no locks) until it `exec`s or
/// `_exit`s; it must never return into code that assumes the other threads exist.
pub unsafe fn clone3(args: &CloneArgs) -> io::Result<Clone3Result> {
    if args.flags & REFUSED_FLAGS != 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut pidfd: RawFd = -1;
    let raw = g::clone_args {
        flags: args.flags,
        pidfd: &mut pidfd as *mut RawFd as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: args.exit_signal,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: if args.set_tid.is_empty() { 0 } else { args.set_tid.as_ptr() as u64 },
        set_tid_size: args.set_tid.len() as u64,
        cgroup: args.cgroup.map_or(0, |fd| fd as u64),
    };
    // SAFETY: `raw` is a complete `clone_args` of the size passed; the pointers in it
    // (`pidfd`, `set_tid`) refer to live locals for the duration of the call. No flag
    // that shares memory or the stack is set (checked above), so the child runs on a
    // copy of this stack; the caller upholds the fork rules for what the child does.
    let ret =
        unsafe { libc::syscall(libc::SYS_clone3, &raw as *const g::clone_args, size_of::<g::clone_args>()) };
    match ret {
        r if r < 0 => Err(io::Error::last_os_error()),
        0 => Ok(Clone3Result::Child),
        pid => {
            let pidfd = (args.flags & libc::CLONE_PIDFD as u64 != 0 && pidfd >= 0)
                // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor in `pidfd`.
                .then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
            Ok(Clone3Result::Parent { pid: pid as libc::pid_t, pidfd })
        }
    }
}

/// Why [`verify_set_tid`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SetTidError {
    #[error("clone3 with set_tid [{tid}]")]
    Clone {
        tid: libc::pid_t,
        #[source]
        source: io::Error,
    },
    #[error("asked for pid {wanted}, the child got another one")]
    WrongPid { wanted: libc::pid_t },
    #[error("the child failed unexpectedly (wait status {status:#x})")]
    Child { status: i32 },
    #[error("waiting for the child")]
    Wait(#[source] io::Error),
}

// Exit codes of the children of `verify_set_tid`.
const EXIT_WRONG_PID: i32 = 90;
const EXIT_WAIT_FAILED: i32 = 91;
const EXIT_CLONE_ERRNO_BASE: i32 = 100;

/// Checks that `clone3` can choose pids in a *fresh* pid namespace: creates its init
/// with `set_tid = [1]`, which creates a child with `set_tid = [inner]` and checks that
/// it really has pid `inner`.
///
/// The caller's pid namespace for children must be new and empty (e.g. a process after
/// `unshare(CLONE_NEWPID)`, or a thread that did it): otherwise the first `clone3` gets
/// `EEXIST`. Both children only make raw syscalls, so this is safe from any thread.
pub fn verify_set_tid(inner: libc::pid_t) -> Result<(), SetTidError> {
    let init_args = CloneArgs { exit_signal: libc::SIGCHLD as u64, set_tid: vec![1], ..CloneArgs::default() };
    // Everything the children use is prepared here: they must not allocate.
    let inner_args =
        CloneArgs { exit_signal: libc::SIGCHLD as u64, set_tid: vec![inner], ..CloneArgs::default() };
    // SAFETY: the child only calls `init_main`, which makes raw syscalls (`getpid`,
    // `clone3`, `wait4`, `_exit`) on data prepared before the fork, and never returns.
    let pid = match unsafe { clone3(&init_args) } {
        Ok(Clone3Result::Child) => init_main(&inner_args, inner),
        Ok(Clone3Result::Parent { pid, .. }) => pid,
        Err(source) => return Err(SetTidError::Clone { tid: 1, source }),
    };
    let status = wait_raw(pid).map_err(SetTidError::Wait)?;
    if !libc::WIFEXITED(status) {
        return Err(SetTidError::Child { status });
    }
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        EXIT_WRONG_PID => Err(SetTidError::WrongPid { wanted: inner }),
        code @ EXIT_CLONE_ERRNO_BASE.. => Err(SetTidError::Clone {
            tid: inner,
            source: io::Error::from_raw_os_error(code - EXIT_CLONE_ERRNO_BASE),
        }),
        _ => Err(SetTidError::Child { status }),
    }
}

/// `wait4(pid)`, retried on EINTR; returns the raw status.
fn wait_raw(pid: libc::pid_t) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live int; no rusage is asked for.
        let r = unsafe { libc::wait4(pid, &mut status, 0, std::ptr::null_mut()) };
        if r == pid {
            return Ok(status);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

fn raw_getpid() -> libc::pid_t {
    // SAFETY: plain syscall without arguments (not glibc's wrapper, nothing cached).
    unsafe { libc::syscall(libc::SYS_getpid) as libc::pid_t }
}

fn raw_exit(code: i32) -> ! {
    // SAFETY: ends the forked child without running exit handlers that belong to the
    // parent process.
    unsafe { libc::_exit(code) }
}

/// The init of the new namespace, in a forked child: raw syscalls only.
fn init_main(inner_args: &CloneArgs, inner: libc::pid_t) -> ! {
    if raw_getpid() != 1 {
        raw_exit(EXIT_WRONG_PID);
    }
    // SAFETY: this process is single-threaded (a fork child); the grandchild only calls
    // getpid and _exit.
    let pid = match unsafe { clone3(inner_args) } {
        Ok(Clone3Result::Child) => raw_exit(if raw_getpid() == inner { 0 } else { EXIT_WRONG_PID }),
        Ok(Clone3Result::Parent { pid, .. }) => pid,
        Err(e) => raw_exit((EXIT_CLONE_ERRNO_BASE + e.raw_os_error().unwrap_or(0)).min(255)),
    };
    if pid != inner {
        raw_exit(EXIT_WRONG_PID);
    }
    match wait_raw(pid) {
        Ok(status) if libc::WIFEXITED(status) => raw_exit(libc::WEXITSTATUS(status)),
        _ => raw_exit(EXIT_WAIT_FAILED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a new thread whose children go to a new pid namespace (the namespace
    /// for children is per thread, so the test process itself is untouched).
    fn in_new_pidns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
                    .expect("unshare(CLONE_NEWPID) as root");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    #[test]
    fn set_tid_in_a_fresh_pid_namespace() {
        let r = in_new_pidns(|| verify_set_tid(4242));
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn set_tid_taken_pid_is_reported() {
        // 1 is the init itself: asking for it again must fail with EEXIST.
        let r = in_new_pidns(|| verify_set_tid(1));
        match r {
            Err(SetTidError::Clone { tid: 1, source }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EEXIST))
            }
            other => panic!("expected EEXIST, got {other:?}"),
        }
    }

    #[test]
    fn memory_sharing_flags_are_refused() {
        let args = CloneArgs { flags: libc::CLONE_VM as u64, ..CloneArgs::default() };
        // SAFETY: refused before any syscall, so no child exists.
        let r = unsafe { clone3(&args) };
        assert_eq!(r.err().and_then(|e| e.raw_os_error()), Some(libc::EINVAL));
    }
}
