//! A checkpoint or a restore interrupted at any moment leaves nothing half-done.
//!
//! Walks every failpoint of `migrate_engine::failpoints` (the one table: a new failpoint
//! is walked without a change here), twice: once where the agent is SIGKILLed there
//! (`return(kill)`; the next agent, started by `lab up`, must clean up), once where the
//! operation fails there (`1*return` on all of them at once: each checkpoint or restore
//! fails at the next one, in the order they are reached). A small C program
//! (tests/programs/ticker.c: two processes of two threads, each main thread appending a
//! line to a file every 50 ms) is the container.
//!
//! After an interrupted checkpoint the source must run on exactly as before: not frozen
//! (`cgroup.events`), no thread traced (`TracerPid`), every thread's `SigBlk` as before,
//! as many maps and fds per process as before, still ticking; the image directory gone,
//! or complete when it was complete. After an interrupted restore, no process of the
//! image ran (the file they append to did not grow: the source is gone by then), nothing
//! of the container is left on the host, and the agent says what it removed. The image
//! comes from a checkpoint that stops the source and whose agent is killed while it
//! kills the processes: the next agent finishes it, and the image restores.
//!
//! Needs a build with the `failpoints` feature (`scripts/test` turns it on).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use migrate_engine::failpoints::Failpoint;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{TempDir, TestLab, compile_c, wait_until};

/// What a checkpoint must not change in a process it lets go.
#[derive(Debug, PartialEq, Eq)]
struct Visible {
    /// tid → (`SigBlk`, `TracerPid`), host tids.
    threads: BTreeMap<i32, (String, String)>,
    /// pid → (lines of `maps`, entries of `fd`).
    processes: BTreeMap<i32, (usize, usize)>,
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn visible(cgroup: &str) -> anyhow::Result<Visible> {
    let procs = std::fs::read_to_string(format!("{cgroup}/cgroup.procs"))?;
    let mut v = Visible { threads: BTreeMap::new(), processes: BTreeMap::new() };
    for pid in procs.split_whitespace().map(str::parse::<i32>) {
        let pid = pid?;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?.lines().count();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        v.processes.insert(pid, (maps, fds));
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let tid: i32 = t?.file_name().to_string_lossy().parse()?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))?;
            v.threads.insert(tid, (status_field(&status, "SigBlk"), status_field(&status, "TracerPid")));
        }
    }
    Ok(v)
}

fn lab_json(lab: &TestLab) -> anyhow::Result<serde_json::Value> {
    let path = format!("/run/migrate/labs/{}/lab.json", lab.name);
    Ok(serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| path.clone())?)?)
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// The agent log of host number `host`.
fn agent_log(lab: &TestLab, host: usize) -> anyhow::Result<String> {
    let path = lab_json(lab)?["hosts"][host]["log"].as_str().context("log in lab.json")?.to_string();
    std::fs::read_to_string(&path).with_context(|| path.clone())
}

fn agent_pid(lab: &TestLab, host: usize) -> anyhow::Result<i32> {
    Ok(lab_json(lab)?["hosts"][host]["agent_pid"].as_i64().context("agent_pid")? as i32)
}

/// Waits until the agent of `host` is gone (it killed itself at a failpoint).
fn wait_agent_gone(lab: &TestLab, host: usize) -> anyhow::Result<()> {
    let pid = agent_pid(lab, host)?;
    ensure!(wait_until(Duration::from_secs(10), || !alive(pid)), "agent {pid} is still there");
    Ok(())
}

/// Kills the agent of `host` if it is still there; then `lab up` starts a new one with
/// the failpoint scenario `scenario`.
fn restart_agent(lab: &TestLab, host: usize, scenario: Option<&str>) -> anyhow::Result<()> {
    let pid = agent_pid(lab, host)?;
    if alive(pid) {
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    }
    wait_agent_gone(lab, host)?;
    let mut cmd = lab.cmd(&["lab", "up"]);
    match scenario {
        Some(s) => cmd.env("FAILPOINTS", s),
        None => cmd.env_remove("FAILPOINTS"),
    };
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "lab up (FAILPOINTS={scenario:?}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Every failpoint of one operation (`checkpoint/` or `restore/`).
fn points(op: &str) -> Vec<Failpoint> {
    Failpoint::ALL.iter().copied().filter(|f| f.name().starts_with(op)).collect()
}

/// The same failpoints, each failing once: a scenario for one agent and many operations.
fn each_once(points: &[Failpoint]) -> String {
    points.iter().map(|f| format!("{}=1*return", f.name())).collect::<Vec<_>>().join(";")
}

fn file_len(path: &str) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The source after an interrupted checkpoint at `fp`: as it was, and running.
fn check_source(cgroup: &str, before: &Visible, ticks: &str, dir: &str, fp: Failpoint) -> anyhow::Result<()> {
    let events = std::fs::read_to_string(format!("{cgroup}/cgroup.events"))?;
    ensure!(events.lines().any(|l| l == "frozen 0"), "{}: the container is left frozen: {events}", fp.name());
    let now = visible(cgroup)?;
    ensure!(now == *before, "{}: the container differs:\nbefore {before:?}\nafter  {now:?}", fp.name());
    let len = file_len(ticks);
    ensure!(
        wait_until(Duration::from_secs(10), || file_len(ticks) > len),
        "{}: the container does not tick any more",
        fp.name()
    );
    // Gone, or complete (when the image was written before the interruption).
    let dir = std::path::Path::new(dir);
    ensure!(
        !dir.exists() || dir.join("manifest.img").exists(),
        "{}: a partial image is left in {}",
        fp.name(),
        dir.display()
    );
    Ok(())
}

/// The destination after an interrupted restore at `fp`: nothing ran, nothing is left.
fn check_no_restore(lab: &TestLab, ticks: &str, len: u64, fp: Failpoint) -> anyhow::Result<()> {
    let ps = lab.ps()?;
    ensure!(ps.iter().all(|c| c["name"] != "tk"), "{}: ps still lists the container: {ps:?}", fp.name());
    let left = lab.container_dirs("host-b");
    ensure!(left.is_empty(), "{}: host-b keeps {left:?}", fp.name());
    ensure!(file_len(ticks) == len, "{}: a process of the image ran (it wrote to {ticks})", fp.name());
    Ok(())
}

/// Whether no task in `cgroup` can run: none is left, or the cgroup is frozen.
fn nothing_runs(cgroup: &str) -> bool {
    let procs = std::fs::read_to_string(format!("{cgroup}/cgroup.procs")).unwrap_or_default();
    let events = std::fs::read_to_string(format!("{cgroup}/cgroup.events")).unwrap_or_default();
    procs.trim().is_empty() || events.lines().any(|l| l == "frozen 1")
}

#[test]
fn interrupted_checkpoints_and_restores_leave_nothing_half_done() -> anyhow::Result<()> {
    let tmp = TempDir::new("failpoints")?;
    let exe = compile_c("ticker", &["-O2", "-pthread"], &tmp.path)?;
    let ticks = tmp.join("ticks");
    let lab = TestLab::up(2)?;
    lab.start("host-a", "tk", &[&exe, &ticks])?;
    lab.wait_log("tk", "ready")?;
    let cgroup = lab.container("tk")?["cgroup"]["v2"].as_str().context("cgroup v2 in ps")?.to_string();
    let before = visible(&cgroup)?;
    ensure!(before.processes.len() == 2 && before.threads.len() == 4, "not the program's shape: {before:?}");
    ensure!(before.threads.values().all(|(_, tracer)| tracer == "0"), "traced before anything: {before:?}");

    // Checkpoints killed at each failpoint: the next agent puts the container back.
    let checkpoints = points("checkpoint/");
    for (i, fp) in checkpoints.iter().enumerate() {
        restart_agent(&lab, 0, Some(&format!("{}=return(kill)", fp.name())))?;
        let dir = tmp.join(&format!("killed-{i}"));
        let err = lab.fails(&["checkpoint", "tk", "--dir", &dir, "--leave-running"])?;
        eprintln!("{}: checkpoint killed: {}", fp.name(), err.trim());
        // Before another agent comes: the container runs on as before, or stays frozen.
        wait_agent_gone(&lab, 0)?;
        let freeze = std::fs::read_to_string(format!("{cgroup}/cgroup.freeze"))?;
        ensure!(
            freeze.trim() == "1" || visible(&cgroup)? == before,
            "{}: the dead agent left the container running but changed: {:?}",
            fp.name(),
            visible(&cgroup)?
        );
        let undone = agent_log(&lab, 0)?.matches("a checkpoint was interrupted").count();
        // Until the next agent removes it, a partial image says what it is.
        let partial = std::path::Path::new(&dir);
        if partial.join("pages.img").exists() && !partial.join("manifest.img").exists() {
            let err = lab.fails(&["inspect", &dir])?;
            ensure!(err.contains("incomplete image"), "{}: inspect of a partial image: {err}", fp.name());
        }
        restart_agent(&lab, 0, None)?;
        check_source(&cgroup, &before, &ticks, &dir, *fp)?;
        ensure!(
            agent_log(&lab, 0)?.matches("a checkpoint was interrupted").count() == undone + 1,
            "{}: the restarted agent does not say it put the container back",
            fp.name()
        );
        let note = lab.container("tk")?["note"].as_str().unwrap_or_default().to_string();
        ensure!(note.contains("checkpoint was interrupted"), "{}: ps does not say so: {note:?}", fp.name());
        // No failpoint lies inside a process's injected calls (see migrate_engine::journal).
        ensure!(!note.contains("injected calls"), "{}: {note}", fp.name());
    }
    // Checkpoints failing at each failpoint in turn: the engine's guards put it back.
    restart_agent(&lab, 0, Some(&each_once(&checkpoints)))?;
    for (i, fp) in checkpoints.iter().enumerate() {
        let dir = tmp.join(&format!("failed-{i}"));
        let err = lab.fails(&["checkpoint", "tk", "--dir", &dir, "--leave-running"])?;
        ensure!(err.contains(fp.name()), "{}: failed elsewhere: {err}", fp.name());
        check_source(&cgroup, &before, &ticks, &dir, *fp)?;
    }
    restart_agent(&lab, 0, None)?;

    // The image for the restores, by a checkpoint that stops the source (from here on
    // only a restored process can write to the ticks file) and whose agent dies while
    // killing it: the image was complete, so the next agent finishes the job.
    let image = tmp.join("image");
    restart_agent(&lab, 0, Some("checkpoint/mid-release=return(kill)"))?;
    lab.fails(&["checkpoint", "tk", "--dir", &image])?;
    restart_agent(&lab, 0, None)?;
    let log = agent_log(&lab, 0)?;
    ensure!(log.contains("the image is complete; removing the container"), "agent log:\n{log}");
    lab.ensure_gone("tk")?;
    ensure!(wait_until(Duration::from_secs(10), || !std::path::Path::new(&cgroup).exists()));
    let len = file_len(&ticks);

    let restores = points("restore/");
    let restoring =
        format!("{}/migrate/{}-host-b/tk", support::cgroup2_mount().context("no cgroup2 mount")?, lab.name);
    for fp in &restores {
        restart_agent(&lab, 1, Some(&format!("{}=return(kill)", fp.name())))?;
        let removed = agent_log(&lab, 1)?.matches("removing the remains of a restore").count();
        let err = lab.fails(&["restore", "--dir", &image, "--host", "host-b"])?;
        eprintln!("{}: restore killed: {}", fp.name(), err.trim());
        // Before another agent cleans up: what the dead one left must not be running.
        wait_agent_gone(&lab, 1)?;
        ensure!(
            wait_until(Duration::from_secs(10), || nothing_runs(&restoring)),
            "{}: tasks of the interrupted restore run on: {:?}",
            fp.name(),
            std::fs::read_to_string(format!("{restoring}/cgroup.procs"))
        );
        restart_agent(&lab, 1, None)?;
        check_no_restore(&lab, &ticks, len, *fp)?;
        ensure!(
            agent_log(&lab, 1)?.matches("removing the remains of a restore").count() == removed + 1,
            "{}: the restarted agent does not say what it removed",
            fp.name()
        );
    }
    restart_agent(&lab, 1, Some(&each_once(&restores)))?;
    for fp in &restores {
        let err = lab.fails(&["restore", "--dir", &image, "--host", "host-b"])?;
        ensure!(err.contains(fp.name()), "{}: failed elsewhere: {err}", fp.name());
        check_no_restore(&lab, &ticks, len, *fp)?;
    }
    restart_agent(&lab, 1, None)?;

    // Uninterrupted, the same image comes back and ticks on: the checks above could fail.
    lab.restore(&image, "host-b")?;
    ensure!(
        wait_until(Duration::from_secs(10), || file_len(&ticks) > len),
        "the restored container does not tick"
    );
    lab.down_expecting(&["tk"])
}
