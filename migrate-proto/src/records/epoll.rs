//! The record of an epoll instance (`anon_inode:[eventpoll]`): its registrations.

use serde::{Deserialize, Serialize};

use crate::error::Invalid;

/// An epoll instance: what it watches. The registrations belong to the open file
/// description, so every fd of it (in every process) carries the same list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoll {
    pub targets: Vec<EpollTarget>,
}

/// One registration. The kernel keys it by (file, fd number): `fd` is the number it was
/// added with, which may since have been closed, or dup'ed over by another file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollTarget {
    pub fd: i32,
    /// `EPOLLIN`…, with `EPOLLET`, `EPOLLONESHOT`, `EPOLLEXCLUSIVE`, `EPOLLWAKEUP`; a
    /// `EPOLLONESHOT` registration that has fired holds no event bit any more (disarmed).
    pub events: u32,
    /// `epoll_event.data`, returned with each event.
    pub data: u64,
    /// The open file description registered: the `file_id` of fds of the image.
    pub file: u64,
}

// The values of linux/eventpoll.h (this crate does no system calls and has no libc).

/// The flags the kernel keeps beside the event bits (`EP_PRIVATE_BITS`).
const EPOLL_PRIVATE: u32 = EPOLLWAKEUP | EPOLLONESHOT | EPOLLET | EPOLLEXCLUSIVE;
const EPOLLEXCLUSIVE: u32 = 1 << 28;
const EPOLLWAKEUP: u32 = 1 << 29;
const EPOLLONESHOT: u32 = 1 << 30;
const EPOLLET: u32 = 1 << 31;
/// The event bits of `poll(2)` and epoll (`EPOLLIN` … `EPOLLRDHUP` 0x2000).
const EPOLL_EVENTS: u32 = 0x3fff;
/// The bits `EPOLLEXCLUSIVE` may come with (the kernel's `EPOLLEXCLUSIVE_OK_BITS`).
const EXCLUSIVE_OK: u32 = 0x1 | 0x4 | 0x8 | 0x10 | EPOLLWAKEUP | EPOLLET | EPOLLEXCLUSIVE;
/// More registrations than this in one epoll is no image of ours (the kernel's own limit,
/// `max_user_watches`, is a share of memory: about 1.6 million per GiB).
pub const MAX_EPOLL_TARGETS: usize = 1 << 22;

impl Epoll {
    /// The checks of one epoll record (fd `fd` of its process); the tree check sees that
    /// each registered file is held by a process that holds the epoll.
    pub(crate) fn check(&self, fd: i32, file_id: u64) -> Result<(), Invalid> {
        let bad = |problem: String| Err(Invalid::Fd { fd, problem });
        if self.targets.len() > MAX_EPOLL_TARGETS {
            return bad(format!(
                "epoll has {} registrations, more than {MAX_EPOLL_TARGETS}",
                self.targets.len()
            ));
        }
        let mut keys = std::collections::HashSet::with_capacity(self.targets.len());
        for t in &self.targets {
            if !(0..crate::validate::FD_LIMIT).contains(&t.fd) {
                return bad(format!("epoll registration of fd {} is out of range", t.fd));
            }
            if t.events & !(EPOLL_EVENTS | EPOLL_PRIVATE) != 0 {
                return bad(format!("epoll registration of fd {}: unknown event bits {:#x}", t.fd, t.events));
            }
            if t.events & EPOLLEXCLUSIVE != 0 && t.events & !EXCLUSIVE_OK != 0 {
                return bad(format!(
                    "epoll registration of fd {}: EPOLLEXCLUSIVE with {:#x}",
                    t.fd,
                    t.events & !EXCLUSIVE_OK
                ));
            }
            if t.file == file_id {
                return bad(format!("epoll registration of fd {} is the epoll itself", t.fd));
            }
            if !keys.insert((t.file, t.fd)) {
                return bad(format!("epoll registration of fd {} (file {}) is listed twice", t.fd, t.file));
            }
        }
        Ok(())
    }
}

/// Whether `events` is an `EPOLLONESHOT` registration that has fired: the kernel then
/// keeps only its private flags, and it reports nothing until `EPOLL_CTL_MOD` re-arms it.
pub fn disarmed(events: u32) -> bool {
    events & EPOLLONESHOT != 0 && events & !EPOLL_PRIVATE == 0
}

/// `events` as `in|out|et`, for people.
pub fn event_names(events: u32) -> String {
    const NAMES: [(u32, &str); 15] = [
        (0x1, "in"),
        (0x2, "pri"),
        (0x4, "out"),
        (0x8, "err"),
        (0x10, "hup"),
        (0x40, "rdnorm"),
        (0x80, "rdband"),
        (0x100, "wrnorm"),
        (0x200, "wrband"),
        (0x400, "msg"),
        (0x2000, "rdhup"),
        (EPOLLET, "et"),
        (EPOLLONESHOT, "oneshot"),
        (EPOLLEXCLUSIVE, "exclusive"),
        (EPOLLWAKEUP, "wakeup"),
    ];
    let mut names: Vec<String> =
        NAMES.iter().filter(|(b, _)| events & b != 0).map(|(_, n)| n.to_string()).collect();
    let rest = NAMES.iter().fold(events, |left, (b, _)| left & !b);
    if rest != 0 {
        names.push(format!("{rest:#x}"));
    }
    if disarmed(events) {
        names.push("disarmed".into());
    }
    if names.is_empty() { "none".into() } else { names.join("|") }
}

/// Across the tree: every registered file is held by a process that holds the epoll too
/// (the restore registers it from there, with both in hand).
pub(crate) fn check_tree(processes: &[super::ProcessRecord]) -> Result<(), String> {
    use std::collections::{HashMap, HashSet};
    let mut holds: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, p) in processes.iter().enumerate() {
        for f in &p.fds {
            let who = holds.entry(f.file_id).or_default();
            if who.last() != Some(&i) {
                who.push(i);
            }
        }
    }
    let mut done = HashSet::new();
    for p in processes {
        for f in &p.fds {
            let super::FdKind::Epoll(e) = &f.kind else { continue };
            if !done.insert(f.file_id) {
                continue;
            }
            let epoll: HashSet<usize> = holds.get(&f.file_id).into_iter().flatten().copied().collect();
            // Each file once: a crafted record may register one file under millions of numbers.
            let mut fine = HashSet::new();
            for t in &e.targets {
                if fine.contains(&t.file) {
                    continue;
                }
                let target = holds.get(&t.file).map(Vec::as_slice).unwrap_or_default();
                if target.iter().any(|i| epoll.contains(i)) {
                    fine.insert(t.file);
                } else {
                    return Err(format!(
                        "pid {} fd {}: the epoll's registration of fd {} names file {}, which no process holding the epoll holds",
                        p.pid, f.fd, t.fd, t.file
                    ));
                }
            }
        }
    }
    Ok(())
}
