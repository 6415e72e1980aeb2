//! What the kernel says about the unix sockets around a container: the
//! `NETLINK_SOCK_DIAG` dump of its network namespace (asked from a thread that entered
//! it: the dump answers for the namespace of the netlink socket) and of ours (a socket
//! connected to the host's `/dev/log` has its peer there), and who holds which socket.
//!
//! [`check`] is the precheck's part: a socket whose peer, or whose pending client, is
//! held by no process of the container is *external*, refused with the peer's name and
//! its holder.

use std::collections::HashMap;
use std::fs::File;

use migrate_sys::unix::UnixDiag;
use nix::sched::CloneFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};

use crate::error::{EngineError, Refusals};
use crate::files::describe_process;

/// `TCP_LISTEN`, as a unix socket's diag state.
pub const LISTEN: u8 = 10;

/// The unix sockets of a container's network namespace and of the host's, by inode.
#[derive(Debug)]
pub struct Table {
    pub by_ino: HashMap<u32, UnixDiag>,
}

impl Table {
    /// The sockets of `pid`'s network namespace (host pid), of the engine's and of the
    /// host's (pid 1's): where the peers of the container's sockets may be.
    pub fn of(pid: i32) -> Result<Table, EngineError> {
        let err = |reason: String| EngineError::Proc { pid, what: "unix sockets".into(), reason };
        let mut by_ino = HashMap::new();
        let mut seen = Vec::new();
        for who in [pid.to_string(), "self".into(), "1".into()] {
            let path = format!("/proc/{who}/ns/net");
            let ns = match File::open(&path) {
                Ok(ns) => ns,
                // The host's may be out of reach (an agent in a namespace of its own).
                Err(_) if who != pid.to_string() => continue,
                Err(e) => return Err(err(format!("open {path}: {e}"))),
            };
            let id = ns
                .metadata()
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .map_err(|e| err(format!("stat {path}: {e}")))?;
            if seen.contains(&id) {
                continue;
            }
            seen.push(id);
            // A thread of its own enters the namespace: the engine's other threads stay.
            let nl = std::thread::spawn(move || {
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)?;
                socket(
                    AddressFamily::Netlink,
                    SockType::Raw,
                    SockFlag::SOCK_CLOEXEC,
                    SockProtocol::NetlinkSockDiag,
                )
            })
            .join()
            .map_err(|_| err("the netns thread panicked".into()))?
            .map_err(|e| err(format!("netlink socket in the network namespace of {who}: {e}")))?;
            let list = migrate_sys::unix::unix_sockets(std::os::fd::AsFd::as_fd(&nl))
                .map_err(|e| err(format!("sock_diag: {e}")))?;
            by_ino.extend(list.into_iter().map(|d| (d.ino, d)));
        }
        Ok(Table { by_ino })
    }

    pub fn get(&self, ino: u32) -> Option<&UnixDiag> {
        self.by_ino.get(&ino)
    }

    /// The listener that has not accepted the connection of client `client` yet.
    /// (`UNIX_DIAG_ICONS` lists a listener's pending connections by their client
    /// sockets: the server ends, not accepted, have no inode yet, and a pending client
    /// shows peer 0.)
    pub fn listener_of(&self, client: u32) -> Option<&UnixDiag> {
        self.by_ino.values().find(|d| d.state == LISTEN && d.icons.contains(&client))
    }
}

impl Table {
    /// Whether `me`'s peer is gone: unlisted (or its inode reads 0) and, for a stream or
    /// seqpacket socket, its release shut this one both ways. A pending connection's
    /// client also shows peer 0, but is not shut.
    pub fn closed(&self, me: &UnixDiag) -> bool {
        me.peer.is_some_and(|p| p == 0 || self.get(p).is_none())
            && (i32::from(me.ty) == libc::SOCK_DGRAM || me.shutdown & 3 == 3)
    }
}

/// Whether no socket of `pid`'s network namespace is bound to the abstract name `name`:
/// a socket of ours binds it for a moment, from a thread in that namespace (the
/// container is frozen: none of its processes can race for it).
pub fn abstract_free(pid: i32, name: &[u8]) -> Result<bool, EngineError> {
    let err = |reason: String| EngineError::Proc { pid, what: "an abstract unix name".into(), reason };
    let path = format!("/proc/{pid}/ns/net");
    let ns = File::open(&path).map_err(|e| err(format!("open {path}: {e}")))?;
    let name = name.to_vec();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)?;
        let s = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        match nix::sys::socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            &nix::sys::socket::UnixAddr::new_abstract(&name)?,
        ) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EADDRINUSE) => Ok(false),
            Err(e) => Err(e),
        }
    })
    .join()
    .map_err(|_| err("the netns thread panicked".into()))?
    .map_err(|e| err(format!("probe: {e}")))
}

/// How a socket's name reads in a message: `/run/x.sock`, `@name`, or `unnamed`.
pub fn show_name(name: Option<&[u8]>) -> String {
    match name {
        None | Some([]) => "unnamed".into(),
        Some([0, rest @ ..]) => format!("@{}", String::from_utf8_lossy(rest)),
        Some(path) => {
            String::from_utf8_lossy(path.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
        }
    }
}

/// The socket inode of an fd link `socket:[N]`.
pub fn socket_inode(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Socket inodes held by the processes `pids`, or by any process when `pids` is `None`,
/// each with one holder.
fn holders(pids: Option<&[i32]>) -> HashMap<u32, i32> {
    let mut out = HashMap::new();
    let all: Vec<i32> = match pids {
        Some(p) => p.to_vec(),
        None => std::fs::read_dir("/proc")
            .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default(),
    };
    for pid in all {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in fds.filter_map(|e| e.ok()) {
            if let Some(ino) =
                std::fs::read_link(e.path()).ok().and_then(|l| socket_inode(&l.to_string_lossy()))
            {
                out.entry(ino).or_insert(pid);
            }
        }
    }
    out
}

/// Refuses the container's unix sockets that reach outside it: connected to a socket
/// that no process of the container holds, or a listener with a connection pending from
/// outside. `pids` are host pids, not zombies.
pub fn check(pids: &[i32], refusals: &mut Refusals) -> Result<(), EngineError> {
    let inside = holders(Some(pids));
    let mut tables: HashMap<u64, Table> = HashMap::new();
    let mut outside: Option<HashMap<u32, i32>> = None;
    let mut mine: Vec<(u32, i32)> = inside.iter().map(|(&i, &p)| (i, p)).collect();
    mine.sort_unstable();
    for (ino, pid) in mine {
        let ns =
            std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let Ok(ns) = ns else { continue };
        let table = match tables.entry(ns) {
            std::collections::hash_map::Entry::Occupied(t) => t.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Table::of(pid)?),
        };
        let Some(me) = table.get(ino) else { continue };
        let who = describe_process(pid);
        let fd = fd_of(pid, ino).map_or_else(|| "?".into(), |f| f.to_string());
        let mut ends: Vec<(u32, &str)> = Vec::new();
        match (table.listener_of(ino), me.peer) {
            (Some(l), _) if inside.contains_key(&l.ino) => {}
            (Some(l), _) => ends.push((l.ino, "pending on the listener")),
            (None, Some(peer)) if inside.contains_key(&peer) || table.closed(me) => {}
            (None, Some(peer)) if peer != 0 => ends.push((peer, "connected to")),
            // Peer 0, not shut: pending on a listener no table shows (`dump` refuses it).
            _ => {}
        }
        // Accepted from a listener outside: its name cannot be given again.
        if me.state != LISTEN
            && me.peer.is_some()
            && let Some(l) = table
                .by_ino
                .values()
                .find(|d| d.ino != ino && d.state == LISTEN && d.name.is_some() && d.name == me.name)
            && !inside.contains_key(&l.ino)
        {
            ends.push((l.ino, "accepted from the listener at"));
        }
        for &c in me.icons.iter().filter(|c| **c != 0 && !inside.contains_key(c)) {
            ends.push((c, "with a connection pending from"));
        }
        for (other, how) in ends {
            let holders = outside.get_or_insert_with(|| holders(None));
            let name = show_name(table.get(other).and_then(|d| d.name.as_deref()));
            match holders.get(&other) {
                Some(&h) => refusals.push(format!(
                    "{who} fd {fd} is a unix socket (socket:[{ino}], {}) {how} {name} (socket:[{other}]), held outside the container by pid {h} ({})",
                    show_name(me.name.as_deref()),
                    std::fs::read_to_string(format!("/proc/{h}/comm")).unwrap_or_default().trim()
                )),
                // A peer no process holds but the kernel still lists: a connection
                // waiting to be accepted by a listener outside, or a socket in flight.
                None if table.get(other).is_some() || other == 0 => refusals.push(format!(
                    "{who} fd {fd} is a unix socket (socket:[{ino}], {}) {how} {name} (socket:[{other}]), which no process of the container holds",
                    show_name(me.name.as_deref())
                )),
                None => refusals.push(format!(
                    "{who} fd {fd} is a unix socket (socket:[{ino}], {}) {how} socket:[{other}], which this host cannot see",
                    show_name(me.name.as_deref())
                )),
            }
        }
    }
    for table in tables.values() {
        super::makers::check(pids, table, refusals)?;
    }
    Ok(())
}

/// The address `sock` is connected to, as `getpeername` answers.
pub fn peer_name(sock: &std::os::fd::OwnedFd) -> String {
    // Read as a storage: nix's UnixAddr asserts on an empty address.
    let name = nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(
        std::os::fd::AsRawFd::as_raw_fd(sock),
    );
    match name.ok().as_ref().and_then(|a| a.as_unix_addr()).map(|a| (a.path(), a.as_abstract())) {
        Some((Some(p), _)) => p.display().to_string(),
        Some((_, Some(a))) => format!("@{}", String::from_utf8_lossy(a)),
        Some(_) => "an unnamed socket".into(),
        None => "an unknown address".into(),
    }
}

fn fd_of(pid: i32, ino: u32) -> Option<i32> {
    let want = format!("socket:[{ino}]");
    std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.filter_map(|e| e.ok()).find_map(|e| {
        let link = std::fs::read_link(e.path()).ok()?;
        (link.to_string_lossy() == want).then(|| e.file_name().to_str()?.parse().ok())?
    })
}
