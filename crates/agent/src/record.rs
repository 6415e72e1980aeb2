//! The registry's on-disk form: one directory per container under `STATE/containers/`,
//! holding `container.json` (written by the agent), `shim.json`, `log` and `exit.json`
//! (written by the shim). Everything the agent knows can be rebuilt from these files,
//! which is what lets a restarted agent find its running containers again.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use migrate_cgroup::{AppliedLimit, Cgroup};
use procfs_core::FromRead;
use procfs_core::process::Stat;
use serde::{Deserialize, Serialize};

use crate::api::{ContainerInfo, ExitInfo, Restored, State};
use crate::error::{AgentError, io_err};
use crate::shim;
use migrate_net::format_mac;

/// What the agent records about one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub host: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub mac: [u8; 6],
    pub cmd: Vec<String>,
    /// When this agent made the record: its leases are held in this name.
    pub created_ms: u64,
    /// When `run` first created the container, if that was before the record (a restore
    /// brings it from the image).
    #[serde(default)]
    pub first_created_ms: Option<u64>,
    /// Where and when it was restored, if it was.
    #[serde(default)]
    pub restored: Option<Restored>,
    /// PID 1 of the container in the host's pid namespace; 0 while it is being created.
    pub pid: i32,
    /// Its start time (field 22 of `/proc/PID/stat`), to tell it from a reused pid.
    pub pid_start: u64,
    pub shim_pid: i32,
    pub limits: Vec<AppliedLimit>,
    pub cgroup: Cgroup,
    pub host_if: String,
    pub dir: PathBuf,
    /// Being built by a restore: until the engine is done its processes are not the
    /// container's yet, and an agent that starts and finds this removes them.
    #[serde(default)]
    pub restoring: bool,
    /// What a restarted agent found and did (an interrupted checkpoint put back), for `ps`.
    #[serde(default)]
    pub note: Option<String>,
}

impl Record {
    /// The holder of this container's leases.
    pub fn owner(&self) -> crate::leases::Owner {
        crate::leases::Owner::new(&self.name, &self.host, self.created_ms)
    }
}

impl Record {
    pub fn file(dir: &Path) -> PathBuf {
        dir.join("container.json")
    }

    pub fn save(&self) -> Result<(), AgentError> {
        let path = Record::file(&self.dir);
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| AgentError::container(&self.name, "encode record", e))?;
        shim::write_atomic(&path, &bytes).map_err(io_err("write", &path))
    }

    pub fn load(dir: &Path) -> Result<Record, AgentError> {
        let path = Record::file(dir);
        let bytes = std::fs::read(&path).map_err(io_err("read", &path))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| AgentError::container(&dir.display().to_string(), "parse record", e))
    }

    /// How PID 1 ended, if the shim has recorded it.
    pub fn exit(&self) -> Option<ExitInfo> {
        let bytes = std::fs::read(shim::exit_path(&self.dir)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether PID 1 still runs: same pid, same start time, not a zombie.
    pub fn is_running(&self) -> bool {
        self.pid > 0
            && proc_start(self.pid).is_some_and(|(start, state)| start == self.pid_start && state != 'Z')
    }

    pub fn state(&self) -> (State, Option<ExitInfo>) {
        if self.is_running() {
            return (State::Running, None);
        }
        match self.exit() {
            Some(exit) => (State::Exited, Some(exit)),
            None => (State::Unknown, None),
        }
    }

    pub fn info(&self) -> ContainerInfo {
        let (state, exit) = self.state();
        ContainerInfo {
            name: self.name.clone(),
            host: self.host.clone(),
            state,
            pid: self.pid,
            shim_pid: self.shim_pid,
            ip: self.ip.to_string(),
            prefix: self.prefix,
            mac: format_mac(&self.mac),
            cmd: self.cmd.clone(),
            created_ms: self.first_created_ms.unwrap_or(self.created_ms),
            restored: self.restored.clone(),
            exit,
            limits: self.limits.clone(),
            cgroup: self.cgroup.clone(),
            host_if: self.host_if.clone(),
            log: shim::log_path(&self.dir),
            note: self.note.clone(),
        }
    }
}

/// Start time and state letter of `pid`, from `/proc/PID/stat`.
pub fn proc_start(pid: i32) -> Option<(u64, char)> {
    let stat = Stat::from_file(format!("/proc/{pid}/stat")).ok()?;
    Some((stat.starttime, stat.state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time() {
        let me = std::process::id() as i32;
        let (start, state) = proc_start(me).unwrap_or((0, '?'));
        assert!(start > 0);
        // The main thread waits for the test threads.
        assert!(matches!(state, 'R' | 'S'), "{state}");
        assert!(proc_start(i32::MAX).is_none());
    }
}
