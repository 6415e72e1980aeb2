//! `migrate exec`: a command inside a running container — all its namespaces and its
//! cgroup — with the caller's terminal as its stdio.
//!
//! The command is a grandchild: `setns` into a pid or time namespace only takes effect
//! for children, so the child enters everything, forks, and waits for the command,
//! exiting with its status (`Step::ForkAndWait`).
//!
//! A program that cannot be started is reported like a shell does: by name, with exit
//! status 127 (not found) or 126 (found but not executable), see [`ExecError::exit_code`].

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

/// Why `exec` could not run the command.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("no command given: put the program to run after `--`")]
    NoCommand,
    #[error("{program}: command not found in the PATH of container {container} ({CONTAINER_PATH})")]
    NotFound { container: String, program: String },
    #[error("{program}: no such file in container {container}{}", relative_note(program))]
    NoSuchFile { container: String, program: String },
    #[error("{program}: cannot execute it in container {container}")]
    NotExecutable {
        container: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("prepare to enter container {container}: {what}")]
    Prepare {
        container: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("run {program} in container {container}")]
    Spawn {
        container: String,
        program: String,
        #[source]
        source: SpawnError,
    },
}

impl ExecError {
    /// The exit status a shell would give: 127 not found, 126 not executable, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecError::NotFound { .. } | ExecError::NoSuchFile { .. } => 127,
            ExecError::NotExecutable { .. } => 126,
            _ => 1,
        }
    }

    /// Classifies the failure of `exec` itself (no step failed) as a shell would.
    fn from_exec(container: &str, program: &str, source: SpawnError) -> ExecError {
        let (container, program) = (container.to_string(), program.to_string());
        if source.step.is_some() {
            return ExecError::Spawn { container, program, source };
        }
        match source.source.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) if program.contains('/') => {
                ExecError::NoSuchFile { container, program }
            }
            Some(libc::ENOENT) => ExecError::NotFound { container, program },
            Some(libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::EPERM) => {
                ExecError::NotExecutable { container, program, source: source.source }
            }
            _ => ExecError::Spawn { container, program, source },
        }
    }
}

fn relative_note(program: &str) -> &'static str {
    if program.starts_with('/') { "" } else { " (a relative path starts from /, where the command runs)" }
}

/// Runs `argv` in the container and returns its exit code (128 + signal if killed).
pub fn exec(info: &ContainerInfo, argv: &[String]) -> Result<i32, ExecError> {
    let container = &info.name;
    let prepare =
        |what: String| move |source| ExecError::Prepare { container: container.clone(), what, source };
    let (program, args) = argv.split_first().ok_or(ExecError::NoCommand)?;
    let mut steps = Vec::new();
    for procs in info.cgroup.procs_files() {
        steps.push(Step::join_cgroup(&procs).map_err(prepare(format!("open {}", procs.display())))?);
    }
    for (ns, flag) in NAMESPACES {
        let path = format!("/proc/{}/ns/{ns}", info.pid);
        steps.push(Step::enter_ns(Path::new(&path), flag).map_err(prepare(format!("open {path}")))?);
    }
    steps.push(Step::ForkAndWait);
    let mut cmd = Command::new(program);
    cmd.args(args).env("PATH", CONTAINER_PATH).env("HOSTNAME", &info.name).current_dir("/");
    let mut child = spawn(&mut cmd, steps).map_err(|e| ExecError::from_exec(container, program, e))?;
    let status = child.wait().map_err(prepare(format!("wait for {program}")))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn_err(errno: i32) -> SpawnError {
        SpawnError { step: None, source: std::io::Error::from_raw_os_error(errno) }
    }

    #[test]
    fn exec_failures_read_like_a_shell() {
        let e = ExecError::from_exec("s1", "nosuchcmd", spawn_err(libc::ENOENT));
        assert_eq!(e.exit_code(), 127);
        assert!(e.to_string().starts_with("nosuchcmd: command not found in the PATH of container s1"), "{e}");
        let e = ExecError::from_exec("s1", "./rel", spawn_err(libc::ENOENT));
        assert_eq!(e.exit_code(), 127);
        assert!(e.to_string().contains("./rel: no such file") && e.to_string().contains("relative"), "{e}");
        let e = ExecError::from_exec("s1", "/nosuch", spawn_err(libc::ENOENT));
        assert_eq!(e.to_string(), "/nosuch: no such file in container s1");
        let e = ExecError::from_exec("s1", "/etc/passwd", spawn_err(libc::EACCES));
        assert_eq!(e.exit_code(), 126);
        let step =
            SpawnError { step: Some("enter namespace x".into()), source: spawn_err(libc::ENOENT).source };
        assert_eq!(ExecError::from_exec("s1", "true", step).exit_code(), 1);
    }
}
