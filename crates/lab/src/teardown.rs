//! Removing a lab completely, also when it is half-broken: `down`, and `up` clearing the
//! leftovers of a crash.
//!
//! What to remove is derived from the lab's *name* (every namespace, cgroup and path its
//! naming scheme can produce), with `lab.json` only adding agent pids. The order matters:
//!
//! 1. kill every process living in one of the lab's namespaces (agents, shims, shells
//!    from `lab exec`), and the saved agents wherever they are;
//! 2. destroy the containers' cgroups `migrate/<host netns>` in every hierarchy, which
//!    kills the containers (they have namespaces of their own, so step 1 misses them),
//!    wait until their processes are reaped, and remove the hierarchies' shared
//!    `migrate` parent if no other lab uses it;
//! 3. unregister the namespaces (their veths die with them);
//! 4. remove the lab directory and, for `down`, the lock file.
//!
//! Each step runs even if an earlier one failed; the failures are reported together.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use migrate_net::NetNs;
use serde::Serialize;

use crate::LabError;
use crate::model::Lab;
use crate::name::{LabName, MAX_HOSTS, host_name};
use crate::procs::{self, KilledProcess, LabLock};

/// How long killed processes get to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// What `down` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DownReport {
    pub lab: String,
    /// Processes killed because they lived in the lab's namespaces.
    pub killed: Vec<KilledProcess>,
    /// Container cgroup trees removed (`migrate/<host netns>`).
    pub cgroups_removed: Vec<String>,
    /// Network namespaces unregistered.
    pub netns_removed: Vec<String>,
    /// Directories and files removed.
    pub paths_removed: Vec<PathBuf>,
    pub elapsed: Duration,
}

impl DownReport {
    /// Whether there was nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.killed.is_empty()
            && self.cgroups_removed.is_empty()
            && self.netns_removed.is_empty()
            && self.paths_removed.is_empty()
    }
}

/// Removes everything of lab `name`. The caller holds the lab lock; with `lock` given,
/// its file is removed too.
pub(crate) fn teardown(name: &LabName, lock: Option<&LabLock>) -> Result<DownReport, LabError> {
    let start = Instant::now();
    let mut report = DownReport { lab: name.to_string(), ..DownReport::default() };
    let mut errors = Vec::new();
    let saved = Lab::load(name).ok();

    // 1. Processes.
    let names: BTreeSet<String> = match NetNs::registered_names() {
        Ok(all) => all.into_iter().filter(|n| name.owns_netns(n)).collect(),
        Err(e) => {
            errors.push(LabError::net("list registered network namespaces")(e));
            BTreeSet::new()
        }
    };
    let inodes: HashSet<u64> =
        names.iter().filter_map(|n| NetNs::open_registered(n).ok()).map(|n| n.inode()).collect();
    let mut pids = procs::pids_in_netns(&inodes);
    if let Some(lab) = &saved {
        // An agent whose namespace was unregistered behind our back is not found above.
        pids.extend(lab.hosts.iter().filter_map(agent_anywhere));
        pids.sort_unstable();
        pids.dedup();
    }
    match procs::kill_and_wait(&pids, KILL_TIMEOUT) {
        Ok(killed) => report.killed = killed,
        Err(e) => errors.push(e),
    }

    // 2. Container cgroups.
    match migrate_cgroup::Mounts::discover() {
        Ok(mounts) => {
            let roots = cgroup_roots(&mounts);
            let mut members = Vec::new();
            for i in 0..MAX_HOSTS {
                let rel = name.cgroup_parent(&host_name(i));
                if !roots.iter().any(|root| root.join(&rel).is_dir()) {
                    continue;
                }
                members.extend(roots.iter().flat_map(|root| procs::in_cgroup_tree(&root.join(&rel))));
                match migrate_cgroup::destroy_tree(&mounts, Path::new(&rel)) {
                    Ok(()) => report.cgroups_removed.push(rel),
                    Err(source) => errors.push(LabError::Cgroup { rel, source }),
                }
            }
            // Nothing of the lab may show in `ps` once `down` returns.
            members.sort_unstable();
            members.dedup();
            if let Err(e) = procs::wait_gone(&members, KILL_TIMEOUT) {
                errors.push(e);
            }
            remove_shared_parent(name, &roots, &mut report);
        }
        Err(e) => errors.push(LabError::CgroupMounts(e)),
    }

    // 3. Namespaces.
    for netns in &names {
        match NetNs::unregister(netns) {
            Ok(true) => report.netns_removed.push(netns.clone()),
            Ok(false) => {}
            Err(e) => errors.push(LabError::net(format!("remove network namespace {netns}"))(e)),
        }
    }

    // 4. Files.
    let dir = name.dir();
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => report.paths_removed.push(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(LabError::io("remove", &dir)(e)),
    }
    if let Some(lock) = lock {
        match lock.remove_file() {
            Ok(true) => report.paths_removed.push(name.lock_path()),
            Ok(false) => {}
            Err(e) => errors.push(e),
        }
    }

    report.elapsed = start.elapsed();
    if errors.is_empty() { Ok(report) } else { Err(LabError::Incomplete { lab: name.to_string(), errors }) }
}

/// Removes the `migrate` cgroup that every lab's hosts share, in each hierarchy where no
/// lab has a host left under it. rmdir refuses a cgroup with children (EBUSY), so a lab
/// that still runs keeps it; only a lab whose first container is being made at this
/// very moment could find it gone between two of its mkdirs.
fn remove_shared_parent(name: &LabName, roots: &[PathBuf], report: &mut DownReport) {
    let rel = name.cgroup_parent(&host_name(0));
    let Some(parent) = Path::new(&rel).parent().filter(|p| !p.as_os_str().is_empty()) else { return };
    let mut removed = false;
    for root in roots {
        let dir = root.join(parent);
        let has_children = std::fs::read_dir(&dir)
            .map(|entries| entries.flatten().any(|e| e.file_type().is_ok_and(|t| t.is_dir())));
        if has_children.is_ok_and(|busy| !busy) && std::fs::remove_dir(&dir).is_ok() {
            removed = true;
        }
    }
    if removed {
        report.cgroups_removed.push(parent.to_string_lossy().into_owned());
    }
}

/// The saved agent's pid if that process is still the agent, in whatever namespace.
fn agent_anywhere(host: &crate::model::HostInfo) -> Option<i32> {
    let pid = host.agent_pid?;
    let state_dir = host.state_dir.to_string_lossy();
    (procs::is_alive(pid) && procs::cmdline(pid).iter().any(|a| *a == state_dir)).then_some(pid)
}

/// The distinct hierarchy roots: v2 and every v1 mount (controllers may share one).
pub(crate) fn cgroup_roots(mounts: &migrate_cgroup::Mounts) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = mounts.v2.iter().chain(mounts.v1.values()).cloned().collect();
    roots.sort();
    roots.dedup();
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared parent goes in a hierarchy where no lab has a host left, and stays
    /// where another lab's host is.
    #[test]
    fn the_shared_parent_goes_only_when_unused() {
        let tmp = std::env::temp_dir().join(format!("migrate-lab-parent-{}", std::process::id()));
        let (unused, used) = (tmp.join("unused"), tmp.join("used"));
        std::fs::create_dir_all(unused.join("migrate")).expect("mkdir");
        std::fs::create_dir_all(used.join("migrate/other-host-a")).expect("mkdir");
        let name = LabName::new("tp").expect("name");
        let mut report = DownReport::default();
        remove_shared_parent(&name, &[unused.clone(), used.clone()], &mut report);
        assert!(!unused.join("migrate").exists());
        assert!(used.join("migrate/other-host-a").is_dir());
        assert_eq!(report.cgroups_removed, ["migrate"]);
        std::fs::remove_dir_all(&tmp).expect("clean up");
    }
}
