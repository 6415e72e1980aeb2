//! The kernel objects servers hold, one at a time, each moved to another host and asked
//! afterwards whether it is still what it was: eventfd, …

mod support;

use anyhow::ensure;
use support::{TempDir, TestLab};

/// An eventfd shared by a parent and its child: the counter and the semaphore mode
/// survive, and the two still share one counter after the move.
const EVENTFD: &str = r#"
import os, sys, time
trigger = sys.argv[1]
sem = os.eventfd(7, os.EFD_SEMAPHORE | os.EFD_NONBLOCK)
plain = os.eventfd(0)
os.eventfd_write(plain, 5_000_000_000)  # beyond eventfd2's 32-bit initial value
child = os.fork()
if child == 0:
    while not os.path.exists(trigger):
        time.sleep(0.05)
    # A semaphore read takes 1; the parent sees what the child took.
    print("child took", os.eventfd_read(sem), flush=True)
    os._exit(0)
print("ready", flush=True)
os.waitpid(child, 0)
left = 0
while True:
    try:
        left += os.eventfd_read(sem)
    except BlockingIOError:
        break
print("semaphore left", left, "plain", os.eventfd_read(plain), flush=True)
"#;

#[test]
fn an_eventfd_keeps_its_counter_and_mode_and_stays_shared() -> anyhow::Result<()> {
    let work = TempDir::new("eventfd")?;
    let img = TempDir::new("eventfd-img")?;
    let trigger = work.join("go");
    let lab = TestLab::up(2)?;
    lab.start("host-a", "efd", &["python3", "-c", EVENTFD, &trigger])?;
    lab.wait_log("efd", "ready")?;
    let image = img.join("efd");
    lab.checkpoint_and_restore("efd", &image, "host-b")?;
    let inspect = lab.ok(&["inspect", &image])?;
    ensure!(
        inspect.contains("eventfd, counter 7, semaphore"),
        "inspect does not show the eventfd: {inspect}"
    );
    std::fs::write(&trigger, b"")?;
    let log = lab.wait_log("efd", "semaphore left")?;
    ensure!(log.contains("child took 1"), "the child's read: {log}");
    ensure!(log.contains("semaphore left 6 plain 5000000000"), "the counters after the move: {log}");
    lab.down_after_exit("efd")?;
    Ok(())
}
