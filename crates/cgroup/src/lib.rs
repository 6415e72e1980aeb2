//! `migrate-cgroup`: a container's cgroups on pure-v2 and hybrid hosts.
//!
//! The container's identity is a cgroup v2 leaf (`<cgroup2 mount>/<rel>`): that is where
//! its processes are found, frozen (`cgroup.freeze`) and killed (`cgroup.kill`). Its
//! *limits* live wherever their controller is: on a hybrid host (ours: v2 holds only
//! hugetlb) memory and pids are v1 hierarchies, so the same relative path is also created
//! under each v1 controller that a limit needs, and the processes join it there too.
//! Mount points are read from `/proc/self/mountinfo`, never assumed.

mod mounts;

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use mounts::{Mounts, unescape};
use serde::{Deserialize, Serialize};

/// A failure of a cgroup operation, with the path it concerned.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem is mounted (checked /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("cannot read /proc/self/mountinfo")]
    MountInfo(#[source] io::Error),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} is still not {state} after {waited:?}")]
    Timeout { path: PathBuf, state: &'static str, waited: Duration },
    #[error("invalid cgroup path {0:?}: it must be relative and must not contain `..`")]
    BadPath(PathBuf),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { op, path: path.to_path_buf(), source }
}

/// Limits a container may be given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory_max: Option<u64>,
    /// Maximum number of tasks.
    pub pids_max: Option<u64>,
}

/// Where one limit was applied (or why it could not be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedLimit {
    /// `memory_max` or `pids_max`.
    pub limit: String,
    pub value: u64,
    /// The file that holds it, e.g. `/sys/fs/cgroup/memory/migrate/host-a/web/memory.limit_in_bytes`.
    pub file: Option<PathBuf>,
    /// Set when no hierarchy holds the controller: the limit is recorded but not enforced.
    pub warning: Option<String>,
}

/// A container's cgroup: its v2 leaf and the v1 directories its limits need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    /// The path relative to each hierarchy's root, e.g. `migrate/host-a/web`.
    pub rel: PathBuf,
    /// The v2 leaf.
    pub v2: PathBuf,
    /// `(controller, directory)` for each v1 hierarchy the container was placed in.
    pub v1: Vec<(String, PathBuf)>,
}

/// Controllers whose limits a container may carry, with the files that hold them.
const CONTROLLERS: [(&str, &str, &str); 2] = [
    // (controller, v2 file, v1 file)
    ("memory", "memory.max", "memory.limit_in_bytes"),
    ("pids", "pids.max", "pids.max"),
];

fn check_rel(rel: &Path) -> Result<(), CgroupError> {
    let ok = rel.is_relative()
        && rel.components().all(|c| matches!(c, std::path::Component::Normal(_)))
        && rel.components().next().is_some();
    if ok { Ok(()) } else { Err(CgroupError::BadPath(rel.to_path_buf())) }
}

impl Cgroup {
    /// Creates the cgroup `rel` in the v2 hierarchy and, on hybrid hosts, in the v1
    /// hierarchies of the memory and pids controllers, then applies `limits`.
    ///
    /// On error, everything this call created is removed again.
    pub fn create(
        mounts: &Mounts,
        rel: &Path,
        limits: &Limits,
    ) -> Result<(Cgroup, Vec<AppliedLimit>), CgroupError> {
        check_rel(rel)?;
        let v2root = mounts.v2.as_ref().ok_or(CgroupError::NoCgroup2)?;
        let v2 = v2root.join(rel);
        fs::create_dir_all(&v2).map_err(io_err("create", &v2))?;
        let mut cg = Cgroup { rel: rel.to_path_buf(), v2, v1: Vec::new() };
        match cg.place_limits(mounts, limits) {
            Ok(applied) => Ok((cg, applied)),
            Err(e) => {
                if let Err(cleanup) = cg.remove(Duration::from_secs(2)) {
                    tracing::warn!(error = %cleanup, "removing a half-created cgroup failed");
                }
                Err(e)
            }
        }
    }

    fn place_limits(&mut self, mounts: &Mounts, limits: &Limits) -> Result<Vec<AppliedLimit>, CgroupError> {
        let v2_controllers = mounts.v2_controllers();
        let mut applied = Vec::new();
        for (controller, v2file, v1file) in CONTROLLERS {
            let value = match controller {
                "memory" => limits.memory_max,
                _ => limits.pids_max,
            };
            let file = if v2_controllers.iter().any(|c| c == controller) {
                if value.is_some() {
                    self.enable_v2_controller(mounts, controller)?;
                }
                Some(self.v2.join(v2file))
            } else if let Some(root) = mounts.v1.get(controller) {
                // Processes join every v1 hierarchy we create, so accounting works even
                // without a limit; only hierarchies we know of are touched.
                let dir = root.join(&self.rel);
                fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
                self.v1.push((controller.to_string(), dir.clone()));
                Some(dir.join(v1file))
            } else {
                None
            };
            let Some(value) = value else { continue };
            let name = format!("{controller}_max");
            match file {
                Some(file) => {
                    fs::write(&file, value.to_string()).map_err(io_err("write limit to", &file))?;
                    applied.push(AppliedLimit { limit: name, value, file: Some(file), warning: None });
                }
                None => applied.push(AppliedLimit {
                    limit: name,
                    value,
                    file: None,
                    warning: Some(format!(
                        "no cgroup hierarchy on this host has the {controller} controller: the limit is recorded but not enforced"
                    )),
                }),
            }
        }
        Ok(applied)
    }

    /// Enables `controller` in `cgroup.subtree_control` of every ancestor of the leaf.
    fn enable_v2_controller(&self, mounts: &Mounts, controller: &str) -> Result<(), CgroupError> {
        let root = mounts.v2.as_ref().ok_or(CgroupError::NoCgroup2)?;
        // Every ancestor of the leaf, from the root down, must delegate the controller.
        let mut dir = root.clone();
        let ancestors: Vec<_> = self.rel.parent().map(|p| p.components().collect()).unwrap_or_default();
        for comp in std::iter::once(None).chain(ancestors.into_iter().map(Some)) {
            if let Some(comp) = comp {
                dir.push(comp);
            }
            let file = dir.join("cgroup.subtree_control");
            fs::write(&file, format!("+{controller}")).map_err(io_err("enable controller in", &file))?;
        }
        Ok(())
    }

    /// Reopens a cgroup made earlier (e.g. by an agent before it restarted).
    pub fn open(mounts: &Mounts, rel: &Path) -> Result<Cgroup, CgroupError> {
        check_rel(rel)?;
        let v2 = mounts.v2.as_ref().ok_or(CgroupError::NoCgroup2)?.join(rel);
        let v1 = CONTROLLERS
            .iter()
            .filter_map(|(c, _, _)| mounts.v1.get(*c).map(|root| (c.to_string(), root.join(rel))))
            .filter(|(_, d)| d.is_dir())
            .collect();
        Ok(Cgroup { rel: rel.to_path_buf(), v2, v1 })
    }

    /// The `cgroup.procs` files a new member must write itself into (v2 first).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        std::iter::once(self.v2.join("cgroup.procs"))
            .chain(self.v1.iter().map(|(_, d)| d.join("cgroup.procs")))
            .collect()
    }

    /// The pids (in our pid namespace) of the processes in the v2 leaf.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        read_pids(&self.v2)
    }

    /// Freezes the v2 leaf and waits, event-driven, until the kernel says it is frozen.
    pub fn freeze(&self, timeout: Duration) -> Result<(), CgroupError> {
        self.set_frozen(true, timeout)
    }

    /// Thaws the v2 leaf and waits until it is.
    pub fn thaw(&self, timeout: Duration) -> Result<(), CgroupError> {
        self.set_frozen(false, timeout)
    }

    fn set_frozen(&self, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
        let file = self.v2.join("cgroup.freeze");
        fs::write(&file, if frozen { "1" } else { "0" }).map_err(io_err("write", &file))?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let events = self.v2.join("cgroup.events");
        wait_for_event(&events, timeout, |s| s.lines().any(|l| l == want))
            .map_err(|e| e.with_state(if frozen { "frozen" } else { "thawed" }))
    }

    /// Kills every process in the cgroup (v2 `cgroup.kill`; SIGKILL to each member on
    /// kernels without it) and waits until it is empty.
    pub fn kill(&self, timeout: Duration) -> Result<(), CgroupError> {
        kill_dir(&self.v2, timeout)
    }

    /// Kills what is left in the cgroup and removes its directories in every hierarchy.
    pub fn remove(&self, timeout: Duration) -> Result<(), CgroupError> {
        if self.v2.exists() {
            self.kill(timeout)?;
            rmdir_if_present(&self.v2)?;
        }
        for (_, dir) in &self.v1 {
            if dir.exists() {
                kill_dir(dir, timeout)?;
                rmdir_if_present(dir)?;
            }
        }
        Ok(())
    }
}

/// Kills every process under `rel` in every hierarchy (v2 and each v1) and removes the
/// directories, deepest first. A missing tree is not an error.
pub fn destroy_tree(mounts: &Mounts, rel: &Path) -> Result<(), CgroupError> {
    check_rel(rel)?;
    let roots = mounts.v2.iter().chain(mounts.v1.values());
    let mut seen = Vec::new();
    for root in roots {
        // Several v1 controllers may share one mount (e.g. cpu,cpuacct).
        if seen.contains(root) {
            continue;
        }
        seen.push(root.clone());
        let top = root.join(rel);
        if top.is_dir() {
            destroy_dir(&top)?;
        }
    }
    Ok(())
}

fn destroy_dir(dir: &Path) -> Result<(), CgroupError> {
    let entries = fs::read_dir(dir).map_err(io_err("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        if entry.file_type().map_err(io_err("stat", &entry.path()))?.is_dir() {
            destroy_dir(&entry.path())?;
        }
    }
    kill_dir(dir, Duration::from_secs(5))?;
    rmdir_if_present(dir)
}

fn kill_dir(dir: &Path, timeout: Duration) -> Result<(), CgroupError> {
    let kill_file = dir.join("cgroup.kill");
    let used_kill_file = kill_file.exists() && fs::write(&kill_file, "1").is_ok();
    let deadline = Instant::now() + timeout;
    loop {
        let pids = read_pids(dir)?;
        if pids.is_empty() {
            return Ok(());
        }
        if !used_kill_file {
            // v1 hierarchies (and kernels before 5.14) have no cgroup.kill.
            for pid in &pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::Timeout { path: dir.to_path_buf(), state: "empty", waited: timeout });
        }
        // A killed task leaves cgroup.procs once it has exited; that takes microseconds,
        // but a v1 hierarchy has no event to wait on, so poll briefly.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Removes an (emptied) cgroup directory. The kernel refuses with EBUSY for a moment
/// after the last task left `cgroup.procs` (exiting threads still hold it), so EBUSY is
/// retried for a while.
fn rmdir_if_present(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(CgroupError::Io { op: "remove", path: dir.to_path_buf(), source: e }),
        }
    }
}

fn read_pids(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let file = dir.join("cgroup.procs");
    match fs::read_to_string(&file) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(CgroupError::Io { op: "read", path: file, source: e }),
    }
}

struct WaitError {
    path: PathBuf,
    waited: Duration,
    io: Option<io::Error>,
}

impl WaitError {
    fn with_state(self, state: &'static str) -> CgroupError {
        match self.io {
            Some(source) => CgroupError::Io { op: "watch", path: self.path, source },
            None => CgroupError::Timeout { path: self.path, state, waited: self.waited },
        }
    }
}

/// Waits until `done` holds for the contents of `file`, woken by inotify `IN_MODIFY`
/// (the kernel signals every change of a cgroup's `cgroup.events` that way).
/// How long [`wait_for_event`] re-reads the file before it waits for inotify.
const SPIN: Duration = Duration::from_millis(3);

fn wait_for_event(file: &Path, timeout: Duration, done: impl Fn(&str) -> bool) -> Result<(), WaitError> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let werr = |io: io::Error| WaitError { path: file.to_path_buf(), waited: timeout, io: Some(io) };
    let inotify =
        Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(|e| werr(e.into()))?;
    inotify.add_watch(file, AddWatchFlags::IN_MODIFY).map_err(|e| werr(e.into()))?;
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        // Read after arming the watch, so that no change can slip between the two.
        let contents = fs::read_to_string(file).map_err(werr)?;
        if done(&contents) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WaitError { path: file.to_path_buf(), waited: timeout, io: None });
        }
        // The kernel sends at most one notification of a cgroup file per 10 ms
        // (cgroup_file_notify), while a small cgroup freezes in well under one: look
        // again a few times before sleeping on the event.
        if start.elapsed() < SPIN {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        let mut fds = [nix::poll::PollFd::new(inotify.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(werr(e.into())),
        }
        // Drain the queue; the events themselves carry nothing we need.
        let _ = inotify.read_events();
    }
}
