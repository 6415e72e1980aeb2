//! `migrate exec`: a command inside a running container — all its namespaces and its
//! cgroup — with the caller's terminal as its stdio.
//!
//! The command is a grandchild: `setns` into a pid or time namespace only takes effect
//! for children, so the child enters everything, forks, and waits for the command,
//! exiting with its status (`Step::ForkAndWait`).

use std::path::Path;
use std::process::Command;

use migrate_sys::process::{SpawnError, Step, spawn};
use nix::libc;

use crate::api::ContainerInfo;
use crate::spec::CONTAINER_PATH;

/// Namespaces entered, in order; the mount namespace last, since `/proc` paths are
/// opened before any `setns` anyway.
const NAMESPACES: [(&str, libc::c_int); 7] = [
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("time", libc::CLONE_NEWTIME),
    ("mnt", libc::CLONE_NEWNS),
];

/// Runs `argv` in the container and returns its exit code (128 + signal if killed).
pub fn exec(info: &ContainerInfo, argv: &[String]) -> Result<i32, SpawnError> {
    let parent = |e: std::io::Error| SpawnError { step: None, source: e };
    let mut steps = Vec::new();
    for procs in info.cgroup.procs_files() {
        steps.push(Step::join_cgroup(&procs).map_err(parent)?);
    }
    for (ns, flag) in NAMESPACES {
        let path = format!("/proc/{}/ns/{ns}", info.pid);
        steps.push(Step::enter_ns(Path::new(&path), flag).map_err(parent)?);
    }
    steps.push(Step::ForkAndWait);
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| parent(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given")))?;
    let mut cmd = Command::new(program);
    cmd.args(args).env("PATH", CONTAINER_PATH).env("HOSTNAME", &info.name).current_dir("/");
    let mut child = spawn(&mut cmd, steps)?;
    let status = child.wait().map_err(parent)?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
