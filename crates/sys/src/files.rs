//! Comparing and copying the kernel objects behind file descriptors of other processes:
//! `kcmp(KCMP_FILE)` (are two fds one open file description?), `kcmp(KCMP_EPOLL_TFD)`
//! (is an fd the file an epoll registration names?) and `tee` (copy a pipe's buffered
//! bytes without consuming them).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `KCMP_FILE` (linux/kcmp.h).
const KCMP_FILE: libc::c_int = 0;

/// Whether fd `fd1` of `pid1` and fd `fd2` of `pid2` are the same open file description.
pub fn same_file(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> io::Result<bool> {
    // SAFETY: kcmp only compares kernel objects named by integers; no memory is passed.
    let r = unsafe {
        libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1 as libc::c_ulong, fd2 as libc::c_ulong)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r == 0) }
}

/// `KCMP_EPOLL_TFD` (linux/kcmp.h).
const KCMP_EPOLL_TFD: libc::c_int = 7;

/// `struct kcmp_epoll_slot` (linux/kcmp.h): neither libc nor linux-raw-sys 0.12 has it.
#[repr(C)]
struct KcmpEpollSlot {
    efd: u32,
    tfd: u32,
    toff: u32,
}
const _: () = assert!(std::mem::size_of::<KcmpEpollSlot>() == 12);

/// Whether fd `fd` of `pid1` is the file of a registration of the epoll at fd `epfd` of
/// `pid2`: the `toff`-th (from 0) of those added with fd number `tfd`.
pub fn same_epoll_target(pid1: i32, fd: i32, pid2: i32, epfd: i32, tfd: i32, toff: u32) -> io::Result<bool> {
    let slot = KcmpEpollSlot { efd: epfd as u32, tfd: tfd as u32, toff };
    // SAFETY: the kernel reads the slot (12 bytes, alive for the call) and writes nothing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1,
            pid2,
            KCMP_EPOLL_TFD,
            fd as libc::c_ulong,
            &slot as *const KcmpEpollSlot as libc::c_ulong,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r == 0) }
}

/// Copies up to `len` buffered bytes from the pipe `from` (a read end) into the pipe
/// `to` (a write end) without consuming them (`tee(2)`, non-blocking). Returns how many.
pub fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: tee takes two fds (borrowed, open for the call), a length and flags; it
    // moves page references between kernel pipe buffers and touches no user memory.
    let r = unsafe { libc::tee(from.as_raw_fd(), to.as_raw_fd(), len, libc::SPLICE_F_NONBLOCK) };
    match r {
        r if r >= 0 => Ok(r as usize),
        _ => {
            let e = io::Error::last_os_error();
            // An empty pipe: nothing to copy.
            if e.raw_os_error() == Some(libc::EAGAIN) { Ok(0) } else { Err(e) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn tee_leaves_the_bytes_and_kcmp_tells_dups() -> io::Result<()> {
        let (r, w) = nix::unistd::pipe()?;
        let (r2, w2) = nix::unistd::pipe()?;
        std::fs::File::from(w.try_clone()?).write_all(b"hello")?;
        assert_eq!(tee(r.as_fd(), w2.as_fd(), 1 << 16)?, 5);
        drop(w2);
        let mut copy = String::new();
        std::fs::File::from(r2).read_to_string(&mut copy)?;
        assert_eq!(copy, "hello");
        let mut left = [0u8; 5];
        std::fs::File::from(r.try_clone()?).read_exact(&mut left)?;
        assert_eq!(&left, b"hello");
        let me = std::process::id() as i32;
        let dup = r.try_clone()?;
        assert!(same_file(me, r.as_raw_fd(), me, dup.as_raw_fd())?);
        assert!(!same_file(me, r.as_raw_fd(), me, w.as_raw_fd())?);
        Ok(())
    }

    #[test]
    fn kcmp_finds_the_file_of_an_epoll_registration_after_its_number_closed() -> io::Result<()> {
        use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
        let (r, w) = nix::unistd::pipe()?;
        let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        ep.add(&r, EpollEvent::new(EpollFlags::EPOLLIN, 1))?;
        let (me, epfd, tfd) = (std::process::id() as i32, ep.0.as_raw_fd(), r.as_raw_fd());
        let moved = r.try_clone()?;
        drop(r);
        assert!(same_epoll_target(me, moved.as_raw_fd(), me, epfd, tfd, 0)?);
        assert!(!same_epoll_target(me, w.as_raw_fd(), me, epfd, tfd, 0)?);
        // No second registration with that number.
        assert!(same_epoll_target(me, moved.as_raw_fd(), me, epfd, tfd, 1).is_err());
        Ok(())
    }
}
