//! Socket options of any level, as plain integers or byte strings: what a checkpoint
//! reads from a TCP or UDP socket and sets again on its successor. nix has a typed
//! wrapper per option; a table of options read and written the same way wants one
//! call for all of them.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// `SOL_SOCKET` options `libc` does not name yet (`asm-generic/socket.h`): a mark on
/// received messages (Linux 5.19), pidfds passed (6.5), fds refused (6.16).
pub const SO_RCVMARK: i32 = linux_raw_sys::net::SO_RCVMARK as i32;
pub const SO_PASSPIDFD: i32 = linux_raw_sys::net::SO_PASSPIDFD as i32;
pub const SO_PASSRIGHTS: i32 = linux_raw_sys::net::SO_PASSRIGHTS as i32;

/// `getsockopt(sock, level, opt)` of an `int` option.
pub fn get_int(sock: BorrowedFd<'_>, level: i32, opt: i32) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is a live int and `len` its size; the kernel writes at most `len` bytes.
    let ret = unsafe {
        libc::getsockopt(sock.as_raw_fd(), level, opt, (&mut value as *mut libc::c_int).cast(), &mut len)
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// `setsockopt(sock, level, opt)` of an `int` option.
pub fn set_int(sock: BorrowedFd<'_>, level: i32, opt: i32, value: i32) -> io::Result<()> {
    set_bytes(sock, level, opt, &value.to_ne_bytes())
}

/// `getsockopt(sock, level, opt)` into a buffer of `cap` bytes; returns what the kernel
/// wrote (a string option: `TCP_CONGESTION`, `SO_BINDTODEVICE`, `TCP_ULP`; a filter's
/// length).
pub fn get_bytes(sock: BorrowedFd<'_>, level: i32, opt: i32, cap: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; cap];
    let mut len = cap as libc::socklen_t;
    // SAFETY: `buf` is live and `len` bytes long; the kernel writes at most `len` bytes.
    let ret = unsafe { libc::getsockopt(sock.as_raw_fd(), level, opt, buf.as_mut_ptr().cast(), &mut len) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// `setsockopt(sock, level, opt)` with `value`'s bytes.
pub fn set_bytes(sock: BorrowedFd<'_>, level: i32, opt: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is live and its exact length is passed; the kernel only reads it.
    let ret = unsafe {
        libc::setsockopt(sock.as_raw_fd(), level, opt, value.as_ptr().cast(), value.len() as libc::socklen_t)
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_LINGER`: `Some(seconds)` when lingering is on.
pub fn linger(sock: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    let mut value = libc::linger { l_onoff: 0, l_linger: 0 };
    let mut len = size_of::<libc::linger>() as libc::socklen_t;
    // SAFETY: `value` is a live linger and `len` its size; the kernel writes at most `len` bytes.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&mut value as *mut libc::linger).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((value.l_onoff != 0).then_some(value.l_linger))
}

/// Sets `SO_LINGER` (`None`: off).
pub fn set_linger(sock: BorrowedFd<'_>, secs: Option<i32>) -> io::Result<()> {
    let value = libc::linger { l_onoff: i32::from(secs.is_some()), l_linger: secs.unwrap_or(0) };
    // SAFETY: `value` is a live linger and its exact size is passed; the kernel only reads it.
    let ret = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&value as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What `TCP_INFO` tells of a socket's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpState {
    /// `TCP_ESTABLISHED` 1 … `TCP_LISTEN` 10 (`include/net/tcp_states.h`).
    pub state: u8,
    /// A listener's: connections waiting in its accept queue (`sk_ack_backlog`, which
    /// the kernel reports in `tcpi_unacked`); 0 otherwise.
    pub accept_queue: u32,
    /// A listener's: `listen`'s backlog as kept (`sk_max_ack_backlog`, in `tcpi_sacked`).
    pub backlog: u32,
}

/// The number of instructions of the classic BPF filter attached to the socket
/// (`SO_ATTACH_FILTER`); 0 without one.
pub fn filter_len(sock: BorrowedFd<'_>) -> io::Result<u32> {
    // With a length of 0 the kernel writes no filter, only its length into `len`. With
    // any other length it compares it, in instructions, with the filter's, and then
    // copies the filter in bytes: a buffer sized in bytes could overflow.
    let mut dummy = 0u8;
    let mut len: libc::socklen_t = 0;
    // SAFETY: `len` is 0, so the kernel writes nothing through the (valid) pointer; it
    // writes the filter's length into `len`, a live socklen_t.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&mut dummy as *mut u8).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(len)
}

/// `SO_RCVTIMEO` or `SO_SNDTIMEO` (`opt`): `None` when the socket waits for ever.
pub fn timeout(sock: BorrowedFd<'_>, opt: i32) -> io::Result<Option<Duration>> {
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let mut len = size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: `tv` is a live timeval and `len` its size; the kernel writes at most `len` bytes.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let d = Duration::from_secs(tv.tv_sec.max(0) as u64) + Duration::from_micros(tv.tv_usec.max(0) as u64);
    Ok((!d.is_zero()).then_some(d))
}

/// Sets `SO_RCVTIMEO` or `SO_SNDTIMEO` (`opt`); `None` waits for ever.
pub fn set_timeout(sock: BorrowedFd<'_>, opt: i32, d: Option<Duration>) -> io::Result<()> {
    let d = d.unwrap_or_default();
    let tv = libc::timeval {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_usec: libc::suseconds_t::from(d.subsec_micros()),
    };
    // SAFETY: `tv` is a live timeval and its exact size is passed; the kernel only reads it.
    let ret = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A TCP socket's state, from `TCP_INFO`.
pub fn tcp_state(sock: BorrowedFd<'_>) -> io::Result<TcpState> {
    // SAFETY: tcp_info is plain old data for which all-zero bytes are valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is live and `len` its size; the kernel writes at most `len` bytes.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let listening = info.tcpi_state == 10;
    Ok(TcpState {
        state: info.tcpi_state,
        accept_queue: if listening { info.tcpi_unacked } else { 0 },
        backlog: if listening { info.tcpi_sacked } else { 0 },
    })
}

/// The local address of an IPv4 or IPv6 socket (`getsockname`).
pub fn local_addr(sock: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    sockname(sock, libc::getsockname)
}

/// The peer of a connected IPv4 or IPv6 socket (`getpeername`).
pub fn peer_addr(sock: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    sockname(sock, libc::getpeername)
}

type NameCall = unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn sockname(sock: BorrowedFd<'_>, call: NameCall) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_storage is plain old data for which all-zero bytes are valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is live and `len` its size; the kernel writes at most `len` bytes.
    let ret =
        unsafe { call(sock.as_raw_fd(), (&mut storage as *mut libc::sockaddr_storage).cast(), &mut len) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is aligned for it.
            let sin = unsafe { *(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6; storage is aligned for it.
            let sin6 = unsafe { *(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        f => Err(io::Error::other(format!("address family {f} is neither IPv4 nor IPv6"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn options_read_back_as_set() -> Result<(), Box<dyn std::error::Error>> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
        let fd = socket(AddressFamily::Inet6, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        set_int(fd.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
        assert_eq!(get_int(fd.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?, 1);
        set_bytes(fd.as_fd(), libc::IPPROTO_TCP, libc::TCP_CONGESTION, b"reno")?;
        let cc = get_bytes(fd.as_fd(), libc::IPPROTO_TCP, libc::TCP_CONGESTION, 16)?;
        assert!(cc.starts_with(b"reno\0"), "{cc:?}");
        assert_eq!(linger(fd.as_fd())?, None);
        set_linger(fd.as_fd(), Some(7))?;
        assert_eq!(linger(fd.as_fd())?, Some(7));
        assert_eq!(filter_len(fd.as_fd())?, 0);
        // Accept everything: `ret 0xffffffff`, twice.
        let ins = libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: u32::MAX };
        let prog = libc::sock_fprog { len: 2, filter: [ins, ins].as_ptr().cast_mut() };
        // SAFETY: `prog` points at two live instructions; the kernel copies them.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&prog as *const libc::sock_fprog).cast(),
                size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        assert_eq!(ret, 0, "{}", io::Error::last_os_error());
        assert_eq!(filter_len(fd.as_fd())?, 2);
        assert_eq!(timeout(fd.as_fd(), libc::SO_RCVTIMEO)?, None);
        set_timeout(fd.as_fd(), libc::SO_RCVTIMEO, Some(Duration::from_millis(2500)))?;
        assert_eq!(timeout(fd.as_fd(), libc::SO_RCVTIMEO)?, Some(Duration::from_millis(2500)));
        assert_eq!(tcp_state(fd.as_fd())?.state, 7);
        crate::tcp::bind(fd.as_fd(), "[::1]:0".parse()?)?;
        nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(77)?)?;
        assert_eq!(tcp_state(fd.as_fd())?, TcpState { state: 10, accept_queue: 0, backlog: 77 });
        let local = local_addr(fd.as_fd())?;
        assert!(local.ip().is_loopback() && local.port() != 0, "{local}");
        assert!(peer_addr(fd.as_fd()).is_err());
        Ok(())
    }
}
