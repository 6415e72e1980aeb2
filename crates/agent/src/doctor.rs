//! `migrate doctor`: what this host can and cannot do, found by *doing* it.
//!
//! Every probe exercises the kernel the way the engine will later (freeze a real cgroup,
//! seize a real process, write-protect real pages and scan them, …): a kernel config
//! option or a version number says what should work, only a call says what does (a
//! seccomp profile, a missing capability or a disabled sysctl all hide behind a recent
//! version). Each [`Finding`] says what was seen, what it means for a migration and how
//! to fix it; [`Report::migration_possible`] is false when any finding is a failure.
//! Warnings name a capability that degrades a migration without preventing it.
//!
//! Probes leave nothing behind: each child process, cgroup, namespace and mapping is
//! held by a guard that undoes it, also when the probe fails or panics.
//!
//! - [`host`]: kernel, vDSO, root, capabilities;
//! - [`cgroups`]: the cgroup2 mount, freezing, where the controllers live;
//! - [`procs`]: ptrace, namespaces, clone3 `set_tid`, pidfd_getfd, process_vm_readv;
//! - [`memory`]: userfaultfd write-protect + `PAGEMAP_SCAN`, soft-dirty;
//! - [`network`]: a veth pair and TCP repair mode in a new network namespace.

mod cgroups;
mod host;
mod memory;
mod network;
mod procs;

use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Ok,
    /// Works in a degraded way, or some containers cannot be migrated.
    Warn,
    /// Migration cannot work on this host until it is fixed.
    Fail,
}

/// One probe's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// A stable identifier, e.g. `cgroup-freeze`.
    pub id: String,
    /// What was probed, for humans.
    pub title: String,
    pub status: Status,
    /// What the probe saw.
    pub detail: String,
    /// What it means for the user (empty when all is well).
    pub meaning: String,
    /// How to fix it (empty when there is nothing to fix).
    pub fix: String,
}

impl Finding {
    fn ok(id: &str, title: &str, detail: impl Into<String>) -> Finding {
        Finding {
            id: id.into(),
            title: title.into(),
            status: Status::Ok,
            detail: detail.into(),
            meaning: String::new(),
            fix: String::new(),
        }
    }

    fn bad(
        status: Status,
        id: &str,
        title: &str,
        detail: impl Into<String>,
        meaning: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            id: id.into(),
            title: title.into(),
            status,
            detail: detail.into(),
            meaning: meaning.into(),
            fix: fix.into(),
        }
    }
}

/// Everything `migrate doctor` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// No finding is a failure.
    pub migration_possible: bool,
}

impl Report {
    fn new(findings: Vec<Finding>) -> Report {
        let migration_possible = findings.iter().all(|f| f.status != Status::Fail);
        Report { findings, migration_possible }
    }
}

/// How probes that need a process of their own are run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Helper {
    /// Run this executable as `EXE __probe NAME` (it must be the `migrate` binary).
    Exe(PathBuf),
    /// `std::env::current_exe()`.
    CurrentExe,
    /// On a dedicated thread of this process (for tests, whose executable is not
    /// `migrate`): the thread's own namespaces for children are changed, never the
    /// process's.
    Thread,
}

/// What [`run_with`] does.
#[derive(Debug, Clone)]
pub struct Options {
    pub helper: Helper,
}

impl Default for Options {
    fn default() -> Options {
        Options { helper: Helper::CurrentExe }
    }
}

/// Runs every probe, in a fixed order, with helper probes run by `migrate __probe`.
pub fn run() -> Report {
    run_with(&Options::default())
}

/// Runs every probe.
pub fn run_with(opts: &Options) -> Report {
    let mut findings = Vec::new();
    let mut add = |id: &str, title: &str, probe: &dyn Fn() -> Vec<Finding>| {
        findings.extend(guarded(id, title, probe));
    };
    add("kernel", "kernel", &|| vec![host::kernel(), host::vdso()]);
    add("root", "running as root", &|| vec![host::root()]);
    add("capabilities", "capabilities", &host::capabilities);
    add("cgroup2", "cgroup v2", &cgroups::probe);
    add("ptrace", "ptrace seize/interrupt", &|| vec![procs::ptrace()]);
    add("namespaces", "namespaces", &procs::namespaces);
    add("clone3-set-tid", "clone3 with set_tid", &|| vec![procs::clone3_set_tid(&opts.helper)]);
    add("pidfd", "pidfd_getfd, process_vm_readv", &procs::pidfd_and_vm_readv);
    add("network", "veth and TCP repair", &network::probe);
    add("uffd-wp", "userfaultfd write-protect", &|| vec![memory::uffd_wp()]);
    add("soft-dirty", "soft-dirty bits", &|| vec![memory::soft_dirty()]);
    Report::new(findings)
}

/// Runs `probe`, turning a panic into a failed finding so that one broken probe does not
/// take the report with it.
fn guarded(id: &str, title: &str, probe: &dyn Fn() -> Vec<Finding>) -> Vec<Finding> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(probe)) {
        Ok(findings) => findings,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            vec![Finding::bad(
                Status::Fail,
                id,
                title,
                format!("the probe panicked: {msg}"),
                "This is a bug in migrate doctor: the capability is unknown.",
                "Report it with the output of `migrate doctor --json`.",
            )]
        }
    }
}

/// The name of the helper probe that checks `clone3` with `set_tid` in a new pid
/// namespace.
pub const PROBE_CLONE3_SET_TID: &str = "clone3-set-tid";

/// The pid the clone3 probe asks for inside its new pid namespace.
const SET_TID_PROBE_PID: i32 = 300;

/// The entry point of `migrate __probe NAME`: runs one probe that needs a process of its
/// own, reports a failure on stderr, and returns the exit status (0: it works).
pub fn probe_child_main(name: &str) -> i32 {
    match name {
        PROBE_CLONE3_SET_TID => match migrate_sys::clone3::verify_set_tid(SET_TID_PROBE_PID) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{}", migrate_sys::error_chain(&e));
                1
            }
        },
        other => {
            eprintln!("unknown probe {other:?} (known: {PROBE_CLONE3_SET_TID})");
            2
        }
    }
}

/// A child process that is killed and reaped when dropped.
#[derive(Debug)]
struct ChildGuard(Child);

impl ChildGuard {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` to exit, event-driven (poll on its pidfd), for at most `timeout`.
/// `Ok(None)`: still running at the deadline.
fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let pidfd = migrate_sys::pidfd::PidFd::open(child.id() as i32).map_err(io::Error::other)?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let mut fds = [nix::poll::PollFd::new(pidfd.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// `sleep 30` with `steps` applied, stdio detached: a process to probe.
fn spawn_sleeper(
    steps: Vec<migrate_sys::process::Step>,
) -> Result<ChildGuard, migrate_sys::process::SpawnError> {
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    migrate_sys::process::spawn(&mut cmd, steps).map(ChildGuard)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(report: &'a Report, id: &str) -> &'a Finding {
        report.findings.iter().find(|f| f.id == id).unwrap_or_else(|| panic!("no finding {id}: {report:#?}"))
    }

    /// The whole report on this machine (root, Linux 6.18, hybrid cgroups, no
    /// CAP_SYS_RESOURCE, no CONFIG_MEM_SOFT_DIRTY).
    #[test]
    fn report_on_this_host() {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIP: the doctor probes need root");
            return;
        }
        let report = run_with(&Options { helper: Helper::Thread });
        for f in &report.findings {
            println!("{:?} {}: {}", f.status, f.id, f.detail);
        }
        for id in [
            "kernel",
            "root",
            "capabilities",
            "cgroup2",
            "cgroup-freeze",
            "ptrace",
            "ns-pid",
            "ns-net",
            "ns-uts",
            "ns-ipc",
            "ns-mnt",
            "ns-cgroup",
            "ns-time",
            "ns-user",
            "clone3-set-tid",
            "pidfd-getfd",
            "process-vm-readv",
            "veth",
            "tcp-repair",
            "uffd-wp",
        ] {
            let f = find(&report, id);
            assert_eq!(f.status, Status::Ok, "{f:#?}");
        }
        let caps = find(&report, "cap-sys-resource");
        let has_sys_resource = host::effective_caps().is_ok_and(|c| c & (1 << 24) != 0);
        assert_eq!(caps.status, if has_sys_resource { Status::Ok } else { Status::Warn }, "{caps:#?}");
        assert_ne!(find(&report, "soft-dirty").status, Status::Fail);
        assert!(report.migration_possible);
        let json = serde_json::to_value(&report).unwrap_or_default();
        assert_eq!(json["findings"][0]["status"], "ok");
        assert_eq!(json["migration_possible"], true);
    }

    #[test]
    fn one_failure_makes_migration_impossible() {
        let ok = Finding::ok("a", "A", "fine");
        let warn = Finding::bad(Status::Warn, "b", "B", "meh", "slower", "do x");
        assert!(Report::new(vec![ok.clone(), warn.clone()]).migration_possible);
        let fail = Finding::bad(Status::Fail, "c", "C", "broken", "no", "do y");
        assert!(!Report::new(vec![ok, warn, fail]).migration_possible);
    }

    #[test]
    fn a_panicking_probe_is_a_failure() {
        let f = guarded("x", "X", &|| panic!("boom"));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].status, Status::Fail);
        assert!(f[0].detail.contains("boom"));
    }

    #[test]
    fn unknown_helper_probe() {
        assert_eq!(probe_child_main("no-such-probe"), 2);
    }

    /// The helper's own entry point, run on a thread whose children get a new pid
    /// namespace, as `migrate __probe clone3-set-tid` would after `unshare(CLONE_NEWPID)`.
    #[test]
    fn clone3_helper_entry_point() {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIP: clone3 set_tid needs root");
            return;
        }
        let code = std::thread::scope(|s| {
            s.spawn(|| match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
                Ok(()) => probe_child_main(PROBE_CLONE3_SET_TID),
                Err(e) => panic!("unshare(CLONE_NEWPID): {e}"),
            })
            .join()
            .unwrap_or(99)
        });
        assert_eq!(code, 0);
    }
}
