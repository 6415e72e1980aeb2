//! The container's IPC namespace: System V shared memory segments, semaphore sets and
//! message queues, and the namespace's limits (POSIX message queues are
//! [`super::mqueue`]). All of it travels in PID 1's record
//! ([`migrate_proto::records::IpcNamespace`]).
//!
//! **Where the work runs.** Every System V call acts on the calling *thread's* IPC
//! namespace, and `/proc/sysvipc/*` and the IPC sysctls under `/proc/sys` show the
//! reader's. So both sides run on a short-lived engine thread that `setns`es into the
//! container's namespace (`/proc/PID/ns/ipc` of its PID 1, or of the restore stub):
//! `setns(CLONE_NEWIPC)` moves only the calling thread, the engine's own threads (and
//! the one that runs every ptrace request) stay where they are, and nothing has to be
//! injected into a task — which could not `shmat` a segment into the engine anyway.
//! Setting `kernel.shm_next_id` (`sem_next_id`, `msg_next_id`; CONFIG_CHECKPOINT_RESTORE)
//! on that thread before each create gives the object its id again: the kernel takes the
//! value for the next id and resets it to -1.
//!
//! **Dump.** The objects come from `/proc/sysvipc/{shm,sem,msg}` (the mode there carries
//! `SHM_DEST` 0o1000 and `SHM_LOCKED` 0o2000). A segment is attached read-only by the
//! thread, opened through `/proc/self/map_files` (a shmem file of the segment: it keeps
//! the inode, not the segment) and detached: the file is the object's source, the
//! segment an object of the dump's registry owned by PID 1 (`SysvShm`), so its contents
//! travel once, as page batches of the object with holes skipped, like any shared
//! memory; the mappings of the processes (`/SYSV<key> (deleted)` in `maps`) find it by
//! inode. That attach updates the segment's `shm_atime`, `shm_dtime` and `shm_lpid` on
//! the source (as CRIU's does). Semaphore values come from `GETALL`, messages from
//! `msgrcv(MSG_COPY | IPC_NOWAIT)` by index, which copies without consuming — into a
//! buffer the kernel caps at `kernel.msgmax`, so where a queue holds more bytes than
//! msgmax allows in one message (msgmax was lowered after a send), msgmax is raised for
//! the copies and set back at once, while the container is frozen. A restore likewise
//! raises it while it sends such messages again.
//!
//! **Restore**, before the stub is rebuilt: each object with its id, key and mode, created as its creator
//! (`cuid`/`cgid`: the thread's effective ids for the call), then owner set by `IPC_SET`;
//! semaphore values by `SETALL`; messages sent again in order; a segment `SHM_LOCK`ed
//! again, its contents written through a `map_files` file of it, like an object's; then
//! the POSIX queues; last, the limits that differed from a fresh namespace's (while the
//! objects are made, each is the larger of the two: a limit the program lowered after
//! making an object would refuse it). The processes attach segments by injected `shmat` ([`attach`], called by [`crate::mm`]
//! where the VMAs are mapped). At the end, once every attachment is made ([`finish`]),
//! segments that were marked for destruction are removed again (`IPC_RMID`).
//!
//! **Refused**: segments in a namespace with `kernel.shm_rmid_forced` set (there the
//! creating process decides when a segment goes — `exit_shm` — and the restored ones
//! were created by the engine's thread; refused before any segment is attached, since
//! the dump's own detach would destroy one no process has attached), segments of huge
//! pages (`SHM_HUGETLB`), a namespace the engine shares (the host's), objects beyond what
//! an image may hold (raised `kernel.sem`, `msgmnb`, `msgmax`, `*mni`). A process of the
//! container in another IPC namespace is refused by [`crate::dump`].
//!
//! **Not carried**, and not visible to a dump: semaphore undo values (`semadj`, kept per
//! process in the kernel's `sem_undo` lists and shown nowhere in `/proc` or by any call;
//! CRIU neither detects nor carries them, its issue #47): a process that relies on
//! `SEM_UNDO` gets no adjustment at its exit after a restore, and no dump can tell that it
//! did. Also not: the `otime`/`ctime`/`stime`/`rtime`/`atime`/`dtime` times and the last
//! pids (`sempid`, `lspid`, `lrpid`, `cpid`, `lpid`), which no call sets.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use migrate_proto::records::{
    IPC_LIMITS, IpcLimit, IpcNamespace, IpcPerm, MAX_IPC_OBJECTS, MAX_MSG_BYTES, MAX_MSGS, MAX_QUEUE_BYTES,
    MAX_SEMS, MsgQueue, ObjectKind, ObjectRecord, SemSet, ShmSegment, SysvMessage, Vma, VmaBacking,
};
use migrate_sys::ipc;
use procfs_core::FromRead;
use procfs_core::process::MemoryMaps;

use crate::error::{EngineError, io_err};
use crate::inject::Remote;
use crate::objects::shmem::{Live, Named, Registry};

const SHM_DEST: u32 = 0o1000;
const SHM_LOCKED: u32 = 0o2000;

/// Runs `f` on a thread of its own in the IPC namespace of `pid` (host pid).
pub fn in_namespace<T: Send>(
    pid: i32,
    f: impl FnOnce() -> Result<T, EngineError> + Send,
) -> Result<T, EngineError> {
    let path = format!("/proc/{pid}/ns/ipc");
    let ns = File::open(&path).map_err(io_err("open", &path))?;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("ipc-ns".into())
            .spawn_scoped(s, || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWIPC).map_err(|e| {
                    EngineError::Io { op: "setns into", path: path.clone().into(), source: e.into() }
                })?;
                f()
            })
            .map_err(io_err("spawn a thread for", &path))?
            .join()
            .unwrap_or_else(|_| Err(EngineError::Unsupported("the IPC namespace thread panicked".into())))
    })
}

/// What a dump of the namespace holds besides its record: the files its segments'
/// contents are read from (`/proc/self/fd/N` paths in the registry name them).
#[derive(Debug, Default)]
pub struct Held {
    pub files: Vec<File>,
}

/// Reads the IPC namespace of `pid` (the container's PID 1); registers its segments in
/// `objects`, owned by PID 1 (index 0).
pub fn dump(pid: i32, objects: &mut Registry) -> Result<(IpcNamespace, Held), EngineError> {
    if shares_ours(pid)? {
        return Err(EngineError::Unsupported(format!(
            "{} shares the host's IPC namespace: not supported (a container has one of its own)",
            crate::files::describe_process(pid)
        )));
    }
    let (mut ns, segments) = in_namespace(pid, || {
        let limits = limits()?;
        let rows = table("shm")?;
        // Before any segment is attached: with shm_rmid_forced, the kernel destroys a
        // segment at the detach that leaves it unattached (shm_may_destroy), so the
        // dump's own shmat and shmdt would take one no process has attached.
        let forced = limits.iter().any(|l| l.name == "kernel/shm_rmid_forced" && l.value != "0");
        if let (true, Some(row)) = (forced, rows.first()) {
            return Err(EngineError::Unsupported(format!(
                "the IPC namespace has kernel.shm_rmid_forced set, and System V segment {} exists: its creating process decides when it goes, and a restore cannot give it back its creator; not supported",
                num(row, 1, 10)?
            )));
        }
        let mut segments = Vec::new();
        for row in rows {
            let perm = perm(&row, [0, 1, 2, 7, 8, 9, 10])?;
            let mode = num(&row, 2, 8)? as u32;
            let size = num(&row, 3, 10)?;
            let file = open_segment(perm.id)?;
            segments.push((
                ShmSegment { perm, size, locked: mode & SHM_LOCKED != 0, removed: mode & SHM_DEST != 0 },
                file,
            ));
        }
        let mut sem = Vec::new();
        for row in table("sem")? {
            let perm = perm(&row, [0, 1, 2, 4, 5, 6, 7])?;
            let nsems = num(&row, 3, 10)? as usize;
            // kernel.sem's semmsl may be raised beyond what an image may hold.
            if nsems > MAX_SEMS {
                return Err(EngineError::Unsupported(format!(
                    "System V semaphore set {} has {nsems} semaphores, more than {MAX_SEMS}: not supported",
                    perm.id
                )));
            }
            let mut values = vec![0u16; nsems];
            ipc::semctl_all(perm.id, libc::GETALL, &mut values)
                .map_err(sys_err("semctl(GETALL)", perm.id))?;
            sem.push(SemSet { perm, values });
        }
        let rows = table("msg")?;
        // MSG_COPY copies into a buffer of at most msgmax bytes (the kernel's
        // prepare_copy): a message sent before msgmax was lowered is copied only while
        // msgmax is raised to the queue's bytes, and msgmax is set back at once after.
        let msgmax = std::fs::read_to_string(sysctl_path("kernel/msgmax"))
            .map_err(io_err("read", sysctl_path("kernel/msgmax")))?;
        let need = rows.iter().filter_map(|r| num(r, 3, 10).ok()).max().unwrap_or(0);
        let raised = msgmax.trim().parse::<u64>().is_ok_and(|max| need > max);
        if raised {
            set_sysctl("kernel/msgmax", &need.to_string())?;
        }
        let copied = copy_queues(&rows);
        if raised {
            set_sysctl("kernel/msgmax", msgmax.trim())?;
        }
        let msg = copied?;
        let mqueues = super::mqueue::dump()?;
        let ns = IpcNamespace { limits, shm: Vec::new(), sem, msg, mqueues };
        Ok((ns, segments))
    })?;
    let mut held = Held::default();
    let me = std::process::id();
    for (seg, file) in segments {
        let path = format!("/proc/{me}/fd/{}", file.as_raw_fd());
        objects.id(0, &path, Named::Sysv(seg.perm.id))?;
        held.files.push(file);
        ns.shm.push(seg);
    }
    Ok((ns, held))
}

/// Whether `pid` is in the engine's own IPC namespace.
fn shares_ours(pid: i32) -> Result<bool, EngineError> {
    let ns_of = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).map_err(io_err("stat", p));
    Ok(ns_of(&format!("/proc/{pid}/ns/ipc"))? == ns_of("/proc/self/ns/ipc")?)
}

/// The System V message queues of `rows` (`/proc/sysvipc/msg`), their messages copied.
fn copy_queues(rows: &[Vec<String>]) -> Result<Vec<MsgQueue>, EngineError> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let perm = perm(row, [0, 1, 2, 7, 8, 9, 10])?;
        let (bytes, count) = (num(row, 3, 10)? as usize, num(row, 4, 10)?);
        // msgmnb and msgmax may be raised beyond what an image may hold.
        if count > MAX_MSGS as u64 || bytes > MAX_QUEUE_BYTES {
            return Err(EngineError::Unsupported(format!(
                "System V message queue {} holds {count} messages of {bytes} bytes, more than {MAX_MSGS} or {MAX_QUEUE_BYTES} bytes: not supported",
                perm.id
            )));
        }
        let ds = ipc::msg_stat(perm.id).map_err(sys_err("msgctl(IPC_STAT)", perm.id))?;
        let mut messages = Vec::with_capacity(count as usize);
        for i in 0..count {
            let (mtype, text) = ipc::msg_copy(perm.id, i as i64, bytes.max(1))
                .map_err(sys_err("msgrcv(MSG_COPY)", perm.id))?;
            if text.len() > MAX_MSG_BYTES {
                return Err(EngineError::Unsupported(format!(
                    "System V message queue {} holds a message of {} bytes, more than {MAX_MSG_BYTES}: not supported",
                    perm.id,
                    text.len()
                )));
            }
            messages.push(SysvMessage { mtype, text });
        }
        out.push(MsgQueue { perm, qbytes: ds.msg_qbytes, messages });
    }
    Ok(out)
}

/// A file of segment `id`'s shmem: attach it read-only, open the attachment through
/// `map_files`, detach.
fn open_segment(id: i32) -> Result<File, EngineError> {
    let at = ipc::shmat(id, 0, libc::SHM_RDONLY).map_err(sys_err("shmat", id))?;
    let opened = open_attachment(at, false);
    ipc::shmdt(at).map_err(sys_err("shmdt", id))?;
    let file = opened?;
    // Huge pages (SHM_HUGETLB) live on hugetlbfs, whose holes SEEK_DATA cannot find and
    // which a restore would need the host's huge page pool for.
    let huge = nix::sys::statfs::fstatfs(&file)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::HUGETLBFS_MAGIC);
    if huge {
        return Err(EngineError::Unsupported(format!(
            "System V segment {id} is made of huge pages (SHM_HUGETLB): not supported"
        )));
    }
    Ok(file)
}

/// Opens our own attachment at `at` through `/proc/self/map_files` (root may): a file
/// of the segment's shmem, which outlives the attachment.
fn open_attachment(at: usize, writable: bool) -> Result<File, EngineError> {
    const MAPS: &str = "/proc/thread-self/maps";
    let text = std::fs::read_to_string(MAPS).map_err(io_err("read", MAPS))?;
    let maps = MemoryMaps::from_read(text.as_bytes())
        .map_err(|e| crate::procfs::unparsable(MAPS)(crate::procfs::reason(e)))?;
    let (start, end) = maps
        .iter()
        .map(|m| m.address)
        .find(|&(start, _)| start == at as u64)
        .ok_or_else(|| EngineError::Changed(format!("the attachment at {at:#x} is not in our maps")))?;
    // map_files names a mapping `%lx-%lx`, without the padding of maps.
    let path = format!("/proc/self/map_files/{start:x}-{end:x}");
    std::fs::OpenOptions::new().read(true).write(writable).open(&path).map_err(io_err("open", &path))
}

fn sys_err(op: &'static str, id: i32) -> impl Fn(std::io::Error) -> EngineError {
    move |source| EngineError::Io { op, path: format!("System V IPC object {id}").into(), source }
}

/// The rows of `/proc/sysvipc/NAME` of this thread's namespace, split into words (one
/// reader for `msg`, `sem` and `shm`: procfs-core parses only `shm`); more
/// objects than an image may hold (`kernel.*mni` may reach 16M with `ipcmni_extend`)
/// are refused.
fn table(name: &str) -> Result<Vec<Vec<String>>, EngineError> {
    let path = format!("/proc/sysvipc/{name}");
    let text = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
    let rows: Vec<Vec<String>> =
        text.lines().skip(1).map(|l| l.split_whitespace().map(String::from).collect()).collect();
    if rows.len() > MAX_IPC_OBJECTS {
        return Err(EngineError::Unsupported(format!(
            "the IPC namespace has {} System V objects of {path}, more than {MAX_IPC_OBJECTS}: not supported",
            rows.len()
        )));
    }
    Ok(rows)
}

fn num(row: &[String], i: usize, radix: u32) -> Result<u64, EngineError> {
    row.get(i).and_then(|w| i64::from_str_radix(w, radix).ok()).map(|v| v as u64).ok_or_else(|| {
        EngineError::Proc { pid: 0, what: "/proc/sysvipc".into(), reason: format!("bad row {row:?}") }
    })
}

/// The ipc_perm of a row: the columns of key, id, perms, uid, gid, cuid, cgid.
fn perm(row: &[String], c: [usize; 7]) -> Result<IpcPerm, EngineError> {
    Ok(IpcPerm {
        key: num(row, c[0], 10)? as i32,
        id: num(row, c[1], 10)? as i32,
        mode: num(row, c[2], 8)? as u32 & 0o777,
        uid: num(row, c[3], 10)? as u32,
        gid: num(row, c[4], 10)? as u32,
        cuid: num(row, c[5], 10)? as u32,
        cgid: num(row, c[6], 10)? as u32,
    })
}

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{name}")
}

/// The namespace's limits that differ from those of a fresh namespace (read on a thread
/// that unshares one).
fn limits() -> Result<Vec<IpcLimit>, EngineError> {
    let read = || -> Result<Vec<String>, EngineError> {
        IPC_LIMITS
            .iter()
            .map(|n| {
                let p = sysctl_path(n);
                std::fs::read_to_string(&p).map(|v| v.trim().to_string()).map_err(io_err("read", &p))
            })
            .collect()
    };
    let here = read()?;
    let fresh = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWIPC).map_err(|e| EngineError::Io {
                op: "unshare",
                path: "a fresh IPC namespace".into(),
                source: e.into(),
            })?;
            read()
        })
        .join()
        .unwrap_or_else(|_| Err(EngineError::Unsupported("the IPC namespace thread panicked".into())))
    })?;
    Ok(IPC_LIMITS
        .iter()
        .zip(here.into_iter().zip(fresh))
        .filter(|(_, (h, f))| h != f)
        .map(|(n, (h, _))| IpcLimit { name: n.to_string(), value: h })
        .collect())
}

fn set_sysctl(name: &str, value: &str) -> Result<(), EngineError> {
    let p = sysctl_path(name);
    std::fs::write(&p, value).map_err(io_err("write", &p))
}

/// Creates the namespace `ns` in the IPC namespace of the stub `stub` (host pid); the
/// segments' contents are to be written through the returned objects, keyed by their
/// object id (`records`: PID 1's objects).
pub fn restore(
    stub: i32,
    ns: &IpcNamespace,
    records: &[ObjectRecord],
) -> Result<HashMap<u64, Live>, EngineError> {
    // Never into the host's: the objects would be made there.
    if shares_ours(stub)? {
        return Err(EngineError::Incompatible("the restore stub shares the host's IPC namespace".into()));
    }
    in_namespace(stub, || {
        // A limit lowered after objects were made would refuse them: each is the roomier
        // of the image's and the fresh namespace's while they are made, the image's after.
        for l in &ns.limits {
            let p = sysctl_path(&l.name);
            let fresh = std::fs::read_to_string(&p).map_err(io_err("read", &p))?;
            set_sysctl(&l.name, &roomier(&fresh, &l.value))?;
        }
        let mut live = HashMap::new();
        for s in &ns.shm {
            let p = &s.perm;
            let rec = records
                .iter()
                .find(|o| o.kind == ObjectKind::SysvShm { shmid: p.id })
                .ok_or_else(|| EngineError::Incompatible(format!("segment {} has no object", p.id)))?;
            let id = create("shm", p, || ipc::shmget(p.key, s.size as usize, flags(p)))?;
            let mut ds = ipc::shm_stat(id).map_err(sys_err("shmctl(IPC_STAT)", id))?;
            (ds.shm_perm.uid, ds.shm_perm.gid, ds.shm_perm.mode) = (p.uid, p.gid, p.mode as u16);
            ipc::shmctl(id, libc::IPC_SET, &mut ds).map_err(sys_err("shmctl(IPC_SET)", id))?;
            if s.locked {
                ipc::shm_cmd(id, libc::SHM_LOCK).map_err(sys_err("shmctl(SHM_LOCK)", id))?;
            }
            let at = ipc::shmat(id, 0, 0).map_err(sys_err("shmat", id))?;
            let file = open_attachment(at, true);
            ipc::shmdt(at).map_err(sys_err("shmdt", id))?;
            live.insert(
                rec.id,
                Live { path: format!("System V segment {id}"), file: file?, record: rec.clone() },
            );
        }
        for s in &ns.sem {
            let p = &s.perm;
            let id = create("sem", p, || ipc::semget(p.key, s.values.len() as i32, flags(p)))?;
            let mut values = s.values.clone();
            ipc::semctl_all(id, libc::SETALL, &mut values).map_err(sys_err("semctl(SETALL)", id))?;
            let mut ds = ipc::sem_stat(id).map_err(sys_err("semctl(IPC_STAT)", id))?;
            (ds.sem_perm.uid, ds.sem_perm.gid, ds.sem_perm.mode) = (p.uid, p.gid, p.mode as u16);
            ipc::semctl_ds(id, libc::IPC_SET, &mut ds).map_err(sys_err("semctl(IPC_SET)", id))?;
        }
        // A message longer than msgmax (lowered after it was sent) could not be sent
        // again: msgmax is raised meanwhile, and set back after.
        let msgmax = std::fs::read_to_string(sysctl_path("kernel/msgmax"))
            .map_err(io_err("read", sysctl_path("kernel/msgmax")))?;
        let longest = ns.msg.iter().flat_map(|q| &q.messages).map(|m| m.text.len()).max().unwrap_or(0);
        let raise = msgmax.trim().parse::<usize>().is_ok_and(|max| longest > max);
        if raise {
            set_sysctl("kernel/msgmax", &longest.to_string())?;
        }
        for q in &ns.msg {
            let p = &q.perm;
            let id = create("msg", p, || ipc::msgget(p.key, flags(p)))?;
            let mut ds = ipc::msg_stat(id).map_err(sys_err("msgctl(IPC_STAT)", id))?;
            (ds.msg_perm.uid, ds.msg_perm.gid, ds.msg_perm.mode) = (p.uid, p.gid, p.mode as u16);
            // Room for every message (bytes and count, which msgsnd both holds against
            // qbytes) even if qbytes was lowered after they were sent; then qbytes.
            let bytes: u64 = q.messages.iter().map(|m| m.text.len() as u64).sum();
            ds.msg_qbytes = q.qbytes.max(bytes).max(q.messages.len() as u64);
            ipc::msgctl(id, libc::IPC_SET, &mut ds).map_err(sys_err("msgctl(IPC_SET)", id))?;
            for m in &q.messages {
                ipc::msgsnd(id, m.mtype, &m.text).map_err(sys_err("msgsnd", id))?;
            }
            if ds.msg_qbytes != q.qbytes {
                ds.msg_qbytes = q.qbytes;
                ipc::msgctl(id, libc::IPC_SET, &mut ds).map_err(sys_err("msgctl(IPC_SET)", id))?;
            }
        }
        if raise {
            set_sysctl("kernel/msgmax", msgmax.trim())?;
        }
        super::mqueue::restore(&ns.mqueues)?;
        for l in &ns.limits {
            set_sysctl(&l.name, &l.value)?;
        }
        Ok(live)
    })
}

/// Each number of `a` and `b` (a sysctl's words, as `kernel/sem`'s four) at the larger of
/// the two: every IPC limit but `shm_rmid_forced` admits more as it grows, and that one
/// matters only where a segment exists, which the dump refuses. `b` where they differ in
/// shape.
fn roomier(a: &str, b: &str) -> String {
    let words = |s: &str| s.split_whitespace().map(|w| w.parse::<i128>().ok()).collect::<Option<Vec<_>>>();
    match (words(a), words(b)) {
        (Some(x), Some(y)) if x.len() == y.len() => {
            x.iter().zip(&y).map(|(x, y)| x.max(y).to_string()).collect::<Vec<_>>().join(" ")
        }
        _ => b.to_string(),
    }
}

/// `IPC_CREAT | IPC_EXCL` and the mode (the mode is set again by `IPC_SET`).
fn flags(p: &IpcPerm) -> i32 {
    libc::IPC_CREAT | libc::IPC_EXCL | p.mode as i32
}

/// Sets `kernel.KIND_next_id` and runs `make` as the object's creator; checks the id.
fn create(kind: &str, p: &IpcPerm, make: impl FnOnce() -> std::io::Result<i32>) -> Result<i32, EngineError> {
    set_sysctl(&format!("kernel/{kind}_next_id"), &p.id.to_string())?;
    let id = ipc::as_creator(p.cuid, p.cgid, make).and_then(|r| r).map_err(sys_err("create", p.id))?;
    if id != p.id {
        return Err(EngineError::Incompatible(format!(
            "System V {kind} object {} came back as {id}: kernel.{kind}_next_id was not honoured",
            p.id
        )));
    }
    Ok(id)
}

/// What waits until every process is built: segments marked for destruction are
/// removed again (they go with their last attachment).
pub fn finish(stub: i32, ns: &IpcNamespace) -> Result<(), EngineError> {
    if !ns.shm.iter().any(|s| s.removed) {
        return Ok(());
    }
    in_namespace(stub, || {
        for s in ns.shm.iter().filter(|s| s.removed) {
            ipc::shm_cmd(s.perm.id, libc::IPC_RMID).map_err(sys_err("shmctl(IPC_RMID)", s.perm.id))?;
        }
        Ok(())
    })
}

/// Attaches segment `seg` in the process `remote` for the VMAs `pieces` (sorted, one
/// attachment: same segment, same base `start - offset`) by an injected `shmat`
/// (`SHM_RDONLY` unless the attachment may write, `SHM_EXEC` for an executable one). A
/// whole attachment goes straight to its place. Pieces of one are moved there from an
/// attachment where the kernel chose (`mremap` keeps them one attachment: `shmdt` of
/// its base takes them all, as it did), the rest is detached; the ranges of the pieces
/// are reserved first so that the kernel's choice cannot fall on them. The kernel counts
/// `shm_nattch` per VMA, so the count is what it was.
pub fn attach(remote: &mut Remote<'_>, pieces: &[&Vma], seg: &Live) -> Result<(), EngineError> {
    let (Some(first), ObjectKind::SysvShm { shmid }) = (pieces.first(), &seg.record.kind) else {
        return Err(EngineError::Incompatible("an attachment of an object that is no segment".into()));
    };
    let shmid = *shmid;
    let VmaBacking::SysvShm { may_write, .. } = first.backing else {
        return Err(EngineError::Incompatible(format!("VMA {:#x} is no attachment", first.start)));
    };
    let size = seg.record.size.next_multiple_of(4096);
    if let Some(v) = pieces.iter().find(|v| v.offset.checked_add(v.end - v.start).is_none_or(|e| e > size)) {
        return Err(EngineError::Incompatible(format!(
            "VMA {:#x}-{:#x} reaches beyond System V segment {shmid} ({size} bytes)",
            v.start, v.end
        )));
    }
    let exec = pieces.iter().any(|v| v.prot & libc::PROT_EXEC as u32 != 0);
    let flags = if exec { libc::SHM_EXEC } else { 0 } | if may_write { 0 } else { libc::SHM_RDONLY };
    let whole = pieces.len() == 1 && first.offset == 0 && first.end - first.start == size;
    let what = || format!("shmat of System V segment {shmid} for VMA {:#x}", first.start);
    if whole {
        let at = remote.call(libc::SYS_shmat, &[shmid as u64, first.start, flags as u64], what)?;
        if at != first.start {
            return Err(EngineError::Incompatible(format!(
                "System V segment {shmid} was attached at {at:#x}, not {:#x}",
                first.start
            )));
        }
    } else {
        let reserve = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED) as u64;
        for v in pieces {
            remote.call(libc::SYS_mmap, &[v.start, v.end - v.start, 0, reserve, u64::MAX, 0], || {
                format!("reserve {:#x}-{:#x} for System V segment {shmid}", v.start, v.end)
            })?;
        }
        let at = remote.call(libc::SYS_shmat, &[shmid as u64, 0, flags as u64], what)?;
        let moved = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        for v in pieces {
            let len = v.end - v.start;
            remote.call(libc::SYS_mremap, &[at + v.offset, len, len, moved, v.start], || {
                format!("mremap of System V segment {shmid} to {:#x}", v.start)
            })?;
        }
        let taken = pieces.iter().map(|v| (at + v.offset, at + v.offset + v.end - v.start));
        for (start, end) in crate::mm::subtract(at, at + size, taken) {
            remote.call(libc::SYS_munmap, &[start, end - start], || format!("munmap({start:#x})"))?;
        }
    }
    // shmat gave read (and write, and exec) to every piece; each gets its own again.
    let given = libc::PROT_READ as u32
        | if may_write { libc::PROT_WRITE as u32 } else { 0 }
        | if exec { libc::PROT_EXEC as u32 } else { 0 };
    for v in pieces.iter().filter(|v| v.prot != given) {
        remote.call(libc::SYS_mprotect, &[v.start, v.end - v.start, u64::from(v.prot)], || {
            format!("mprotect of System V attachment {:#x}", v.start)
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_roomier_limit_is_the_larger_word_by_word() {
        assert_eq!(
            super::roomier("32000 1024000000 500 32000", "250 32000 32 128"),
            "32000 1024000000 500 32000"
        );
        assert_eq!(super::roomier("8192", "40"), "8192");
        assert_eq!(super::roomier("4096", "100000"), "100000");
        assert_eq!(super::roomier("1 2", "3"), "3");
        // A fresh namespace's shmmax: ULONG_MAX - 2^24.
        assert_eq!(super::roomier("18446744073692774399", "4096"), "18446744073692774399");
    }
}
