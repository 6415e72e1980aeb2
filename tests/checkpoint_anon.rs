//! Fds behind anonymous inodes — timerfd, signalfd, inotify, pidfd — each in a small
//! program of ours (`tests/programs/anon.c`, one mode per kind) that is moved to another
//! host and then checks itself; and what is refused (an inotify with events queued or
//! watching a deleted file, a fanotify group), with the container running on.

mod support;

use std::time::Duration;

use anyhow::ensure;
use support::{TempDir, TestLab, compile_c, log_in_image, wait_until};

/// Runs `anon MODE DIR` in a container on host-a, moves it to host-b once it is ready,
/// checks `migrate inspect` shows `shows`, lets it check itself, and returns its verdict
/// line, printed after the restore.
fn moved(mode: &str, shows: &[&str]) -> anyhow::Result<String> {
    let work = TempDir::new(mode)?;
    let img = TempDir::new(&format!("{mode}-img"))?;
    let exe = compile_c("anon", &["-O2", "-Wall"], &work.path)?;
    let lab = TestLab::up(2)?;
    lab.start("host-a", mode, &[&exe, mode, &work.path.to_string_lossy()])?;
    lab.wait_log(mode, "ready")?;
    let image = img.join(mode);
    lab.checkpoint_and_restore(mode, &image, "host-b")?;
    let inspect = lab.ok(&["inspect", &image])?;
    inspect.lines().filter(|l| l.trim_start().starts_with("fd ")).for_each(|l| eprintln!("inspect: {l}"));
    for s in shows {
        ensure!(inspect.contains(s), "inspect does not show {s:?}: {inspect}");
    }
    let before = log_in_image(&image)?;
    ensure!(!before.contains(&format!("{mode} ")), "a verdict before the checkpoint: {before}");
    std::fs::write(work.join("go"), b"")?;
    let log = lab.wait_log_for(mode, &format!("{mode} "), Duration::from_secs(30))?;
    lab.down_after_exit(mode)?;
    Ok(log.lines().find(|l| l.starts_with(&format!("{mode} "))).unwrap_or_default().to_string())
}

#[test]
fn a_timerfd_keeps_its_clock_time_left_period_and_unread_ticks() -> anyhow::Result<()> {
    let verdict = moved(
        "timerfd",
        &[
            "timerfd CLOCK_MONOTONIC",
            "every 1000 s, 1 tick unread",
            "timerfd CLOCK_BOOTTIME, ",
            "timerfd CLOCK_REALTIME_ALARM",
            "cancel on set",
            "timerfd CLOCK_MONOTONIC, disarmed, 1 tick unread",
        ],
    )?;
    ensure!(verdict == "timerfd ok", "{verdict}");
    Ok(())
}

#[test]
fn a_signalfd_reads_the_signals_pending_at_the_checkpoint() -> anyhow::Result<()> {
    // SIGUSR1 (10) and SIGRTMIN+2 (36).
    let verdict = moved("signalfd", &["signalfd, signals 10 36"])?;
    ensure!(verdict == "signalfd ok", "{verdict}");
    Ok(())
}

#[test]
fn inotify_watches_keep_their_numbers_and_see_events_after_the_move() -> anyhow::Result<()> {
    let verdict = moved(
        "inotify",
        &["inotify, 3 watches: wd 1 /tmp/", "/w/a mask 0xa", "wd 3 /tmp/", "wd 4 /run/anon-watched mask 0x4"],
    )?;
    ensure!(verdict == "inotify ok", "{verdict}");
    Ok(())
}

#[test]
fn pidfds_of_a_live_a_zombie_and_a_reaped_child_and_of_a_thread_work_after_the_move() -> anyhow::Result<()> {
    let verdict = moved(
        "pidfd",
        &["pidfd of pid 2", "pidfd of a process that has exited", "pidfd of pid 4", "pidfd of thread "],
    )?;
    ensure!(verdict == "pidfd ok", "{verdict}");
    Ok(())
}

#[test]
fn queued_inotify_events_a_deleted_watch_and_fanotify_are_refused_and_the_container_runs_on()
-> anyhow::Result<()> {
    let work = TempDir::new("refused")?;
    let img = TempDir::new("refused-img")?;
    let exe = compile_c("anon", &["-O2", "-Wall"], &work.path)?;
    let lab = TestLab::up(1)?;
    lab.start("host-a", "refused", &[&exe, "refused", &work.path.to_string_lossy()])?;
    let log = lab.wait_log("refused", "tick 2")?;
    let fds = log.lines().find(|l| l.starts_with("inotify fd ")).unwrap_or_default().to_string();
    let nth = |i: usize| fds.split(' ').nth(i).unwrap_or("?").to_string();
    let (inotify, fanotify, deleted) = (nth(2), nth(5), nth(8));
    let err = lab.fails(&["checkpoint", "refused", "--dir", &img.join("refused")])?;
    ensure!(
        err.contains("PID 1 (anon, host pid ")
            && err.contains(&format!("fd {inotify} is an inotify instance with events queued, not yet read"))
            && err.contains("retry the checkpoint once the program has read them"),
        "the refusal does not name the inotify fd {inotify}: {err}"
    );
    ensure!(
        err.contains(&format!("fd {fanotify} is a fanotify group (anon_inode:[fanotify]) is not supported")),
        "the refusal does not name the fanotify fd {fanotify}: {err}"
    );
    ensure!(
        err.contains(&format!("fd {deleted} is an inotify instance watching what cannot be found again: wd 1: its file or directory (inode ")),
        "the refusal does not name the watch on a deleted file (fd {deleted}): {err}"
    );
    let c = lab.container("refused")?;
    ensure!(c["state"] == "running", "the refused container does not run: {c}");
    let ticks = |l: &str| l.lines().filter(|l| l.starts_with("tick ")).count();
    let seen = ticks(&lab.logs("refused")?);
    ensure!(
        wait_until(Duration::from_secs(20), || lab.logs("refused").is_ok_and(|l| ticks(&l) >= seen + 3)),
        "the refused container stopped ticking"
    );
    lab.ok(&["stop", "refused"])?;
    lab.down_after_exit("refused")?;
    Ok(())
}
