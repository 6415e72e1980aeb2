//! The lab's network: one namespace per host, a client namespace, and a LAN namespace
//! whose bridge joins them (design §9).
//!
//! ```text
//!  LAN netns (migrate-lan / L-lan)           host netns (host-a / L-host-a)
//!  ┌──────────────────────────────┐          ┌──────────────────────────────────┐
//!  │ lan0 ── h-host-a ════════════╪══════════╪═ uplink ── br0 10.77.0.11/16     │
//!  │   │                          │          │            └── veth-<ctr> ═ (container eth0)
//!  │   ├── h-host-b ═══ … host-b  │          └──────────────────────────────────┘
//!  │   └── h-client ══════════════╪═ eth0 10.77.0.2/16 (client netns)
//!  └──────────────────────────────┘
//! ```
//!
//! Everything is layer 2 from a container's `eth0` to the LAN bridge, so a container
//! keeps its IP and MAC when it moves host. Every veth is created in the LAN namespace
//! with its peer created directly in the host's (or client's) namespace: no link ever
//! exists in the machine's own namespace.

use migrate_net::{NetNs, Netlink, VethPeer, with_netlink};

use crate::LabError;
use crate::model::Lab;
use crate::name::{CLIENT_IF, UPLINK, lan_port};

/// Creates the lab's namespaces and links. Returns what it created, for the report.
/// On error the caller tears the half-built lab down.
pub(crate) fn build(lab: &Lab) -> Result<Vec<String>, LabError> {
    let mut created = Vec::new();
    let lan = register(&lab.lan_netns, &mut created)?;
    with_netlink(&lan, async |nl: Netlink| {
        nl.lo_up().await?;
        nl.create_bridge(&lab.lan_bridge).await
    })
    .map_err(LabError::net(format!("create bridge {} in {}", lab.lan_bridge, lab.lan_netns)))?;
    created.push(format!("bridge {} in {}", lab.lan_bridge, lab.lan_netns));

    for host in &lab.hosts {
        let ns = register(&host.netns, &mut created)?;
        plug_into_lan(lab, &lan, &ns, &host.name, UPLINK)?;
        with_netlink(&ns, async |nl: Netlink| {
            nl.lo_up().await?;
            nl.create_bridge(&host.bridge).await?;
            nl.set_master(UPLINK, &host.bridge).await?;
            nl.set_up(UPLINK).await?;
            nl.add_ipv4(&host.bridge, host.ip, lab.prefix).await
        })
        .map_err(LabError::net(format!("configure {} in {}", host.bridge, host.netns)))?;
        created.push(format!(
            "{}: {} {}/{} via {} ↔ {} on {}",
            host.netns,
            host.bridge,
            host.ip,
            lab.prefix,
            UPLINK,
            lan_port(&host.name),
            lab.lan_bridge
        ));
    }

    let client = register(&lab.client.netns, &mut created)?;
    plug_into_lan(lab, &lan, &client, "client", CLIENT_IF)?;
    with_netlink(&client, async |nl: Netlink| {
        nl.lo_up().await?;
        nl.add_ipv4(CLIENT_IF, lab.client.ip, lab.prefix).await?;
        nl.set_up(CLIENT_IF).await
    })
    .map_err(LabError::net(format!("configure {CLIENT_IF} in {}", lab.client.netns)))?;
    created.push(format!(
        "{}: {CLIENT_IF} {}/{} ↔ {} on {}",
        lab.client.netns,
        lab.client.ip,
        lab.prefix,
        lan_port("client"),
        lab.lan_bridge
    ));
    Ok(created)
}

/// What is missing from a lab that `lab.json` says is up (empty: healthy network).
pub(crate) fn problems(lab: &Lab) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect = |netns: &str, links: Vec<String>| {
        let ns = match NetNs::open_registered(netns) {
            Ok(ns) => ns,
            Err(_) => {
                problems.push(format!("network namespace {netns} is missing"));
                return;
            }
        };
        let missing = with_netlink(&ns, async |nl: Netlink| {
            let mut missing = Vec::new();
            for link in &links {
                if !nl.link(link).await?.is_some_and(|l| l.up) {
                    missing.push(link.clone());
                }
            }
            Ok(missing)
        });
        match missing {
            Ok(missing) => problems
                .extend(missing.into_iter().map(|l| format!("link {l} in {netns} is missing or down"))),
            Err(e) => problems.push(format!("cannot inspect {netns}: {e}")),
        }
    };
    let mut lan_links = vec![lab.lan_bridge.clone(), lan_port("client")];
    lan_links.extend(lab.hosts.iter().map(|h| lan_port(&h.name)));
    expect(&lab.lan_netns, lan_links);
    for host in &lab.hosts {
        expect(&host.netns, vec![host.bridge.clone(), UPLINK.to_string()]);
    }
    expect(&lab.client.netns, vec![CLIENT_IF.to_string()]);
    problems
}

fn register(name: &str, created: &mut Vec<String>) -> Result<NetNs, LabError> {
    let ns = NetNs::register(name).map_err(LabError::net(format!("create network namespace {name}")))?;
    created.push(format!("network namespace {name}"));
    Ok(ns)
}

/// A veth `h-<peer>` on the LAN bridge whose other end is `inner` in `ns`.
fn plug_into_lan(lab: &Lab, lan: &NetNs, ns: &NetNs, peer: &str, inner: &str) -> Result<(), LabError> {
    let port = lan_port(peer);
    with_netlink(lan, async |nl: Netlink| {
        nl.create_veth(&port, &VethPeer { name: inner, netns: Some(ns), mac: None }).await?;
        nl.set_master(&port, &lab.lan_bridge).await?;
        nl.set_up(&port).await
    })
    .map_err(LabError::net(format!("link {} to the LAN", ns.label())))
}
