//! The records of a checkpoint: plain data, no live objects.
//!
//! One [`ProcessRecord`] per process holds everything but memory contents; memory
//! travels as [`crate::pages::PageBatch`]es. The container-wide facts are in the
//! [`crate::manifest::Manifest`]. Addresses are the task's virtual addresses; pids and
//! tids are as seen inside the container's pid namespace.

use serde::{Deserialize, Serialize};

pub(crate) mod anon;
pub(crate) mod attrs;
mod epoll;

pub use anon::{EventFd, Inotify, InotifyWatch, MAX_WATCHES, MAX_WD, PidFd, SignalFd, TimerFd};
pub use attrs::{AUDIT_UNSET, FileMeta, MCE_KILL_DEFAULT, ProcessAttrs, ThreadAttrs, non_default};
pub(crate) use epoll::check_tree as check_epoll_tree;
pub use epoll::{Epoll, EpollTarget, disarmed, event_names};
mod inet;
mod ipc;
mod timers;
pub mod unix;
pub mod vma;

pub use inet::{InetAddr, InetProto, InetSocket, InetState, IntOption, SockOpt};
pub use ipc::*;
pub use timers::{
    MAX_TIMERS, MEMBARRIER, MEMBARRIER_REGISTRATIONS, PosixTimer, TimerNotify, clock_name, clock_refusal,
    cpu_clock, membarrier_names,
};
pub(crate) use timers::{check_membarrier, check_timers};
pub use unix::{PeerCred, SocketFile, UnixName, UnixSocket, UnixState, UnixType};

/// x86-64 general registers, in the order of the kernel's `struct user_regs_struct`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// A thread's rseq registration (`PTRACE_GET_RSEQ_CONFIGURATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub signature: u32,
}

/// `stack_t` of `sigaltstack(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

/// A queued signal: the kernel's 128-byte `siginfo_t`, as `PTRACE_PEEKSIGINFO` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigInfo {
    pub signo: i32,
    pub raw: Vec<u8>,
}

/// One thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadRecord {
    pub tid: i32,
    /// Its name (`/proc/PID/task/TID/comm`, `PR_SET_NAME`), at most 15 bytes.
    pub comm: String,
    pub regs: Regs,
    /// `PTRACE_GETREGSET NT_X86_XSTATE`: FPU, SSE, AVX… in the XSAVE layout.
    pub xstate: Vec<u8>,
    /// Blocked signals, bit n-1 for signal n.
    pub sigmask: u64,
    pub rseq: Option<Rseq>,
    /// `get_robust_list`: head address and length.
    pub robust_list: (u64, u64),
    /// `set_tid_address` value (`PR_GET_TID_ADDRESS`).
    pub clear_child_tid: u64,
    pub altstack: AltStack,
    /// Signals pending for this thread only.
    pub pending: Vec<SigInfo>,
    /// How the kernel schedules it (each thread has its own).
    pub sched: Sched,
    /// What it set with `prctl` (pdeathsig, timer slack, MCE kill policy, TSC access).
    pub attrs: ThreadAttrs,
}

/// A thread's scheduling: policy and priority, nice value, the CPUs it may run on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Sched {
    /// `sched_getscheduler`: `SCHED_OTHER`, `FIFO`, `RR`, `BATCH` or `IDLE`, with
    /// `SCHED_RESET_ON_FORK` (0x40000000) if set.
    pub policy: i32,
    /// `sched_priority`: 1..=99 for `FIFO` and `RR`, 0 otherwise.
    pub priority: i32,
    /// -20..=19.
    pub nice: i32,
    /// The CPUs of its affinity mask, ascending; empty when it may run on every CPU of
    /// its host (so on every CPU of the next).
    pub cpus: Vec<u32>,
}

/// What a mapping is backed by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmaBacking {
    /// Private anonymous memory (also `[heap]` and `[stack]`).
    Anon,
    /// An object whose contents only the image holds ([`ObjectRecord`]: the shmem behind
    /// `MAP_SHARED | MAP_ANONYMOUS`, a memfd, a deleted file), mapped at `offset`. Its
    /// contents are dumped once, from the object; a private mapping's copied-on-write
    /// pages are the process's own.
    Object {
        id: u64,
        shared: bool,
    },
    /// A file: its contents come from the file; private copies-on-write are dumped.
    File {
        file: FileId,
        shared: bool,
    },
    /// The kernel's `[vdso]`, `[vvar]` and `[vvar_vclock]`: moved, never dumped.
    Vdso,
    Vvar,
    VvarVclock,
    /// An attachment (`shmat`) of a System V shared memory segment: the object `id` of
    /// kind [`ObjectKind::SysvShm`], mapped from `offset`; `may_write` unless attached
    /// `SHM_RDONLY` (smaps `mw`: the attachment may be made writable by `mprotect`).
    SysvShm {
        id: u64,
        may_write: bool,
    },
}

/// One mapping of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// `PROT_READ | PROT_WRITE | PROT_EXEC` bits.
    pub prot: u32,
    /// Offset into the file, in bytes.
    pub offset: u64,
    pub backing: VmaBacking,
    /// `[heap]`, `[stack]`, … as `maps` names it (informational).
    pub name: String,
    /// `VM_GROWSDOWN` (stacks).
    pub growsdown: bool,
    /// The smaps `VmFlags` mnemonics a restore sets again ([`vma::CARRIED`]: madvise
    /// state, locks, `MAP_NORESERVE`, accounting, sealing).
    pub advice: Vec<String>,
    /// smaps `mw` (VM_MAYWRITE): a shared mapping may be `mprotect`ed writable, its file
    /// having been opened for writing; the restore opens it so again.
    pub may_write: bool,
}

/// A file, identified portably: the same path with the same size and mtime (a mapped
/// executable must be exactly the same file; an open file may have grown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
}

/// The mm fields `prctl(PR_SET_MM_MAP)` restores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// The auxiliary vector, as `/proc/PID/auxv` (pairs of u64, ending with AT_NULL).
    pub auxv: Vec<u64>,
    pub exe: FileId,
}

/// An open file descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdRecord {
    pub fd: i32,
    /// The open file description it refers to, unique in the image: fds with the same
    /// id (dup'ed, or inherited across fork) share one description — one position, one
    /// set of status flags — and must share it again after a restore.
    pub file_id: u64,
    /// `flags` of `/proc/PID/fdinfo/FD` (access mode, `O_APPEND`, `O_NONBLOCK`, `O_CLOEXEC`, …).
    pub flags: u32,
    pub kind: FdKind,
    /// The file locks held through it: POSIX record locks of this process (set through
    /// this fd), and `flock`/OFD locks of its description (listed with every fd of it).
    pub locks: Vec<FileLock>,
}

/// A file lock (`/proc/PID/fdinfo/FD`'s `lock:` lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    pub kind: LockKind,
    /// An exclusive (write) lock; else shared (read).
    pub write: bool,
    /// The byte range, `end` inclusive; `None` to the end of the file (`flock`: the whole file).
    pub start: u64,
    pub end: Option<u64>,
}

/// Who owns a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    /// `fcntl(F_SETLK)`: the process.
    Posix,
    /// `fcntl(F_OFD_SETLK)`: the open file description.
    Ofd,
    /// `flock(2)`: the open file description, the whole file.
    Flock,
}

/// What an fd refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A regular file, with its position.
    File { file: FileId, pos: u64 },
    /// A directory, with its position (for `getdents`).
    Dir { path: String, pos: u64 },
    /// A character device the container may open anew (`/dev/null`, `/dev/zero`,
    /// `/dev/urandom`, `/dev/random`).
    Device { path: String },
    /// One end of a pipe or FIFO; its buffered bytes (and a FIFO's path) are in the
    /// [`PipeRecord`] of the first process that holds an end. `inode` is a pipe's inode
    /// number (below 2^32: pipefs numbers are 32-bit); for a FIFO, a key with bit 63 set
    /// derived from its device and inode number, unique in the image. `write` is an
    /// `O_WRONLY` end (a FIFO may also be open `O_RDWR`: `flags` has its access mode).
    Pipe { inode: u64, write: bool },
    /// An open object of the image ([`ObjectRecord`]: a memfd, a deleted file), with its
    /// position.
    Object { id: u64, pos: u64 },
    /// Owned by the container's runtime and reconnected on restore, never compared:
    /// the container's stdout or stderr pipe to its shim.
    External { name: String },
    /// An eventfd ([`EventFd`]).
    EventFd(EventFd),
    /// A timerfd ([`TimerFd`]).
    TimerFd(TimerFd),
    /// A signalfd ([`SignalFd`]).
    SignalFd(SignalFd),
    /// An inotify instance ([`Inotify`]).
    Inotify(Inotify),
    /// A pidfd ([`PidFd`]).
    PidFd(PidFd),
    /// An epoll instance and its registrations ([`Epoll`]).
    Epoll(Epoll),
    /// A TCP or UDP socket ([`InetSocket`]).
    Inet(InetSocket),
    /// A POSIX message queue of the IPC namespace ([`PosixQueue`]), by its name without
    /// the leading `/`.
    Mqueue { name: String },
    /// A unix socket ([`UnixSocket`]).
    Unix(UnixSocket),
}

/// `(cur, max)` of one rlimit; `u64::MAX` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: u32,
    pub cur: u64,
    pub max: u64,
}

/// Credentials, from `/proc/PID/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    pub no_new_privs: bool,
    /// `PR_GET_SECUREBITS`: the securebits (`KEEP_CAPS` among them) and their locks.
    pub securebits: u32,
}

/// A signal's disposition (the kernel's `struct sigaction` on x86-64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    pub signo: i32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// One interval timer (`getitimer`), in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ITimer {
    pub interval_us: u64,
    pub value_us: u64,
}

/// A pipe or FIFO: its capacity and the bytes buffered in it at the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeRecord {
    pub inode: u64,
    /// `F_GETPIPE_SZ`.
    pub size: u32,
    pub data: Vec<u8>,
    /// A FIFO (named pipe): where it is. `None` for a pipe.
    pub fifo: Option<Fifo>,
}

/// Where a FIFO is, in the container's view, and the permission bits to create it with
/// if it is gone at restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fifo {
    pub path: String,
    /// `st_mode` permission bits (with sticky/setgid bits).
    pub mode: u32,
    /// Its access and modification times, in ns since the epoch: set back once the
    /// restore has filled it (writing and reading move them).
    pub atime_ns: i64,
    pub mtime_ns: i64,
}

/// A file whose contents exist only in the image: dumped once (its pages travel as page
/// batches of the object, after its owner's own), recreated once by the first process
/// that refers to it (its owner: by an fd or a mapping), and shared from there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Unique in the image; fds and VMAs name it.
    pub id: u64,
    pub kind: ObjectKind,
    /// Its size in bytes (`st_size`).
    pub size: u64,
    /// A memfd's or deleted file's mode, owner and times, set again once it is made and
    /// filled (times last). `None` for the other kinds, and for a linked one.
    pub meta: Option<FileMeta>,
    /// A deleted file that still has a name elsewhere (the name it was opened by was
    /// removed, another link remains): that name. The file is not copied into the image;
    /// the restore links it back under its deleted name, opens it and unlinks that name
    /// again, so the same file is reached, shown by the same name.
    pub link: Option<String>,
}

/// What an [`ObjectRecord`] is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    /// The shmem object behind `MAP_SHARED | MAP_ANONYMOUS` (`/dev/zero (deleted)` in maps).
    AnonShared,
    /// A memfd: its name (without the `memfd:` prefix) and its seals (`F_GET_SEALS`).
    Memfd { name: String, seals: u32 },
    /// A file unlinked while open or mapped: where it was, its permission bits and owner.
    Deleted { path: String, mode: u32, uid: u32, gid: u32 },
    /// A System V shared memory segment of the IPC namespace ([`ShmSegment`] in PID 1's
    /// [`IpcNamespace`]), always owned by PID 1: the restore makes it with the namespace.
    SysvShm { shmid: i32 },
}

/// One entry of a tmpfs the container's runtime mounts privately for it (`/dev/shm`,
/// `/run`): its contents exist nowhere else, so the image carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsEntry {
    /// Absolute, inside one of those mounts.
    pub path: String,
    /// `st_mode` permission bits (with sticky/setgid bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Last modification and access, in ns since the epoch: a mapped file is checked
    /// against its mtime, and programs compare them.
    pub mtime_ns: i64,
    pub atime_ns: i64,
    pub kind: TmpfsKind,
}

/// What a tmpfs entry is. A FIFO is only the node: bytes buffered in it travel in its
/// [`PipeRecord`], if it is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TmpfsKind {
    Dir,
    File { data: Vec<u8> },
    Symlink { target: String },
    Fifo,
}

impl ProcessRecord {
    /// The ids of the objects its fds and mappings refer to (with repeats).
    pub fn object_ids(&self) -> impl Iterator<Item = u64> + '_ {
        let fds = self.fds.iter().filter_map(|f| match f.kind {
            FdKind::Object { id, .. } => Some(id),
            _ => None,
        });
        let maps = self.vmas.iter().filter_map(|v| match v.backing {
            VmaBacking::Object { id, .. } | VmaBacking::SysvShm { id, .. } => Some(id),
            _ => None,
        });
        fds.chain(maps)
    }
}

/// One process: everything but its memory contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: i32,
    pub ppid: i32,
    pub sid: i32,
    pub pgid: i32,
    pub comm: String,
    /// Its threads; the first is the main thread (tid == pid).
    pub threads: Vec<ThreadRecord>,
    pub vmas: Vec<Vma>,
    /// `None` for a zombie, which has no memory.
    pub mm: Option<MmFields>,
    pub fds: Vec<FdRecord>,
    pub creds: Creds,
    pub rlimits: Vec<Rlimit>,
    pub cwd: String,
    pub root: String,
    pub umask: u32,
    pub sigactions: Vec<SigAction>,
    /// Signals pending for the whole process.
    pub shared_pending: Vec<SigInfo>,
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF.
    pub itimers: [ITimer; 3],
    pub personality: u32,
    /// The pipes first held by this process (in the image's process order).
    pub pipes: Vec<PipeRecord>,
    /// The contents of the container's private tmpfs mounts, in PID 1's record only
    /// (parents before children).
    pub tmpfs: Vec<TmpfsEntry>,
    /// The objects this process refers to first (in the image's process order).
    pub objects: Vec<ObjectRecord>,
    /// Pages shared copy-on-write with the parent (same frame in both at the checkpoint),
    /// not stored: on restore the process is forked from its rebuilt parent and keeps them.
    /// Sorted; each run lies in a VMA the parent has identically.
    pub inherited: Vec<crate::pages::PageRun>,
    /// `/proc/PID/oom_score_adj` (-1000..=1000).
    pub oom_score_adj: i32,
    /// A zombie: its wait status (`exit code << 8 | signal`). It has no threads, memory or
    /// fds, and stays a zombie until its parent reaps it.
    pub zombie: Option<i32>,
    /// The container's IPC namespace, in PID 1's record only.
    pub ipc: Option<IpcNamespace>,
    /// `/proc/PID/coredump_filter`: which kinds of memory a core dump holds (bits 0..=8;
    /// the kernel's default is 0x33). Children inherit it, exec keeps it.
    pub coredump_filter: u32,
    /// What it set with `prctl` and its audit identity (and, in PID 1's, the UTS
    /// namespace's domain name).
    pub attrs: ProcessAttrs,
    /// `mlockall` flags in force for mappings still to come: 0, or `MCL_FUTURE` (2) with
    /// `MCL_ONFAULT` (4) if given ([`vma::MLOCKALL_FUTURE`]).
    pub mlockall: u32,

    /// Its POSIX timers (`timer_create`), in increasing id order.
    pub timers: Vec<PosixTimer>,
    /// Its membarrier registrations (per mm): the `MEMBARRIER_CMD_REGISTER_*` commands
    /// it ran, as `MEMBARRIER_CMD_GET_REGISTRATIONS` reports them.
    pub membarrier: u32,
}
