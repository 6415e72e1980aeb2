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

    /// Takes `value` for `owner`, or says who holds it.
    pub fn take(&self, kind: Kind, value: &str, owner: &Owner) -> Result<(), AgentError> {
        let path = self.path(kind, value);
        let parent = path.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => f.write_all(owner.0.as_bytes()).map_err(|e| {
                // An empty lease would have no owner to ever release it.
                let _ = fs::remove_file(&path);
                AgentError::Io { op: "write", path: path.clone(), source: e }
            }),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.lines().next().filter(|l| !l.is_empty()).unwrap_or("another container");
                // A name is the one lease a user picks for both run and restore.
                let what_to_do = match kind {
                    Kind::Name => {
                        format!(
                            ": choose another with --name, or remove that one first (`migrate rm {value}`)"
                        )
                    }
                    // A restore cannot pick another: the image's connections and peers know it.
                    Kind::Ip => ": a container keeps its address when it is restored; remove the one holding it first (`migrate ps` shows it), or start new containers with another --ip".into(),
                    _ => String::new(),
                };
                Err(AgentError::Conflict(format!(
                    "{} {value} is already in use (by {holder}){what_to_do}",
                    kind.noun()
                )))
            }
            Err(e) => Err(AgentError::Io { op: "create", path, source: e }),
        }
    }

    /// Gives `value` back if `owner` holds it. A lease that is gone, or that another
    /// container holds now (a stale record must never free what a live one uses), is
    /// left alone.
    pub fn release(&self, kind: Kind, value: &str, owner: &Owner) -> Result<(), AgentError> {
        let path = self.path(kind, value);
        match fs::read_to_string(&path) {
            Ok(holder) if holder == owner.0 => {}
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(AgentError::Io { op: "read", path, source: e }),
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(AgentError::Io { op: "remove", path, source: e })
            }
            _ => Ok(()),
        }
    }
}

/// Who holds a lease: one container, told apart from a later one of the same name by
/// its creation time. The first line is what a refused user is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(String);

impl Owner {
    pub fn new(name: &str, host: &str, created_ms: u64) -> Owner {
        Owner(format!("container {name} on {host}\ncreated {created_ms}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_and_released_only_by_their_owner() -> Result<(), AgentError> {
        let dir = std::env::temp_dir().join(format!("migrate-leases-{}", std::process::id()));
        let leases = Leases::new(&dir);
        let (a, b) = (Owner::new("web", "host-a", 1), Owner::new("web", "host-b", 2));
        leases.take(Kind::Name, "web", &a)?;
        let err = leases.take(Kind::Name, "web", &b).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("container name web is already in use (by container web on host-a)"), "{err}");
        assert!(err.contains("--name") && err.contains("`migrate rm web`"), "{err}");
        leases.take(Kind::Ip, "10.77.1.10", &a)?;
        let err = leases.take(Kind::Ip, "10.77.1.10", &b).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("remove the one holding it first"), "{err}");
        leases.release(Kind::Name, "web", &a)?;
        leases.release(Kind::Name, "web", &a)?;
        leases.take(Kind::Name, "web", &b)?;
        // A stale record of the first container cannot free what the second holds.
        leases.release(Kind::Name, "web", &a)?;
        assert!(leases.take(Kind::Name, "web", &a).is_err());
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
