//! TCP listeners and UDP sockets moved to another host: they listen, receive and send
//! again at the container's address, with every option as it was; established TCP
//! connections are refused by name, and the container goes on serving.

mod support;

use anyhow::ensure;
use support::{TempDir, TestLab};

/// The README's example: python's own HTTP server (a listener on `0.0.0.0`, backlog 5),
/// moved, serves the lab's client a page from the container's address.
#[test]
fn python_http_server_serves_after_the_move() -> anyhow::Result<()> {
    let site = TempDir::new("inet-site")?;
    let img = TempDir::new("inet-http-img")?;
    std::fs::write(site.path.join("page.txt"), b"moved and serving\n")?;
    let lab = TestLab::up(2)?;
    let cmd = ["python3", "-u", "-m", "http.server", "80", "--directory", &site.join("")];
    let mut args = vec!["run", "--host", "host-a", "--name", "web", "--ip", "10.77.1.20", "--"];
    args.extend_from_slice(&cmd);
    lab.ok(&args)?;
    lab.wait_log("web", "Serving HTTP")?;
    ensure!(lab.http_get_from_client("http://10.77.1.20/page.txt")? == "moved and serving\n");
    let image = img.join("web");
    lab.checkpoint_and_restore("web", &image, "host-b")?;
    let inspect = lab.ok(&["inspect", &image])?;
    ensure!(
        inspect.contains("TCP listening on 0.0.0.0:80 (backlog 5, reuseaddr)"),
        "inspect does not show the listener: {inspect}"
    );
    ensure!(lab.http_get_from_client("http://10.77.1.20/page.txt")? == "moved and serving\n");
    lab.ok(&["stop", "web"])?;
    lab.down_expecting(&[])?;
    Ok(())
}

/// A prefork server, as nginx's master and workers: one listener, made before the
/// fork, accepted on by two workers.
const PREFORK: &str = r#"
import os, socket
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 8080))
l.listen(64)
for _ in range(2):
    if os.fork() == 0:
        while True:
            c, _ = l.accept()
            c.recv(1000)
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nworker")
            c.close()
print("ready", flush=True)
while True:
    os.wait()
"#;

/// The listener of a prefork server is still one socket shared by the workers after
/// the move, and they serve from it.
#[test]
fn a_listener_shared_by_workers_stays_shared() -> anyhow::Result<()> {
    let img = TempDir::new("inet-prefork-img")?;
    let lab = TestLab::up(2)?;
    lab.ok(&[
        "run",
        "--host",
        "host-a",
        "--name",
        "pre",
        "--ip",
        "10.77.1.21",
        "--",
        "python3",
        "-c",
        PREFORK,
    ])?;
    lab.wait_log("pre", "ready")?;
    let image = img.join("pre");
    lab.checkpoint_and_restore("pre", &image, "host-b")?;
    let inspect = lab.ok(&["inspect", &image])?;
    ensure!(
        inspect.contains(
            "TCP listening on 0.0.0.0:8080 (backlog 64, reuseaddr) is one open file in pid:fd 1:3, 2:3, 3:3"
        ),
        "inspect does not show the shared listener: {inspect}"
    );
    for _ in 0..4 {
        ensure!(lab.http_get_from_client("http://10.77.1.21:8080/")? == "worker");
    }
    lab.ok(&["stop", "pre"])?;
    lab.down_expecting(&[])?;
    Ok(())
}

/// The lab's client, after the move: a TCP exchange with the IPv4 listener, then a
/// datagram to the bound UDP socket, whose answer and the connected socket's "hello"
/// it prints with the port each came from.
const CLIENT: &str = r#"
import socket
s = socket.create_connection(("10.77.1.30", 7000), 10)
s.sendall(b"hi")
print(s.recv(100).decode(), flush=True)
s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 9000))
u.settimeout(10)
u.sendto(b"ping", ("10.77.1.30", 7001))
for _ in range(2):
    data, addr = u.recvfrom(100)
    print(data.decode(), "from", addr[1], flush=True)
"#;

/// An IPv4 and two IPv6 (v6only, a reuseport group) listeners sharing a port, a bound
/// and a connected UDP socket, an unbound and a bound TCP socket, each with options
/// set: after the move every option answers as before, the listeners accept, and the
/// UDP sockets exchange datagrams with the lab's client.
#[test]
fn listeners_and_udp_sockets_keep_their_options_and_serve() -> anyhow::Result<()> {
    let work = TempDir::new("inet")?;
    let img = TempDir::new("inet-img")?;
    let exe = support::compile_c("inet", &["-O2"], &work.path)?;
    let trigger = work.join("go");
    let lab = TestLab::up(2)?;
    let cmd = [exe.as_str(), "7000", "7001", "10.77.0.2", "9000", &trigger];
    let mut args = vec!["run", "--host", "host-a", "--name", "inet", "--ip", "10.77.1.30", "--"];
    args.extend_from_slice(&cmd);
    lab.ok(&args)?;
    lab.wait_log("inet", "ready")?;
    let image = img.join("inet");
    lab.checkpoint_and_restore("inet", &image, "host-b")?;
    let inspect = lab.ok(&["inspect", &image])?;
    for want in [
        "TCP listening on 0.0.0.0:7000 (backlog 77, reuseaddr, keepalive, nodelay, freebind, defer_accept 7, fastopen 16, linger 3s)",
        "TCP listening on [::]:7000 (v6only, backlog 33, reuseaddr, reuseport)",
        "UDP 0.0.0.0:7001 (broadcast)",
        "UDP 10.77.1.30:7002 → 10.77.0.2:9000 (rcvtimeo 2500ms)",
        "TCP unbound (nodelay)",
        "TCP bound to 0.0.0.0:7003",
    ] {
        ensure!(inspect.contains(want), "inspect does not show {want:?}: {inspect}");
    }
    std::fs::write(&trigger, b"")?;
    let client = lab.ok(&["lab", "exec", "client", "--", "python3", "-c", CLIENT])?;
    let log = lab.wait_log("inet", "done")?;
    ensure!(log.contains("options same"), "the options after the move: {log}");
    ensure!(log.contains("v6 accept ok"), "the IPv6 listener: {log}");
    ensure!(client.contains("tcp ok hi"), "the IPv4 listener's answer: {client}");
    ensure!(client.contains("pong ping from 7001"), "the bound UDP socket's answer: {client}");
    ensure!(client.contains("hello from 7002"), "the connected UDP socket: {client}");
    lab.down_after_exit("inet")?;
    Ok(())
}

/// Holds a TCP connection to the container open from the lab's client, until its
/// standard input closes.
const HOLD: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 10)
print("connected", flush=True)
sys.stdin.read()
"#;

/// An established connection is refused by its 4-tuple, before anything is touched:
/// the server goes on serving.
#[test]
fn an_established_connection_is_refused_by_name() -> anyhow::Result<()> {
    use std::io::BufRead;
    let site = TempDir::new("inet-est-site")?;
    let img = TempDir::new("inet-est-img")?;
    std::fs::write(site.path.join("page.txt"), b"still serving\n")?;
    let lab = TestLab::up(1)?;
    let dir = site.join("");
    let cmd = ["python3", "-u", "-m", "http.server", "8000", "--bind", "0.0.0.0", "--directory", &dir];
    let mut args = vec!["run", "--host", "host-a", "--name", "web", "--ip", "10.77.1.40", "--"];
    args.extend_from_slice(&cmd);
    lab.ok(&args)?;
    lab.wait_log("web", "Serving HTTP")?;
    let mut hold = lab
        .cmd(&["lab", "exec", "client", "--", "python3", "-c", HOLD, "10.77.1.40", "8000"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = hold.stdout.take() {
        std::io::BufReader::new(out).read_line(&mut line)?;
    }
    let refused = (|| {
        ensure!(line.trim() == "connected", "the client did not connect: {line:?}");
        // The server accepts the connection a moment after the client has it: until then
        // it waits in the accept queue, refused as such.
        let (mut err, mut tries) = (String::new(), 0);
        support::wait_until(std::time::Duration::from_secs(10), || {
            tries += 1;
            let dir = img.join(&format!("web{tries}"));
            err = lab.fails(&["checkpoint", "web", "--dir", &dir]).unwrap_or_else(|e| e.to_string());
            err.contains("(ESTABLISHED)")
        });
        ensure!(
            err.contains("is a TCP connection 10.77.1.40:8000 ↔ 10.77.0.2:")
                && err.contains("(ESTABLISHED): established TCP connections cannot be carried yet: close them (stop the clients) and checkpoint again"),
            "the refusal does not name the connection: {err}"
        );
        ensure!(lab.container("web")?["state"] == "running", "the refused container stopped");
        ensure!(
            lab.http_get_from_client("http://10.77.1.40:8000/page.txt")? == "still serving\n",
            "it no longer serves"
        );
        Ok(())
    })();
    drop(hold.stdin.take());
    hold.wait()?;
    refused?;
    lab.ok(&["stop", "web"])?;
    lab.down_expecting(&[])?;
    Ok(())
}

/// Listens without accepting, binds a UDP socket, joins a multicast group with another,
/// gives a third IP options, corks half a datagram in a fourth and leaves an error pending
/// in a fifth; once TRIGGER exists, accepts and reads what waited.
const QUEUED: &str = r#"
import os, socket, sys, time
l = socket.socket()
l.bind(("0.0.0.0", 8001))
l.listen(4)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 8002))
m = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
m.bind(("0.0.0.0", 5353))
m.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton("239.1.2.3") + socket.inet_aton("10.77.1.41"))
t = socket.socket()
t.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([1, 1, 1, 0]))
# Software receive timestamps (SO_TIMESTAMPING, 37), which are not carried.
z = socket.socket()
z.setsockopt(socket.SOL_SOCKET, 37, 0x18)
# Half a datagram held back by UDP_CORK (1).
k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
k.bind(("0.0.0.0", 8003))
k.setsockopt(socket.IPPROTO_UDP, 1, 1)
k.sendto(b"corked", ("10.77.1.41", 8002))
# Connected to a port nobody listens on: the ICMP answer leaves ECONNREFUSED pending.
e = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
e.connect(("10.77.1.41", 8004))
e.send(b"anyone?")
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
c, _ = l.accept()
try:
    e.recv(10); pending = "lost"
except ConnectionRefusedError:
    pending = "kept"
print("accepted", c.recv(10).decode(), "and received", u.recv(10).decode(), "error", pending, flush=True)
"#;

/// A connection waiting in a listener's accept queue, datagrams waiting in a UDP
/// socket, corked bytes, a pending error, a multicast membership and an option not
/// carried are refused by name; the program then takes what waited (and its error), as
/// it would have.
#[test]
fn queued_connections_and_datagrams_are_refused_by_name() -> anyhow::Result<()> {
    let work = TempDir::new("inet-queued")?;
    let img = TempDir::new("inet-queued-img")?;
    let trigger = work.join("go");
    let lab = TestLab::up(1)?;
    let args = [
        "run",
        "--host",
        "host-a",
        "--name",
        "q",
        "--ip",
        "10.77.1.41",
        "--",
        "python3",
        "-c",
        QUEUED,
        &trigger,
    ];
    lab.ok(&args)?;
    lab.wait_log("q", "ready")?;
    let send = "import socket; s = socket.create_connection(('10.77.1.41', 8001), 10); s.sendall(b'knock'); \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'datagram', ('10.77.1.41', 8002))";
    lab.ok(&["lab", "exec", "client", "--", "python3", "-c", send])?;
    // The connection and the datagram reach the container's queues a moment after the
    // client is done: the first refusals may not see them yet.
    let (mut err, mut tries) = (String::new(), 0);
    support::wait_until(std::time::Duration::from_secs(10), || {
        tries += 1;
        let dir = img.join(&format!("q{tries}"));
        err = lab.fails(&["checkpoint", "q", "--dir", &dir]).unwrap_or_else(|e| e.to_string());
        err.contains("accept queue") && err.contains("receive queue") && err.contains("error pending")
    });
    ensure!(
        err.contains(
            "is a TCP socket listening on 0.0.0.0:8001 with 1 connection(s) waiting in its accept queue: \
             established TCP connections cannot be carried yet: close them (stop the clients) and checkpoint again"
        ),
        "the refusal does not name the listener: {err}"
    );
    ensure!(
        err.contains("is a UDP socket on 0.0.0.0:8002 with datagrams waiting in its receive queue ("),
        "the refusal does not name the UDP socket: {err}"
    );
    ensure!(
        err.contains(
            "is a UDP socket on 0.0.0.0:5353 in a network namespace where multicast group 239.1.2.3 is joined"
        ),
        "the refusal does not name the multicast group: {err}"
    );
    ensure!(
        err.contains("is a TCP socket on (unbound), which has IP options (IP_OPTIONS): not supported"),
        "the refusal does not name the IP options: {err}"
    );
    ensure!(
        err.contains("is a UDP socket on 0.0.0.0:8003 with bytes waiting to be sent ("),
        "the refusal does not name the corked bytes: {err}"
    );
    ensure!(
        err.contains(
            "is a TCP socket on (unbound), which has SO_TIMESTAMPING set to 24 (not carried): not supported"
        ),
        "the refusal does not name SO_TIMESTAMPING: {err}"
    );
    ensure!(
        err.contains("with an error pending (SO_ERROR, or its error queue), which is not carried"),
        "the refusal does not name the pending error: {err}"
    );
    std::fs::write(&trigger, b"")?;
    let log = lab.wait_log("q", "accepted")?;
    ensure!(log.contains("accepted knock and received datagram error kept"), "after the refusal: {log}");
    lab.down_after_exit("q")?;
    Ok(())
}
