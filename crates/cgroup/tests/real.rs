//! Against the real kernel, as root: create a cgroup with limits, put a process in it,
//! freeze, thaw, kill, remove. Each test uses its own path so they run in parallel.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use migrate_cgroup::{Cgroup, Limits, Mounts, destroy_tree};
use procfs_core::FromRead;
use procfs_core::process::Stat;

/// Removes the test's cgroup tree even when an assertion fails.
struct Guard(Mounts, PathBuf);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = destroy_tree(&self.0, &self.1);
    }
}

fn unique(name: &str) -> PathBuf {
    PathBuf::from(format!("migrate-test-{}-{name}", std::process::id()))
}

#[test]
fn limits_freeze_kill_remove() -> Result<(), Box<dyn std::error::Error>> {
    let mounts = Mounts::discover()?;
    let top = unique("life");
    let _guard = Guard(mounts.clone(), top.clone());
    let limits = Limits { memory_max: Some(64 << 20), pids_max: Some(17) };
    let (cg, applied) = Cgroup::create(&mounts, &top.join("c1"), &limits)?;
    assert_eq!(applied.len(), 2);
    for a in &applied {
        // Each limit is enforced where its controller lives on this host, or warned about.
        if let Some(file) = &a.file {
            let got = std::fs::read_to_string(file)?;
            assert_eq!(got.trim(), a.value.to_string(), "{}", file.display());
        } else {
            assert!(a.warning.is_some());
        }
    }
    // A busy loop: while frozen it uses no CPU time at all, thawed it does again.
    let mut child = Command::new("sh").args(["-c", "while :; do :; done"]).spawn()?;
    for procs in cg.procs_files() {
        std::fs::write(&procs, child.id().to_string())?;
    }
    assert_eq!(cg.pids()?, vec![child.id() as i32]);
    let cpu = || -> std::io::Result<u64> {
        let stat = Stat::from_file(format!("/proc/{}/stat", child.id())).map_err(std::io::Error::other)?;
        Ok(stat.utime + stat.stime)
    };
    let runs_on = |from: u64, what: &str| -> std::io::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cpu()? == from {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    // Running first, so that the check after the thaw means something.
    runs_on(cpu()?, "the busy loop never ran")?;
    cg.freeze(Duration::from_secs(5))?;
    let frozen_at = cpu()?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cpu()?, frozen_at, "a frozen task used CPU time");
    cg.thaw(Duration::from_secs(5))?;
    runs_on(cpu()?, "the thawed task never ran again")?;
    cg.remove(Duration::from_secs(5))?;
    assert!(!cg.v2.exists());
    let status = child.wait()?;
    assert!(!status.success(), "the task was killed");
    Ok(())
}

#[test]
fn destroy_tree_kills_nested_and_tolerates_absence() -> Result<(), Box<dyn std::error::Error>> {
    let mounts = Mounts::discover()?;
    let top = unique("tree");
    let _guard = Guard(mounts.clone(), top.clone());
    let (cg, _) =
        Cgroup::create(&mounts, &top.join("a/b"), &Limits { pids_max: Some(5), ..Limits::default() })?;
    let mut child = Command::new("sleep").arg("60").spawn()?;
    for procs in cg.procs_files() {
        std::fs::write(&procs, child.id().to_string())?;
    }
    destroy_tree(&mounts, &top)?;
    assert!(!mounts.v2.as_ref().map(|r| r.join(&top)).is_some_and(|p| p.exists()));
    child.wait()?;
    destroy_tree(&mounts, &top)?;
    Ok(())
}

#[test]
fn bad_paths_are_refused() {
    let mounts = Mounts::default();
    for bad in ["/abs", "../up", "a/../b", ""] {
        assert!(Cgroup::open(&mounts, &PathBuf::from(bad)).is_err(), "{bad}");
    }
}
