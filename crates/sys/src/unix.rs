//! Unix sockets as the kernel describes them: the `NETLINK_SOCK_DIAG` dump of every unix
//! socket of a network namespace (`unix_diag`, Linux 3.3+),
//! `SO_PEERGROUPS`, a file's `SIGIO` owner, and the bytes of a `sockaddr_un` for an
//! injected `bind` or `connect`. (Integer options, `SO_PEEK_OFF` among them: [`crate::sockopt`].)
//!
//! The dump answers for the network namespace of the netlink socket that asks, so the
//! caller opens that socket inside the container's namespace and hands it here.
//! Neither `libc` nor `linux-raw-sys` has `struct unix_diag_req` or `unix_diag_msg`
//! (`<linux/unix_diag.h>`): they are written out below, their sizes pinned.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `SOCK_DIAG_BY_FAMILY` (`<linux/sock_diag.h>`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// What to show (`UDIAG_SHOW_*`): name, vfs, peer, icons, rqlen.
const SHOW: u32 = 0x01 | 0x02 | 0x04 | 0x08 | 0x10;

// The attributes of an answer (`UNIX_DIAG_*`).
const ATTR_NAME: u16 = 0;
const ATTR_VFS: u16 = 1;
const ATTR_PEER: u16 = 2;
const ATTR_ICONS: u16 = 3;
const ATTR_RQLEN: u16 = 4;
const ATTR_SHUTDOWN: u16 = 6;

/// `struct unix_diag_req`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct UnixDiagReq {
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    ino: u32,
    show: u32,
    cookie: [u32; 2],
}
const _: () = assert!(size_of::<UnixDiagReq>() == 24);

/// `struct unix_diag_msg`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct UnixDiagMsg {
    family: u8,
    ty: u8,
    state: u8,
    pad: u8,
    ino: u32,
    cookie: [u32; 2],
}
const _: () = assert!(size_of::<UnixDiagMsg>() == 16);

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Request {
    hdr: libc::nlmsghdr,
    req: UnixDiagReq,
}
const _: () = assert!(size_of::<Request>() == 16 + 24);

/// One unix socket of the namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixDiag {
    pub ino: u32,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET`.
    pub ty: u8,
    /// `TCP_LISTEN` (10), `TCP_ESTABLISHED` (1), `TCP_CLOSE` (7)…
    pub state: u8,
    /// Its address as `sun_path` holds it (an abstract name starts with a 0 byte);
    /// an accepted socket shows its listener's.
    pub name: Option<Vec<u8>>,
    /// `(inode, device)` of the file it bound, kernel `dev_t` encoding; only the socket
    /// that bound a path has it.
    pub vfs: Option<(u32, u32)>,
    pub peer: Option<u32>,
    /// A listener's connections not yet accepted: the inodes of their client sockets
    /// (the server ends have none before `accept`).
    pub icons: Vec<u32>,
    /// `(rqueue, wqueue)`: bytes queued (a datagram socket: the first datagram's
    /// length) and bytes in flight out; a listener: queued connections and backlog.
    pub rqlen: Option<(u32, u32)>,
    /// `RCV_SHUTDOWN` (1) and `SEND_SHUTDOWN` (2).
    pub shutdown: u8,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag answer: {what}"))
}

/// Every unix socket of the network namespace of `nl`, a `NETLINK_SOCK_DIAG` socket.
pub fn unix_sockets(nl: BorrowedFd<'_>) -> io::Result<Vec<UnixDiag>> {
    let req = Request {
        hdr: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        req: UnixDiagReq {
            family: libc::AF_UNIX as u8,
            protocol: 0,
            pad: 0,
            states: u32::MAX,
            ino: 0,
            show: SHOW,
            cookie: [u32::MAX; 2],
        },
    };
    // SAFETY: `req` is a live, fully initialised `repr(C)` value without padding (the
    // sizes are asserted above); the kernel only reads `size_of::<Request>()` bytes.
    let sent =
        unsafe { libc::send(nl.as_raw_fd(), (&req as *const Request).cast(), size_of::<Request>(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = nix::sys::socket::recv(nl.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::empty())?;
        if n == 0 {
            return Err(bad("end of stream before NLMSG_DONE"));
        }
        let mut at = 0;
        while at + 16 <= n {
            let len = u32_at(&buf, at).ok_or_else(|| bad("short header"))? as usize;
            let ty = u16_at(&buf, at + 4).ok_or_else(|| bad("short header"))?;
            if len < 16 || at + len > n {
                return Err(bad("message length"));
            }
            let msg = &buf[at + 16..at + len];
            match i32::from(ty) {
                libc::NLMSG_DONE => return Ok(out),
                libc::NLMSG_ERROR => {
                    let errno = u32_at(msg, 0).ok_or_else(|| bad("short error"))? as i32;
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ => out.push(parse(msg)?),
            }
            at += (len + 3) & !3;
        }
    }
}

fn parse(msg: &[u8]) -> io::Result<UnixDiag> {
    let head = size_of::<UnixDiagMsg>();
    if msg.len() < head {
        return Err(bad("short unix_diag_msg"));
    }
    let mut d = UnixDiag {
        ty: msg[1],
        state: msg[2],
        ino: u32_at(msg, 4).ok_or_else(|| bad("ino"))?,
        ..UnixDiag::default()
    };
    let mut at = head;
    while at + 4 <= msg.len() {
        let len = usize::from(u16_at(msg, at).ok_or_else(|| bad("attr"))?);
        let ty = u16_at(msg, at + 2).ok_or_else(|| bad("attr"))? & 0x3fff;
        if len < 4 || at + len > msg.len() {
            return Err(bad("attribute length"));
        }
        let v = &msg[at + 4..at + len];
        let word = |i: usize| u32_at(v, 4 * i).ok_or_else(|| bad("attribute value"));
        match ty {
            ATTR_NAME => d.name = Some(v.to_vec()),
            ATTR_VFS => d.vfs = Some((word(0)?, word(1)?)),
            ATTR_PEER => d.peer = Some(word(0)?),
            ATTR_ICONS => d.icons = (0..v.len() / 4).map(word).collect::<io::Result<_>>()?,
            ATTR_RQLEN => d.rqlen = Some((word(0)?, word(1)?)),
            ATTR_SHUTDOWN => d.shutdown = *v.first().ok_or_else(|| bad("shutdown"))?,
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Ok(d)
}

/// `SO_PEERGROUPS` (Linux 4.13+): the supplementary groups of whoever made the other
/// side of the connection.
pub fn peer_groups(sock: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * size_of::<u32>()) as libc::socklen_t;
        // SAFETY: `groups` is a live buffer of `len` bytes; the kernel writes at most
        // that many and says how many it wrote (or needs, with ERANGE).
        let ret = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / size_of::<u32>();
        if ret == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || n <= groups.len() || n > 1 << 16 {
            return Err(err);
        }
        groups.resize(n, 0);
    }
}

/// `F_GETOWN`: the process (or, negative, process group) that gets `SIGIO` for the
/// open file `fd`, 0 for none, as the caller's pid namespace numbers it.
pub fn owner(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: F_GETOWN takes no argument and touches no memory of ours.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETOWN) };
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// `F_GETSIG`: the signal sent instead of `SIGIO` for the open file `fd`, 0 for `SIGIO`.
pub fn owner_signal(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: F_GETSIG takes no argument and touches no memory of ours.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), linux_raw_sys::general::F_GETSIG as libc::c_int) };
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// The bytes of a `sockaddr_un` naming `name` (`sun_path` as the diag shows it: an
/// abstract name starts with 0, and its length is part of it), ready to be written
/// into a task for an injected `bind` or `connect` with `len` = the vector's length.
pub fn sockaddr_un(name: &[u8]) -> io::Result<Vec<u8>> {
    // SAFETY: all-zero bytes are a valid `sockaddr_un` (plain integers).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= addr.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // A path ends with its NUL; an abstract name is exactly its bytes.
    let len = size_of::<libc::sa_family_t>() + name.len() + usize::from(name[0] != 0);
    // SAFETY: `addr` is a live `sockaddr_un` of plain integers, and `len` is at most its
    // size (`name` is shorter than `sun_path`).
    let bytes = unsafe { std::slice::from_raw_parts((&addr as *const libc::sockaddr_un).cast::<u8>(), len) };
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::{UnixListener, UnixStream};

    use super::*;

    fn ino(fd: &impl AsRawFd) -> io::Result<u32> {
        let md = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        Ok(md.ino() as u32)
    }

    /// A pair, a listener with one pending client and an abstract name, as the dump of
    /// our own network namespace shows them.
    #[test]
    fn the_dump_shows_peers_names_and_pending_clients() -> io::Result<()> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
        let nl = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        let (a, b) = UnixStream::pair()?;
        let name = format!("migrate-sys-test-{}", std::process::id());
        let addr =
            <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
                &name,
            )?;
        let l = UnixListener::bind_addr(&addr)?;
        let c = UnixStream::connect_addr(&addr)?;
        let all = unix_sockets(nl.as_fd())?;
        let find = |i: u32| all.iter().find(|d| d.ino == i).cloned().ok_or_else(|| bad("missing"));
        let (da, db, dl, dc) = (find(ino(&a)?)?, find(ino(&b)?)?, find(ino(&l)?)?, find(ino(&c)?)?);
        assert_eq!((da.peer, db.peer), (Some(db.ino), Some(da.ino)));
        assert_eq!(i32::from(da.ty), libc::SOCK_STREAM);
        assert_eq!(dl.state, 10);
        assert_eq!(dl.name, Some([&[0u8][..], name.as_bytes()].concat()));
        assert_eq!(dl.icons, vec![dc.ino]);
        // A pending client's server end has no inode yet.
        assert_eq!(dc.peer, Some(0));
        assert_eq!(sockaddr_un(&[0, b'x'])?.len(), 4);
        assert_eq!(sockaddr_un(b"/a")?.len(), 5);
        Ok(())
    }
}
