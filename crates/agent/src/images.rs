//! Checkpoint and restore as the agent runs them: the engine does the work on a thread
//! of its own (ptrace requests must all come from one thread, never from the async
//! runtime's workers); the agent supplies what it knows about the container (cgroup,
//! stdio pipes, network identity) and owns the container's life before and after.

use std::sync::Arc;
use std::time::Duration;

use migrate_engine::{ExternalPipe, Progress};
use migrate_proto::manifest::ContainerMeta;
use tokio::sync::mpsc;

use crate::agent::Agent;
use crate::api::{CheckpointRequest, ContainerInfo, Event, RestoreRequest, Restored, State};
use crate::container::{self, Launch};
use crate::error::AgentError;
use crate::record::Record;
use crate::shim;
use crate::spec::{self, Spec};

/// Sends progress as events; a client that went away does not stop the work.
fn progress_sender(tx: mpsc::Sender<Event>) -> impl FnMut(Progress) {
    let mut last_pct = u64::MAX;
    move |p| {
        let ev = match p {
            Progress::Phase(phase) => Event::Phase { phase: phase.to_string() },
            Progress::Bytes { done, total } => {
                // At most one event per percent.
                let pct = (done * 100).checked_div(total).unwrap_or(100);
                if pct == last_pct {
                    return;
                }
                last_pct = pct;
                Event::Bytes { done, total }
            }
        };
        let _ = tx.blocking_send(ev);
    }
}

/// Runs `f` on a thread of its own and waits for it.
async fn on_engine_thread<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(what.to_string())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| AgentError::container("(engine)", format!("start the {what} thread"), e))?;
    rx.await.map_err(|_| AgentError::container("(engine)", what.to_string(), "the engine thread died"))?
}

impl Agent {
    /// Checkpoints container `name` into `req.dir`.
    pub async fn checkpoint(
        self: &Arc<Self>,
        name: &str,
        req: CheckpointRequest,
        tx: mpsc::Sender<Event>,
    ) -> Result<Event, AgentError> {
        check_dir(&req.dir)?;
        let mut containers = self.containers.lock().await;
        let rec = containers.get(name).cloned().ok_or_else(|| AgentError::NotFound(name.to_string()))?;
        if !rec.is_running() {
            return Err(AgentError::Conflict(format!(
                "container {name} is not running: only a running container can be checkpointed"
            )));
        }
        let stdio_path = shim::stdio_path(&rec.dir);
        let stdio: shim::StdioPipes = std::fs::read(&stdio_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                AgentError::container(
                    name,
                    "find its stdio pipes",
                    format!("{} is missing", stdio_path.display()),
                )
            })?;
        let external = vec![
            ExternalPipe { inode: stdio.stdout, name: "stdout".into() },
            ExternalPipe { inode: stdio.stderr, name: "stderr".into() },
        ];
        let meta = ContainerMeta {
            name: rec.name.clone(),
            hostname: rec.name.clone(),
            ip: rec.ip.to_string(),
            prefix: rec.prefix,
            mac: migrate_net::format_mac(&rec.mac),
            cmd: rec.cmd.clone(),
            memory_max: rec.limits.iter().find(|l| l.limit == "memory_max").map(|l| l.value),
            pids_max: rec.limits.iter().find(|l| l.limit == "pids_max").map(|l| l.value),
            created_ms: rec.first_created_ms.unwrap_or(rec.created_ms),
            host: rec.host.clone(),
        };
        let r = rec.clone();
        let leave_running = req.leave_running;
        let dir = req.dir.clone();
        let report = on_engine_thread("checkpoint", move || {
            let ereq = migrate_engine::CheckpointRequest {
                pid: r.pid,
                cgroup: &r.cgroup,
                external,
                container: meta,
                dir,
                log: Some(shim::log_path(&r.dir)),
                leave_running,
                journal: Some(checkpoint_journal(&r)),
            };
            migrate_engine::checkpoint(ereq, &mut progress_sender(tx))
                .map_err(|e| AgentError::container(&r.name, "checkpoint", e))
        })
        .await?;
        let container = if leave_running {
            rec.info()
        } else {
            // The engine left it frozen: kill it where it stands, then free everything.
            let this = Arc::clone(self);
            let r = rec.clone();
            let info = tokio::task::spawn_blocking(move || {
                r.cgroup.kill(Duration::from_secs(10))?;
                container::wait_shim_gone(&r, Duration::from_secs(10));
                let info = ContainerInfo { state: State::Checkpointed, exit: None, ..r.info() };
                container::remove(&this.config, &r)?;
                Ok::<_, AgentError>(info)
            })
            .await
            .map_err(|e| AgentError::container(name, "remove after checkpoint", e.to_string()))??;
            containers.remove(name);
            info
        };
        Ok(Event::Checkpointed { report, container })
    }

    /// Restores the image in `req.dir` as a new container on this host.
    pub async fn restore(
        self: &Arc<Self>,
        req: RestoreRequest,
        tx: mpsc::Sender<Event>,
    ) -> Result<Event, AgentError> {
        check_dir(&req.dir)?;
        if req.dir.exists() && !req.dir.is_dir() {
            return Err(AgentError::Invalid {
                field: "image",
                reason: format!(
                    "{} is a file: give the image's directory (the one `checkpoint --dir` wrote)",
                    req.dir.display()
                ),
            });
        }
        let dir = req.dir.clone();
        let img = tokio::task::spawn_blocking(move || migrate_engine::open_for_restore(&dir))
            .await
            .map_err(|e| AgentError::container("(image)", "read the image", e.to_string()))?
            .map_err(|e| {
                // Name the directory once: most of the engine's messages already do.
                let chain = migrate_sys::error_chain(&e);
                let dir = req.dir.display().to_string();
                let reason = if chain.contains(&dir) { chain } else { format!("{dir}: {chain}") };
                AgentError::Invalid { field: "image", reason }
            })?;
        migrate_engine::host::check_compatible(&img.manifest)
            .map_err(|e| AgentError::Invalid { field: "image", reason: migrate_sys::error_chain(&e) })?;
        let m = &img.manifest.container;
        let name = req.name.clone().unwrap_or_else(|| m.name.clone());
        spec::check_name(&name)?;
        let ip: std::net::Ipv4Addr = m.ip.parse().map_err(|_| AgentError::Invalid {
            field: "image",
            reason: format!("bad IP {:?} in the manifest", m.ip),
        })?;
        self.config.subnet.check(ip)?;
        let spec = Spec {
            name: name.clone(),
            ip: Some(ip),
            mac: Some(spec::parse_mac(&m.mac)?),
            limits: migrate_cgroup::Limits { memory_max: m.memory_max, pids_max: m.pids_max },
            cmd: m.cmd.clone(),
        };
        let (mono, boot) = migrate_engine::host::offsets_for(&img.manifest.clocks);
        let launch = Launch::Restore {
            hostname: m.hostname.clone(),
            timens_offsets: (mono as i64, boot as i64),
            log: migrate_engine::image::log_of(&img),
            created_ms: m.created_ms,
            restored: Restored {
                restored_ms: crate::now_ms(),
                image: req.dir.clone(),
                from_host: m.host.clone(),
                checkpointed_ms: img.manifest.created_ms,
            },
        };
        let mut containers = self.containers.lock().await;
        let this = Arc::clone(self);
        let mut rec: Record =
            tokio::task::spawn_blocking(move || container::create(&this.config, &this.mounts, spec, launch))
                .await
                .map_err(|e| AgentError::container(&name, "create", e.to_string()))??;
        let r = rec.clone();
        let this = Arc::clone(self);
        let outcome = on_engine_thread("restore", move || {
            migrate_engine::restore(&img, r.pid, &r.cgroup, &mut progress_sender(tx))
                .map_err(|e| AgentError::container(&r.name, "restore", e))
        })
        .await;
        // Built and running: no longer a restore's remains for a restarted agent. What the
        // restore made on the filesystem is kept only then: if the record cannot be saved,
        // it goes with the container.
        let outcome = outcome.and_then(|(report, made)| {
            rec.restoring = false;
            rec.save()?;
            made.keep();
            Ok(report)
        });
        match outcome {
            Ok(report) => {
                let info: ContainerInfo = rec.info();
                containers.insert(rec.name.clone(), rec);
                Ok(Event::Restored { report, container: info })
            }
            Err(e) => {
                // Nothing half-built may run: kill the stub and remove the container.
                let cleanup =
                    tokio::task::spawn_blocking(move || container::kill_and_remove(&this.config, &rec)).await;
                match cleanup {
                    Ok(Ok(())) => Err(e),
                    Ok(Err(c)) => Err(AgentError::Rollback {
                        cause: Box::new(e),
                        cleanup: vec![migrate_sys::error_chain(&c)],
                    }),
                    Err(j) => Err(AgentError::Rollback { cause: Box::new(e), cleanup: vec![j.to_string()] }),
                }
            }
        }
    }
}

/// Where a checkpoint of `rec` keeps its journal ([`migrate_engine::journal`]).
pub(crate) fn checkpoint_journal(rec: &Record) -> std::path::PathBuf {
    rec.dir.join("checkpoint.json")
}

fn check_dir(dir: &std::path::Path) -> Result<(), AgentError> {
    if !dir.is_absolute() {
        return Err(AgentError::Invalid {
            field: "dir",
            reason: format!("{}: give an absolute path", dir.display()),
        });
    }
    Ok(())
}
