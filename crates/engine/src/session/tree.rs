//! The tree checks of a restore plan, on ids alone (pid, parent, session, group, zombie
//! or not): whether this restore can rebuild a tree's sessions and groups ([`check`],
//! which the checkpoint's precheck also runs on the live tree), who forks each process
//! ([`builders`]) and in which order ([`build_order`]). `session.rs` builds what this
//! plans; its module doc says why the shapes are rebuilt as they are.

use std::collections::{HashMap, HashSet};

use migrate_proto::records::ProcessRecord;

/// What decides where a process is born and what it must do to reach its session and
/// group (pids as the container sees them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ids {
    pub(super) pid: i32,
    pub(super) ppid: i32,
    pub(super) sid: i32,
    pub(super) pgid: i32,
    pub(super) zombie: bool,
}

impl Ids {
    pub(crate) fn new(pid: i32, ppid: i32, sid: i32, pgid: i32, zombie: bool) -> Ids {
        Ids { pid, ppid, sid, pgid, zombie }
    }

    /// Where the dump puts it among the processes one process forks: group leaders
    /// first (a member joins its group once the leader has made it), then by pid.
    pub(crate) fn dump_rank(&self) -> (bool, i32) {
        (self.pgid != self.pid, self.pid)
    }

    pub(crate) fn of(p: &ProcessRecord) -> Ids {
        Ids::new(p.pid, p.ppid, p.sid, p.pgid, p.zombie.is_some())
    }

    /// Whether it is in a session that it does not lead and its parent is not in: it is
    /// then forked from that session's helper.
    pub(super) fn needs_session_helper(&self, parent: &Ids) -> bool {
        self.sid != self.pid && self.sid != parent.sid
    }

    /// Its group right after its birth (and its `setsid()`, if it leads a session): its
    /// parent's, or, forked from a session's helper, the session's own group.
    pub(super) fn born_in(&self, parent: &Ids) -> i32 {
        if self.sid == self.pid {
            self.pid
        } else if self.sid == parent.sid {
            parent.pgid
        } else {
            self.sid
        }
    }
}

/// Checks the sessions and groups of a whole image (every pid unique, PID 1 present, every
/// parent in the image: `validate_tree` has seen to that). Refuses, naming the processes:
/// what contradicts how the kernel names sessions and groups (an image no live tree could
/// give), and what this restore cannot rebuild. The checkpoint's precheck calls it on the
/// live tree.
pub(crate) fn check(all: &[Ids]) -> Result<(), String> {
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
    let ancestry = Ancestry::of(all);
    let moved = moved_creators(all);
    // The groups that have a member from the start: a moved creator can go back to one.
    let kept: HashSet<i32> = all.iter().filter(|q| !moved.contains(&q.pid)).map(|q| q.pgid).collect();
    let mut creators_seen = HashSet::new();
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
        // Once per group: its members share one session (checked below).
        if let Some(l) = by_pid.get(&p.pgid).filter(|l| l.pgid != l.pid)
            && creators_seen.insert(l.pid)
        {
            check_moved_creator(p, l, &kept)?;
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
            if !l.zombie {
                check_adoption(p, l, &by_pid, &ancestry)?;
                continue;
            }
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
    // A group is joined once it exists: its leader, in the image, is built first, unless
    // it is a zombie leading a session of its siblings, forked as its session's helper as
    // soon as a sibling needs it (see [`Forks`]).
    let order = build_order(all);
    let rank: HashMap<i32, usize> = order.iter().enumerate().map(|(r, &i)| (all[i].pid, r)).collect();
    for p in all {
        let helper = by_pid.get(&p.pgid).is_some_and(|l| l.zombie && l.sid == l.pid && l.ppid == p.ppid);
        if let (Some(me), Some(leader)) = (rank.get(&p.pid), rank.get(&p.pgid))
            && leader > me
            && !helper
        {
            return Err(format!(
                "pid {} joins group {} before the group's leader (pid {}) is built: not supported",
                p.pid, p.pgid, p.pgid
            ));
        }
    }
    Ok(())
}

/// The creators of a group who have moved to another group: pids that are a group's id
/// while their own group is another.
pub(super) fn moved_creators(all: &[Ids]) -> HashSet<i32> {
    let groups: HashSet<i32> = all.iter().map(|i| i.pgid).collect();
    all.iter().filter(|i| i.pgid != i.pid && groups.contains(&i.pid)).map(|i| i.pid).collect()
}

/// `p` is in the group of `l`, which has moved to another group X: `l` can make its group
/// when it is built and move at the end if it is alive, in `p`'s session, and X is in
/// `kept` (it has a member that stays in it from the start).
fn check_moved_creator(p: &Ids, l: &Ids, kept: &HashSet<i32>) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "pid {} is in group {}, whose creator (pid {}) has moved to group {}: {why}",
            p.pid, p.pgid, l.pid, l.pgid
        ))
    };
    if l.sid != p.sid {
        return refuse("the image is inconsistent (a group stays in its session)");
    }
    if l.zombie {
        return refuse("not supported (a zombie cannot move once its group is made)");
    }
    if !kept.contains(&l.pgid) {
        return refuse("not supported (no other member keeps that group)");
    }
    Ok(())
}

/// A process `p` in the session of the live leader `l`, under a parent outside it: it is
/// forked from `l`'s adoption helper, whose exit hands it to an ancestor of `l`; that
/// must be its parent (see the module doc).
fn check_adoption(p: &Ids, l: &Ids, by_pid: &HashMap<i32, Ids>, tree: &Ancestry) -> Result<(), String> {
    if tree.is_ancestor(p.pid, l.pid) {
        return Err(format!(
            "pid {} is in session {}, but it is an ancestor of that session's leader: the image is inconsistent",
            p.pid, p.sid
        ));
    }
    if tree.is_ancestor(p.ppid, l.pid) {
        return Ok(());
    }
    Err(format!(
        "pid {} is in session {}, but its parent (pid {}, in session {}) is neither in that session nor above \
         its leader (pid {}): not supported (an orphan goes to an ancestor of the process it leaves)",
        p.pid,
        p.sid,
        p.ppid,
        by_pid.get(&p.ppid).map_or(0, |x| x.sid),
        l.pid
    ))
}

/// Who is whose ancestor in a tree of parents, each answer in constant time (a hostile
/// image may hold a long chain of adopted processes): the times a depth-first walk from
/// PID 1 enters and leaves each process; `a` is an ancestor of `b` when it enters before
/// and leaves after.
struct Ancestry {
    span: HashMap<i32, (usize, usize)>,
}

impl Ancestry {
    fn of(all: &[Ids]) -> Ancestry {
        let mut kids: HashMap<i32, Vec<i32>> = HashMap::new();
        for i in all.iter().filter(|i| i.pid != 1) {
            kids.entry(i.ppid).or_default().push(i.pid);
        }
        let mut span: HashMap<i32, (usize, usize)> = HashMap::with_capacity(all.len());
        let mut clock = 0;
        // (pid, whether its children were pushed): left when met the second time.
        let mut stack = vec![(1, false)];
        while let Some((pid, seen)) = stack.pop() {
            clock += 1;
            if seen {
                if let Some(s) = span.get_mut(&pid) {
                    *s = (s.0, clock);
                }
                continue;
            }
            span.insert(pid, (clock, clock));
            stack.push((pid, true));
            stack.extend(kids.remove(&pid).unwrap_or_default().into_iter().map(|k| (k, false)));
        }
        Ancestry { span }
    }

    /// Whether `a` is a strict ancestor of `b`.
    fn is_ancestor(&self, a: i32, b: i32) -> bool {
        match (self.span.get(&a), self.span.get(&b)) {
            (Some(x), Some(y)) => a != b && x.0 < y.0 && y.1 < x.1,
            _ => false,
        }
    }
}

/// Who forks each process in a restore (pid → pid; PID 1 → 0): its parent, or, for a
/// process adopted for its parent (in the session of a live leader, under a parent
/// outside it), that leader. Meant for a tree [`check`] passed.
pub(crate) fn builders(all: &[Ids]) -> HashMap<i32, i32> {
    let by_pid: HashMap<i32, Ids> = all.iter().map(|i| (i.pid, *i)).collect();
    all.iter()
        .map(|p| {
            let adopted = by_pid.get(&p.ppid).is_some_and(|parent| p.needs_session_helper(parent))
                && by_pid.get(&p.sid).is_some_and(|l| !l.zombie);
            (p.pid, if adopted { p.sid } else { p.ppid })
        })
        .collect()
}

/// The order a restore builds `all` in (indices into `all`): from PID 1, each process
/// followed by what it forks ([`builders`]), depth first, in the order of `all` (the
/// image's, in a restore). The dump writes its image in this order, which the restore's
/// page feed relies on.
pub(crate) fn build_order(all: &[Ids]) -> Vec<usize> {
    let builders = builders(all);
    let mut kids: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, p) in all.iter().enumerate() {
        kids.entry(builders.get(&p.pid).copied().unwrap_or(0)).or_default().push(i);
    }
    let mut order = Vec::with_capacity(all.len());
    let mut stack: Vec<usize> = all.iter().position(|p| p.pid == 1).into_iter().collect();
    while let Some(i) = stack.pop() {
        order.push(i);
        // Pushed last first, so that the first is built first.
        stack.extend(kids.remove(&all[i].pid).unwrap_or_default().into_iter().rev());
    }
    order
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

    /// A daemon's double fork under PID 1: leader 5 (alive) forked 6, which forked 8 and
    /// exited, so 8 went to PID 1; 9 is 8's child. Under a subreaper 2: the same with 12,
    /// whose leader 10 is a grandchild of 2.
    const ADOPTED: &[(i32, i32, i32, i32)] = &[
        (1, 0, 1, 1),
        (2, 1, 1, 2),
        (3, 2, 1, 2),
        (10, 3, 10, 10),
        (12, 2, 10, 10),
        (5, 1, 5, 5),
        (8, 1, 5, 7),
        (9, 8, 5, 7),
    ];

    #[test]
    fn orphans_of_a_live_leaders_session_are_forked_by_the_leader() {
        let all = ids(ADOPTED);
        assert_eq!(check(&all), Ok(()));
        let b = builders(&all);
        assert_eq!((b[&8], b[&9], b[&12], b[&10], b[&5]), (5, 8, 10, 3, 1));
        let order: Vec<i32> = build_order(&all).into_iter().map(|i| all[i].pid).collect();
        assert_eq!(order, [1, 2, 3, 10, 12, 5, 8, 9]);
        // A zombie orphan too (its new parent reaps nothing); not one of a zombie leader.
        let zombie = with_zombies(ADOPTED, &[9]);
        assert_eq!(check(&zombie), Ok(()));
        assert_eq!(builders(&zombie)[&9], 8);
        let err = check(&with_zombies(ADOPTED, &[10])).expect_err("zombie leader");
        assert!(err.contains("pid 12 is in session 10, whose leader (pid 10) is in the image"), "{err}");
    }

    #[test]
    fn a_group_whose_creator_moved_is_made_by_it_and_left_at_the_end() {
        // 4 made group 4, forked 5 into it, and went back to group 1.
        let tree = [(1, 0, 1, 1), (4, 1, 1, 1), (5, 4, 1, 4)];
        assert_eq!(check(&ids(&tree)), Ok(()));
        assert_eq!(moved_creators(&ids(&tree)), HashSet::from([4]));
        // Nobody else keeps group 7, where 4 went: it would not exist at the end.
        let err = check(&ids(&[(1, 0, 1, 1), (4, 1, 1, 7), (5, 4, 1, 4)])).expect_err("group 7 empty");
        assert!(
            err.contains("whose creator (pid 4) has moved to group 7: not supported (no other member"),
            "{err}"
        );
        // A zombie creator cannot move after making its group.
        let err = check(&with_zombies(&tree, &[4])).expect_err("zombie creator");
        assert!(err.contains("a zombie cannot move"), "{err}");
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
        // Session 5's leader is alive, but pid 7's parent is not above it: no orphan of
        // session 5 could have gone there.
        let err = check(&ids(&[(1, 0, 1, 1), (5, 1, 5, 5), (6, 1, 1, 6), (7, 6, 5, 5)]))
            .expect_err("live leader elsewhere");
        assert!(
            err.contains("pid 7 is in session 5, but its parent (pid 6, in session 1) is neither in that session nor above its leader (pid 5)"),
            "{err}"
        );
        // A live member of a live leader's session that is the leader's ancestor.
        let err = check(&ids(&[(1, 0, 1, 1), (3, 1, 5, 5), (5, 3, 5, 5)])).expect_err("ancestor");
        assert!(err.contains("pid 3 is in session 5"), "{err}");
        // A group joined before its leader is built (the leader's pid is higher).
        let err = check(&ids(&[(1, 0, 1, 1), (3, 1, 1, 9), (9, 1, 1, 9)])).expect_err("group order");
        assert!(err.contains("pid 3 joins group 9 before the group's leader (pid 9) is built"), "{err}");
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
