//! Names, IPs and MACs that must be unique across every agent sharing a lease directory
//! (in the lab: all hosts). A lease is a file created with `O_EXCL`, so two agents that
//! race for the same name cannot both win, with no daemon in between. The file holds the
//! host that took it, for the error message of the loser.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::error::{AgentError, io_err};

/// The kinds of leased identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Name,
    Ip,
    Mac,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Name => "names",
            Kind::Ip => "ips",
            Kind::Mac => "macs",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Name => "container name",
            Kind::Ip => "IP address",
            Kind::Mac => "MAC address",
        }
    }
}

/// The lease directory.
#[derive(Debug, Clone)]
pub struct Leases {
    dir: PathBuf,
}

impl Leases {
    pub fn new(dir: impl Into<PathBuf>) -> Leases {
        Leases { dir: dir.into() }
    }

    fn path(&self, kind: Kind, value: &str) -> PathBuf {
        // `:` is legal in file names; `/` cannot occur in validated values.
        self.dir.join(kind.dir()).join(value)
    }

    /// Takes `value` for `host`, or says who holds it.
    pub fn take(&self, kind: Kind, value: &str, host: &str) -> Result<(), AgentError> {
        let path = self.path(kind, value);
        let parent = path.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => f.write_all(host.as_bytes()).map_err(io_err("write", &path)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                let holder = if holder.is_empty() { "another host".to_string() } else { holder };
                Err(AgentError::Conflict(format!(
                    "{} {value} is already in use (by a container on {holder})",
                    kind.noun()
                )))
            }
            Err(e) => Err(AgentError::Io { op: "create", path, source: e }),
        }
    }

    /// Gives `value` back; a lease that is already gone is fine.
    pub fn release(&self, kind: Kind, value: &str) -> Result<(), AgentError> {
        let path = self.path(kind, value);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(AgentError::Io { op: "remove", path, source: e })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_and_released() -> Result<(), AgentError> {
        let dir = std::env::temp_dir().join(format!("migrate-leases-{}", std::process::id()));
        let leases = Leases::new(&dir);
        leases.take(Kind::Name, "web", "host-a")?;
        let err = leases.take(Kind::Name, "web", "host-b").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("container name web is already in use (by a container on host-a)"), "{err}");
        leases.take(Kind::Ip, "10.77.1.10", "host-a")?;
        leases.release(Kind::Name, "web")?;
        leases.release(Kind::Name, "web")?;
        leases.take(Kind::Name, "web", "host-b")?;
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
