//! Spawning children that must change their own kernel context (namespaces, cgroup,
//! mounts, session) between `fork` and `exec`.
//!
//! The code that runs in the child after `fork` may only make async-signal-safe calls:
//! the parent may be multi-threaded (the agent runs on tokio), and a lock held by another
//! thread at the fork stays locked forever in the child. So the child's work is not an
//! arbitrary closure but a list of [`Step`]s, prepared completely (paths turned into
//! `CString`s, files opened) in the parent; the child only issues raw syscalls.
//! When a step fails, the child reports which one through a pipe, so the error that
//! reaches the user names the step and not just an errno.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};

/// One thing the child does to itself before `exec`, in order.
#[derive(Debug)]
pub enum Step {
    /// `write(fd, bytes)`, e.g. `"0"` into an open `cgroup.procs` to join that cgroup.
    Write { fd: OwnedFd, bytes: Vec<u8>, what: String },
    /// `setns(fd, nstype)` into the namespace the fd refers to.
    SetNs { fd: OwnedFd, nstype: libc::c_int, what: String },
    /// `unshare(flags)`.
    Unshare { flags: libc::c_int },
    /// `setsid()`: a new session, no controlling terminal.
    SetSid,
    /// `sethostname(name)` (in the child's UTS namespace).
    Hostname(CString),
    /// `mount(source, target, fstype, flags, data)`.
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// `dup2(fd, target)`: hand `fd` to the new program at a known number (without
    /// `FD_CLOEXEC`).
    Dup2 { fd: OwnedFd, target: RawFd },
    /// Marks every fd from `first` up close-on-exec (`close_range` with
    /// `CLOSE_RANGE_CLOEXEC`): the new program inherits nothing its parent happened to
    /// hold (a shell's stray fds, a runtime's sockets). Marking rather than closing keeps
    /// the pipe that reports a failed `exec` working.
    CloexecFrom(RawFd),
    /// `fork()`; the parent waits for the child and exits with its status, the child goes
    /// on with the next step. Needed after `setns` into a pid or time namespace, which
    /// only the caller's children enter. `Command::spawn` then returns when the program
    /// has finished, and `wait` gives its status.
    ForkAndWait,
}

impl Step {
    /// A step that joins the cgroup whose `cgroup.procs` is at `procs`.
    pub fn join_cgroup(procs: &Path) -> io::Result<Step> {
        let fd = std::fs::OpenOptions::new().write(true).open(procs)?;
        Ok(Step::Write {
            fd: fd.into(),
            bytes: b"0".to_vec(),
            what: format!("join cgroup {}", procs.display()),
        })
    }

    /// A step that enters the namespace at `path` (`/proc/PID/ns/net`, `/run/netns/x`).
    pub fn enter_ns(path: &Path, nstype: libc::c_int) -> io::Result<Step> {
        let fd = std::fs::File::open(path)?;
        Ok(Step::SetNs { fd: fd.into(), nstype, what: format!("enter namespace {}", path.display()) })
    }

    /// A step that mounts a fresh instance of `fstype` at `target`.
    pub fn mount_fs(
        fstype: &str,
        target: &str,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<Step> {
        Ok(Step::Mount {
            source: Some(cstring(fstype.as_bytes())?),
            target: cstring(target.as_bytes())?,
            fstype: Some(cstring(fstype.as_bytes())?),
            flags,
            data: data.map(|d| cstring(d.as_bytes())).transpose()?,
        })
    }

    /// A step that changes the propagation of every mount under `target` (e.g.
    /// `MS_REC | MS_PRIVATE` on `/`, so that the child's mounts never reach the host).
    pub fn remount_propagation(target: &str, flags: libc::c_ulong) -> io::Result<Step> {
        Ok(Step::Mount { source: None, target: cstring(target.as_bytes())?, fstype: None, flags, data: None })
    }

    /// A step that hands a copy of `fd` to the new program as fd number `target`.
    ///
    /// The copy is made now, above every number a caller passes as `target`, so that one
    /// `Dup2` can never overwrite the source of the next.
    pub fn pass_fd(fd: std::os::fd::BorrowedFd<'_>, target: RawFd) -> io::Result<Step> {
        // SAFETY: F_DUPFD_CLOEXEC duplicates an open descriptor (borrowed, so open for the
        // call) to the lowest free number >= 100; it does not touch memory.
        let copy = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) })?;
        // SAFETY: `copy` was just returned by the kernel and is owned by nobody else.
        Ok(Step::Dup2 { fd: unsafe { OwnedFd::from_raw_fd(copy) }, target })
    }

    /// A step that sets the hostname.
    pub fn hostname(name: &str) -> io::Result<Step> {
        Ok(Step::Hostname(cstring(name.as_bytes())?))
    }

    fn describe(&self) -> String {
        match self {
            Step::Write { what, .. } | Step::SetNs { what, .. } => what.clone(),
            Step::Unshare { flags } => format!("unshare namespaces {flags:#x}"),
            Step::SetSid => "setsid".into(),
            Step::Hostname(h) => format!("set hostname {h:?}"),
            Step::Mount { target, fstype, .. } => {
                format!(
                    "mount {} on {}",
                    fstype.as_deref().map_or("(propagation)".into(), |f| f.to_string_lossy()),
                    target.to_string_lossy()
                )
            }
            Step::Dup2 { target, .. } => format!("pass a file descriptor as fd {target}"),
            Step::CloexecFrom(first) => format!("mark fds from {first} close-on-exec"),
            Step::ForkAndWait => "fork into the entered namespaces".into(),
        }
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string holds a NUL byte"))
}

/// The error of a failed [`spawn`]: which step failed, and why.
#[derive(Debug)]
pub struct SpawnError {
    /// The step that failed in the child, if the failure happened in one.
    pub step: Option<String>,
    /// The underlying error (an errno from the child, or an error in the parent).
    pub source: io::Error,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.step {
            Some(step) => write!(f, "in the child, {step} failed"),
            None => write!(f, "spawn failed"),
        }
    }
}

impl std::error::Error for SpawnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Runs `steps` in the child of `cmd` after `fork` and before `exec`, then spawns it.
///
/// If a step fails, the child exits without running the program and the error names the
/// step. If `exec` itself fails (no such program), the error is the `exec` errno with no
/// step. The file descriptors the steps hold stay open until `cmd` is dropped.
pub fn spawn(cmd: &mut Command, steps: Vec<Step>) -> Result<Child, SpawnError> {
    let (report_rd, report_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SpawnError { step: None, source: e.into() })?;
    let descs: Vec<String> = steps.iter().map(Step::describe).collect();
    let report_fd = report_wr.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec. It only makes
    // async-signal-safe syscalls (`write`, `setns`, `unshare`, `setsid`, `sethostname`,
    // `mount`, `dup2`, `fork`, `waitpid`, `_exit`) on data that the parent prepared
    // completely (`steps` is moved into the closure), and it allocates nothing.
    unsafe {
        cmd.pre_exec(move || run_steps(&steps, report_fd));
    }
    let result = cmd.spawn();
    drop(report_wr);
    match result {
        Ok(child) => Ok(child),
        Err(source) => {
            let mut idx = [0u8; 4];
            let step = match std::fs::File::from(report_rd).read_exact(&mut idx) {
                Ok(()) => descs.get(u32::from_ne_bytes(idx) as usize).cloned(),
                Err(_) => None,
            };
            Err(SpawnError { step, source })
        }
    }
}

/// The child's side of [`spawn`]: runs after `fork`, must stay async-signal-safe.
fn run_steps(steps: &[Step], report_fd: RawFd) -> io::Result<()> {
    for (i, step) in steps.iter().enumerate() {
        if let Err(err) = run_step(step) {
            let idx = (i as u32).to_ne_bytes();
            // SAFETY: `report_fd` is the write end of a pipe the parent keeps open across
            // the fork; `idx` is a live 4-byte buffer. A failed write only loses the step
            // name, never the errno, which `err` already holds.
            unsafe { libc::write(report_fd, idx.as_ptr().cast(), idx.len()) };
            return Err(err);
        }
    }
    Ok(())
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn opt_ptr(s: &Option<CString>) -> *const libc::c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

fn run_step(step: &Step) -> io::Result<()> {
    match step {
        Step::Write { fd, bytes, .. } => {
            // SAFETY: `fd` is an open descriptor owned by the step; `bytes` is a live buffer.
            let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Step::SetNs { fd, nstype, .. } => {
            // SAFETY: plain syscall on an fd owned by the step.
            check(unsafe { libc::setns(fd.as_raw_fd(), *nstype) })?;
        }
        Step::Unshare { flags } => {
            // SAFETY: plain syscall with integer flags.
            check(unsafe { libc::unshare(*flags) })?;
        }
        Step::SetSid => {
            // SAFETY: plain syscall without arguments.
            check(unsafe { libc::setsid() })?;
        }
        Step::Hostname(name) => {
            // SAFETY: `name` is a live NUL-terminated string; its length excludes the NUL.
            check(unsafe { libc::sethostname(name.as_ptr(), name.as_bytes().len()) })?;
        }
        Step::Mount { source, target, fstype, flags, data } => {
            // SAFETY: every pointer is either null or a live NUL-terminated string owned
            // by the step.
            check(unsafe {
                libc::mount(opt_ptr(source), target.as_ptr(), opt_ptr(fstype), *flags, opt_ptr(data).cast())
            })?;
        }
        Step::Dup2 { fd, target } => {
            // SAFETY: plain syscall; `dup2` to a different number clears FD_CLOEXEC on
            // `target`, so the program inherits it.
            check(unsafe { libc::dup2(fd.as_raw_fd(), *target) })?;
        }
        Step::CloexecFrom(first) => {
            // SAFETY: plain syscall with integer arguments; it only changes fd flags.
            check(unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    *first as libc::c_uint,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                ) as libc::c_int
            })?;
        }
        Step::ForkAndWait => {
            // SAFETY: we are already in a forked, single-threaded child; forking again and
            // only calling waitpid/_exit in the parent is async-signal-safe.
            let pid = check(unsafe { libc::fork() })?;
            if pid > 0 {
                let mut status = 0;
                loop {
                    // SAFETY: `status` is a live int; `pid` is our child.
                    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
                    if r == pid || (r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
                        break;
                    }
                }
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                };
                // SAFETY: ends this intermediate process without running Rust or libc
                // exit handlers that belong to the parent.
                unsafe { libc::_exit(code) };
            }
        }
    }
    Ok(())
}

/// Wraps a raw fd number received from a parent process (e.g. `--netns-fd 3`).
///
/// Marks it close-on-exec. Returns an error unless the number refers to an open
/// descriptor. The caller must not
/// use the number again after this (the returned `OwnedFd` closes it).
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is stdio, not an inherited descriptor"),
        ));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; it fails with EBADF if the
    // number is not open.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: F_SETFD only sets the descriptor's flags. Taken over, the fd must not leak
    // into programs this process starts (a container's PID 1 would inherit it).
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    // SAFETY: the fd is open (F_GETFD succeeded) and was handed to this process at start;
    // nothing else in the process owns it, so taking ownership once is sound.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
