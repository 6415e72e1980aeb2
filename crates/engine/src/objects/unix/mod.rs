//! Unix sockets: stream, datagram and seqpacket; socketpairs, sockets bound to a path or
//! an abstract name (autobound ones too), listeners with connections waiting to be
//! accepted, accepted connections, connected sockets with the bytes queued for them.
//!
//! Dump: the kernel's `sock_diag` table ([`diag`]) gives each socket's type, state,
//! name, peer, a listener's pending connections (`UNIX_DIAG_ICONS` lists their *client*
//! sockets; a pending client shows peer 0, its server end having no inode yet) and
//! shutdown bits. An accepted socket shows its listener's name (and, since it shares the
//! listener's path, its `UNIX_DIAG_VFS`): a listener of that name tells them apart; with
//! none left, an abstract name that is free again (probed by a bind) was a closed
//! listener's. The receive queue is read from a copy of the socket with `MSG_PEEK` and
//! `SO_PEEK_OFF` (unix sockets: Linux 4.x), so nothing is consumed; the peek offset is
//! put back afterwards. Peeking without a control buffer makes the kernel flag
//! `MSG_CTRUNC` where a message carries fds (or credentials), and install none.
//! `SO_PEERCRED` and the `F_SETOWN` owner are read from the copy too.
//!
//! Restore ([`make`]): the first process that needs a socket makes it *and every socket
//! tied to it* (its peer: one `socketpair`; a listener: its accepted connections, then
//! its pending ones, connected in accept order) at spare fds of its own (as pipes are
//! made), through injected calls so they belong to the container's namespaces and
//! resolve names in its mounts, with the effective ids `SO_PEERCRED` names; each
//! socket's holders then copy it to their fd. Queues are refilled by sending from the
//! peer end, from the engine through a copy (`pidfd_getfd`) with buffers forced large,
//! before shutdown, buffer sizes, peek offset and `SO_PASSCRED`/`SO_PASSSEC` are set as
//! they were. [`makers`] foresees, at the precheck, which process that will be.
//!
//! Refused, by name: sockets whose peer, listener or pending client is held outside the
//! container; fds or credentials in flight; a pending connection whose client sent
//! bytes (they wait in a server end no fd reaches before `accept`); a connected socket
//! named by a path no listener holds (a closed listener's, or bound before it
//! connected: the two cannot be told apart); datagrams queued from other senders than
//! the one a restore sends them from (the peer; for an unconnected socket or a closed
//! peer, a socket of no name); options no record carries, off their defaults; a
//! connection `SO_PEERCRED` says another process made than the one its restore would
//! use. (An error pending is refused for every socket, in [`super::classify`].)

pub mod diag;
mod make;
mod makers;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use migrate_proto::records::unix::{MAX_GROUPS, MAX_TIMEOUT_US};
use migrate_proto::records::{FdKind, PeerCred, SocketFile, UnixName, UnixSocket, UnixState, UnixType};
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, SockaddrLike, UnixAddr, recvmsg};

use super::{Classified, FdSeen};
use crate::error::EngineError;
pub use diag::check;
use diag::{LISTEN, Table, show_name, socket_inode};
pub use make::{World, restore};

pub fn dump(seen: &FdSeen<'_>, sock: &OwnedFd) -> Result<Classified, EngineError> {
    let Some(ino) = socket_inode(seen.link) else {
        return Ok(Err(format!("a unix socket with an unexpected link ({})", seen.link)));
    };
    let table = Table::of(seen.pid)?;
    let Some(me) = table.get(ino) else {
        return Ok(Err(format!("a unix socket ({}) of another network namespace: not supported", seen.link)));
    };
    let here =
        |what: &str| format!("a unix socket ({}, {}) {what}", seen.link, show_name(me.name.as_deref()));
    let ty = match i32::from(me.ty) {
        libc::SOCK_STREAM => UnixType::Stream,
        libc::SOCK_DGRAM => UnixType::Dgram,
        libc::SOCK_SEQPACKET => UnixType::SeqPacket,
        t => return Ok(Err(here(&format!("of type {t}: not supported")))),
    };
    let err = |what: &str, e: std::io::Error| EngineError::Proc {
        pid: seen.pid,
        what: format!("unix socket at fd {}", seen.fd),
        reason: format!("{what}: {e}"),
    };
    // Someone else's name: an accepted socket shows its listener's address (and, for
    // a path, its file). A listener of that name tells; with none left, an abstract name
    // that is free was its closed listener's, and a path cannot be told from the
    // socket's own bind.
    let connected = me.state != LISTEN && me.peer.is_some() && i32::from(me.ty) != libc::SOCK_DGRAM;
    let listened = table.by_ino.values().any(|d| d.ino != ino && d.state == LISTEN && d.name == me.name);
    let inherited = match me.name.as_deref() {
        Some([0, rest @ ..]) if connected => listened || diag::abstract_free(seen.pid, rest)?,
        Some(_) if connected && !listened && table.listener_of(ino).is_none() => {
            return Ok(Err(here(
                "connected, named by a path no listener holds (accepted from a closed listener, or bound before it connected): not supported yet",
            )));
        }
        Some(_) => connected && listened,
        None => false,
    };
    let mut name = match me.name.as_deref() {
        None | Some([]) => None,
        Some([0, rest @ ..]) => Some(UnixName::Abstract(rest.to_vec())),
        Some(path) => {
            // The kernel keeps a path's terminating NUL.
            let path = path.split(|b| *b == 0).next().unwrap_or_default();
            // What the image's validation takes: a `..` would fail the checkpoint late.
            let Some(path) = std::str::from_utf8(path)
                .ok()
                .filter(|p| p.starts_with('/') && !p.split('/').any(|c| c == ".."))
            else {
                return Ok(Err(here("bound to a relative, `..` or non-UTF-8 path: not supported yet")));
            };
            // Only a name that is gone means "unlinked": the restore removes it again.
            let file = match std::fs::metadata(format!("/proc/{}/root{path}", seen.pid)) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(crate::error::io_err("stat", path)(e)),
            }
            .filter(|m| me.vfs.is_some_and(|(vino, _)| u64::from(vino) == m.ino()))
            .map(|m| SocketFile { mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid() });
            // The restore binds it again, which makes its node (see `hostfs`), owned as
            // now; an unlinked one's, made for a moment by the restore, is the engine's.
            let owner = file.as_ref().map_or_else(|| nix::unistd::geteuid().as_raw(), |f| f.uid);
            if let Err(why) = crate::hostfs::may_create(seen.pid, path, owner) {
                let rule = crate::hostfs::RULE;
                return Ok(Err(here(&format!(
                    "bound to {path}, whose node a restore makes again; {why}, and {rule}"
                ))));
            }
            Some(UnixName::Path { path: path.to_string(), file })
        }
    };
    let state = if inherited {
        let Some(address) = name.take() else {
            return Ok(Err(here("accepted at a name that cannot be read: not supported")));
        };
        let peer = match me.peer {
            Some(p) if p != 0 && table.get(p).is_some() => u64::from(p),
            _ => return Ok(Err(here("accepted, its peer closed: not supported yet"))),
        };
        let listener =
            table.by_ino.values().find(|d| d.state == LISTEN && d.name == me.name).map(|l| u64::from(l.ino));
        if listener.is_none() && matches!(address, UnixName::Path { .. }) {
            return Ok(Err(here("accepted from a listener that is closed: not supported yet")));
        }
        UnixState::Accepted { peer, listener, address }
    } else if me.state == LISTEN {
        let mut pending = Vec::with_capacity(me.icons.len());
        for &c in &me.icons {
            let Some(client) = table.get(c).filter(|_| c != 0) else {
                return Ok(Err(here(
                    "listening, with a pending connection whose client is closed: not supported",
                )));
            };
            // What a pending client sent waits in the server end, which no fd reaches
            // before accept: its bytes are still charged to the client's send buffer.
            if client.rqlen.is_none_or(|(_, out)| out != 0) {
                return Ok(Err(here(
                    "listening, with a pending connection whose client sent bytes not accepted yet (they cannot be read before accept): not supported",
                )));
            }
            pending.push(u64::from(c));
        }
        UnixState::Listening { backlog: me.rqlen.map_or(0, |(_, b)| b), pending }
    } else {
        match (table.listener_of(ino), me.peer) {
            (Some(l), _) => UnixState::Pending { listener: u64::from(l.ino) },
            (None, None) => UnixState::Unconnected,
            (None, Some(p)) if p != 0 && table.get(p).is_some() => {
                UnixState::Connected { peer: u64::from(p) }
            }
            (None, Some(_)) if table.closed(me) => UnixState::PeerClosed,
            (None, Some(_)) => {
                // Peer 0, not shut: a connection not accepted yet by a listener that is
                // in no table here (the host's, seen from an agent in a namespace).
                return Ok(Err(here(&format!(
                    "waiting for the listener at {}, outside the container, to accept it",
                    diag::peer_name(sock)
                ))));
            }
        }
    };
    let fd = sock.as_fd();
    let opt = |o: libc::c_int, what: &str| {
        migrate_sys::sockopt::get_int(fd, libc::SOL_SOCKET, o).map_err(|e| err(what, e))
    };
    let passcred = opt(libc::SO_PASSCRED, "SO_PASSCRED")? != 0;
    let passsec = opt(libc::SO_PASSSEC, "SO_PASSSEC")? != 0;
    let peek_off = opt(libc::SO_PEEK_OFF, "SO_PEEK_OFF")?;
    // Options a unix socket takes but this version does not carry: refused unless at
    // their defaults. A kernel that does not know one (`ENOPROTOOPT`) has it at its
    // default.
    for (o, name, default) in [
        (libc::SO_RCVLOWAT, "SO_RCVLOWAT", 1),
        (libc::SO_PRIORITY, "SO_PRIORITY", 0),
        (libc::SO_MARK, "SO_MARK", 0),
        (libc::SO_TIMESTAMP, "SO_TIMESTAMP", 0),
        (libc::SO_TIMESTAMPNS, "SO_TIMESTAMPNS", 0),
        (libc::SO_TIMESTAMPING, "SO_TIMESTAMPING", 0),
        (libc::SO_KEEPALIVE, "SO_KEEPALIVE", 0),
        // Out-of-band bytes read in line (a stream, Linux 5.15+).
        (libc::SO_OOBINLINE, "SO_OOBINLINE", 0),
        (migrate_sys::sockopt::SO_RCVMARK, "SO_RCVMARK", 0),
        (migrate_sys::sockopt::SO_PASSPIDFD, "SO_PASSPIDFD", 0),
        (migrate_sys::sockopt::SO_PASSRIGHTS, "SO_PASSRIGHTS", 1),
    ] {
        let v = match migrate_sys::sockopt::get_int(fd, libc::SOL_SOCKET, o) {
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => default,
            v => v.map_err(|e| err(name, e))?,
        };
        if v != default {
            return Ok(Err(here(&format!("with {name} set to {v}: not supported yet"))));
        }
    }
    let mut timeouts = [0; 2];
    for (t, opt, name) in [(0, libc::SO_RCVTIMEO, "SO_RCVTIMEO"), (1, libc::SO_SNDTIMEO, "SO_SNDTIMEO")] {
        let d = migrate_sys::sockopt::timeout(fd, opt).map_err(|e| err(name, e))?;
        timeouts[t] = match d.map(|d| u64::try_from(d.as_micros())) {
            None => 0,
            Some(Ok(us)) if us <= MAX_TIMEOUT_US => us,
            Some(_) => {
                return Ok(Err(here(&format!("with {name} beyond {MAX_TIMEOUT_US} µs: not supported"))));
            }
        };
    }
    let queue = if me.state == LISTEN {
        Peeked::Queue(Vec::new(), Vec::new())
    } else {
        peek(sock, ty, peek_off, me.shutdown & 1 != 0).map_err(|e| err("peek", e))?
    };
    let queue = match queue {
        Peeked::Queue(q, senders) => (q, senders),
        Peeked::InFlight => {
            return Ok(Err(here("with fds or credentials in flight in its queue: not supported")));
        }
        Peeked::Too(what) => return Ok(Err(here(&what))),
    };
    let (queue, senders) = queue;
    if !queue.is_empty() && passcred {
        return Ok(Err(here("with SO_PASSCRED and bytes queued (credentials in flight): not supported")));
    }
    // An unconnected datagram socket's queue came from others: a restore sends it from
    // a socket of no name, so only datagrams that came from one can be queued again.
    match (&state, senders.iter().flatten().next()) {
        _ if queue.is_empty() => {}
        (UnixState::Unconnected, None) if ty == UnixType::Dgram => {}
        (UnixState::Unconnected, Some(from)) => {
            return Ok(Err(here(&format!("with datagrams from {from} queued: not supported yet"))));
        }
        (UnixState::Unconnected | UnixState::Pending { .. }, _) => {
            return Ok(Err(here("not connected, with bytes queued: not supported yet")));
        }
        _ => {}
    }
    // A datagram tells who sent it; a restore sends each from the peer, or from a socket
    // of no name (a closed peer, an unconnected socket's): datagrams queued before a
    // socket connected came from others.
    if ty == UnixType::Dgram {
        let want = match state {
            UnixState::Connected { peer } => table
                .get(peer as u32)
                .and_then(|d| d.name.as_deref())
                .filter(|n| !n.is_empty())
                .map(|n| show_name(Some(n))),
            _ => None,
        };
        if let Some(other) = senders.iter().find(|s| **s != want) {
            let show = |n: &Option<String>| n.clone().unwrap_or_else(|| "a socket of no name".into());
            return Ok(Err(here(&format!(
                "with datagrams from {} queued, which a restore would send from {}: not supported yet",
                show(other),
                show(&want)
            ))));
        }
    }
    if let UnixState::Connected { peer } = state
        && !queue.is_empty()
        && table.get(peer as u32).and_then(|d| d.peer) != Some(ino)
    {
        return Ok(Err(here(
            "with datagrams queued, connected to a socket that is not connected back: not supported yet",
        )));
    }
    match migrate_sys::unix::owner_signal(fd).map_err(|e| err("F_GETSIG", e))? {
        0 => {}
        sig => return Ok(Err(here(&format!("with F_SETSIG {sig}: not supported yet")))),
    }
    let owner = match migrate_sys::unix::owner(fd).map_err(|e| err("F_GETOWN", e))? {
        0 => 0,
        host => {
            let ns = crate::procfs::ns_pid(host.abs()).ok().filter(|_| same_pid_ns(seen.pid, host.abs()));
            match ns {
                Some(ns) => ns * host.signum(),
                None => {
                    return Ok(Err(here(&format!(
                        "sending SIGIO to host pid {host}, outside the container: not supported"
                    ))));
                }
            }
        }
    };
    let peer_cred = peer_cred(sock).map_err(|e| err("SO_PEERCRED", e))?;
    if let Some(n) = peer_cred.as_ref().map(|c| c.groups.len()).filter(|&n| n > MAX_GROUPS) {
        return Ok(Err(here(&format!(
            "whose connection was made by a process of {n} supplementary groups (SO_PEERGROUPS), more than a restore gives ({MAX_GROUPS}): not supported"
        ))));
    }
    // Two datagram sockets connected to each other are made again as a pair, whose
    // `socketpair` gives both a `SO_PEERCRED`; two `connect`s gave them none.
    if let UnixState::Connected { peer } = state
        && ty == UnixType::Dgram
        && peer_cred.is_none()
        && table.get(peer as u32).and_then(|d| d.peer) == Some(ino)
    {
        return Ok(Err(here(
            "connected to a datagram socket that is connected back, by two connects (no SO_PEERCRED, which a restore's socketpair would give): not supported yet",
        )));
    }
    Ok(Ok(FdKind::Unix(UnixSocket {
        inode: u64::from(ino),
        ty,
        name,
        state,
        queue,
        shutdown: me.shutdown & 3,
        passcred,
        passsec,
        rcvbuf: opt(libc::SO_RCVBUF, "SO_RCVBUF")? as u32,
        sndbuf: opt(libc::SO_SNDBUF, "SO_SNDBUF")? as u32,
        peek_off,
        owner,
        timeouts,
        peer_cred,
    })))
}

/// `SO_PEERCRED` of `sock`, its pid as the container's pid namespace numbers it (the
/// engine's view of it is a host pid).
pub(crate) fn peer_cred(sock: &OwnedFd) -> std::io::Result<Option<PeerCred>> {
    let c = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials)?;
    if c.pid() == 0 && c.uid() == u32::MAX {
        return Ok(None);
    }
    // 0: the process that made the connection is gone (a restore cannot make it again).
    let pid = match std::fs::read_to_string(format!("/proc/{}/status", c.pid())) {
        _ if c.pid() <= 0 => 0,
        Ok(st) => crate::procfs::ns_value(&st, "NSpid").map_err(std::io::Error::other)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let groups = migrate_sys::unix::peer_groups(sock.as_fd())?;
    Ok(Some(PeerCred { pid, uid: c.uid(), gid: c.gid(), groups }))
}

/// Whether host pids `a` and `b` are in one pid namespace.
fn same_pid_ns(a: i32, b: i32) -> bool {
    let ns = |p: i32| std::fs::metadata(format!("/proc/{p}/ns/pid")).map(|m| m.ino()).ok();
    ns(a).is_some() && ns(a) == ns(b)
}

enum Peeked {
    /// The queue, and the names its messages came from (each once; `None`: a socket
    /// of no name).
    Queue(Vec<Vec<u8>>, Vec<Option<String>>),
    InFlight,
    Too(String),
}

/// The receive queue of `sock`, read with `MSG_PEEK` from offset 0; its peek offset is
/// `peek_off` before and after.
fn peek(sock: &OwnedFd, ty: UnixType, peek_off: i32, shut: bool) -> std::io::Result<Peeked> {
    // Out-of-band data (a stream, Linux 5.15+) breaks the queue in two: a peek of it
    // answers only when there is some.
    if ty == UnixType::Stream {
        let mut one = [0u8; 1];
        let oob = MsgFlags::MSG_OOB | MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        if nix::sys::socket::recv(sock.as_raw_fd(), &mut one, oob).is_ok() {
            return Ok(Peeked::Too("with out-of-band data queued: not supported yet".into()));
        }
    }
    migrate_sys::sockopt::set_int(sock.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let got = peek_from_zero(sock, ty, shut);
    migrate_sys::sockopt::set_int(sock.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, peek_off)?;
    got
}

/// `shut`: shut for reading, where an empty queue reads as 0 bytes, not `EAGAIN`.
fn peek_from_zero(sock: &OwnedFd, ty: UnixType, shut: bool) -> std::io::Result<Peeked> {
    let mut out = Vec::new();
    let mut senders = Vec::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    let flags = if ty == UnixType::Stream { flags } else { flags | MsgFlags::MSG_TRUNC };
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let (n, got, from) = match recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, None, flags) {
            Ok(m) => (m.bytes, m.flags, m.address),
            Err(Errno::EAGAIN) => break,
            Err(e) => return Err(e.into()),
        };
        if got.contains(MsgFlags::MSG_CTRUNC) {
            return Ok(Peeked::InFlight);
        }
        if n == 0 && ty != UnixType::Stream && !shut {
            // A datagram of no bytes: a peek offset does not move past it.
            return Ok(Peeked::Too("with an empty datagram queued: not supported yet".into()));
        }
        if n == 0 {
            // End of file (a datagram of no bytes cannot be told from it).
            break;
        }
        if n > buf.len() {
            return Ok(Peeked::Too(format!("with a datagram of {n} bytes queued: not supported")));
        }
        total += n;
        if total > migrate_proto::records::unix::MAX_QUEUED
            || out.len() >= migrate_proto::records::unix::MAX_DATAGRAMS
        {
            return Ok(Peeked::Too("with more queued than an image carries: not supported".into()));
        }
        // A sender of no name has an address of no bytes past the family, on which nix's
        // `UnixAddr` asserts: it is told by its length first. (Read as a storage, every
        // address comes back as one of no name: nix's `recvmsg` sets no length on it.)
        let named = from.filter(|a| a.len() as usize > std::mem::offset_of!(libc::sockaddr_un, sun_path));
        let from = named.as_ref().and_then(|a| match (a.path(), a.as_abstract()) {
            (Some(p), _) => Some(p.display().to_string()),
            (_, Some(a)) => Some(format!("@{}", String::from_utf8_lossy(a))),
            _ => None,
        });
        if !senders.contains(&from) {
            senders.push(from);
        }
        out.push(buf[..n].to_vec());
    }
    Ok(Peeked::Queue(out, senders))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    /// Each queued datagram's sender is seen: by its name, or as one of no name.
    #[test]
    fn a_peek_names_the_senders_of_the_queue() -> Result<(), Box<dyn std::error::Error>> {
        let name =
            |n: &str| SocketAddr::from_abstract_name(format!("migrate-peek-{n}-{}", std::process::id()));
        let to = UnixDatagram::bind_addr(&name("to")?)?;
        let from = UnixDatagram::bind_addr(&name("from")?)?;
        from.send_to_addr(b"named", &name("to")?)?;
        UnixDatagram::unbound()?.send_to_addr(b"unnamed", &name("to")?)?;
        let to = OwnedFd::from(to);
        let Peeked::Queue(queue, senders) = peek(&to, UnixType::Dgram, -1, false)? else {
            return Err("not a queue".into());
        };
        assert_eq!(queue, vec![b"named".to_vec(), b"unnamed".to_vec()]);
        let want = format!("@migrate-peek-from-{}", std::process::id());
        assert_eq!(senders, vec![Some(want), None]);
        assert_eq!(migrate_sys::sockopt::get_int(to.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF)?, -1);
        Ok(())
    }
}
