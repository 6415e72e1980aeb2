//! TCP repair mode (Linux 3.5+): reading and rebuilding a connection's state without
//! talking to the peer (design §7).
//!
//! In repair mode a socket sends nothing: `connect` moves it straight to ESTABLISHED,
//! `close` sends neither FIN nor RST, and the sequence numbers, queues, options and
//! windows can be read and written. It needs `CAP_NET_ADMIN` in the socket's network
//! namespace. Sequence numbers can only be *set* while the socket is still closed.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use linux_raw_sys::net as n;

const _: () = assert!(size_of::<n::tcp_repair_window>() == 20);
const _: () = assert!(size_of::<n::tcp_repair_opt>() == 8);

/// A failed TCP socket option.
#[derive(Debug, thiserror::Error)]
#[error("{op} {opt} on fd {fd}")]
pub struct SockoptError {
    /// `setsockopt` or `getsockopt`.
    pub op: &'static str,
    /// The option's name, e.g. `TCP_QUEUE_SEQ`.
    pub opt: &'static str,
    pub fd: RawFd,
    #[source]
    pub source: io::Error,
}

/// The queue that `TCP_QUEUE_SEQ` and repair-mode `send`/`recv` act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairQueue {
    None,
    Recv,
    Send,
}

impl RepairQueue {
    fn raw(self) -> libc::c_int {
        (match self {
            RepairQueue::None => n::TCP_NO_QUEUE,
            RepairQueue::Recv => n::TCP_RECV_QUEUE,
            RepairQueue::Send => n::TCP_SEND_QUEUE,
        }) as libc::c_int
    }
}

/// The window state of a repaired connection (`struct tcp_repair_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RepairWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

fn set<T>(sock: BorrowedFd<'_>, opt: u32, name: &'static str, value: &T) -> Result<(), SockoptError> {
    // SAFETY: `value` is a live `T` and its exact size is passed; the kernel only reads it.
    let ret = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_TCP,
            opt as libc::c_int,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(SockoptError {
            op: "setsockopt",
            opt: name,
            fd: sock.as_raw_fd(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn get<T: Copy>(sock: BorrowedFd<'_>, opt: u32, name: &'static str, mut value: T) -> Result<T, SockoptError> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a live, initialized `T` and `len` its size; the kernel writes at
    // most `len` bytes into it.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_TCP,
            opt as libc::c_int,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(SockoptError {
            op: "getsockopt",
            opt: name,
            fd: sock.as_raw_fd(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(value)
}

/// `TCP_REPAIR`: enters (`true`) or leaves repair mode.
pub fn set_repair(sock: BorrowedFd<'_>, on: bool) -> Result<(), SockoptError> {
    let v: libc::c_int = if on { n::TCP_REPAIR_ON as libc::c_int } else { n::TCP_REPAIR_OFF as libc::c_int };
    set(sock, n::TCP_REPAIR, "TCP_REPAIR", &v)
}

/// Whether the socket is in repair mode.
pub fn repair(sock: BorrowedFd<'_>) -> Result<bool, SockoptError> {
    Ok(get::<libc::c_int>(sock, n::TCP_REPAIR, "TCP_REPAIR", 0)? != 0)
}

/// `TCP_REPAIR_QUEUE`: selects the queue for the next queue operations.
pub fn set_repair_queue(sock: BorrowedFd<'_>, queue: RepairQueue) -> Result<(), SockoptError> {
    set(sock, n::TCP_REPAIR_QUEUE, "TCP_REPAIR_QUEUE", &queue.raw())
}

/// `TCP_QUEUE_SEQ` of the selected queue: the send queue's `write_seq` or the receive
/// queue's `rcv_nxt`.
pub fn queue_seq(sock: BorrowedFd<'_>) -> Result<u32, SockoptError> {
    get::<u32>(sock, n::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ", 0)
}

/// Sets `TCP_QUEUE_SEQ` of the selected queue (repair mode, socket still closed).
pub fn set_queue_seq(sock: BorrowedFd<'_>, seq: u32) -> Result<(), SockoptError> {
    set(sock, n::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ", &seq)
}

/// `TCP_REPAIR_WINDOW` (Linux 4.8).
pub fn repair_window(sock: BorrowedFd<'_>) -> Result<RepairWindow, SockoptError> {
    let zero = n::tcp_repair_window { snd_wl1: 0, snd_wnd: 0, max_window: 0, rcv_wnd: 0, rcv_wup: 0 };
    let w = get(sock, n::TCP_REPAIR_WINDOW, "TCP_REPAIR_WINDOW", zero)?;
    Ok(RepairWindow {
        snd_wl1: w.snd_wl1,
        snd_wnd: w.snd_wnd,
        max_window: w.max_window,
        rcv_wnd: w.rcv_wnd,
        rcv_wup: w.rcv_wup,
    })
}

/// Sets `TCP_REPAIR_WINDOW` (repair mode, established socket).
pub fn set_repair_window(sock: BorrowedFd<'_>, w: &RepairWindow) -> Result<(), SockoptError> {
    let raw = n::tcp_repair_window {
        snd_wl1: w.snd_wl1,
        snd_wnd: w.snd_wnd,
        max_window: w.max_window,
        rcv_wnd: w.rcv_wnd,
        rcv_wup: w.rcv_wup,
    };
    set(sock, n::TCP_REPAIR_WINDOW, "TCP_REPAIR_WINDOW", &raw)
}

/// A `sockaddr_in`/`sockaddr_in6` for `addr`, and its length.
fn raw_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data for which all-zero bytes are valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr type.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A failed `bind` or `connect`, with the address.
#[derive(Debug, thiserror::Error)]
#[error("{op} fd {fd} to {addr}")]
pub struct AddrError {
    pub op: &'static str,
    pub fd: RawFd,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// `bind(sock, addr)`: a restored socket gets its original local address back (in repair
/// mode a port in use by another repaired socket may be bound again).
pub fn bind(sock: BorrowedFd<'_>, addr: SocketAddr) -> Result<(), AddrError> {
    let (raw, len) = raw_sockaddr(addr);
    // SAFETY: `raw` is a live sockaddr of `len` bytes; the kernel only reads it.
    let ret = unsafe { libc::bind(sock.as_raw_fd(), (&raw as *const libc::sockaddr_storage).cast(), len) };
    if ret < 0 {
        return Err(AddrError { op: "bind", fd: sock.as_raw_fd(), addr, source: io::Error::last_os_error() });
    }
    Ok(())
}

/// `connect(sock, addr)`. In repair mode no SYN is sent: the socket becomes ESTABLISHED
/// at once with the sequence numbers set before.
pub fn connect(sock: BorrowedFd<'_>, addr: SocketAddr) -> Result<(), AddrError> {
    let (raw, len) = raw_sockaddr(addr);
    // SAFETY: `raw` is a live sockaddr of `len` bytes; the kernel only reads it.
    let ret = unsafe { libc::connect(sock.as_raw_fd(), (&raw as *const libc::sockaddr_storage).cast(), len) };
    if ret < 0 {
        return Err(AddrError {
            op: "connect",
            fd: sock.as_raw_fd(),
            addr,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `listen(sock, backlog)` with any backlog the kernel takes: nix's `Backlog` refuses
/// more than `SOMAXCONN` (4096), where a raised `net.core.somaxconn` keeps more.
pub fn listen(sock: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: listen takes no memory of ours; `sock` is a live fd.
    if unsafe { libc::listen(sock.as_raw_fd(), backlog) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A backlog beyond `SOMAXCONN` (which nix's `Backlog` refuses) is the kernel's to cap.
    #[test]
    fn listen_takes_a_backlog_beyond_somaxconn() -> Result<(), Box<dyn std::error::Error>> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        bind(fd.as_fd(), "127.0.0.1:0".parse()?)?;
        listen(fd.as_fd(), 65535)?;
        assert_eq!(crate::sockopt::tcp_state(fd.as_fd())?.state, 10);
        Ok(())
    }

    #[test]
    fn repair_mode_sequence_numbers() -> Result<(), Box<dyn std::error::Error>> {
        let fd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        assert!(!repair(fd.as_fd())?);
        set_repair(fd.as_fd(), true)?;
        assert!(repair(fd.as_fd())?);
        set_repair_queue(fd.as_fd(), RepairQueue::Send)?;
        set_queue_seq(fd.as_fd(), 0x1234_5678)?;
        assert_eq!(queue_seq(fd.as_fd())?, 0x1234_5678);
        set_repair_queue(fd.as_fd(), RepairQueue::Recv)?;
        set_queue_seq(fd.as_fd(), 42)?;
        assert_eq!(queue_seq(fd.as_fd())?, 42);
        set_repair_queue(fd.as_fd(), RepairQueue::None)?;
        let err = queue_seq(fd.as_fd()).err().ok_or("TCP_QUEUE_SEQ without a queue succeeded")?;
        assert_eq!(err.source.raw_os_error(), Some(libc::EINVAL));
        set_repair(fd.as_fd(), false)?;
        Ok(())
    }

    /// A repair-mode `connect` sends no SYN: the socket is ESTABLISHED at once, with the
    /// sequence numbers it was given, and closing it in repair mode sends nothing either.
    #[test]
    fn repair_mode_connect() -> Result<(), Box<dyn std::error::Error>> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        let err = connect(fd.as_fd(), "[::1]:9".parse()?).err().ok_or("IPv6 connect of an IPv4 socket")?;
        assert_eq!(err.source.raw_os_error(), Some(libc::EAFNOSUPPORT));
        set_repair(fd.as_fd(), true)?;
        set_repair_queue(fd.as_fd(), RepairQueue::Send)?;
        set_queue_seq(fd.as_fd(), 1000)?;
        set_repair_queue(fd.as_fd(), RepairQueue::Recv)?;
        set_queue_seq(fd.as_fd(), 2000)?;
        // Port 9 (discard) on loopback: nothing is sent, so nobody needs to listen.
        bind(fd.as_fd(), "127.0.0.1:0".parse()?)?;
        connect(fd.as_fd(), "127.0.0.1:9".parse()?)?;
        set_repair_queue(fd.as_fd(), RepairQueue::Send)?;
        assert_eq!(queue_seq(fd.as_fd())?, 1000);
        let w = repair_window(fd.as_fd())?;
        set_repair_window(fd.as_fd(), &w)?;
        assert_eq!(repair_window(fd.as_fd())?, w);
        drop(fd);
        Ok(())
    }
}
