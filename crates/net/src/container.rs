//! A container's link to its host: one veth pair, the host end on the host's bridge, the
//! container end `eth0` in the container's namespace with the container's MAC and IP.
//!
//! The MAC and IP are the container's identity (design §7): they are set on `eth0` at
//! creation, so the same container restored on another host (bridged onto the same LAN)
//! answers on the same addresses. The peer is created directly in the container's
//! namespace, so it never exists in the host's, even for a moment.
//!
//! [`attach_container`] is all-or-nothing: if a step fails after the pair exists, the
//! host end is deleted (which deletes both ends), and a failure of that cleanup travels
//! with the original error ([`NetError::Rollback`]).

use std::net::Ipv4Addr;

use crate::{NetError, NetNs, Netlink, VethPeer, validate_ifname, with_netlink};

/// The name of the container end of the pair.
pub const CONTAINER_IF: &str = "eth0";

/// How a container is linked to its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLink {
    /// The host end of the veth (at most 15 bytes).
    pub host_if: String,
    /// The host bridge the host end is enslaved to.
    pub bridge: String,
    /// The container's address on `eth0`.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The MAC of `eth0`.
    pub mac: [u8; 6],
}

/// In the caller's current netns (the host's): create veth `host_if` (<=15 chars)
/// enslaved to `bridge` and up; its peer goes into `container`, named `eth0`, with `mac`,
/// `ip/prefix`, up; `lo` up in `container`. On failure, deletes what it created.
pub fn attach_container(container: &NetNs, link: &ContainerLink) -> Result<(), NetError> {
    validate_ifname(&link.host_if)?;
    if link.prefix > 32 {
        return Err(NetError::InvalidArgument { what: "IPv4 prefix length", value: link.prefix.to_string() });
    }
    let host = NetNs::current()?;
    if host.inode() == container.inode() {
        return Err(NetError::InvalidArgument {
            what: "container network namespace",
            value: format!("{} is the caller's own namespace", container.label()),
        });
    }
    with_netlink(&host, async |nl: Netlink| {
        if nl.link_exists(&link.host_if).await? {
            return Err(NetError::LinkExists { link: link.host_if.clone(), ns: nl.netns().to_string() });
        }
        // Fail before creating anything if the bridge is missing.
        nl.index(&link.bridge).await?;
        let peer = VethPeer { name: CONTAINER_IF, netns: Some(container), mac: Some(link.mac) };
        nl.create_veth(&link.host_if, &peer).await?;
        Ok(())
    })?;
    let configured = configure_container_end(container, link).and_then(|()| {
        with_netlink(&host, async |nl: Netlink| {
            nl.set_master(&link.host_if, &link.bridge).await?;
            nl.set_up(&link.host_if).await
        })
    });
    if let Err(failure) = configured {
        let undo = with_netlink(&host, async |nl: Netlink| nl.delete_link_if_exists(&link.host_if).await);
        return Err(match undo {
            Ok(_) => failure,
            Err(cleanup) => NetError::Rollback { failure: Box::new(failure), cleanup: Box::new(cleanup) },
        });
    }
    tracing::debug!(
        host_if = %link.host_if, bridge = %link.bridge, ip = %link.ip, netns = container.label(),
        "attached container link"
    );
    Ok(())
}

/// Delete the host-side veth `host_if` in the caller's current netns if it still exists
/// (its peer goes with it); fine if it is already gone.
pub fn detach_container(host_if: &str) -> Result<(), NetError> {
    validate_ifname(host_if)?;
    let host = NetNs::current()?;
    let removed = with_netlink(&host, async |nl: Netlink| nl.delete_link_if_exists(host_if).await)?;
    tracing::debug!(host_if, removed, "detached container link");
    Ok(())
}

fn configure_container_end(container: &NetNs, link: &ContainerLink) -> Result<(), NetError> {
    with_netlink(container, async |nl: Netlink| {
        nl.add_ipv4(CONTAINER_IF, link.ip, link.prefix).await?;
        nl.set_up(CONTAINER_IF).await?;
        nl.lo_up().await
    })
}
