//! epoll moved to another host: every registration comes back with its events, its data
//! and its key (file, fd number), armed or disarmed, and the events that were pending
//! still arrive; what cannot come back is refused by name.

mod support;

use anyhow::ensure;
use support::{TempDir, TestLab, compile_c, log_in_image};

/// `tests/programs/epoll.c`: level-triggered, EPOLLET with a pending edge, EPOLLONESHOT
/// armed and disarmed, EPOLLEXCLUSIVE, a registration whose number was closed and reused,
/// one whose number now names the epoll itself, a nested epoll, and an epoll shared with
/// a child that added its own registration.
#[test]
fn every_registration_of_an_epoll_comes_back() -> anyhow::Result<()> {
    let bin = TempDir::new("epoll-bin")?;
    let exe = compile_c("epoll", &["-O2"], &bin.path)?;
    let work = TempDir::new("epoll-work")?;
    let img = TempDir::new("epoll-img")?;
    let trigger = work.join("go");
    let lab = TestLab::up(2)?;
    lab.start("host-a", "ep", &[&exe, &trigger])?;
    lab.wait_log("ep", "ready")?;
    let image = img.join("ep");
    lab.checkpoint_and_restore("ep", &image, "host-b")?;
    let inspect = lab.ok(&["inspect", &image])?;
    for want in [
        "fd 3 in (data 0xa1)",
        "fd 5 in|et (data 0xb1)",
        "fd 17 in|oneshot (data 0xe1)",
        "fd 18 oneshot|disarmed (data 0xe2)",
        "fd 7 in (data 0xd1)",
        "fd 9 in|exclusive (data 0x3e)",
        "fd 20 in (data 0x1e)",
        "epoll: fd 11 in (data 0x11)",
        "fd 25 in (data 0xc1)",
        "fd 19 oneshot|disarmed (data 0xf1)",
        "fd 22 in (data 0x91)",
        "fd 4 in (data 0x52)",
    ] {
        ensure!(inspect.contains(want), "inspect does not show {want:?}:\n{inspect}");
    }
    ensure!(!log_in_image(&image)?.contains("verdict"), "the checks ran before the checkpoint");
    std::fs::write(&trigger, b"")?;
    let log = lab.wait_log("ep", "done")?;
    ensure!(log.contains("child verdict ok (51,52,c1)"), "the shared epoll, in the child:\n{log}");
    ensure!(log.contains("verdict ok\n"), "the parent's epolls:\n{log}");
    lab.down_expecting(&["ep"])?;
    Ok(())
}

/// python3's `selectors` event loop (epoll underneath) waiting on a pipe: after the move
/// it wakes up for the byte written into the pipe, with the data it registered.
const SELECTOR: &str = r#"
import os, selectors, sys, time
trigger = sys.argv[1]
sel = selectors.DefaultSelector()
assert type(sel).__name__ == 'EpollSelector', type(sel).__name__
r, w = os.pipe()
sel.register(r, selectors.EVENT_READ, data='the reader')
print("ready", flush=True)
written = False
while True:
    for key, events in sel.select(timeout=0.1):
        print("woke for", key.data, "read", os.read(key.fd, 10).decode(), flush=True)
        time.sleep(100000)
    if not written and os.path.exists(trigger):
        os.write(w, b'hello')
        written = True
"#;

#[test]
fn a_python_selector_loop_wakes_up_after_the_move() -> anyhow::Result<()> {
    let work = TempDir::new("selector")?;
    let img = TempDir::new("selector-img")?;
    let trigger = work.join("go");
    let lab = TestLab::up(2)?;
    lab.start("host-a", "sel", &["python3", "-c", SELECTOR, &trigger])?;
    lab.wait_log("sel", "ready")?;
    let image = img.join("sel");
    lab.checkpoint_and_restore("sel", &image, "host-b")?;
    ensure!(lab.ok(&["inspect", &image])?.contains("epoll: fd "), "inspect shows no epoll");
    std::fs::write(&trigger, b"")?;
    let log = lab.wait_log("sel", "woke for")?;
    ensure!(log.contains("woke for the reader read hello"), "{log}");
    lab.down_expecting(&["sel"])?;
    Ok(())
}

/// Registrations a restore cannot make again: a disarmed EPOLLONESHOT one on an epoll
/// with nothing ready (no byte can make it ready, as one can a pipe); one on a pipe only a
/// child holds, which closed its epoll; a disarmed one that a second child added to the
/// shared epoll, on a pipe of its own.
const REFUSED: &str = r#"
import os, select, time
ep = select.epoll()
inner = select.epoll()
r, w = os.pipe()
inner.register(r, select.EPOLLIN)
ep.register(inner.fileno(), select.EPOLLIN | select.EPOLLONESHOT)
os.write(w, b'x'); ep.poll(0); os.read(r, 1)
r2, w2 = os.pipe()
ep.register(r2, select.EPOLLIN)
sr, sw = os.pipe()
if os.fork() == 0:
    ep.close()
    os.write(sw, b'1'); time.sleep(100000)
if os.fork() == 0:
    r3, w3 = os.pipe()
    os.close(r2)
    ep.register(r3, select.EPOLLIN | select.EPOLLONESHOT)
    os.write(w3, b'x'); ep.poll(0)
    os.write(sw, b'1'); time.sleep(100000)
os.close(r2)
pfd = os.pidfd_open(os.getpid())
ep.register(pfd, select.EPOLLIN)
os.read(sr, 1); os.read(sr, 1)
print("ready", flush=True)
time.sleep(100000)
"#;

#[test]
fn registrations_that_cannot_come_back_are_refused_by_name() -> anyhow::Result<()> {
    let img = TempDir::new("epoll-refused")?;
    let lab = TestLab::up(1)?;
    lab.start("host-a", "epr", &["python3", "-c", REFUSED])?;
    lab.wait_log("epr", "ready")?;
    let err = lab.fails(&["checkpoint", "epr", "--dir", &img.join("epr")])?;
    for want in [
        "fd 3 is an epoll whose registration of fd 4",
        "is a disarmed EPOLLONESHOT registration on a file with no event ready",
        "fd 3 is an epoll whose registration of fd 7",
        "names a file that only PID 2 (python3",
        "a process without the epoll",
        "fd 3 is an epoll whose registration of fd 11",
        "is a disarmed EPOLLONESHOT registration on a file that PID 3 (python3",
        "but not PID 1 (python3",
        "names a pidfd: an epoll watching a pidfd is not supported yet",
    ] {
        ensure!(err.contains(want), "the refusal lacks {want:?}: {err}");
    }
    ensure!(lab.container("epr")?["state"] == "running", "the refused container stopped");
    lab.down_expecting(&["epr"])?;
    Ok(())
}

/// node's event loop (libuv: epolls, eventfds, pipes, a thread pool): a timer reads a
/// file through the thread pool, whose answer comes back through an eventfd the loop's
/// epoll watches.
const NODE: &str = r#"
const fs = require('fs');
let i = 0;
setInterval(() => {
  const n = i++;
  fs.readFile('/proc/self/stat', (err, data) => {
    console.log(err ? `tick ${n} failed ${err}` : `tick ${n} read ${data.length > 0}`);
  });
}, 50);
"#;

#[test]
fn a_node_event_loop_runs_on_after_the_move() -> anyhow::Result<()> {
    let img = TempDir::new("node-img")?;
    let lab = TestLab::up(2)?;
    lab.start("host-a", "node", &["node", "-e", NODE])?;
    lab.wait_log("node", "tick 3 read true")?;
    let image = img.join("node");
    lab.checkpoint_and_restore("node", &image, "host-b")?;
    ensure!(lab.ok(&["inspect", &image])?.contains("epoll: fd "), "inspect shows no epoll");
    let before = log_in_image(&image)?;
    let last = before
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.split(' ').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    // Ten more answers from the thread pool, each through the loop's epoll.
    let log = lab.wait_log("node", &format!("tick {} read true", last + 10))?;
    ensure!(!log.contains("failed"), "{log}");
    lab.down_expecting(&["node"])?;
    Ok(())
}
