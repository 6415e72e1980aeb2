//! File descriptors: regular files (position, flags), directories, harmless character
//! devices, pipes and FIFOs (with the bytes buffered in them; what a FIFO's name adds is
//! in [`crate::objects::fifo`]), and the container's stdio pipes to its shim, which are
//! *external*: on restore they are reconnected to the new shim's pipes, never compared.
//!
//! Sharing is kept: fds that are one open file description (dup'ed, or inherited across
//! fork; found with `kcmp(KCMP_FILE)`) get one `file_id` in the image. On restore the
//! first process that needs a description creates it (opens the file, makes the pipe),
//! and every later fd with that id is copied from there by an injected `pidfd_getfd`,
//! so it is the same description again: one position, one set of flags.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;

use migrate_proto::records::{FdKind, FdRecord, FileLock, LockKind, PipeRecord};

use crate::error::{EngineError, Refusals, io_err};
use crate::inject::{Remote, Task};
use crate::mm::{check_file, file_id};
use crate::objects::FdSeen;
use crate::objects::shmem::{Live, Named, Registry};
use crate::procfs;

/// A pipe owned by the container's runtime: its inode and role (`stdout`, `stderr`).
#[derive(Debug, Clone)]
pub struct ExternalPipe {
    pub inode: u64,
    pub name: String,
}

/// One fd as `/proc` shows it, classified.
struct Seen {
    fd: i32,
    flags: u32,
    kind: FdKind,
    /// The `/proc/PID/fd` link, to group candidates for `kcmp`.
    link: String,
    locks: Vec<FileLock>,
}

/// "PID 1 (python3, host pid 4242)": how the container and the host both name it.
pub(crate) fn describe_process(pid: i32) -> String {
    let status = crate::error::read_proc(pid, "status").unwrap_or_default();
    let ns = procfs::ns_value(&status, "NSpid").map_or_else(|_| "?".to_string(), |p| p.to_string());
    let comm = procfs::status_field(&status, "Name").unwrap_or("?");
    format!("PID {ns} ({comm}, host pid {pid})")
}

fn pipe_inode(link: &str) -> Option<u64> {
    link.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

/// The fds of one process (`proc` in image order), classified; refuses kinds this
/// version cannot restore. Memfds and deleted files are registered in `objects`.
fn classify(
    pid: i32,
    proc: usize,
    external: &[ExternalPipe],
    objects: &mut Registry,
    refusals: &mut Refusals,
) -> Result<Vec<Seen>, EngineError> {
    let who = describe_process(pid);
    let dir = format!("/proc/{pid}/fd");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io_err("list", &dir))? {
        let entry = entry.map_err(io_err("list", &dir))?;
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let link = std::fs::read_link(entry.path()).map_err(io_err("readlink", entry.path()))?;
        let link = link.to_string_lossy().into_owned();
        let info = crate::error::read_proc(pid, &format!("fdinfo/{fd}"))?;
        let (pos, flags) =
            procfs::parse_fdinfo(&info).map_err(EngineError::proc(pid, format!("fdinfo of fd {fd}")))?;
        let mut refuse = |what: String| refusals.push(format!("{who} fd {fd} is {what}"));
        let locks = match procfs::parse_locks(&info, pid) {
            Ok(l) => l,
            Err(what) => {
                refusals.push(format!("{who} fd {fd} ({link}) {what}"));
                continue;
            }
        };
        let write = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
        let kind = if let Some(ino) = pipe_inode(&link) {
            match external.iter().find(|e| e.inode == ino) {
                Some(e) => FdKind::External { name: e.name.clone() },
                None => FdKind::Pipe { inode: ino, write },
            }
        } else if link.starts_with("anon_inode:") || link.starts_with("socket:[") {
            match crate::objects::classify(&FdSeen { pid, fd, link: &link, info: &info })? {
                Ok(kind) => kind,
                Err(what) => {
                    refuse(what);
                    continue;
                }
            }
        } else if crate::objects::mqueue::is_queue(&entry.path()) {
            match crate::objects::mqueue::dump_fd(&FdSeen { pid, fd, link: &link, info: &info })? {
                Ok(kind) => kind,
                Err(what) => {
                    refuse(what);
                    continue;
                }
            }
        } else if on_procfs(&entry.path()) {
            match proc_file(pid, &link, &entry.path(), pos, flags)? {
                Ok(kind) => kind,
                Err(why) => {
                    refuse(format!("{link}, a file of /proc {why}: not supported"));
                    continue;
                }
            }
        } else if let Some(named) = Named::of(&link, false) {
            let path = entry.path().to_string_lossy().into_owned();
            let md = std::fs::metadata(&path).map_err(io_err("stat", &path))?;
            if matches!(named, Named::Deleted(_)) && !md.is_file() {
                let what = if md.is_dir() { "directory" } else { "special file" };
                refuse(format!("a deleted {what} ({link}): not supported yet"));
                continue;
            }
            // A mapping of huge pages is refused by mm; an fd alone (a memfd of
            // MFD_HUGETLB) would come back as a file of small pages.
            if nix::sys::statfs::statfs(path.as_str())
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::HUGETLBFS_MAGIC)
            {
                refuse(format!("a file of huge pages ({link}, hugetlbfs): not supported"));
                continue;
            }
            FdKind::Object { id: objects.id(proc, &path, named)?, pos }
        } else if link.starts_with('/') {
            let md = std::fs::metadata(entry.path()).map_err(io_err("stat", entry.path()))?;
            if md.is_file() {
                FdKind::File { file: file_id(&link, &entry.path().to_string_lossy())?, pos }
            } else if md.is_dir() {
                FdKind::Dir { path: link.clone(), pos }
            } else if md.file_type().is_char_device()
                && migrate_proto::validate::DEVICES.contains(&link.as_str())
            {
                FdKind::Device { path: link.clone() }
            } else if md.file_type().is_fifo() {
                FdKind::Pipe { inode: crate::objects::fifo::key(&md), write }
            } else {
                refuse(format!("{link}, a kind of file not supported yet"));
                continue;
            }
        } else {
            refuse(format!("{link}, a kind of file not supported yet"));
            continue;
        };
        out.push(Seen { fd, flags, kind, link, locks });
    }
    out.sort_by_key(|s| s.fd);
    Ok(out)
}

/// Whether the fd at `path` is a file of a procfs (`PROC_SUPER_MAGIC`).
fn on_procfs(path: &std::path::Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
}

/// A file of `/proc` that the process gets back exactly by opening its path again, or
/// why not: it must be open read-only and never read (position 0: a seq_file renders
/// its text at the first read and keeps it, so an fd that read part of it holds text a
/// new fd would render anew), and be a live process's of the container, in its own
/// `/proc` (`/proc/N/…`; what `/proc/self` resolved to: the restored process has the
/// same pid, and the fd the same task and mm behind it) or no process's
/// (`/proc/meminfo`, `/proc/sys/…`).
fn proc_file(
    pid: i32,
    link: &str,
    fd_path: &std::path::Path,
    pos: u64,
    flags: u32,
) -> Result<Result<FdKind, String>, EngineError> {
    if flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 {
        return Ok(Err("is open for writing".into()));
    }
    if pos != 0 {
        return Ok(Err(format!("was read up to byte {pos} (a new fd would render its text anew)")));
    }
    let mut words = link.strip_prefix("/proc/").unwrap_or("").split('/');
    let first = words.next().unwrap_or("");
    if !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()) {
        // Read through the container's root, the status of a process of a procfs of the
        // container's pid namespace names it by one pid, the one in the path.
        let ours = std::fs::read_to_string(format!("/proc/{pid}/root/proc/{first}/status"))
            .ok()
            .and_then(|text| procfs::parse_status(&text).ok()?.nspid)
            .is_some_and(|v| v.iter().map(i32::to_string).eq([first]));
        if !ours {
            return Ok(Err("is not of a live process of the container's own /proc".into()));
        }
        // The restore opens it again when it installs the holder's fds: only the holder
        // and its ancestors exist then, and no thread but their main ones.
        let task = (words.next() == Some("task")).then(|| words.next()).flatten();
        if !made_before(pid, first) || task.is_some_and(|t| t != first) {
            return Ok(Err(
                "is of a process or thread the restore makes only after this one's fds (a child, or a thread): not supported yet".into(),
            ));
        }
    }
    let md = std::fs::metadata(fd_path).map_err(io_err("stat", fd_path))?;
    // `open("/proc/self/fd/N", O_PATH | O_NOFOLLOW)` holds the link itself, not what it
    // leads to: opened again by its path it is another file (an empty one, or ENOTDIR
    // where a directory is expected).
    if md.file_type().is_symlink() {
        return Ok(Err("held as the link itself (O_PATH | O_NOFOLLOW), not what it leads to".into()));
    }
    Ok(Ok(if md.is_dir() {
        FdKind::Dir { path: link.to_string(), pos: 0 }
    } else {
        FdKind::File { file: file_id(link, &fd_path.to_string_lossy())?, pos: 0 }
    }))
}

/// Whether the process of container pid `target` is `pid` (ours) or one of its
/// ancestors in the container: made before it by a restore.
fn made_before(pid: i32, target: &str) -> bool {
    let mut cur = pid;
    // A tree is at most PID_MAX deep; a loop would mean a /proc that changes under us.
    for _ in 0..migrate_proto::validate::PID_MAX {
        let Ok(status) = procfs::read_status(cur) else { return false };
        let Ok(nspid) = procfs::innermost(&status.nspid, "NSpid") else { return false };
        if nspid.to_string() == target {
            return true;
        }
        if nspid == 1 {
            return false;
        }
        cur = status.ppid;
    }
    false
}

/// Refuses, before anything is frozen, fds that cannot be restored: unsupported kinds,
/// pipes and FIFOs whose other end is outside the container, pipes grown beyond
/// `pipe-max-size` (recreating them needs CAP_SYS_RESOURCE).
pub fn check(pids: &[i32], external: &[ExternalPipe], refusals: &mut Refusals) -> Result<(), EngineError> {
    let mut pipes: HashMap<u64, (i32, i32)> = HashMap::new();
    let mut objects = Registry::default();
    let mut fifos = Vec::new();
    for (i, &pid) in pids.iter().enumerate().filter(|&(_, &p)| !crate::seize::is_zombie(p)) {
        for s in classify(pid, i, external, &mut objects, refusals)? {
            if let FdKind::Pipe { inode, .. } = s.kind {
                pipes.entry(inode).or_insert((pid, s.fd));
                if crate::objects::fifo::is_fifo(inode) {
                    fifos.push((pid, s.fd, inode));
                }
            }
        }
    }
    crate::objects::epoll::check(pids, refusals)?;
    let alive: Vec<i32> = pids.iter().copied().filter(|&p| !crate::seize::is_zombie(p)).collect();
    crate::objects::unix::check(&alive, refusals)?;
    if pipes.is_empty() {
        return Ok(());
    }
    // A FIFO's key is never a pipe's inode number: the pipes' check below passes it.
    refusals.gather(crate::objects::fifo::check(pids, &fifos))?;
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let outside = pipes_outside(pids);
    for (&inode, &(pid, fd)) in &pipes {
        let size = pipe_size(pid, fd)?;
        let who = describe_process(pid);
        if u64::from(size) > max {
            refusals.push(format!(
                "{who} fd {fd} is a pipe of {size} bytes, beyond pipe-max-size ({max}): recreating it needs CAP_SYS_RESOURCE"
            ));
        }
        if let Some(&outside) = outside.get(&inode) {
            refusals.push(format!(
                "{who} fd {fd} is a pipe (pipe:[{inode}]) whose other end is held by pid {outside} ({}), outside the container",
                std::fs::read_to_string(format!("/proc/{outside}/comm")).unwrap_or_default().trim()
            ));
        }
    }
    Ok(())
}

/// The pipes held by processes outside `inside`, each with one such holder: one walk of
/// `/proc` for all the container's pipes, not one per pipe.
fn pipes_outside(inside: &[i32]) -> HashMap<u64, i32> {
    let mut out = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for pid in procs.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        if inside.contains(&pid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in fds.filter_map(|e| e.ok()) {
            if let Some(ino) =
                std::fs::read_link(e.path()).ok().and_then(|l| pipe_inode(&l.to_string_lossy()))
            {
                out.entry(ino).or_insert(pid);
            }
        }
    }
    out
}

/// A copy of fd `fd` of `pid` (host pid), by `pidfd_getfd`.
pub(crate) fn take(pid: i32, fd: i32) -> Result<std::os::fd::OwnedFd, EngineError> {
    let pidfd = migrate_sys::pidfd::PidFd::open(pid)
        .map_err(|e| EngineError::Unsupported(format!("pid {pid}: {e}")))?;
    pidfd.get_fd(fd).map_err(|e| EngineError::Unsupported(format!("pid {pid} fd {fd}: {e}")))
}

fn pipe_size(pid: i32, fd: i32) -> Result<u32, EngineError> {
    let f = take(pid, fd)?;
    nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETPIPE_SZ).map(|v| v as u32).map_err(|e| {
        EngineError::Proc { pid, what: format!("fd {fd}"), reason: format!("F_GETPIPE_SZ: {e}") }
    })
}

/// The bytes buffered in a pipe, copied (not consumed) from `src`, a read end (at
/// `pid`/`fd`, or of the same FIFO).
fn pipe_data(pid: i32, fd: i32, src: std::os::fd::OwnedFd, size: u32) -> Result<Vec<u8>, EngineError> {
    let err = |what: &str, e: std::io::Error| EngineError::Proc {
        pid,
        what: format!("pipe at fd {fd}"),
        reason: format!("{what}: {e}"),
    };
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(|e| err("pipe", e.into()))?;
    nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size as i32))
        .map_err(|e| err("F_SETPIPE_SZ", e.into()))?;
    let n = migrate_sys::files::tee(src.as_fd(), w.as_fd(), size as usize).map_err(|e| err("tee", e))?;
    let mut data = vec![0u8; n];
    let got = nix::unistd::read(&r, &mut data).map_err(|e| err("read", e.into()))?;
    data.truncate(got);
    Ok(data)
}

/// For each process (in image order), the pipes it holds first.
pub type PipesPerProcess = Vec<Vec<PipeRecord>>;

/// The fds of every process (`(host pid, image index)`, in image order) with their
/// description ids, and the pipes each process holds first; memfds and deleted files go
/// to `objects`.
pub fn dump_all(
    procs: &[(i32, usize)],
    external: &[ExternalPipe],
    objects: &mut Registry,
) -> Result<(Vec<Vec<FdRecord>>, PipesPerProcess), EngineError> {
    let mut refusals = Refusals::default();
    let seen: Vec<Vec<Seen>> = procs
        .iter()
        .map(|&(p, i)| classify(p, i, external, objects, &mut refusals))
        .collect::<Result<_, _>>()?;
    // The precheck refused these already; something changed since.
    refusals.into_result()?;
    // Descriptions: candidates share a link; kcmp decides.
    let mut reps: HashMap<&str, Vec<(i32, i32, u64)>> = HashMap::new();
    let mut next_id = 1u64;
    let mut fds = Vec::with_capacity(procs.len());
    for (&(pid, _), list) in procs.iter().zip(&seen) {
        let mut out = Vec::with_capacity(list.len());
        for s in list {
            let group = reps.entry(s.link.as_str()).or_default();
            let mut id = None;
            for &(rp, rfd, rid) in group.iter() {
                if migrate_sys::files::same_file(rp, rfd, pid, s.fd).map_err(|e| EngineError::Proc {
                    pid,
                    what: format!("fd {}", s.fd),
                    reason: format!("kcmp: {e}"),
                })? {
                    id = Some(rid);
                    break;
                }
            }
            let id = id.unwrap_or_else(|| {
                let id = next_id;
                next_id += 1;
                group.push((pid, s.fd, id));
                id
            });
            out.push(FdRecord {
                fd: s.fd,
                file_id: id,
                flags: s.flags,
                kind: s.kind.clone(),
                locks: s.locks.clone(),
            });
        }
        fds.push(out);
    }
    crate::objects::epoll::resolve(procs, &mut fds)?;
    // Each pipe's size and bytes go with the first process holding an end of it.
    let mut pipes: Vec<Vec<PipeRecord>> = procs.iter().map(|_| Vec::new()).collect();
    let mut done: Vec<u64> = Vec::new();
    for (i, list) in seen.iter().enumerate() {
        for s in list {
            let FdKind::Pipe { inode, .. } = s.kind else { continue };
            if done.contains(&inode) {
                continue;
            }
            done.push(inode);
            let size = pipe_size(procs[i].0, s.fd)?;
            // Only a read end can show the bytes. With no reader left, nobody will read a
            // pipe's; a FIFO's, a reader that opens it later would.
            let reader = seen.iter().zip(procs).find_map(|(l, &(p, _))| {
                l.iter()
                    .find(|x| matches!(x.kind, FdKind::Pipe { inode: n, write: false } if n == inode))
                    .map(|x| (p, x.fd))
            });
            let fifo = crate::objects::fifo::record(procs[i].0, s.fd, &s.link)?;
            let data = match reader {
                Some((p, fd)) => pipe_data(p, fd, take(p, fd)?, size)?,
                None if fifo.is_some() => {
                    pipe_data(procs[i].0, s.fd, crate::objects::fifo::reader(procs[i].0, s.fd)?, size)?
                }
                None => Vec::new(),
            };
            pipes[i].push(PipeRecord { inode, size, data, fifo });
        }
    }
    Ok((fds, pipes))
}

/// What a restore knows about descriptions already rebuilt, across processes.
#[derive(Debug, Default)]
pub struct FdWorld {
    /// Where each description lives now: `(ns pid, fd)`.
    files: HashMap<u64, (i32, u64)>,
    /// Pipes made so far: both ends, kept at spare fds of their maker.
    pipes: HashMap<u64, (i32, u64, u64)>,
    /// The new shim's stdout and stderr, kept at spare fds of PID 1.
    external: HashMap<String, (i32, u64)>,
    /// Spare fds to close once every process is restored: `(ns pid, fd)`.
    pub spares: Vec<(i32, u64)>,
    /// Every pipe of the image, by inode.
    pub records: HashMap<u64, PipeRecord>,
    /// The image's objects rebuilt so far, by id.
    pub objects: HashMap<u64, Live>,
    /// Epoll registrations added so far: `(epoll file_id, index)`.
    pub epoll_done: HashSet<(u64, usize)>,
    /// The image's unix sockets, and those made so far.
    pub unix: crate::objects::unix::World,
    /// Files made on the filesystem (FIFOs, socket nodes, deleted files while they have a
    /// name): removed again if the restore fails.
    pub(crate) created: crate::hostfs::Created,
}

impl FdWorld {
    /// Where the processes of the container open object `id` (its owner made it).
    pub fn object_path(&self, id: u64) -> Result<&str, EngineError> {
        self.object(id).map(|o| o.path.as_str())
    }

    pub fn object(&self, id: u64) -> Result<&Live, EngineError> {
        self.objects
            .get(&id)
            .ok_or_else(|| EngineError::Incompatible(format!("object {id} is used before its owner made it")))
    }
}

/// Copies fd `fd` of process `from` (ns pid) into `task` at `target`.
pub(crate) fn copy_from(
    task: &mut Task,
    gadget: u64,
    from: i32,
    fd: u64,
    target: u64,
    cloexec: u64,
) -> Result<(), EngineError> {
    let pidfd =
        task.call(gadget, libc::SYS_pidfd_open, &[from as u64, 0], || format!("pidfd_open({from})"))?;
    let got =
        task.call(gadget, libc::SYS_pidfd_getfd, &[pidfd, fd, 0], || format!("pidfd_getfd({from}, {fd})"));
    task.call(gadget, libc::SYS_close, &[pidfd], || "close".into())?;
    let got = got?;
    if got != target {
        task.call(gadget, libc::SYS_dup3, &[got, target, cloexec], || format!("dup3 to fd {target}"))?;
        task.call(gadget, libc::SYS_close, &[got], || "close".into())?;
    } else if cloexec == 0 {
        // pidfd_getfd always sets FD_CLOEXEC; landing on the right number keeps it.
        task.call(gadget, libc::SYS_fcntl, &[target, libc::F_SETFD as u64, 0], || {
            format!("fcntl(F_SETFD) of fd {target}")
        })?;
    }
    Ok(())
}

/// Installs every fd of the image in the process `remote` (`pid_ns` in the container),
/// closing whatever it had (a stub's own, or those inherited from its parent).
pub fn restore(
    remote: &mut Remote<'_>,
    pid_ns: i32,
    fds: &[FdRecord],
    world: &mut FdWorld,
) -> Result<(), EngineError> {
    // Spare fds go above every fd of the image, so that installing never hits them.
    let base = fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) as u64 + 1;
    world.unix.here = (pid_ns, base);
    if world.external.is_empty() {
        // PID 1, a stub: its stdout and stderr are the new shim's pipes.
        for (fd, name) in [(1u64, "stdout"), (2, "stderr")] {
            let copy =
                remote.call(libc::SYS_fcntl, &[fd, libc::F_DUPFD_CLOEXEC as u64, base + 16], || {
                    format!("fcntl(F_DUPFD, {name})")
                })?;
            world.external.insert(name.to_string(), (pid_ns, copy));
            world.spares.push((pid_ns, copy));
        }
    }
    let keep: Vec<u64> = world.spares.iter().filter(|(p, _)| *p == pid_ns).map(|(_, fd)| *fd).collect();
    let host = remote.pid;
    let open_now: Vec<u64> = std::fs::read_dir(format!("/proc/{host}/fd"))
        .map_err(io_err("list", format!("/proc/{host}/fd")))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| !keep.contains(fd))
        .collect();
    for fd in open_now {
        remote.call(libc::SYS_close, &[fd], || format!("close({fd})"))?;
    }
    // Descriptions made here, not copied: their flock and OFD locks are taken here.
    let mut made = Vec::new();
    for rec in fds {
        let cloexec = if rec.flags & libc::O_CLOEXEC as u32 != 0 { libc::O_CLOEXEC as u64 } else { 0 };
        let target = rec.fd as u64;
        if matches!(rec.kind, FdKind::PidFd(_)) {
            // Made once every process exists (objects::pidfd).
            continue;
        }
        if let Some(&(from, fd)) = world.files.get(&rec.file_id) {
            copy_from(remote.task, remote.gadget, from, fd, target, cloexec)?;
            continue;
        }
        made.push(rec.file_id);
        match &rec.kind {
            FdKind::External { name } => {
                let &(from, fd) = world.external.get(name).ok_or_else(|| {
                    EngineError::Incompatible(format!("fd {}: unknown external object {name:?}", rec.fd))
                })?;
                copy_from(remote.task, remote.gadget, from, fd, target, cloexec)?;
            }
            FdKind::Pipe { inode, write } => {
                let (from, r, w) = match world.pipes.get(inode) {
                    Some(&ends) => ends,
                    None => {
                        let ends = make_pipe(remote, pid_ns, *inode, base, world)?;
                        world.pipes.insert(*inode, ends);
                        ends
                    }
                };
                match world.records.get(inode).and_then(|p| p.fifo.clone()) {
                    // A FIFO's ends are opened anew, each its own description.
                    Some(f) => crate::objects::fifo::open_end(remote, &f, rec, cloexec)?,
                    None => {
                        let end = if *write { w } else { r };
                        copy_from(remote.task, remote.gadget, from, end, target, cloexec)?
                    }
                }
                // Status flags (O_NONBLOCK) belong to the description, set once here.
                let status = rec.flags & (libc::O_NONBLOCK | libc::O_ASYNC) as u32;
                remote.call(libc::SYS_fcntl, &[target, libc::F_SETFL as u64, u64::from(status)], || {
                    format!("fcntl(F_SETFL) of fd {target}")
                })?;
            }
            FdKind::File { .. } | FdKind::Dir { .. } | FdKind::Device { .. } | FdKind::Object { .. } => {
                open_file(remote, rec, cloexec, world)?
            }
            _ => crate::objects::restore(remote, rec, cloexec, world)?,
        }
        world.files.insert(rec.file_id, (pid_ns, target));
    }
    // Before the locks: registering moves fds around, and a close drops POSIX locks.
    crate::objects::epoll::register(remote, fds, &mut world.epoll_done)?;
    for rec in fds {
        for lock in &rec.locks {
            if lock.kind == LockKind::Posix || made.contains(&rec.file_id) {
                take_lock(remote, rec, lock)?;
            }
        }
    }
    Ok(())
}

/// Takes `lock` again through fd `rec.fd`, without waiting: a conflicting lock here
/// (held by a process outside the container) is an error, not a wait.
fn take_lock(remote: &mut Remote<'_>, rec: &FdRecord, lock: &FileLock) -> Result<(), EngineError> {
    let fd = rec.fd as u64;
    let what = || format!("{:?} {} lock on fd {fd}", lock.kind, if lock.write { "write" } else { "read" });
    let res = match lock.kind {
        LockKind::Flock => {
            let op = if lock.write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
            remote.syscall(libc::SYS_flock, &[fd, op as u64])?
        }
        LockKind::Posix | LockKind::Ofd => {
            // struct flock (x86-64): short l_type, short l_whence, off_t l_start,
            // off_t l_len (0: to the end of the file), pid_t l_pid (0 for OFD locks).
            let ty = if lock.write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
            let len = lock.end.map_or(0, |e| e - lock.start + 1);
            let mut b = Vec::with_capacity(32);
            b.extend_from_slice(&ty.to_ne_bytes());
            b.extend_from_slice(&(libc::SEEK_SET as i16).to_ne_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&lock.start.to_ne_bytes());
            b.extend_from_slice(&len.to_ne_bytes());
            b.extend_from_slice(&[0; 8]);
            let at = remote.write(0, &b)?;
            let cmd = if lock.kind == LockKind::Ofd { libc::F_OFD_SETLK } else { libc::F_SETLK };
            remote.syscall(libc::SYS_fcntl, &[fd, cmd as u64, at])?
        }
    };
    res.map(|_| ()).map_err(|errno| match errno {
        nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES => EngineError::Incompatible(format!(
            "the {} cannot be taken again: a process outside the container holds a conflicting lock on the file",
            what()
        )),
        errno => EngineError::Injected { pid: remote.pid, call: what(), errno },
    })
}

fn open_file(
    remote: &mut Remote<'_>,
    rec: &FdRecord,
    cloexec: u64,
    world: &FdWorld,
) -> Result<(), EngineError> {
    let target = rec.fd as u64;
    let (path, pos): (&str, u64) = match &rec.kind {
        FdKind::File { file, pos } => {
            check_file(remote.pid, file, false)?;
            (&file.path, *pos)
        }
        FdKind::Dir { path, pos } => (path, *pos),
        FdKind::Device { path } => (path, 0),
        // A new description of the object, opened from its anchor.
        FdKind::Object { id, pos } => (world.object_path(*id)?, *pos),
        FdKind::Pipe { .. } | FdKind::External { .. } => return Ok(()),
        // Each other kind is made by objects::restore: never left out in silence.
        other => {
            return Err(EngineError::Incompatible(format!("fd {}: {other:?} is not a file to open", rec.fd)));
        }
    };
    let keep = !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC) as u32;
    let at = remote.path(0, path)?;
    let tmp = remote.call(
        libc::SYS_openat,
        &[libc::AT_FDCWD as u64, at, u64::from(rec.flags & keep) | cloexec, 0],
        || format!("open {path} for fd {}", rec.fd),
    )?;
    crate::objects::install(remote, tmp, target, cloexec)?;
    if pos != 0 {
        remote.call(libc::SYS_lseek, &[target, pos, libc::SEEK_SET as u64], || {
            format!("lseek fd {target} to {pos}")
        })?;
    }
    Ok(())
}

/// Gives the pipe or FIFO whose write end (or read-write end) is `fd` its capacity and
/// the bytes buffered in it; `what` names it in errors.
pub(crate) fn fill_pipe(
    remote: &mut Remote<'_>,
    fd: u64,
    rec: &PipeRecord,
    what: &str,
) -> Result<(), EngineError> {
    remote.call(libc::SYS_fcntl, &[fd, libc::F_SETPIPE_SZ as u64, u64::from(rec.size)], || {
        format!("fcntl(F_SETPIPE_SZ, {}) of {what}", rec.size)
    })?;
    let mut done = 0;
    for chunk in rec.data.chunks(16 << 10) {
        let at = remote.write(32 << 10, chunk)?;
        let n =
            remote.call(libc::SYS_write, &[fd, at, chunk.len() as u64], || format!("write into {what}"))?;
        done += n;
        if n != chunk.len() as u64 {
            return Err(EngineError::Incompatible(format!("{what} took {done} of {} bytes", rec.data.len())));
        }
    }
    Ok(())
}

/// Makes pipe `inode` in this process, sized and filled as it was, both ends kept at
/// spare fds for every process that holds one; returns `(ns pid, read fd, write fd)`.
fn make_pipe(
    remote: &mut Remote<'_>,
    pid_ns: i32,
    inode: u64,
    base: u64,
    world: &mut FdWorld,
) -> Result<(i32, u64, u64), EngineError> {
    let rec = world
        .records
        .get(&inode)
        .cloned()
        .ok_or_else(|| EngineError::Incompatible(format!("pipe:[{inode}] has no record")))?;
    if let Some(fifo) = &rec.fifo {
        let spare = crate::objects::fifo::make(
            remote,
            pid_ns,
            &rec,
            fifo,
            base,
            &mut world.spares,
            &mut world.created,
        )?;
        return Ok((pid_ns, spare, spare));
    }
    remote.call(libc::SYS_pipe2, &[remote.scratch.addr, libc::O_CLOEXEC as u64], || "pipe2".into())?;
    let fds = remote.read(0, 8)?;
    let end = |i: usize| u64::from(u32::from_ne_bytes(fds[i..i + 4].try_into().unwrap_or([0; 4])));
    let (mut r, mut w) = (end(0), end(4));
    let mut moved = Vec::new();
    for fd in [&mut r, &mut w] {
        let hi = remote.call(libc::SYS_fcntl, &[*fd, libc::F_DUPFD_CLOEXEC as u64, base + 32], || {
            "fcntl(F_DUPFD)".into()
        })?;
        remote.call(libc::SYS_close, &[*fd], || "close".into())?;
        *fd = hi;
        moved.push(hi);
    }
    fill_pipe(remote, w, &rec, &format!("pipe:[{inode}]"))?;
    world.spares.extend(moved.into_iter().map(|fd| (pid_ns, fd)));
    Ok((pid_ns, r, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_inodes_from_links() {
        assert_eq!(pipe_inode("pipe:[42]"), Some(42));
        assert_eq!(pipe_inode("socket:[42]"), None);
    }
}
