//! The container's IPC namespace: System V shared memory, semaphores and message
//! queues, POSIX message queues, and the namespace's limits. It exists once per
//! container, so it travels in PID 1's record ([`super::ProcessRecord::ipc`]); the
//! contents of a shared memory segment travel as page batches of an
//! [`super::ObjectRecord`] of kind [`super::ObjectKind::SysvShm`], owned by PID 1.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{FdKind, ObjectKind, ObjectRecord, ProcessRecord, VmaBacking};
use crate::error::Invalid;

/// Everything of the namespace a restore creates before the first process is rebuilt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcNamespace {
    /// Sysctls of the namespace that differ from a fresh namespace's, set once its
    /// objects are made.
    pub limits: Vec<IpcLimit>,
    pub shm: Vec<ShmSegment>,
    pub sem: Vec<SemSet>,
    pub msg: Vec<MsgQueue>,
    pub mqueues: Vec<PosixQueue>,
}

/// A sysctl of the IPC namespace (`kernel.msgmax`, `fs.mqueue.msg_max`, …), as written
/// under `/proc/sys` (words separated by a space or a tab).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcLimit {
    /// The path under `/proc/sys/`: `kernel/msgmax`.
    pub name: String,
    pub value: String,
}

/// The `struct ipc_perm` of a System V object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcPerm {
    /// Its key (`IPC_PRIVATE`, 0, for none).
    pub key: i32,
    /// Its id, which processes hold and which a restore gives it again.
    pub id: i32,
    /// Permission bits (0o777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The creator's uid and gid.
    pub cuid: u32,
    pub cgid: u32,
}

/// A System V shared memory segment (attached or not). Its attachments are VMAs
/// ([`super::VmaBacking::SysvShm`]); its contents are the object's pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmSegment {
    pub perm: IpcPerm,
    /// In bytes, as created.
    pub size: u64,
    /// `SHM_LOCK`ed.
    pub locked: bool,
    /// Marked for destruction (`IPC_RMID` while attached): gone with its last attachment.
    pub removed: bool,
}

/// A System V semaphore set: its values, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemSet {
    pub perm: IpcPerm,
    pub values: Vec<u16>,
}

/// A System V message queue, its messages in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgQueue {
    pub perm: IpcPerm,
    /// `msg_qbytes`: the most bytes it holds.
    pub qbytes: u64,
    pub messages: Vec<SysvMessage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvMessage {
    /// `mtype` (> 0).
    pub mtype: i64,
    pub text: Vec<u8>,
}

/// A POSIX message queue of the namespace's mqueue filesystem, its messages in the order
/// a receiver gets them (highest priority first, oldest first within one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixQueue {
    /// Without the leading `/`.
    pub name: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub maxmsg: u64,
    pub msgsize: u64,
    pub messages: Vec<PosixMessage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixMessage {
    pub prio: u32,
    pub data: Vec<u8>,
}

/// The sysctls an image may set, all of them per IPC namespace.
pub const IPC_LIMITS: [&str; 13] = [
    "kernel/shmmax",
    "kernel/shmall",
    "kernel/shmmni",
    "kernel/shm_rmid_forced",
    "kernel/msgmax",
    "kernel/msgmnb",
    "kernel/msgmni",
    "kernel/sem",
    "fs/mqueue/queues_max",
    "fs/mqueue/msg_max",
    "fs/mqueue/msgsize_max",
    "fs/mqueue/msg_default",
    "fs/mqueue/msgsize_default",
];

/// At most this many objects of each kind (the kernel's own cap, `IPCMNI`, is 32768).
pub const MAX_IPC_OBJECTS: usize = 32768;
/// The largest System V message (`msgmax` may not exceed `INT_MAX`; we take far less).
pub const MAX_MSG_BYTES: usize = 16 << 20;
/// Semaphores per set (`SEMMSL` is at most 32000).
pub const MAX_SEMS: usize = 32000;
/// Messages of a POSIX queue (`HARD_MSGMAX`) and their size (`HARD_MSGSIZEMAX`).
pub const MAX_MQ_MSGS: u64 = 65536;
pub const MAX_MQ_MSGSIZE: u64 = 16 << 20;
/// Messages of one System V queue, and their bytes (a queue may hold more than its
/// `qbytes` if that was lowered after they were sent).
pub const MAX_MSGS: usize = 1 << 20;
pub const MAX_QUEUE_BYTES: usize = 1 << 30;

/// Checks an IPC namespace record against PID 1's objects (each segment has one object
/// of kind `SysvShm` of its size, and each such object a segment).
pub fn check_ipc(ns: &IpcNamespace, objects: &[ObjectRecord]) -> Result<(), Invalid> {
    // Sizes of the segments' objects by shmid, once: a hostile image may list many.
    let mut shm_objects: HashMap<i32, Vec<u64>> = HashMap::new();
    for o in objects {
        if let ObjectKind::SysvShm { shmid } = o.kind {
            shm_objects.entry(shmid).or_default().push(o.size);
        }
    }
    let bad = |field: &'static str, problem: String| Err(Invalid::Field { field, problem });
    for l in &ns.limits {
        if !IPC_LIMITS.contains(&l.name.as_str()) {
            return bad("ipc.limits", format!("{:?} is not an IPC sysctl", l.name));
        }
        if l.value.is_empty()
            || l.value.len() > 64
            || !l.value.chars().all(|c| c.is_ascii_digit() || c == ' ' || c == '\t' || c == '-')
        {
            return bad("ipc.limits", format!("{}: {:?} is not a list of numbers", l.name, l.value));
        }
    }
    let perms = |field: &'static str, perms: &mut dyn Iterator<Item = &IpcPerm>| -> Result<(), Invalid> {
        let mut ids = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for p in perms {
            if p.id < 0 || !ids.insert(p.id) {
                return bad(field, format!("id {} is negative or listed twice", p.id));
            }
            if p.key != 0 && !keys.insert(p.key) {
                return bad(field, format!("key {:#x} is listed twice", p.key));
            }
            if p.mode & !0o777 != 0 {
                return bad(field, format!("id {}: mode {:o} is not a permission mode", p.id, p.mode));
            }
        }
        if ids.len() > MAX_IPC_OBJECTS {
            return bad(field, format!("{} objects, more than {MAX_IPC_OBJECTS}", ids.len()));
        }
        Ok(())
    };
    perms("ipc.shm", &mut ns.shm.iter().map(|s| &s.perm))?;
    perms("ipc.sem", &mut ns.sem.iter().map(|s| &s.perm))?;
    perms("ipc.msg", &mut ns.msg.iter().map(|s| &s.perm))?;
    for s in &ns.shm {
        match shm_objects.get(&s.perm.id).map(Vec::as_slice) {
            Some(&[size]) if size == s.size => {}
            _ => {
                return bad(
                    "ipc.shm",
                    format!("segment {} has not exactly one object of its size", s.perm.id),
                );
            }
        }
        if s.removed && s.perm.key != 0 {
            return bad("ipc.shm", format!("segment {} is removed but has a key", s.perm.id));
        }
    }
    if shm_objects.values().map(Vec::len).sum::<usize>() != ns.shm.len() {
        return bad("ipc.shm", "an object of System V shared memory has no segment".into());
    }
    for s in &ns.sem {
        if s.values.is_empty() || s.values.len() > MAX_SEMS || s.values.iter().any(|&v| v > 32767) {
            return bad(
                "ipc.sem",
                format!("set {}: {} values, or one above SEMVMX", s.perm.id, s.values.len()),
            );
        }
    }
    for q in &ns.msg {
        let bytes: usize = q.messages.iter().map(|m| m.text.len()).sum();
        if q.messages.len() > MAX_MSGS
            || q.messages.iter().any(|m| m.mtype <= 0 || m.text.len() > MAX_MSG_BYTES)
            || bytes > MAX_QUEUE_BYTES
        {
            return bad(
                "ipc.msg",
                format!("queue {}: a message of bad type or size, or too many", q.perm.id),
            );
        }
    }
    let mut names = std::collections::HashSet::new();
    for q in &ns.mqueues {
        let name_ok = !q.name.is_empty()
            && q.name.len() <= 255
            && !q.name.contains(['/', '\0'])
            && q.name != "."
            && q.name != "..";
        if !name_ok || !names.insert(q.name.as_str()) {
            return bad("ipc.mqueues", format!("{:?} is not a queue name, or is listed twice", q.name));
        }
        if q.mode & !0o777 != 0
            || q.maxmsg == 0
            || q.maxmsg > MAX_MQ_MSGS
            || q.msgsize == 0
            || q.msgsize > MAX_MQ_MSGSIZE
        {
            return bad("ipc.mqueues", format!("/{}: mode or attributes out of range", q.name));
        }
        if q.messages.len() as u64 > q.maxmsg
            || q.messages.iter().any(|m| m.data.len() as u64 > q.msgsize || m.prio >= 32768)
        {
            return bad("ipc.mqueues", format!("/{}: more or larger messages than it holds", q.name));
        }
    }
    Ok(())
}

/// The ids of the image's System V segment objects and the names of its POSIX queues,
/// gathered once for [`check_ipc_refs`].
pub fn ipc_names(processes: &[ProcessRecord]) -> (HashSet<u64>, HashSet<&str>) {
    let sysv = processes
        .iter()
        .flat_map(|q| &q.objects)
        .filter(|o| matches!(o.kind, ObjectKind::SysvShm { .. }))
        .map(|o| o.id)
        .collect();
    let queues = processes.iter().filter_map(|q| q.ipc.as_ref()).flat_map(|ns| &ns.mqueues);
    (sysv, queues.map(|q| q.name.as_str()).collect())
}

/// Checks that `p`'s fds and VMAs name objects of the right kind: an attachment names a
/// segment, an object mapping or fd anything but a segment; a queue fd names a queue of
/// the image. `names` is [`ipc_names`] of the image.
pub fn check_ipc_refs(p: &ProcessRecord, names: &(HashSet<u64>, HashSet<&str>)) -> Result<(), String> {
    let (sysv, queues) = names;
    let is_sysv = |id: u64| sysv.contains(&id);
    for v in &p.vmas {
        let wrong = match v.backing {
            VmaBacking::SysvShm { id, .. } => !is_sysv(id),
            VmaBacking::Object { id, .. } => is_sysv(id),
            _ => false,
        };
        if wrong {
            return Err(format!("pid {}: VMA {:#x} maps an object of the wrong kind", p.pid, v.start));
        }
    }
    if let Some(f) = p.fds.iter().find(|f| matches!(f.kind, FdKind::Object { id, .. } if is_sysv(id))) {
        return Err(format!("pid {}: fd {} is System V shared memory", p.pid, f.fd));
    }
    for f in &p.fds {
        if let FdKind::Mqueue { name } = &f.kind
            && !queues.contains(name.as_str())
        {
            return Err(format!(
                "pid {}: fd {} is message queue /{name}, which the image lacks",
                p.pid, f.fd
            ));
        }
    }
    Ok(())
}

/// An fd of a POSIX message queue names a queue of the namespace (in PID 1's record; a
/// process other than PID 1 is checked against it by the tree check).
pub fn check_mqueue_fd(fd: i32, name: &str, p: &ProcessRecord) -> Result<(), Invalid> {
    let known = p.ipc.as_ref().is_none_or(|ns| ns.mqueues.iter().any(|q| q.name == name));
    if name.is_empty() || name.len() > 255 || name.contains(['/', '\0']) || !known {
        return Err(Invalid::Fd { fd, problem: format!("{name:?} is not a queue of the namespace") });
    }
    Ok(())
}
