//! POSIX timers (`timer_create`) and membarrier registrations, moved to another host and
//! asked afterwards, from inside, whether they are still what they were.

mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use support::{TempDir, TestLab, compile_c, log_in_image, wait_until};

/// `tests/programs/timers.c`: timers on every clock a restore makes, signalling the
/// process, a thread, glibc's SIGEV_THREAD helper or nobody, with ids that have gaps, and
/// a membarrier registration; the program judges them itself after the move.
#[test]
fn timers_keep_their_ids_clocks_signals_and_time_left_and_membarrier_its_registration() -> anyhow::Result<()>
{
    let bin = TempDir::new("timers-bin")?;
    let exe = compile_c("timers", &["-O2", "-pthread"], &bin.path)?;
    let work = TempDir::new("timers-work")?;
    let img = TempDir::new("timers-img")?;
    let trigger = work.join("go");
    let lab = TestLab::up(2)?;
    lab.start("host-a", "tmr", &[&exe, &trigger])?;
    lab.wait_log("tmr", "ready")?;
    let image = img.join("tmr");
    lab.checkpoint("tmr", &image, &[])?;
    // Away for long enough that an absolute timer restored relative would show it.
    std::thread::sleep(Duration::from_secs(3));
    lab.restore(&image, "host-b")?;
    let inspect = lab.ok(&["inspect", &image])?;
    for want in [
        "CLOCK_BOOTTIME, no signal (SIGEV_NONE)",
        "CLOCK_REALTIME, signal 37 to the process, value 0x14d",
        "left, one-shot, absolute (TIMER_ABSTIME)",
        "its own process's scheduler CPU clock (-6)",
        "membarrier: registered private-expedited",
    ] {
        ensure!(inspect.contains(want), "inspect does not show {want:?}: {inspect}");
    }
    let ready = log_in_image(&image)?;
    let ready = ready.lines().find(|l| l.starts_with("ready")).context("no ready line in the image's log")?;
    // The ids the program holds, e.g. "sig=2": the inspect lists every one of them.
    for id in ready.split_whitespace().filter_map(|w| w.split_once('=')).filter(|(k, _)| *k != "membarrier") {
        ensure!(
            inspect.contains(&format!("timer {:<4} ", id.1)),
            "inspect does not list timer {id:?}: {inspect}"
        );
    }
    std::fs::write(&trigger, b"")?;
    let log = lab.wait_log_for("tmr", "verdict", Duration::from_secs(60))?;
    let verdict = log.lines().find(|l| l.starts_with("verdict")).unwrap_or_default();
    ensure!(verdict == "verdict ok", "the program found its timers changed: {verdict}\n{log}");
    lab.down_after_exit("tmr")?;
    Ok(())
}

/// coreutils' `timeout` arms a `CLOCK_REALTIME` POSIX timer and waits for its SIGALRM to
/// kill the command: after the move, the timer still fires and the command is killed
/// (without it, `sleep` would run for 1000 s).
#[test]
fn timeout_still_kills_its_command_after_the_move() -> anyhow::Result<()> {
    let img = TempDir::new("timeout-img")?;
    let lab = TestLab::up(2)?;
    lab.start(
        "host-a",
        "tmo",
        &["sh", "-c", "timeout 25 sh -c 'echo ready; exec sleep 1000'; echo status $?"],
    )?;
    lab.wait_log("tmo", "ready")?;
    let image = img.join("tmo");
    lab.checkpoint_and_restore("tmo", &image, "host-b")?;
    let inspect = lab.ok(&["inspect", &image])?;
    ensure!(
        inspect.contains("CLOCK_REALTIME, signal 14 to the process") && inspect.contains("left, one-shot\n"),
        "inspect does not show timeout's timer: {inspect}"
    );
    ensure!(
        wait_until(Duration::from_secs(90), || lab.logs("tmo").is_ok_and(|l| l.contains("status"))),
        "timeout did not end its command: {}",
        lab.logs("tmo")?
    );
    let log = lab.logs("tmo")?;
    ensure!(log.contains("status 124"), "timeout's status is not 124 (timed out): {log}");
    lab.down_after_exit("tmo")?;
    Ok(())
}

/// The highest `tick N` a container printed.
fn last_tick(lab: &TestLab, name: &str) -> u64 {
    let log = lab.logs(name).unwrap_or_default();
    log.lines().filter_map(|l| l.strip_prefix("tick ")?.parse().ok()).max().unwrap_or(0)
}

/// Timers a restore could not make the same are refused at the checkpoint, naming the
/// process and the timer, and the container runs on as before: one on the calling
/// thread's CPU clock in a process of several threads (refused before the freeze's
/// look ends), one whose last expiry overran (refused once the count is read).
#[test]
fn timers_a_restore_cannot_rebuild_are_refused_by_name() -> anyhow::Result<()> {
    let bin = TempDir::new("timers-refuse-bin")?;
    let exe = compile_c("timers", &["-O2", "-pthread"], &bin.path)?;
    let img = TempDir::new("timers-refuse-img")?;
    let lab = TestLab::up(1)?;
    let cases = [
        (
            "cpu",
            "has a POSIX timer (id 0) on the creating thread's scheduler CPU clock (-2), the calling thread's CPU clock, in a process of several threads",
        ),
        ("overrun", "has a POSIX timer (id 0) whose last expiry overran"),
    ];
    for (mode, _) in cases {
        lab.start("host-a", &format!("tmr-{mode}"), &[&exe, mode])?;
    }
    for (mode, want) in cases {
        let name = format!("tmr-{mode}");
        lab.wait_log(&name, "tick 1")?;
        let dir = img.join(&name);
        let err = lab.fails(&["checkpoint", &name, "--dir", &dir])?;
        ensure!(err.contains(want) && err.contains("PID 1 (timers, host pid"), "{name}: the refusal: {err}");
        ensure!(!std::path::Path::new(&dir).exists(), "{name}: the refused checkpoint left {dir}");
        let c = lab.container(&name)?;
        ensure!(c["state"] == "running", "{name} after the refusal: {c}");
        let t = last_tick(&lab, &name);
        ensure!(
            wait_until(Duration::from_secs(20), || last_tick(&lab, &name) >= t + 3),
            "{name} stopped ticking after the refusal: {}",
            lab.logs(&name)?
        );
    }
    lab.down_expecting(&["tmr-cpu", "tmr-overrun"])?;
    Ok(())
}
