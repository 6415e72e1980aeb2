//! Finding and killing the processes that live in a lab's namespaces, and the lab lock.
//!
//! A process belongs to a lab if `/proc/PID/ns/net` is one of the lab's namespaces
//! (same nsfs inode): that catches agents, shims and whatever a user started with
//! `lab exec`, without trusting `lab.json`. Containers have namespaces of their own and
//! are found through their cgroups instead (see `teardown`).
//!
//! The lab's processes are often our own children (the CLI or test that started the
//! agents is still running), so after SIGKILL we also try `waitpid(WNOHANG)`: otherwise
//! they would stay zombies until we exit. A zombie counts as gone: its namespaces are
//! already released.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use procfs_core::FromRead;
use procfs_core::process::Stat;
use serde::Serialize;

use crate::LabError;

/// A process `down` killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KilledProcess {
    pub pid: i32,
    /// Its `comm` (the executable's name, at most 15 bytes).
    pub comm: String,
    /// What it was, judging by its command line.
    pub kind: ProcessKind,
    /// The host of an agent, the container of a shim.
    pub of: Option<String>,
}

/// The kinds of processes living in a lab's namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessKind {
    /// `migrate agent --host H …`.
    Agent,
    /// `migrate shim --dir …/containers/NAME`: a container's supervisor.
    Shim,
    /// Anything else, e.g. a shell started with `lab exec`.
    Other,
}

impl KilledProcess {
    /// Describes process `pid` from its `comm` and its command line.
    fn describe(pid: i32, comm: String, cmdline: &[String]) -> KilledProcess {
        // The subcommand follows the binary, or the script run by an interpreter.
        let verb = cmdline.iter().take(3).position(|a| a == "agent" || a == "shim");
        let value_of = |flag: &str| cmdline.iter().skip_while(|a| *a != flag).nth(1).cloned();
        let (kind, of) = match verb.map(|i| cmdline[i].as_str()) {
            Some("agent") => (ProcessKind::Agent, value_of("--host")),
            Some("shim") => (
                ProcessKind::Shim,
                value_of("--dir")
                    .and_then(|d| Some(Path::new(&d).file_name()?.to_string_lossy().into_owned())),
            ),
            _ => (ProcessKind::Other, None),
        };
        KilledProcess { pid, comm, kind, of }
    }
}

/// The pids (processes, not threads) whose network namespace is one of `inodes`,
/// except the caller itself and init.
pub(crate) fn pids_in_netns(inodes: &HashSet<u64>) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && pid > 1)
        .filter(|&pid| migrate_net::netns_inode_of_pid(pid).is_some_and(|ino| inodes.contains(&ino)))
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub(crate) fn is_alive(pid: i32) -> bool {
    stat_of(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// `/proc/PID/comm`, or `?`.
pub(crate) fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_or_else(|_| "?".into(), |c| c.trim_end().to_string())
}

/// The arguments of `pid`.
pub(crate) fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Reaps `pid` if it is our exited child; describes how it ended if we learn that.
pub(crate) fn reap(pid: i32) -> Option<String> {
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(format!("exit status {code}")),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(format!("killed by {sig}")),
        _ => None,
    }
}

/// SIGKILLs `pids` and waits until every one is gone (reaping our own children).
pub(crate) fn kill_and_wait(pids: &[i32], timeout: Duration) -> Result<Vec<KilledProcess>, LabError> {
    let mut killed = Vec::new();
    for &pid in pids {
        let described = KilledProcess::describe(pid, comm(pid), &cmdline(pid));
        // ESRCH: it exited on its own meanwhile, which is what we want.
        if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            killed.push(described);
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|&pid| {
                reap(pid);
                is_alive(pid)
            })
            .collect();
        if alive.is_empty() {
            return Ok(killed);
        }
        if Instant::now() >= deadline {
            return Err(LabError::Survivors { pids: alive, waited: timeout });
        }
        // An exit after SIGKILL takes microseconds to milliseconds; there is no event to
        // wait on for a process that is not our child, so poll briefly.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process as it was seen: its pid and start time (field 22 of `/proc/PID/stat`), so
/// that a reused pid is not taken for it.
pub(crate) type Seen = (i32, u64);

/// The processes of the cgroup `dir` and of every cgroup below it.
pub(crate) fn in_cgroup_tree(dir: &Path) -> Vec<Seen> {
    let mut seen: Vec<Seen> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter_map(|pid| Some((pid, stat_of(pid)?.starttime)))
        .collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            seen.extend(in_cgroup_tree(&entry.path()));
        }
    }
    seen
}

/// Waits until every process of `seen` is gone from `/proc`, zombies included: a
/// cgroup is empty once its processes have exited, which is before they are reaped.
/// A zombie child of the caller counts as gone: it is the caller's to reap.
pub(crate) fn wait_gone(seen: &[Seen], timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    let me = std::process::id() as i32;
    loop {
        let left: Vec<i32> = seen
            .iter()
            .filter(|&&(pid, start)| {
                stat_of(pid).is_some_and(|s| s.starttime == start && !(s.state == 'Z' && s.ppid == me))
            })
            .map(|&(pid, _)| pid)
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::ContainersLinger { pids: left, waited: timeout });
        }
        // Their reaper is not us (the host's init, or what the shim was reparented to):
        // nothing to wait on but /proc.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `/proc/PID/stat`, if the process exists (zombie or not).
fn stat_of(pid: i32) -> Option<Stat> {
    Stat::from_file(format!("/proc/{pid}/stat")).ok()
}

/// The exclusive lock serializing `up` and `down` of one lab; released on drop.
#[derive(Debug)]
pub(crate) struct LabLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl LabLock {
    /// Takes the lock at `path`, waiting up to `timeout` for another holder.
    ///
    /// `down` removes the lock file while holding it; a waiter that then gets the lock on
    /// the removed file notices (the path no longer names its inode) and starts over.
    pub(crate) fn acquire(lab: &str, path: &Path, timeout: Duration) -> Result<LabLock, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(LabError::io("create", dir))?;
            }
            let file = match OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)
            {
                Ok(file) => file,
                Err(e) => return Err(LabError::io("open", path)(e)),
            };
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    let ours = lock.metadata().map(|m| m.ino()).ok();
                    let named = std::fs::metadata(path).map(|m| m.ino()).ok();
                    if ours.is_some() && ours == named {
                        return Ok(LabLock { _lock: lock, path: path.to_path_buf() });
                    }
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
                Err((_, errno)) => return Err(LabError::io("lock", path)(errno.into())),
            }
            if Instant::now() >= deadline {
                return Err(LabError::Locked {
                    lab: lab.to_string(),
                    path: path.to_path_buf(),
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Removes the lock file (still holding the lock until drop).
    pub(crate) fn remove_file(&self) -> Result<bool, LabError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(LabError::io("remove", &self.path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_described() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert!(!comm(me).is_empty());
        assert!(!cmdline(me).is_empty());
        assert!(!is_alive(i32::MAX));
    }

    #[test]
    fn killed_processes_are_told_apart() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let agent = KilledProcess::describe(
            7,
            "migrate".into(),
            &args(&["/usr/bin/migrate", "agent", "--host", "host-b", "--state-dir", "/x"]),
        );
        assert_eq!((agent.kind, agent.of.as_deref()), (ProcessKind::Agent, Some("host-b")));
        let script = KilledProcess::describe(
            8,
            "python3".into(),
            &args(&["python3", "/t/fake-agent.py", "agent", "--host", "host-a"]),
        );
        assert_eq!((script.kind, script.of.as_deref()), (ProcessKind::Agent, Some("host-a")));
        let shim = KilledProcess::describe(
            9,
            "migrate".into(),
            &args(&["/usr/bin/migrate", "shim", "--dir", "/run/migrate/labs/t/host-a/containers/web"]),
        );
        assert_eq!((shim.kind, shim.of.as_deref()), (ProcessKind::Shim, Some("web")));
        let bash = KilledProcess::describe(10, "bash".into(), &args(&["bash"]));
        assert_eq!((bash.kind, bash.of), (ProcessKind::Other, None));
    }

    #[test]
    fn lock_excludes_and_survives_removal() {
        let dir = std::env::temp_dir().join(format!("migrate-lab-lock-{}", std::process::id()));
        let path = dir.join("x.lock");
        let first = LabLock::acquire("x", &path, Duration::from_secs(1)).expect("first");
        let err = LabLock::acquire("x", &path, Duration::from_millis(100)).expect_err("held");
        assert!(matches!(err, LabError::Locked { .. }), "{err:?}");
        assert!(first.remove_file().expect("remove"));
        // Once the file is gone a newcomer locks a fresh file.
        let second = LabLock::acquire("x", &path, Duration::from_secs(1)).expect("second");
        drop(first);
        assert!(second.remove_file().expect("remove"));
        drop(second);
        let _ = std::fs::remove_dir(&dir);
    }
}
