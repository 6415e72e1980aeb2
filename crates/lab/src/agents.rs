//! One agent per simulated host: started detached inside the host's namespace, found
//! again by pid, judged ready when its socket accepts a connection.
//!
//! The agent is spawned through `migrate_sys::process::spawn` with two pre-exec steps,
//! `setns` into `/run/netns/<host>` and `setsid`, so the CLI's threads never change
//! namespace and the agent survives the CLI (it is reparented to init). The `Child` is
//! dropped on purpose: dropping it neither kills nor waits.
//! It inherits the environment of `lab up`, `FAILPOINTS` included: that is how the tests
//! give an agent its failpoint scenario (`migrate_engine::failpoints`).
//!
//! A saved pid is only trusted if that process is alive, lives in the host's namespace
//! and has the host's state directory on its command line, so a recycled pid is never
//! mistaken for the agent.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use migrate_sys::process::{Step, spawn};

use crate::LabError;
use crate::model::{HostInfo, Lab};
use crate::procs;

/// How long `up` waits for agents to accept connections.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The pid of `host`'s agent if it is running (see the module docs for what that means).
pub(crate) fn running_agent(host: &HostInfo) -> Option<i32> {
    let pid = host.agent_pid?;
    if !procs::is_alive(pid) {
        procs::reap(pid);
        return None;
    }
    let ns = migrate_net::NetNs::open_registered(&host.netns).ok()?;
    if migrate_net::netns_inode_of_pid(pid) != Some(ns.inode()) {
        return None;
    }
    let state_dir = host.state_dir.to_string_lossy();
    procs::cmdline(pid).iter().any(|a| *a == state_dir).then_some(pid)
}

/// Starts the agent of `host` and returns its pid.
pub(crate) fn start(lab: &Lab, host: &HostInfo) -> Result<i32, LabError> {
    std::fs::create_dir_all(&host.state_dir).map_err(LabError::io("create", &host.state_dir))?;
    std::fs::create_dir_all(&lab.lease_dir).map_err(LabError::io("create", &lab.lease_dir))?;
    // A socket left by a killed agent: nobody listens on it any more.
    match std::fs::remove_file(&host.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(LabError::io("remove stale socket", &host.socket)(e)),
    }
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&host.log)
        .map_err(LabError::io("open", &host.log))?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    writeln!(log, "--- migrate lab {}: starting the agent of {} (unix time {stamp})", lab.name, host.name)
        .map_err(LabError::io("write", &host.log))?;
    let log_err = log.try_clone().map_err(LabError::io("duplicate the descriptor of", &host.log))?;

    let mut cmd = Command::new(&lab.migrate_bin);
    cmd.arg("agent")
        .arg("--host")
        .arg(&host.name)
        .arg("--state-dir")
        .arg(&host.state_dir)
        .arg("--lease-dir")
        .arg(&lab.lease_dir)
        .arg("--cgroup-parent")
        .arg(&host.cgroup_parent)
        .current_dir(&host.state_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    let netns_path = migrate_net::registered_path(&host.netns);
    let enter =
        Step::enter_ns(&netns_path, nix::libc::CLONE_NEWNET).map_err(LabError::io("open", &netns_path))?;
    let spawn_err =
        |source| LabError::SpawnAgent { host: host.name.clone(), bin: lab.migrate_bin.clone(), source };
    let child = spawn(&mut cmd, vec![enter, Step::SetSid, Step::CloexecFrom(3)]).map_err(spawn_err)?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    // Not killed, not waited: the agent outlives us.
    drop(child);
    tracing::info!(lab = %lab.name, host = %host.name, pid, "started agent");
    Ok(pid)
}

/// Whether something accepts connections on `socket`.
pub(crate) async fn answers(socket: &Path) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_millis(500), tokio::net::UnixStream::connect(socket)).await,
        Ok(Ok(_))
    )
}

/// Waits until every host's agent accepts connections; fails fast if one exits.
pub(crate) async fn wait_ready(lab: &Lab, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<&HostInfo> = lab.hosts.iter().collect();
    loop {
        let mut still = Vec::new();
        for host in pending {
            if answers(&host.socket).await {
                continue;
            }
            if let Some(pid) = host.agent_pid
                && !procs::is_alive(pid)
            {
                let status = procs::reap(pid).unwrap_or_else(|| "status unknown".into());
                return Err(LabError::AgentExited {
                    host: host.name.clone(),
                    pid,
                    status,
                    log: host.log.clone(),
                    tail: log_tail(&host.log),
                });
            }
            still.push(host);
        }
        let Some(first) = still.first() else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(LabError::AgentNotReady {
                host: first.name.clone(),
                pid: first.agent_pid.unwrap_or(0),
                socket: first.socket.clone(),
                waited: timeout,
                log: first.log.clone(),
                tail: log_tail(&first.log),
            });
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last lines of a log (at most 20 lines from its last 4 KiB), indented.
pub(crate) fn log_tail(path: &Path) -> String {
    const MAX: u64 = 4096;
    let Ok(mut file) = std::fs::File::open(path) else {
        return "  (no log)".into();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    if file.seek(SeekFrom::Start(len.saturating_sub(MAX))).is_err() {
        return "  (unreadable log)".into();
    }
    let mut raw = Vec::new();
    if file.take(MAX).read_to_end(&mut raw).is_err() {
        return "  (unreadable log)".into();
    }
    let text = String::from_utf8_lossy(&raw);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    if tail.is_empty() {
        return "  (empty log)".into();
    }
    tail.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}
