//! TCP and UDP sockets, IPv4 and IPv6.
//!
//! Not carried yet: every one is refused, named as `/proc/PID/net` shows it.

use std::os::fd::OwnedFd;

use super::{Classified, FdSeen};
use crate::error::EngineError;

pub fn dump(seen: &FdSeen<'_>, _sock: &OwnedFd) -> Result<Classified, EngineError> {
    let ino = seen.link.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')).unwrap_or("");
    Ok(Err(format!("{} ({}): not supported yet", describe_socket(seen.pid, ino), seen.link)))
}

/// What kind of socket inode `ino` of `pid` is, from the process's own `/proc/PID/net`
/// tables (its network namespace's): e.g. "a TCP socket listening on 0.0.0.0:80".
pub fn describe_socket(pid: i32, ino: &str) -> String {
    const STATES: [&str; 12] = [
        "",
        "connected to",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "closed",
        "CLOSE_WAIT",
        "LAST_ACK",
        "listening on",
        "CLOSING",
    ];
    for (table, proto) in [("tcp", "TCP"), ("tcp6", "TCP"), ("udp", "UDP"), ("udp6", "UDP")] {
        let text = crate::error::read_proc(pid, &format!("net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(9) != Some(&ino) {
                continue;
            }
            let local = f.get(1).map_or_else(String::new, |a| hex_addr(a));
            let remote = f.get(2).map_or_else(String::new, |a| hex_addr(a));
            let state = f.get(3).and_then(|s| usize::from_str_radix(s, 16).ok()).unwrap_or(0);
            return match (proto, state) {
                ("TCP", 10) => format!("a TCP socket listening on {local}"),
                ("TCP", 1) => format!("a TCP connection {local} ↔ {remote}"),
                ("TCP", s) => format!("a TCP socket {local} ({})", STATES.get(s).unwrap_or(&"?")),
                _ => format!("a UDP socket on {local}"),
            };
        }
    }
    if crate::error::read_proc(pid, "net/unix")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(6) == Some(ino))
    {
        return "a unix socket".into();
    }
    "a socket".into()
}

/// `0100007F:0050` (IPv4, hex port) as `127.0.0.1:80`; IPv6 as `[::1]:80`. The kernel
/// prints each 32-bit word of an address as a host-order (little-endian) number, so the
/// bytes of each 8-digit group come reversed.
fn hex_addr(a: &str) -> String {
    let Some((ip, port)) = a.split_once(':') else { return a.to_string() };
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    let words: Option<Vec<[u8; 4]>> = (0..ip.len() / 8)
        .map(|i| ip.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()).map(u32::to_le_bytes))
        .collect();
    match (ip.len(), words) {
        (8, Some(w)) => format!("{}:{port}", std::net::Ipv4Addr::from(w[0])),
        (32, Some(w)) => {
            let bytes: [u8; 16] = std::array::from_fn(|i| w[i / 4][i % 4]);
            format!("[{}]:{port}", std::net::Ipv6Addr::from(bytes))
        }
        _ => format!("[{ip}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_read_as_people_write_them() {
        assert_eq!(hex_addr("0100007F:0050"), "127.0.0.1:80");
        assert_eq!(hex_addr("00000000:1F90"), "0.0.0.0:8080");
        assert_eq!(hex_addr("00000000000000000000000000000000:18EB"), "[::]:6379");
        assert_eq!(hex_addr("00000000000000000000000001000000:0050"), "[::1]:80");
        assert_eq!(hex_addr("0000000000000000FFFF00000100007F:0016"), "[::ffff:127.0.0.1]:22");
        assert_eq!(hex_addr("B80D0120000000000000000001000000:01BB"), "[2001:db8::1]:443");
    }
}
