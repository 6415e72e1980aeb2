//! The lab's error type: each variant says what the user can do about it where there is
//! something to do (run as root, pick a known host, `migrate lab down` first).

use std::path::PathBuf;
use std::time::Duration;

use migrate_net::NetError;

/// An error of a lab operation.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{action} needs root: {why}")]
    NotRoot { action: &'static str, why: &'static str },
    #[error("invalid lab name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("a lab has 1 to 26 hosts (host-a … host-z), not {requested}")]
    HostCount { requested: usize },
    #[error(
        "lab {lab} is up with {existing} hosts, not {requested}; run `migrate lab down` first to reshape it"
    )]
    HostCountMismatch { lab: String, existing: usize, requested: usize },
    #[error("unknown host {host:?} in lab {lab}; known: {}", known.join(", "))]
    UnknownHost { lab: String, host: String, known: Vec<String> },
    #[error("lab {lab} is not up (no {}); run `migrate lab up`", path.display())]
    NotUp { lab: String, path: PathBuf },
    #[error("read {}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lab {lab} is busy: another `migrate lab up/down` holds {} (waited {waited:?})", path.display())]
    Locked { lab: String, path: PathBuf, waited: Duration },
    #[error("{step}")]
    Net {
        step: String,
        #[source]
        source: NetError,
    },
    #[error("discover the cgroup mounts")]
    CgroupMounts(#[source] migrate_cgroup::CgroupError),
    #[error("remove cgroup {rel}")]
    Cgroup {
        rel: String,
        #[source]
        source: migrate_cgroup::CgroupError,
    },
    #[error("start the agent of {host} ({})", bin.display())]
    SpawnAgent {
        host: String,
        bin: PathBuf,
        #[source]
        source: migrate_sys::process::SpawnError,
    },
    #[error(
        "the agent of {host} (pid {pid}) exited ({status}) before accepting connections; last lines of {}:\n{tail}",
        log.display()
    )]
    AgentExited { host: String, pid: i32, status: String, log: PathBuf, tail: String },
    #[error(
        "the agent of {host} (pid {pid}) did not accept connections on {} within {waited:?}; last lines of {}:\n{tail}",
        socket.display(), log.display()
    )]
    AgentNotReady { host: String, pid: i32, socket: PathBuf, waited: Duration, log: PathBuf, tail: String },
    #[error("processes {pids:?} in the lab's namespaces survived SIGKILL for {waited:?}")]
    Survivors { pids: Vec<i32>, waited: Duration },
    #[error("container processes {pids:?} had not ended {waited:?} after their cgroups were removed")]
    ContainersLinger { pids: Vec<i32>, waited: Duration },
    #[error("no command given to run in {target}")]
    EmptyCommand { target: String },
    #[error("{program}: command not found in $PATH")]
    CommandNotFound { target: String, program: String },
    #[error("{program}: no such file")]
    NoSuchFile { target: String, program: String },
    #[error("{program}: cannot execute it")]
    NotExecutable {
        target: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("run {program} in {target}")]
    Exec {
        target: String,
        program: String,
        #[source]
        source: migrate_sys::process::SpawnError,
    },
    #[error("wait for {program} in {target}")]
    Wait {
        target: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tearing down lab {lab} left work undone: {}", errors.iter().map(|e| migrate_sys::error_chain(e)).collect::<Vec<_>>().join("; "))]
    Incomplete { lab: String, errors: Vec<LabError> },
}

impl LabError {
    /// The exit status for this error: as a shell would, 127 for a command that is not
    /// found and 126 for one that cannot be executed; 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            LabError::CommandNotFound { .. } | LabError::NoSuchFile { .. } => 127,
            LabError::NotExecutable { .. } => 126,
            _ => 1,
        }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> LabError {
        let path = path.into();
        move |source| LabError::Io { what, path, source }
    }

    pub(crate) fn net(step: impl Into<String>) -> impl FnOnce(NetError) -> LabError {
        let step = step.into();
        move |source| LabError::Net { step, source }
    }
}
