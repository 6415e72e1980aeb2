//! What a lab is made of, as saved in `<lab dir>/lab.json`.
//!
//! [`Lab::plan`] derives the whole layout from the lab's name and host count; `lab.json`
//! only adds what cannot be derived (the agents' pids, the binary they run). A saved lab
//! whose layout differs from its plan is treated as inconsistent and rebuilt by `up`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::LabError;
use crate::name::{self, CLIENT_IP, LabName, PREFIX, SUBNET};

/// The file a lab is described by.
pub const LAB_FILE: &str = "lab.json";

/// A lab: simulated hosts, a client and the LAN joining them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lab {
    pub name: LabName,
    /// `/run/migrate/labs/<lab>`.
    pub dir: PathBuf,
    /// The namespace holding the LAN bridge.
    pub lan_netns: String,
    /// The LAN bridge (in `lan_netns`).
    pub lan_bridge: String,
    /// `10.77.0.0/16`.
    pub subnet: String,
    /// The prefix length of every lab address.
    pub prefix: u8,
    pub hosts: Vec<HostInfo>,
    pub client: ClientInfo,
    /// Shared by every agent of the lab (`--lease-dir`).
    pub lease_dir: PathBuf,
    /// The binary the agents run.
    pub migrate_bin: PathBuf,
}

/// One simulated host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `host-a`.
    pub name: String,
    /// Its network namespace (`host-a`, or `<lab>-host-a`).
    pub netns: String,
    /// Its address on `br0`.
    pub ip: Ipv4Addr,
    /// The bridge containers are attached to.
    pub bridge: String,
    /// The agent's `--state-dir`.
    pub state_dir: PathBuf,
    /// The agent's API socket.
    pub socket: PathBuf,
    /// The agent's stdout and stderr.
    pub log: PathBuf,
    /// The agent's `--cgroup-parent`.
    pub cgroup_parent: String,
    /// The agent's pid, once started.
    pub agent_pid: Option<i32>,
}

/// The client: a namespace on the LAN from which to reach containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl Lab {
    /// The layout of lab `name` with `hosts` hosts, agents not started.
    pub fn plan(name: &LabName, hosts: usize, migrate_bin: &Path) -> Lab {
        let dir = name.dir();
        let hosts = (0..hosts.min(name::MAX_HOSTS))
            .map(|i| {
                let host = name::host_name(i);
                let state_dir = dir.join(&host);
                HostInfo {
                    netns: name.host_netns(&host),
                    ip: name::host_ip(i),
                    bridge: name::HOST_BRIDGE.to_string(),
                    socket: state_dir.join("agent.sock"),
                    log: state_dir.join("agent.log"),
                    cgroup_parent: name.cgroup_parent(&host),
                    state_dir,
                    agent_pid: None,
                    name: host,
                }
            })
            .collect();
        Lab {
            name: name.clone(),
            lan_netns: name.lan_netns(),
            lan_bridge: name::LAN_BRIDGE.to_string(),
            subnet: SUBNET.to_string(),
            prefix: PREFIX,
            hosts,
            client: ClientInfo { netns: name.client_netns(), ip: CLIENT_IP },
            lease_dir: dir.join("leases"),
            migrate_bin: migrate_bin.to_path_buf(),
            dir,
        }
    }

    /// Reads the saved description of lab `name`.
    pub fn load(name: &LabName) -> Result<Lab, LabError> {
        let path = name.dir().join(LAB_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NotUp { lab: name.to_string(), path });
            }
            Err(e) => return Err(LabError::io("read", path)(e)),
        };
        serde_json::from_slice(&text).map_err(|source| LabError::Corrupt { path, source })
    }

    /// Writes `lab.json` atomically (write a temporary file, then rename).
    pub fn save(&self) -> Result<(), LabError> {
        let path = self.dir.join(LAB_FILE);
        let tmp = self.dir.join(format!(".{LAB_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self)
            .map_err(|source| LabError::Corrupt { path: path.clone(), source })?;
        std::fs::write(&tmp, text).map_err(LabError::io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(LabError::io("replace", &path))
    }

    /// Host `name`; the error lists the known hosts.
    pub fn host(&self, name: &str) -> Result<&HostInfo, LabError> {
        self.hosts.iter().find(|h| h.name == name).ok_or_else(|| LabError::UnknownHost {
            lab: self.name.to_string(),
            host: name.to_string(),
            known: self.hosts.iter().map(|h| h.name.clone()).collect(),
        })
    }

    /// The namespace of a host, or of the client for `"client"`; the error lists both.
    pub fn netns_of(&self, host_or_client: &str) -> Result<&str, LabError> {
        if host_or_client == "client" {
            return Ok(&self.client.netns);
        }
        match self.host(host_or_client) {
            Ok(host) => Ok(&host.netns),
            Err(LabError::UnknownHost { lab, host, mut known }) => {
                known.push("client".to_string());
                Err(LabError::UnknownHost { lab, host, known })
            }
            Err(e) => Err(e),
        }
    }

    /// Every namespace of the lab: the LAN, the hosts, the client.
    pub fn netns_names(&self) -> Vec<String> {
        let mut names = vec![self.lan_netns.clone()];
        names.extend(self.hosts.iter().map(|h| h.netns.clone()));
        names.push(self.client.netns.clone());
        names
    }

    /// Whether this saved lab has exactly the layout its name and host count give it
    /// (ignoring agent pids and the binary).
    pub fn matches_plan(&self) -> bool {
        let mut plan = Lab::plan(&self.name, self.hosts.len(), &self.migrate_bin);
        for (planned, saved) in plan.hosts.iter_mut().zip(&self.hosts) {
            planned.agent_pid = saved.agent_pid;
        }
        plan == *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_layout() {
        let name = LabName::new("t7").expect("valid");
        let lab = Lab::plan(&name, 2, Path::new("/usr/bin/migrate"));
        assert_eq!(lab.lan_netns, "t7-lan");
        assert_eq!(lab.hosts[1].name, "host-b");
        assert_eq!(lab.hosts[1].netns, "t7-host-b");
        assert_eq!(lab.hosts[1].ip, Ipv4Addr::new(10, 77, 0, 12));
        assert_eq!(lab.hosts[0].socket, PathBuf::from("/run/migrate/labs/t7/host-a/agent.sock"));
        assert_eq!(lab.hosts[0].cgroup_parent, "migrate/t7-host-a");
        assert_eq!(lab.client.ip, Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(lab.netns_names(), ["t7-lan", "t7-host-a", "t7-host-b", "t7-client"]);
        assert!(lab.matches_plan());

        let json = serde_json::to_string(&lab).expect("serialize");
        let back: Lab = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, lab);
        let bad = json.replace("\"t7\"", "\"T7\"");
        assert!(serde_json::from_str::<Lab>(&bad).is_err(), "lab name is validated on load");
    }

    #[test]
    fn unknown_host_lists_known_ones() {
        let lab = Lab::plan(&LabName::default_lab(), 2, Path::new("/bin/migrate"));
        let err = lab.host("host-c").expect_err("unknown");
        assert_eq!(err.to_string(), "unknown host \"host-c\" in lab default; known: host-a, host-b");
        let err = lab.netns_of("host-x").expect_err("unknown");
        assert!(err.to_string().ends_with("known: host-a, host-b, client"), "{err}");
        assert_eq!(lab.netns_of("client").expect("client"), "client");
        let mut moved = lab.clone();
        moved.hosts[0].ip = Ipv4Addr::new(10, 77, 0, 99);
        assert!(!moved.matches_plan());
    }
}
