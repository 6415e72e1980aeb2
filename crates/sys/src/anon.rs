//! What the dump of fds behind anonymous inodes needs from the kernel, run on the
//! agent's own copy of such an fd: a timerfd's time (`timerfd_gettime`), the bytes
//! queued in an fd (`FIONREAD`), whether this kernel can set a timerfd's unread ticks
//! (`TFD_IOC_SET_TICKS`), a file named by a handle (`open_by_handle_at`), and how the
//! process of a pidfd ended (`PIDFD_GET_INFO`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `TFD_IOC_SET_TICKS` (linux/timerfd.h: `_IOW('T', 0, __u64)`); `libc` lacks it.
pub const TFD_IOC_SET_TICKS: u64 = linux_raw_sys::ioctl::TFD_IOC_SET_TICKS as u64;

/// The time left and the period of the timerfd `fd`. Like a read, it counts the
/// expirations an interval timer had since the last one into its ticks and rearms it,
/// so that the fd's fdinfo shows them afterwards.
pub fn timerfd_gettime(fd: BorrowedFd<'_>) -> io::Result<libc::itimerspec> {
    let mut spec = libc::itimerspec {
        it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
        it_value: libc::timespec { tv_sec: 0, tv_nsec: 0 },
    };
    // SAFETY: `spec` is a valid, writable itimerspec for the duration of the call; the fd
    // is borrowed, so open.
    let r = unsafe { libc::timerfd_gettime(fd.as_raw_fd(), &mut spec) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(spec) }
}

/// Whether `TFD_IOC_SET_TICKS` works here (the kernel has `CONFIG_CHECKPOINT_RESTORE`):
/// tried on a timerfd of our own.
pub fn timerfd_can_set_ticks() -> io::Result<bool> {
    // SAFETY: timerfd_create takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ticks: u64 = 1;
    // SAFETY: the ioctl reads one u64 from `&ticks`, which lives through the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS as _, &ticks as *const u64) };
    match r {
        0 => Ok(true),
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENOTTY) => Ok(false),
            e => Err(e),
        },
    }
}

/// How many bytes a read of `fd` would find queued (`FIONREAD`).
pub fn queued_bytes(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to `&mut n`, which lives through the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n as *mut libc::c_int) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(n.max(0) as u32) }
}

/// Opens the file of handle (`handle_type`, `handle`: as fdinfo of an inotify watch
/// shows them) on the filesystem of `mount`, `O_PATH`: it need not be readable.
pub fn open_by_handle(mount: BorrowedFd<'_>, handle_type: i32, handle: &[u8]) -> io::Result<OwnedFd> {
    if handle.len() > libc::MAX_HANDLE_SZ as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // struct file_handle ends in a flexible array (`f_handle[]`), so it cannot be a
    // plain Rust value: its header (libc's struct, f_handle of length 0) is followed by
    // the handle's bytes in one buffer of u32s, aligned as the header needs.
    const HEADER: usize = std::mem::size_of::<libc::file_handle>();
    const _: () = assert!(HEADER == 8 && std::mem::align_of::<libc::file_handle>() <= 4);
    let mut buf = vec![0u32; (HEADER + handle.len()).div_ceil(4)];
    let base = buf.as_mut_ptr().cast::<u8>();
    let header = libc::file_handle { handle_bytes: handle.len() as u32, handle_type, f_handle: [] };
    // SAFETY: `buf` holds at least HEADER + handle.len() bytes and is 4-aligned; the
    // header is written at its start and the bytes right after, within the buffer.
    unsafe {
        base.cast::<libc::file_handle>().write(header);
        std::ptr::copy_nonoverlapping(handle.as_ptr(), base.add(HEADER), handle.len());
    }
    // SAFETY: the buffer is a complete struct file_handle that lives through the call;
    // `mount` is borrowed, so open. The kernel only reads the handle.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            base.cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct pidfd_info` (linux/pidfd.h, kernel 6.15; `PIDFD_INFO_SIZE_VER0`), written
/// out here because neither `libc` nor `linux-raw-sys` 0.12 has it.
#[repr(C)]
#[derive(Debug, Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}
const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);

/// `PIDFD_GET_INFO`: `_IOWR(0xFF, 11, struct pidfd_info)`.
const PIDFD_GET_INFO: u64 = (3 << 30) | (64 << 16) | (0xFF << 8) | 11;
/// `PIDFD_INFO_EXIT`: ask for the exit status of a reaped process.
const PIDFD_INFO_EXIT: u64 = 1 << 3;

/// The wait status of the reaped process of pidfd `fd`, as the kernel keeps it for
/// pidfds (6.15 on); `None` where this kernel does not tell.
pub fn pidfd_exit_status(fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    let mut info = PidfdInfo { mask: PIDFD_INFO_EXIT, ..PidfdInfo::default() };
    // SAFETY: the ioctl writes at most 64 bytes (its size is in the command) into `info`,
    // which is that large and lives through the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), PIDFD_GET_INFO as _, &mut info as *mut PidfdInfo) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTTY | libc::EINVAL) => Ok(None),
            _ => Err(e),
        };
    }
    Ok((info.mask & PIDFD_INFO_EXIT != 0).then_some(info.exit_code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_fresh_timerfd_is_disarmed_and_a_pipe_tells_its_bytes() -> io::Result<()> {
        let t = nix::sys::timerfd::TimerFd::new(
            nix::sys::timerfd::ClockId::CLOCK_MONOTONIC,
            nix::sys::timerfd::TimerFlags::TFD_CLOEXEC,
        )?;
        let spec = timerfd_gettime(t.as_fd())?;
        assert_eq!((spec.it_value.tv_sec, spec.it_value.tv_nsec, spec.it_interval.tv_sec), (0, 0, 0));
        let (r, w) = nix::unistd::pipe()?;
        nix::unistd::write(&w, b"abc")?;
        assert_eq!(queued_bytes(r.as_fd())?, 3);
        Ok(())
    }

    #[test]
    fn a_reaped_process_pidfd_tells_its_exit_status() -> io::Result<()> {
        let mut child = std::process::Command::new("sh").args(["-c", "exit 3"]).spawn()?;
        let pidfd = crate::pidfd::PidFd::open(child.id() as i32).map_err(io::Error::other)?;
        child.wait()?;
        // Kernels before 6.15 do not tell.
        assert!(matches!(pidfd_exit_status(pidfd.as_fd())?, Some(0x300) | None));
        Ok(())
    }
}
