//! Link and address operations over rtnetlink, bound to one network namespace.
//!
//! A netlink socket acts on the namespace it was *created* in, so [`with_netlink`]
//! creates it on a thread that has entered the target namespace ([`crate::run_in`]),
//! with a current-thread tokio runtime of its own. That makes it usable both from sync
//! code and from inside the agent's runtime (the caller's thread only blocks; no runtime
//! is nested on it), and makes it impossible for an operation meant for a lab namespace
//! to land in the machine's own.
//!
//! The operations on [`Netlink`] take interface *names* and resolve them to indexes
//! first, so that a missing link is reported as [`NetError::NoSuchLink`] with its name
//! rather than as a bare `ENODEV`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::{NetError, NetNs, run_in};

/// `IFNAMSIZ - 1`: the longest interface name the kernel accepts.
pub const MAX_IFNAME_LEN: usize = 15;

/// Runs `f` with a [`Netlink`] whose socket lives in `ns`, on a dedicated thread, and
/// returns its result.
///
/// Blocks the calling thread until `f` completes. From async code this is allowed (the
/// work runs on its own thread and runtime), but prefer `tokio::task::spawn_blocking`
/// on a busy runtime.
pub fn with_netlink<T, F, Fut>(ns: &NetNs, f: F) -> Result<T, NetError>
where
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: Future<Output = Result<T, NetError>>,
    T: Send,
{
    let label = ns.label().to_string();
    run_in(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| NetError::Runtime { ns: label.clone(), source })?;
        rt.block_on(async move {
            let (connection, handle, _) = rtnetlink::new_connection()
                .map_err(|source| NetError::Socket { ns: label.clone(), source })?;
            let driver = tokio::spawn(connection);
            let result = f(Netlink { handle, ns: label }).await;
            driver.abort();
            result
        })
    })?
}

/// The far end of a veth pair being created.
#[derive(Debug, Clone, Copy)]
pub struct VethPeer<'a> {
    /// The peer's name (in its own namespace).
    pub name: &'a str,
    /// Create the peer directly in this namespace (`IFLA_NET_NS_FD` on the peer), so that
    /// it never exists anywhere else; `None`: beside the first end.
    pub netns: Option<&'a NetNs>,
    /// The peer's MAC address; `None`: random.
    pub mac: Option<[u8; 6]>,
}

/// What [`Netlink::link`] reports about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    /// `IFF_UP` (administratively up).
    pub up: bool,
    /// The index of the bridge (or other controller) the link is enslaved to.
    pub master: Option<u32>,
    pub mac: Option<[u8; 6]>,
}

/// An rtnetlink connection inside one namespace; see [`with_netlink`].
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    ns: String,
}

impl Netlink {
    /// The label of the namespace this connection acts on.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// The index of link `name`, or `None` if there is no such link.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetError> {
        Ok(self.link(name).await?.map(|l| l.index))
    }

    /// Whether link `name` exists.
    pub async fn link_exists(&self, name: &str) -> Result<bool, NetError> {
        Ok(self.link_index(name).await?.is_some())
    }

    /// The state of link `name`, or `None` if there is no such link.
    pub async fn link(&self, name: &str) -> Result<Option<LinkState>, NetError> {
        validate_ifname(name)?;
        let mut stream = self.handle.link().get().match_name(name.to_string()).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_state(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno_of(&e) == Some(nix::libc::ENODEV) => Ok(None),
            Err(e) => Err(self.err("look up link", name, e)),
        }
    }

    /// The names of every link in the namespace.
    pub async fn link_names(&self) -> Result<Vec<String>, NetError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.err("list links", "(all)", e))?;
        Ok(msgs.iter().map(|m| link_state(m).name).collect())
    }

    /// The index of link `name`; [`NetError::NoSuchLink`] if it does not exist.
    pub async fn index(&self, name: &str) -> Result<u32, NetError> {
        self.link_index(name)
            .await?
            .ok_or_else(|| NetError::NoSuchLink { link: name.to_string(), ns: self.ns.clone() })
    }

    /// Creates bridge `name`, administratively up.
    pub async fn create_bridge(&self, name: &str) -> Result<u32, NetError> {
        validate_ifname(name)?;
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(|e| self.err("create bridge", name, e))?;
        self.index(name).await
    }

    /// Creates the veth pair `name` ↔ `peer.name`. `name` is created here; the peer
    /// directly in `peer.netns` if given. Both ends start down.
    pub async fn create_veth(&self, name: &str, peer: &VethPeer<'_>) -> Result<u32, NetError> {
        validate_ifname(name)?;
        validate_ifname(peer.name)?;
        let mut peer_msg = LinkUnspec::new_with_name(peer.name);
        if let Some(ns) = peer.netns {
            // The fd stays open for the whole request: `peer` borrows the NetNs.
            peer_msg = peer_msg.setns_by_fd(ns.as_fd().as_raw_fd());
        }
        if let Some(mac) = peer.mac {
            peer_msg = peer_msg.address(mac.to_vec());
        }
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        let what = match peer.netns {
            Some(ns) => format!("{name} (peer {} in network namespace {})", peer.name, ns.label()),
            None => format!("{name} (peer {})", peer.name),
        };
        self.handle.link().add(msg).execute().await.map_err(|e| self.err("create veth", &what, e))?;
        self.index(name).await
    }

    /// Enslaves `link` to bridge `bridge` (`ip link set LINK master BRIDGE`).
    pub async fn set_master(&self, link: &str, bridge: &str) -> Result<(), NetError> {
        let master = self.index(bridge).await?;
        let index = self.index(link).await?;
        let what = format!("{link} (master {bridge})");
        self.set(LinkUnspec::new_with_index(index).controller(master).build(), "set master of", &what).await
    }

    /// Brings `link` administratively up.
    pub async fn set_up(&self, link: &str) -> Result<(), NetError> {
        let index = self.index(link).await?;
        self.set(LinkUnspec::new_with_index(index).up().build(), "bring up", link).await
    }

    /// Brings the loopback device up.
    pub async fn lo_up(&self) -> Result<(), NetError> {
        self.set_up("lo").await
    }

    /// Sets the MAC address of `link`.
    pub async fn set_mac(&self, link: &str, mac: [u8; 6]) -> Result<(), NetError> {
        let index = self.index(link).await?;
        let what = format!("{link} (to {})", format_mac(&mac));
        self.set(LinkUnspec::new_with_index(index).address(mac.to_vec()).build(), "set MAC of", &what).await
    }

    /// Renames `link` to `new_name`. The kernel refuses (`EBUSY`) while the link is up.
    pub async fn rename(&self, link: &str, new_name: &str) -> Result<(), NetError> {
        validate_ifname(new_name)?;
        let index = self.index(link).await?;
        let what = format!("{link} (to {new_name})");
        self.set(LinkUnspec::new_with_index(index).name(new_name.to_string()).build(), "rename", &what).await
    }

    /// Moves `link` into namespace `to` (it disappears from this one).
    pub async fn move_to(&self, link: &str, to: &NetNs) -> Result<(), NetError> {
        let index = self.index(link).await?;
        let what = format!("{link} (to network namespace {})", to.label());
        let msg = LinkUnspec::new_with_index(index).setns_by_fd(to.as_fd().as_raw_fd()).build();
        self.set(msg, "move", &what).await
    }

    /// Adds `addr/prefix` to `link`.
    pub async fn add_ipv4(&self, link: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        if prefix > 32 {
            return Err(NetError::InvalidArgument { what: "IPv4 prefix length", value: prefix.to_string() });
        }
        let index = self.index(link).await?;
        self.handle
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .execute()
            .await
            .map_err(|e| self.err("add address to", &format!("{link} ({addr}/{prefix})"), e))
    }

    /// The IPv4 addresses (with prefix lengths) of `link`.
    pub async fn ipv4_addrs(&self, link: &str) -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
        let index = self.index(link).await?;
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.err("list addresses of", link, e))?;
        let mut out = Vec::new();
        for msg in msgs.iter().filter(|m| m.header.index == index) {
            for attr in &msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(a)) = attr {
                    out.push((*a, msg.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Deletes `link` (for a veth, both ends go).
    pub async fn delete_link(&self, link: &str) -> Result<(), NetError> {
        let index = self.index(link).await?;
        self.handle.link().del(index).execute().await.map_err(|e| self.err("delete link", link, e))
    }

    /// Deletes `link` if it exists; returns whether it did.
    pub async fn delete_link_if_exists(&self, link: &str) -> Result<bool, NetError> {
        let Some(index) = self.link_index(link).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            // Gone between the lookup and the delete (its peer's namespace died).
            Err(e) if errno_of(&e) == Some(nix::libc::ENODEV) => Ok(false),
            Err(e) => Err(self.err("delete link", link, e)),
        }
    }

    async fn set(&self, msg: LinkMessage, op: &'static str, what: &str) -> Result<(), NetError> {
        self.handle.link().set(msg).execute().await.map_err(|e| self.err(op, what, e))
    }

    fn err(&self, op: &'static str, link: &str, source: rtnetlink::Error) -> NetError {
        NetError::Netlink { op, link: link.to_string(), ns: self.ns.clone(), source: Box::new(source) }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A name the kernel accepts for an interface (`dev_valid_name`): 1..=15 bytes, not `.`
/// or `..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), NetError> {
    let invalid = |reason| Err(NetError::InvalidName { what: "interface", name: name.into(), reason });
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return invalid("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return invalid("reserved");
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0') {
        return invalid("contains '/', ':', a NUL or whitespace");
    }
    Ok(())
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

fn link_state(msg: &LinkMessage) -> LinkState {
    let mut state = LinkState {
        index: msg.header.index,
        name: String::new(),
        up: msg.header.flags.contains(LinkFlags::Up),
        master: None,
        mac: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => state.name = n.clone(),
            LinkAttribute::Controller(m) if *m != 0 => state.master = Some(*m),
            LinkAttribute::Address(a) => state.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            _ => {}
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames() {
        assert!(validate_ifname("veth-web-1234ab").is_ok());
        assert!(validate_ifname("veth-web-1234abc").is_err());
        assert!(validate_ifname("").is_err());
        assert!(validate_ifname("a b").is_err());
        assert!(validate_ifname("a/b").is_err());
    }

    #[test]
    fn macs() {
        assert_eq!(format_mac(&[0x02, 0, 0xab, 1, 2, 0xff]), "02:00:ab:01:02:ff");
    }
}
