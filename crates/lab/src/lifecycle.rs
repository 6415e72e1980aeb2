//! `up`, `down` and `status`: bringing a lab to its desired state, idempotently.
//!
//! `up` converges rather than creates: a healthy lab is left alone (same agents), a dead
//! agent is restarted with the same state directory, a lab whose `lab.json` is missing
//! or disagrees with the kernel is cleared (the `down` code path) and rebuilt. Without a
//! host count it keeps the size the lab has (or had, judging by its leftovers), so that
//! a plain `up` repairs any lab; it never silently reshapes a lab to another size. `up` and `down` of one lab are serialized by
//! a flock on `/run/migrate/labs/<lab>.lock`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use migrate_net::NetNs;
use serde::Serialize;

use crate::model::Lab;
use crate::name::{LabName, MAX_HOSTS, host_name};
use crate::procs::{self, LabLock};
use crate::teardown::{DownReport, teardown};
use crate::{LabError, agents, topology};

/// How long `up`/`down` wait for another `up`/`down` of the same lab.
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// What `up` did.
#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    /// The lab as it is now.
    pub lab: Lab,
    /// Leftovers of an earlier lab (crash, missing or inconsistent `lab.json`) removed
    /// before building.
    pub cleared: Option<DownReport>,
    /// Why the existing lab was not reused (empty if it was, or if there was none).
    pub problems: Vec<String>,
    /// Namespaces, bridges and links created (empty if the network was reused).
    pub created: Vec<String>,
    /// Agents started: `(host, pid)`.
    pub started: Vec<(String, i32)>,
    /// Agents found running and kept: `(host, pid)`.
    pub kept: Vec<(String, i32)>,
    pub network_time: Duration,
    pub agents_time: Duration,
    pub elapsed: Duration,
}

impl UpReport {
    /// Whether `up` found everything healthy and changed nothing.
    pub fn unchanged(&self) -> bool {
        self.cleared.as_ref().is_none_or(DownReport::is_empty)
            && self.created.is_empty()
            && self.started.is_empty()
    }
}

/// The state of a lab, as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    pub name: String,
    /// Whether `lab.json` exists.
    pub up: bool,
    pub dir: PathBuf,
    pub subnet: Option<String>,
    pub lan: NetnsStatus,
    pub client: Option<ClientStatus>,
    pub hosts: Vec<HostStatus>,
    /// Namespaces of this lab's naming scheme that `lab.json` does not account for.
    pub stray_netns: Vec<String>,
    /// Up, every namespace present, every agent answering.
    pub healthy: bool,
}

/// A namespace and whether it is registered.
#[derive(Debug, Clone, Serialize)]
pub struct NetnsStatus {
    pub netns: String,
    pub present: bool,
}

/// The client's state.
#[derive(Debug, Clone, Serialize)]
pub struct ClientStatus {
    pub netns: String,
    pub ip: Ipv4Addr,
    pub present: bool,
}

/// One host's state.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub netns_present: bool,
    /// The pid saved in `lab.json`.
    pub agent_pid: Option<i32>,
    /// That pid is the agent, alive, in the host's namespace.
    pub agent_alive: bool,
    /// The agent's socket accepts a connection.
    pub agent_answering: bool,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// Processes living in the host's namespace (agent and shims).
    pub processes: usize,
    /// Child cgroups (containers) under the host's cgroup parent.
    pub containers: usize,
}

/// The size of a new lab when `up` is not told one.
pub const DEFAULT_HOSTS: usize = 2;

/// Brings lab `name` up with `hosts` hosts whose agents run `migrate_bin`; idempotent.
///
/// `hosts: None` keeps the size of the existing lab (or of its leftovers), and is
/// [`DEFAULT_HOSTS`] for a new one; `Some(n)` different from an existing lab's size is
/// an error ([`LabError::HostCountMismatch`]).
pub async fn up(name: &LabName, hosts: Option<usize>, migrate_bin: &Path) -> Result<UpReport, LabError> {
    require_root(
        "`migrate lab up`",
        "it creates network namespaces, links and bridges, and starts the agents",
    )?;
    if let Some(requested) = hosts
        && !(1..=MAX_HOSTS).contains(&requested)
    {
        return Err(LabError::HostCount { requested });
    }
    let migrate_bin =
        std::fs::canonicalize(migrate_bin).map_err(LabError::io("find the agent binary", migrate_bin))?;
    let start = Instant::now();
    let lock = LabLock::acquire(name.as_str(), &name.lock_path(), LOCK_TIMEOUT)?;

    let mut problems = Vec::new();
    let loaded = Lab::load(name);
    // The size to build if the lab must be (re)built: asked for, or the one it has.
    let size = match (&loaded, hosts) {
        (_, Some(n)) => n,
        (Ok(lab), None) if (1..=MAX_HOSTS).contains(&lab.hosts.len()) => lab.hosts.len(),
        _ => leftover_hosts(name).unwrap_or(DEFAULT_HOSTS),
    };
    let existing = match loaded {
        Ok(lab) if lab.name != *name || !lab.matches_plan() => {
            problems.push("lab.json does not match the lab's layout".to_string());
            None
        }
        Ok(lab) if lab.hosts.len() != size => {
            return Err(LabError::HostCountMismatch {
                lab: name.to_string(),
                existing: lab.hosts.len(),
                requested: size,
            });
        }
        Ok(lab) => {
            problems = topology::problems(&lab);
            problems.is_empty().then_some(lab)
        }
        Err(LabError::NotUp { .. }) => None,
        Err(e @ LabError::Corrupt { .. }) => {
            problems.push(e.to_string());
            None
        }
        Err(e) => return Err(e),
    };

    let mut cleared = None;
    let mut created = Vec::new();
    let mut lab = match existing {
        Some(lab) => lab,
        None => {
            // Whatever is left of an earlier lab goes first, by the same path as `down`.
            cleared = Some(teardown(name, None)?);
            let lab = Lab::plan(name, size, &migrate_bin);
            std::fs::create_dir_all(&lab.dir).map_err(LabError::io("create", &lab.dir))?;
            match topology::build(&lab) {
                Ok(done) => created = done,
                Err(e) => {
                    if let Err(cleanup) = teardown(name, None) {
                        tracing::warn!(error = %cleanup, "removing the half-built lab failed too");
                    }
                    return Err(e);
                }
            }
            lab.save()?;
            lab
        }
    };
    let network_time = start.elapsed();

    // Agents: keep the running ones, (re)start the others with the same state dir.
    let agents_start = Instant::now();
    let (mut started, mut kept) = (Vec::new(), Vec::new());
    for i in 0..lab.hosts.len() {
        let host = &lab.hosts[i];
        match agents::running_agent(host) {
            Some(pid) => kept.push((host.name.clone(), pid)),
            None => {
                // A restarted agent runs the binary of this `up`.
                lab.migrate_bin.clone_from(&migrate_bin);
                let host = &lab.hosts[i];
                let pid = agents::start(&lab, host)?;
                started.push((host.name.clone(), pid));
                lab.hosts[i].agent_pid = Some(pid);
                // Saved at once: a crash now must not lose the pid of a running agent.
                lab.save()?;
            }
        }
    }
    agents::wait_ready(&lab, agents::READY_TIMEOUT).await?;
    let agents_time = agents_start.elapsed();
    drop(lock);
    Ok(UpReport {
        lab,
        cleared,
        problems,
        created,
        started,
        kept,
        network_time,
        agents_time,
        elapsed: start.elapsed(),
    })
}

/// Removes lab `name` completely; works on a half-broken lab too (see `teardown`).
pub async fn down(name: &LabName) -> Result<DownReport, LabError> {
    require_root(
        "`migrate lab down`",
        "it kills the lab's processes and removes its namespaces and cgroups",
    )?;
    let start = Instant::now();
    let lock_existed = name.lock_path().exists();
    let lock = LabLock::acquire(name.as_str(), &name.lock_path(), LOCK_TIMEOUT)?;
    let mut report = teardown(name, Some(&lock))?;
    if !lock_existed {
        // We created it just now to take the lock: not a leftover worth reporting.
        report.paths_removed.retain(|p| *p != name.lock_path());
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// The state of lab `name`: namespaces, agents (alive and answering), process and
/// container counts.
pub async fn status(name: &LabName) -> Result<LabStatus, LabError> {
    require_root(
        "`migrate lab status`",
        "it looks into the lab's network namespaces and talks to the agents over their root-only sockets",
    )?;
    let saved = match Lab::load(name) {
        Ok(lab) => Some(lab),
        Err(LabError::NotUp { .. }) => None,
        Err(e) => return Err(e),
    };
    let registered: Vec<String> = NetNs::registered_names()
        .map_err(LabError::net("list registered network namespaces"))?
        .into_iter()
        .filter(|n| name.owns_netns(n))
        .collect();
    let present = |netns: &str| registered.iter().any(|n| n == netns);
    let Some(lab) = saved else {
        return Ok(LabStatus {
            name: name.to_string(),
            up: false,
            dir: name.dir(),
            subnet: None,
            lan: NetnsStatus { netns: name.lan_netns(), present: present(&name.lan_netns()) },
            client: None,
            hosts: Vec::new(),
            stray_netns: registered.clone(),
            healthy: false,
        });
    };
    // A container is a leaf `<cgroup parent>/<name>` of the cgroup v2 hierarchy, which
    // every container has (a v1 hierarchy only has one for the controllers v2 lacks).
    let cgroup_root = migrate_cgroup::Mounts::discover().ok().and_then(|m| m.v2);
    let mut hosts = Vec::new();
    for host in &lab.hosts {
        let ns = NetNs::open_registered(&host.netns).ok();
        let processes = ns.as_ref().map_or(0, |ns| procs::pids_in_netns(&[ns.inode()].into()).len());
        let containers =
            cgroup_root.as_ref().map_or(0, |root| count_subdirs(&root.join(&host.cgroup_parent)));
        hosts.push(HostStatus {
            name: host.name.clone(),
            netns: host.netns.clone(),
            ip: host.ip,
            netns_present: ns.is_some(),
            agent_pid: host.agent_pid,
            agent_alive: agents::running_agent(host).is_some(),
            agent_answering: agents::answers(&host.socket).await,
            socket: host.socket.clone(),
            log: host.log.clone(),
            processes,
            containers,
        });
    }
    let known = lab.netns_names();
    let lan = NetnsStatus { netns: lab.lan_netns.clone(), present: present(&lab.lan_netns) };
    let client = ClientStatus {
        netns: lab.client.netns.clone(),
        ip: lab.client.ip,
        present: present(&lab.client.netns),
    };
    let healthy = lan.present
        && client.present
        && hosts.iter().all(|h| h.netns_present && h.agent_alive && h.agent_answering);
    Ok(LabStatus {
        name: name.to_string(),
        up: true,
        dir: lab.dir.clone(),
        subnet: Some(lab.subnet.clone()),
        lan,
        client: Some(client),
        hosts,
        stray_netns: registered.into_iter().filter(|n| !known.contains(n)).collect(),
        healthy,
    })
}

/// Fails with a clear message unless we are root; `why` says what needs it.
pub(crate) fn require_root(action: &'static str, why: &'static str) -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() { Ok(()) } else { Err(LabError::NotRoot { action, why }) }
}

/// The size of the lab whose namespaces are registered, judging by its last host's
/// namespace (after a crash that lost `lab.json`).
fn leftover_hosts(name: &LabName) -> Option<usize> {
    let registered = NetNs::registered_names().ok()?;
    (0..MAX_HOSTS).rev().find(|&i| registered.contains(&name.host_netns(&host_name(i)))).map(|i| i + 1)
}

fn count_subdirs(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries.filter_map(Result::ok).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).count()
    })
}
