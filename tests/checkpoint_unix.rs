//! Unix sockets moved to another host: socketpairs of each type with bytes queued both
//! ways (datagram boundaries kept), a pair whose ends two processes hold, shutdown
//! state, listeners by path and abstract name with connections waiting to be accepted,
//! autobound names — each program checks after the restore that its sockets are what
//! they were. And the refusals: a peer outside the container, fds in flight.

mod support;

use anyhow::ensure;
use support::{TempDir, TestLab};

/// Sets up every kind of socket, prints `ready`, waits for the trigger, then checks
/// each one and prints `verdict ok` or `verdict FAIL: …`.
const SOCKETS: &str = r#"
import os, socket, sys, time
work, trigger = sys.argv[1], sys.argv[2]
U = socket.AF_UNIX
bad = []
def want(what, got, expected):
    if got != expected:
        bad.append(f"{what}: {got!r} != {expected!r}")

# A stream pair, bytes queued both ways.
sa, sb = socket.socketpair(U, socket.SOCK_STREAM)
sa.sendall(b"to-b-1"); sa.sendall(b"to-b-2"); sb.sendall(b"to-a" * 1000)
# A seqpacket pair and a datagram pair, several records queued.
qa, qb = socket.socketpair(U, socket.SOCK_SEQPACKET)
for m in [b"r1", b"record-two", b"3"]:
    qa.send(m)
da, db = socket.socketpair(U, socket.SOCK_DGRAM)
for m in [b"d1", b"dd2", b"ddd3"]:
    da.send(m)
db.send(b"back")
# Shut for writing after its last words.
xa, xb = socket.socketpair(U, socket.SOCK_STREAM)
xa.sendall(b"last words"); xa.shutdown(socket.SHUT_WR)
# A peek offset part way through the queue (SO_PEEK_OFF is 42).
sb.setsockopt(socket.SOL_SOCKET, 42, 0)
want("peek before", sb.recv(6, socket.MSG_PEEK), b"to-b-1")
# SIGIO to us, and non-blocking: nginx's channels.
import fcntl
fcntl.fcntl(sa.fileno(), fcntl.F_SETOWN, os.getpid())
fcntl.fcntl(sa.fileno(), fcntl.F_SETFL, os.O_NONBLOCK | os.O_ASYNC)
# Its peer closed after its last words: they, then end of file.
ya, yb = socket.socketpair(U, socket.SOCK_STREAM); ya.sendall(b"bye"); ya.close()
# A datagram socket connected one way to a bound one.
dgname = f"\0migrate-dg-{os.getpid()}"
dsrv = socket.socket(U, socket.SOCK_DGRAM); dsrv.bind(dgname)
dcli = socket.socket(U, socket.SOCK_DGRAM); dcli.connect(dgname)
dcli.send(b"queued-1")
tmp = socket.socket(U, socket.SOCK_DGRAM); tmp.sendto(b"queued-2", dgname); tmp.close()
# A receive timeout (struct timeval).
import struct
qb.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 2, 500000))
# Buffer sizes set, and kept.
sb.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
# A listener in a directory, with a pending connection; an abstract one likewise.
path = os.path.join(work, "srv.sock")
lp = socket.socket(U, socket.SOCK_STREAM); lp.bind(path); lp.listen(7)
os.chmod(path, 0o640)
# Accepted before, bytes queued both ways; the pending one is connected after it.
ct = socket.socket(U, socket.SOCK_STREAM); ct.connect(path)
acc, _ = lp.accept()
ct.sendall(b"to-server"); acc.sendall(b"to-client")
cp = socket.socket(U, socket.SOCK_STREAM); cp.connect(path)
# A listener whose file is unlinked since, with a pending connection.
unl = os.path.join(work, "unl.sock")
lu = socket.socket(U, socket.SOCK_STREAM); lu.bind(unl); lu.listen(2)
cu = socket.socket(U, socket.SOCK_STREAM); cu.connect(unl)
os.unlink(unl)
# Accepted from an abstract listener that is closed since.
gone = f"\0migrate-gone-{os.getpid()}"
lg = socket.socket(U, socket.SOCK_STREAM); lg.bind(gone); lg.listen(1)
cg = socket.socket(U, socket.SOCK_STREAM); cg.connect(gone)
ag, _ = lg.accept(); lg.close()
abstract = f"\0migrate-test-{os.getpid()}"
la = socket.socket(U, socket.SOCK_SEQPACKET); la.bind(abstract); la.listen(3)
ca = socket.socket(U, socket.SOCK_SEQPACKET); ca.connect(abstract)
# Three connections pending on a listener whose backlog shrank since: they stay queued.
shrink = f"\0migrate-shrink-{os.getpid()}"
ls = socket.socket(U, socket.SOCK_STREAM); ls.bind(shrink); ls.listen(4)
cs = [socket.socket(U, socket.SOCK_STREAM) for _ in range(3)]
for c in cs:
    c.connect(shrink)
ls.listen(0)
# A listener in the container's own /run, which the image carries.
lr = socket.socket(U, socket.SOCK_STREAM); lr.bind("/run/migrate-unix.sock"); lr.listen(1)
# Autobound: a 5-hex-digit abstract name of the kernel's choosing.
auto = socket.socket(U, socket.SOCK_DGRAM); auto.bind("")
auto_name = auto.getsockname()
auto.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
# A pair across fork: the child keeps one end, the parent the other.
pa, pb = socket.socketpair(U, socket.SOCK_STREAM)
pb.sendall(b"from-child-before")
child = os.fork()
if child == 0:
    pa.close()
    while not os.path.exists(trigger):
        time.sleep(0.05)
    got = pb.recv(100)
    pb.sendall(b"from-child-after")
    print("child got", got.decode(), flush=True)
    os._exit(0)
pb.close()
# A pair made by a child running as nobody: its SO_PEERCRED names that child and ids.
made_r, made_w = os.pipe()
nobody = os.fork()
if nobody == 0:
    os.setgroups([4242, 65534]); os.setgid(65534); os.setuid(65534)
    na, nb = socket.socketpair(U, socket.SOCK_STREAM); na.sendall(b"nobody's")
    os.write(made_w, b"x")
    while not os.path.exists(trigger):
        time.sleep(0.05)
    import struct
    c = struct.unpack("3i", nb.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    groups = sorted(struct.unpack("2i", nb.getsockopt(socket.SOL_SOCKET, 59, 8)))  # SO_PEERGROUPS
    print("nobody's pair", nb.recv(20).decode(), c == (os.getpid(), 65534, 65534), groups == [4242, 65534], flush=True)
    os._exit(0)
os.read(made_r, 1)
print("ready", flush=True)
while not os.path.exists(trigger):
    time.sleep(0.05)
print("after restore", flush=True)

def drain(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out
want("peek offset", sb.getsockopt(socket.SOL_SOCKET, 42), 6)
want("peek after", sb.recv(6, socket.MSG_PEEK), b"to-b-2")
want("stream to b", drain(sb, 12), b"to-b-1to-b-2")
want("stream to a", drain(sa, 4000), b"to-a" * 1000)
want("seqpacket", [qb.recv(100) for _ in range(3)], [b"r1", b"record-two", b"3"])
want("dgram", [db.recv(100) for _ in range(3)], [b"d1", b"dd2", b"ddd3"])
want("dgram back", da.recv(100), b"back")
want("peer closed: words", drain(yb, 100), b"bye")
want("peer closed: eof", yb.recv(10), b"")
want("one way: peer", dcli.getpeername(), dgname.encode())
dcli.send(b"dg")
want("one way: datagrams", [dsrv.recvfrom(10) for _ in range(3)], [(b"queued-1", None), (b"queued-2", None), (b"dg", None)])
want("shut: words", drain(xb, 100), b"last words")
want("shut: eof", xb.recv(10), b"")
try:
    xa.send(b"more"); bad.append("send after SHUT_WR worked")
except BrokenPipeError:
    pass
import struct
cred = lambda s: struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
want("peer creds of a pair", cred(sa), (os.getpid(), os.getuid(), os.getgid()))
want("peer creds of an accepted socket", cred(acc), (os.getpid(), os.getuid(), os.getgid()))
want("owner", fcntl.fcntl(sa.fileno(), fcntl.F_GETOWN), os.getpid())
want("status flags", fcntl.fcntl(sa.fileno(), fcntl.F_GETFL) & (os.O_NONBLOCK | os.O_ASYNC), os.O_NONBLOCK | os.O_ASYNC)
want("rcvtimeo", struct.unpack("ll", qb.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)), (2, 500000))
want("rcvbuf", sb.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), 131072)
want("path listener name", lp.getsockname(), path)
want("path file mode", oct(os.stat(path).st_mode & 0o777), "0o640")
want("accepted before: name", acc.getsockname(), path)
want("accepted before: client's peer", ct.getpeername(), path)
want("accepted before: to server", acc.recv(100), b"to-server")
want("accepted before: to client", ct.recv(100), b"to-client")
want("closed listener: name", ag.getsockname(), gone.encode())
want("closed listener: peer", cg.getpeername(), gone.encode())
again = socket.socket(U, socket.SOCK_STREAM)
try:
    again.bind(gone)
except OSError as e:
    bad.append(f"the closed listener's name is taken: {e}")
want("unlinked: name", lu.getsockname(), unl)
want("unlinked: no file", os.path.exists(unl), False)
want("unlinked: client's peer", cu.getpeername(), unl)
cu.sendall(b"u"); want("unlinked: accepted", lu.accept()[0].recv(5), b"u")
conn, _ = lp.accept()
want("accepted peer name", cp.getpeername(), path)
want("accepted own name", conn.getsockname(), path)
cp.sendall(b"hello server"); want("after accept", conn.recv(100), b"hello server")
conn2, _ = la.accept()
want("abstract peer", ca.getpeername(), abstract.encode())
ca.send(b"rec"); want("abstract record", conn2.recv(10), b"rec")
for i, c in enumerate(cs):
    c.send(b"s%d" % i)
want("shrunk backlog: pending", [ls.accept()[0].recv(5) for _ in cs], [b"s0", b"s1", b"s2"])
c4, c5 = socket.socket(U, socket.SOCK_STREAM), socket.socket(U, socket.SOCK_STREAM)
c4.setblocking(False); c5.setblocking(False)
c4.connect(shrink)
try:
    c5.connect(shrink); bad.append("a backlog of 0 took two connections")
except BlockingIOError:
    pass
want("/run listener", lr.getsockname(), "/run/migrate-unix.sock")
cr = socket.socket(U, socket.SOCK_STREAM); cr.connect("/run/migrate-unix.sock")
cr.sendall(b"run"); want("/run connection", lr.accept()[0].recv(10), b"run")
want("autobound", auto.getsockname(), auto_name)
want("passcred", auto.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED), 1)
pa.sendall(b"from-parent")
want("from child before", drain(pa, 17), b"from-child-before")
want("from child after", drain(pa, 16), b"from-child-after")
os.waitpid(child, 0)
os.waitpid(nobody, 0)
print("verdict", "ok" if not bad else "FAIL: " + "; ".join(bad), flush=True)
"#;

#[test]
fn socketpairs_listeners_and_their_queues_move() -> anyhow::Result<()> {
    let work = TempDir::new("unix")?;
    let img = TempDir::new("unix-img")?;
    let trigger = work.join("go");
    let lab = TestLab::up(2)?;
    lab.start("host-a", "socks", &["python3", "-c", SOCKETS, &work.join(""), &trigger])?;
    lab.wait_log("socks", "ready")?;
    let image = img.join("socks");
    lab.checkpoint_and_restore("socks", &image, "host-b")?;
    let inspect = lab.ok(&["inspect", &image])?;
    for needle in [
        "unix stream socket:",
        "12 bytes queued in",
        "unix seqpacket socket:",
        "13 bytes queued in 3 messages",
        "unix dgram socket:",
        "9 bytes queued in 3 messages",
        "shut for writing",
        "peer closed, 3 bytes queued",
        "SIGIO to pid 1",
        "SO_PASSCRED",
        "srv.sock, listening (backlog 7), 1 pending",
        "unl.sock (unlinked), listening (backlog 2), 1 pending",
        "accepted from listener socket:",
        "accepted from a closed listener at @migrate-gone-",
        "@migrate-test-",
    ] {
        ensure!(inspect.contains(needle), "inspect does not show {needle:?}: {inspect}");
    }
    std::fs::write(&trigger, b"")?;
    let log = lab.wait_log("socks", "verdict")?;
    let after = log.split("after restore").nth(1).unwrap_or_default();
    ensure!(after.contains("verdict ok"), "after the restore: {log}");
    ensure!(log.contains("child got from-parent"), "the child's end: {log}");
    ensure!(log.contains("nobody's pair nobody's True True"), "the pair of the child run as nobody: {log}");
    lab.down_after_exit("socks")?;
    Ok(())
}

/// Holds what cannot move: with `outside PATH`, a connection to a listener the test
/// holds on the host; with `inflight`, an fd queued in a message. Ticks all along.
const HOLDER: &str = r#"
import os, socket, sys, time
held = []
if sys.argv[1] == "outside":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(sys.argv[2]); held.append(s)
    print("fd", s.fileno(), flush=True)
elif sys.argv[1] == "handed":
    # A pair made here, each end handed to a child, none kept.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for keep in (a, b):
        if os.fork() == 0:
            (b if keep is a else a).close()
            while True:
                time.sleep(1)
    a.close(); b.close()
    print("fd none", flush=True)
elif sys.argv[1] == "odd":
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM); a.send(b"!", socket.MSG_OOB)
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM); c.send(b""); c.send(b"after")
    # Its peer closed with bytes unread: ECONNRESET waits for its next read.
    e, f = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM); e.send(b"unread"); f.close()
    # A datagram from a third socket, queued before its receiver and another connected
    # to each other.
    g, h, x = (socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(3))
    for s, n in [(g, "g"), (h, "h"), (x, "x")]:
        s.bind(f"\0migrate-odd-{n}-{os.getpid()}")
    x.sendto(b"from x", g.getsockname()); g.connect(h.getsockname()); h.connect(g.getsockname())
    # Asks for its senders' pidfds (SO_PASSPIDFD, 76).
    p = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); p.setsockopt(socket.SOL_SOCKET, 76, 1)
    # Bound by a path that goes up and down again.
    q = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); q.bind("/run/../run/odd.sock")
    # A classic filter that takes everything (SO_ATTACH_FILTER, 26): `ret 0xffffffff`.
    import ctypes, struct
    ins = (ctypes.c_ubyte * 8)(*struct.pack("HBBI", 6, 0, 0, 0xFFFFFFFF))
    r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    r.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HL", 1, ctypes.addressof(ins)))
    # Two datagram sockets connected to each other by name, nothing queued.
    i, j = (socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2))
    i.bind(f"\0migrate-odd-i-{os.getpid()}"); j.bind(f"\0migrate-odd-j-{os.getpid()}")
    i.connect(j.getsockname()); j.connect(i.getsockname())
    held += [a, b, c, d, e, g, h, x, p, q, r, i, j]
    print("fd", b.fileno(), d.fileno(), e.fileno(), g.fileno(), p.fileno(), q.fileno(), r.fileno(), i.fileno(), flush=True)
elif sys.argv[1] == "stray":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind("/run/stray.sock"); s.close()
    print("fd none", flush=True)
else:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM); held += [a, b]
    socket.send_fds(a, [b"x"], [0])
    print("fd", b.fileno(), flush=True)
i = 0
while True:
    print("tick", i, flush=True); i += 1; time.sleep(0.1)
"#;

/// `migrate checkpoint` of `name` fails naming every needle; the container ticks on.
fn refused(lab: &TestLab, img: &TempDir, name: &str, needles: &[&str]) -> anyhow::Result<()> {
    let dir = img.join(name);
    let stderr = lab.fails(&["checkpoint", name, "--dir", &dir])?;
    eprintln!("checkpoint {name}: {}", stderr.trim());
    for n in needles {
        ensure!(stderr.contains(n), "the refusal of {name} lacks {n:?}: {stderr}");
    }
    let ticks = |log: &str| log.lines().filter(|l| l.starts_with("tick ")).count();
    let before = ticks(&lab.logs(name)?);
    lab.wait_log(name, &format!("tick {}", before + 3))?;
    ensure!(lab.container(name)?["state"] == "running", "{name} no longer runs");
    Ok(())
}

#[test]
fn what_a_unix_socket_cannot_carry_is_refused_by_name_and_the_container_runs_on() -> anyhow::Result<()> {
    let work = TempDir::new("unix-refuse")?;
    let img = TempDir::new("unix-refuse-img")?;
    let path = work.join("host.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    let lab = TestLab::up(1)?;
    lab.start("host-a", "outside", &["python3", "-c", HOLDER, "outside", &path])?;
    lab.start("host-a", "inflight", &["python3", "-c", HOLDER, "inflight"])?;
    lab.start("host-a", "stray", &["python3", "-c", HOLDER, "stray"])?;
    lab.start("host-a", "handed", &["python3", "-c", HOLDER, "handed"])?;
    lab.start("host-a", "odd", &["python3", "-c", HOLDER, "odd"])?;
    lab.wait_log("outside", "tick 1")?;
    lab.wait_log("inflight", "tick 1")?;
    lab.wait_log("stray", "tick 1")?;
    lab.wait_log("handed", "tick 1")?;
    lab.wait_log("odd", "tick 1")?;
    let me = format!("pid {} (", std::process::id());
    // Pending on the test's listener, then accepted by it: both are outside.
    refused(&lab, &img, "outside", &["fd 3 is a unix socket", "waiting for the listener at", &path])?;
    let (_conn, _) = listener.accept()?;
    refused(&lab, &img, "outside", &["fd 3 is a unix socket", "connected to", &path, &me])?;
    refused(&lab, &img, "inflight", &["is a unix socket", "fds or credentials in flight"])?;
    refused(&lab, &img, "stray", &["/run/stray.sock", "socket node no socket is bound to"])?;
    refused(
        &lab,
        &img,
        "handed",
        &["whose connection PID 1 made (its SO_PEERCRED); a restore would make it in PID 2"],
    )?;
    refused(
        &lab,
        &img,
        "odd",
        &[
            "fd 4 is a unix socket",
            "out-of-band data",
            "fd 6 is a unix socket",
            "an empty datagram",
            "fd 7 is a socket",
            "with an error pending",
            "fd 8 is a unix socket",
            "with datagrams from @migrate-odd-x-",
            "queued, which a restore would send from @migrate-odd-h-",
            "fd 11 is a unix socket",
            "with SO_PASSPIDFD set to 1: not supported yet",
            "fd 12 is a unix socket",
            "bound to a relative, `..` or non-UTF-8 path",
            "fd 13 is a socket",
            "with a socket filter of 1 instructions (SO_ATTACH_FILTER), which is not carried",
            "fd 14 is a unix socket (socket:[",
            "by two connects (no SO_PEERCRED, which a restore's socketpair would give)",
        ],
    )?;
    lab.down_expecting(&["outside", "inflight", "stray", "handed", "odd"])?;
    Ok(())
}
