//! The shim: one small supervisor process per container, as conmon is for podman.
//!
//! It is the container's parent and holds its log, so that the agent can be killed,
//! restarted or upgraded without the containers noticing. It lives in the host's
//! namespaces and outside the container's cgroup: freezing the container never freezes
//! it, and the container's process tree holds only the container's processes. It waits
//! for its one child by pid, never with `waitpid(-1)`, so it cannot steal a ptrace stop
//! from a checkpoint engine that traces the container.
//!
//! Lifecycle: the agent spawns `migrate shim --dir DIR` with the container's (already
//! configured) network namespace at fd 3 and a report pipe at fd 4. The shim unshares
//! pid and time namespaces for its children, spawns PID 1 (which joins the cgroup and
//! the remaining namespaces and mounts its private /proc, /sys, /dev/shm and /run before
//! `exec`), reports `{"pid": N}` or `{"error": "..."}` on fd 4, copies the container's
//! stdout and stderr into `DIR/log` until both close, reaps PID 1 and writes
//! `DIR/exit.json`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use migrate_sys::process::{Step, spawn};
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde::{Deserialize, Serialize};

use crate::api::ExitInfo;
use crate::spec::CONTAINER_PATH;

/// The fd at which the shim receives the container's network namespace.
pub const NETNS_FD: RawFd = 3;
/// The fd on which the shim reports the outcome of the start.
pub const REPORT_FD: RawFd = 4;

/// What the agent tells the shim (`DIR/shim.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimConfig {
    pub name: String,
    /// The container's hostname (a restored container keeps the one it had).
    pub hostname: String,
    pub cmd: Vec<String>,
    /// Time-namespace offsets (CLOCK_MONOTONIC, CLOCK_BOOTTIME) in nanoseconds, so that a
    /// restored container's clocks continue from the checkpoint.
    pub timens_offsets: Option<(i64, i64)>,
    /// `cgroup.procs` files PID 1 writes itself into before anything else.
    pub cgroup_procs: Vec<PathBuf>,
}

/// The shim's one-line report to the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Report {
    Pid(i32),
    Error(String),
}

pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("shim.json")
}
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("log")
}
pub fn exit_path(dir: &Path) -> PathBuf {
    dir.join("exit.json")
}
/// Where the shim records the inodes of PID 1's stdout and stderr pipes: the checkpoint
/// engine treats fds on them as the container's external stdio.
pub fn stdio_path(dir: &Path) -> PathBuf {
    dir.join("stdio.json")
}

/// The inodes of the pipes the shim reads PID 1's stdout and stderr from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct StdioPipes {
    pub stdout: u64,
    pub stderr: u64,
}

/// The shim process's `main`. Returns its exit code.
pub fn main(dir: &Path) -> i32 {
    let mut report = match migrate_sys::process::take_inherited_fd(REPORT_FD) {
        Ok(fd) => File::from(fd),
        Err(e) => {
            eprintln!("migrate shim: no report pipe at fd {REPORT_FD}: {e}");
            return 2;
        }
    };
    let (mut child, out, err) = match start(dir) {
        Ok(started) => started,
        Err(e) => {
            let _ = writeln!(report, "{}", serde_json::to_string(&Report::Error(e)).unwrap_or_default());
            return 1;
        }
    };
    let pid = child.id() as i32;
    if writeln!(report, "{}", serde_json::to_string(&Report::Pid(pid)).unwrap_or_default()).is_err() {
        // The agent gave up waiting: it will clean up; do not leave PID 1 running.
        let _ = child.kill();
    }
    drop(report);
    if let Err(e) = pump(dir, out, err) {
        eprintln!("migrate shim {}: log copy stopped: {e}", dir.display());
    }
    let exit = loop {
        match child.wait() {
            Ok(status) => break status,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("migrate shim: waiting for pid {pid}: {e}");
                return 1;
            }
        }
    };
    let info = ExitInfo { code: exit.code(), signal: exit.signal(), finished_ms: crate::now_ms() };
    if let Err(e) = write_atomic(&exit_path(dir), &serde_json::to_vec(&info).unwrap_or_default()) {
        eprintln!("migrate shim: recording the exit status: {e}");
        return 1;
    }
    0
}

fn start(dir: &Path) -> Result<(std::process::Child, OwnedFd, OwnedFd), String> {
    let text =
        fs::read(config_path(dir)).map_err(|e| format!("reading {}: {e}", config_path(dir).display()))?;
    let config: ShimConfig = serde_json::from_slice(&text).map_err(|e| format!("bad shim config: {e}"))?;
    let netns = migrate_sys::process::take_inherited_fd(NETNS_FD)
        .map_err(|e| format!("network namespace fd: {e}"))?;
    // Only the children of the caller enter new pid and time namespaces: PID 1 below.
    nix::sched::unshare(
        nix::sched::CloneFlags::CLONE_NEWPID | nix::sched::CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    )
    .map_err(|e| format!("unshare pid and time namespaces: {e}"))?;
    if let Some((mono, boot)) = config.timens_offsets {
        // Only possible before the first task enters the new time namespace.
        let line = |clock: &str, ns: i64| {
            format!("{clock} {} {}\n", ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
        };
        fs::write("/proc/self/timens_offsets", line("monotonic", mono) + &line("boottime", boot))
            .map_err(|e| format!("set the time namespace's offsets: {e}"))?;
    }
    let (out_r, out_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let ino = |fd: &OwnedFd| {
        nix::sys::stat::fstat(fd).map(|st| st.st_ino).map_err(|e| format!("fstat of a pipe: {e}"))
    };
    let stdio = StdioPipes { stdout: ino(&out_r)?, stderr: ino(&err_r)? };
    write_atomic(&stdio_path(dir), &serde_json::to_vec(&stdio).unwrap_or_default())
        .map_err(|e| format!("write {}: {e}", stdio_path(dir).display()))?;
    let steps = container_steps(&config, netns).map_err(|e| format!("preparing PID 1: {e}"))?;
    let Some((program, args)) = config.cmd.split_first() else {
        return Err(format!("{} names no program to run", config_path(dir).display()));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", CONTAINER_PATH)
        .env("HOSTNAME", &config.hostname)
        .env("HOME", "/root")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    let child = spawn(&mut cmd, steps).map_err(|e| match &e.step {
        Some(_) => format!("{e}: {}", e.source),
        None => format!("cannot run {program:?}: {}", e.source),
    })?;
    // Drop our copies of the write ends (held by `cmd`), or the pipes never reach EOF.
    drop(cmd);
    Ok((child, out_r, err_r))
}

/// What PID 1 does to itself between fork and exec, in order.
fn container_steps(config: &ShimConfig, netns: OwnedFd) -> std::io::Result<Vec<Step>> {
    let mut steps = Vec::new();
    // Join the cgroup first: the new cgroup namespace then has the leaf as its root.
    for procs in &config.cgroup_procs {
        steps.push(Step::join_cgroup(procs)?);
    }
    steps.push(Step::SetNs {
        fd: netns,
        nstype: libc::CLONE_NEWNET,
        what: "enter the network namespace".into(),
    });
    steps.push(Step::Unshare {
        flags: libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNS | libc::CLONE_NEWCGROUP,
    });
    steps.push(Step::SetSid);
    steps.push(Step::hostname(&config.hostname)?);
    // Nothing mounted in the container may propagate back to the host.
    steps.push(Step::remount_propagation("/", libc::MS_REC | libc::MS_PRIVATE)?);
    let hard = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    steps.push(Step::mount_fs("proc", "/proc", hard, None)?);
    steps.push(Step::mount_fs("sysfs", "/sys", hard | libc::MS_RDONLY, None)?);
    steps.push(Step::mount_fs("tmpfs", "/dev/shm", libc::MS_NOSUID | libc::MS_NODEV, Some("mode=1777"))?);
    steps.push(Step::mount_fs("tmpfs", "/run", libc::MS_NOSUID | libc::MS_NODEV, Some("mode=755"))?);
    steps.push(Step::CloexecFrom(3));
    Ok(steps)
}

/// Copies both pipes into the log until both are closed.
fn pump(dir: &Path, out: OwnedFd, err: OwnedFd) -> std::io::Result<()> {
    let path = log_path(dir);
    let mut log = OpenOptions::new().create(true).append(true).open(&path)?;
    let mut open = [Some(out), Some(err)];
    let mut buf = vec![0u8; 64 * 1024];
    while open.iter().any(Option::is_some) {
        let mut fds: Vec<PollFd> =
            open.iter().flatten().map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)).collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        let mut ready = ready.into_iter();
        for slot in open.iter_mut().filter(|s| s.is_some()) {
            if !ready.next().unwrap_or(false) {
                continue;
            }
            let Some(fd) = slot.as_ref() else { continue };
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => *slot = None,
                Ok(n) => log.write_all(&buf[..n])?,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Writes `path` so that readers see either the old or the whole new contents.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}
