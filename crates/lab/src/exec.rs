//! `lab exec`: run a command inside a host's (or the client's) network namespace.
//!
//! Only the network namespace changes: the filesystem is the machine's (design §9). The
//! child enters the namespace itself between `fork` and `exec`
//! (`migrate_sys::process::spawn`), so the caller's threads stay where they are.

use std::ffi::OsString;
use std::process::{Command, ExitStatus};

use migrate_sys::process::{Step, spawn};

use crate::LabError;
use crate::lifecycle::require_root;
use crate::model::Lab;
use crate::name::LabName;

/// Runs `argv` in the namespace of `host_or_client` (`host-a`, …, or `client`) of lab
/// `name`, with stdio inherited, and returns its exit status.
pub fn exec(name: &LabName, host_or_client: &str, argv: &[OsString]) -> Result<ExitStatus, LabError> {
    require_root("`migrate lab exec`")?;
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
    let mut child = spawn(&mut cmd, vec![enter]).map_err(|source| LabError::Exec {
        target: target.clone(),
        program: program.clone(),
        source,
    })?;
    child.wait().map_err(|source| LabError::Wait { target, program, source })
}
