//! The agent's state: its configuration and the registry of this host's containers.
//!
//! The registry is a map in memory guarded by one async mutex, mirrored on disk by
//! [`Record`]s; the disk is the truth at start-up. Container operations are blocking
//! (netlink in a namespace thread, waiting for the shim) and run on tokio's blocking
//! pool. Those that change the registry (run, rm, checkpoint, restore) hold the mutex
//! meanwhile, which serialises them per host; a second request on the same host waits
//! (during a long checkpoint, `ps` and `logs` too). `stop` only reads the registry and
//! lets go of it before it waits for the container to end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use migrate_cgroup::Mounts;
use tokio::sync::Mutex;

use crate::api::{AgentInfo, ContainerInfo, RunRequest, StopReport};
use crate::container;
use crate::error::{AgentError, io_err};
use crate::leases::Leases;
use crate::record::Record;
use crate::spec::{self, Subnet};
use migrate_engine::journal::{Recovered, Stage};

/// How an agent was started.
#[derive(Debug, Clone)]
pub struct Config {
    /// The host's name (`host-a`).
    pub host: String,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// The bridge containers' veths are enslaved to.
    pub bridge: String,
    pub subnet: Subnet,
    pub leases: Leases,
    /// Parent of the containers' cgroups, relative to each hierarchy's root.
    pub cgroup_parent: PathBuf,
    /// This binary, to start shims with.
    pub migrate_bin: PathBuf,
}

impl Config {
    pub fn containers_dir(&self) -> PathBuf {
        self.state_dir.join("containers")
    }
}

/// One host's agent.
#[derive(Debug)]
pub struct Agent {
    pub config: Config,
    pub mounts: Mounts,
    pub(crate) containers: Mutex<BTreeMap<String, Record>>,
}

impl Agent {
    /// Loads the registry from the state directory; containers that were being created
    /// or restored when a previous agent died are cleaned up, and a checkpoint it left
    /// half-done is undone (or, if its image was complete, finished).
    pub fn open(config: Config) -> Result<Arc<Agent>, AgentError> {
        let mounts = Mounts::discover()?;
        let dir = config.containers_dir();
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let mut containers = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            match Record::load(&entry.path()) {
                Ok(rec) if rec.restoring => {
                    // Its processes were killed with the agent (PTRACE_O_EXITKILL), or
                    // never resumed: remains, not a container.
                    tracing::warn!(name = %rec.name, "removing the remains of a restore that was interrupted (the agent died): none of its processes ran");
                    if let Err(e) = container::kill_and_remove(&config, &rec) {
                        tracing::warn!(name = %rec.name, error = %migrate_sys::error_chain(&e), "cleanup failed");
                    }
                }
                Ok(rec) if rec.pid > 0 => {
                    let Some(rec) = finish_checkpoint(&config, rec) else { continue };
                    tracing::info!(name = %rec.name, pid = rec.pid, state = %rec.state().0, "found container");
                    containers.insert(rec.name.clone(), rec);
                }
                Ok(rec) => {
                    tracing::warn!(name = %rec.name, "removing a container whose creation was interrupted");
                    if let Err(e) = container::remove(&config, &rec) {
                        tracing::warn!(name = %rec.name, error = %migrate_sys::error_chain(&e), "cleanup failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "skipping an unreadable container record");
                }
            }
        }
        Ok(Arc::new(Agent { config, mounts, containers: Mutex::new(containers) }))
    }

    pub async fn info(&self) -> AgentInfo {
        AgentInfo {
            host: self.config.host.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id() as i32,
            state_dir: self.config.state_dir.clone(),
            subnet: format!("{}/{}", self.config.subnet.base, self.config.subnet.prefix),
            containers: self.containers.lock().await.len(),
        }
    }

    pub async fn list(&self) -> Vec<ContainerInfo> {
        self.containers.lock().await.values().map(Record::info).collect()
    }

    pub async fn get(&self, name: &str) -> Result<ContainerInfo, AgentError> {
        self.containers
            .lock()
            .await
            .get(name)
            .map(Record::info)
            .ok_or_else(|| AgentError::NotFound(name.to_string()))
    }

    pub async fn run(self: &Arc<Self>, req: RunRequest) -> Result<ContainerInfo, AgentError> {
        let spec = spec::validate(&req, &self.config.subnet)?;
        let mut containers = self.containers.lock().await;
        let this = Arc::clone(self);
        let rec =
            blocking(move || container::create(&this.config, &this.mounts, spec, container::Launch::Command))
                .await?;
        let info = rec.info();
        containers.insert(rec.name.clone(), rec);
        Ok(info)
    }

    pub async fn stop(self: &Arc<Self>, name: &str, timeout_s: u64) -> Result<StopReport, AgentError> {
        // Not held while stopping (up to the timeout): ps, logs and the others go on.
        let rec = self.containers.lock().await.get(name).cloned();
        let rec = rec.ok_or_else(|| AgentError::NotFound(name.to_string()))?;
        blocking(move || container::stop(&rec, std::time::Duration::from_secs(timeout_s))).await
    }

    pub async fn remove(self: &Arc<Self>, name: &str, force: bool) -> Result<ContainerInfo, AgentError> {
        let mut containers = self.containers.lock().await;
        let rec = containers.get(name).cloned().ok_or_else(|| AgentError::NotFound(name.to_string()))?;
        if rec.is_running() && !force {
            return Err(AgentError::Conflict(format!(
                "container {name} is running: stop it first (migrate stop {name}) or remove it with --force"
            )));
        }
        let this = Arc::clone(self);
        let info = blocking(move || {
            if rec.is_running() {
                container::stop(&rec, std::time::Duration::ZERO)?;
            }
            let info = rec.info();
            container::remove(&this.config, &rec)?;
            Ok(info)
        })
        .await?;
        containers.remove(name);
        Ok(info)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::container("(agent)", "run blocking work", e.to_string()))?
}

/// Undoes a checkpoint of `rec` that a previous agent left half-done, if there is one
/// (its journal is in the container's directory); `None` if the container is gone
/// because the checkpoint had in fact completed.
fn finish_checkpoint(config: &Config, mut rec: Record) -> Option<Record> {
    let journal = crate::images::checkpoint_journal(&rec);
    if !journal.exists() {
        return Some(rec);
    }
    match migrate_engine::journal::recover(&journal, &rec.cgroup) {
        Ok(Recovered::PutBack { stage, threads, injecting }) => {
            let image = match stage {
                Stage::Written => "its image is complete",
                Stage::Frozen | Stage::Seized => "its partial image was removed",
            };
            let mut note = format!(
                "a checkpoint was interrupted (the agent died, stage {stage:?}): {image}, {threads} threads put back, the container thawed and running"
            );
            if let Some(pid) = injecting {
                note.push_str(&format!(
                    "; but host pid {pid} was running injected calls at that moment and may have been left changed"
                ));
            }
            tracing::warn!(name = %rec.name, "{note}");
            rec.note = Some(note);
            if let Err(e) = rec.save() {
                tracing::warn!(name = %rec.name, error = %migrate_sys::error_chain(&e), "saving the record");
            }
            Some(rec)
        }
        Ok(Recovered::Completed { dir }) => {
            tracing::warn!(name = %rec.name, image = %dir.display(), "the agent died after checkpointing the container, before it was removed: the image is complete; removing the container");
            if let Err(e) = container::kill_and_remove(config, &rec) {
                tracing::warn!(name = %rec.name, error = %migrate_sys::error_chain(&e), "cleanup failed");
            }
            None
        }
        Err(e) => {
            tracing::warn!(name = %rec.name, error = %migrate_sys::error_chain(&e), "undoing an interrupted checkpoint failed");
            Some(rec)
        }
    }
}
