//! The agent can die and come back without the containers noticing, and `lab down`
//! cleans up whatever state a dead agent left.

mod support;

use std::path::Path;

use anyhow::{Context, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{TestLab, cgroup_mounts, http_server, netns_names};

fn lab_json(lab: &TestLab) -> anyhow::Result<serde_json::Value> {
    let path = format!("/run/migrate/labs/{}/lab.json", lab.name);
    Ok(serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| path.clone())?)?)
}

fn agent_pid(lab: &TestLab, host: usize) -> anyhow::Result<i32> {
    let pid = lab_json(lab)?["hosts"][host]["agent_pid"].as_i64().context("agent_pid in lab.json")?;
    Ok(pid as i32)
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn sigkill_and_wait(pid: i32) -> anyhow::Result<()> {
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    ensure!(
        support::wait_until(std::time::Duration::from_secs(10), || !alive(pid.into())),
        "pid {pid} survived SIGKILL"
    );
    Ok(())
}

#[test]
fn containers_survive_an_agent_killed_and_restarted() -> anyhow::Result<()> {
    let lab = TestLab::up(1)?;
    let mut args = vec!["run", "--host", "host-a", "--name", "web", "--ip", "10.77.1.33", "--"];
    let server = http_server("still here");
    args.extend(server.iter().map(String::as_str));
    lab.ok(&args)?;
    lab.wait_log("web", "serving")?;
    let before = lab.container("web")?;
    let agent = agent_pid(&lab, 0)?;
    sigkill_and_wait(agent)?;

    // The container never noticed: it still answers, its PID 1 and shim still run.
    ensure!(lab.http_get_from_client("http://10.77.1.33/")? == "still here");
    ensure!(
        alive(before["pid"].as_i64().context("pid")?) && alive(before["shim_pid"].as_i64().context("shim")?)
    );
    let err = lab.fails(&["logs", "web"])?;
    ensure!(err.contains("cannot reach the agent"), "a dead agent is named as such: {err}");

    // `lab up` (no size needed: it repairs the lab it finds) starts the missing agent
    // again; it finds the container.
    lab.ok(&["lab", "up"])?;
    ensure!(agent_pid(&lab, 0)? != agent);
    let after = lab.container("web")?;
    ensure!(after["state"] == "running" && after["pid"] == before["pid"], "{after}");
    ensure!(lab.logs("web")?.contains("serving"));
    ensure!(lab.ok(&["exec", "web", "--", "hostname"])?.trim() == "web");
    lab.ok(&["stop", "web"])?;
    ensure!(lab.container("web")?["state"] == "exited");
    Ok(())
}

/// `logs -f` whose agent dies says so, and how to bring it back.
#[test]
fn logs_follow_reports_an_agent_that_died() -> anyhow::Result<()> {
    let lab = TestLab::up(1)?;
    lab.ok(&["run", "--name", "ticker", "--", "sh", "-c", "while :; do echo tick; sleep 0.2; done"])?;
    lab.wait_log("ticker", "tick")?;
    let mut follow = lab
        .cmd(&["logs", "-f", "ticker"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Let it connect and stream a little, then kill the agent under it.
    std::thread::sleep(std::time::Duration::from_millis(500));
    sigkill_and_wait(agent_pid(&lab, 0)?)?;
    let mut status = None;
    support::wait_until(std::time::Duration::from_secs(10), || {
        status = follow.try_wait().ok().flatten();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = follow.kill();
        let _ = follow.wait();
        anyhow::bail!("logs -f kept running after its agent died");
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().context("stderr")?, &mut err)?;
    ensure!(status.code() == Some(1), "{status:?}: {err}");
    ensure!(
        err.starts_with("error: the agent of host-a stopped answering") && err.contains("`migrate lab up`"),
        "{err}"
    );
    Ok(())
}

#[test]
fn lab_down_leaves_nothing_even_after_an_agent_was_killed() -> anyhow::Result<()> {
    let lab = TestLab::up(2)?;
    let server = http_server("x");
    for (host, name) in [("host-a", "one"), ("host-b", "two")] {
        let mut args = vec!["run", "--host", host, "--name", name, "--memory-max", "128M", "--"];
        args.extend(server.iter().map(String::as_str));
        lab.ok(&args)?;
    }
    let mut pids: Vec<i64> = Vec::new();
    for c in lab.ps()? {
        for key in ["pid", "shim_pid"] {
            pids.push(c[key].as_i64().with_context(|| format!("{key} of {c}"))?);
        }
    }
    let agents = [agent_pid(&lab, 0)?, agent_pid(&lab, 1)?];
    // Kill one agent halfway, and lose the lab's own record of itself.
    sigkill_and_wait(agents[0])?;
    std::fs::remove_file(format!("/run/migrate/labs/{}/lab.json", lab.name))?;

    let out = lab.ok(&["lab", "down"])?;
    // What was killed is summarised by role, not listed pid by pid.
    ensure!(out.contains("killed 1 agent (host-b) and 2 container shims (one, two)"), "{out}");
    ensure!(!out.contains("killed pid"), "{out}");

    let ours: Vec<String> =
        netns_names().into_iter().filter(|n| n.starts_with(&format!("{}-", lab.name))).collect();
    ensure!(ours.is_empty(), "network namespaces left: {ours:?}");
    for pid in pids.iter().chain(agents.iter().map(|p| i64::from(*p)).collect::<Vec<_>>().iter()) {
        ensure!(!alive(*pid), "process {pid} survived lab down");
    }
    // Not even a zombie waiting to be reaped: `down` returns once they are gone.
    for c in [&pids[0], &pids[2]] {
        ensure!(!Path::new(&format!("/proc/{c}")).exists(), "container PID 1 {c} is still in /proc");
    }
    for root in cgroup_mounts() {
        for host in ["host-a", "host-b"] {
            let dir = Path::new(&root).join("migrate").join(format!("{}-{host}", lab.name));
            ensure!(!dir.exists(), "cgroup left: {}", dir.display());
        }
    }
    ensure!(!Path::new(&format!("/run/migrate/labs/{}", lab.name)).exists(), "lab state dir left");
    // A second down of a lab that is gone is fine.
    lab.ok(&["lab", "down"])?;
    Ok(())
}

/// A restored container keeps the time `run` created it, and says when it was restored
/// and from where — in `restore`'s answer, `ps`, and after its agent restarts; the image
/// shows sizes in units that fit and open-file flags by name; `checkpoint --json` reports
/// the container as checkpointed, not as killed.
#[test]
fn a_restored_container_keeps_its_creation_time() -> anyhow::Result<()> {
    let lab = TestLab::up(2)?;
    let tmp = support::TempDir::new("restored-time")?;
    let (log, image) = (tmp.join("appended"), tmp.join("counter.img"));
    let script = format!("exec 3>>{log}; i=0; while :; do echo $i; i=$((i+1)); sleep 0.2; done");
    lab.ok(&["run", "--host", "host-a", "--name", "counter", "--", "sh", "-c", &script])?;
    lab.wait_log("counter", "3")?;
    let created = lab.container("counter")?["created_ms"].clone();
    ensure!(created.as_u64().is_some(), "{created}");
    let ck = lab.checkpoint("counter", &image, &[])?;
    ensure!(ck["container"]["state"] == "checkpointed" && ck["container"]["exit"].is_null(), "{ck}");
    let shown = lab.ok(&["inspect", &image])?;
    ensure!(shown.contains("O_WRONLY|O_APPEND") && !shown.contains("flags 0o"), "{shown}");
    ensure!(shown.contains(" KiB") && !shown.contains("0.0 MiB"), "{shown}");
    ensure!(shown.contains("taken ") && shown.contains(" on host-a, of a container created "), "{shown}");
    let rs = lab.restore(&image, "host-b")?;
    let c = &rs["container"];
    ensure!(c["created_ms"] == created, "restore keeps the creation time: {rs}");
    ensure!(c["restored"]["from_host"] == "host-a" && c["restored"]["image"] == image.as_str(), "{rs}");
    let ps = lab.ok(&["ps"])?;
    ensure!(ps.contains("RESTORED") && ps.contains("ago from host-a"), "{ps}");
    // The record of host-b's agent carries it across a restart.
    sigkill_and_wait(agent_pid(&lab, 1)?)?;
    lab.ok(&["lab", "up"])?;
    let again = lab.container("counter")?;
    ensure!(again["created_ms"] == created && again["restored"] == c["restored"], "{again}");
    Ok(())
}
