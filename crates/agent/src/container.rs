//! Starting, stopping and removing one container, with a rollback for every step of the
//! start so that a failure leaves nothing behind.
//!
//! Start order: leases (name, IP, MAC) → state directory and record → cgroup (with
//! limits) → a fresh network namespace with the veth configured → the shim, which
//! starts PID 1 in that namespace. The network is ready before PID 1 runs, so a server
//! can bind its address at once.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use migrate_cgroup::{Cgroup, Mounts};
use migrate_net::{ContainerLink, NetNs};
use migrate_sys::process::{Step, spawn};
use nix::libc;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use procfs_core::FromRead;
use procfs_core::process::Status;

use crate::agent::Config;
use crate::api::StopReport;
use crate::error::{AgentError, io_err};
use crate::leases::{Kind, Owner};
use crate::record::{Record, proc_start};
use crate::shim::{self, Report, ShimConfig};
use crate::spec::{Spec, macs_for};
use migrate_net::format_mac;

/// How long a shim may take to report that PID 1 runs.
const SHIM_START_TIMEOUT: Duration = Duration::from_secs(10);

/// One undo action: what it undoes, and how.
type Undo = (&'static str, Box<dyn FnOnce() -> Result<(), AgentError> + Send>);

/// Undo actions of a start in progress, run in reverse order unless the start succeeds.
struct Rollback {
    name: String,
    undo: Vec<Undo>,
}

impl Rollback {
    fn push(&mut self, what: &'static str, f: impl FnOnce() -> Result<(), AgentError> + Send + 'static) {
        self.undo.push((what, Box::new(f)));
    }

    /// Undoes everything and returns `cause`, carrying any cleanup failure with it.
    fn fail(mut self, cause: AgentError) -> AgentError {
        let mut failed = Vec::new();
        while let Some((what, f)) = self.undo.pop() {
            if let Err(e) = f() {
                failed.push(format!("{what}: {}", migrate_sys::error_chain(&e)));
            }
        }
        if failed.is_empty() {
            cause
        } else {
            tracing::error!(name = %self.name, cleanup = ?failed, "rollback incomplete");
            AgentError::Rollback { cause: Box::new(cause), cleanup: failed }
        }
    }

    fn commit(mut self) {
        self.undo.clear();
    }
}

/// What PID 1 of a new container is.
#[derive(Debug, Clone)]
pub enum Launch {
    /// The spec's command, as `migrate run` starts it.
    Command,
    /// A stub that the checkpoint engine rebuilds into the image's process; the clocks,
    /// hostname, the log so far and the time of its first creation are the image's.
    Restore {
        hostname: String,
        timens_offsets: (i64, i64),
        log: Option<std::path::PathBuf>,
        created_ms: u64,
        restored: crate::api::Restored,
    },
}

/// Starts a container from a validated spec.
pub fn create(config: &Config, mounts: &Mounts, spec: Spec, launch: Launch) -> Result<Record, AgentError> {
    let mut rb = Rollback { name: spec.name.clone(), undo: Vec::new() };
    match create_steps(config, mounts, spec, &launch, &mut rb) {
        Ok(rec) => {
            rb.commit();
            Ok(rec)
        }
        Err(e) => Err(rb.fail(e)),
    }
}

fn create_steps(
    config: &Config,
    mounts: &Mounts,
    spec: Spec,
    launch: &Launch,
    rb: &mut Rollback,
) -> Result<Record, AgentError> {
    let host = &config.host;
    let leases = &config.leases;
    let created_ms = crate::now_ms();
    let owner = Owner::new(&spec.name, host, created_ms);
    leases.take(Kind::Name, &spec.name, &owner)?;
    let (l, n, o) = (leases.clone(), spec.name.clone(), owner.clone());
    rb.push("release the name", move || l.release(Kind::Name, &n, &o));

    let ip = match spec.ip {
        Some(ip) => {
            leases.take(Kind::Ip, &ip.to_string(), &owner)?;
            ip
        }
        None => take_free_ip(config, &owner)?,
    };
    let (l, o) = (leases.clone(), owner.clone());
    rb.push("release the IP", move || l.release(Kind::Ip, &ip.to_string(), &o));

    let mac = match spec.mac {
        // A MAC the user chose: a clash is their error.
        Some(mac) => {
            leases.take(Kind::Mac, &format_mac(&mac), &owner)?;
            mac
        }
        None => take_free_mac(config, ip, &owner)?,
    };
    let (l, o) = (leases.clone(), owner.clone());
    rb.push("release the MAC", move || l.release(Kind::Mac, &format_mac(&mac), &o));

    let dir = config.containers_dir().join(&spec.name);
    fs::create_dir(&dir).map_err(io_err("create", &dir))?;
    let d = dir.clone();
    rb.push("remove the state directory", move || fs::remove_dir_all(&d).map_err(io_err("remove", &d)));

    let rel = config.cgroup_parent.join(&spec.name);
    let (cgroup, limits) = Cgroup::create(mounts, &rel, &spec.limits)?;
    for l in limits.iter().filter_map(|l| l.warning.as_ref()) {
        tracing::warn!(name = %spec.name, "{l}");
    }
    let cg = cgroup.clone();
    rb.push("remove the cgroup", move || cg.remove(Duration::from_secs(5)).map_err(AgentError::from));

    let mut rec = Record {
        name: spec.name.clone(),
        host: host.clone(),
        ip,
        prefix: config.subnet.prefix,
        mac,
        cmd: spec.cmd.clone(),
        created_ms,
        first_created_ms: None,
        restored: None,
        pid: 0,
        pid_start: 0,
        shim_pid: 0,
        limits,
        cgroup,
        host_if: host_if_name(&spec.name),
        dir: dir.clone(),
        restoring: false,
        note: None,
    };
    if let Launch::Restore { created_ms, restored, .. } = launch {
        rec.first_created_ms = Some(*created_ms).filter(|ms| *ms > 0);
        rec.restored = Some(restored.clone());
        rec.restoring = true;
    }
    // Saved before anything else exists outside the directory, so that an agent that
    // dies from here on finds a record with pid 0 at its next start and cleans up.
    rec.save()?;

    let netns = NetNs::new_anonymous()
        .map_err(|e| AgentError::container(&rec.name, "create its network namespace", e))?;
    let link = ContainerLink {
        host_if: rec.host_if.clone(),
        bridge: config.bridge.clone(),
        ip,
        prefix: rec.prefix,
        mac,
    };
    migrate_net::attach_container(&netns, &link).map_err(|e| {
        AgentError::container(&rec.name, format!("connect it to bridge {}", config.bridge), e)
    })?;
    let h = rec.host_if.clone();
    rb.push("delete the veth", move || {
        migrate_net::detach_container(&h).map_err(|e| AgentError::container(&h, "delete veth", e))
    });

    let (shim_pid, pid) = start_shim(config, &rec, &netns, launch, rb)?;
    rec.shim_pid = shim_pid;
    rec.pid = pid;
    rec.pid_start = proc_start(pid).map(|(s, _)| s).unwrap_or_default();
    rec.save()?;
    tracing::info!(name = %rec.name, pid, %ip, "container started");
    Ok(rec)
}

fn take_free_ip(config: &Config, owner: &Owner) -> Result<Ipv4Addr, AgentError> {
    for ip in config.subnet.container_range() {
        match config.leases.take(Kind::Ip, &ip.to_string(), owner) {
            Ok(()) => return Ok(ip),
            Err(AgentError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(AgentError::Conflict("every container address of the network is in use".into()))
}

/// Leases the MAC derived from `ip`, or, if a user took that one by hand for another
/// container, the next free one of [`macs_for`]: a MAC nobody asked for must not fail a
/// start.
fn take_free_mac(config: &Config, ip: Ipv4Addr, owner: &Owner) -> Result<[u8; 6], AgentError> {
    for mac in macs_for(ip) {
        match config.leases.take(Kind::Mac, &format_mac(&mac), owner) {
            Ok(()) => return Ok(mac),
            Err(AgentError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(AgentError::Conflict(format!(
        "every MAC address derived from {ip} is in use (by containers started with --mac): give one with --mac"
    )))
}

/// A host-side interface name (at most 15 bytes) derived from the container's name.
fn host_if_name(name: &str) -> String {
    // FNV-1a: stable across runs and releases, unlike std's hasher.
    let h =
        name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("mg{:010x}", h & 0xff_ffff_ffff)
}

/// Spawns the shim and waits for its report; returns (shim pid, PID 1's pid).
fn start_shim(
    config: &Config,
    rec: &Record,
    netns: &NetNs,
    launch: &Launch,
    rb: &mut Rollback,
) -> Result<(i32, i32), AgentError> {
    let dir = &rec.dir;
    let (hostname, cmd, timens_offsets) = match launch {
        Launch::Command => (rec.name.clone(), rec.cmd.clone(), None),
        Launch::Restore { hostname, timens_offsets, .. } => {
            let stub = vec![config.migrate_bin.to_string_lossy().into_owned(), "__restore-stub".to_string()];
            (hostname.clone(), stub, Some(*timens_offsets))
        }
    };
    let shim_config = ShimConfig {
        name: rec.name.clone(),
        hostname,
        cmd,
        timens_offsets,
        cgroup_procs: rec.cgroup.procs_files(),
    };
    let cfg_path = shim::config_path(dir);
    let bytes = serde_json::to_vec_pretty(&shim_config)
        .map_err(|e| AgentError::container(&rec.name, "encode shim config", e))?;
    fs::write(&cfg_path, bytes).map_err(io_err("write", &cfg_path))?;
    let log = shim::log_path(dir);
    match launch {
        // The shim appends: the restored container's log goes on from the image's.
        Launch::Restore { log: Some(from), .. } => {
            fs::copy(from, &log).map(|_| ()).map_err(io_err("copy", from))?
        }
        _ => drop(fs::File::create(&log).map_err(io_err("create", &log))?),
    }
    let shim_log_path = dir.join("shim.log");
    let shim_log = fs::File::create(&shim_log_path).map_err(io_err("create", &shim_log_path))?;

    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| AgentError::container(&rec.name, "create the shim's report pipe", e))?;
    let fail = |op: &str, e: std::io::Error| AgentError::container(&rec.name, op.to_string(), e);
    let steps = vec![
        Step::SetSid,
        Step::pass_fd(netns.as_fd(), shim::NETNS_FD).map_err(|e| fail("pass the network namespace", e))?,
        Step::pass_fd(report_w.as_fd(), shim::REPORT_FD).map_err(|e| fail("pass the report pipe", e))?,
        Step::CloexecFrom(shim::REPORT_FD + 1),
    ];
    drop(report_w);
    let mut cmd = Command::new(&config.migrate_bin);
    cmd.arg("shim").arg("--dir").arg(dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(shim_log);
    let mut child =
        spawn(&mut cmd, steps).map_err(|e| AgentError::container(&rec.name, "start its shim", e))?;
    // The steps hold the agent's copy of the report pipe's write end: without dropping
    // it, a shim that dies early would never give us EOF.
    drop(cmd);
    let shim_pid = child.id() as i32;
    let outcome = read_report(report_r, SHIM_START_TIMEOUT);
    let report = match outcome {
        Ok(Some(Report::Pid(pid))) => Ok(pid),
        Ok(Some(Report::Error(msg))) => Err(AgentError::Invalid { field: "command", reason: msg }),
        Ok(None) => Err(AgentError::container(
            &rec.name,
            "start its shim",
            format!("the shim exited without reporting: {}", tail(&shim_log_path)),
        )),
        Err(e) => Err(AgentError::container(&rec.name, "wait for its shim", e)),
    };
    // Reap the shim when it ends, by its pid only (never waitpid(-1): see shim.rs).
    std::thread::Builder::new()
        .name(format!("reap-shim-{shim_pid}"))
        .spawn(move || child.wait())
        .map_err(|e| fail("watch its shim", e))?;
    let pid = report?;
    let cg = rec.cgroup.clone();
    rb.push("kill PID 1", move || cg.kill(Duration::from_secs(5)).map_err(AgentError::from));
    Ok((shim_pid, pid))
}

/// Reads the shim's one-line report; `None` if it closed the pipe without one.
fn read_report(fd: std::os::fd::OwnedFd, timeout: Duration) -> Result<Option<Report>, std::io::Error> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::from(ms))? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no report after {timeout:?}"),
        ));
    }
    let mut line = String::new();
    BufReader::new(fs::File::from(fd)).read_line(&mut line)?;
    if line.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&line).map(Some).map_err(std::io::Error::other)
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let t = lines[lines.len().saturating_sub(5)..].join(" | ");
    if t.is_empty() { format!("{} is empty", path.display()) } else { t }
}

/// Stops PID 1: SIGTERM if it handles it, SIGKILL to the whole cgroup after `timeout`.
pub fn stop(rec: &Record, timeout: Duration) -> Result<StopReport, AgentError> {
    let mut signals = Vec::new();
    let mut note = None;
    if rec.is_running() {
        if timeout.is_zero() {
            note = Some("no grace period: killed at once".to_string());
        } else if handles_sigterm(rec.pid) {
            kill(Pid::from_raw(rec.pid), Signal::SIGTERM).map_err(|e| {
                AgentError::container(&rec.name, format!("send SIGTERM to pid {}", rec.pid), e)
            })?;
            signals.push("SIGTERM".to_string());
            if !wait_until(timeout, || !rec.is_running()) {
                note = Some(format!("still running {timeout:?} after SIGTERM"));
            }
        } else {
            // The kernel drops signals sent to a namespace's init from outside unless it
            // has a handler: waiting for a SIGTERM that cannot arrive would only delay.
            note = Some("its PID 1 has no SIGTERM handler, so SIGTERM could not stop it".to_string());
        }
        if rec.is_running() {
            rec.cgroup.kill(Duration::from_secs(5))?;
            signals.push("SIGKILL".to_string());
        }
    }
    // The shim records the exit status right after PID 1 is reaped.
    wait_until(Duration::from_secs(5), || rec.exit().is_some() || !shim_alive(rec));
    Ok(StopReport { container: rec.info(), signals, note })
}

/// Waits until the container's shim has recorded the exit and ended, so that nothing
/// writes into the state directory any more.
pub fn wait_shim_gone(rec: &Record, timeout: Duration) -> bool {
    wait_until(timeout, || !shim_alive(rec))
}

fn shim_alive(rec: &Record) -> bool {
    rec.shim_pid > 0 && proc_start(rec.shim_pid).is_some_and(|(_, state)| state != 'Z')
}

/// Whether `pid` has a handler for SIGTERM (`SigCgt` in `/proc/PID/status`).
fn handles_sigterm(pid: i32) -> bool {
    Status::from_file(format!("/proc/{pid}/status")).is_ok_and(|s| s.sigcgt & (1 << (libc::SIGTERM - 1)) != 0)
}

/// Polls `done` every few milliseconds until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills whatever runs in the container, waits for its shim to go, and removes it.
pub fn kill_and_remove(config: &Config, rec: &Record) -> Result<(), AgentError> {
    rec.cgroup.kill(Duration::from_secs(10))?;
    wait_shim_gone(rec, Duration::from_secs(10));
    remove(config, rec)
}

/// Removes a stopped container: cgroup, veth, leases, state directory.
pub fn remove(config: &Config, rec: &Record) -> Result<(), AgentError> {
    rec.cgroup.remove(Duration::from_secs(5))?;
    migrate_net::detach_container(&rec.host_if)
        .map_err(|e| AgentError::container(&rec.name, "delete its veth", e))?;
    let owner = rec.owner();
    config.leases.release(Kind::Mac, &format_mac(&rec.mac), &owner)?;
    config.leases.release(Kind::Ip, &rec.ip.to_string(), &owner)?;
    config.leases.release(Kind::Name, &rec.name, &owner)?;
    match fs::remove_dir_all(&rec.dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(AgentError::Io { op: "remove", path: rec.dir.clone(), source: e })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_if_names_fit_and_differ() {
        let a = host_if_name("web");
        assert!(a.len() <= 15, "{a}");
        assert_ne!(a, host_if_name("web2"));
        assert_eq!(a, host_if_name("web"));
    }
}
