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
//! - A process P in a session S whose leader is alive, under a parent outside S: P's own
//!   parent, a member of S, exited (a daemon's double fork, `setsid sh -c '(sleep 1000
//!   &); …'`) and the kernel handed P to the nearest child subreaper above it, or to
//!   PID 1. It is rebuilt the same way: an *adoption* helper, forked from the leader (so
//!   in S, in group S) with a pid no process of the image uses, forks P and exits once
//!   P's subtree is built; the kernel hands P to PID 1, or to its parent, made a child
//!   subreaper for the moment (it must be an ancestor of the leader, as the kernel's
//!   choice at the source was). P is built after the leader, from it ([`builders`]): the
//!   dump writes the image in that order, and P, forked from the leader's memory rather
//!   than its parent's, carries all of its own pages. A zombie P (its new parent reaps
//!   nothing) exits only once it is its parent's: a zombie handed on would notify its new
//!   parent a second time.
//!
//! - A group G whose creator is alive but has moved to another group X of its session
//!   (`setpgid(0, 0)`, a fork, `setpgid(0, X)`): the creator makes G when it is built,
//!   its children are born in G, the other members join it, and the creator moves to X
//!   once the whole tree is built ([`Sessions::moves`]); X keeps another member.
//!
//! The kernel never gives a new task a pid that is still a session's or group's id, so in
//! an image taken from a live tree the helpers' pids are free. [`Sessions::check`] looks
//! at the whole image before anything is built, so that a tree this cannot rebuild, or an
//! image that contradicts itself (a session id that is the pid of a process outside that
//! session), is refused with the processes named. The checkpoint's precheck runs the same
//! check on the live tree before anything is seized, so that a tree this cannot rebuild
//! is refused while the container runs on.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use migrate_proto::records::ProcessRecord;
use migrate_sys::pidfd::PidFd;
use migrate_sys::ptrace::StoppedTracee;

mod tree;

use tree::moved_creators;
pub(crate) use tree::{Ids, build_order, builders, check};

use crate::error::EngineError;
use crate::inject::{Remote, Scratch, Task, open_mem};
use crate::procfs;
use crate::restore::Unborn;
use crate::restore::clone3;

/// How long a helper may take to exit once told to: it only runs `exit_group`.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The image's sessions and groups, checked, and the groups that exist so far in the
/// tree being built.
#[derive(Debug)]
pub(crate) struct Sessions {
    ids: HashMap<i32, Ids>,
    /// Groups that have a member, or a helper, in the new tree: a later member just joins.
    groups: HashSet<i32>,
    /// Who forks each process ([`builders`]).
    builders: HashMap<i32, i32>,
    /// Every pid, session, group and thread id of the image: an adoption helper takes
    /// none of them.
    taken: HashSet<i32>,
    /// The last pid given to an adoption helper.
    last_spare: i32,
    /// Creators of a group who have moved to another one: they make theirs when they
    /// are built, and move when the tree is ([`moved_creators`]).
    moved: HashSet<i32>,
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
        let taken = all
            .iter()
            .flat_map(|i| [i.pid, i.sid, i.pgid])
            .chain(processes.iter().flat_map(|p| p.threads.iter().map(|t| t.tid)))
            .collect();
        let builders = builders(&all);
        let moved = moved_creators(&all);
        Ok(Sessions { ids, groups, builders, taken, last_spare: 1, moved })
    }

    /// The processes `pid` forks, in the image's order: its children, and the processes
    /// it adopts for their parents (see the module doc).
    pub(crate) fn built_by<'a>(&self, pid: i32, processes: &'a [ProcessRecord]) -> Vec<&'a ProcessRecord> {
        processes.iter().filter(|c| c.pid != pid && self.builders.get(&c.pid) == Some(&pid)).collect()
    }

    /// The group `pid` moves to once the whole tree is built, if it created a group and
    /// moved away from it (see the module doc).
    pub(crate) fn moves(&self, pid: i32) -> Option<i32> {
        self.moved.contains(&pid).then(|| self.ids.get(&pid).map(|i| i.pgid)).flatten()
    }

    /// A pid no process, thread, session or group of the image has, and no other
    /// adoption helper took.
    fn spare_pid(&mut self) -> Result<i32, EngineError> {
        let next = (self.last_spare + 1..i32::MAX)
            .find(|p| !self.taken.contains(p))
            .ok_or_else(|| EngineError::Incompatible("no pid is left for a helper task".into()))?;
        self.last_spare = next;
        Ok(next)
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
        // A parent that moves later is in the group it created while its children are
        // born; a creator that moves makes its group first.
        let up = if self.moved.contains(&up.pid) { Ids { pgid: up.pid, ..up } } else { up };
        let (pid, group) = (me.pid, if self.moved.contains(&me.pid) { me.pid } else { me.pgid });
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
///
/// A session leader forks, besides its children, the processes it adopts for their
/// parents (see the module doc): from its adoption helper, which exits last.
#[derive(Debug)]
pub(crate) struct Forks<'a> {
    parent: &'a ProcessRecord,
    /// The children that are zombies leading a session their siblings are in.
    zombie_leaders: Vec<&'a ProcessRecord>,
    helpers: Vec<SessionHelper<'a>>,
    /// Whether a child of the parent is forked elsewhere and must come to it: it is then a
    /// child subreaper while its children are built (PID 1 gets orphans anyway).
    receives: bool,
    /// Whether the parent was made a child subreaper for its helpers' children.
    subreaper: bool,
    /// Zombies adopted for their parents, stopped at birth: they exit in
    /// [`Forks::finish`], once they are their parents' (with their wait status).
    zombies: Vec<(Unborn, &'a ProcessRecord, i32)>,
}

#[derive(Debug)]
struct SessionHelper<'a> {
    helper: Helper,
    /// The zombie of the image it is, if it is one, and its wait status.
    zombie: Option<(&'a ProcessRecord, i32)>,
    /// Whether it forks processes adopted for their parents rather than members of a
    /// session whose leader is gone.
    adoption: bool,
    /// The children forked from it: their pid here, and their parent's in the container
    /// once it has exited.
    born: Vec<(i32, i32)>,
}

impl<'a> Forks<'a> {
    /// For the processes `children` that `parent` forks ([`Sessions::built_by`]).
    pub(crate) fn new(
        parent: &'a ProcessRecord,
        children: &[&'a ProcessRecord],
        sessions: &Sessions,
    ) -> Forks<'a> {
        let zombie_leaders = children
            .iter()
            .filter(|z| z.zombie.is_some() && z.sid == z.pid)
            .filter(|z| children.iter().any(|c| c.sid == z.pid && c.pid != z.pid))
            .copied()
            .collect();
        // A child of the parent forked by another process, adopted for it.
        let receives = parent.pid != 1
            && sessions
                .ids
                .values()
                .any(|c| c.ppid == parent.pid && sessions.builders.get(&c.pid) != Some(&c.ppid));
        Forks { parent, zombie_leaders, helpers: Vec::new(), receives, subreaper: false, zombies: Vec::new() }
    }

    /// Forks `child` with its pid, from `parent` (the parent here, through its main
    /// thread) or from a helper; returns its pid here. `None`: `child` is a zombie kept
    /// as its session's helper, made a zombie by [`Forks::finish`].
    pub(crate) fn fork(
        &mut self,
        parent: &mut Remote<'_>,
        sessions: &mut Sessions,
        child: &ProcessRecord,
    ) -> Result<Option<i32>, EngineError> {
        if self.receives && !self.subreaper {
            self.become_subreaper(parent)?;
        }
        if self.zombie_leaders.iter().any(|z| z.pid == child.pid) {
            self.helper(parent, sessions, child.pid)?;
            return Ok(None);
        }
        let i = if child.ppid != self.parent.pid {
            self.adopter(parent, sessions)?
        } else if Ids::of(child).needs_session_helper(&Ids::of(self.parent)) {
            self.helper(parent, sessions, child.sid)?
        } else {
            return crate::restore::fork(parent, child.pid).map(Some);
        };
        let h = &mut self.helpers[i];
        let child_host = h.helper.fork_member(parent.scratch, child.pid)?;
        h.born.push((child_host, child.ppid));
        Ok(Some(child_host))
    }

    /// Keeps `task`, the zombie `rec` adopted for its parent and just forked, until
    /// [`Forks::finish`] has handed it to that parent: then it exits with `status`.
    pub(crate) fn adopted_zombie(&mut self, unborn: Unborn, rec: &'a ProcessRecord, status: i32) {
        self.zombies.push((unborn, rec, status));
    }

    /// Set before the helpers are forked: the kernel looks for subreapers only above
    /// tasks born below one (`has_child_subreaper`).
    fn become_subreaper(&mut self, parent: &mut Remote<'_>) -> Result<(), EngineError> {
        subreaper(parent.task, parent.gadget, 1)?;
        self.subreaper = true;
        Ok(())
    }

    /// The helper of session `sid`, forked (and its `setsid()` done) if it is the first
    /// time; its index in `helpers`.
    fn helper(
        &mut self,
        parent: &mut Remote<'_>,
        sessions: &mut Sessions,
        sid: i32,
    ) -> Result<usize, EngineError> {
        if let Some(i) = self.helpers.iter().position(|h| !h.adoption && h.helper.pid == sid) {
            return Ok(i);
        }
        if self.parent.pid != 1 && !self.subreaper {
            self.become_subreaper(parent)?;
        }
        let zombie = self.zombie_leaders.iter().find(|z| z.pid == sid).and_then(|z| Some((*z, z.zombie?)));
        // A zombie of the image is reaped by its parent's own wait(), which sees only
        // children with SIGCHLD as their exit signal.
        let exit_signal = if zombie.is_some() { libc::SIGCHLD as u64 } else { 0 };
        let mut helper = Helper::fork(parent, sid, "session", exit_signal)?;
        helper.call(libc::SYS_setsid, &[], "setsid()")?;
        sessions.groups.insert(sid);
        self.helpers.push(SessionHelper { helper, zombie, adoption: false, born: Vec::new() });
        Ok(self.helpers.len() - 1)
    }

    /// The parent's adoption helper, forked with a spare pid if it is the first time (it
    /// is born in the parent's session and group, the leader's own); its index.
    fn adopter(&mut self, parent: &mut Remote<'_>, sessions: &mut Sessions) -> Result<usize, EngineError> {
        if let Some(i) = self.helpers.iter().position(|h| h.adoption) {
            return Ok(i);
        }
        let helper = Helper::fork(parent, sessions.spare_pid()?, "adoption", 0)?;
        self.helpers.push(SessionHelper { helper, zombie: None, adoption: true, born: Vec::new() });
        Ok(self.helpers.len() - 1)
    }

    /// Lets every helper exit (reaped from the parent) or become its zombie, and checks
    /// that its children went where the image says: the session helpers' to the parent,
    /// the adoption helper's, last and with the parent no subreaper any more, to their
    /// parents higher up.
    pub(crate) fn finish(
        mut self,
        parent: &mut Task,
        gadget: u64,
        scratch: Scratch,
    ) -> Result<(), EngineError> {
        let adoption = self.helpers.iter().position(|h| h.adoption).map(|i| self.helpers.remove(i));
        for SessionHelper { helper, zombie, born, .. } in self.helpers {
            let what = helper.what();
            match zombie {
                Some((rec, status)) => helper.into_zombie(scratch, rec, status)?,
                None => helper.reap(parent, gadget)?,
            }
            check_parents(&what, &born)?;
        }
        if self.subreaper {
            subreaper(parent, gadget, 0)?;
        }
        if let Some(SessionHelper { helper, born, .. }) = adoption {
            let what = helper.what();
            helper.reap(parent, gadget)?;
            check_parents(&what, &born)?;
        }
        for (mut unborn, rec, status) in self.zombies {
            let host = unborn.task()?.tid;
            crate::restore::make_zombie(unborn, gadget, host, scratch, rec, status)?;
        }
        Ok(())
    }
}

/// Checks that each of `born` (pid here, parent's pid in the container), forked from the
/// helper `what` that has exited, now has that parent.
fn check_parents(what: &str, born: &[(i32, i32)]) -> Result<(), EngineError> {
    for &(child, want) in born {
        let ppid = procfs::read_stat(child)?.ppid;
        let got = procfs::ns_pid(ppid)?;
        if got != want {
            return Err(EngineError::Helper {
                what: what.to_string(),
                problem: format!(
                    "its child (pid {child} here) went to pid {got} (pid {ppid} here), not to pid {want}"
                ),
            });
        }
    }
    Ok(())
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
        crate::restore::make_zombie(Unborn::new(task), self.gadget, host, scratch, rec, status)?;
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
