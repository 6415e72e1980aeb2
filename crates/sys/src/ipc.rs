//! System V IPC (shared memory, semaphores, message queues) and POSIX message queues of
//! the calling thread's IPC namespace: thin wrappers over the libc calls, each returning
//! `io::Result`. Which namespace is the caller's business (a thread that `setns`ed).

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

fn check(r: libc::c_int) -> io::Result<i32> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// `shmget(key, size, flags)`: the segment's id.
pub fn shmget(key: i32, size: usize, flags: i32) -> io::Result<i32> {
    // SAFETY: plain integers in, an id out.
    check(unsafe { libc::shmget(key, size, flags) })
}

/// `shmat(id, addr, flags)`: where the segment was attached in this process. The caller
/// must `shmdt` it; nothing of this process may live at `addr` (0: the kernel chooses).
pub fn shmat(id: i32, addr: usize, flags: i32) -> io::Result<usize> {
    // SAFETY: with addr 0 the kernel picks a free range, so no mapping of ours is
    // replaced; a nonzero addr without SHM_REMAP fails rather than replace one. We never
    // form a reference to the mapping here: callers read it through a file.
    let at = unsafe { libc::shmat(id, addr as *const libc::c_void, flags) };
    if at as isize == -1 { Err(io::Error::last_os_error()) } else { Ok(at as usize) }
}

/// `shmdt(addr)`: detaches an attachment made by [`shmat`].
pub fn shmdt(addr: usize) -> io::Result<()> {
    // SAFETY: detaching only unmaps a System V attachment at exactly `addr` (the kernel
    // refuses anything else); callers hold no reference into it.
    check(unsafe { libc::shmdt(addr as *const libc::c_void) }).map(|_| ())
}

/// `shmctl(id, cmd, buf)` for `IPC_STAT`/`IPC_SET`/`IPC_RMID`/`SHM_LOCK`.
pub fn shmctl(id: i32, cmd: i32, buf: &mut libc::shmid_ds) -> io::Result<i32> {
    // SAFETY: buf is a valid, exclusively borrowed shmid_ds for the call.
    check(unsafe { libc::shmctl(id, cmd, buf) })
}

/// A `shmid_ds`, `semid_ds` or `msqid_ds` to fill.
fn zeroed<T: Zeroable>() -> T {
    // SAFETY: T is one of the kernel's plain-integer IPC structs (the sealed trait
    // below), for which all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

/// The IPC structs for which all zeros is valid.
trait Zeroable {}
impl Zeroable for libc::shmid_ds {}
impl Zeroable for libc::semid_ds {}
impl Zeroable for libc::msqid_ds {}

/// `shmctl(id, IPC_STAT)`.
pub fn shm_stat(id: i32) -> io::Result<libc::shmid_ds> {
    let mut ds = zeroed();
    shmctl(id, libc::IPC_STAT, &mut ds)?;
    Ok(ds)
}

/// `shmctl(id, cmd, NULL-equivalent)` for `IPC_RMID` and `SHM_LOCK`.
pub fn shm_cmd(id: i32, cmd: i32) -> io::Result<()> {
    shmctl(id, cmd, &mut zeroed()).map(|_| ())
}

/// `semctl(id, 0, IPC_STAT)`.
pub fn sem_stat(id: i32) -> io::Result<libc::semid_ds> {
    let mut ds = zeroed();
    semctl_ds(id, libc::IPC_STAT, &mut ds)?;
    Ok(ds)
}

/// `msgctl(id, IPC_STAT)`.
pub fn msg_stat(id: i32) -> io::Result<libc::msqid_ds> {
    let mut ds = zeroed();
    msgctl(id, libc::IPC_STAT, &mut ds)?;
    Ok(ds)
}

/// `semget(key, nsems, flags)`.
pub fn semget(key: i32, nsems: i32, flags: i32) -> io::Result<i32> {
    // SAFETY: plain integers.
    check(unsafe { libc::semget(key, nsems, flags) })
}

/// `semctl(id, 0, IPC_STAT or IPC_SET, buf)`.
pub fn semctl_ds(id: i32, cmd: i32, buf: &mut libc::semid_ds) -> io::Result<()> {
    // SAFETY: the fourth argument of IPC_STAT/IPC_SET is a pointer to a semid_ds (union
    // semun's `buf`), valid and exclusively borrowed for the call.
    check(unsafe { libc::semctl(id, 0, cmd, buf as *mut libc::semid_ds) }).map(|_| ())
}

/// `semctl(id, 0, GETALL or SETALL, values)`; `EINVAL` unless `values` holds exactly the
/// set's semaphores.
pub fn semctl_all(id: i32, cmd: i32, values: &mut [u16]) -> io::Result<()> {
    // The kernel takes no length: it copies as many values as the set has.
    if sem_stat(id)?.sem_nsems as usize != values.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: the fourth argument of GETALL/SETALL is a pointer to nsems unsigned shorts
    // (union semun's `array`), and `values` holds that many: the set was just asked. (A
    // set removed meanwhile is not another under the same id: an id is given again only
    // once its sequence number wraps, or as `sem_next_id` asks, which nobody writes
    // while the container is frozen for the dump or while the restore makes its sets.)
    check(unsafe { libc::semctl(id, 0, cmd, values.as_mut_ptr()) }).map(|_| ())
}

/// `msgget(key, flags)`.
pub fn msgget(key: i32, flags: i32) -> io::Result<i32> {
    // SAFETY: plain integers.
    check(unsafe { libc::msgget(key, flags) })
}

/// `msgctl(id, cmd, buf)` for `IPC_STAT`/`IPC_SET`.
pub fn msgctl(id: i32, cmd: i32, buf: &mut libc::msqid_ds) -> io::Result<()> {
    // SAFETY: buf is a valid, exclusively borrowed msqid_ds for the call.
    check(unsafe { libc::msgctl(id, cmd, buf) }).map(|_| ())
}

/// The `long mtype` that leads a message buffer (`struct msgbuf`).
const MTYPE: usize = std::mem::size_of::<libc::c_long>();

/// `msgsnd(id, {mtype, text}, IPC_NOWAIT)`.
pub fn msgsnd(id: i32, mtype: i64, text: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(MTYPE + text.len());
    buf.extend_from_slice(&(mtype as libc::c_long).to_ne_bytes());
    buf.extend_from_slice(text);
    // SAFETY: buf holds a struct msgbuf: the type, then text.len() bytes.
    check(unsafe { libc::msgsnd(id, buf.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) }).map(|_| ())
}

/// A copy of message number `index` (from 0, in queue order) of queue `id`, without
/// consuming it (`MSG_COPY | IPC_NOWAIT`; CONFIG_CHECKPOINT_RESTORE): its type and text.
/// `max` bounds the text (the queue's bytes bound every message); a longer one fails
/// with `E2BIG` rather than come back cut.
pub fn msg_copy(id: i32, index: i64, max: usize) -> io::Result<(i64, Vec<u8>)> {
    let mut buf = vec![0u8; MTYPE + max];
    // SAFETY: buf has room for the type and `max` bytes of text, which msgrcv is told.
    let n = unsafe {
        libc::msgrcv(
            id,
            buf.as_mut_ptr().cast(),
            max,
            index as libc::c_long,
            libc::MSG_COPY | libc::IPC_NOWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut t = [0u8; MTYPE];
    t.copy_from_slice(&buf[..MTYPE]);
    buf.truncate(MTYPE + n as usize);
    Ok((libc::c_long::from_ne_bytes(t), buf.split_off(MTYPE)))
}

/// `mq_open(name, …)`: `name` is `/NAME`. A POSIX message queue descriptor is, on
/// Linux, an fd of the mqueue filesystem.
pub fn mq_open(name: &str, flags: i32, mode: u32, attr: Option<&libc::mq_attr>) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let attr = attr.map_or(std::ptr::null(), |a| a as *const libc::mq_attr);
    // SAFETY: c is NUL-terminated; attr is null or a valid mq_attr (read only with
    // O_CREAT); mode is passed as the variadic argument mq_open reads with O_CREAT.
    let fd = check(unsafe { libc::mq_open(c.as_ptr(), flags, mode as libc::mode_t, attr) })?;
    // SAFETY: mq_open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `mq_attr` to fill (libc hides its padding, so it has no literal).
pub fn mq_attr_zeroed() -> libc::mq_attr {
    // SAFETY: mq_attr is plain integers, for which all zeros is valid.
    unsafe { std::mem::zeroed() }
}

/// `mq_getattr`.
pub fn mq_getattr(q: &OwnedFd) -> io::Result<libc::mq_attr> {
    use std::os::fd::AsRawFd;
    let mut a = mq_attr_zeroed();
    // SAFETY: q is an open mqueue descriptor; a is valid for writes.
    check(unsafe { libc::mq_getattr(q.as_raw_fd(), &mut a) })?;
    Ok(a)
}

/// Takes the next message (highest priority first) without waiting: `None` when empty.
/// `q` must be non-blocking or the caller must know the queue holds one; `max` is the
/// queue's `mq_msgsize`.
pub fn mq_receive(q: &OwnedFd, max: usize) -> io::Result<Option<(u32, Vec<u8>)>> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; max];
    let mut prio: libc::c_uint = 0;
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: buf has `max` bytes; prio is valid for writes; a timeout in the past makes
    // the call return at once on an empty queue.
    let n = unsafe { libc::mq_timedreceive(q.as_raw_fd(), buf.as_mut_ptr().cast(), max, &mut prio, &zero) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ETIMEDOUT) || e.raw_os_error() == Some(libc::EAGAIN) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    buf.truncate(n as usize);
    Ok(Some((prio, buf)))
}

/// `mq_send` without waiting (a full queue fails with `ETIMEDOUT`).
pub fn mq_send(q: &OwnedFd, prio: u32, data: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: data is valid for its length; the timeout is a valid timespec.
    check(unsafe { libc::mq_timedsend(q.as_raw_fd(), data.as_ptr().cast(), data.len(), prio, &zero) })
        .map(|_| ())
}

/// Runs `f` with this thread's real and effective uid and gid set to `uid` and `gid`,
/// then sets them back to 0, so that what `f` creates records them as its creator (a
/// System V object's `cuid`/`cgid`) and is charged to that user (a POSIX queue's bytes
/// count against its creator's real uid). The saved ids stay 0, so the thread keeps its
/// permitted capabilities and may come back. The calling thread must run as root. Raw
/// syscalls: glibc's `setresuid` changes every thread of the process, which must not
/// happen here.
pub fn as_creator<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> io::Result<T> {
    let set = |nr: libc::c_long, id: u32| -> io::Result<()> {
        // SAFETY: setresuid/setresgid take three ids (-1: unchanged) and no memory.
        let r = unsafe { libc::syscall(nr, id, id, u32::MAX) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    };
    // The gid first, while the thread still has CAP_SETGID; back in the reverse order
    // (an effective uid of 0 again gives back the capabilities a nonzero one cleared).
    set(libc::SYS_setresgid, gid)?;
    if let Err(e) = set(libc::SYS_setresuid, uid) {
        set(libc::SYS_setresgid, 0)?;
        return Err(e);
    }
    let out = f();
    set(libc::SYS_setresuid, 0)?;
    set(libc::SYS_setresgid, 0)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_of_another_size_than_the_set_is_refused() -> io::Result<()> {
        let id = semget(libc::IPC_PRIVATE, 3, 0o600)?;
        let mut four = [0u16; 4];
        let wrong = semctl_all(id, libc::GETALL, &mut four).map_err(|e| e.raw_os_error());
        let mut three = [1u16, 2, 3];
        let right = semctl_all(id, libc::SETALL, &mut three);
        let mut back = [0u16; 3];
        let read = semctl_all(id, libc::GETALL, &mut back);
        let mut ds = sem_stat(id)?;
        semctl_ds(id, libc::IPC_RMID, &mut ds)?;
        assert_eq!(wrong, Err(Some(libc::EINVAL)));
        right?;
        read?;
        assert_eq!(back, [1, 2, 3]);
        Ok(())
    }

    #[test]
    fn message_copies_leave_the_queue_as_it_was() -> io::Result<()> {
        // In a namespace of its own would be cleaner; a private queue removed at the end
        // does as well.
        let id = msgget(libc::IPC_PRIVATE, 0o600)?;
        msgsnd(id, 7, b"first")?;
        msgsnd(id, 3, b"second")?;
        let copied = (msg_copy(id, 0, 64), msg_copy(id, 1, 64), msg_copy(id, 2, 64));
        let stat = msg_stat(id);
        msgctl(id, libc::IPC_RMID, &mut zeroed())?;
        assert_eq!(copied.0?, (7, b"first".to_vec()));
        assert_eq!(copied.1?, (3, b"second".to_vec()));
        assert_eq!(copied.2.map_err(|e| e.raw_os_error()), Err(Some(libc::ENOMSG)));
        assert_eq!(stat?.msg_qnum, 2);
        Ok(())
    }
}
