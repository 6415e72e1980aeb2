//! cgroups: the cgroup2 mount (read from mountinfo, never assumed), a real freeze of a
//! real process, and where the controllers whose limits containers carry live.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use migrate_cgroup::{Cgroup, Mounts};

use super::{Finding, Status, spawn_sleeper};

const TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn probe() -> Vec<Finding> {
    let mounts = match Mounts::discover() {
        Ok(m) => m,
        Err(e) => {
            return vec![Finding::bad(
                Status::Fail,
                "cgroup2",
                "cgroup v2",
                migrate_sys::error_chain(&e),
                "Without the mount table, containers cannot be found, frozen or limited.",
                "Check that /proc is mounted.",
            )];
        }
    };
    let Some(v2) = mounts.v2.clone() else {
        return vec![Finding::bad(
            Status::Fail,
            "cgroup2",
            "cgroup v2",
            "no cgroup2 filesystem in /proc/self/mountinfo",
            "Containers are frozen for the dump with cgroup v2's cgroup.freeze; without a cgroup2 mount no \
             container can be checkpointed or migrated.",
            "Mount it: `mount -t cgroup2 none /sys/fs/cgroup/unified` (hybrid) or boot with \
             systemd.unified_cgroup_hierarchy=1.",
        )];
    };
    let kind = if mounts.v1.is_empty() { "pure v2 host" } else { "hybrid host: v1 hierarchies too" };
    vec![
        Finding::ok("cgroup2", "cgroup v2", format!("cgroup2 mounted at {} ({kind})", v2.display())),
        freeze(&mounts, &v2),
        controllers(&mounts),
    ]
}

/// Removes the probe's cgroup (thawing it first) when dropped.
struct CgroupGuard(Cgroup);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = self.0.thaw(TIMEOUT);
        if let Err(e) = self.0.remove(TIMEOUT) {
            tracing::warn!(error = %migrate_sys::error_chain(&e), cgroup = %self.0.v2.display(), "removing the doctor's cgroup failed");
        }
    }
}

fn freeze(mounts: &Mounts, v2: &Path) -> Finding {
    let fail = |detail: String| {
        Finding::bad(
            Status::Fail,
            "cgroup-freeze",
            "cgroup freeze",
            detail,
            "Containers are frozen with cgroup.freeze before they are seized and dumped; without it no \
             consistent checkpoint can be taken.",
            format!(
                "Check that {} is writable by root and that the kernel has the cgroup v2 freezer (Linux 5.2+).",
                v2.display()
            ),
        )
    };
    match try_freeze(mounts, v2) {
        Ok(detail) => Finding::ok("cgroup-freeze", "cgroup freeze", detail),
        Err(e) => fail(e),
    }
}

fn try_freeze(mounts: &Mounts, v2: &Path) -> Result<String, String> {
    // A v2 leaf only: the probe needs no v1 controller.
    // Unique per process and call: tests run probes side by side.
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let rel = PathBuf::from(format!(
        "migrate-doctor-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let dir = v2.join(&rel);
    let cg = CgroupGuard(Cgroup::open(mounts, &rel).map_err(|e| migrate_sys::error_chain(&e))?);
    std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let join = migrate_sys::process::Step::join_cgroup(&dir.join("cgroup.procs"))
        .map_err(|e| format!("open {}/cgroup.procs: {e}", dir.display()))?;
    let child = spawn_sleeper(vec![join]).map_err(|e| migrate_sys::error_chain(&e))?;
    let pids = cg.0.pids().map_err(|e| migrate_sys::error_chain(&e))?;
    if !pids.contains(&child.pid()) {
        return Err(format!("pid {} is not in {} (members: {pids:?})", child.pid(), dir.display()));
    }
    let start = Instant::now();
    cg.0.freeze(TIMEOUT).map_err(|e| migrate_sys::error_chain(&e))?;
    let took = start.elapsed();
    let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
    if !events.lines().any(|l| l == "frozen 1") {
        return Err(format!("cgroup.events says {:?} after the freeze", events.trim()));
    }
    cg.0.thaw(TIMEOUT).map_err(|e| migrate_sys::error_chain(&e))?;
    drop(child);
    drop(cg);
    if dir.exists() {
        return Err(format!("{} is still there after the probe", dir.display()));
    }
    Ok(format!(
        "froze a process in {} (`frozen 1` in cgroup.events after {:.1} ms), thawed and removed it",
        dir.display(),
        took.as_secs_f64() * 1000.0
    ))
}

/// Where memory, pids and cpu live: limits are applied in the hierarchy that has them.
fn controllers(mounts: &Mounts) -> Finding {
    let mut parts = Vec::new();
    let mut missing = Vec::new();
    for c in ["memory", "pids", "cpu"] {
        match mounts.controller(c) {
            Some((version, path)) => parts.push(format!("{c}: {version} {}", path.display())),
            None => {
                parts.push(format!("{c}: none"));
                missing.push(c);
            }
        }
    }
    let detail = parts.join(", ");
    let enforced = ["memory", "pids"];
    if missing.iter().any(|c| enforced.contains(c)) {
        Finding::bad(
            Status::Warn,
            "cgroup-controllers",
            "cgroup controllers",
            detail,
            format!(
                "No hierarchy has the {} controller: containers' limits of that kind are recorded and migrated \
                 but not enforced.",
                missing.join(" and ")
            ),
            "Mount the controller (v1: `mount -t cgroup -o memory none /sys/fs/cgroup/memory`) or enable it \
             in the cgroup2 root's cgroup.subtree_control.",
        )
    } else {
        Finding::ok("cgroup-controllers", "cgroup controllers", detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_probe_leaves_nothing_behind() {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIP: creating cgroups needs root");
            return;
        }
        // The freeze probe itself fails if its cgroup is still there afterwards.
        let findings = probe();
        assert_eq!(findings.len(), 3);
        for f in &findings {
            assert_eq!(f.status, Status::Ok, "{f:#?}");
        }
    }
}
