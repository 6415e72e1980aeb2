//! The kinds of kernel object a container's processes hold, one file each, each file
//! both dumping and restoring its kind (as Firecracker keeps `persist.rs` beside each
//! device): the list of files here is the list of kinds the engine carries.
//!
//! | file | kind |
//! |---|---|
//! | [`shmem`] | objects whose contents only the image holds: shared anonymous memory, memfds, deleted files |
//! | [`fifo`] | named pipes (what their name adds to a pipe) |
//! | [`tmpfs`] | the contents of the container's private `/run` and `/dev/shm` |
//! | [`eventfd`] | eventfd: counter, semaphore mode |
//! | [`timerfd`] | timerfd: clock, time left, period, absolute or not, unread ticks |
//! | [`signalfd`] | signalfd: its signal mask |
//! | [`inotify`] | inotify: each watch's path, mask and wd (no queued events) |
//! | [`pidfd`] | pidfd: its process, live or reaped (made after the whole tree) |
//! | [`epoll`] | epoll: every registration (events, data, the file), re-added from inside the tasks |
//! | [`unix`] | unix sockets: pairs, names, listeners and their pending connections, queued bytes |
//! | [`inet`] | TCP sockets listening, bound or unbound; UDP sockets; their options |
//! | [`sysv`] | the IPC namespace: System V shared memory, semaphores, message queues, limits |
//! | [`mqueue`] | POSIX message queues of the IPC namespace |
//!
//! Regular files, directories, devices and pipes — the fd table itself, and the sharing
//! of open file descriptions between fds and processes — are [`crate::files`].
//!
//! **How an fd kind plugs in.** Dump: [`crate::files`] reads each fd's link and fdinfo
//! once and hands an fd it does not know itself ([`FdSeen`]: an `anon_inode:`, a
//! `socket:`) to [`classify`], which asks the kind's `dump` for an
//! [`FdKind`] or a refusal that names the object. Restore: the first process holding a
//! description makes it through [`restore`], which asks the kind's `restore` to create
//! it *inside the task* (an injected syscall, so it belongs to the container's
//! namespaces) and [`install`] it at its number; every other fd of that description is
//! copied from there by [`crate::files`], so it is shared again. Where a kind's state is
//! easier set from outside (a counter, a socket option), the kind takes a copy of the new
//! fd with [`crate::files::take`] and works on that: it is the same open file.

pub mod epoll;
pub mod eventfd;
pub mod fifo;
pub mod inet;
pub mod inotify;
pub mod mqueue;
pub mod pidfd;
pub mod shmem;
pub mod signalfd;
pub mod sysv;
pub mod timerfd;
pub mod tmpfs;
pub mod unix;

use std::os::fd::{AsFd, AsRawFd};

use migrate_proto::records::{FdKind, FdRecord};
use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getsockname};

use crate::error::EngineError;
use crate::files::FdWorld;
use crate::inject::Remote;

/// One fd of a process being dumped, as `/proc` shows it.
#[derive(Debug, Clone, Copy)]
pub struct FdSeen<'a> {
    /// The process, in our pid namespace (seized, or frozen for the precheck).
    pub pid: i32,
    pub fd: i32,
    /// `/proc/PID/fd/FD`'s link: `anon_inode:[eventfd]`, `socket:[1234]`, …
    pub link: &'a str,
    /// `/proc/PID/fdinfo/FD`.
    pub info: &'a str,
}

impl FdSeen<'_> {
    /// The value of `key:` in the fdinfo, parsed; an error names the fd and the field.
    pub fn field<T: std::str::FromStr>(&self, key: &str) -> Result<T, EngineError> {
        crate::procfs::status_field(self.info, key).and_then(|v| v.parse().ok()).ok_or_else(|| {
            EngineError::Proc {
                pid: self.pid,
                what: format!("fdinfo of fd {}", self.fd),
                reason: format!("no {key} field, or not a number"),
            }
        })
    }
}

/// What a kind's dump makes of an fd: its record, or why it cannot be carried (the
/// refusal's text completes "PID 1 (redis-server, host pid 42) fd 5 is …").
pub type Classified = Result<FdKind, String>;

/// Classifies an fd that is neither a file, a pipe nor an object of [`shmem`]: an
/// `anon_inode:` or a `socket:`.
pub fn classify(seen: &FdSeen<'_>) -> Result<Classified, EngineError> {
    let link = seen.link;
    if link.starts_with("socket:[") {
        // The family decides; a copy of the socket tells it (an unbound socket too).
        let sock = crate::files::take(seen.pid, seen.fd)?;
        // An error the socket has yet to report (`sk_err`: a unix stream whose peer
        // closed with bytes unread, a connected UDP socket's ICMP port unreachable) or
        // its error queue is in no record. `poll` shows it as `POLLERR` and leaves it,
        // where `SO_ERROR`, or a peek of an empty queue, would clear it in the source.
        let mut poll = [nix::poll::PollFd::new(sock.as_fd(), nix::poll::PollFlags::empty())];
        nix::poll::poll(&mut poll, nix::poll::PollTimeout::ZERO).map_err(|e| EngineError::Proc {
            pid: seen.pid,
            what: format!("socket fd {}", seen.fd),
            reason: format!("poll: {e}"),
        })?;
        if poll[0].revents().is_some_and(|r| r.contains(nix::poll::PollFlags::POLLERR)) {
            return Ok(Err(format!(
                "a socket ({link}) with an error pending (SO_ERROR, or its error queue), which is not carried: not supported yet"
            )));
        }
        // A filter on what the socket receives is in no record either. A classic one
        // tells its length; an eBPF one (`SO_ATTACH_BPF`) cannot be read back: EACCES.
        let filter = match migrate_sys::sockopt::filter_len(sock.as_fd()) {
            Ok(0) => None,
            Ok(n) => Some(format!("a socket filter of {n} instructions (SO_ATTACH_FILTER)")),
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                Some("an eBPF socket filter (SO_ATTACH_BPF)".into())
            }
            Err(e) => {
                return Err(EngineError::Proc {
                    pid: seen.pid,
                    what: format!("socket fd {}", seen.fd),
                    reason: format!("SO_GET_FILTER: {e}"),
                });
            }
        };
        if let Some(filter) = filter {
            return Ok(Err(format!(
                "a socket ({link}) with {filter}, which is not carried: not supported yet"
            )));
        }
        let family = getsockname::<SockaddrStorage>(sock.as_raw_fd()).ok().and_then(|a| a.family());
        return match family {
            Some(AddressFamily::Unix) => unix::dump(seen, &sock),
            Some(AddressFamily::Inet | AddressFamily::Inet6) => inet::dump(seen, &sock),
            Some(other) => Ok(Err(format!("a socket of family {other:?} ({link}): not supported"))),
            None => Ok(Err(format!("a socket of an unknown family ({link}): not supported"))),
        };
    }
    match link.strip_prefix("anon_inode:") {
        Some("[eventfd]") => eventfd::dump(seen),
        Some("[timerfd]") => timerfd::dump(seen),
        Some("[signalfd]") => signalfd::dump(seen),
        Some("inotify") => inotify::dump(seen),
        Some("[pidfd]") => pidfd::dump(seen),
        Some("[fanotify]") => Ok(Err(format!(
            "a fanotify group ({link}) is not supported: its marks name filesystems and mounts of the host, and the permission events it answers would stall the restored container"
        ))),
        Some("[eventpoll]") => epoll::dump(seen),
        Some(kind) => Ok(Err(format!("an {kind} ({link}): not supported yet"))),
        None => Ok(Err(format!("{link}, a kind of file not supported yet"))),
    }
}

/// Makes the description `rec` (a kind of this folder) in `remote`'s process, at fd
/// `rec.fd`, close-on-exec as `cloexec` says.
pub fn restore(
    remote: &mut Remote<'_>,
    rec: &FdRecord,
    cloexec: u64,
    world: &mut FdWorld,
) -> Result<(), EngineError> {
    match &rec.kind {
        FdKind::EventFd(e) => eventfd::restore(remote, rec, e, cloexec),
        FdKind::TimerFd(t) => timerfd::restore(remote, rec, t, cloexec),
        FdKind::SignalFd(s) => signalfd::restore(remote, rec, s, cloexec),
        FdKind::Inotify(i) => inotify::restore(remote, rec, i, cloexec),
        FdKind::Epoll(_) => epoll::restore(remote, rec, cloexec),
        FdKind::Inet(s) => inet::restore(remote, rec, s, cloexec),
        FdKind::Mqueue { name } => mqueue::restore_fd(remote, rec, name, cloexec),
        FdKind::Unix(u) => unix::restore(remote, rec, u, cloexec, world),
        other => {
            Err(EngineError::Incompatible(format!("fd {}: {other:?} is not a kind of objects/", rec.fd)))
        }
    }
}

/// Moves `fd`, just created in the task, to `target` (with `cloexec`, `O_CLOEXEC` or
/// 0), unless it landed there.
pub fn install(remote: &mut Remote<'_>, fd: u64, target: u64, cloexec: u64) -> Result<(), EngineError> {
    if fd != target {
        remote.call(libc::SYS_dup3, &[fd, target, cloexec], || format!("dup3 to fd {target}"))?;
        remote.call(libc::SYS_close, &[fd], || format!("close({fd})"))?;
    }
    Ok(())
}

/// `O_NONBLOCK` and `O_CLOEXEC` of an fd's flags, as the `*_create` calls of eventfd,
/// timerfd, signalfd, inotify and epoll take them (their flag values are these).
pub fn create_flags(rec: &FdRecord, cloexec: u64) -> u64 {
    u64::from(rec.flags & libc::O_NONBLOCK as u32) | cloexec
}
