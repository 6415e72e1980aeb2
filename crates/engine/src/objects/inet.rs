//! TCP and UDP sockets, IPv4 and IPv6: TCP sockets that listen, are bound or unbound,
//! and UDP sockets, bound, connected or not, with their options.
//!
//! Dump, from a `pidfd_getfd` copy of the socket (nothing is read from its queues, so
//! nothing is consumed): family, type and protocol (`SO_DOMAIN`, `SO_TYPE`,
//! `SO_PROTOCOL`), the local address (`getsockname`), a UDP socket's peer
//! (`getpeername`), a TCP socket's state (`tcpi_state` of `TCP_INFO`), its owner
//! (`st_uid`), every integer option of [`SockOpt`] that the kernel answers for this
//! socket, and `SO_LINGER`, `SO_RCVTIMEO`, `SO_SNDTIMEO`, `TCP_CONGESTION`,
//! `SO_BINDTODEVICE`. For a listener `TCP_INFO` also gives `listen`'s backlog
//! (`sk_max_ack_backlog`, in `tcpi_sacked`) and the connections waiting to be accepted
//! (`sk_ack_backlog`, in `tcpi_unacked`). For a UDP socket the bytes of unread
//! datagrams are `rx_queue` of its line (by inode) in the kernel's table of its network
//! namespace, `/proc/PID/net/udp` or `udp6`, and its `tx_queue` the bytes not sent yet.
//!
//! Refused (at precheck, where the same classification runs): TCP sockets in any other
//! state (an established connection, SYN_SENT, CLOSE_WAIT, …: carried by a later
//! version, with TCP repair), a listener with connections in its accept queue (they are
//! established connections), a UDP socket with unread datagrams (a new socket cannot be
//! given them with their source addresses) or bytes waiting to be sent (corked), a UDP
//! socket in a network namespace where
//! a multicast group is joined (no option tells which socket joined it, so none is
//! carried), other protocols (raw, SCTP, ICMP), and state that nothing in the record
//! reads back: IP options, an upper-layer protocol (`TCP_ULP`, kTLS),
//! signal-driven I/O (`O_ASYNC`).
//!
//! Restore: an injected `socket()` makes the socket inside the task (so it belongs to
//! the container's network namespace), installed at its fd. The rest is done from here
//! on a copy of it. Options are compared with those of the new socket and set only
//! where they differ: an option the program never set stays unset (a TCP buffer size
//! set by hand locks it, one left alone is tuned by the kernel). Then its owner
//! (`fchown`, which sets the kernel's `sk_uid`), `bind`, `listen`, and a UDP `connect`.
//! Options and owner go before `bind`, so `IPV6_V6ONLY`, `SO_REUSEADDR` and
//! `SO_REUSEPORT` decide, as they did, whether an IPv4 and an IPv6 socket, or the
//! sockets of a reuseport group (which must have one owner), share a port: then the
//! order in which sockets are rebuilt does not matter (nginx's and redis's `0.0.0.0` +
//! `[::]` v6only pairs, a reuseport group of workers). Every integer option is read
//! back and must answer as it did.
//!
//! Known limits: a UDP socket that was bound implicitly (by `connect` or a first send)
//! comes back bound explicitly to the same address, which only shows if it later
//! disconnects (it keeps its port); a buffer size set by hand to exactly its default
//! comes back unlocked; a reuseport group's BPF program cannot be read from a socket
//! and is not carried; each socket is bound and listens as it is rebuilt, so a socket
//! that could only bind because another had not listened yet fails the restore;
//! half-open connections (SYN received, not yet in the accept queue) are not carried,
//! and connections that arrive between the dump and the end of the source are lost
//! until the container's link is locked during a checkpoint (design §7).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use migrate_proto::records::{
    FdKind, FdRecord, InetAddr, InetProto, InetSocket, InetState, IntOption, SockOpt,
};
use migrate_sys::sockopt;

use super::{Classified, FdSeen, create_flags, install};
use crate::error::EngineError;
use crate::inject::Remote;

/// Each option's level and number.
fn raw(opt: SockOpt) -> (i32, i32) {
    use SockOpt as O;
    use libc::*;
    match opt {
        O::ReuseAddr => (SOL_SOCKET, SO_REUSEADDR),
        O::ReusePort => (SOL_SOCKET, SO_REUSEPORT),
        O::KeepAlive => (SOL_SOCKET, SO_KEEPALIVE),
        O::Broadcast => (SOL_SOCKET, SO_BROADCAST),
        O::Priority => (SOL_SOCKET, SO_PRIORITY),
        O::Mark => (SOL_SOCKET, SO_MARK),
        O::RcvLowat => (SOL_SOCKET, SO_RCVLOWAT),
        O::RcvBuf => (SOL_SOCKET, SO_RCVBUF),
        O::SndBuf => (SOL_SOCKET, SO_SNDBUF),
        O::OobInline => (SOL_SOCKET, SO_OOBINLINE),
        O::DontRoute => (SOL_SOCKET, SO_DONTROUTE),
        O::Timestamp => (SOL_SOCKET, SO_TIMESTAMP),
        O::TimestampNs => (SOL_SOCKET, SO_TIMESTAMPNS),
        O::RxqOvfl => (SOL_SOCKET, SO_RXQ_OVFL),
        O::IncomingCpu => (SOL_SOCKET, SO_INCOMING_CPU),
        O::TcpNoDelay => (IPPROTO_TCP, TCP_NODELAY),
        O::TcpKeepIdle => (IPPROTO_TCP, TCP_KEEPIDLE),
        O::TcpKeepIntvl => (IPPROTO_TCP, TCP_KEEPINTVL),
        O::TcpKeepCnt => (IPPROTO_TCP, TCP_KEEPCNT),
        O::TcpDeferAccept => (IPPROTO_TCP, TCP_DEFER_ACCEPT),
        O::TcpFastOpen => (IPPROTO_TCP, TCP_FASTOPEN),
        O::TcpFastOpenConnect => (IPPROTO_TCP, TCP_FASTOPEN_CONNECT),
        O::TcpMaxSeg => (IPPROTO_TCP, TCP_MAXSEG),
        O::TcpUserTimeout => (IPPROTO_TCP, TCP_USER_TIMEOUT),
        O::TcpCork => (IPPROTO_TCP, TCP_CORK),
        O::TcpNotSentLowat => (IPPROTO_TCP, TCP_NOTSENT_LOWAT),
        O::TcpWindowClamp => (IPPROTO_TCP, TCP_WINDOW_CLAMP),
        O::TcpSynCnt => (IPPROTO_TCP, TCP_SYNCNT),
        O::TcpLinger2 => (IPPROTO_TCP, TCP_LINGER2),
        O::TcpSaveSyn => (IPPROTO_TCP, TCP_SAVE_SYN),
        O::UdpCork => (IPPROTO_UDP, UDP_CORK),
        O::UdpSegment => (IPPROTO_UDP, UDP_SEGMENT),
        O::UdpGro => (IPPROTO_UDP, UDP_GRO),
        O::IpTos => (IPPROTO_IP, IP_TOS),
        O::IpTtl => (IPPROTO_IP, IP_TTL),
        O::IpFreebind => (IPPROTO_IP, IP_FREEBIND),
        O::IpTransparent => (IPPROTO_IP, IP_TRANSPARENT),
        O::IpPktInfo => (IPPROTO_IP, IP_PKTINFO),
        O::IpRecvTos => (IPPROTO_IP, IP_RECVTOS),
        O::IpRecvTtl => (IPPROTO_IP, IP_RECVTTL),
        O::IpRecvErr => (IPPROTO_IP, IP_RECVERR),
        O::IpRecvOrigDstAddr => (IPPROTO_IP, IP_RECVORIGDSTADDR),
        O::IpMtuDiscover => (IPPROTO_IP, IP_MTU_DISCOVER),
        O::IpBindAddressNoPort => (IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT),
        O::IpMulticastTtl => (IPPROTO_IP, IP_MULTICAST_TTL),
        O::IpMulticastLoop => (IPPROTO_IP, IP_MULTICAST_LOOP),
        O::IpMulticastAll => (IPPROTO_IP, IP_MULTICAST_ALL),
        // An `in_addr` read and written as 4 bytes: an int's size.
        O::IpMulticastIf => (IPPROTO_IP, IP_MULTICAST_IF),
        O::Ipv6V6Only => (IPPROTO_IPV6, IPV6_V6ONLY),
        O::Ipv6TClass => (IPPROTO_IPV6, IPV6_TCLASS),
        O::Ipv6UnicastHops => (IPPROTO_IPV6, IPV6_UNICAST_HOPS),
        O::Ipv6RecvPktInfo => (IPPROTO_IPV6, IPV6_RECVPKTINFO),
        O::Ipv6RecvTClass => (IPPROTO_IPV6, IPV6_RECVTCLASS),
        O::Ipv6RecvHopLimit => (IPPROTO_IPV6, IPV6_RECVHOPLIMIT),
        O::Ipv6RecvErr => (IPPROTO_IPV6, IPV6_RECVERR),
        O::Ipv6RecvOrigDstAddr => (IPPROTO_IPV6, IPV6_RECVORIGDSTADDR),
        O::Ipv6MtuDiscover => (IPPROTO_IPV6, IPV6_MTU_DISCOVER),
        O::Ipv6Freebind => (IPPROTO_IPV6, IPV6_FREEBIND),
        O::Ipv6Transparent => (IPPROTO_IPV6, IPV6_TRANSPARENT),
        O::Ipv6MulticastHops => (IPPROTO_IPV6, IPV6_MULTICAST_HOPS),
        O::Ipv6MulticastLoop => (IPPROTO_IPV6, IPV6_MULTICAST_LOOP),
        O::Ipv6MulticastIf => (IPPROTO_IPV6, IPV6_MULTICAST_IF),
        O::Ipv6MulticastAll => (IPPROTO_IPV6, IPV6_MULTICAST_ALL),
    }
}

/// The names of `tcpi_state` values (`include/net/tcp_states.h`).
const TCP_STATES: [&str; 13] = [
    "?",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;

/// Why established connections are refused, and where that is followed.
const LATER: &str =
    "established TCP connections cannot be carried yet: close them (stop the clients) and checkpoint again";

pub fn dump(seen: &FdSeen<'_>, sock: &OwnedFd) -> Result<Classified, EngineError> {
    let fd = sock.as_fd();
    let proc_err = |what: &str| {
        let what = format!("{what} of socket fd {}", seen.fd);
        move |e: std::io::Error| EngineError::Proc { pid: seen.pid, what, reason: e.to_string() }
    };
    let int = |level, opt, what: &str| sockopt::get_int(fd, level, opt).map_err(proc_err(what));
    let v6 = int(libc::SOL_SOCKET, libc::SO_DOMAIN, "SO_DOMAIN")? == libc::AF_INET6;
    let ty = int(libc::SOL_SOCKET, libc::SO_TYPE, "SO_TYPE")?;
    let protocol = int(libc::SOL_SOCKET, libc::SO_PROTOCOL, "SO_PROTOCOL")?;
    let family = if v6 { "IPv6" } else { "IPv4" };
    let proto = match (ty, protocol) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => InetProto::Tcp,
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => InetProto::Udp,
        _ => {
            return Ok(Err(format!(
                "an {family} socket of type {ty}, protocol {protocol} ({}): only TCP and UDP are supported",
                seen.link
            )));
        }
    };
    let local = Some(inet_addr(sockopt::local_addr(fd).map_err(proc_err("getsockname"))?));
    // Only "not connected" means no peer: any other failure would restore it unconnected.
    let peer = match sockopt::peer_addr(fd) {
        Ok(a) => Some(inet_addr(a)),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => None,
        Err(e) => return Err(proc_err("getpeername")(e)),
    };
    let ino = super::unix::diag::socket_inode(seen.link).ok_or_else(|| {
        proc_err("the inode")(std::io::Error::other(format!("{} is no socket link", seen.link)))
    })?;
    let show = |a: Option<InetAddr>| a.map_or_else(|| "(unbound)".to_string(), |a| a.to_string());
    // Bound: an address or a port (IP_BIND_ADDRESS_NO_PORT binds an address alone).
    let local = local.filter(|a| a.port != 0 || !a.ip.is_unspecified());
    let state = match proto {
        InetProto::Tcp => {
            let info = sockopt::tcp_state(fd).map_err(proc_err("TCP_INFO"))?;
            match (info.state, local) {
                (TCP_LISTEN, Some(local)) if info.accept_queue > 0 => {
                    return Ok(Err(format!(
                        "a TCP socket listening on {local} with {} connection(s) waiting in its accept queue: {LATER}",
                        info.accept_queue
                    )));
                }
                (TCP_LISTEN, Some(local)) => InetState::Listening { local, backlog: info.backlog },
                (TCP_CLOSE, Some(local)) => InetState::Bound { local },
                (TCP_CLOSE, None) => InetState::Unbound,
                (st, _) => {
                    let name = TCP_STATES.get(usize::from(st)).unwrap_or(&"?");
                    return Ok(Err(format!(
                        "a TCP connection {} ↔ {} ({name}): {LATER}",
                        show(local),
                        show(peer)
                    )));
                }
            }
        }
        InetProto::Udp => {
            let (tx, rx) = udp_queues(seen.pid, v6, ino)?;
            // Corked (`UDP_CORK`, `MSG_MORE`) bytes wait in the write queue for the rest
            // of their datagram: a new socket would send it without them.
            if tx > 0 {
                return Ok(Err(format!(
                    "a UDP socket on {} with bytes waiting to be sent ({tx} as the kernel accounts them: \
                     corked, or not sent yet), which are not carried",
                    show(local)
                )));
            }
            if rx > 0 {
                return Ok(Err(format!(
                    "a UDP socket on {} with datagrams waiting in its receive queue ({rx} bytes as the kernel \
                     accounts them): a new socket cannot be given them with their source addresses",
                    show(local)
                )));
            }
            // Unread, a table would hide every group; only a kernel without IPv6 has no igmp6.
            let igmp = crate::error::read_proc(seen.pid, "net/igmp")?;
            let igmp6 = std::fs::read_to_string(format!("/proc/{}/net/igmp6", seen.pid))
                .or_else(
                    |e| if e.kind() == std::io::ErrorKind::NotFound { Ok(String::new()) } else { Err(e) },
                )
                .map_err(proc_err("net/igmp6"))?;
            if let Some(group) = joined_groups(&igmp, &igmp6).first() {
                return Ok(Err(format!(
                    "a UDP socket on {} in a network namespace where multicast group {group} is joined: \
                     memberships cannot be read from a socket and are not carried",
                    show(local)
                )));
            }
            match (local, peer) {
                (Some(local), Some(peer)) => InetState::Connected { local, peer },
                (Some(local), None) => InetState::Bound { local },
                _ => InetState::Unbound,
            }
        }
    };
    let (_, flags) = crate::procfs::parse_fdinfo(seen.info)
        .map_err(EngineError::proc(seen.pid, format!("fdinfo of fd {}", seen.fd)))?;
    let unreadable = if flags & libc::O_ASYNC as u32 != 0 {
        Some("signal-driven I/O (O_ASYNC)".to_string())
    } else {
        unreadable(fd)
    };
    if let Some(what) = unreadable {
        return Ok(Err(format!("{} on {}, which has {what}: not supported", proto_name(proto), show(local))));
    }
    let mut options = Vec::with_capacity(SockOpt::ALL.len());
    for &opt in SockOpt::ALL {
        let (level, name) = raw(opt);
        match sockopt::get_int(fd, level, name) {
            Ok(value) => options.push(IntOption { opt, value }),
            Err(e) if not_this_sockets(&e) => {}
            Err(e) => return Err(proc_err(&format!("{opt:?}"))(e)),
        }
    }
    let string = |level, opt, what: &str| -> Result<Option<String>, EngineError> {
        let b = match sockopt::get_bytes(fd, level, opt, 32) {
            Ok(b) => b,
            Err(e) if not_this_sockets(&e) => return Ok(None),
            Err(e) => return Err(proc_err(what)(e)),
        };
        let s = String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or_default()).into_owned();
        Ok((!s.is_empty()).then_some(s))
    };
    Ok(Ok(FdKind::Inet(InetSocket {
        v6,
        proto,
        state,
        owner: nix::sys::stat::fstat(fd).map_err(|e| proc_err("fstat")(e.into()))?.st_uid,
        options,
        linger: sockopt::linger(fd).map_err(proc_err("SO_LINGER"))?,
        rcv_timeout_us: micros(sockopt::timeout(fd, libc::SO_RCVTIMEO).map_err(proc_err("SO_RCVTIMEO"))?),
        snd_timeout_us: micros(sockopt::timeout(fd, libc::SO_SNDTIMEO).map_err(proc_err("SO_SNDTIMEO"))?),
        congestion: if proto == InetProto::Tcp {
            string(libc::IPPROTO_TCP, libc::TCP_CONGESTION, "TCP_CONGESTION")?
        } else {
            None
        },
        bind_device: string(libc::SOL_SOCKET, libc::SO_BINDTODEVICE, "SO_BINDTODEVICE")?,
    })))
}

/// An option another protocol or family owns: this socket has none of it to carry.
fn not_this_sockets(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOPROTOOPT | libc::EOPNOTSUPP | libc::EINVAL))
}

fn micros(d: Option<std::time::Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn proto_name(p: InetProto) -> &'static str {
    match p {
        InetProto::Tcp => "a TCP socket",
        InetProto::Udp => "a UDP socket",
    }
}

/// State of the socket that no option of the record reads back, when it is not at its
/// default: what it is, for the refusal.
fn unreadable(fd: BorrowedFd<'_>) -> Option<String> {
    if sockopt::get_bytes(fd, libc::IPPROTO_IP, libc::IP_OPTIONS, 40).is_ok_and(|b| !b.is_empty()) {
        return Some("IP options (IP_OPTIONS)".into());
    }
    // The ULP's name, empty without one.
    if sockopt::get_bytes(fd, libc::IPPROTO_TCP, libc::TCP_ULP, 16).is_ok_and(|b| b.iter().any(|&c| c != 0)) {
        return Some("an upper-layer protocol (TCP_ULP, e.g. kTLS)".into());
    }
    // Integer options [`SockOpt`] does not carry, off by default: one that is on would
    // be lost.
    use libc::*;
    for (level, opt, name) in [
        (SOL_SOCKET, SO_TIMESTAMPING, "SO_TIMESTAMPING"),
        (SOL_SOCKET, SO_ZEROCOPY, "SO_ZEROCOPY"),
        (SOL_SOCKET, SO_SELECT_ERR_QUEUE, "SO_SELECT_ERR_QUEUE"),
        (SOL_SOCKET, sockopt::SO_RCVMARK, "SO_RCVMARK"),
        (IPPROTO_IP, IP_RECVOPTS, "IP_RECVOPTS"),
        (IPPROTO_IP, IP_RETOPTS, "IP_RETOPTS"),
        (IPPROTO_IP, IP_PASSSEC, "IP_PASSSEC"),
        (IPPROTO_IP, IP_MINTTL, "IP_MINTTL"),
        (IPPROTO_IPV6, IPV6_RECVRTHDR, "IPV6_RECVRTHDR"),
        (IPPROTO_IPV6, IPV6_RECVHOPOPTS, "IPV6_RECVHOPOPTS"),
        (IPPROTO_IPV6, IPV6_RECVDSTOPTS, "IPV6_RECVDSTOPTS"),
        (IPPROTO_IPV6, IPV6_RECVPATHMTU, "IPV6_RECVPATHMTU"),
        (IPPROTO_IPV6, IPV6_DONTFRAG, "IPV6_DONTFRAG"),
        (IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS, "TCP_THIN_LINEAR_TIMEOUTS"),
    ] {
        // Not this socket's family or protocol, or a kernel without it: nothing to lose.
        if let Ok(v) = sockopt::get_int(fd, level, opt)
            && v != 0
        {
            return Some(format!("{name} set to {v} (not carried)"));
        }
    }
    None
}

fn inet_addr(a: SocketAddr) -> InetAddr {
    let scope_id = match a {
        SocketAddr::V6(v6) => v6.scope_id(),
        SocketAddr::V4(_) => 0,
    };
    InetAddr { ip: a.ip(), port: a.port(), scope_id }
}

/// The bytes of UDP socket inode `ino` waiting to be sent and unread (`tx_queue` and
/// `rx_queue` of its line in the `/proc/PID/net/udp` table of its network namespace; 0
/// for an unbound socket, which the table does not list and which holds none).
fn udp_queues(pid: i32, v6: bool, ino: u32) -> Result<(u64, u64), EngineError> {
    // Unread, the table would let every queue pass as empty.
    let table = if v6 { "net/udp6" } else { "net/udp" };
    let text = crate::error::read_proc(pid, table)?;
    let ino = ino.to_string();
    let Some(f) = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(9) == Some(&ino.as_str()))
    else {
        // Not listed: a socket being closed. Nothing is queued in it.
        return Ok((0, 0));
    };
    let queues = f
        .get(4)
        .and_then(|q| q.split_once(':'))
        .and_then(|(tx, rx)| Some((u64::from_str_radix(tx, 16).ok()?, u64::from_str_radix(rx, 16).ok()?)));
    queues.ok_or_else(|| EngineError::proc(pid, table)(format!("socket {ino}: no queue sizes in {f:?}")))
}

/// The multicast groups joined in a network namespace beyond those the
/// kernel joins itself (all-hosts `224.0.0.1`, `ff01::1`, `ff02::1`, all-routers
/// `ff02::2`, and each address's solicited-node group `ff02::1:ffXX:XXXX`), from
/// `/proc/PID/net/igmp` (group lines start with a tab; the group is the `__be32` printed
/// as a number of this little-endian machine) and `igmp6` (the third field, 32 hex
/// digits). No socket option tells which socket joined a group.
fn joined_groups(igmp: &str, igmp6: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in igmp.lines() {
        let group = line.starts_with('\t').then(|| line.split_whitespace().next()).flatten();
        if let Some(g) = group.and_then(|g| u32::from_str_radix(g, 16).ok()) {
            let ip = Ipv4Addr::from(g.to_le_bytes());
            if ip != Ipv4Addr::new(224, 0, 0, 1) {
                out.push(IpAddr::V4(ip));
            }
        }
    }
    for line in igmp6.lines() {
        let Some(g) = line.split_whitespace().nth(2).and_then(|g| u128::from_str_radix(g, 16).ok()) else {
            continue;
        };
        let ip = Ipv6Addr::from(g);
        let seg = ip.segments();
        let solicited = seg[..6] == [0xff02, 0, 0, 0, 0, 1] && seg[6] >> 8 == 0xff;
        if !solicited
            && ![
                Ipv6Addr::new(0xff01, 0, 0, 0, 0, 0, 0, 1),
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2),
            ]
            .contains(&ip)
        {
            out.push(IpAddr::V6(ip));
        }
    }
    out
}

pub fn restore(
    remote: &mut Remote<'_>,
    rec: &FdRecord,
    s: &InetSocket,
    cloexec: u64,
) -> Result<(), EngineError> {
    let (family, ty) = (
        if s.v6 { libc::AF_INET6 } else { libc::AF_INET },
        match s.proto {
            InetProto::Tcp => libc::SOCK_STREAM,
            InetProto::Udp => libc::SOCK_DGRAM,
        },
    );
    let flags = create_flags(rec, cloexec);
    let made = remote.call(libc::SYS_socket, &[family as u64, ty as u64 | flags, 0], || {
        format!("socket() for fd {}", rec.fd)
    })?;
    install(remote, made, rec.fd as u64, cloexec)?;
    let sock = crate::files::take(remote.pid, rec.fd)?;
    let fd = sock.as_fd();
    let pid = remote.pid;
    let err = |what: String| EngineError::Incompatible(format!("pid {pid} fd {}: {what}", rec.fd));
    set_options(fd, s).map_err(err)?;
    // Made by the task as whoever it is now (root, while it is being restored).
    let owner = nix::unistd::Uid::from_raw(s.owner);
    nix::unistd::fchown(fd, Some(owner), None).map_err(|e| err(format!("fchown to uid {owner}: {e}")))?;
    let sockaddr = |a: &InetAddr| match a.ip {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V4(ip), a.port),
        IpAddr::V6(ip) => SocketAddr::V6(std::net::SocketAddrV6::new(ip, a.port, 0, a.scope_id)),
    };
    let bind = |local: &InetAddr| {
        migrate_sys::tcp::bind(fd, sockaddr(local)).map_err(|e| err(migrate_sys::error_chain(&e)))
    };
    match &s.state {
        InetState::Unbound => {}
        InetState::Bound { local } => bind(local)?,
        InetState::Listening { local, backlog } => {
            bind(local)?;
            migrate_sys::tcp::listen(fd, *backlog as i32)
                .map_err(|e| err(format!("listen on {local} with a backlog of {backlog}: {e}")))?;
            // The kernel caps it at the namespace's `net.core.somaxconn`.
            let kept = sockopt::tcp_state(fd).map_err(|e| err(format!("TCP_INFO: {e}")))?.backlog;
            if kept != *backlog {
                return Err(err(format!(
                    "listen on {local}: the backlog is {kept}, not {backlog} (net.core.somaxconn is lower here)"
                )));
            }
        }
        InetState::Connected { local, peer } => {
            bind(local)?;
            migrate_sys::tcp::connect(fd, sockaddr(peer)).map_err(|e| err(migrate_sys::error_chain(&e)))?;
        }
    }
    Ok(())
}

/// Gives the new socket `fd` the options of `s` where they differ from its own, and
/// checks that every one then answers as it did.
fn set_options(fd: BorrowedFd<'_>, s: &InetSocket) -> Result<(), String> {
    // Some options move others (IP_TOS sets SO_PRIORITY, SO_RCVLOWAT may grow SO_RCVBUF):
    // a second round sets again what a later one of the first moved.
    for _ in 0..2 {
        for o in &s.options {
            let (level, name) = raw(o.opt);
            let now =
                sockopt::get_int(fd, level, name).map_err(|e| format!("getsockopt {}: {e}", o.opt.name()))?;
            if now == o.value {
                continue;
            }
            set_int(fd, o).map_err(|e| format!("setsockopt {} to {}: {e}", o.opt.name(), o.value))?;
        }
    }
    for o in &s.options {
        let (level, name) = raw(o.opt);
        let now =
            sockopt::get_int(fd, level, name).map_err(|e| format!("getsockopt {}: {e}", o.opt.name()))?;
        if now != o.value {
            return Err(format!("{} answers {now} after the restore, not {}", o.opt.name(), o.value));
        }
    }
    if sockopt::linger(fd).map_err(|e| format!("SO_LINGER: {e}"))? != s.linger {
        sockopt::set_linger(fd, s.linger).map_err(|e| format!("SO_LINGER: {e}"))?;
    }
    for (opt, name, us) in [
        (libc::SO_RCVTIMEO, "SO_RCVTIMEO", s.rcv_timeout_us),
        (libc::SO_SNDTIMEO, "SO_SNDTIMEO", s.snd_timeout_us),
    ] {
        if us.is_some() {
            let d = us.map(std::time::Duration::from_micros);
            sockopt::set_timeout(fd, opt, d).map_err(|e| format!("{name}: {e}"))?;
        }
    }
    for (level, opt, name, value) in [
        (libc::IPPROTO_TCP, libc::TCP_CONGESTION, "TCP_CONGESTION", &s.congestion),
        (libc::SOL_SOCKET, libc::SO_BINDTODEVICE, "SO_BINDTODEVICE", &s.bind_device),
    ] {
        if let Some(v) = value {
            sockopt::set_bytes(fd, level, opt, v.as_bytes()).map_err(|e| format!("{name} {v:?}: {e}"))?;
        }
    }
    Ok(())
}

/// Sets one option; buffer sizes are halved (the kernel doubles what it is given), and
/// forced past the namespace's ceiling (`rmem_max`, `wmem_max`) when the program had
/// them forced.
fn set_int(fd: BorrowedFd<'_>, o: &IntOption) -> std::io::Result<()> {
    let (level, name) = raw(o.opt);
    let force = match o.opt {
        SockOpt::RcvBuf => libc::SO_RCVBUFFORCE,
        SockOpt::SndBuf => libc::SO_SNDBUFFORCE,
        _ => return sockopt::set_int(fd, level, name, o.value),
    };
    sockopt::set_int(fd, level, name, o.value / 2)?;
    if sockopt::get_int(fd, level, name)? != o.value {
        sockopt::set_int(fd, level, force, o.value / 2)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_the_kernel_joins_itself_are_not_memberships() {
        let igmp = "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n\
                    4\teth0      :     2      V3\n\
                    \t\t\t\t010000E0     1 0:00000000\t\t0\n\
                    \t\t\t\t030201EF     1 0:00000000\t\t0\n";
        let igmp6 = "4    eth0            ff0200000000000000000001ff000002     1 00000004 0\n\
                     4    eth0            ff020000000000000000000000000001     1 0000000C 0\n\
                     4    eth0            ff010000000000000000000000000001     1 00000008 0\n\
                     4    eth0            ff050000000000000000000000010003     1 00000004 0\n";
        let want = vec![IpAddr::from([239, 1, 2, 3]), Ipv6Addr::new(0xff05, 0, 0, 0, 0, 0, 1, 3).into()];
        assert_eq!(joined_groups(igmp, igmp6), want);
        assert!(joined_groups(igmp.lines().take(3).collect::<Vec<_>>().join("\n").as_str(), "").is_empty());
    }

    #[test]
    fn every_option_has_a_distinct_level_and_number() {
        let mut seen = std::collections::HashSet::new();
        for &o in SockOpt::ALL {
            assert!(seen.insert(raw(o)), "{} maps to an option already taken", o.name());
        }
    }
}
