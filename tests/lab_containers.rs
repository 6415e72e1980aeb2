//! Containers in a lab: reachable over the lab network from the client and the other
//! hosts, isolated as a container should be, limited, stopped and removed.

mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use support::{TestLab, http_server, wait_until};

fn run_args<'a>(host: &'a str, name: &'a str, extra: &[&'a str], cmd: &'a [String]) -> Vec<&'a str> {
    let mut a = vec!["run", "--host", host, "--name", name];
    a.extend_from_slice(extra);
    a.push("--");
    a.extend(cmd.iter().map(String::as_str));
    a
}

#[test]
fn http_servers_on_two_hosts_answer_the_client_and_each_other() -> anyhow::Result<()> {
    let lab = TestLab::up(2)?;
    let a = http_server("hello from a");
    let b = http_server("hello from b");
    let out = lab.ok(&run_args("host-a", "web-a", &["--ip", "10.77.1.10/16"], &a))?;
    ensure!(out.contains("10.77.1.10"), "run shows the address: {out}");
    let out = lab.ok(&run_args("host-b", "web-b", &[], &b))?;
    // Without --ip a free address is taken and shown.
    let ip_b = lab.container("web-b")?["ip"].as_str().context("ip")?.to_string();
    ensure!(out.contains(&ip_b), "run shows the chosen address {ip_b}: {out}");
    ensure!(ip_b != "10.77.1.10");
    lab.wait_log("web-a", "serving")?;
    lab.wait_log("web-b", "serving")?;
    ensure!(lab.http_get_from_client("http://10.77.1.10:80/")? == "hello from a");
    ensure!(lab.http_get_from_client(&format!("http://{ip_b}:80/"))? == "hello from b");
    // Across hosts, at layer 2 through the LAN: host-b reaches the container on host-a.
    let script = "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://10.77.1.10/', timeout=5).read().decode())";
    ensure!(lab.ok(&["lab", "exec", "host-b", "--", "python3", "-c", script])? == "hello from a");
    let ps = lab.ps()?;
    ensure!(ps.len() == 2 && ps.iter().all(|c| c["state"] == "running"), "{ps:?}");
    // `lab status` counts each host's containers (leaves of the cgroup v2 hierarchy).
    let status: serde_json::Value = serde_json::from_str(&lab.ok(&["lab", "status", "--json"])?)?;
    let counts: Vec<_> =
        status["hosts"].as_array().context("hosts")?.iter().map(|h| h["containers"].clone()).collect();
    ensure!(counts == [1, 1], "containers per host: {counts:?}");
    lab.ok(&["rm", "--force", "web-b"])?;
    let table = lab.ok(&["lab", "status"])?;
    let row = |host: &str| table.lines().find(|l| l.trim_start().starts_with(host)).map(str::to_string);
    ensure!(row("host-a").context("host-a row")?.ends_with(" 1"), "{table}");
    ensure!(row("host-b").context("host-b row")?.ends_with(" 0"), "{table}");
    Ok(())
}

/// The next steps `lab up` suggests work on a fresh machine (python3 and curl, which
/// install-deps brings), pasted at once: `run --wait-port` waits until the server listens.
#[test]
fn the_hint_of_lab_up_works() -> anyhow::Result<()> {
    let lab = TestLab::up(1)?;
    let out = lab.ok(&["lab", "up"])?;
    let hint: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("try:"))
        .map(|l| l.trim_start().trim_start_matches("try:").trim_start())
        .collect();
    ensure!(hint.len() == 2 && hint.iter().all(|l| l.starts_with("migrate ")), "{out}");
    ensure!(!out.contains("ping"), "{out}");
    let shell = |line: &str| {
        let script = format!("{} {}", support::BIN, &line["migrate ".len()..]);
        let mut c = std::process::Command::new("sh");
        c.args(["-c", &script]).env("MIGRATE_LAB", &lab.name);
        c.output()
    };
    let started = shell(hint[0])?;
    ensure!(started.status.success(), "{}: {}", hint[0], String::from_utf8_lossy(&started.stderr));
    // `run --wait-port` returns once the server listens: the first request is answered.
    let got = shell(hint[1])?;
    let head = String::from_utf8_lossy(&got.stdout);
    ensure!(got.status.success() && head.starts_with("HTTP/1.0 200 OK"), "{}: {head}", hint[1]);
    // A program that ends before it listens fails the run, and says how it ended.
    let err =
        lab.fails(&["run", "--name", "gone", "--wait-port", "81", "--", "sh", "-c", "sleep 0.2; exit 4"])?;
    ensure!(err.contains("gone ended before it listened on port 81 (exit code 4)"), "{err}");
    Ok(())
}

#[test]
fn a_container_sees_only_itself() -> anyhow::Result<()> {
    let lab = TestLab::up(1)?;
    let script = "import os,socket,time\n\
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n\
print(' '.join(['pid', str(os.getpid()), 'host', socket.gethostname(), 'nets', ','.join(sorted(os.listdir('/sys/class/net'))), 'procs', str(pids)]), flush=True)\n\
time.sleep(600)\n";
    let cmd = vec!["python3".to_string(), "-c".to_string(), script.to_string()];
    lab.ok(&run_args("host-a", "box", &[], &cmd))?;
    let log = lab.wait_log("box", "procs")?;
    ensure!(log.contains("pid 1 host box nets eth0,lo procs [1]"), "inside view: {log}");
    // exec enters every namespace and the cgroup.
    ensure!(lab.ok(&["exec", "box", "--", "hostname"])?.trim() == "box");
    ensure!(lab.ok(&["exec", "box", "--", "cat", "/proc/1/cmdline"])?.starts_with("python3"));
    ensure!(lab.ok(&["exec", "box", "--", "cat", "/proc/self/cgroup"])?.contains("0::/"));
    let ip = lab.ok(&["exec", "box", "--", "cat", "/proc/net/fib_trie"])?;
    ensure!(ip.contains("10.77.1."), "its address is in its own netns: {ip}");
    // The exit status of the command comes back.
    let out = lab.run(&["exec", "box", "--", "sh", "-c", "exit 7"])?;
    ensure!(out.status.code() == Some(7), "{:?}", out.status);
    // A program that cannot start is named, with a shell's exit status.
    let plain = std::env::temp_dir().join(format!("migrate-not-exec-{}", std::process::id()));
    std::fs::write(&plain, "not a program\n")?;
    std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let plain = plain.to_string_lossy().into_owned();
    for (program, code, says) in [
        ("nosuchcmd", 127, "nosuchcmd: command not found in the PATH of container box"),
        ("/nosuch", 127, "/nosuch: no such file in container box"),
        ("./rel", 127, "./rel: no such file in container box"),
        (plain.as_str(), 126, "cannot execute it in container box"),
    ] {
        let out = lab.run(&["exec", "box", "--", program])?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(code), "exec {program}: {:?} {err}", out.status);
        ensure!(err.starts_with(&format!("error: {program}: ")), "exec {program}: {err}");
        ensure!(err.contains(says) && !err.contains("spawn failed"), "exec {program}: {err}");
    }
    let _ = std::fs::remove_file(&plain);
    // So does `lab exec`.
    let out = lab.run(&["lab", "exec", "client", "--", "/nonexistent"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(127) && err.contains("/nonexistent: no such file"), "{err}");
    let out = lab.run(&["lab", "exec", "client", "--", "nosuchcmd"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(127) && err.contains("nosuchcmd: command not found"), "{err}");
    // `ps` shows the multi-line script on one line, escaped and shortened; --json has it all.
    let table = lab.ok(&["ps"])?;
    ensure!(table.lines().count() == 2, "one line per container: {table}");
    let row = table.lines().nth(1).context("row")?;
    ensure!(row.contains("python3 -c $'import os,socket,time\\npids") && row.ends_with('…'), "{row}");
    ensure!(lab.container("box")?["cmd"][2] == script, "--json keeps the whole command");
    Ok(())
}

#[test]
fn memory_and_pids_limits_are_in_force() -> anyhow::Result<()> {
    let lab = TestLab::up(1)?;
    let hog = vec![
        "python3".to_string(),
        "-c".to_string(),
        "import time\nchunks = []\nfor i in range(64):\n    chunks.append(bytes([1]) * (8 << 20))\n    print(f'allocated {(i + 1) * 8} MiB', flush=True)\ntime.sleep(600)\n".to_string(),
    ];
    lab.ok(&run_args("host-a", "hog", &["--memory-max", "64M"], &hog))?;
    let forker = vec![
        "python3".to_string(),
        "-c".to_string(),
        "import subprocess,time\nok = 0\nfor i in range(20):\n    try:\n        subprocess.Popen(['sleep', '600']); ok += 1\n    except OSError as e:\n        print(f'refused {e.errno}', flush=True)\n        break\nprint(f'started {ok}', flush=True)\ntime.sleep(600)\n".to_string(),
    ];
    lab.ok(&run_args("host-a", "forker", &["--pids-max", "6"], &forker))?;
    // 64 MiB cannot hold 512 MiB: the kernel kills it (SIGKILL, by the OOM killer).
    ensure!(
        wait_until(Duration::from_secs(30), || lab.container("hog").is_ok_and(|c| c["state"] == "exited")),
        "the memory hog was not stopped by its limit: {}",
        lab.logs("hog")?
    );
    let hog = lab.container("hog")?;
    ensure!(hog["exit"]["signal"] == 9, "{hog}");
    let log = lab.logs("hog")?;
    ensure!(!log.contains("allocated 512 MiB"), "{log}");
    let log = lab.wait_log("forker", "started")?;
    ensure!(log.contains("refused 11"), "fork beyond pids.max fails with EAGAIN: {log}");
    let started: usize = log.split("started ").nth(1).and_then(|s| s.trim().parse().ok()).context("count")?;
    ensure!((1..20).contains(&started), "{log}");
    let limits = &lab.container("forker")?["limits"];
    ensure!(limits[0]["limit"] == "pids_max" && limits[0]["value"] == 6, "{limits}");
    Ok(())
}

#[test]
fn exited_containers_stay_listed_until_removed() -> anyhow::Result<()> {
    let lab = TestLab::up(1)?;
    let quick = vec!["sh".to_string(), "-c".to_string(), "echo bye; echo oops >&2; exit 7".to_string()];
    lab.ok(&run_args("host-a", "quick", &[], &quick))?;
    ensure!(wait_until(Duration::from_secs(10), || lab
        .container("quick")
        .is_ok_and(|c| c["state"] == "exited")));
    ensure!(lab.container("quick")?["exit"]["code"] == 7);
    let log = lab.logs("quick")?;
    ensure!(log.contains("bye") && log.contains("oops"), "{log}");
    ensure!(lab.ok(&["ps"])?.contains("exit code 7"));
    // migrate's own option after the program's name goes to the program: a program that
    // then ends within a second of `run` is reported, and the option named.
    let out = lab.run(&["run", "--name", "typo", "--", "sh", "-c", "exit 2", "--json"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{err}");
    ensure!(err.contains("typo exited within a second of its start (exit code 2)"), "{err}");
    ensure!(err.contains("--json came after the program's name"), "{err}");
    // A PID 1 that handles SIGTERM gets it; one that does not is killed at once.
    let polite = vec![
        "sh".to_string(),
        "-c".to_string(),
        "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.1; done".to_string(),
    ];
    lab.ok(&run_args("host-a", "polite", &[], &polite))?;
    lab.wait_log("polite", "ready")?;
    let out = lab.ok(&["stop", "polite"])?;
    ensure!(out.contains("SIGTERM") && !out.contains("SIGKILL"), "{out}");
    ensure!(lab.container("polite")?["exit"]["code"] == 3);
    let deaf = http_server("x");
    lab.ok(&run_args("host-a", "deaf", &[], &deaf))?;
    let out = lab.ok(&["stop", "deaf"])?;
    ensure!(out.contains("SIGKILL") && out.contains("no SIGTERM handler"), "{out}");
    // rm frees the name and the address.
    let removed: serde_json::Value = serde_json::from_str(&lab.ok(&["rm", "quick", "--json"])?)?;
    ensure!(removed["name"] == "quick" && removed["exit"]["code"] == 7, "{removed}");
    ensure!(lab.container("quick").is_err());
    lab.ok(&run_args("host-a", "quick", &[], &quick))?;
    // rm refuses a running container unless forced.
    lab.ok(&run_args("host-a", "alive", &[], &deaf))?;
    let err = lab.fails(&["rm", "alive"])?;
    ensure!(err.contains("is running"), "{err}");
    lab.ok(&["rm", "--force", "alive"])?;
    Ok(())
}
