//! `migrate-net`: network namespaces, bridges, veths, addresses and MACs over rtnetlink.
//!
//! It owns everything the project does to the network: the lab's simulated hosts and
//! LAN (design §9) and the containers' links (design §7). It never shells out to `ip`;
//! it talks rtnetlink on sockets created *inside* the target namespace by a helper thread
//! (see [`netlink`]), and it never changes the caller's own namespace — a thread that
//! enters another namespace is always a short-lived one made for that purpose.
//!
//! - [`NetNs`]: an owned handle on a namespace; `/run/netns` registration like
//!   `ip netns add/del`.
//! - [`with_netlink`] and [`Netlink`]: link and address operations inside one namespace.
//! - [`attach_container`] / [`detach_container`]: the container veth contract used by the
//!   agent.

pub mod container;
mod error;
pub mod netlink;
pub mod netns;

pub use container::{CONTAINER_IF, ContainerLink, attach_container, detach_container};
pub use error::NetError;
pub use netlink::{LinkState, MAX_IFNAME_LEN, Netlink, VethPeer, format_mac, validate_ifname, with_netlink};
pub use netns::{NETNS_RUN_DIR, NetNs, netns_inode_of_pid, registered_path, run_in};
