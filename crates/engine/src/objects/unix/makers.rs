//! Which process a restore makes each connection in, foreseen at the precheck.
//!
//! `SO_PEERCRED` answers with the process that made the other side of a connection (a
//! pair's `socketpair`, a listener's `listen`, a client's `connect`), fixed at that
//! moment. A restore makes a socket and everything tied to it (its peer, a listener's
//! connections) in the first process it rebuilds that holds one of them: processes are
//! rebuilt in image order, which the dump makes the restore's build order (see
//! `crate::session::build_order`: a process adopted for its parent comes after the
//! session leader that forks it, not among its parent's children). Where
//! that process is not the one `SO_PEERCRED` names, the restore could not answer the
//! same: the checkpoint refuses it.

use std::collections::HashMap;

use super::diag::{LISTEN, Table, socket_inode};
use crate::error::{EngineError, Refusals};
use crate::files::describe_process;

/// Refuses the unix sockets of `pids` (host pids, image order, no zombies) whose
/// `SO_PEERCRED` names another process than the one their restore would use.
pub fn check(pids: &[i32], table: &Table, refusals: &mut Refusals) -> Result<(), EngineError> {
    // `pids` is in the order the restore builds them (the dump's order).
    let rank: HashMap<i32, usize> = pids.iter().enumerate().map(|(i, &p)| (p, i)).collect();
    // Every holder of every unix socket, and one fd of it.
    let mut held: HashMap<u32, Vec<(i32, i32)>> = HashMap::new();
    for &pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in fds.filter_map(|e| e.ok()) {
            let fd = e.file_name().to_str().and_then(|f| f.parse().ok());
            let ino = std::fs::read_link(e.path()).ok().and_then(|l| socket_inode(&l.to_string_lossy()));
            if let (Some(fd), Some(ino)) = (fd, ino)
                && table.get(ino).is_some()
            {
                held.entry(ino).or_default().push((pid, fd));
            }
        }
    }
    // Groups: a socket, its peer, a listener's pending clients and accepted sockets.
    let mut group: HashMap<u32, u32> = held.keys().map(|&i| (i, i)).collect();
    fn root(group: &HashMap<u32, u32>, mut i: u32) -> u32 {
        while let Some(&p) = group.get(&i).filter(|&&p| p != i) {
            i = p;
        }
        i
    }
    let mut join = |a: u32, b: u32| {
        if group.contains_key(&a) && group.contains_key(&b) {
            let (ra, rb) = (root(&group, a), root(&group, b));
            group.insert(ra, rb);
        }
    };
    for &ino in held.keys() {
        let Some(me) = table.get(ino) else { continue };
        if let Some(p) = me.peer {
            join(ino, p);
        }
        for &c in &me.icons {
            join(ino, c);
        }
        if me.state != LISTEN && me.peer.is_some() && me.name.is_some() {
            let listeners = table.by_ino.values().filter(|d| d.state == LISTEN && d.name == me.name);
            for l in listeners {
                join(ino, l.ino);
            }
        }
    }
    let mut maker: HashMap<u32, i32> = HashMap::new();
    for (&ino, holders) in &held {
        for &(pid, _) in holders {
            let r = root(&group, ino);
            let first = maker.entry(r).or_insert(pid);
            if rank.get(&pid) < rank.get(first) {
                *first = pid;
            }
        }
    }
    let mut list: Vec<_> = held.iter().collect();
    list.sort_unstable();
    for (&ino, holders) in list {
        let Some(&(pid, fd)) = holders.first() else { continue };
        let Some(&by) = maker.get(&root(&group, ino)) else { continue };
        // A peer outside the container is refused already, for what it is.
        let Some(me) = table.get(ino) else { continue };
        let pending_outside = me.peer == Some(0)
            && !table.closed(me)
            && table.listener_of(ino).is_none_or(|l| !held.contains_key(&l.ino));
        if pending_outside || me.peer.is_some_and(|p| p != 0 && !held.contains_key(&p)) {
            continue;
        }
        let sock = crate::files::take(pid, fd)?;
        let cred = super::peer_cred(&sock).map_err(|e| EngineError::Proc {
            pid,
            what: format!("SO_PEERCRED of fd {fd}"),
            reason: e.to_string(),
        })?;
        let Some(cred) = cred else { continue };
        let made = crate::procfs::ns_pid(by).ok();
        if cred.pid != 0 && Some(cred.pid) != made {
            refusals.push(format!(
                "{} fd {fd} is a unix socket (socket:[{ino}]) whose connection PID {} made (its SO_PEERCRED); a restore would make it in {}: not supported yet",
                describe_process(pid),
                cred.pid,
                describe_process(by)
            ));
        }
    }
    Ok(())
}
