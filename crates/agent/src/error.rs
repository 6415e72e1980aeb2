//! The agent's errors: each variant names the container, field or file it concerns;
//! the server turns them into HTTP statuses and `ErrorBody`s.

use std::path::PathBuf;

/// A failure of an agent operation.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no container named {0:?} on this host")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("container {name}: {op}")]
    Container {
        name: String,
        op: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{cause} (and cleaning up failed: {})", cleanup.join("; "))]
    Rollback { cause: Box<AgentError>, cleanup: Vec<String> },
    #[error(transparent)]
    Cgroup(#[from] migrate_cgroup::CgroupError),
}

impl AgentError {
    /// An error about one container, keeping its cause.
    pub fn container(
        name: &str,
        op: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> AgentError {
        AgentError::Container { name: name.to_string(), op: op.into(), source: source.into() }
    }

    /// The error kind as the API reports it.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::NotFound(_) => "not_found",
            AgentError::Conflict(_) => "conflict",
            AgentError::Invalid { .. } => "invalid",
            AgentError::Rollback { cause, .. } => cause.kind(),
            _ => "internal",
        }
    }
}

/// An I/O error with the operation and path it concerned.
pub fn io_err<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> AgentError + 'a {
    move |source| AgentError::Io { op, path: path.to_path_buf(), source }
}
