//! The restore of unix sockets: each socket is made with the sockets tied to it (peer,
//! pending clients) by the first process that needs one of them, kept at spare fds
//! there, and copied from there to every fd that holds it.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use migrate_proto::records::{FdRecord, PeerCred, UnixName, UnixSocket, UnixState, UnixType};
use nix::sys::socket::{MsgFlags, Shutdown};

use crate::error::EngineError;
use crate::files::FdWorld;
use crate::hostfs::{Created, Dir};
use crate::inject::Remote;

/// The unix sockets of the image, and where those made so far live.
#[derive(Debug, Default)]
pub struct World {
    /// Every unix socket of the image, by inode.
    pub records: HashMap<u64, UnixSocket>,
    /// Sockets made so far: `(ns pid, spare fd)` of their maker.
    made: HashMap<u64, (i32, u64)>,
    /// The process being restored: its ns pid, and where its spare fds may start.
    pub here: (i32, u64),
}

/// Makes socket `u` (unless made already, with those tied to it) and installs it at
/// `rec.fd` with its status flags.
pub fn restore(
    remote: &mut Remote<'_>,
    rec: &FdRecord,
    u: &UnixSocket,
    cloexec: u64,
    world: &mut FdWorld,
) -> Result<(), EngineError> {
    if !world.unix.made.contains_key(&u.inode) {
        make(remote, u.inode, world, 0)?;
    }
    let &(from, fd) = world
        .unix
        .made
        .get(&u.inode)
        .ok_or_else(|| EngineError::Incompatible(format!("unix socket {} was not made", u.inode)))?;
    let target = rec.fd as u64;
    crate::files::copy_from(remote.task, remote.gadget, from, fd, target, cloexec)?;
    let status = rec.flags & (libc::O_NONBLOCK | libc::O_ASYNC) as u32;
    remote.call(libc::SYS_fcntl, &[target, libc::F_SETFL as u64, u64::from(status)], || {
        format!("fcntl(F_SETFL) of fd {target}")
    })?;
    if u.owner != 0 {
        remote.call(libc::SYS_fcntl, &[target, libc::F_SETOWN as u64, i64::from(u.owner) as u64], || {
            format!("fcntl(F_SETOWN, {}) of fd {target}", u.owner)
        })?;
    }
    Ok(())
}

fn record(world: &FdWorld, inode: u64) -> Result<UnixSocket, EngineError> {
    world
        .unix
        .records
        .get(&inode)
        .cloned()
        .ok_or_else(|| EngineError::Incompatible(format!("unix socket {inode} has no record")))
}

fn raw_type(ty: UnixType) -> u64 {
    (match ty {
        UnixType::Stream => libc::SOCK_STREAM,
        UnixType::Dgram => libc::SOCK_DGRAM,
        UnixType::SeqPacket => libc::SOCK_SEQPACKET,
    }) as u64
}

/// The sockaddr of `name`, as `sun_path` holds it.
fn sun_path(name: &UnixName) -> Vec<u8> {
    match name {
        UnixName::Path { path, .. } => path.as_bytes().to_vec(),
        UnixName::Abstract(a) => [&[0u8][..], a].concat(),
    }
}

/// One made socket: its spare fd in the maker and the engine's copy of it.
struct Made {
    inode: u64,
    spare: u64,
    copy: OwnedFd,
}

/// Makes socket `inode` and those tied to it in `remote`'s process: states, names,
/// queues, shutdown and options as the image has them.
fn make(remote: &mut Remote<'_>, inode: u64, world: &mut FdWorld, depth: u8) -> Result<(), EngineError> {
    if world.unix.made.contains_key(&inode) {
        return Ok(());
    }
    // A socket leads to its listener or peer, which is made first: a real image goes
    // at most three steps (client, accepted end, listener); a hostile one may loop.
    if depth > 3 {
        return Err(EngineError::Incompatible(format!(
            "unix socket {inode}: its peers and listeners go round"
        )));
    }
    let u = record(world, inode)?;
    let pid_ns = world.unix.here.0;
    let mut made: Vec<Made> = Vec::new();
    match &u.state {
        UnixState::Pending { listener } | UnixState::Accepted { listener: Some(listener), .. } => {
            return make(remote, *listener, world, depth + 1);
        }
        UnixState::Connected { peer }
            if matches!(record(world, *peer)?.state, UnixState::Accepted { .. }) =>
        {
            return make(remote, *peer, world, depth + 1);
        }
        UnixState::Accepted { listener: None, address: UnixName::Path { path, .. }, .. } => {
            return Err(EngineError::Incompatible(format!(
                "unix socket {inode} was accepted at {path} from a closed listener (the dump refuses these)"
            )));
        }
        UnixState::Accepted { listener: None, address, .. } => {
            // Its listener is closed: one at the same (abstract) name, for as long as
            // the accept takes, gives it its name; the name is free again afterwards.
            let l = single(remote, &u, world)?;
            let tmp = UnixSocket { name: Some(address.clone()), ..u.clone() };
            bind(remote, &l, &tmp, &mut world.created)?;
            let client = match u.state {
                UnixState::Accepted { peer, .. } => record(world, peer)?.peer_cred,
                _ => None,
            };
            as_ids(remote, client, |r| r.call(libc::SYS_listen, &[l.spare, 1], || "listen(1)".into()))?;
            accepted(remote, &l, address, &u, world, &mut made)?;
            remote.call(libc::SYS_close, &[l.spare], || "close the passing listener".into())?;
            world.spares.retain(|&s| s != (pid_ns, l.spare));
        }
        UnixState::Connected { peer }
            if record(world, *peer)?.state == (UnixState::Connected { peer: inode }) =>
        {
            let p = record(world, *peer)?;
            let (a, b) = pair(remote, &u, world)?;
            made.push(a);
            made.push(b);
            bind(remote, &made[0], &u, &mut world.created)?;
            bind(remote, &made[1], &p, &mut world.created)?;
            fill(&made[1].copy, &made[0].copy, &u)?;
            fill(&made[0].copy, &made[1].copy, &p)?;
        }
        UnixState::Connected { .. } if u.ty != UnixType::Dgram => {
            // Only a datagram socket connects one way; a stream's connect to a listener
            // whose queue is full would block the task for ever.
            return Err(EngineError::Incompatible(format!(
                "unix socket {inode} is a stream or seqpacket connected to a socket not connected back"
            )));
        }
        UnixState::Connected { peer } => {
            // One way (a datagram socket connected to a bound one): to its name.
            if !world.unix.made.contains_key(peer) {
                make(remote, *peer, world, depth + 1)?;
            }
            let name = record(world, *peer)?.name.ok_or_else(|| {
                EngineError::Incompatible(format!(
                    "unix socket {inode} is connected to unnamed {peer} one way"
                ))
            })?;
            let s = single(remote, &u, world)?;
            bind(remote, &s, &u, &mut world.created)?;
            connect(remote, &s, &name)?;
            made.push(s);
        }
        UnixState::PeerClosed => {
            let (a, b) = pair(remote, &u, world)?;
            bind(remote, &a, &u, &mut world.created)?;
            fill(&b.copy, &a.copy, &u)?;
            remote.call(libc::SYS_close, &[b.spare], || "close the closed peer".into())?;
            world.spares.retain(|&s| s != (pid_ns, b.spare));
            made.push(a);
        }
        UnixState::Unconnected => {
            let s = single(remote, &u, world)?;
            bind(remote, &s, &u, &mut world.created)?;
            if let (false, Some(name)) = (u.queue.is_empty(), &u.name) {
                // Datagrams from sockets of no name: one such, connected to it for the
                // time it takes to send them.
                let from = single(remote, &UnixSocket { inode: 0, ..u.clone() }, world)?;
                connect(remote, &from, name)?;
                fill(&from.copy, &s.copy, &u)?;
                remote.call(libc::SYS_close, &[from.spare], || "close the passing sender".into())?;
                world.spares.retain(|&x| x != (pid_ns, from.spare));
            }
            made.push(s);
        }
        UnixState::Listening { backlog, pending } => {
            let l = single(remote, &u, world)?;
            bind(remote, &l, &u, &mut world.created)?;
            // A listen with a smaller backlog after connections queued keeps them: room
            // for all of them first (a client's connect to a full queue would block the
            // task for ever), then the backlog as it was.
            let room = (*backlog).max(pending.len() as u32);
            let listen = |remote: &mut Remote<'_>, n: u32| {
                as_ids(remote, u.peer_cred.clone(), |r| {
                    r.call(libc::SYS_listen, &[l.spare, u64::from(n)], || format!("listen({n})"))
                })
            };
            listen(remote, room)?;
            let name = u.name.clone().ok_or_else(|| {
                EngineError::Incompatible(format!("unix listener {inode} has no name to connect to"))
            })?;
            // Connections accepted already come first: pending ones must stay queued.
            let mut done: Vec<UnixSocket> = world
                .unix
                .records
                .values()
                .filter(|r| matches!(r.state, UnixState::Accepted { listener: Some(l), .. } if l == inode))
                .cloned()
                .collect();
            done.sort_by_key(|r| r.inode);
            for s in &done {
                accepted(remote, &l, &name, s, world, &mut made)?;
            }
            for &c in pending {
                let cu = record(world, c)?;
                let s = single(remote, &cu, world)?;
                bind(remote, &s, &cu, &mut world.created)?;
                connect(remote, &s, &name)?;
                made.push(s);
            }
            if room != *backlog {
                listen(remote, *backlog)?;
            }
            made.push(l);
        }
    }
    for m in &made {
        let r = record(world, m.inode)?;
        // Unlinked since it bound: the name stays, the file goes (clients connected).
        if let Some(UnixName::Path { path, file: None }) = &r.name {
            let d = Dir::in_root(remote.pid, path)?;
            nix::unistd::unlinkat(&d.fd, d.name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)
                .map_err(|e| EngineError::Io { op: "unlink", path: path.into(), source: e.into() })?;
            world.created.forget(&d);
        }
        finish(&m.copy, &r).map_err(|e| EngineError::Injected {
            pid: remote.pid,
            call: format!("options of unix socket {}", m.inode),
            errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        // Who made the other side answers SO_PEERCRED: the restore must have made it
        // from the same process, with the same ids.
        let now =
            super::peer_cred(&m.copy).map_err(|e| EngineError::Incompatible(format!("SO_PEERCRED: {e}")))?;
        if let (Some(want), Some(now)) = (&r.peer_cred, now)
            && ((want.uid, want.gid, &want.groups) != (now.uid, now.gid, &now.groups)
                || (want.pid != 0 && want.pid != now.pid))
        {
            return Err(EngineError::Incompatible(format!(
                "unix socket {}: SO_PEERCRED would answer pid {} uid {} gid {} groups {:?} instead of pid {} uid {} gid {} groups {:?} (its connection made by another process, or with other ids): not supported yet",
                m.inode, now.pid, now.uid, now.gid, now.groups, want.pid, want.uid, want.gid, want.groups
            )));
        }
        world.unix.made.insert(m.inode, (pid_ns, m.spare));
    }
    Ok(())
}

/// Makes the connection whose server end is `s`, accepted from `l` (listening at
/// `address`): its client connects, `l` accepts, and each end gets its queue.
fn accepted(
    remote: &mut Remote<'_>,
    l: &Made,
    address: &UnixName,
    s: &UnixSocket,
    world: &mut FdWorld,
    made: &mut Vec<Made>,
) -> Result<(), EngineError> {
    let UnixState::Accepted { peer, .. } = s.state else { return Ok(()) };
    let cu = record(world, peer)?;
    let c = single(remote, &cu, world)?;
    bind(remote, &c, &cu, &mut world.created)?;
    as_ids(remote, s.peer_cred.clone(), |r| connect(r, &c, address))?;
    let fd = remote.call(libc::SYS_accept4, &[l.spare, 0, 0, libc::SOCK_CLOEXEC as u64], || {
        format!("accept4 on the listener at {}", super::diag::show_name(Some(&sun_path(address))))
    })?;
    let spare = to_spare(remote, fd, world)?;
    let sm = Made { inode: s.inode, spare, copy: crate::files::take(remote.pid, spare as i32)? };
    fill(&c.copy, &sm.copy, s)?;
    fill(&sm.copy, &c.copy, &cu)?;
    made.push(sm);
    made.push(c);
    Ok(())
}

/// Moves `fd`, just made in the task, to a spare fd above the image's.
fn to_spare(remote: &mut Remote<'_>, fd: u64, world: &mut FdWorld) -> Result<u64, EngineError> {
    let (pid_ns, base) = world.unix.here;
    let hi = remote.call(libc::SYS_fcntl, &[fd, libc::F_DUPFD_CLOEXEC as u64, base + 64], || {
        "fcntl(F_DUPFD) of a new unix socket".into()
    })?;
    remote.call(libc::SYS_close, &[fd], || "close".into())?;
    world.spares.push((pid_ns, hi));
    Ok(hi)
}

fn single(remote: &mut Remote<'_>, u: &UnixSocket, world: &mut FdWorld) -> Result<Made, EngineError> {
    let fd = remote.call(
        libc::SYS_socket,
        &[libc::AF_UNIX as u64, raw_type(u.ty) | libc::SOCK_CLOEXEC as u64, 0],
        || "socket(AF_UNIX)".into(),
    )?;
    let spare = to_spare(remote, fd, world)?;
    Ok(Made { inode: u.inode, spare, copy: crate::files::take(remote.pid, spare as i32)? })
}

/// Runs `f`, the call that gives a connection its `SO_PEERCRED`, with the effective
/// ids and supplementary groups of `want` (the task is still root while its fds are
/// made; its saved uid stays 0, so it takes root back afterwards).
fn as_ids<T>(
    remote: &mut Remote<'_>,
    want: Option<PeerCred>,
    f: impl FnOnce(&mut Remote<'_>) -> Result<T, EngineError>,
) -> Result<T, EngineError> {
    let Some(want) = want else { return f(remote) };
    let groups = |pid: i32| -> Result<Vec<u32>, EngineError> { Ok(crate::procfs::read_status(pid)?.groups) };
    let had = groups(remote.pid)?;
    let set_groups = |r: &mut Remote<'_>, list: &[u32]| -> Result<(), EngineError> {
        if list.len() > migrate_proto::records::unix::MAX_GROUPS {
            return Err(EngineError::Incompatible(format!("{} supplementary groups", list.len())));
        }
        let bytes: Vec<u8> = list.iter().flat_map(|g| g.to_ne_bytes()).collect();
        let at = r.write(16 << 10, &bytes)?;
        // The raw call changes this thread only: the task has no other yet.
        r.call(libc::SYS_setgroups, &[list.len() as u64, at], || format!("setgroups({list:?})"))?;
        Ok(())
    };
    let regroup = had != want.groups;
    if regroup {
        set_groups(remote, &want.groups)?;
    }
    let ids = (want.uid, want.gid) != (0, 0);
    let keep = u64::from(u32::MAX);
    if ids {
        remote.call(libc::SYS_setresgid, &[keep, u64::from(want.gid), keep], || {
            format!("setresgid(-1, {}, -1)", want.gid)
        })?;
        remote.call(libc::SYS_setresuid, &[keep, u64::from(want.uid), keep], || {
            format!("setresuid(-1, {}, -1)", want.uid)
        })?;
    }
    let out = f(remote);
    if ids {
        remote.call(libc::SYS_setresuid, &[keep, 0, keep], || "setresuid(-1, 0, -1)".into())?;
        remote.call(libc::SYS_setresgid, &[keep, 0, keep], || "setresgid(-1, 0, -1)".into())?;
    }
    if regroup {
        set_groups(remote, &had)?;
    }
    out
}

/// A socketpair for `u` and its peer.
fn pair(remote: &mut Remote<'_>, u: &UnixSocket, world: &mut FdWorld) -> Result<(Made, Made), EngineError> {
    let at = remote.scratch.addr;
    as_ids(remote, u.peer_cred.clone(), |r| {
        r.call(
            libc::SYS_socketpair,
            &[libc::AF_UNIX as u64, raw_type(u.ty) | libc::SOCK_CLOEXEC as u64, 0, at],
            || "socketpair(AF_UNIX)".into(),
        )
    })?;
    // `int sv[2]`, as the call wrote it (`read` gives exactly 8 bytes).
    let fds: [u8; 8] = remote
        .read(0, 8)?
        .try_into()
        .map_err(|_| EngineError::Incompatible("socketpair: a short read of its fds".into()))?;
    let end = |i: usize| u64::from(u32::from_ne_bytes([fds[i], fds[i + 1], fds[i + 2], fds[i + 3]]));
    let (a, b) = (to_spare(remote, end(0), world)?, to_spare(remote, end(4), world)?);
    let peer = match u.state {
        UnixState::Connected { peer } => peer,
        // A closed peer: nothing refers to it.
        _ => 0,
    };
    Ok((
        Made { inode: u.inode, spare: a, copy: crate::files::take(remote.pid, a as i32)? },
        Made { inode: peer, spare: b, copy: crate::files::take(remote.pid, b as i32)? },
    ))
}

/// Whether no socket is bound to the socket node `d.name` in `d`: only then does a
/// `connect` to it fail with `ECONNREFUSED` (any other answer — accepted, `EAGAIN` for a
/// full backlog, `EPROTOTYPE` for another type — means something holds it).
fn stale(d: &Dir) -> Result<bool, nix::errno::Errno> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    use std::os::fd::AsRawFd;
    // Reached through an O_PATH fd of the node: the name may be longer than `sun_path`.
    let node = nix::fcntl::openat(
        &d.fd,
        d.name.as_str(),
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let probe = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(format!("/proc/self/fd/{}", node.as_raw_fd()).as_str())?;
    match connect(probe.as_raw_fd(), &addr) {
        Err(nix::errno::Errno::ECONNREFUSED) => Ok(true),
        _ => Ok(false),
    }
}

/// Binds `m` to the name `u` bound, where it made a file: a stale socket node there
/// (left by the dumped one) is removed first, and the new one gets its mode and owner.
/// The node is made only where a restore may create files ([`Dir::check`]), and recorded
/// in `created`.
fn bind(remote: &mut Remote<'_>, m: &Made, u: &UnixSocket, created: &mut Created) -> Result<(), EngineError> {
    let Some(name) = &u.name else { return Ok(()) };
    let dir = match name {
        UnixName::Path { path, .. } => Some(Dir::in_root(remote.pid, path)?),
        UnixName::Abstract(_) => None,
    };
    let fail = |op: &'static str, path: &str, e: nix::errno::Errno| EngineError::Io {
        op,
        path: path.into(),
        source: e.into(),
    };
    // Before a stale node is removed: that, too, only where a restore may create files.
    if let Some(d) = &dir {
        // Owned as it was; an unlinked one's node (gone again once its clients are
        // connected) is made by the stub, as the engine's user.
        let owner = match name {
            UnixName::Path { file: Some(f), .. } => f.uid,
            _ => nix::unistd::geteuid().as_raw(),
        };
        d.check(remote.pid, owner, &format!("the node of unix socket {}, {},", u.inode, d.path))?;
    }
    // The node the dumped socket left, if the path still named it then (an unlinked
    // one's path may name another socket now: the bind below then fails). Removed only
    // if no socket is bound to it any more: a live one is another program's.
    if let (Some(d), UnixName::Path { path, file: Some(_) }) = (&dir, name)
        && nix::sys::stat::fstatat(&d.fd, d.name.as_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
    {
        if !stale(d).map_err(|e| fail("probe the socket node", path, e))? {
            return Err(EngineError::Incompatible(format!(
                "unix socket {} cannot be bound to {path} again: a socket of another program is bound there (a connect to it is not refused)",
                u.inode
            )));
        }
        nix::unistd::unlinkat(&d.fd, d.name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(|e| fail("unlink a stale socket node", path, e))?;
    }
    let addr = migrate_sys::unix::sockaddr_un(&sun_path(name))
        .map_err(|e| EngineError::Incompatible(format!("unix socket {}: name: {e}", u.inode)))?;
    let at = remote.write(0, &addr)?;
    remote.call(libc::SYS_bind, &[m.spare, at, addr.len() as u64], || {
        format!("bind unix socket to {}", super::diag::show_name(Some(&sun_path(name))))
    })?;
    if let Some(d) = &dir {
        // The bind went by path, after the check: what the name holds now must be the node
        // it made (sock_diag gives the inode a socket is bound to), or nothing there is
        // ours to change, record or remove.
        let ours = nix::sys::stat::fstat(&m.copy).map_err(|e| fail("stat", &d.path, e))?.st_ino;
        let vfs = super::diag::Table::of(remote.pid)?.get(ours as u32).and_then(|x| x.vfs);
        let node = nix::sys::stat::fstatat(&d.fd, d.name.as_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
        if !node.is_ok_and(|st| vfs.is_some_and(|(ino, _)| u64::from(ino) == st.st_ino)) {
            return Err(EngineError::Incompatible(format!(
                "unix socket {} was bound to {}, but that name holds another file now: its directory changed during the restore",
                u.inode, d.path
            )));
        }
        created.add(d)?;
    }
    // Its mode and owner as they were (an unlinked one's file goes once its clients
    // are connected: see `make`).
    if let (Some(d), UnixName::Path { path, file: Some(f) }) = (&dir, name) {
        let file = d.name.as_str();
        nix::sys::stat::fchmodat(
            &d.fd,
            file,
            nix::sys::stat::Mode::from_bits_truncate(f.mode),
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        )
        .map_err(|e| fail("chmod", path, e))?;
        nix::unistd::fchownat(
            &d.fd,
            file,
            Some(nix::unistd::Uid::from_raw(f.uid)),
            Some(nix::unistd::Gid::from_raw(f.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fail("chown", path, e))?;
    }
    Ok(())
}

fn connect(remote: &mut Remote<'_>, m: &Made, name: &UnixName) -> Result<(), EngineError> {
    let addr = migrate_sys::unix::sockaddr_un(&sun_path(name))
        .map_err(|e| EngineError::Incompatible(format!("unix socket {}: name: {e}", m.inode)))?;
    let at = remote.write(0, &addr)?;
    remote.call(libc::SYS_connect, &[m.spare, at, addr.len() as u64], || {
        format!("connect unix socket to {}", super::diag::show_name(Some(&sun_path(name))))
    })?;
    Ok(())
}

/// Sends `u`'s queue into `to` (its socket) from `from`, its peer, each entry one
/// message.
fn fill(from: &OwnedFd, to: &OwnedFd, u: &UnixSocket) -> Result<(), EngineError> {
    let err = |what: String| EngineError::Incompatible(format!("refill unix socket {}: {what}", u.inode));
    if u.queue.is_empty() {
        return Ok(());
    }
    // Room for everything on both sides: the sizes the image asks for are set after.
    let need: usize = u.queue.iter().map(|q| q.len() + 1024).sum();
    for (s, get, force) in
        [(from, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE), (to, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE)]
    {
        let now = migrate_sys::sockopt::get_int(s.as_fd(), libc::SOL_SOCKET, get)
            .map_err(|e| err(e.to_string()))?;
        migrate_sys::sockopt::set_int(
            s.as_fd(),
            libc::SOL_SOCKET,
            force,
            (need.min(i32::MAX as usize / 2) as i32).max(now),
        )
        .map_err(|e| err(format!("forcing a buffer size: {e}")))?;
    }
    for q in &u.queue {
        let mut done = 0;
        loop {
            let n = nix::sys::socket::send(
                std::os::fd::AsRawFd::as_raw_fd(from),
                &q[done..],
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            )
            .map_err(|e| err(format!("send: {e}")))?;
            done += n;
            if done >= q.len() || u.ty != UnixType::Stream {
                break;
            }
        }
    }
    Ok(())
}

/// Shutdown bits, buffer sizes, peek offset, `SO_PASSCRED`/`SO_PASSSEC` (last: set
/// earlier, they would have autobound a name on connect or send).
fn finish(s: &OwnedFd, u: &UnixSocket) -> std::io::Result<()> {
    let raw = std::os::fd::AsRawFd::as_raw_fd(s);
    let how = match u.shutdown & 3 {
        1 => Some(Shutdown::Read),
        2 => Some(Shutdown::Write),
        3 => Some(Shutdown::Both),
        _ => None,
    };
    if let Some(how) = how {
        nix::sys::socket::shutdown(raw, how)?;
    }
    let fd = s.as_fd();
    for (get, force, want) in
        [(libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, u.rcvbuf), (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, u.sndbuf)]
    {
        // The kernel doubles what is set.
        if migrate_sys::sockopt::get_int(fd, libc::SOL_SOCKET, get)? as u32 != want {
            migrate_sys::sockopt::set_int(fd, libc::SOL_SOCKET, force, (want / 2) as i32)?;
        }
        if migrate_sys::sockopt::get_int(fd, libc::SOL_SOCKET, get)? as u32 != want {
            return Err(std::io::Error::from_raw_os_error(libc::ERANGE));
        }
    }
    for (opt, us) in [(libc::SO_RCVTIMEO, u.timeouts[0]), (libc::SO_SNDTIMEO, u.timeouts[1])] {
        if us != 0 {
            migrate_sys::sockopt::set_timeout(fd, opt, Some(std::time::Duration::from_micros(us)))?;
        }
    }
    if u.peek_off != -1 {
        migrate_sys::sockopt::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, u.peek_off)?;
    }
    if u.passcred {
        migrate_sys::sockopt::set_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)?;
    }
    if u.passsec {
        migrate_sys::sockopt::set_int(fd, libc::SOL_SOCKET, libc::SO_PASSSEC, 1)?;
    }
    Ok(())
}
