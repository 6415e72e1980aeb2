//! Records of unix sockets: type, own name, connection state, the bytes queued to be
//! read, shutdown state and options. Sockets refer to each other (a peer, a listener's
//! pending connections) by their inode number at the dump, unique in the image.

use serde::{Deserialize, Serialize};

/// A unix socket (`socket:[inode]` with family `AF_UNIX`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixSocket {
    /// Its inode at the dump: the key its peer and listener use.
    pub inode: u64,
    pub ty: UnixType,
    /// The name it bound itself (an accepted socket shows its listener's: not this).
    pub name: Option<UnixName>,
    pub state: UnixState,
    /// What is queued for it to read: for a stream, runs of bytes; otherwise one
    /// entry per datagram (or record), boundaries kept. Sent by its peer.
    pub queue: Vec<Vec<u8>>,
    /// `RCV_SHUTDOWN` (1) and `SEND_SHUTDOWN` (2).
    pub shutdown: u8,
    pub passcred: bool,
    pub passsec: bool,
    /// `SO_RCVBUF`, `SO_SNDBUF` as `getsockopt` answers them (twice what was set).
    pub rcvbuf: u32,
    pub sndbuf: u32,
    /// `SO_PEEK_OFF`; -1 when off.
    pub peek_off: i32,
    /// `F_SETOWN`: who gets `SIGIO` (with `O_ASYNC`): a pid, or minus a process group,
    /// in the container's pid namespace; 0 for nobody.
    pub owner: i32,
    /// `SO_RCVTIMEO`, `SO_SNDTIMEO` in microseconds; 0 waits for ever.
    pub timeouts: [u64; 2],
    /// `SO_PEERCRED`: who made the connection's other side (a pair's maker, a
    /// listener's, an accepted socket's client at `connect`); `None` if unset.
    pub peer_cred: Option<PeerCred>,
}

/// The credentials `SO_PEERCRED` answers with; `pid` in the container's pid namespace,
/// 0 when that process is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// `SO_PEERGROUPS`: its supplementary groups.
    pub groups: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnixType {
    Stream,
    Dgram,
    SeqPacket,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnixName {
    /// Bound to a path; `file` is the socket's file (mode, owner) if the path still
    /// names it, `None` if it was unlinked.
    Path { path: String, file: Option<SocketFile> },
    /// An abstract name, without its leading 0 byte (an autobound one is 5 hex digits).
    Abstract(Vec<u8>),
}

/// The node a bound socket made in the file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketFile {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnixState {
    /// Neither listening nor connected.
    Unconnected,
    /// `listen(backlog)`; `pending` are the client sockets of the connections waiting
    /// in its accept queue, in the order `accept` returns them.
    Listening { backlog: u32, pending: Vec<u64> },
    /// Connected to socket `peer` of the image.
    Connected { peer: u64 },
    /// Its peer was a socket whose last fd is closed (a stream then reads its queue,
    /// then end of file).
    PeerClosed,
    /// The client end of a connection that listener `listener` has not accepted yet.
    Pending { listener: u64 },
    /// The server end of a connection, accepted from listener `listener` (`None`: one
    /// that is closed) at `address`, the name it answers `getsockname` with.
    Accepted { peer: u64, listener: Option<u64>, address: UnixName },
}

/// Caps on what an image may ask a restore to queue.
pub const MAX_QUEUED: usize = 64 << 20;
pub const MAX_DATAGRAMS: usize = 1 << 16;
pub const MAX_PENDING: usize = 4096;
/// Peer groups a restore can give the process that makes a connection: what its
/// scratch page carries for `setgroups` (`NGROUPS_MAX` is 65536; a dump refuses more).
pub const MAX_GROUPS: usize = 4096;
/// `SO_RCVTIMEO`, `SO_SNDTIMEO` in microseconds (some 146 000 years): a `timeval` a
/// restore can make without overflow (beyond `i64::MAX / 10^6 - 1` seconds, nix's
/// `TimeVal` panics).
pub const MAX_TIMEOUT_US: u64 = 1 << 62;
/// `sizeof(sun_path)`.
pub const SUN_PATH: usize = 108;

impl UnixSocket {
    /// What the validator checks beyond types: lengths and ranges. `Err` says why.
    pub fn check(&self) -> Result<(), String> {
        let total: usize = self.queue.iter().map(Vec::len).sum();
        if total > MAX_QUEUED || self.queue.len() > MAX_DATAGRAMS {
            return Err(format!(
                "{} bytes in {} entries queued: beyond {MAX_QUEUED} bytes or {MAX_DATAGRAMS} entries",
                total,
                self.queue.len()
            ));
        }
        if self.shutdown > 3 {
            return Err(format!("shutdown state {} is not a set of RCV and SEND", self.shutdown));
        }
        if self.peek_off < -1 {
            return Err(format!("peek offset {}", self.peek_off));
        }
        if self.peer_cred.as_ref().is_some_and(|c| c.groups.len() > MAX_GROUPS) {
            return Err(format!("more than {MAX_GROUPS} peer groups"));
        }
        if self.timeouts.iter().any(|&t| t > MAX_TIMEOUT_US) {
            return Err(format!("a timeout beyond {MAX_TIMEOUT_US} microseconds"));
        }
        if self.rcvbuf > i32::MAX as u32 || self.sndbuf > i32::MAX as u32 {
            return Err("buffer size beyond i32".into());
        }
        match &self.name {
            // An accepted socket answers with its listener's name, which it never bound:
            // a restore would unlink the path it claims.
            Some(_) if matches!(self.state, UnixState::Accepted { .. }) => {
                return Err("an accepted socket with a name of its own".into());
            }
            Some(UnixName::Path { file: Some(f), .. }) if f.mode > 0o7777 => {
                return Err(format!("socket file mode {:o} is not a permission mode", f.mode));
            }
            Some(UnixName::Abstract(n)) if n.len() + 1 >= SUN_PATH => {
                return Err(format!("abstract name of {} bytes", n.len()));
            }
            Some(UnixName::Path { path, .. }) if path.len() + 1 >= SUN_PATH => {
                return Err(format!("path name of {} bytes", path.len()));
            }
            _ => {}
        }
        match &self.state {
            UnixState::Listening { .. } if self.ty == UnixType::Dgram => {
                Err("a listening datagram socket".into())
            }
            UnixState::Listening { pending, .. } if pending.len() > MAX_PENDING => {
                Err(format!("{} pending connections, beyond {MAX_PENDING}", pending.len()))
            }
            UnixState::Listening { pending, .. }
                if pending.contains(&self.inode)
                    || pending.iter().collect::<std::collections::HashSet<_>>().len() != pending.len() =>
            {
                Err("a pending connection listed twice, or the listener's own".into())
            }
            UnixState::Listening { .. } if !self.queue.is_empty() => {
                Err("a listener with bytes queued".into())
            }
            UnixState::Connected { peer } | UnixState::Accepted { peer, .. } if *peer == self.inode => {
                Err("connected to itself".into())
            }
            UnixState::Accepted { listener: None, address: UnixName::Path { .. }, .. } => {
                Err("accepted at a path from a closed listener".into())
            }
            UnixState::Accepted { address: UnixName::Path { path, .. }, .. }
                if path.len() + 1 >= SUN_PATH || !path.starts_with('/') =>
            {
                Err("accepted at a path that is not absolute or too long".into())
            }
            UnixState::Accepted { address: UnixName::Abstract(a), .. } if a.len() + 1 >= SUN_PATH => {
                Err(format!("accepted at an abstract name of {} bytes", a.len()))
            }
            _ => Ok(()),
        }
    }

    /// What `migrate inspect` shows: `unix stream socket:[12] /run/a.sock, listening
    /// (backlog 5), 1 pending (socket:[14]), 0 bytes queued`.
    pub fn describe(&self) -> String {
        let ty = match self.ty {
            UnixType::Stream => "stream",
            UnixType::Dgram => "dgram",
            UnixType::SeqPacket => "seqpacket",
        };
        let name = match &self.name {
            None => "unnamed".to_string(),
            Some(UnixName::Path { path, file: Some(_) }) => path.clone(),
            Some(UnixName::Path { path, file: None }) => format!("{path} (unlinked)"),
            Some(UnixName::Abstract(a)) => format!("@{}", String::from_utf8_lossy(a)),
        };
        let state = match &self.state {
            UnixState::Unconnected => "unconnected".to_string(),
            UnixState::Listening { backlog, pending } => {
                let p: Vec<String> = pending.iter().map(|c| format!("socket:[{c}]")).collect();
                format!("listening (backlog {backlog}), {} pending ({})", pending.len(), p.join(", "))
            }
            UnixState::Connected { peer } => format!("peer socket:[{peer}]"),
            UnixState::PeerClosed => "peer closed".to_string(),
            UnixState::Pending { listener } => format!("pending on listener socket:[{listener}]"),
            UnixState::Accepted { peer, listener, address } => {
                let from = match listener {
                    Some(l) => format!("listener socket:[{l}]"),
                    None => "a closed listener".into(),
                };
                let at = match address {
                    UnixName::Path { path, .. } => path.clone(),
                    UnixName::Abstract(a) => format!("@{}", String::from_utf8_lossy(a)),
                };
                format!("accepted from {from} at {at}, peer socket:[{peer}]")
            }
        };
        let bytes: usize = self.queue.iter().map(Vec::len).sum();
        let mut out = format!(
            "unix {ty} socket:[{}] {name}, {state}, {bytes} bytes queued in {} messages",
            self.inode,
            self.queue.len()
        );
        for (bit, what) in [(1, "shut for reading"), (2, "shut for writing")] {
            if self.shutdown & bit != 0 {
                out.push_str(", ");
                out.push_str(what);
            }
        }
        if self.owner > 0 {
            out.push_str(&format!(", SIGIO to pid {}", self.owner));
        } else if self.owner < 0 {
            out.push_str(&format!(", SIGIO to process group {}", -self.owner));
        }
        for (on, what) in [(self.passcred, "SO_PASSCRED"), (self.passsec, "SO_PASSSEC")] {
            if on {
                out.push_str(", ");
                out.push_str(what);
            }
        }
        out
    }

    /// The path it bound, if any (for the validator's path check).
    pub fn path(&self) -> Option<&str> {
        match &self.name {
            Some(UnixName::Path { path, .. }) => Some(path),
            _ => None,
        }
    }
}
