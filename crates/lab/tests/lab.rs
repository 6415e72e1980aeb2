//! Labs against the real kernel, as root.
//!
//! Needs: root, veth/bridge support, python3 (the agents are `tests/fake-agent.py`, a
//! stand-in that listens on the agent socket), cgroup v2 for the container-cgroup part.
//! Each test uses its own lab name (`tl<n><pid>`), so tests run in parallel with each
//! other and with a user's default lab, and a guard runs `down` even when a test fails.

use std::ffi::OsString;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use migrate_lab::{Lab, LabError, LabName, ProcessKind, down, exec, status, up};
use migrate_net::{NetNs, run_in};
use procfs_core::FromRead;
use procfs_core::process::Stat;

macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED {}: needs root (network namespaces, cgroups)", module_path!());
            return;
        }
    };
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

fn lab_name(test: u8) -> LabName {
    LabName::new(&format!("tl{test}{}", std::process::id() % 10000)).expect("valid lab name")
}

fn fake_agent() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-agent.py");
    let mut perms = std::fs::metadata(&path).expect("fake agent").permissions();
    perms.set_mode(0o755);
    std::fs::set_permissions(&path, perms).expect("chmod fake agent");
    path
}

/// Runs `down` when dropped, so a failing test leaves nothing behind.
struct Guard(LabName);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = block_on(down(&self.0)) {
            eprintln!("cleanup of lab {} failed: {e}", self.0);
        }
    }
}

fn assert_gone(name: &LabName) {
    let left: Vec<String> =
        NetNs::registered_names().expect("list").into_iter().filter(|n| name.owns_netns(n)).collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!name.dir().exists(), "{} left", name.dir().display());
    assert!(!name.lock_path().exists(), "{} left", name.lock_path().display());
}

fn pid_alive(pid: i32) -> bool {
    Stat::from_file(format!("/proc/{pid}/stat")).is_ok_and(|s| s.state != 'Z')
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP connection from `from`'s namespace to a listener on `ip` in `to`'s.
fn tcp_reach(from: &str, to: &str, ip: Ipv4Addr) {
    let (from, to) = (NetNs::open_registered(from).expect("from"), NetNs::open_registered(to).expect("to"));
    let listener = run_in(&to, || TcpListener::bind((ip, 0))).expect("enter").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        use std::io::Write;
        let (mut conn, _) = listener.accept().expect("accept");
        conn.write_all(b"hello").expect("write");
    });
    let mut conn = run_in(&from, || TcpStream::connect_timeout(&addr, Duration::from_secs(10)))
        .expect("enter")
        .expect("connect across the lab LAN");
    let mut got = String::new();
    conn.read_to_string(&mut got).expect("read");
    assert_eq!(got, "hello");
    server.join().expect("server");
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

#[test]
fn up_status_reach_exec_and_down() {
    require_root!();
    let name = lab_name(1);
    let guard = Guard(name.clone());
    let report = block_on(up(&name, Some(2), &fake_agent())).expect("up");
    assert!(report.created.iter().any(|c| c.contains(&name.lan_netns())), "{:?}", report.created);
    assert_eq!(report.started.len(), 2);
    let lab = Lab::load(&name).expect("lab.json");
    assert_eq!(lab.hosts.len(), 2);
    let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
    assert_eq!((a.name.as_str(), b.ip), ("host-a", Ipv4Addr::new(10, 77, 0, 12)));

    let st = block_on(status(&name)).expect("status");
    assert!(st.healthy, "{st:#?}");
    assert!(st.hosts.iter().all(|h| h.agent_alive && h.agent_answering && h.processes >= 1), "{st:#?}");

    // The LAN joins the client and the hosts, at layer 3 too.
    tcp_reach(&lab.client.netns, &b.netns, b.ip);
    tcp_reach(&a.netns, &b.netns, b.ip);
    tcp_reach(&b.netns, &lab.client.netns, lab.client.ip);

    // exec runs in the host's namespace and passes the exit status on.
    let st = exec(&name, "host-a", &os(&["sh", "-c", "grep -q br0 /proc/net/dev && exit 7"])).expect("exec");
    assert_eq!(st.code(), Some(7));
    let st = exec(&name, "client", &os(&["sh", "-c", "grep -q br0 /proc/net/dev"])).expect("exec");
    assert_eq!(st.code(), Some(1), "the client has no br0");
    let err = exec(&name, "host-q", &os(&["true"])).expect_err("unknown host");
    assert!(err.to_string().contains("known: host-a, host-b, client"), "{err}");
    assert!(matches!(exec(&name, "host-a", &[]), Err(LabError::EmptyCommand { .. })));
    // A program that cannot start is named, with a shell's exit status.
    let err = exec(&name, "client", &os(&["/nonexistent"])).expect_err("no such file");
    assert!(matches!(err, LabError::NoSuchFile { .. }) && err.exit_code() == 127, "{err:?}");
    assert_eq!(err.to_string(), "/nonexistent: no such file");
    let err = exec(&name, "host-a", &os(&["no-such-command-zz"])).expect_err("not found");
    assert!(err.to_string().starts_with("no-such-command-zz: command not found in $PATH"), "{err}");
    assert_eq!(err.exit_code(), 127);
    let plain = std::env::temp_dir().join(format!("migrate-lab-not-exec-{}", std::process::id()));
    std::fs::write(&plain, "not a program\n").expect("write");
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = exec(&name, "host-a", &[plain.clone().into()]).expect_err("not executable");
    let _ = std::fs::remove_file(&plain);
    assert!(matches!(err, LabError::NotExecutable { .. }) && err.exit_code() == 126, "{err:?}");

    // A second `up` changes nothing; another size is refused.
    let again = block_on(up(&name, Some(2), &fake_agent())).expect("up again");
    assert!(again.unchanged(), "{again:#?}");
    let pids: Vec<_> = again.kept.iter().map(|(_, pid)| Some(*pid)).collect();
    assert_eq!(pids, vec![a.agent_pid, b.agent_pid]);
    let err = block_on(up(&name, Some(3), &fake_agent())).expect_err("reshape");
    assert!(matches!(err, LabError::HostCountMismatch { existing: 2, requested: 3, .. }), "{err}");
    // Without a size, `up` keeps the lab's.
    let again = block_on(up(&name, None, &fake_agent())).expect("up without a size");
    assert!(again.unchanged() && again.lab.hosts.len() == 2, "{again:#?}");

    let agents: Vec<i32> = lab.hosts.iter().filter_map(|h| h.agent_pid).collect();
    let report = block_on(down(&name)).expect("down");
    assert_eq!(report.netns_removed.len(), 4, "{report:#?}");
    for pid in &agents {
        assert!(
            report.killed.iter().any(|k| k.pid == *pid && k.kind == ProcessKind::Agent && k.of.is_some()),
            "agent {pid} not killed (or not recognised as an agent): {report:#?}"
        );
        assert!(!pid_alive(*pid));
    }
    assert_gone(&name);
    let again = block_on(down(&name)).expect("down twice");
    assert!(again.is_empty(), "nothing left to remove: {again:#?}");
    assert_gone(&name);
    let st = block_on(status(&name)).expect("status after down");
    assert!(!st.up && st.stray_netns.is_empty());
    drop(guard);
}

#[test]
fn killed_agent_is_restarted_and_a_broken_lab_still_goes_down() {
    require_root!();
    let name = lab_name(2);
    let _guard = Guard(name.clone());
    block_on(up(&name, Some(1), &fake_agent())).expect("up");
    let lab = Lab::load(&name).expect("lab.json");
    let host = lab.host("host-a").expect("host-a");
    let first = host.agent_pid.expect("agent pid");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    wait_until("the agent to die", Duration::from_secs(5), || !pid_alive(first));
    let st = block_on(status(&name)).expect("status");
    assert!(!st.healthy && !st.hosts[0].agent_alive, "{st:#?}");

    // The repair needs no size: a 1-host lab stays one.
    let report = block_on(up(&name, None, &fake_agent())).expect("up restarts the agent");
    assert_eq!(report.lab.hosts.len(), 1);
    assert!(report.created.is_empty(), "the network was kept: {report:#?}");
    let second = report.started.first().map(|(_, pid)| *pid).expect("restarted");
    assert_ne!(second, first);
    let lab = Lab::load(&name).expect("lab.json");
    assert_eq!(lab.hosts[0].agent_pid, Some(second));
    assert_eq!(lab.hosts[0].state_dir, host.state_dir);
    assert!(block_on(status(&name)).expect("status").healthy);

    // A "container": own netns, in a cgroup under the host's cgroup parent.
    let container = spawn_container(&name, &lab);

    // Break the lab: kill the agent, lose lab.json. `down` must still remove everything.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(second), nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    std::fs::remove_file(lab.dir.join("lab.json")).expect("remove lab.json");
    let report = block_on(down(&name)).expect("down");
    assert_eq!(report.netns_removed.len(), 3, "{report:#?}");
    if let Some((mut child, rel, dir)) = container {
        assert!(report.cgroups_removed.contains(&rel), "{report:#?}");
        let status = child.wait().expect("wait container");
        assert_eq!(status.signal(), Some(9), "the container was killed with its cgroup");
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
    assert_gone(&name);
}

/// Starts `sleep` in a new netns, in the v2 cgroup `<cgroup parent>/ctr`; returns it with
/// the cgroup parent (relative, and as a path of the v2 mount); `None` (with a printed
/// reason) if there is no cgroup v2 here.
fn spawn_container(name: &LabName, lab: &Lab) -> Option<(std::process::Child, String, std::path::PathBuf)> {
    let mounts = migrate_cgroup::Mounts::discover().expect("cgroup mounts");
    let Some(v2) = mounts.v2 else {
        eprintln!("no cgroup v2 mount: skipping the container-cgroup part of {}", module_path!());
        return None;
    };
    let rel = lab.hosts[0].cgroup_parent.clone();
    assert_eq!(rel, name.cgroup_parent("host-a"));
    let dir = v2.join(&rel).join("ctr");
    std::fs::create_dir_all(&dir).expect("create container cgroup");
    let steps = vec![
        migrate_sys::process::Step::join_cgroup(&dir.join("cgroup.procs")).expect("cgroup.procs"),
        migrate_sys::process::Step::Unshare { flags: nix::libc::CLONE_NEWNET },
    ];
    let child =
        migrate_sys::process::spawn(Command::new("sleep").arg("600"), steps).expect("spawn container");
    Some((child, rel.clone(), v2.join(&rel)))
}

#[test]
fn up_clears_leftovers_of_a_crash() {
    require_root!();
    let name = lab_name(3);
    let _guard = Guard(name.clone());
    // A crash left a namespace of this lab (one `up` never made: host-c) and a directory.
    let stale = name.host_netns("host-c");
    drop(NetNs::register(&stale).expect("register stale netns"));
    std::fs::create_dir_all(name.dir().join("host-a")).expect("stale dir");
    let report = block_on(up(&name, Some(1), &fake_agent())).expect("up");
    let cleared = report.cleared.expect("leftovers were cleared");
    assert!(cleared.netns_removed.contains(&stale), "{cleared:#?}");
    assert!(!NetNs::is_registered(&stale));
    assert!(block_on(status(&name)).expect("status").healthy);
    block_on(down(&name)).expect("down");
    assert_gone(&name);
}

#[test]
fn a_failing_agent_is_reported_with_its_log() {
    require_root!();
    let name = lab_name(4);
    let _guard = Guard(name.clone());
    let bad = std::env::temp_dir().join(format!("migrate-lab-bad-agent-{}", std::process::id()));
    std::fs::write(&bad, "#!/bin/sh\necho 'cannot bind: no luck' >&2\nexit 4\n").expect("write bad agent");
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let err = block_on(up(&name, Some(1), &bad)).expect_err("the agent exits");
    let _ = std::fs::remove_file(&bad);
    let msg = err.to_string();
    assert!(matches!(err, LabError::AgentExited { .. }), "{msg}");
    assert!(msg.contains("exit status 4") && msg.contains("cannot bind: no luck"), "{msg}");
    block_on(down(&name)).expect("down");
    assert_gone(&name);
}

#[test]
fn arguments_are_checked() {
    require_root!();
    let name = lab_name(5);
    for hosts in [0, 27] {
        let err = block_on(up(&name, Some(hosts), &fake_agent())).expect_err("out of range");
        assert!(matches!(err, LabError::HostCount { .. }), "{err}");
    }
    let err = exec(&name, "host-a", &os(&["true"])).expect_err("not up");
    assert!(err.to_string().contains("is not up"), "{err}");
    assert!(LabName::new("Bad-Name").is_err());
    assert_gone(&name);
}
