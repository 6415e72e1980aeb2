//! Records of TCP and UDP sockets, IPv4 and IPv6: listening, bound or unbound TCP
//! sockets, and UDP sockets (bound, connected or not), with their options. Established
//! TCP connections are not carried by this version.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A TCP or UDP socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InetSocket {
    /// `AF_INET6` (else `AF_INET`).
    pub v6: bool,
    pub proto: InetProto,
    pub state: InetState,
    /// The socket's owner (`st_uid`, the kernel's `sk_uid`: the creator's fsuid): what
    /// `SO_REUSEPORT` compares before it lets sockets share a port, what
    /// `/proc/net/tcp` shows.
    pub owner: u32,
    /// Integer options, each as `getsockopt` answered (`SO_RCVBUF`, `SO_SNDBUF`: the
    /// doubled value the kernel reports), each option at most once.
    pub options: Vec<IntOption>,
    /// `SO_LINGER`: seconds, when on.
    pub linger: Option<i32>,
    /// `SO_RCVTIMEO` and `SO_SNDTIMEO` in microseconds, when set.
    pub rcv_timeout_us: Option<u64>,
    pub snd_timeout_us: Option<u64>,
    /// `TCP_CONGESTION` (TCP only): the algorithm's name.
    pub congestion: Option<String>,
    /// `SO_BINDTODEVICE`: an interface name of the container's network namespace.
    pub bind_device: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InetProto {
    Tcp,
    Udp,
}

/// An address of the socket's family (an IPv4-mapped IPv6 address stays IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InetAddr {
    pub ip: IpAddr,
    pub port: u16,
    /// IPv6 scope (interface index) of a link-local address; 0 otherwise.
    pub scope_id: u32,
}

impl std::fmt::Display for InetAddr {
    /// `10.77.1.2:80`, `[::1]:80`, `[fe80::1%2]:80`: as people write them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) if self.scope_id != 0 => write!(f, "[{ip}%{}]:{}", self.scope_id, self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// Where the socket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InetState {
    /// Never bound (nor auto-bound by a send).
    Unbound,
    /// Bound to `local`, neither listening nor connected. With `IP_BIND_ADDRESS_NO_PORT`
    /// the port may be 0.
    Bound { local: InetAddr },
    /// A TCP listener, with `listen`'s backlog as the kernel keeps it (capped by
    /// `somaxconn`).
    Listening { local: InetAddr, backlog: u32 },
    /// A connected UDP socket: datagrams go to and come only from `peer`.
    Connected { local: InetAddr, peer: InetAddr },
}

/// One integer socket option and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntOption {
    pub opt: SockOpt,
    pub value: i32,
}

/// Declares [`SockOpt`] with each option's name as the kernel headers spell it. Append
/// only: an image holds each option as the index of its variant.
macro_rules! sock_opts {
    ($($v:ident = $name:literal,)*) => {
        /// The integer options carried, by name; the engine maps each to its level and
        /// number.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum SockOpt { $($v,)* }

        impl SockOpt {
            pub const ALL: &[SockOpt] = &[$(SockOpt::$v,)*];

            /// `SO_REUSEADDR`, …
            pub fn name(self) -> &'static str {
                match self { $(SockOpt::$v => $name,)* }
            }
        }
    };
}

sock_opts! {
    ReuseAddr = "SO_REUSEADDR",
    ReusePort = "SO_REUSEPORT",
    KeepAlive = "SO_KEEPALIVE",
    Broadcast = "SO_BROADCAST",
    Priority = "SO_PRIORITY",
    Mark = "SO_MARK",
    RcvLowat = "SO_RCVLOWAT",
    RcvBuf = "SO_RCVBUF",
    SndBuf = "SO_SNDBUF",
    OobInline = "SO_OOBINLINE",
    DontRoute = "SO_DONTROUTE",
    Timestamp = "SO_TIMESTAMP",
    TimestampNs = "SO_TIMESTAMPNS",
    RxqOvfl = "SO_RXQ_OVFL",
    IncomingCpu = "SO_INCOMING_CPU",
    TcpNoDelay = "TCP_NODELAY",
    TcpKeepIdle = "TCP_KEEPIDLE",
    TcpKeepIntvl = "TCP_KEEPINTVL",
    TcpKeepCnt = "TCP_KEEPCNT",
    TcpDeferAccept = "TCP_DEFER_ACCEPT",
    TcpFastOpen = "TCP_FASTOPEN",
    TcpFastOpenConnect = "TCP_FASTOPEN_CONNECT",
    TcpMaxSeg = "TCP_MAXSEG",
    TcpUserTimeout = "TCP_USER_TIMEOUT",
    TcpCork = "TCP_CORK",
    TcpNotSentLowat = "TCP_NOTSENT_LOWAT",
    TcpWindowClamp = "TCP_WINDOW_CLAMP",
    TcpSynCnt = "TCP_SYNCNT",
    TcpLinger2 = "TCP_LINGER2",
    TcpSaveSyn = "TCP_SAVE_SYN",
    UdpCork = "UDP_CORK",
    UdpSegment = "UDP_SEGMENT",
    UdpGro = "UDP_GRO",
    IpTos = "IP_TOS",
    IpTtl = "IP_TTL",
    IpFreebind = "IP_FREEBIND",
    IpTransparent = "IP_TRANSPARENT",
    IpPktInfo = "IP_PKTINFO",
    IpRecvTos = "IP_RECVTOS",
    IpRecvTtl = "IP_RECVTTL",
    IpRecvErr = "IP_RECVERR",
    IpRecvOrigDstAddr = "IP_RECVORIGDSTADDR",
    IpMtuDiscover = "IP_MTU_DISCOVER",
    IpBindAddressNoPort = "IP_BIND_ADDRESS_NO_PORT",
    IpMulticastTtl = "IP_MULTICAST_TTL",
    IpMulticastLoop = "IP_MULTICAST_LOOP",
    IpMulticastAll = "IP_MULTICAST_ALL",
    IpMulticastIf = "IP_MULTICAST_IF",
    Ipv6V6Only = "IPV6_V6ONLY",
    Ipv6TClass = "IPV6_TCLASS",
    Ipv6UnicastHops = "IPV6_UNICAST_HOPS",
    Ipv6RecvPktInfo = "IPV6_RECVPKTINFO",
    Ipv6RecvTClass = "IPV6_RECVTCLASS",
    Ipv6RecvHopLimit = "IPV6_RECVHOPLIMIT",
    Ipv6RecvErr = "IPV6_RECVERR",
    Ipv6RecvOrigDstAddr = "IPV6_RECVORIGDSTADDR",
    Ipv6MtuDiscover = "IPV6_MTU_DISCOVER",
    Ipv6Freebind = "IPV6_FREEBIND",
    Ipv6Transparent = "IPV6_TRANSPARENT",
    Ipv6MulticastHops = "IPV6_MULTICAST_HOPS",
    Ipv6MulticastLoop = "IPV6_MULTICAST_LOOP",
    Ipv6MulticastIf = "IPV6_MULTICAST_IF",
    Ipv6MulticastAll = "IPV6_MULTICAST_ALL",
}

impl std::fmt::Display for InetSocket {
    /// As `migrate inspect` shows it: `TCP listening on [::]:6379 (v6only, backlog 511,
    /// reuseaddr)`, `UDP 10.77.1.2:5353 → 10.77.0.2:53`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            InetProto::Tcp => "TCP",
            InetProto::Udp => "UDP",
        };
        let mut notes = Vec::new();
        if self.v6 && self.option(SockOpt::Ipv6V6Only).is_some_and(|v| v != 0) {
            notes.push("v6only".to_string());
        }
        match &self.state {
            InetState::Unbound => write!(f, "{proto} unbound")?,
            InetState::Bound { local } if self.proto == InetProto::Udp => write!(f, "{proto} {local}")?,
            InetState::Bound { local } => write!(f, "{proto} bound to {local}")?,
            InetState::Listening { local, backlog } => {
                write!(f, "{proto} listening on {local}")?;
                notes.push(format!("backlog {backlog}"));
            }
            InetState::Connected { local, peer } => write!(f, "{proto} {local} → {peer}")?,
        }
        for (opt, note) in [
            (SockOpt::ReuseAddr, "reuseaddr"),
            (SockOpt::ReusePort, "reuseport"),
            (SockOpt::KeepAlive, "keepalive"),
            (SockOpt::TcpNoDelay, "nodelay"),
            (SockOpt::Broadcast, "broadcast"),
            (SockOpt::IpFreebind, "freebind"),
            (SockOpt::IpTransparent, "transparent"),
        ] {
            if self.option(opt).is_some_and(|v| v != 0) {
                notes.push(note.to_string());
            }
        }
        for (opt, note) in [(SockOpt::TcpDeferAccept, "defer_accept"), (SockOpt::TcpFastOpen, "fastopen")] {
            if let Some(v) = self.option(opt).filter(|&v| v != 0) {
                notes.push(format!("{note} {v}"));
            }
        }
        if let Some(secs) = self.linger {
            notes.push(format!("linger {secs}s"));
        }
        for (t, note) in [(self.rcv_timeout_us, "rcvtimeo"), (self.snd_timeout_us, "sndtimeo")] {
            if let Some(us) = t {
                notes.push(format!("{note} {}ms", us / 1000));
            }
        }
        if let Some(dev) = &self.bind_device {
            notes.push(format!("device {dev}"));
        }
        if !notes.is_empty() {
            write!(f, " ({})", notes.join(", "))?;
        }
        Ok(())
    }
}

impl InetSocket {
    /// The value of `opt`, if recorded.
    pub fn option(&self, opt: SockOpt) -> Option<i32> {
        self.options.iter().find(|o| o.opt == opt).map(|o| o.value)
    }

    /// What the record claims, checked before anything is built from it: addresses of
    /// the socket's family with a port, a peer and a backlog only where they belong,
    /// each option once, names an interface or algorithm could have. `Err` says what is
    /// wrong.
    pub fn check(&self) -> Result<(), String> {
        let family = |a: &InetAddr| -> Result<(), String> {
            if a.ip.is_ipv6() != self.v6 || (!self.v6 && a.scope_id != 0) {
                return Err(format!("address {a} is not of the socket's family"));
            }
            // Binding it would pick a port: that socket was unbound.
            if a.port == 0 && a.ip.is_unspecified() {
                return Err(format!("bound to {a}, which binds nothing"));
            }
            Ok(())
        };
        match &self.state {
            InetState::Unbound => {}
            InetState::Bound { local } => family(local)?,
            InetState::Listening { local, backlog } => {
                family(local)?;
                if local.port == 0 {
                    return Err(format!("listening on {local}, without a port"));
                }
                if self.proto != InetProto::Tcp || *backlog > i32::MAX as u32 {
                    return Err(format!("a listener must be TCP with a backlog below 2^31, not {backlog}"));
                }
            }
            InetState::Connected { local, peer } => {
                family(local)?;
                family(peer)?;
                if self.proto != InetProto::Udp || peer.port == 0 {
                    return Err("only a UDP socket is carried connected, to a peer with a port".into());
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(o) = self.options.iter().find(|o| !seen.insert(o.opt)) {
            return Err(format!("option {} recorded twice", o.opt.name()));
        }
        let name = |what: &str, s: &Option<String>, max: usize| -> Result<(), String> {
            match s {
                Some(s) if s.is_empty() || s.len() > max || s.contains(['\0', '/']) => {
                    Err(format!("{what} must be 1 to {max} bytes without NUL or '/'"))
                }
                _ => Ok(()),
            }
        };
        // TCP_CA_NAME_MAX and IFNAMSIZ, less their NUL.
        name("the congestion algorithm's name", &self.congestion, 15)?;
        name("the interface name", &self.bind_device, 15)?;
        if self.congestion.is_some() && self.proto != InetProto::Tcp {
            return Err("a congestion algorithm on a UDP socket".into());
        }
        Ok(())
    }
}
