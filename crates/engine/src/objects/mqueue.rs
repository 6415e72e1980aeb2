//! POSIX message queues of the container's IPC namespace: name, mode, owner, attributes
//! (`mq_maxmsg`, `mq_msgsize`) and messages with their priorities, in the order a
//! receiver gets them. Both sides run on the IPC namespace thread of [`super::sysv`]:
//! `mq_open` acts on the calling thread's IPC namespace.
//!
//! **Dump.** Every queue of the namespace, open or not, is listed from the namespace's
//! mqueue filesystem, mounted by the thread in a mount namespace of its own (it unshares
//! one; a mount of type `mqueue` shows the mounting thread's IPC namespace). Reading a
//! queue's file gives `QSIZE`, `NOTIFY`, `SIGNO`, `NOTIFY_PID`. The kernel has no way to
//! read a message without taking it, so the thread takes every message
//! (`mq_timedreceive`, highest priority first, oldest first within one) and at once sends
//! them back in that order: the queue ends as it was (same messages, same order; only
//! its inode times move) before anything else of the checkpoint runs, so a checkpoint
//! that fails later leaves it as it was too. That is exact only while no task waits on
//! the queue: a receiver waits only on an empty queue (nothing is taken then), a sender
//! only on a full one — a full queue is refused, since taking a message would let a
//! waiting sender's message in. A queue with a notification registered (`mq_notify`,
//! `NOTIFY_PID` not 0) is refused as well: emptying it and sending again would fire it.
//!
//! **Restore**: `mq_open(O_CREAT | O_EXCL)` with its attributes, as its owner (its
//! bytes are charged to that user's `RLIMIT_MSGQUEUE` account, as the creator's were:
//! a queue given away by `fchown` is charged to its new owner), the messages sent again
//! in order, then owner and mode (`fchown`, `fchmod`: the umask trimmed the mode).
//!
//! **Fds.** An fd of a queue is a file of the mqueue filesystem (`statfs` says
//! `MQUEUE_MAGIC`), its link `/NAME`; its fdinfo has `QSIZE`, `NOTIFY`, `SIGNO`,
//! `NOTIFY_PID` of the queue, whose state travels with the namespace. Restore: an
//! injected `mq_open(NAME, flags)` in the process (the task is in the container's IPC
//! namespace), installed at its number with its access mode and `O_NONBLOCK`.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use migrate_proto::records::{PosixMessage, PosixQueue};
use migrate_sys::ipc;

use migrate_proto::records::{FdKind, FdRecord};

use super::{Classified, FdSeen, install};
use crate::error::{EngineError, io_err};
use crate::inject::Remote;

/// Where the thread mounts the namespace's mqueue filesystem, in its own mount namespace
/// (a directory every host has; the mount hides it for that thread only).
const MOUNT_AT: &str = "/tmp";

fn err<'a>(op: &'static str, name: &'a str) -> impl Fn(std::io::Error) -> EngineError + 'a {
    move |source| EngineError::Io { op, path: format!("POSIX message queue /{name}").into(), source }
}

/// The queues of this thread's IPC namespace (which it must be free to leave its mount
/// namespace for: a thread of its own).
pub fn dump() -> Result<Vec<PosixQueue>, EngineError> {
    mount_queues()?;
    let mut names: Vec<String> = std::fs::read_dir(MOUNT_AT)
        .map_err(io_err("list", MOUNT_AT))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let path = format!("{MOUNT_AT}/{name}");
        let md = std::fs::metadata(&path).map_err(io_err("stat", &path))?;
        let info = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
        // Read strictly: a queue whose notification went unseen would lose it.
        let notify_pid = info
            .split_whitespace()
            .find_map(|w| w.strip_prefix("NOTIFY_PID:"))
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| EngineError::Proc {
                pid: 0,
                what: format!("POSIX message queue /{name}"),
                reason: format!("no NOTIFY_PID in {:?}", info.trim()),
            })?;
        if notify_pid != 0 {
            return Err(EngineError::Unsupported(format!(
                "POSIX message queue /{name} has a notification registered (mq_notify, by {}): not supported yet",
                crate::files::describe_process(notify_pid as i32)
            )));
        }
        let q = ipc::mq_open(&format!("/{name}"), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC, 0, None)
            .map_err(err("mq_open", &name))?;
        let attr = ipc::mq_getattr(&q).map_err(err("mq_getattr", &name))?;
        if attr.mq_curmsgs >= attr.mq_maxmsg {
            return Err(EngineError::Unsupported(format!(
                "POSIX message queue /{name} is full ({} messages): a sender may be waiting, and reading it would let one in; not supported",
                attr.mq_curmsgs
            )));
        }
        let messages = take_and_give_back(&q, &name, attr.mq_msgsize as usize)?;
        out.push(PosixQueue {
            name,
            mode: md.mode() & 0o777,
            uid: md.uid(),
            gid: md.gid(),
            maxmsg: attr.mq_maxmsg as u64,
            msgsize: attr.mq_msgsize as u64,
            messages,
        });
    }
    Ok(out)
}

/// Mounts the mqueue filesystem of this thread's IPC namespace at [`MOUNT_AT`], in a
/// mount namespace of the thread's own.
fn mount_queues() -> Result<(), EngineError> {
    use nix::mount::{MsFlags, mount};
    let nix_err = |op: &'static str| {
        move |e: nix::errno::Errno| EngineError::Io { op, path: MOUNT_AT.into(), source: e.into() }
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS | nix::sched::CloneFlags::CLONE_FS)
        .map_err(nix_err("unshare a mount namespace to mount mqueue on"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(nix_err("make / private before mounting mqueue on"))?;
    mount(Some("mqueue"), MOUNT_AT, Some("mqueue"), MsFlags::empty(), None::<&str>)
        .map_err(nix_err("mount mqueue on"))
}

/// Takes every message of `q` and sends them back in the same order, whatever happens
/// in between; returns them.
fn take_and_give_back(
    q: &std::os::fd::OwnedFd,
    name: &str,
    msgsize: usize,
) -> Result<Vec<PosixMessage>, EngineError> {
    let mut taken = Vec::new();
    let mut failed = None;
    loop {
        match ipc::mq_receive(q, msgsize) {
            Ok(Some((prio, data))) => taken.push(PosixMessage { prio, data }),
            Ok(None) => break,
            Err(e) => {
                failed = Some(err("mq_receive", name)(e));
                break;
            }
        }
    }
    for (i, m) in taken.iter().enumerate() {
        if let Err(e) = ipc::mq_send(q, m.prio, &m.data) {
            return Err(EngineError::Changed(format!(
                "POSIX message queue /{name}: sending back message {i} of {} failed ({e}); the queue lost what was not sent back",
                taken.len()
            )));
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(taken),
    }
}

/// Creates `queues` in this thread's IPC namespace.
pub fn restore(queues: &[PosixQueue]) -> Result<(), EngineError> {
    for pq in queues {
        let name = pq.name.as_str();
        let mut attr = ipc::mq_attr_zeroed();
        attr.mq_maxmsg = pq.maxmsg as i64;
        attr.mq_msgsize = pq.msgsize as i64;
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // As its owner: the kernel charges a queue's bytes to its creator's real uid and
        // holds them against RLIMIT_MSGQUEUE, with no capability exempt
        // (`mqueue_get_inode`); made by root, the queues of all the container's users
        // would have to fit root's limit.
        let q = ipc::as_creator(pq.uid, pq.gid, || {
            ipc::mq_open(&format!("/{name}"), flags, pq.mode, Some(&attr))
        })
        .and_then(|q| q)
        .map_err(err("mq_open(O_CREAT)", name))?;
        for m in &pq.messages {
            ipc::mq_send(&q, m.prio, &m.data).map_err(err("mq_send", name))?;
        }
        let nix_err = |op: &'static str| move |e: nix::errno::Errno| err(op, name)(e.into());
        nix::unistd::fchown(q.as_fd(), Some(pq.uid.into()), Some(pq.gid.into()))
            .map_err(nix_err("fchown"))?;
        nix::sys::stat::fchmod(q.as_fd(), nix::sys::stat::Mode::from_bits_truncate(pq.mode))
            .map_err(nix_err("fchmod"))?;
    }
    Ok(())
}

/// `MQUEUE_MAGIC` (linux/magic.h): `statfs` of a file of the mqueue filesystem.
const MQUEUE_MAGIC: i64 = 0x1980_0202;

/// Whether the fd at `path` (`/proc/PID/fd/N`) is a POSIX message queue.
pub fn is_queue(path: &std::path::Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == MQUEUE_MAGIC)
}

/// An fd of a queue: its name (the link is `/NAME`). The queue must be one of the
/// process's own IPC namespace (each has an mqueue filesystem of its own, and the link
/// does not say which): one of another namespace, kept open across an `unshare` or
/// passed in, would be opened by its name in the container's.
pub fn dump_fd(seen: &FdSeen<'_>) -> Result<Classified, EngineError> {
    if seen.link.ends_with(" (deleted)") {
        return Ok(Err(format!("a POSIX message queue unlinked while open ({}): not supported", seen.link)));
    }
    let fd_path = format!("/proc/{}/fd/{}", seen.pid, seen.fd);
    let dev = std::fs::metadata(&fd_path).map_err(io_err("stat", &fd_path))?.dev();
    let home = super::sysv::in_namespace(seen.pid, || {
        mount_queues()?;
        Ok(std::fs::metadata(MOUNT_AT).map_err(io_err("stat", MOUNT_AT))?.dev())
    })?;
    if dev != home {
        return Ok(Err(format!(
            "a POSIX message queue of another IPC namespace ({}): not supported",
            seen.link
        )));
    }
    Ok(match seen.link.strip_prefix('/') {
        Some(name) if !name.is_empty() && !name.contains('/') => {
            Ok(FdKind::Mqueue { name: name.to_string() })
        }
        _ => Err(format!("a POSIX message queue with an unexpected name ({})", seen.link)),
    })
}

/// Opens queue `name` in the task at fd `rec.fd`.
pub fn restore_fd(
    remote: &mut Remote<'_>,
    rec: &FdRecord,
    name: &str,
    cloexec: u64,
) -> Result<(), EngineError> {
    let p = remote.path(0, name)?;
    let flags = u64::from(rec.flags & (libc::O_ACCMODE | libc::O_NONBLOCK) as u32) | cloexec;
    let fd = remote
        .call(libc::SYS_mq_open, &[p, flags, 0, 0], || format!("mq_open(/{name}) for fd {}", rec.fd))?;
    install(remote, fd, rec.fd as u64, cloexec)
}
