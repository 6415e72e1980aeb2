//! The container's mounts, checked at the checkpoint: a restore makes the mount namespace
//! its runtime gives every container and nothing else, so a mount the container made
//! itself (a tmpfs at `/tmp/x`, a bind mount) would be gone afterwards, files and all.
//! Until mounts are carried, the precheck refuses each one, naming its mount point and
//! type, and refuses a process in a mount namespace other than PID 1's.
//!
//! Which mounts are the runtime's: the shim unshares the mount namespace (a copy of the
//! host's mounts), makes `/` private, and mounts [`RUNTIME`] in that order
//! (`container_steps` in `crates/agent/src/shim.rs`); the restore's stub is started the
//! same way. `/proc/PID/mountinfo` lists a namespace's mounts in the order they were
//! made: since Linux 6.8 the namespace keeps them in a tree keyed by their unique mount
//! id, which only grows (before, a new mount was appended to the namespace's list). So the
//! runtime's four mounts are the last run of them in that list, and every mount listed
//! after it was made later, inside the container (a private `/` lets no host mount in).
//!
//! mountinfo is parsed by procfs-core, which keeps a mount point's escapes (`\040` for a
//! space): they are undone by [`migrate_cgroup::unescape`].

use procfs_core::FromRead;
use procfs_core::process::MountInfos;

use crate::error::{EngineError, Refusals, read_proc};
use crate::files::describe_process;

/// The runtime's own mounts, in the order the shim makes them: (mount point, type).
const RUNTIME: [(&str, &str); 4] =
    [("/proc", "proc"), ("/sys", "sysfs"), ("/dev/shm", "tmpfs"), ("/run", "tmpfs")];

/// What the check names of one mount.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    point: String,
    fstype: String,
}

fn parse(text: &str) -> Result<Vec<Mount>, String> {
    let infos = MountInfos::from_read(text.as_bytes())
        .map_err(|e| format!("unexpected mountinfo: {}", crate::procfs::reason(e)))?;
    Ok(infos
        .into_iter()
        .map(|m| Mount {
            point: migrate_cgroup::unescape(&m.mount_point.to_string_lossy()),
            fstype: m.fs_type,
        })
        .collect())
}

/// The mounts made after the runtime's (see the module doc); `Err` when the runtime's
/// four are not there in a row (the container unmounted or moved one of them).
fn own_mounts(mounts: &[Mount]) -> Result<&[Mount], String> {
    let is_runtime = |w: &[Mount]| w.iter().zip(RUNTIME).all(|(m, (p, t))| m.point == p && m.fstype == t);
    let end = mounts
        .windows(RUNTIME.len())
        .rposition(is_runtime)
        .map(|i| i + RUNTIME.len())
        .ok_or_else(|| {
            let names: Vec<&str> = RUNTIME.iter().map(|(p, _)| *p).collect();
            format!(
                "the mounts its runtime made ({}) are not all there: the container unmounted or moved one itself; \
                 mounts the container changes are not carried yet",
                names.join(", ")
            )
        })?;
    Ok(&mounts[end..])
}

/// Refuses (into `refusals`) every mount the container made itself, seen from PID 1
/// (`pids[0]`), and every live process of `pids` in another mount namespace.
pub fn check(pids: &[i32], refusals: &mut Refusals) -> Result<(), EngineError> {
    let Some(&root) = pids.first() else { return Ok(()) };
    let who = describe_process(root);
    let mounts = parse(&read_proc(root, "mountinfo")?).map_err(EngineError::proc(root, "mountinfo"))?;
    match own_mounts(&mounts) {
        Ok(own) => {
            for m in own {
                refusals.push(format!(
                    "{who}: the container mounted {} at {} itself; mounts the container makes are not carried yet",
                    m.fstype, m.point
                ));
            }
        }
        Err(problem) => refusals.push(format!("{who}: {problem}")),
    }
    for p in crate::procfs::outside_ns(root, pids, "mnt")? {
        refusals.push(format!(
            "{} runs in a mount namespace of its own, not the container's: not supported yet",
            describe_process(p)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container's mountinfo, shortened: two host mounts, the runtime's four, and a
    /// tmpfs the container mounted at a path with a space.
    const CONTAINER: &str = "\
85 84 8:1 / / rw,relatime - ext4 /dev/sda1 rw
87 85 0:22 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
114 87 0:46 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
115 88 0:47 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
116 102 0:48 / /dev/shm rw,nosuid,nodev,relatime - tmpfs tmpfs rw
117 85 0:49 / /run rw,nosuid,nodev,relatime - tmpfs tmpfs rw,mode=755
118 85 0:50 / /tmp/my\\040x rw,relatime - tmpfs none rw
";

    #[test]
    fn mounts_after_the_runtimes_are_the_containers_own() {
        let all = parse(CONTAINER).expect("parses");
        assert_eq!(own_mounts(&all), Ok(&[Mount { point: "/tmp/my x".into(), fstype: "tmpfs".into() }][..]));
        let untouched: String = CONTAINER.lines().take(6).map(|l| format!("{l}\n")).collect();
        assert_eq!(own_mounts(&parse(&untouched).expect("parses")), Ok(&[][..]));
    }

    #[test]
    fn a_runtime_mount_gone_is_named() {
        let without_shm: String =
            CONTAINER.lines().filter(|l| !l.contains("/dev/shm")).map(|l| format!("{l}\n")).collect();
        let err = own_mounts(&parse(&without_shm).expect("parses")).expect_err("/dev/shm is gone");
        assert!(err.contains("/proc, /sys, /dev/shm, /run"), "{err}");
    }
}
