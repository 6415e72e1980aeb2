//! A restored process is the same process: for every program of `tests/programs` and for
//! real programs (python3's http.server, redis-server, nginx, memcached, a bash
//! pipeline, sqlite3 holding a database open), the whole visible state of each process
//! (`support::procstate`) is read once the program is ready, the container is
//! checkpointed on host-a and restored on host-b, the state is read again and every
//! difference the exception table does not explain fails the test.
//!
//! `FIDELITY_DUMP=DIR` writes each program's normalised state, before and after, to
//! `DIR/NAME.before` and `DIR/NAME.after` (one `PID file key = value` a line), for `diff`.
//!
//! All programs run side by side in one lab, one container each. They are idle once
//! ready (they wait for a trigger that never comes), except `files` and `threads`, which
//! work on, and whose rows in the table say what moves meanwhile.

mod support;

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use support::procstate::{self, Snapshot};
use support::{TempDir, TestLab, compile_c, wait_until};

/// When a program is ready to be compared.
enum Ready {
    /// Its log holds this text.
    Log(&'static str),
    /// It listens on this TCP port (in its network namespace).
    Listening(u16),
}

struct Program {
    name: &'static str,
    cmd: Vec<String>,
    ready: Ready,
}

fn program(name: &'static str, cmd: Vec<String>, ready: Ready) -> Program {
    Program { name, cmd, ready }
}

/// Whether the task `pid`'s network namespace has a TCP listener on `port`.
fn listening(pid: i64, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() > 3
                    && w[3] == "0A"
                    && w[1].rsplit_once(':').is_some_and(|(_, p)| u16::from_str_radix(p, 16) == Ok(port))
            })
        })
    })
}

/// The host pids of the container `name`'s processes.
fn pids(lab: &TestLab, name: &str) -> anyhow::Result<Vec<i64>> {
    let c = lab.container(name)?;
    let cgroup = c["cgroup"]["v2"].as_str().with_context(|| format!("{name} has no cgroup2 path: {c}"))?;
    procstate::cgroup_pids(std::path::Path::new(cgroup))
}

/// Reads the state of `name`, twice in a row, until two reads agree (a program that has
/// just said "ready" may still be settling: a thread starting, a worker forking).
fn settled(lab: &TestLab, name: &str) -> anyhow::Result<Snapshot> {
    let mut last = procstate::snapshot(&pids(lab, name)?)?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(200));
        let now = procstate::snapshot(&pids(lab, name)?)?;
        if procstate::diff(name, &last, &now).unexplained.is_empty() {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Runs one program: start, ready, snapshot, move, snapshot; returns its report lines
/// and whether it failed.
fn compare(lab: &TestLab, img: &TempDir, p: &Program) -> anyhow::Result<(String, bool)> {
    let cmd: Vec<&str> = p.cmd.iter().map(String::as_str).collect();
    lab.start("host-a", p.name, &cmd)?;
    match p.ready {
        Ready::Log(text) => {
            lab.wait_log_for(p.name, text, Duration::from_secs(60))?;
        }
        Ready::Listening(port) => {
            let pid = lab.container(p.name)?["pid"].as_i64().context("pid")?;
            ensure!(
                wait_until(Duration::from_secs(60), || listening(pid, port)),
                "{} never listened on {port}: {}",
                p.name,
                lab.logs(p.name)?
            );
        }
    }
    let before = settled(lab, p.name)?;
    let image = img.join(p.name);
    lab.checkpoint_and_restore(p.name, &image, "host-b")?;
    let after = procstate::snapshot(&pids(lab, p.name)?)?;
    if let Some(dir) = std::env::var_os("FIDELITY_DUMP") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("{}.before", p.name)), before.lines())?;
        std::fs::write(dir.join(format!("{}.after", p.name)), after.lines())?;
    }
    let report = procstate::diff(p.name, &before, &after);
    let mut out = format!(
        "{}: {} processes, {} differences explained by nature, {} pending, {} unexplained\n",
        p.name,
        before.procs.len(),
        report.natural,
        report.pending.len(),
        report.unexplained.len()
    );
    for (d, branch) in &report.pending {
        out.push_str(&format!("  pending({branch}) {d}\n"));
    }
    for d in &report.unexplained {
        out.push_str(&format!("  DIFFERENT {d}\n"));
    }
    Ok((out, !report.unexplained.is_empty()))
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// bash, `seq` blocked on a full pipe, and a subshell running `sleep` that read part of it.
const PIPELINE: &str = "seq 1 1000000 | { head -c 1000 >/dev/null; echo ready; sleep 100000; }";

/// sqlite3 with a database in WAL mode open (its -wal and -shm files too), waiting on
/// its input.
const SQLITE: &str = r#"
db=$1/rows.db
sqlite3 "$db" 'PRAGMA journal_mode=WAL; CREATE TABLE t(n INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3);' >/dev/null
{ echo "SELECT 'rows', count(*) FROM t;"; sleep 100000; } | sqlite3 -batch "$db"
"#;

/// Programs of tests/programs the state test does not run, and why.
const NOT_RUN: &[(&str, &str)] = &[(
    "ipc_refuse",
    "every one of its modes holds something a checkpoint refuses (tests/checkpoint_ipc.rs)",
)];

#[test]
fn every_program_comes_back_with_the_state_it_had() -> anyhow::Result<()> {
    let bin = TempDir::new("fidelity-bin")?;
    let work = TempDir::new("fidelity")?;
    let img = TempDir::new("fidelity-img")?;
    let built = std::cell::RefCell::new(Vec::new());
    let c = |name: &'static str, flags: &[&str]| {
        built.borrow_mut().push(name);
        compile_c(name, flags, &bin.path)
    };
    let (anon, attrs, bench, epoll, files, inet, ipc, shared, state, ticker, timers, vmas) = (
        c("anon", &["-O2"])?,
        c("attrs", &["-O2", "-pthread"])?,
        c("bench_mem", &["-O2"])?,
        c("epoll", &["-O2"])?,
        c("files", &["-O2"])?,
        c("inet", &["-O2"])?,
        c("ipc", &["-O2"])?,
        c("shared", &["-O2"])?,
        c("proc_state", &["-O2", "-pthread"])?,
        c("ticker", &["-O2", "-pthread"])?,
        c("timers", &["-O2", "-pthread"])?,
        c("vmas", &["-O2", "-pthread"])?,
    );
    let dir = |name: &str| -> anyhow::Result<String> {
        let d = work.join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    };
    let numbers: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    std::fs::write(work.path.join("numbers.txt"), numbers)?;
    let (www, tmp, conf) = (dir("www")?, dir("nginx-tmp")?, work.join("nginx.conf"));
    std::fs::write(work.path.join("www/index.html"), "served by nginx\n")?;
    std::fs::write(&conf, support::nginx_conf(&www, &tmp))?;
    let trigger = work.join("never");
    let w = work.path.to_string_lossy().into_owned();

    let mut programs = Vec::new();
    for mode in ["timerfd", "signalfd", "inotify", "pidfd"] {
        let name = match mode {
            "timerfd" => "anon-timerfd",
            "signalfd" => "anon-signalfd",
            "inotify" => "anon-inotify",
            _ => "anon-pidfd",
        };
        programs.push(program(name, strs(&[&anon, mode, &dir(name)?]), Ready::Log("ready")));
    }
    programs.extend([
        program("attrs", strs(&[&attrs, &trigger, &dir("attrs")?]), Ready::Log("ready")),
        program("bench-mem", strs(&[&bench, "8", "cow", &dir("bench")?]), Ready::Log("pid 4")),
        program("epoll", strs(&[&epoll, &trigger]), Ready::Log("ready")),
        program("files", strs(&[&files, &w]), Ready::Log("hb 50")),
        program("inet", strs(&[&inet, "7000", "7001", "10.77.0.2", "9000", &trigger]), Ready::Log("ready")),
        program("ipc", strs(&[&ipc, &trigger]), Ready::Log("ready")),
        program("shared", strs(&[&shared, &dir("shared")?]), Ready::Log("status")),
        program("ticker", strs(&[&ticker, &work.join("ticks")]), Ready::Log("ready")),
        program("timers", strs(&[&timers, &trigger]), Ready::Log("ready ids")),
        program("vmas", strs(&[&vmas, &dir("vmas")?, &trigger]), Ready::Log("parent ready")),
        program("proc-state", strs(&[&state]), Ready::Log("state ready")),
        program("http-server", support::http_server("hello"), Ready::Log("serving")),
        program(
            "redis",
            strs(&[
                "redis-server",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "64",
                "--dir",
                "/run",
            ]),
            Ready::Listening(6379),
        ),
        program("nginx", strs(&["nginx", "-c", &conf]), Ready::Log("start worker process 3")),
        program(
            "memcached",
            strs(&["memcached", "-u", "root", "-m", "64", "-c", "64", "-t", "4"]),
            Ready::Listening(11211),
        ),
        program("pipeline", strs(&["bash", "-c", PIPELINE]), Ready::Log("ready")),
        program("sqlite", strs(&["bash", "-c", SQLITE, "sqlite", &dir("sqlite")?]), Ready::Log("rows|3")),
    ]);
    if std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" avx2")) {
        let threads = c("threads", &["-O2", "-pthread", "-mavx2"])?;
        programs.push(program("threads", strs(&[&threads]), Ready::Log("hb avx 2")));
    } else {
        built.borrow_mut().push("threads");
        eprintln!("SKIPPED threads: this CPU has no AVX2");
    }
    // Every program of tests/programs runs here, or says why not: a new one must be added.
    let mut missing = Vec::new();
    for e in std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/programs"))?
    {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".c")
            && !built.borrow().contains(&stem)
            && !NOT_RUN.iter().any(|(n, _)| *n == stem)
        {
            missing.push(stem.to_string());
        }
    }
    ensure!(
        missing.is_empty(),
        "tests/programs not in the state test (add them, or to NOT_RUN): {missing:?}"
    );

    let lab = TestLab::up(2)?;
    let results: Vec<anyhow::Result<(String, bool)>> = std::thread::scope(|s| {
        let handles: Vec<_> = programs.iter().map(|p| s.spawn(|| compare(&lab, &img, p))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("a comparison panicked"))).collect()
    });
    let mut failed = Vec::new();
    for (p, r) in programs.iter().zip(results) {
        match r {
            Ok((text, bad)) => {
                eprint!("{text}");
                if bad {
                    failed.push(p.name);
                }
            }
            Err(e) => {
                eprintln!("{}: ERROR {e:#}", p.name);
                failed.push(p.name);
            }
        }
    }
    ensure!(failed.is_empty(), "state differs after the restore, unexplained, in: {}", failed.join(", "));
    let names: Vec<&str> = programs.iter().map(|p| p.name).collect();
    lab.down_expecting(&names)?;
    Ok(())
}
