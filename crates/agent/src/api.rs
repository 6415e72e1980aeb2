//! The agent's local API: the JSON types that travel over its unix socket.
//!
//! Documented for users in `docs/api.md`; the CLI is a thin client of these types.

use std::path::PathBuf;

use migrate_cgroup::{AppliedLimit, Cgroup};
use serde::{Deserialize, Serialize};

/// `POST /v1/containers`: start a container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRequest {
    /// Unique across the lab; generated when absent.
    pub name: Option<String>,
    /// `10.77.1.10` or `10.77.1.10/16`; a free address is taken when absent.
    pub ip: Option<String>,
    /// `02:4d:…`; derived from the IP when absent.
    pub mac: Option<String>,
    /// Memory limit in bytes.
    pub memory_max: Option<u64>,
    /// Maximum number of tasks.
    pub pids_max: Option<u64>,
    /// The program and its arguments; runs as PID 1 of the container.
    pub cmd: Vec<String>,
}

/// What a container is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Exited,
    /// Its process is gone but nobody recorded how it ended (its shim was killed).
    Unknown,
    /// Dumped to an image and gone from its host (only in `checkpoint`'s answer: the
    /// agent killed the frozen processes after the dump, which is not how they ended).
    Checkpointed,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Running => "running",
            State::Exited => "exited",
            State::Unknown => "unknown",
            State::Checkpointed => "checkpointed",
        })
    }
}

/// How a container's PID 1 ended, as its shim saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// Unix time in milliseconds.
    pub finished_ms: u64,
}

/// One container, as `GET /v1/containers[/NAME]` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub name: String,
    pub host: String,
    pub state: State,
    /// PID 1 of the container, as the host's pid namespace sees it.
    pub pid: i32,
    /// The shim that holds the container's log and reaps its PID 1.
    pub shim_pid: i32,
    pub ip: String,
    pub prefix: u8,
    pub mac: String,
    pub cmd: Vec<String>,
    /// When `run` created the container, Unix time in milliseconds; a restored container
    /// keeps the time of its first creation.
    pub created_ms: u64,
    /// Where and when it was restored, if it was.
    #[serde(default)]
    pub restored: Option<Restored>,
    pub exit: Option<ExitInfo>,
    pub limits: Vec<AppliedLimit>,
    pub cgroup: Cgroup,
    /// The host-side end of the container's veth.
    pub host_if: String,
    /// The container's stdout and stderr.
    pub log: PathBuf,
    /// What the agent found at its start and did about it, e.g. a checkpoint that was
    /// interrupted and undone.
    #[serde(default)]
    pub note: Option<String>,
}

/// Where a restored container comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// When it was restored, Unix time in milliseconds.
    pub restored_ms: u64,
    /// The image directory it was restored from.
    pub image: PathBuf,
    /// The host it was checkpointed on (empty if the image does not say).
    pub from_host: String,
    /// When it was checkpointed, Unix time in milliseconds.
    pub checkpointed_ms: u64,
}

/// `GET /v1/info`: the agent itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentInfo {
    pub host: String,
    pub version: String,
    pub pid: i32,
    pub state_dir: PathBuf,
    pub subnet: String,
    pub containers: usize,
}

/// `POST /v1/containers/NAME/stop`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StopRequest {
    /// Seconds to wait after SIGTERM before SIGKILL (default 10).
    pub timeout_s: Option<u64>,
}

/// What `stop` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StopReport {
    pub container: ContainerInfo,
    /// `SIGTERM`, `SIGKILL`, or both in order.
    pub signals: Vec<String>,
    /// Why SIGTERM was skipped or did not suffice, for the user.
    pub note: Option<String>,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `not_found`, `conflict`, `invalid`, `internal`.
    pub kind: String,
    pub message: String,
}

/// `POST /v1/containers/NAME/checkpoint`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckpointRequest {
    /// The image directory (absolute; new or empty).
    pub dir: PathBuf,
    /// Keep the container running afterwards; otherwise it is gone once the image is
    /// written, and its name, IP and MAC are free again.
    #[serde(default)]
    pub leave_running: bool,
}

/// `POST /v1/restore`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreRequest {
    /// The image directory (absolute).
    pub dir: PathBuf,
    /// A new name; the image's by default.
    pub name: Option<String>,
}

pub use migrate_engine::{CheckpointReport, RestoreReport};

/// One line of the NDJSON stream that `checkpoint` and `restore` answer with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// A phase started (`freeze`, `collect`, `memory`, …).
    Phase { phase: String },
    /// Memory bytes done of a total.
    Bytes { done: u64, total: u64 },
    /// The checkpoint is written (and the container gone, unless `leave_running`).
    Checkpointed { report: CheckpointReport, container: ContainerInfo },
    /// The restored container runs.
    Restored { report: RestoreReport, container: ContainerInfo },
    /// The operation failed; the source (for a checkpoint) runs on as before.
    Error { error: ErrorBody },
}
