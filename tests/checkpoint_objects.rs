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

/// A process whose threads have a scheduling of their own (SCHED_BATCH and a nice value
/// in the main thread, SCHED_IDLE with RESET_ON_FORK in a second thread, each pinned to
/// its own CPU set, a third on every CPU) and a raised `oom_score_adj`: each reads its
/// own back after the move.
const SCHED: &str = r#"
import os, sys, threading, time
trigger = sys.argv[1]
def state():
    return f"policy {os.sched_getscheduler(0)} nice {os.getpriority(os.PRIO_PROCESS, 0)} cpus {sorted(os.sched_getaffinity(0))}"
os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
os.setpriority(os.PRIO_PROCESS, 0, 7)
os.sched_setaffinity(0, {0})
open("/proc/self/oom_score_adj", "w").write("321")
def second():
    os.sched_setscheduler(0, os.SCHED_IDLE | os.SCHED_RESET_ON_FORK, os.sched_param(0))
    os.sched_setaffinity(0, {1})
    print("second before", state(), flush=True)
    while not os.path.exists(trigger):
        time.sleep(0.05)
    print("second after", state(), flush=True)
def free():
    # Every CPU of the host again: recorded as unpinned.
    os.sched_setaffinity(0, os.sched_getaffinity(1) | set(range(os.cpu_count())))
    print("free before", state(), flush=True)
    while not os.path.exists(trigger):
        time.sleep(0.05)
    print("free after", state(), flush=True)
threading.Thread(target=free).start()
t = threading.Thread(target=second)
t.start()
time.sleep(0.2)
print("main before", state(), "oom", open("/proc/self/oom_score_adj").read().strip(), flush=True)
while not os.path.exists(trigger):
    time.sleep(0.05)
print("main after", state(), "oom", open("/proc/self/oom_score_adj").read().strip(), flush=True)
t.join()
"#;

#[test]
fn threads_keep_their_scheduling_and_the_process_its_oom_score_adj() -> anyhow::Result<()> {
    let work = TempDir::new("sched")?;
    let img = TempDir::new("sched-img")?;
    let trigger = work.join("go");
    let lab = TestLab::up(2)?;
    lab.start("host-a", "sched", &["python3", "-c", SCHED, &trigger])?;
    let before = lab.wait_log("sched", "main before")?;
    let image = img.join("sched");
    lab.checkpoint_and_restore("sched", &image, "host-b")?;
    std::fs::write(&trigger, b"")?;
    for who in ["second after", "free after", "main after"] {
        lab.wait_log("sched", who)?;
    }
    let log = lab.logs("sched")?;
    let line = |who: &str| -> String {
        log.lines().find_map(|l| l.strip_prefix(who)).unwrap_or_default().trim().to_string()
    };
    ensure!(
        line("main before ") == "policy 3 nice 7 cpus [0] oom 321",
        "the main thread's scheduling before: {before}"
    );
    ensure!(line("main after ") == line("main before "), "the main thread after the move: {log}");
    ensure!(line("second before ") == "policy 1073741829 nice 7 cpus [1]", "the second thread before: {log}");
    ensure!(line("second after ") == line("second before "), "the second thread after the move: {log}");
    ensure!(line("free after ") == line("free before "), "the unpinned thread after the move: {log}");
    ensure!(!line("free before ").is_empty(), "the unpinned thread said nothing: {log}");
    lab.down_after_exit("sched")?;
    Ok(())
}
