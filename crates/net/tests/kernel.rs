//! Against the real kernel, as root, inside namespaces the tests create.
//!
//! Needs: root (CAP_SYS_ADMIN + CAP_NET_ADMIN), veth and bridge support, a writable
//! `/run`. Without root each test prints why it is skipped. Every namespace here is
//! anonymous (it dies with its last fd) except the one registration test, whose guard
//! unregisters it; the machine's own namespace is only ever read.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use migrate_net::{
    ContainerLink, NetError, NetNs, Netlink, VethPeer, attach_container, detach_container, run_in,
    with_netlink,
};

macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED {}: needs root (namespaces, netlink)", module_path!());
            return;
        }
    };
}

fn anon() -> NetNs {
    NetNs::new_anonymous().expect("new anonymous netns")
}

/// A bridge `br0` in `lan` and, for each `(ns, ip)`, a veth `pN` on it whose peer is
/// `eth0` in `ns` with `ip/24`.
fn wire(lan: &NetNs, ends: &[(&NetNs, Ipv4Addr)]) {
    with_netlink(lan, async |nl: Netlink| {
        nl.create_bridge("br0").await?;
        nl.lo_up().await?;
        for (i, (ns, _)) in ends.iter().enumerate() {
            let name = format!("p{i}");
            nl.create_veth(&name, &VethPeer { name: "eth0", netns: Some(ns), mac: None }).await?;
            nl.set_master(&name, "br0").await?;
            nl.set_up(&name).await?;
        }
        Ok(())
    })
    .expect("wire the LAN");
    for (ns, ip) in ends {
        with_netlink(ns, async |nl: Netlink| {
            nl.add_ipv4("eth0", *ip, 24).await?;
            nl.set_up("eth0").await?;
            nl.lo_up().await
        })
        .expect("configure eth0");
    }
}

/// A TCP round trip: listen in `server` on `ip`, connect from `client`.
fn tcp_round_trip(server: &NetNs, ip: Ipv4Addr, client: &NetNs) {
    let listener = run_in(server, || TcpListener::bind((ip, 0))).expect("enter server").expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    let accept = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).expect("read");
        conn.write_all(&buf).expect("echo");
    });
    let mut conn = run_in(client, || TcpStream::connect_timeout(&addr, Duration::from_secs(10)))
        .expect("enter client")
        .expect("connect through the bridge");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    conn.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).expect("read echo");
    assert_eq!(&buf, b"ping");
    accept.join().expect("accept thread");
}

#[test]
fn anonymous_namespaces_are_distinct() {
    require_root!();
    let (a, b) = (anon(), anon());
    let me = NetNs::current().expect("current");
    assert_ne!(a.inode(), b.inode());
    assert_ne!(a.inode(), me.inode());
    let clone = a.try_clone().expect("clone");
    assert_eq!(clone.inode(), a.inode());
    let seen = run_in(&a, || NetNs::current().map(|n| n.inode())).expect("enter").expect("current");
    assert_eq!(seen, a.inode());
    // The calling thread did not move.
    assert_eq!(NetNs::current().expect("current").inode(), me.inode());
}

#[test]
fn bridge_and_veths_carry_tcp_between_namespaces() {
    require_root!();
    let (lan, one, two) = (anon(), anon(), anon());
    let (ip1, ip2) = (Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 2));
    wire(&lan, &[(&one, ip1), (&two, ip2)]);

    let addrs = with_netlink(&two, async |nl: Netlink| nl.ipv4_addrs("eth0").await).expect("addrs");
    assert_eq!(addrs, vec![(ip2, 24)]);
    let (br, p0) = with_netlink(&lan, async |nl: Netlink| Ok((nl.index("br0").await?, nl.link("p0").await?)))
        .expect("lan links");
    let p0 = p0.expect("p0 exists");
    assert_eq!(p0.master, Some(br));
    assert!(p0.up);

    tcp_round_trip(&two, ip2, &one);
    tcp_round_trip(&one, ip1, &two);

    // Nothing of this exists in the caller's namespace (read-only check).
    let here = with_netlink(&NetNs::current().expect("current"), async |nl: Netlink| nl.link_names().await)
        .expect("list links here");
    assert!(!here.iter().any(|n| n == "p0" || n == "p1"), "leaked into the caller's netns: {here:?}");
}

#[test]
fn container_attach_detach_and_identity() {
    require_root!();
    let (host, ctr) = (anon(), anon());
    let host_ip = Ipv4Addr::new(10, 99, 1, 1);
    with_netlink(&host, async |nl: Netlink| {
        nl.create_bridge("br0").await?;
        nl.add_ipv4("br0", host_ip, 24).await?;
        nl.lo_up().await
    })
    .expect("host bridge");
    let link = ContainerLink {
        host_if: "veth-web-0123ab".into(),
        bridge: "br0".into(),
        ip: Ipv4Addr::new(10, 99, 1, 7),
        prefix: 24,
        mac: [0x02, 0x4d, 0x47, 0x00, 0x01, 0x07],
    };
    run_in(&host, || attach_container(&ctr, &link)).expect("enter host").expect("attach");

    let eth0 = with_netlink(&ctr, async |nl: Netlink| {
        Ok((nl.link("eth0").await?, nl.ipv4_addrs("eth0").await?, nl.link("lo").await?))
    })
    .expect("container links");
    let (eth0, addrs, lo) = (eth0.0.expect("eth0"), eth0.1, eth0.2.expect("lo"));
    assert_eq!(eth0.mac, Some(link.mac));
    assert!(eth0.up && lo.up);
    assert_eq!(addrs, vec![(link.ip, 24)]);
    let (br, veth) =
        with_netlink(&host, async |nl: Netlink| Ok((nl.index("br0").await?, nl.link(&link.host_if).await?)))
            .expect("host links");
    let veth = veth.expect("host end");
    assert_eq!(veth.master, Some(br));
    assert!(veth.up);

    tcp_round_trip(&host, host_ip, &ctr);
    tcp_round_trip(&ctr, link.ip, &host);

    // A second attach under the same name is refused and leaves the first intact.
    let again = run_in(&host, || attach_container(&ctr, &link)).expect("enter host");
    assert!(matches!(again, Err(NetError::LinkExists { .. })), "{again:?}");

    run_in(&host, || detach_container(&link.host_if)).expect("enter host").expect("detach");
    run_in(&host, || detach_container(&link.host_if)).expect("enter host").expect("detach twice is fine");
    let left = with_netlink(&ctr, async |nl: Netlink| nl.link_exists("eth0").await).expect("ctr");
    assert!(!left, "eth0 must go with the host end");
}

#[test]
fn container_attach_rolls_back() {
    require_root!();
    let (host, ctr) = (anon(), anon());
    let mut link = ContainerLink {
        host_if: "veth-rb".into(),
        bridge: "br-missing".into(),
        ip: Ipv4Addr::new(10, 99, 2, 7),
        prefix: 24,
        mac: [0x02, 0, 0, 0, 2, 7],
    };
    // Missing bridge: refused before anything is created.
    let err = run_in(&host, || attach_container(&ctr, &link)).expect("enter host").expect_err("no bridge");
    assert!(matches!(err, NetError::NoSuchLink { ref link, .. } if link == "br-missing"), "{err:?}");

    // `lo` is no bridge: enslaving fails after the pair exists, which must be undone.
    link.bridge = "lo".into();
    let err = run_in(&host, || attach_container(&ctr, &link)).expect("enter host").expect_err("not a bridge");
    assert!(matches!(err, NetError::Netlink { .. }), "{err:?}");
    let host_left = with_netlink(&host, async |nl: Netlink| nl.link_exists("veth-rb").await).expect("host");
    let ctr_left = with_netlink(&ctr, async |nl: Netlink| nl.link_exists("eth0").await).expect("ctr");
    assert!(!host_left && !ctr_left, "rollback left host end: {host_left}, eth0: {ctr_left}");

    link.host_if = "much-too-long-name".into();
    let err = run_in(&host, || attach_container(&ctr, &link)).expect("enter host").expect_err("long name");
    assert!(matches!(err, NetError::InvalidName { .. }), "{err:?}");
}

#[test]
fn rename_mac_move_delete() {
    require_root!();
    let (one, two) = (anon(), anon());
    let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    with_netlink(&one, async |nl: Netlink| {
        nl.create_veth("va", &VethPeer { name: "vb", netns: None, mac: None }).await?;
        nl.move_to("vb", &two).await?;
        assert!(!nl.link_exists("vb").await?);
        nl.rename("va", "vc").await?;
        nl.set_mac("vc", mac).await?;
        let vc = nl.link("vc").await?.expect("vc");
        assert_eq!(vc.mac, Some(mac));
        assert!(!nl.link_exists("va").await?);
        let err = nl.set_up("va").await.expect_err("va is gone");
        assert!(matches!(err, NetError::NoSuchLink { .. }), "{err:?}");
        Ok(())
    })
    .expect("in one");
    let in_two = with_netlink(&two, async |nl: Netlink| nl.link_exists("vb").await).expect("two");
    assert!(in_two);
    with_netlink(&one, async |nl: Netlink| {
        nl.delete_link("vc").await?;
        assert!(!nl.delete_link_if_exists("vc").await?);
        Ok(())
    })
    .expect("delete");
    let in_two = with_netlink(&two, async |nl: Netlink| nl.link_exists("vb").await).expect("two");
    assert!(!in_two, "the peer dies with its pair");
}

#[test]
fn with_netlink_from_inside_a_runtime() {
    require_root!();
    let ns = anon();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    let up = rt.block_on(async {
        with_netlink(&ns, async |nl: Netlink| {
            nl.lo_up().await?;
            Ok(nl.link("lo").await?.map(|l| l.up))
        })
    });
    assert_eq!(up.expect("with_netlink in a runtime"), Some(true));
}

struct Unregister(String);

impl Drop for Unregister {
    fn drop(&mut self) {
        let _ = NetNs::unregister(&self.0);
    }
}

#[test]
fn register_and_unregister_like_ip_netns() {
    require_root!();
    let name = format!("mnet-t{}", std::process::id());
    let _guard = Unregister(name.clone());
    let ns = NetNs::register(&name).expect("register");
    assert!(NetNs::registered_names().expect("list").contains(&name));
    assert!(NetNs::is_registered(&name));
    let opened = NetNs::open_registered(&name).expect("open registered");
    assert_eq!(opened.inode(), ns.inode());
    assert_ne!(ns.inode(), NetNs::current().expect("current").inode());
    let err = NetNs::register(&name).expect_err("taken");
    assert!(matches!(err, NetError::Register { .. }), "{err:?}");
    // The namespace is usable and distinct.
    with_netlink(&ns, async |nl: Netlink| nl.lo_up().await).expect("lo up");

    assert!(NetNs::unregister(&name).expect("unregister"));
    assert!(!NetNs::unregister(&name).expect("unregister twice"));
    assert!(!NetNs::registered_names().expect("list").contains(&name));
    assert!(NetNs::register("a/b").is_err());
}
