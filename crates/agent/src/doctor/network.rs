//! Network: a veth pair and a TCP socket in repair mode, both inside a network namespace
//! made for the probe (the machine's own namespace is never touched). The namespace, and
//! with it every link and socket in it, disappears when the probe's handle is dropped.

use std::net::SocketAddr;
use std::os::fd::AsFd;

use migrate_net::{NetNs, VethPeer, run_in, with_netlink};
use migrate_sys::tcp::{self, RepairQueue};

use super::{Finding, Status};

const VETH: &str = "doctor0";
const PEER: &str = "doctor1";

pub(super) fn probe() -> Vec<Finding> {
    let ns = match NetNs::new_anonymous() {
        Ok(ns) => ns,
        Err(e) => {
            let detail =
                format!("could not create a network namespace to probe in: {}", migrate_sys::error_chain(&e));
            return vec![veth_failed(detail.clone()), tcp_failed(detail)];
        }
    };
    let veth = match veth(&ns) {
        Ok(detail) => Finding::ok("veth", "veth pair", detail),
        Err(detail) => veth_failed(detail),
    };
    let tcp = match run_in(&ns, tcp_repair) {
        Ok(Ok(detail)) => Finding::ok("tcp-repair", "TCP repair mode", detail),
        Ok(Err(detail)) => tcp_failed(detail),
        Err(e) => tcp_failed(migrate_sys::error_chain(&e)),
    };
    vec![veth, tcp]
}

fn veth(ns: &NetNs) -> Result<String, String> {
    let label = ns.label().to_string();
    let (index, peer_index, gone) = with_netlink(ns, |nl| async move {
        nl.lo_up().await?;
        let index = nl.create_veth(VETH, &VethPeer { name: PEER, netns: None, mac: None }).await?;
        let peer_index = nl.index(PEER).await?;
        nl.delete_link(VETH).await?;
        let gone = !nl.link_exists(PEER).await?;
        Ok((index, peer_index, gone))
    })
    .map_err(|e| migrate_sys::error_chain(&e))?;
    if !gone {
        return Err(format!("deleting {VETH} left its peer {PEER} behind"));
    }
    Ok(format!(
        "created {VETH} (index {index}) <-> {PEER} (index {peer_index}) in a new network namespace ({label}) \
         over rtnetlink, and deleted them"
    ))
}

fn veth_failed(detail: String) -> Finding {
    Finding::bad(
        Status::Fail,
        "veth",
        "veth pair",
        detail,
        "Each container reaches its host through a veth pair, recreated on the destination with the same \
         MAC and addresses: no container network can be built or moved.",
        "Run as root with CAP_NET_ADMIN and a kernel with CONFIG_VETH (`modprobe veth`).",
    )
}

/// In the probe's namespace (the calling thread is in it): a socket in repair mode gets
/// sequence numbers, is "connected" without a packet, and gives its state back.
fn tcp_repair() -> Result<String, String> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let fd = sock.as_fd();
    let e = |err: tcp::SockoptError| migrate_sys::error_chain(&err);
    tcp::set_repair(fd, true).map_err(e)?;
    tcp::set_repair_queue(fd, RepairQueue::Send).map_err(e)?;
    tcp::set_queue_seq(fd, 0x1000_0000).map_err(e)?;
    tcp::set_repair_queue(fd, RepairQueue::Recv).map_err(e)?;
    tcp::set_queue_seq(fd, 0x2000_0000).map_err(e)?;
    // Nothing listens there and nothing is sent: in repair mode connect sends no SYN.
    let peer: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9));
    tcp::connect(fd, peer).map_err(|err| migrate_sys::error_chain(&err))?;
    let recv_seq = tcp::queue_seq(fd).map_err(e)?;
    tcp::set_repair_queue(fd, RepairQueue::Send).map_err(e)?;
    let send_seq = tcp::queue_seq(fd).map_err(e)?;
    if (send_seq, recv_seq) != (0x1000_0000, 0x2000_0000) {
        return Err(format!(
            "set sequence numbers 0x10000000/0x20000000, read back {send_seq:#x}/{recv_seq:#x} after connect"
        ));
    }
    let window = tcp::repair_window(fd).map_err(e)?;
    // Closed while still in repair mode: no FIN, no RST.
    drop(sock);
    Ok(format!(
        "TCP_REPAIR on, TCP_QUEUE_SEQ set and read back after a repair-mode connect to {peer} (no packet \
         sent), TCP_REPAIR_WINDOW read (snd_wnd {}, rcv_wnd {})",
        window.snd_wnd, window.rcv_wnd
    ))
}

fn tcp_failed(detail: String) -> Finding {
    Finding::bad(
        Status::Fail,
        "tcp-repair",
        "TCP repair mode",
        detail,
        "Established TCP connections are read and rebuilt in repair mode; without it a migrated container \
         loses every open connection (its peers see a reset).",
        "Run as root with CAP_NET_ADMIN on Linux 4.8+ (TCP_REPAIR_WINDOW).",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_and_tcp_repair_in_a_new_namespace() {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIP: needs root");
            return;
        }
        let findings = probe();
        assert_eq!(findings.len(), 2);
        for f in &findings {
            assert_eq!(f.status, Status::Ok, "{f:#?}");
        }
        // Nothing appeared in the machine's own namespace.
        assert!(!std::path::Path::new("/sys/class/net/doctor0").exists());
    }
}
