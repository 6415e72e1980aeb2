//! `lab exec`: run a command inside a host's (or the client's) network namespace.
//!
//! Only the network namespace changes: the filesystem is the machine's (design §9). The
//! child enters the namespace itself between `fork` and `exec`
//! (`migrate_sys::process::spawn`), so the caller's threads stay where they are. A
//! program that cannot be started is named like a shell does, with its exit status
//! (127 not found, 126 not executable: [`LabError::exit_code`]).

use std::ffi::OsString;
use std::process::{Command, ExitStatus};

use migrate_sys::process::{SpawnError, Step, spawn};
use nix::libc;

use crate::LabError;
use crate::lifecycle::require_root;
use crate::model::Lab;
use crate::name::LabName;

/// Runs `argv` in the namespace of `host_or_client` (`host-a`, …, or `client`) of lab
/// `name`, with stdio inherited, and returns its exit status.
pub fn exec(name: &LabName, host_or_client: &str, argv: &[OsString]) -> Result<ExitStatus, LabError> {
    require_root("`migrate lab exec`", "it enters a network namespace of the lab")?;
    let lab = Lab::load(name)?;
    let netns = lab.netns_of(host_or_client)?;
    let target = format!("{host_or_client} (network namespace {netns})");
    let (program, args) =
        argv.split_first().ok_or_else(|| LabError::EmptyCommand { target: target.clone() })?;
    let path = migrate_net::registered_path(netns);
    let enter = Step::enter_ns(&path, nix::libc::CLONE_NEWNET).map_err(LabError::io("open", &path))?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    let program = program.to_string_lossy().into_owned();
    let mut child = spawn(&mut cmd, vec![enter]).map_err(|e| exec_error(&target, &program, e))?;
    child.wait().map_err(|source| LabError::Wait { target, program, source })
}

/// Names a program that could not be started as a shell would (`exec` itself failed,
/// not a step before it).
fn exec_error(target: &str, program: &str, e: SpawnError) -> LabError {
    let (target, program) = (target.to_string(), program.to_string());
    if e.step.is_some() {
        return LabError::Exec { target, program, source: e };
    }
    match e.source.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR) if program.contains('/') => {
            LabError::NoSuchFile { target, program }
        }
        Some(libc::ENOENT) => LabError::CommandNotFound { target, program },
        Some(libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::EPERM) => {
            LabError::NotExecutable { target, program, source: e.source }
        }
        _ => LabError::Exec { target, program, source: e },
    }
}
