//! epoll (`anon_inode:[eventpoll]`): the instance and every registration in it.
//!
//! **Dump.** The fdinfo of an epoll lists one line per registration (`fs/eventpoll.c`,
//! `ep_show_fdinfo`; checked on 6.18), in the order of its red-black tree:
//! `tfd: N events: X data: D  pos:P ino:I sdev:S` — the fd number it was added with,
//! the event mask in hex (with `EPOLLET`, `EPOLLONESHOT`, `EPOLLEXCLUSIVE`, `EPOLLWAKEUP`;
//! `EPOLL_CTL_ADD` and `_MOD` always add `EPOLLERR | EPOLLHUP`), the 64-bit data in hex,
//! and the target's position, inode (hex) and device. An `EPOLLONESHOT` registration
//! that has fired keeps only those four flags (`EP_PRIVATE_BITS`): it is *disarmed*, and
//! reports nothing until `EPOLL_CTL_MOD` re-arms it.
//!
//! The kernel keys a registration by (file, fd number), and the number says nothing of
//! where the file is now: it may have been closed (the registration lives as long as the
//! file does) or dup'ed over by another file. `kcmp(KCMP_EPOLL_TFD)` (Linux 4.13, with
//! `CONFIG_CHECKPOINT_RESTORE`) compares an fd of any process with the file of a
//! registration (the `toff`-th with that number, in the fdinfo's tree order), so each
//! registration is found among the container's fds — first at its own number in the
//! epoll's process, else among fds on the same inode — and recorded by that fd's
//! `file_id`. Refused at precheck: a registration whose file no process of the container
//! holds (kept open by a mapping, or by a process outside), one whose file only processes
//! without the epoll hold, and a disarmed one that cannot be made again (see below).
//!
//! **Restore.** The first holder makes the instance (`epoll_create1`). The registrations
//! are added from *inside* the tasks by injected `epoll_ctl`, once every fd of a process
//! is installed (before file locks are taken again: moving fds around would drop POSIX
//! locks), so the kernel keys them by the task's own numbers. Each is added by the first
//! process, in build order, that holds both the epoll and the registered file (for an
//! epoll shared across fork, a child adds what its parent could not). Where the number
//! now names another file, or none, the registered file is put there for the call
//! (`dup3` from where it is) and the number is given back as it was. Inner epolls get
//! their registrations before an outer one adds them. A disarmed registration is added
//! with one event the file has ready now and collected at once by `epoll_wait`, which
//! leaves it disarmed exactly as the kernel left it. An empty pipe or FIFO is made ready
//! by one byte, written through a write end of our own (opened from the reader's `/proc`
//! link) and read back at once: nothing else runs, and an epoll polls a file again before
//! it reports it, so no other watcher sees it. Nothing else of the epoll may be ready
//! then: disarmed ones come first, so the epoll's first holder must add them — a disarmed
//! one only a later holder could add, and one on another kind of file with no event
//! ready, are refused. Once complete, each epoll's fdinfo is read back and must list what
//! the image does.
//!
//! **Readiness.** Adding a registration polls its file: level-triggered readiness comes
//! back by itself. An edge-triggered event that had fired but not yet been collected
//! comes back too, as long as the file is still ready (the add queues it, as a fresh
//! edge); one whose file is no longer ready would not have been delivered at the source
//! either (`epoll_wait` polls each queued file again before it reports it). An
//! `EPOLLET` registration on a file that is ready but whose edge had been collected
//! before the checkpoint reports one edge more after the restore: a program using
//! edge-triggered epoll must read until `EAGAIN`, which is then what it does.
//!
//! `EPOLLWAKEUP` needs `CAP_BLOCK_SUSPEND` and a kernel with `CONFIG_PM_SLEEP`; the
//! kernel drops it silently otherwise (the test machines have no `PM_SLEEP`: it never
//! shows there). The read-back refuses a restore that lost it.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use migrate_proto::records::{Epoll, EpollTarget, FdKind, FdRecord, disarmed};

use super::{Classified, FdSeen, install};
use crate::error::{EngineError, Refusals};
use crate::files::describe_process;
use crate::inject::Remote;

const LINK: &str = "anon_inode:[eventpoll]";

/// One `tfd:` line of an epoll's fdinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Line {
    tfd: i32,
    events: u32,
    data: u64,
    ino: u64,
}

fn parse(pid: i32, fd: i32, info: &str) -> Result<Vec<Line>, EngineError> {
    let bad = |line: &str| EngineError::Proc {
        pid,
        what: format!("fdinfo of epoll fd {fd}"),
        reason: format!("unexpected registration line {line:?}"),
    };
    let mut out = Vec::new();
    for line in info.lines().filter(|l| l.starts_with("tfd:")) {
        let mut words = line.split_whitespace();
        let mut next = |key: &str| {
            // `tfd: 5`, `events: 19`, `data: 7` are two words; `pos:0`, `ino:8e69` one.
            let w = words.next()?;
            match w.strip_prefix(key)? {
                "" => words.next(),
                v => Some(v),
            }
        };
        let tfd = next("tfd:").and_then(|v| v.parse().ok());
        let events = next("events:").and_then(|v| u32::from_str_radix(v, 16).ok());
        let data = next("data:").and_then(|v| u64::from_str_radix(v, 16).ok());
        let _pos = next("pos:");
        let ino = next("ino:").and_then(|v| u64::from_str_radix(v, 16).ok());
        match (tfd, events, data, ino) {
            (Some(tfd), Some(events), Some(data), Some(ino)) => out.push(Line { tfd, events, data, ino }),
            _ => return Err(bad(line)),
        }
    }
    Ok(out)
}

/// Each line with its `toff`: how many lines before it have the same fd number.
fn with_offsets(lines: &[Line]) -> Vec<(Line, u32)> {
    let mut seen: HashMap<i32, u32> = HashMap::new();
    lines
        .iter()
        .map(|l| {
            let n = seen.entry(l.tfd).or_default();
            *n += 1;
            (*l, *n - 1)
        })
        .collect()
}

/// The registrations, with `file` 0 (not known yet): [`resolve`] fills it in once every
/// fd of the container has its `file_id`.
pub fn dump(seen: &FdSeen<'_>) -> Result<Classified, EngineError> {
    let targets = parse(seen.pid, seen.fd, seen.info)?
        .into_iter()
        .map(|l| EpollTarget { fd: l.tfd, events: l.events, data: l.data, file: 0 })
        .collect();
    Ok(Ok(FdKind::Epoll(Epoll { targets })))
}

/// Every fd of the container's processes, by the inode it names: where a registered
/// file may be.
struct Fds {
    by_ino: HashMap<u64, Vec<(i32, i32)>>,
    /// The epoll fds: `(pid, fd)`.
    epolls: Vec<(i32, i32)>,
}

impl Fds {
    /// Every fd of `pids`; with no epoll among them, the inodes are not looked up.
    fn read(pids: &[i32]) -> Result<Fds, EngineError> {
        let mut fds = Fds { by_ino: HashMap::new(), epolls: Vec::new() };
        let mut all = Vec::new();
        for &pid in pids {
            let dir = format!("/proc/{pid}/fd");
            for entry in std::fs::read_dir(&dir).map_err(crate::error::io_err("list", &dir))? {
                let entry = entry.map_err(crate::error::io_err("list", &dir))?;
                let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                if std::fs::read_link(entry.path()).is_ok_and(|l| l.as_os_str() == LINK) {
                    fds.epolls.push((pid, fd));
                }
                all.push((pid, fd, entry.path()));
            }
        }
        if fds.epolls.is_empty() {
            return Ok(fds);
        }
        for (pid, fd, path) in all {
            let md = std::fs::metadata(&path).map_err(crate::error::io_err("stat", &path))?;
            fds.by_ino.entry(md.ino()).or_default().push((pid, fd));
        }
        Ok(fds)
    }

    /// An fd that holds the file of registration `line` (the `toff`-th with its number)
    /// of the epoll at `epoll`: the registered number itself if it still names the file,
    /// else the first on the same inode, in the order of the processes of `ranked` (the
    /// epoll's holders, in build order), then of any other.
    fn locate(
        &self,
        epoll: (i32, i32),
        line: &Line,
        toff: u32,
        ranked: &[i32],
    ) -> Result<Option<(i32, i32)>, EngineError> {
        let (pid, epfd) = epoll;
        let is = |(p, f): (i32, i32)| {
            migrate_sys::files::same_epoll_target(p, f, pid, epfd, line.tfd, toff).map_err(|e| {
                EngineError::Proc { pid, what: format!("epoll fd {epfd}"), reason: format!("kcmp: {e}") }
            })
        };
        let mut candidates = self.by_ino.get(&line.ino).cloned().unwrap_or_default();
        if candidates.contains(&(pid, line.tfd)) && is((pid, line.tfd))? {
            return Ok(Some((pid, line.tfd)));
        }
        candidates.sort_by_key(|(p, _)| ranked.iter().position(|q| q == p).unwrap_or(usize::MAX));
        for c in candidates {
            if is(c)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// The epoll fds that are the description at `epoll`.
    fn holders(&self, epoll: (i32, i32)) -> Result<Vec<(i32, i32)>, EngineError> {
        let mut out = Vec::new();
        for &(p, f) in &self.epolls {
            if migrate_sys::files::same_file(epoll.0, epoll.1, p, f).map_err(|e| EngineError::Proc {
                pid: p,
                what: format!("fd {f}"),
                reason: format!("kcmp: {e}"),
            })? {
                out.push((p, f));
            }
        }
        Ok(out)
    }
}

/// The event bits (not `EPOLLERR`/`EPOLLHUP`) that fd `fd` of `pid` has ready now, or
/// `EPOLLERR`/`EPOLLHUP` alone if only those are.
fn ready(pid: i32, fd: i32) -> Result<u32, EngineError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let file = crate::files::take(pid, fd)?;
    let mut p = [PollFd::new(file.as_fd(), PollFlags::all())];
    poll(&mut p, PollTimeout::ZERO).map_err(|e| EngineError::Proc {
        pid,
        what: format!("fd {fd}"),
        reason: format!("poll: {e}"),
    })?;
    Ok(p[0].revents().map_or(0, |r| u32::from(r.bits() as u16)))
}

/// The one event bit to add a disarmed registration with, so that it fires at once; 0 if
/// `EPOLLERR`/`EPOLLHUP` (always watched) will; `None` if nothing is ready.
fn trigger(ready: u32) -> Option<u32> {
    let events = ready & !(libc::EPOLLERR | libc::EPOLLHUP) as u32;
    if events != 0 { Some(1 << events.trailing_zeros()) } else { (ready != 0).then_some(0) }
}

/// Whether fd `fd` of `pid` is the read end of a pipe or FIFO: one byte written into it
/// makes it ready, and is read back ([`Fed`]).
fn feedable(pid: i32, fd: i32) -> Result<bool, EngineError> {
    let path = format!("/proc/{pid}/fd/{fd}");
    let md = std::fs::metadata(&path).map_err(crate::error::io_err("stat", &path))?;
    let info = crate::error::read_proc(pid, &format!("fdinfo/{fd}"))?;
    let (_, flags) =
        crate::procfs::parse_fdinfo(&info).map_err(EngineError::proc(pid, format!("fdinfo of fd {fd}")))?;
    // O_ASYNC: the byte would send its owner a SIGIO.
    let quiet = flags & libc::O_ASYNC as u32 == 0;
    Ok(md.file_type().is_fifo() && flags & libc::O_ACCMODE as u32 != libc::O_WRONLY as u32 && quiet)
}

/// One byte put into an empty pipe so that its reader is ready (see the module doc);
/// [`Fed::take_back`] reads it out.
struct Fed {
    pid: i32,
    fd: i32,
}

impl Fed {
    fn put(pid: i32, fd: i32) -> Result<Fed, EngineError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = format!("/proc/{pid}/fd/{fd}");
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(crate::error::io_err("open for writing", &path))?;
        w.write_all(b"\0").map_err(crate::error::io_err("write a byte into", &path))?;
        Ok(Fed { pid, fd })
    }

    fn take_back(self) -> Result<(), EngineError> {
        let r = crate::files::take(self.pid, self.fd)?;
        let mut byte = [0u8; 1];
        match nix::unistd::read(&r, &mut byte) {
            Ok(1) => Ok(()),
            other => Err(EngineError::Proc {
                pid: self.pid,
                what: format!("pipe at fd {}", self.fd),
                reason: format!("reading back the byte put there: {other:?}"),
            }),
        }
    }
}

/// Refuses the registrations a restore cannot make again (see the module doc).
pub fn check(pids: &[i32], refusals: &mut Refusals) -> Result<(), EngineError> {
    let live: Vec<i32> = pids.iter().copied().filter(|&p| !crate::seize::is_zombie(p)).collect();
    let fds = Fds::read(&live)?;
    let mut done: Vec<(i32, i32)> = Vec::new();
    for &epoll in &fds.epolls {
        if done.contains(&epoll) {
            continue;
        }
        let holders = fds.holders(epoll)?;
        done.extend(&holders);
        let mut holding: Vec<i32> = holders.iter().map(|h| h.0).collect();
        holding.dedup();
        let (pid, fd) = epoll;
        let lines = parse(pid, fd, &crate::error::read_proc(pid, &format!("fdinfo/{fd}"))?)?;
        for (line, toff) in with_offsets(&lines) {
            let what = format!(
                "{} fd {fd} is an epoll whose registration of fd {} (inode {})",
                describe_process(pid),
                line.tfd,
                line.ino
            );
            match fds.locate(epoll, &line, toff, &holding)? {
                None => refusals.push(format!(
                    "{what} names a file no process of the container holds open (a mapping or a process outside the container keeps it): not supported"
                )),
                Some((p, f)) if !holding.contains(&p) => refusals.push(format!(
                    "{what} names a file that only {} fd {f} holds, a process without the epoll: not supported",
                    describe_process(p)
                )),
                Some((p, f))
                    if disarmed(line.events) && trigger(ready(p, f)?).is_none() && !feedable(p, f)? =>
                {
                    refusals.push(format!(
                        "{what} is a disarmed EPOLLONESHOT registration on a file with no event ready: it cannot be made disarmed again"
                    ))
                }
                // Made disarmed by collecting its event: only safe where nothing else of
                // the epoll is registered yet, in the epoll's first holder.
                Some((p, _)) if disarmed(line.events) && p != pid => refusals.push(format!(
                    "{what} is a disarmed EPOLLONESHOT registration on a file that {} holds, but not {}, the epoll's first holder: not supported",
                    describe_process(p),
                    describe_process(pid)
                )),
                // pidfds are made once the whole tree exists, after every epoll got its
                // registrations (objects::pidfd).
                Some((p, f)) if is_pidfd(p, f) => refusals.push(format!(
                    "{what} names a pidfd: an epoll watching a pidfd is not supported yet"
                )),
                Some(_) => {}
            }
        }
    }
    Ok(())
}

fn is_pidfd(pid: i32, fd: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|l| l.as_os_str() == "anon_inode:[pidfd]")
}

/// Fills in the registered file of every epoll of `fds` (each process's, in the order of
/// `procs`: `(host pid, image index)`), now that every fd has its `file_id`.
pub fn resolve(procs: &[(i32, usize)], fds: &mut [Vec<FdRecord>]) -> Result<(), EngineError> {
    if !fds.iter().flatten().any(|f| matches!(f.kind, FdKind::Epoll(_))) {
        return Ok(());
    }
    let pids: Vec<i32> = procs.iter().map(|p| p.0).collect();
    let table = Fds::read(&pids)?;
    // Looked up once per registration: a server may hold tens of thousands.
    let ids: HashMap<(i32, i32), u64> = pids
        .iter()
        .zip(fds.iter())
        .flat_map(|(&p, l)| l.iter().map(move |f| ((p, f.fd), f.file_id)))
        .collect();
    let mut made: HashMap<u64, Epoll> = HashMap::new();
    for k in 0..fds.len() {
        for j in 0..fds[k].len() {
            let (fd, file_id) = (fds[k][j].fd, fds[k][j].file_id);
            if !matches!(fds[k][j].kind, FdKind::Epoll(_)) {
                continue;
            }
            if let Some(e) = made.get(&file_id) {
                fds[k][j].kind = FdKind::Epoll(e.clone());
                continue;
            }
            let pid = pids[k];
            let holding: Vec<i32> = pids
                .iter()
                .zip(fds.iter())
                .filter(|(_, l)| l.iter().any(|f| f.file_id == file_id))
                .map(|(p, _)| *p)
                .collect();
            let lines = parse(pid, fd, &crate::error::read_proc(pid, &format!("fdinfo/{fd}"))?)?;
            let mut targets = Vec::with_capacity(lines.len());
            for (line, toff) in with_offsets(&lines) {
                let file = table
                    .locate((pid, fd), &line, toff, &holding)?
                    .filter(|(p, _)| holding.contains(p))
                    .and_then(|at| ids.get(&at).copied())
                    .ok_or_else(|| {
                        EngineError::Changed(format!(
                            "pid {pid} epoll fd {fd}: the file registered as fd {} is no longer where the precheck found it",
                            line.tfd
                        ))
                    })?;
                targets.push(EpollTarget { fd: line.tfd, events: line.events, data: line.data, file });
            }
            let e = Epoll { targets };
            fds[k][j].kind = FdKind::Epoll(e.clone());
            made.insert(file_id, e);
        }
    }
    Ok(())
}

/// Makes the epoll instance of `rec` at its fd; its registrations come with [`register`].
pub fn restore(remote: &mut Remote<'_>, rec: &FdRecord, cloexec: u64) -> Result<(), EngineError> {
    // EPOLL_CLOEXEC is O_CLOEXEC; epoll_create1 takes no other flag.
    let fd =
        remote.call(libc::SYS_epoll_create1, &[cloexec], || format!("epoll_create1 for fd {}", rec.fd))?;
    install(remote, fd, rec.fd as u64, cloexec)?;
    let status = rec.flags & libc::O_NONBLOCK as u32;
    if status != 0 {
        remote.call(libc::SYS_fcntl, &[rec.fd as u64, libc::F_SETFL as u64, u64::from(status)], || {
            format!("fcntl(F_SETFL) of epoll fd {}", rec.fd)
        })?;
    }
    Ok(())
}

/// How deep epolls nest under the description `id` (0: it watches no epoll), among the
/// descriptions this process holds; the kernel allows 4 levels (`EP_MAX_NESTS`).
fn depth(id: u64, here: &HashMap<u64, &FdRecord>, limit: u32) -> u32 {
    let Some(FdKind::Epoll(e)) = here.get(&id).map(|f| &f.kind) else { return 0 };
    if limit == 0 {
        return 0;
    }
    e.targets
        .iter()
        .filter(|t| matches!(here.get(&t.file).map(|f| &f.kind), Some(FdKind::Epoll(_))))
        .map(|t| 1 + depth(t.file, here, limit - 1))
        .max()
        .unwrap_or(0)
}

/// Adds, from inside the process `remote`, every registration it is the first to hold
/// both the epoll and the file of (`done`: the `(epoll file_id, index)` already added,
/// across processes). Runs once all of its fds are installed.
pub fn register(
    remote: &mut Remote<'_>,
    fds: &[FdRecord],
    done: &mut HashSet<(u64, usize)>,
) -> Result<(), EngineError> {
    let mut here: HashMap<u64, &FdRecord> = HashMap::new();
    for f in fds {
        here.entry(f.file_id).or_insert(f);
    }
    let numbers: HashMap<i32, u64> = fds.iter().map(|f| (f.fd, f.file_id)).collect();
    let mut epolls: Vec<(&FdRecord, &Epoll)> = here
        .values()
        .filter_map(|f| match &f.kind {
            FdKind::Epoll(e) => Some((*f, e)),
            _ => None,
        })
        .collect();
    // Inner epolls first, so that an outer one polls them complete.
    epolls.sort_by_key(|(f, _)| (depth(f.file_id, &here, 5), f.fd));
    for (rec, e) in epolls {
        let mut todo: Vec<usize> = (0..e.targets.len())
            .filter(|&i| !done.contains(&(rec.file_id, i)) && here.contains_key(&e.targets[i].file))
            .collect();
        if todo.is_empty() {
            continue;
        }
        // Disarmed ones first: making one collects an event, and nothing else may be ready.
        todo.sort_by_key(|&i| !disarmed(e.targets[i].events));
        for i in todo {
            let t = &e.targets[i];
            // The registered number itself if it holds the file, else its first fd here.
            let at = match numbers.get(&t.fd) {
                Some(&id) if id == t.file => t.fd,
                _ => here.get(&t.file).map_or(t.fd, |f| f.fd),
            };
            add(remote, rec.fd, t, at)?;
            done.insert((rec.file_id, i));
        }
        if (0..e.targets.len()).all(|i| done.contains(&(rec.file_id, i))) {
            check_restored(remote.pid, rec.fd, e)?;
        }
    }
    Ok(())
}

/// Adds registration `t` to the epoll at `epfd`; the registered file is at fd `at`.
fn add(remote: &mut Remote<'_>, epfd: i32, t: &EpollTarget, at: i32) -> Result<(), EngineError> {
    let (tfd, host) = (t.fd as u64, remote.pid);
    if at == t.fd {
        return ctl(remote, epfd as u64, t, at);
    }
    // The number is lent to the registered file for the call: whatever holds it now (an
    // fd of the image, a spare of the restore, the epoll itself) waits at a copy.
    let saved = if std::path::Path::new(&format!("/proc/{host}/fd/{tfd}")).exists() {
        let flags =
            remote.call(libc::SYS_fcntl, &[tfd, libc::F_GETFD as u64], || format!("F_GETFD of fd {tfd}"))?;
        let copy = remote.call(libc::SYS_fcntl, &[tfd, libc::F_DUPFD_CLOEXEC as u64, 0], || {
            format!("F_DUPFD of fd {tfd}")
        })?;
        Some((copy, flags))
    } else {
        None
    };
    let ep = match saved {
        Some((copy, _)) if epfd as u64 == tfd => copy,
        _ => epfd as u64,
    };
    remote.call(libc::SYS_dup3, &[at as u64, tfd, libc::O_CLOEXEC as u64], || {
        format!("dup3 of fd {at} to fd {tfd}, to register it there")
    })?;
    let added = ctl(remote, ep, t, at);
    match saved {
        Some((copy, flags)) => {
            let cloexec = if flags & libc::FD_CLOEXEC as u64 != 0 { libc::O_CLOEXEC as u64 } else { 0 };
            remote.call(libc::SYS_dup3, &[copy, tfd, cloexec], || format!("dup3 back to fd {tfd}"))?;
            remote.call(libc::SYS_close, &[copy], || format!("close({copy})"))?;
        }
        None => {
            remote.call(libc::SYS_close, &[tfd], || format!("close({tfd})"))?;
        }
    }
    added
}

/// `epoll_ctl(ep, EPOLL_CTL_ADD, t.fd)`; a disarmed registration is added with an event
/// its file (at `at`) has ready, and collected at once.
fn ctl(remote: &mut Remote<'_>, ep: u64, t: &EpollTarget, at: i32) -> Result<(), EngineError> {
    let off = disarmed(t.events);
    let mut fed = None;
    let events = if off {
        let bit = match trigger(ready(remote.pid, at)?) {
            Some(bit) => bit,
            None if feedable(remote.pid, at)? => {
                fed = Some(Fed::put(remote.pid, at)?);
                libc::EPOLLIN as u32
            }
            None => {
                return Err(EngineError::Incompatible(format!(
                    "the disarmed EPOLLONESHOT registration of fd {} has no event ready to disarm it with",
                    t.fd
                )));
            }
        };
        t.events | bit
    } else {
        t.events
    };
    // struct epoll_event is packed on x86-64 (u32 events, u64 data: 12 bytes); the
    // remote memory takes bytes, and libc's struct has no byte view without unsafe.
    const _: () = assert!(std::mem::size_of::<libc::epoll_event>() == 12);
    let mut ev = events.to_ne_bytes().to_vec();
    ev.extend_from_slice(&t.data.to_ne_bytes());
    let addr = remote.write(0, &ev)?;
    remote.call(libc::SYS_epoll_ctl, &[ep, libc::EPOLL_CTL_ADD as u64, t.fd as u64, addr], || {
        format!("epoll_ctl(ADD fd {}, events {:#x}) on epoll fd {ep}", t.fd, events)
    })?;
    if off {
        let buf = remote.scratch.addr + 64;
        let n =
            remote.call(libc::SYS_epoll_wait, &[ep, buf, 1, 0], || format!("epoll_wait on epoll fd {ep}"))?;
        let got = remote.read(64, 12)?;
        let data = got.get(4..12).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes);
        if let Some(fed) = fed {
            fed.take_back()?;
        }
        if n != 1 || data != Some(t.data) {
            return Err(EngineError::Incompatible(format!(
                "epoll fd {ep}: disarming the registration of fd {} collected another event",
                t.fd
            )));
        }
    }
    Ok(())
}

/// Reads the restored epoll's registrations back: they must be the image's, to the bit.
fn check_restored(host: i32, epfd: i32, e: &Epoll) -> Result<(), EngineError> {
    let info = crate::error::read_proc(host, &format!("fdinfo/{epfd}"))?;
    let key = |fd: i32, events: u32, data: u64| (fd, events, data);
    let mut now: Vec<_> = parse(host, epfd, &info)?.iter().map(|l| key(l.tfd, l.events, l.data)).collect();
    let mut want: Vec<_> = e.targets.iter().map(|t| key(t.fd, t.events, t.data)).collect();
    now.sort_unstable();
    want.sort_unstable();
    if now == want {
        return Ok(());
    }
    let wakeup = libc::EPOLLWAKEUP as u32;
    let lost = want.iter().find(|w| w.1 & wakeup != 0 && now.contains(&(w.0, w.1 & !wakeup, w.2)));
    Err(EngineError::Incompatible(match lost {
        Some(w) => format!(
            "epoll fd {epfd}: the kernel dropped EPOLLWAKEUP from the registration of fd {} (it needs CAP_BLOCK_SUSPEND and CONFIG_PM_SLEEP)",
            w.0
        ),
        None => {
            format!("epoll fd {epfd} came back with registrations {now:x?}, not {want:x?} (fd, events, data)")
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lines_and_their_offsets() -> Result<(), EngineError> {
        let info = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\n\
            tfd:        6 events: c0000000 data:                7  pos:0 ino:40e sdev:10\n\
            tfd:        4 events: 40000019 data:             1234  pos:0 ino:8e69 sdev:f\n\
            tfd:        6 events:       19 data: ffffffffffffffff  pos:12 ino:8e6a sdev:f\n";
        let lines = parse(1, 3, info)?;
        assert_eq!(lines[0], Line { tfd: 6, events: 0xc000_0000, data: 7, ino: 0x40e });
        assert_eq!(lines[2], Line { tfd: 6, events: 0x19, data: u64::MAX, ino: 0x8e6a });
        let offs: Vec<u32> = with_offsets(&lines).iter().map(|(_, o)| *o).collect();
        assert_eq!(offs, [0, 0, 1]);
        assert!(disarmed(lines[0].events) && !disarmed(lines[1].events));
        assert!(parse(1, 3, "tfd: 5 events: zz data: 1 pos:0 ino:1 sdev:0\n").is_err());
        Ok(())
    }

    #[test]
    fn a_disarmed_registration_fires_on_one_ready_bit() {
        assert_eq!(trigger(0x4 | 0x100), Some(0x4));
        assert_eq!(trigger(0x10), Some(0));
        assert_eq!(trigger(0), None);
    }
}
