//! Sessions and process groups of a restored tree (design §5.2).
//!
//! A forked child is born in its parent's session and group; `setsid()` and `setpgid()`
//! move it, but only into a session or group that exists, and a new one is always named
//! after the pid of the task that creates it. When that task (the leader) has exited, the
//! session or group lives on in its members, and a restore has to make it again: a
//! *helper* is forked with the leader's pid (`clone3` with `set_tid`), creates the
//! session or group, and exits once the members are in it; its parent reaps it. Helpers
//! are forked with no exit signal, so that their exit queues no SIGCHLD in a process of
//! the image; `wait4(…, __WALL)` reaps them all the same.
//!
//! - A session S whose leader is gone: its members were reparented (to PID 1 or a child
//!   subreaper), or their parent left S by `setsid()` after forking them. The helper is
//!   forked from the parent and calls `setsid()`; every child of that parent in S is
//!   forked from it (born in S and in group S) and rebuilt; then the helper exits and its
//!   children are reparented to the parent — made a child subreaper for that moment if it
//!   is not PID 1, since the kernel would hand them to PID 1 otherwise. A leader that is
//!   a zombie of that same parent still holds pid S: it is forked as the helper itself,
//!   and exits with its own status instead (its exit signal SIGCHLD, as the parent's
//!   `wait()` expects), to stay the parent's zombie.
//! - A group G whose leader is gone: the first member built forks the helper from itself,
//!   the helper calls `setpgid(0, 0)` (G now exists, in the member's session), the member
//!   `setpgid(0, G)`, the helper exits. Later members simply join G: a group lasts as long
//!   as one member does, and every member stays, stopped or a zombie, until the restore
//!   ends.
//!
//! The kernel never gives a new task a pid that is still a session's or group's id, so in
//! an image taken from a live tree the helpers' pids are free. [`Sessions::check`] looks
//! at the whole image before anything is built, so that a tree this cannot rebuild, or an
//! image that contradicts itself (a session id that is the pid of a process outside that
//! session), is refused with the processes named.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use migrate_proto::records::ProcessRecord;
use migrate_sys::pidfd::PidFd;
use migrate_sys::ptrace::StoppedTracee;

use crate::error::{EngineError, read_proc};
use crate::inject::{Remote, Scratch, Task, open_mem};
use crate::procfs;
use crate::restore::clone3;

/// How long a helper may take to exit once told to: it only runs `exit_group`.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// What decides where a process is born and what it must do to reach its session and
/// group (pids as the container sees them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ids {
    pid: i32,
    ppid: i32,
    sid: i32,
    pgid: i32,
    zombie: bool,
}

impl Ids {
    fn of(p: &ProcessRecord) -> Ids {
        Ids { pid: p.pid, ppid: p.ppid, sid: p.sid, pgid: p.pgid, zombie: p.zombie.is_some() }
    }

    /// Whether it is in a session that it does not lead and its parent is not in: it is
    /// then forked from that session's helper.
    fn needs_session_helper(&self, parent: &Ids) -> bool {
        self.sid != self.pid && self.sid != parent.sid
    }

    /// Its group right after its birth (and its `setsid()`, if it leads a session): its
    /// parent's, or, forked from a session's helper, the session's own group.
    fn born_in(&self, parent: &Ids) -> i32 {
        if self.sid == self.pid {
            self.pid
        } else if self.sid == parent.sid {
            parent.pgid
        } else {
            self.sid
        }
    }
}

/// The image's sessions and groups, checked, and the groups that exist so far in the
/// tree being built.
#[derive(Debug)]
pub(crate) struct Sessions {
    ids: HashMap<i32, Ids>,
    /// Groups that have a member, or a helper, in the new tree: a later member just joins.
    groups: HashSet<i32>,
}

impl Sessions {
    /// Checks every process's session and group against the rest of the image (see
    /// [`check`]); nothing is built yet.
    pub(crate) fn check(processes: &[ProcessRecord]) -> Result<Sessions, EngineError> {
        let all: Vec<Ids> = processes.iter().map(Ids::of).collect();
        check(&all).map_err(EngineError::Incompatible)?;
        let ids: HashMap<i32, Ids> = all.iter().map(|i| (i.pid, *i)).collect();
        // PID 1 is the stub, started in a session and group of its own (checked above).
        let groups = HashSet::from([1]);
        Ok(Sessions { ids, groups })
    }

    /// Moves `rec`, just forked (from `parent`, or from its session's helper, see
    /// [`Forks`]), into its session and group by calls injected in `remote`, `rec` here
    /// (its main thread); a group whose leader is gone and that no member has made yet is
    /// made here, by a helper forked from `rec`.
    pub(crate) fn settle(
        &mut self,
        remote: &mut Remote<'_>,
        rec: &ProcessRecord,
        parent: &ProcessRecord,
    ) -> Result<(), EngineError> {
        let (me, up) = (Ids::of(rec), Ids::of(parent));
        let (pid, group) = (me.pid, me.pgid);
        if me.sid == pid {
            remote.call(libc::SYS_setsid, &[], || format!("setsid() in pid {pid}"))?;
        }
        if group == me.born_in(&up) {
            // Inherited, or made by its session's helper or its own setsid().
        } else if group == pid {
            remote.call(libc::SYS_setpgid, &[0, 0], || format!("setpgid(0, 0) in pid {pid}"))?;
        } else if self.groups.contains(&group) {
            remote.call(libc::SYS_setpgid, &[0, group as u64], || {
                format!("setpgid(0, {group}) in pid {pid}")
            })?;
        } else if self.ids.contains_key(&group) {
            // Its leader is in the image, but built later (the image's order): the group
            // does not exist yet, and no helper can take its pid.
            return Err(EngineError::Incompatible(format!(
                "pid {pid} joins group {group} before the group's leader (pid {group}) is built: not supported"
            )));
        } else {
            // No exit signal: its exit queues no SIGCHLD in `rec`.
            let mut helper = Helper::fork(remote, group, "group", 0)?;
            helper.call(libc::SYS_setpgid, &[0, 0], "setpgid(0, 0)")?;
            remote.call(libc::SYS_setpgid, &[0, group as u64], || {
                format!("setpgid(0, {group}) in pid {pid}")
            })?;
            helper.reap(remote.task, remote.gadget)?;
        }
        self.groups.insert(group);
        Ok(())
    }
}

/// The children of one process being forked: each from the process itself, or from the
/// helper of its session when that session's leader is gone. A helper is made with the
/// first child of its session and exits in [`Forks::finish`], after the last one (and
/// all their descendants) are built.
///
/// A session leader that is a zombie of the same parent (a parent that reaps nothing, the
/// members reparented to it) holds its session's pid, so no helper could take it: that
/// zombie is forked as the helper, its siblings in the session are forked from it, and in
/// [`Forks::finish`] it exits with its status instead, to stay a zombie.
#[derive(Debug)]
pub(crate) struct Forks<'a> {
    parent: &'a ProcessRecord,
    /// The parent's pid here.
    host: i32,
    /// The children that are zombies leading a session their siblings are in.
    zombie_leaders: Vec<&'a ProcessRecord>,
    helpers: Vec<SessionHelper<'a>>,
    /// Whether the parent was made a child subreaper for its helpers' children.
    subreaper: bool,
}

#[derive(Debug)]
struct SessionHelper<'a> {
    helper: Helper,
    /// The zombie of the image it is, if it is one, and its wait status.
    zombie: Option<(&'a ProcessRecord, i32)>,
    /// The children forked from it (pids here).
    born: Vec<i32>,
}

impl<'a> Forks<'a> {
    /// For the children `children` of `parent` (`host` here).
    pub(crate) fn new(parent: &'a ProcessRecord, host: i32, children: &[&'a ProcessRecord]) -> Forks<'a> {
        let zombie_leaders = children
            .iter()
            .filter(|z| z.zombie.is_some() && z.sid == z.pid)
            .filter(|z| children.iter().any(|c| c.sid == z.pid && c.pid != z.pid))
            .copied()
            .collect();
        Forks { parent, host, zombie_leaders, helpers: Vec::new(), subreaper: false }
    }

    /// Forks `child` with its pid, from `parent` (the parent here, through its main
    /// thread) or from its session's helper; returns its pid here. `None`: `child` is a
    /// zombie kept as its session's helper, made a zombie by [`Forks::finish`].
    pub(crate) fn fork(
        &mut self,
        parent: &mut Remote<'_>,
        sessions: &mut Sessions,
        child: &ProcessRecord,
    ) -> Result<Option<i32>, EngineError> {
        if self.zombie_leaders.iter().any(|z| z.pid == child.pid) {
            self.helper(parent, sessions, child.pid)?;
            return Ok(None);
        }
        if !Ids::of(child).needs_session_helper(&Ids::of(self.parent)) {
            return crate::restore::fork(parent, child.pid).map(Some);
        }
        let i = self.helper(parent, sessions, child.sid)?;
        let h = &mut self.helpers[i];
        let child_host = h.helper.fork_member(parent.scratch, child.pid)?;
        h.born.push(child_host);
        Ok(Some(child_host))
    }

    /// The helper of session `sid`, forked (and its `setsid()` done) if it is the first
    /// time; its index in `helpers`.
    fn helper(
        &mut self,
        parent: &mut Remote<'_>,
        sessions: &mut Sessions,
        sid: i32,
    ) -> Result<usize, EngineError> {
        if let Some(i) = self.helpers.iter().position(|h| h.helper.pid == sid) {
            return Ok(i);
        }
        if self.parent.pid != 1 && !self.subreaper {
            // Set before the helper is forked: the kernel looks for subreapers only above
            // tasks born below one (`has_child_subreaper`).
            subreaper(parent.task, parent.gadget, 1)?;
            self.subreaper = true;
        }
        let zombie = self.zombie_leaders.iter().find(|z| z.pid == sid).and_then(|z| Some((*z, z.zombie?)));
        // A zombie of the image is reaped by its parent's own wait(), which sees only
        // children with SIGCHLD as their exit signal.
        let exit_signal = if zombie.is_some() { libc::SIGCHLD as u64 } else { 0 };
        let mut helper = Helper::fork(parent, sid, "session", exit_signal)?;
        helper.call(libc::SYS_setsid, &[], "setsid()")?;
        sessions.groups.insert(sid);
        self.helpers.push(SessionHelper { helper, zombie, born: Vec::new() });
        Ok(self.helpers.len() - 1)
    }

    /// Lets every helper exit (reaped from the parent) or become its zombie, and checks
    /// that its children are now the parent's.
    pub(crate) fn finish(self, parent: &mut Task, gadget: u64, scratch: Scratch) -> Result<(), EngineError> {
        for SessionHelper { helper, zombie, born } in self.helpers {
            let what = helper.what();
            match zombie {
                Some((rec, status)) => helper.into_zombie(scratch, rec, status)?,
                None => helper.reap(parent, gadget)?,
            }
            for child in born {
                let stat = read_proc(child, "stat")?;
                let ppid = procfs::stat_fields(&stat)
                    .and_then(|f| procfs::stat_field(&f, 4))
                    .map_err(EngineError::proc(child, "stat"))?;
                if ppid != self.host as u64 {
                    return Err(EngineError::Helper {
                        what,
                        problem: format!(
                            "its child (pid {child} here) went to pid {ppid} here, not to pid {} (pid {} here)",
                            self.parent.pid, self.host
                        ),
                    });
                }
            }
        }
        if self.subreaper {
            subreaper(parent, gadget, 0)?;
        }
        Ok(())
    }
}

/// `prctl(PR_SET_CHILD_SUBREAPER, on)` in `task`.
fn subreaper(task: &mut Task, gadget: u64, on: u64) -> Result<(), EngineError> {
    task.call(gadget, libc::SYS_prctl, &[libc::PR_SET_CHILD_SUBREAPER as u64, on], || {
        format!("prctl(PR_SET_CHILD_SUBREAPER, {on})")
    })?;
    Ok(())
}

/// A task that only holds a pid, a session's or a group's id, while the members are put
/// in; then it exits and its parent reaps it. Dropped on the way (an error), it exits all
/// the same: it must never run the code it was forked from (its parent's memory under
/// the stub's registers).
#[derive(Debug)]
struct Helper {
    /// Its pid in the container, the id of what it holds.
    pid: i32,
    /// "session" or "group".
    kind: &'static str,
    /// Until it is let go to exit.
    task: Option<Task>,
    mem: File,
    /// Readable once it has exited.
    pidfd: PidFd,
    gadget: u64,
}

impl Helper {
    /// Forks a helper with pid `pid` from `from`, stopped at birth; it runs its calls
    /// through `from`'s gadget, which it inherits at the same address.
    fn fork(
        from: &mut Remote<'_>,
        pid: i32,
        kind: &'static str,
        exit_signal: u64,
    ) -> Result<Helper, EngineError> {
        let gadget = from.gadget;
        let host = clone3(from, pid, 0, exit_signal)?;
        // Opened while it is stopped: its pid cannot be anybody else's yet.
        let pidfd = PidFd::open(host).map_err(|e| EngineError::Helper {
            what: format!("{kind} {pid} (pid {host} here)"),
            problem: e.to_string(),
        })?;
        let mem = open_mem(host)?;
        let tracee = StoppedTracee::adopt(host)
            .map_err(EngineError::ptrace(host, format!("take the helper for {kind} {pid}")))?;
        Ok(Helper { pid, kind, task: Some(Task::new(host, tracee)?), mem, pidfd, gadget })
    }

    fn what(&self) -> String {
        format!("{} {} (pid {} here)", self.kind, self.pid, self.pidfd.pid())
    }

    /// Its task, while it has not been let go.
    fn task(&mut self) -> Result<&mut Task, EngineError> {
        let what = self.what();
        self.task.as_mut().ok_or_else(|| gone(what))
    }

    /// Runs `nr` in the helper (`setsid`, `setpgid`); `name` names the call.
    fn call(&mut self, nr: i64, args: &[u64], name: &str) -> Result<(), EngineError> {
        let (gadget, what) = (self.gadget, self.what());
        self.task()?.call(gadget, nr, args, || format!("{name} in the helper for {what}"))?;
        Ok(())
    }

    /// Forks a member of its session with pid `pid`; returns its pid here. `scratch` is
    /// the page it inherited from its parent.
    fn fork_member(&mut self, scratch: Scratch, pid: i32) -> Result<i32, EngineError> {
        let (gadget, host, what) = (self.gadget, self.pidfd.pid(), self.what());
        let task = self.task.as_mut().ok_or_else(|| gone(what))?;
        crate::restore::fork(&mut Remote { task, gadget, mem: &self.mem, pid: host, scratch }, pid)
    }

    /// Lets it exit and reaps it by `wait4(pid, NULL, __WALL, NULL)` injected in `parent`.
    fn reap(mut self, parent: &mut Task, gadget: u64) -> Result<(), EngineError> {
        let (pid, what) = (self.pid, self.what());
        let task = self.task.take().ok_or_else(|| gone(what.clone()))?;
        last_call(task, self.gadget, libc::SYS_exit_group, &[0])?;
        // Wait from here first: an injected wait4 for a helper that never exits would
        // block its parent, and us, for good.
        wait_exit(&self.pidfd).map_err(|problem| EngineError::Helper { what: what.clone(), problem })?;
        let got = parent.call(gadget, libc::SYS_wait4, &[pid as u64, 0, libc::__WALL as u64, 0], || {
            format!("wait4({pid}, __WALL) for the helper for {what}")
        })?;
        if got != pid as u64 {
            return Err(EngineError::Helper { what, problem: format!("wait4 reaped pid {got} instead") });
        }
        Ok(())
    }

    /// Makes it exit with `status`, as the zombie `rec` of the image (its parent reaps it
    /// when it will), and waits until it has.
    fn into_zombie(mut self, scratch: Scratch, rec: &ProcessRecord, status: i32) -> Result<(), EngineError> {
        let what = self.what();
        let task = self.task.take().ok_or_else(|| gone(what.clone()))?;
        let host = task.tid;
        crate::restore::make_zombie(task, self.gadget, host, scratch, rec, status)?;
        wait_exit(&self.pidfd).map_err(|problem| EngineError::Helper { what, problem })
    }
}

fn gone(what: String) -> EngineError {
    EngineError::Helper { what, problem: "it was already let go".into() }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take()
            && let Err(e) = last_call(task, self.gadget, libc::SYS_exit_group, &[0])
        {
            tracing::warn!(error = %e, "a helper task could not be let exit");
        }
    }
}

/// Points a helper at one last call, the one that ends it (`exit_group`, or a `kill` of
/// itself), and detaches it: that is all it runs.
pub(crate) fn last_call(task: Task, gadget: u64, nr: i64, args: &[u64]) -> Result<(), EngineError> {
    let mut regs = task.saved;
    regs.rip = gadget;
    regs.orig_rax = u64::MAX;
    regs.rax = nr as u64;
    regs.rdi = args.first().copied().unwrap_or(0);
    regs.rsi = args.get(1).copied().unwrap_or(0);
    task.tracee.set_regs(regs).map_err(EngineError::ptrace(task.tid, "set up the helper's exit"))?;
    task.tracee.detach().map_err(EngineError::ptrace(task.tid, "let the helper exit"))
}

/// Waits until the task of `pidfd` has exited (a zombie, for its parent to reap).
pub(crate) fn wait_exit(pidfd: &PidFd) -> Result<(), String> {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        let mut fds = [nix::poll::PollFd::new(pidfd.as_fd(), nix::poll::PollFlags::POLLIN)];
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) if left.is_zero() => return Err(format!("it did not exit within {EXIT_TIMEOUT:?}")),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll of its pidfd: {e}")),
        }
    }
}

/// Checks the sessions and groups of a whole image (every pid unique, PID 1 present, every
/// parent in the image: `validate_tree` has seen to that). Refuses, naming the processes:
/// what contradicts how the kernel names sessions and groups (an image no live tree could
/// give), and what this restore cannot rebuild.
fn check(all: &[Ids]) -> Result<(), String> {
    let by_pid: HashMap<i32, Ids> = all.iter().map(|i| (i.pid, *i)).collect();
    match by_pid.get(&1) {
        Some(root) if root.sid == 1 && root.pgid == 1 => {}
        Some(root) => {
            return Err(format!(
                "the image's PID 1 is in session {} and group {}: a container's PID 1 leads its own (its stub does)",
                root.sid, root.pgid
            ));
        }
        None => return Err("the image has no PID 1".into()),
    }
    let sessions: HashSet<i32> = all.iter().map(|i| i.sid).collect();
    // Each group's session, with the member that told.
    let mut group_session: HashMap<i32, (i32, i32)> = HashMap::new();
    // Each session whose leader is gone, with the one parent whose children enter it.
    let mut dead_session_parent: HashMap<i32, i32> = HashMap::new();
    for p in all {
        // A session or group keeps its creator's pid as its id, and the kernel gives that
        // pid to no other task while the session or group lasts.
        if let Some(l) = by_pid.get(&p.sid).filter(|l| l.sid != l.pid) {
            return Err(format!(
                "pid {} is in session {}, but pid {} is in session {}: the image is inconsistent",
                p.pid, p.sid, l.pid, l.sid
            ));
        }
        if p.sid == p.pid && p.pgid != p.pid {
            return Err(format!(
                "pid {} leads session {} but is in group {}: the image is inconsistent (a session leader cannot change group)",
                p.pid, p.sid, p.pgid
            ));
        }
        if let Some(l) = by_pid.get(&p.pgid).filter(|l| l.pgid != l.pid) {
            return Err(format!(
                "pid {} is in group {}, whose creator (pid {}) has moved to group {}: not supported",
                p.pid, p.pgid, l.pid, l.pgid
            ));
        }
        if sessions.contains(&p.pgid) && p.sid != p.pgid {
            return Err(format!(
                "pid {} is in group {} of session {}, but {} is the id of a session: the image is inconsistent",
                p.pid, p.pgid, p.sid, p.pgid
            ));
        }
        let (sid, other) = *group_session.entry(p.pgid).or_insert((p.sid, p.pid));
        if sid != p.sid {
            return Err(format!(
                "group {} has members in two sessions (pid {other} in {sid}, pid {} in {}): the image is inconsistent",
                p.pgid, p.pid, p.sid
            ));
        }
        if p.pid == 1 {
            continue;
        }
        let parent = by_pid
            .get(&p.ppid)
            .ok_or_else(|| format!("pid {}'s parent {} is not in the image", p.pid, p.ppid))?;
        if !p.needs_session_helper(parent) {
            continue;
        }
        if let Some(l) = by_pid.get(&p.sid)
            && !(l.zombie && l.ppid == p.ppid)
        {
            return Err(format!(
                "pid {} is in session {}, whose leader (pid {}) is in the image, but neither its parent (pid {}, \
                 in session {}) nor a zombie child of its parent: not supported (it could only be forked from a \
                 member of session {})",
                p.pid, p.sid, p.sid, p.ppid, parent.sid, p.sid
            ));
        }
        let first = *dead_session_parent.entry(p.sid).or_insert(p.ppid);
        if first != p.ppid {
            return Err(format!(
                "session {}, whose leader is gone, has members whose parents (pids {first} and {}) are not in it: \
                 not supported (its helper is forked from one parent)",
                p.sid, p.ppid
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[(i32, i32, i32, i32)]) -> Vec<Ids> {
        list.iter().map(|&(pid, ppid, sid, pgid)| Ids { pid, ppid, sid, pgid, zombie: false }).collect()
    }

    /// `list` with the processes `zombies` made zombies.
    fn with_zombies(list: &[(i32, i32, i32, i32)], zombies: &[i32]) -> Vec<Ids> {
        ids(list).into_iter().map(|i| Ids { zombie: zombies.contains(&i.pid), ..i }).collect()
    }

    /// bash (PID 1) with job control: a job; a sleeper left by `setsid -f bash -c 'sleep &
    /// exit'` (session and group 4 gone) beside one in a dead group of that session; two
    /// sleepers of a subshell job that exited (group 9 gone); a zombie in a group of its
    /// own under a keeper.
    const BASH: &[(i32, i32, i32, i32)] = &[
        (1, 0, 1, 1),
        (2, 1, 1, 2),
        (6, 1, 4, 4),
        (8, 1, 4, 7),
        (10, 1, 1, 9),
        (11, 1, 1, 9),
        (12, 1, 1, 12),
        (13, 12, 1, 13),
    ];

    #[test]
    fn a_tree_with_dead_leaders_passes() {
        assert_eq!(check(&ids(BASH)), Ok(()));
        // A session leader left a zombie (its parent, a subreaper, reaps nothing) with a
        // member in its session and a member in a dead group of it.
        let tree = [(1, 0, 1, 1), (2, 1, 1, 2), (5, 2, 5, 5), (7, 2, 5, 5), (9, 2, 5, 8)];
        assert_eq!(check(&with_zombies(&tree, &[5])), Ok(()));
    }

    #[test]
    fn where_children_are_born() {
        let all = ids(BASH);
        let (root, own_group, dead_session) = (all[0], all[1], all[2]);
        assert!(!own_group.needs_session_helper(&root));
        assert_eq!(own_group.born_in(&root), 1);
        assert!(dead_session.needs_session_helper(&root));
        assert_eq!(dead_session.born_in(&root), 4);
        let leader = Ids { pid: 5, ppid: 1, sid: 5, pgid: 5, zombie: false };
        assert!(!leader.needs_session_helper(&root));
        assert_eq!(leader.born_in(&root), 5);
    }

    #[test]
    fn a_helper_pid_taken_by_a_process_of_the_image_is_refused() {
        // Session 4's leader is gone, but pid 4 is a process elsewhere (hostile image).
        let mut bad = BASH.to_vec();
        bad.push((4, 1, 1, 2));
        let err = check(&ids(&bad)).expect_err("pid 4 is taken");
        assert!(
            err.contains("pid 6 is in session 4, but pid 4 is in session 1: the image is inconsistent"),
            "{err}"
        );
        // A dead group's id that is a session's id elsewhere.
        let mut bad = BASH.to_vec();
        bad.push((14, 1, 1, 4));
        let err = check(&ids(&bad)).expect_err("group 4 is session 4's");
        assert!(err.contains("pid 14 is in group 4 of session 1, but 4 is the id of a session"), "{err}");
    }

    #[test]
    fn trees_this_cannot_rebuild_are_refused_with_the_processes_named() {
        // Session 5's leader is alive but not where pid 7 could be forked from.
        let err = check(&ids(&[(1, 0, 1, 1), (5, 1, 5, 5), (6, 1, 1, 6), (7, 6, 5, 5)]))
            .expect_err("live leader elsewhere");
        assert!(
            err.contains("pid 7 is in session 5, whose leader (pid 5) is in the image, but neither"),
            "{err}"
        );
        // A zombie leader can hold its session for its siblings, not for anyone else.
        let tree = [(1, 0, 1, 1), (5, 1, 5, 5), (6, 1, 1, 6), (7, 6, 5, 5)];
        let err = check(&with_zombies(&tree, &[5])).expect_err("zombie leader elsewhere");
        assert!(err.contains("pid 7 is in session 5"), "{err}");
        // Session 4 (leader gone) under two parents.
        let err =
            check(&ids(&[(1, 0, 1, 1), (2, 1, 2, 2), (3, 1, 4, 4), (5, 2, 4, 4)])).expect_err("two parents");
        assert!(
            err.contains("session 4, whose leader is gone, has members whose parents (pids 1 and 2)"),
            "{err}"
        );
        // A group in two sessions.
        let err = check(&ids(&[(1, 0, 1, 1), (2, 1, 1, 9), (3, 1, 3, 3), (4, 3, 3, 9)]))
            .expect_err("group in two sessions");
        assert!(err.contains("group 9 has members in two sessions"), "{err}");
        // PID 1 must lead its session, as the stub does.
        let err = check(&ids(&[(1, 0, 3, 3)])).expect_err("root");
        assert!(err.contains("PID 1 is in session 3"), "{err}");
    }

    /// The smoke run of what fuzz target `tree` reaches here: seeded random trees of up to
    /// eight processes with small, colliding ids; the checks return, never panic, and
    /// answer the same twice.
    #[test]
    fn random_trees_never_panic_the_checks() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut passed = 0;
        for _ in 0..5000 {
            let len = next(8) + 1;
            let mut all: Vec<Ids> = (0..len)
                .map(|i| Ids {
                    pid: if i == 0 { 1 } else { next(10) as i32 - 1 },
                    ppid: next(6) as i32,
                    sid: next(8) as i32,
                    pgid: next(8) as i32,
                    zombie: next(4) == 0,
                })
                .collect();
            // Half of them with a root that may pass, to get past the first check.
            if next(2) == 0 {
                all[0] = Ids { pid: 1, ppid: 0, sid: 1, pgid: 1, zombie: false };
            }
            let first = check(&all);
            assert_eq!(first, check(&all));
            passed += usize::from(first.is_ok());
        }
        assert!(passed > 0, "no random tree passed: the run only tests the first check");
    }
}
