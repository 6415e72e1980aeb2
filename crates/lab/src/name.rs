//! Lab names and the naming scheme derived from them: namespaces, directories, cgroups,
//! addresses.
//!
//! Everything a lab creates is named from its [`LabName`] alone, so that `down` can find
//! a lab's pieces after a crash even when `lab.json` is gone. The default lab keeps the
//! short names users type (`host-a`, `client`, `migrate-lan`); any other lab `L` prefixes
//! them (`L-host-a`, `L-client`, `L-lan`), so several labs (parallel tests) can coexist,
//! each with its own LAN namespace and therefore the same 10.77 addresses.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::LabError;

/// Where labs keep their state (a tmpfs: a reboot clears it, as it clears namespaces).
pub const LABS_DIR: &str = "/run/migrate/labs";
/// The environment variable naming the lab to use.
pub const LAB_ENV: &str = "MIGRATE_LAB";
/// The most hosts a lab can have (`host-a` … `host-z`).
pub const MAX_HOSTS: usize = 26;
/// The lab's LAN.
pub const SUBNET: &str = "10.77.0.0/16";
/// The prefix length of every lab address.
pub const PREFIX: u8 = 16;
/// The client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The bridge in the LAN namespace.
pub const LAN_BRIDGE: &str = "lan0";
/// The bridge in each host namespace (containers' veths are enslaved to it).
pub const HOST_BRIDGE: &str = "br0";
/// A host's end of its link to the LAN.
pub const UPLINK: &str = "uplink";
/// The client's end of its link to the LAN.
pub const CLIENT_IF: &str = "eth0";

/// A validated lab name: `[a-z0-9]{1,8}`; `default` is the lab users get without asking.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabName(String);

impl LabName {
    /// The name of the default lab.
    pub const DEFAULT: &'static str = "default";

    /// Validates `name`.
    pub fn new(name: &str) -> Result<LabName, LabError> {
        let invalid = |reason| Err(LabError::InvalidName { name: name.to_string(), reason });
        if name.is_empty() || name.len() > 8 {
            return invalid("must be 1 to 8 characters");
        }
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return invalid("only a-z and 0-9 are allowed");
        }
        if name == "migrate" {
            // Its LAN namespace would be `migrate-lan`, the default lab's.
            return invalid("reserved (it would collide with the default lab)");
        }
        Ok(LabName(name.to_string()))
    }

    /// The default lab.
    pub fn default_lab() -> LabName {
        LabName(LabName::DEFAULT.to_string())
    }

    /// The lab named by `$MIGRATE_LAB`, or the default lab if it is unset or empty.
    pub fn from_env_or_default() -> Result<LabName, LabError> {
        match std::env::var(LAB_ENV) {
            Ok(name) if !name.is_empty() => LabName::new(&name),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(LabName::default_lab()),
            Err(std::env::VarError::NotUnicode(raw)) => {
                Err(LabError::InvalidName { name: raw.to_string_lossy().into_owned(), reason: "not UTF-8" })
            }
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the default lab (whose names carry no prefix).
    pub fn is_default(&self) -> bool {
        self.0 == LabName::DEFAULT
    }

    fn prefixed(&self, base: &str) -> String {
        if self.is_default() { base.to_string() } else { format!("{}-{base}", self.0) }
    }

    /// The namespace of host `host` (`host-a` → `host-a` or `L-host-a`).
    pub fn host_netns(&self, host: &str) -> String {
        self.prefixed(host)
    }

    /// The client's namespace.
    pub fn client_netns(&self) -> String {
        self.prefixed("client")
    }

    /// The namespace holding the LAN bridge.
    pub fn lan_netns(&self) -> String {
        if self.is_default() { "migrate-lan".to_string() } else { format!("{}-lan", self.0) }
    }

    /// Every namespace name this lab may own, for every possible host.
    pub fn all_netns(&self) -> Vec<String> {
        let mut names: Vec<String> = (0..MAX_HOSTS).map(|i| self.host_netns(&host_name(i))).collect();
        names.push(self.client_netns());
        names.push(self.lan_netns());
        names
    }

    /// Whether `netns` is a name this lab's scheme produces.
    pub fn owns_netns(&self, netns: &str) -> bool {
        self.all_netns().iter().any(|n| n == netns)
    }

    /// `/run/migrate/labs/<lab>`.
    pub fn dir(&self) -> PathBuf {
        PathBuf::from(LABS_DIR).join(&self.0)
    }

    /// `/run/migrate/labs/<lab>.lock`, the flock serializing `up` and `down`.
    pub fn lock_path(&self) -> PathBuf {
        PathBuf::from(LABS_DIR).join(format!("{}.lock", self.0))
    }

    /// The cgroup (relative to each hierarchy's root) under which the agent of `host`
    /// puts its containers: `migrate/<host netns>`.
    pub fn cgroup_parent(&self, host: &str) -> String {
        format!("migrate/{}", self.host_netns(host))
    }
}

impl fmt::Display for LabName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for LabName {
    type Err = LabError;

    fn from_str(s: &str) -> Result<LabName, LabError> {
        LabName::new(s)
    }
}

impl TryFrom<String> for LabName {
    type Error = LabError;

    fn try_from(s: String) -> Result<LabName, LabError> {
        LabName::new(&s)
    }
}

impl From<LabName> for String {
    fn from(name: LabName) -> String {
        name.0
    }
}

/// The name of host number `index` (0 → `host-a`). `index` must be below [`MAX_HOSTS`].
pub fn host_name(index: usize) -> String {
    let letter = b"abcdefghijklmnopqrstuvwxyz".get(index).copied().unwrap_or(b'z');
    format!("host-{}", letter as char)
}

/// The address of host number `index` (0 → 10.77.0.11).
pub fn host_ip(index: usize) -> Ipv4Addr {
    let last = 11 + u8::try_from(index.min(MAX_HOSTS - 1)).unwrap_or(0);
    Ipv4Addr::new(10, 77, 0, last)
}

/// The LAN-side end of the veth to `peer` (`host-a` → `h-host-a`).
pub fn lan_port(peer: &str) -> String {
    format!("h-{peer}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_validate() {
        assert!(LabName::new("default").is_ok());
        assert!(LabName::new("tl1234").is_ok());
        for bad in ["", "toolong12", "Abc", "a-b", "a b", "migrate"] {
            assert!(LabName::new(bad).is_err(), "{bad:?} accepted");
        }
        let err = LabName::new("Lab").expect_err("uppercase");
        assert!(err.to_string().contains("a-z"), "{err}");
    }

    #[test]
    fn scheme_of_default_and_other_labs() {
        let d = LabName::default_lab();
        assert_eq!(d.host_netns("host-a"), "host-a");
        assert_eq!(d.client_netns(), "client");
        assert_eq!(d.lan_netns(), "migrate-lan");
        assert_eq!(d.cgroup_parent("host-b"), "migrate/host-b");
        let l = LabName::new("t1").expect("valid");
        assert_eq!(l.host_netns("host-a"), "t1-host-a");
        assert_eq!(l.client_netns(), "t1-client");
        assert_eq!(l.lan_netns(), "t1-lan");
        assert_eq!(l.dir(), PathBuf::from("/run/migrate/labs/t1"));
        assert_eq!(l.lock_path(), PathBuf::from("/run/migrate/labs/t1.lock"));
        assert!(l.owns_netns("t1-host-z") && l.owns_netns("t1-lan"));
        assert!(!l.owns_netns("t12-host-a") && !l.owns_netns("host-a"));
        assert!(d.owns_netns("host-c") && !d.owns_netns("t1-host-c"));
        // No two labs share a namespace name.
        let other = LabName::new("t12").expect("valid");
        assert!(l.all_netns().iter().all(|n| !other.owns_netns(n) && !d.owns_netns(n)));
    }

    #[test]
    fn hosts_and_addresses() {
        assert_eq!(host_name(0), "host-a");
        assert_eq!(host_name(25), "host-z");
        assert_eq!(host_ip(0), Ipv4Addr::new(10, 77, 0, 11));
        assert_eq!(host_ip(1), Ipv4Addr::new(10, 77, 0, 12));
        assert_eq!(host_ip(25), Ipv4Addr::new(10, 77, 0, 36));
        assert_eq!(lan_port("host-a"), "h-host-a");
        assert!(lan_port("client").len() <= 15);
    }
}
