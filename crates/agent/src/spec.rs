//! Checks a `RunRequest` completely before anything is created, so that bad input gives
//! one clear error and leaves nothing behind.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use migrate_cgroup::Limits;

use crate::api::RunRequest;
use crate::error::AgentError;

/// The `PATH` a container's PID 1 and `exec`ed commands get.
pub const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The address space containers take their IPs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub prefix: u8,
    /// Addresses below `reserved_below` (e.g. 10.77.1.0) belong to the lab's hosts.
    pub reserved_below: Ipv4Addr,
}

impl Subnet {
    /// Parses `10.77.0.0/16`; the first /24 is reserved for hosts.
    pub fn parse(s: &str) -> Result<Subnet, AgentError> {
        let bad = |reason: &str| AgentError::Invalid { field: "subnet", reason: format!("{s:?}: {reason}") };
        let (ip, prefix) = s.split_once('/').ok_or_else(|| bad("expected ADDRESS/PREFIX"))?;
        let base: Ipv4Addr = ip.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
        if !(8..=24).contains(&prefix) {
            return Err(bad("prefix length must be between 8 and 24"));
        }
        let base = Ipv4Addr::from(u32::from(base) & mask(prefix));
        Ok(Subnet { base, prefix, reserved_below: Ipv4Addr::from(u32::from(base) + 256) })
    }

    /// A container address to show in examples (e.g. `10.77.1.10/16`).
    fn example(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(u32::from(self.reserved_below) + 10), self.prefix)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.base)
    }

    fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) | !mask(self.prefix))
    }

    /// The addresses containers may use, in order.
    pub fn container_range(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        (u32::from(self.reserved_below) + 1..u32::from(self.broadcast())).map(Ipv4Addr::from)
    }

    /// Checks that `ip` may be given to a container.
    pub fn check(&self, ip: Ipv4Addr) -> Result<(), AgentError> {
        let invalid = |reason: String| Err(AgentError::Invalid { field: "ip", reason });
        let net = format!("{}/{}", self.base, self.prefix);
        if !self.contains(ip) {
            return invalid(format!("{ip} is outside the network {net}"));
        }
        if u32::from(ip) <= u32::from(self.reserved_below) {
            return invalid(format!(
                "{ip} is reserved for the hosts (containers use {} to {})",
                Ipv4Addr::from(u32::from(self.reserved_below) + 1),
                Ipv4Addr::from(u32::from(self.broadcast()) - 1)
            ));
        }
        if ip == self.broadcast() {
            return invalid(format!("{ip} is the broadcast address of {net}"));
        }
        Ok(())
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// A run request that passed every check.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    /// `None`: take the first free address.
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<[u8; 6]>,
    pub limits: Limits,
    pub cmd: Vec<String>,
}

/// Validates a request against the host's subnet.
pub fn validate(req: &RunRequest, subnet: &Subnet) -> Result<Spec, AgentError> {
    let name = match &req.name {
        Some(n) => {
            check_name(n)?;
            n.clone()
        }
        None => generated_name(),
    };
    let ip = req.ip.as_deref().map(|s| parse_ip(s, subnet)).transpose()?;
    let mac = req.mac.as_deref().map(parse_mac).transpose()?;
    if let Some(m) = req.memory_max
        && m < 1 << 20
    {
        return Err(AgentError::Invalid { field: "memory-max", reason: format!("{m} bytes is below 1 MiB") });
    }
    if req.pids_max == Some(0) {
        return Err(AgentError::Invalid { field: "pids-max", reason: "must be at least 1".into() });
    }
    let Some(program) = req.cmd.first() else {
        return Err(AgentError::Invalid {
            field: "command",
            reason: "none given: put the program to run after `--`".into(),
        });
    };
    if req.cmd.iter().any(|a| a.contains('\0')) {
        return Err(AgentError::Invalid { field: "command", reason: "an argument holds a NUL byte".into() });
    }
    resolve_program(program)?;
    Ok(Spec {
        name,
        ip,
        mac,
        limits: Limits { memory_max: req.memory_max, pids_max: req.pids_max },
        cmd: req.cmd.clone(),
    })
}

/// Names become file names, cgroup names and hostnames: keep them to what all accept.
pub fn check_name(name: &str) -> Result<(), AgentError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(AgentError::Invalid {
            field: "name",
            reason: format!(
                "{name:?}: use 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"
            ),
        })
    }
}

fn generated_name() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("c{:06x}", (nanos ^ std::process::id().rotate_left(16)) & 0xff_ffff)
}

fn parse_ip(s: &str, subnet: &Subnet) -> Result<Ipv4Addr, AgentError> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let form = || {
        format!(
            "expected an IPv4 address, optionally with the prefix length /{}, e.g. {}",
            subnet.prefix,
            subnet.example()
        )
    };
    let ip: Ipv4Addr = addr.parse().map_err(|_| AgentError::Invalid {
        field: "ip",
        reason: format!("{s:?} is not an IPv4 address: {}", form()),
    })?;
    match prefix.map(|p| (p, p.parse::<u8>())) {
        Some((p, Ok(n))) if n != subnet.prefix => {
            return Err(AgentError::Invalid {
                field: "ip",
                reason: format!(
                    "{s:?}: prefix /{p} is not the one of this host's network {}/{} (give {ip} or {ip}/{})",
                    subnet.base, subnet.prefix, subnet.prefix
                ),
            });
        }
        Some((_, Err(_))) => {
            return Err(AgentError::Invalid { field: "ip", reason: format!("{s:?}: {}", form()) });
        }
        _ => {}
    }
    subnet.check(ip)?;
    Ok(ip)
}

/// Parses `aa:bb:cc:dd:ee:ff`; refuses multicast and all-zero addresses.
pub fn parse_mac(s: &str) -> Result<[u8; 6], AgentError> {
    let bad = |reason: &str| AgentError::Invalid { field: "mac", reason: format!("{s:?}: {reason}") };
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad("expected six hex bytes separated by ':'"));
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(bad("expected six hex bytes separated by ':'"));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad("not hexadecimal"))?;
    }
    if mac[0] & 1 == 1 {
        return Err(bad("a multicast address cannot belong to one interface"));
    }
    if mac == [0; 6] {
        return Err(bad("the all-zero address is not valid"));
    }
    Ok(mac)
}

/// A locally administered MAC derived from the IP, so it is unique when the IP is.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x4d, o[0], o[1], o[2], o[3]]
}

/// The MACs a container with address `ip` may get when none was asked for, best first:
/// [`mac_for`], then 63 more that end in the IP too but differ in the first byte (every
/// one locally administered and unicast: `x2`, `x6`, `xa`, `xe`). Since the IP is unique,
/// these never collide with another container's derived MACs — only with a MAC a user
/// chose by hand, which is what the fallbacks are for.
pub fn macs_for(ip: Ipv4Addr) -> impl Iterator<Item = [u8; 6]> {
    let derived = mac_for(ip);
    (0u8..64).map(move |k| {
        let mut mac = derived;
        mac[0] = 0x02 | (k << 2);
        mac
    })
}

/// Finds the program as the container will (same filesystem, the container's `PATH`),
/// so that a typo is reported before anything is created.
fn resolve_program(program: &str) -> Result<PathBuf, AgentError> {
    let not_found = |reason: String| AgentError::Invalid { field: "command", reason };
    let is_exec = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = PathBuf::from(program);
        if !p.is_absolute() {
            return Err(not_found(format!("{program:?}: give an absolute path (the container starts in /)")));
        }
        return if is_exec(&p) {
            Ok(p)
        } else {
            Err(not_found(format!("{program}: no such executable file")))
        };
    }
    CONTAINER_PATH.split(':').map(|d| Path::new(d).join(program)).find(|p| is_exec(p)).ok_or_else(|| {
        not_found(format!("{program}: command not found in the container's PATH ({CONTAINER_PATH})"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use migrate_net::format_mac;

    fn req(cmd: &[&str]) -> RunRequest {
        RunRequest {
            name: Some("web".into()),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn subnet() -> Subnet {
        Subnet::parse("10.77.0.0/16").unwrap_or_else(|e| panic!("{e}"))
    }

    fn err_of(r: Result<Spec, AgentError>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn accepts_good_requests() -> Result<(), AgentError> {
        let mut r = req(&["sleep", "1"]);
        r.ip = Some("10.77.1.10/16".into());
        let spec = validate(&r, &subnet())?;
        assert_eq!(spec.ip, Some(Ipv4Addr::new(10, 77, 1, 10)));
        assert_eq!(format_mac(&mac_for(Ipv4Addr::new(10, 77, 1, 10))), "02:4d:0a:4d:01:0a");
        assert!(
            validate(&RunRequest { name: None, ..req(&["/bin/true"]) }, &subnet())?.name.starts_with('c')
        );
        Ok(())
    }

    #[test]
    fn refuses_bad_requests() {
        let s = subnet();
        assert!(err_of(validate(&req(&[]), &s)).contains("none given: put the program to run after `--`"));
        assert!(err_of(validate(&req(&["no-such-program-xyz"]), &s)).contains("command not found"));
        assert!(err_of(validate(&req(&["./rel"]), &s)).contains("absolute path"));
        for (ip, why) in [
            ("10.78.1.1", "outside the network 10.77.0.0/16"),
            ("10.77.0.11", "reserved for the hosts"),
            ("10.77.255.255", "broadcast"),
            ("10.77.1.1/24", "prefix /24"),
            ("10.77.1.53/", "e.g. 10.77.1.10/16"),
            ("banana", "not an IPv4 address"),
        ] {
            let r = RunRequest { ip: Some(ip.into()), ..req(&["true"]) };
            let e = err_of(validate(&r, &s));
            assert!(e.contains(why), "{ip}: {e}");
        }
        for mac in ["01:00:00:00:00:01", "00:00:00:00:00:00", "zz:00:00:00:00:01", "02:00"] {
            assert!(validate(&RunRequest { mac: Some(mac.into()), ..req(&["true"]) }, &s).is_err(), "{mac}");
        }
        for name in ["", "-x", "a/b", "a b", &"x".repeat(64)] {
            assert!(
                validate(&RunRequest { name: Some(name.to_string()), ..req(&["true"]) }, &s).is_err(),
                "{name}"
            );
        }
    }

    #[test]
    fn fallback_macs_are_distinct_unicast_and_local() {
        let ip = Ipv4Addr::new(10, 77, 1, 200);
        let macs: Vec<[u8; 6]> = macs_for(ip).collect();
        assert_eq!(macs[0], mac_for(ip));
        assert_eq!(macs.len(), 64);
        let mut sorted = macs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 64);
        for m in &macs {
            assert_eq!(m[0] & 0b11, 0b10, "{}", format_mac(m));
            assert_eq!(m[2..], ip.octets());
            assert!(parse_mac(&format_mac(m)).is_ok());
        }
        // Never another IP's derived MAC.
        assert!(!macs[1..].contains(&mac_for(Ipv4Addr::new(10, 77, 1, 201))));
    }

    #[test]
    fn range() {
        let s = subnet();
        assert_eq!(s.container_range().next(), Some(Ipv4Addr::new(10, 77, 1, 1)));
        assert_eq!(s.container_range().last(), Some(Ipv4Addr::new(10, 77, 255, 254)));
    }
}
