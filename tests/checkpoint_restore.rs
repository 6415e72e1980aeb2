//! Checkpoint and restore of one-process containers: memory, threads and their CPU
//! state, open files, moves between hosts, `--leave-running`, and `inspect`.
//!
//! Each test checks what the program itself observes after the restore (counters that
//! continue with no gap and no repeat, checksums, self-checks printed as `ERROR …`), not
//! only that the commands succeed.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use support::{TempDir, TestLab, compile_c, log_in_image, wait_until};

/// A python3 program that appends 0, 1, 2, … (one line every 100 ms) to `counter` through
/// an O_APPEND fd. With `dict_entries` > 0 it first builds a dict of that many entries
/// and prints `checksum 0 HEX` (sha256 over its items); then, each time the file
/// `check-N` appears in the directory (N = 1, 2, …), it prints `checksum N HEX` again.
fn counter_script(dir: &TempDir, dict_entries: usize) -> Vec<String> {
    let script = format!(
        r#"import hashlib, os, sys, time
d = {dir:?}
data = {{i: str(i) * 25 for i in range({dict_entries})}}
def checksum():
    h = hashlib.sha256()
    for k, v in data.items():
        h.update(b'%d=%s;' % (k, v.encode()))
    return h.hexdigest()
print(f'checksum 0 {{checksum()}}', flush=True)
fd = os.open(os.path.join(d, 'counter'), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
i = 0
n = 1
while True:
    os.write(fd, b'%d\n' % i)
    i += 1
    if os.path.exists(os.path.join(d, 'check-%d' % n)):
        print(f'checksum {{n}} {{checksum()}}', flush=True)
        n += 1
    time.sleep(0.1)
"#,
        dir = dir.path.to_string_lossy(),
    );
    vec!["python3".into(), "-u".into(), "-c".into(), script]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The numbers in a counter file; an error names the first line that is not the previous
/// plus one (a gap or a repeat) or not a number.
fn counter_lines(path: &str) -> anyhow::Result<Vec<u64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut out = Vec::new();
    // A last line without its newline may still be being written.
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    for (i, line) in whole.lines().enumerate() {
        let v: u64 =
            line.parse().with_context(|| format!("{path} line {}: {line:?} is not a number", i + 1))?;
        if v != i as u64 {
            let around: Vec<&str> = text.lines().skip(i.saturating_sub(3)).take(7).collect();
            bail!("{path} line {}: {v} where {i} was due (a gap or a repeat); around it: {around:?}", i + 1);
        }
        out.push(v);
    }
    Ok(out)
}

/// How many lines the counter file has (0 if it does not exist yet).
fn counter_len(path: &str) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

/// Waits until the counter file has at least `n` lines.
fn wait_counter(path: &str, n: usize) -> anyhow::Result<()> {
    ensure!(
        wait_until(Duration::from_secs(20), || counter_len(path) >= n),
        "{path} did not reach {n} lines; it has {}",
        counter_len(path)
    );
    Ok(())
}

/// The `checksum N HEX` line of a log.
fn checksum(log: &str, n: u32) -> anyhow::Result<String> {
    let prefix = format!("checksum {n} ");
    log.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::to_string)
        .with_context(|| format!("no {prefix:?} line in the log:\n{log}"))
}

#[test]
fn a_200_mb_python_dict_moves_to_another_host_intact() -> anyhow::Result<()> {
    let dir = TempDir::new("dict")?;
    let img = TempDir::new("dict-img")?;
    let lab = TestLab::up(2)?;
    let counter = dir.join("counter");
    lab.start("host-a", "dict", &strs(&counter_script(&dir, 700_000)))?;
    let log = lab.wait_log("dict", "checksum 0 ")?;
    let before = checksum(&log, 0)?;
    wait_counter(&counter, 5)?;
    let ip = lab.container("dict")?["ip"].clone();

    let image = img.join("image");
    let ck = lab.checkpoint("dict", &image, &[])?;
    let raw = ck["report"]["stats"]["bytes_raw"].as_u64().context("stats.bytes_raw")?;
    ensure!(raw >= 150 << 20, "the image holds only {raw} bytes of memory: the dict alone is ~200 MB");
    lab.ensure_gone("dict")?;
    // Frozen and then killed: the counter stopped where the image holds it.
    let at_checkpoint = counter_lines(&counter)?.len();

    let rs = lab.restore(&image, "host-b")?;
    ensure!(
        rs["container"]["ip"] == ip,
        "the restored container has another IP: {} vs {ip}",
        rs["container"]["ip"]
    );
    ensure!(lab.container("dict")?["host"] == "host-b");
    wait_counter(&counter, at_checkpoint + 10)?;
    std::fs::write(dir.path.join("check-1"), b"")?;
    let log = lab.wait_log("dict", "checksum 1 ")?;
    let after = checksum(&log, 1)?;
    ensure!(
        after == before,
        "the dict changed: checksum {before} before the checkpoint, {after} after the restore"
    );
    // No gap and no repeat across the move.
    let lines = counter_lines(&counter)?;
    ensure!(lines.len() > at_checkpoint + 10, "{} lines", lines.len());
    lab.down_expecting(&["dict"])?;
    Ok(())
}

/// The heartbeats `hb NAME SEQ` of a log, by thread name, in order.
fn heartbeats(log: &str) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in log.lines() {
        let mut words = line.split(' ');
        if let (Some("hb"), Some(name), Some(seq)) = (words.next(), words.next(), words.next())
            && let Ok(seq) = seq.parse()
        {
            out.entry(name.to_string()).or_default().push(seq);
        }
    }
    out
}

const THREADS: [&str; 7] = ["main", "mutex-a", "mutex-b", "condwait", "sleeper", "avx", "altstack"];

fn errors(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("ERROR")).collect()
}

#[test]
fn threads_with_locks_futexes_sleeps_avx_and_altstacks_survive_a_move() -> anyhow::Result<()> {
    if !std::fs::read_to_string("/proc/cpuinfo")?.split_whitespace().any(|w| w == "avx2") {
        eprintln!("SKIPPED: this CPU has no AVX2");
        return Ok(());
    }
    let bin = TempDir::new("threads-bin")?;
    let img = TempDir::new("threads-img")?;
    let exe = compile_c("threads", &["-O2", "-pthread", "-mavx2"], &bin.path)?;
    let lab = TestLab::up(2)?;
    lab.start("host-a", "thr", &[&exe])?;
    // Every thread has beaten at least twice.
    let mut log = String::new();
    ensure!(
        wait_until(Duration::from_secs(20), || {
            log = lab.logs("thr").unwrap_or_default();
            let hb = heartbeats(&log);
            THREADS.iter().all(|t| hb.get(*t).is_some_and(|s| s.len() >= 2))
        }),
        "not every thread beat twice:\n{log}"
    );
    let tids_before = lab.ok(&["exec", "thr", "--", "ls", "/proc/1/task"])?;
    ensure!(tids_before.lines().count() == THREADS.len(), "threads before: {tids_before}");
    let early = lab.logs("thr")?;
    ensure!(errors(&early).is_empty(), "errors before the checkpoint:\n{early}");

    // Checkpoint while the avx thread is inside its loop (running, not sleeping), so that
    // its ymm registers hold live values. Best effort: it runs ~80% of the time.
    let pid = lab.container("thr")?["pid"].as_i64().context("pid")?;
    let avx_running = || -> Option<bool> {
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
            if std::fs::read_to_string(t.path().join("comm")).ok()?.trim() == "avx" {
                let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
                return Some(stat.rsplit_once(") ")?.1.starts_with('R'));
            }
        }
        None
    };
    if !wait_until(Duration::from_secs(5), || avx_running() == Some(true)) {
        eprintln!("the avx thread was not seen running: it is checkpointed asleep");
    }
    let image = img.join("image");
    let ck = lab.checkpoint("thr", &image, &[])?;
    ensure!(ck["report"]["stats"]["threads"] == THREADS.len(), "{ck}");
    lab.ensure_gone("thr")?;
    let rs = lab.restore(&image, "host-b")?;
    ensure!(rs["report"]["threads"] == THREADS.len(), "{rs}");

    // Judge only what was printed after the freeze: the image's log is everything before.
    let pre = log_in_image(&image)?;
    let pre_max: BTreeMap<String, u64> =
        heartbeats(&pre).into_iter().map(|(k, v)| (k, v.last().copied().unwrap_or(0))).collect();
    let new_part = |log: &str| log.strip_prefix(pre.as_str()).unwrap_or(log).to_string();
    ensure!(
        wait_until(Duration::from_secs(20), || {
            log = lab.logs("thr").unwrap_or_else(|e| format!("{e:#}"));
            let hb = heartbeats(&new_part(&log));
            THREADS
                .iter()
                .all(|t| hb.get(*t).is_some_and(|s| s.last().copied().unwrap_or(0) >= pre_max[*t] + 3))
        }),
        "not every thread went on beating after the restore (last seen before: {pre_max:?}):\n{log}"
    );
    let new = new_part(&log);
    ensure!(errors(&log).is_empty(), "errors after the restore:\n{log}");
    ensure!(!new.contains("started"), "the program started again instead of going on:\n{log}");
    for (name, seqs) in heartbeats(&new) {
        ensure!(seqs.windows(2).all(|w| w[1] > w[0]), "thread {name}: heartbeats not increasing: {seqs:?}");
        ensure!(
            seqs[0] > pre_max[&name],
            "thread {name}: after the restore it beat {seqs:?}, but it had reached {} before",
            pre_max[&name]
        );
    }
    let tids_after = lab.ok(&["exec", "thr", "--", "ls", "/proc/1/task"])?;
    ensure!(tids_after == tids_before, "tids before: {tids_before:?}, after: {tids_after:?}");
    lab.down_expecting(&["thr"])?;
    Ok(())
}

#[test]
fn open_files_go_on_from_their_positions_and_keep_o_append() -> anyhow::Result<()> {
    let bin = TempDir::new("files-bin")?;
    let dir = TempDir::new("files")?;
    let img = TempDir::new("files-img")?;
    let exe = compile_c("files", &["-O2"], &bin.path)?;
    let numbers: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    std::fs::write(dir.path.join("numbers.txt"), numbers)?;
    let lab = TestLab::up(2)?;
    lab.start("host-a", "files", &[&exe, &dir.path.to_string_lossy()])?;
    lab.wait_log("files", "hb 50")?;
    let log_path = dir.join("append.log");

    let image = img.join("image");
    lab.checkpoint("files", &image, &[])?;
    lab.ensure_gone("files")?;
    let pre = append_log_check(&std::fs::read_to_string(&log_path)?, None)?;
    // Someone else appends while the container is away: an fd that lost O_APPEND would
    // overwrite this line.
    std::fs::OpenOptions::new().append(true).open(&log_path)?.write_all(b"MARK\n")?;
    lab.restore(&image, "host-b")?;
    ensure!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&log_path)
            .is_ok_and(|t| t.lines().count() >= pre as usize + 1 + 50)),
        "append.log stopped growing after the restore: {} lines",
        std::fs::read_to_string(&log_path)?.lines().count()
    );
    let text = std::fs::read_to_string(&log_path)?;
    let last = append_log_check(&text, Some(pre))?;
    ensure!(last >= pre + 50, "{last}");
    let log = lab.logs("files")?;
    ensure!(errors(&log).is_empty(), "the program saw its files change:\n{log}");
    lab.down_expecting(&["files"])?;
    Ok(())
}

/// Checks append.log: the numbers 1, 2, 3, … each once, with "MARK" right after `mark`
/// when given. Returns the last number.
fn append_log_check(text: &str, mark: Option<u64>) -> anyhow::Result<u64> {
    let mut expect = 1u64;
    let mut marked = false;
    for (i, line) in text.lines().enumerate() {
        if line == "MARK" && mark == Some(expect - 1) && !marked {
            marked = true;
            continue;
        }
        let v: u64 = line.parse().with_context(|| {
            format!("append.log line {}: {line:?} (MARK was due after {mark:?}); the file:\n{text}", i + 1)
        })?;
        ensure!(v == expect, "append.log line {}: {v} where {expect} was due; the file:\n{text}", i + 1);
        expect += 1;
    }
    ensure!(mark.is_none() || marked, "MARK is missing from append.log (overwritten?):\n{text}");
    Ok(expect - 1)
}

#[test]
fn a_container_moves_to_host_b_and_back() -> anyhow::Result<()> {
    let dir = TempDir::new("pingpong")?;
    let img = TempDir::new("pingpong-img")?;
    let lab = TestLab::up(2)?;
    let counter = dir.join("counter");
    lab.start("host-a", "pp", &strs(&counter_script(&dir, 1000)))?;
    lab.wait_log("pp", "checksum 0 ")?;
    let sum = checksum(&lab.logs("pp")?, 0)?;
    let ip = lab.container("pp")?["ip"].clone();
    wait_counter(&counter, 5)?;
    for (round, (from, to)) in
        [("host-a", "host-b"), ("host-b", "host-a"), ("host-a", "host-b")].iter().enumerate()
    {
        let check = round as u32 + 1;
        ensure!(lab.container("pp")?["host"] == *from);
        let image = img.join(&format!("round-{round}"));
        lab.checkpoint("pp", &image, &[])?;
        lab.ensure_gone("pp")?;
        let at = counter_lines(&counter)?.len();
        let rs = lab.restore(&image, to)?;
        ensure!(rs["container"]["ip"] == ip, "round {round}: IP {} instead of {ip}", rs["container"]["ip"]);
        wait_counter(&counter, at + 5)?;
        counter_lines(&counter).with_context(|| format!("after the move {from} → {to}"))?;
        std::fs::write(dir.path.join(format!("check-{check}")), b"")?;
        let log = lab.wait_log("pp", &format!("checksum {check} "))?;
        ensure!(checksum(&log, check)? == sum, "round {round}: the dict changed");
    }
    lab.down_expecting(&["pp"])?;
    Ok(())
}

#[test]
fn leave_running_keeps_the_original_and_the_image_restores_after_it_is_removed() -> anyhow::Result<()> {
    let dir = TempDir::new("leave")?;
    let img = TempDir::new("leave-img")?;
    let lab = TestLab::up(2)?;
    let counter = dir.join("counter");
    lab.start("host-a", "keep", &strs(&counter_script(&dir, 1000)))?;
    lab.wait_log("keep", "checksum 0 ")?;
    wait_counter(&counter, 5)?;
    let orig = lab.container("keep")?;
    let before_call = counter_len(&counter);

    let image = img.join("image");
    let ck = lab.checkpoint("keep", &image, &["--leave-running"])?;
    let after_call = counter_len(&counter);
    // The original goes on: same process, still counting, no gap.
    let now = lab.container("keep")?;
    ensure!(now["state"] == "running" && now["pid"] == orig["pid"], "before: {orig}\nafter: {now}");
    ensure!(ck["container"]["pid"] == orig["pid"], "{ck}");
    wait_counter(&counter, after_call + 10)?;
    counter_lines(&counter).context("the original after checkpoint --leave-running")?;
    ensure!(lab.container("keep")?["pid"] == orig["pid"]);

    lab.ok(&["stop", "keep"])?;
    lab.ok(&["rm", "keep"])?;
    let stopped_at = counter_len(&counter);
    let rs = lab.restore(&image, "host-b")?;
    ensure!(rs["container"]["name"] == "keep" && rs["container"]["ip"] == orig["ip"], "{rs}");
    wait_counter(&counter, stopped_at + 10)?;
    // The restored process goes on from the value it had at the checkpoint: somewhere
    // between what the file held when the command started and when it returned.
    let text = std::fs::read_to_string(&counter)?;
    let lines: Vec<u64> = text.lines().map(|l| l.parse()).collect::<Result<_, _>>()?;
    let resumed = lines.get(stopped_at..).context("restored lines")?;
    let first = resumed[0];
    ensure!(
        (before_call as u64..=after_call as u64).contains(&first),
        "the restored counter starts at {first}; the checkpoint was taken when the file had {before_call}..{after_call} lines"
    );
    ensure!(
        resumed.iter().enumerate().all(|(i, &v)| v == first + i as u64),
        "the restored counter is not consecutive: {resumed:?}"
    );
    lab.down_expecting(&["keep"])?;
    Ok(())
}

#[test]
fn inspect_shows_threads_memory_and_files_and_dumps_bytes() -> anyhow::Result<()> {
    let dir = TempDir::new("inspect")?;
    let img = TempDir::new("inspect-img")?;
    let lab = TestLab::up(1)?;
    let script = format!(
        r#"import os, sys, threading, time
marker = b'MIGRATE-MARKER-' * 200
fd = os.open({path:?}, os.O_RDONLY)
threading.Thread(target=lambda: time.sleep(100000), daemon=True).start()
print(f'addr {{hex(id(marker))}}', flush=True)
time.sleep(100000)
"#,
        path = dir.join("held.txt")
    );
    std::fs::write(dir.path.join("held.txt"), b"held open\n")?;
    lab.start("host-a", "insp", &["python3", "-u", "-c", &script])?;
    let log = lab.wait_log("insp", "addr 0x")?;
    let addr = log.split("addr 0x").nth(1).and_then(|s| s.split_whitespace().next()).context("addr")?;
    // CPython's bytes object: a 32-byte header, then the bytes.
    let data = u64::from_str_radix(addr, 16)? + 32;
    let image = img.join("image");
    lab.checkpoint("insp", &image, &[])?;

    let human = lab.ok(&["inspect", &image])?;
    for needle in
        ["threads:", "tid 1 ", "tid 2 ", "memory map:", "[heap]", "[stack]", "files:", "held.txt", "python3"]
    {
        ensure!(human.contains(needle), "inspect does not show {needle:?}:\n{human}");
    }

    let json = lab.json(&["inspect", &image, "--json"])?;
    let p = &json["processes"][0];
    ensure!(p["threads"].as_array().is_some_and(|t| t.len() == 2), "threads: {}", p["threads"]);
    let vmas = p["vmas"].as_array().context("processes[0].vmas")?;
    ensure!(vmas.len() > 5, "vmas: {vmas:?}");
    let holds = |v: &serde_json::Value| {
        v["start"].as_u64().is_some_and(|s| s <= data) && v["end"].as_u64().is_some_and(|e| data + 3000 <= e)
    };
    ensure!(vmas.iter().any(holds), "no VMA holds the marker at {data:#x}: {vmas:?}");
    ensure!(
        p["fds"].as_array().is_some_and(|fds| fds.iter().any(|f| f.to_string().contains("held.txt"))),
        "fds: {}",
        p["fds"]
    );
    ensure!(json["manifest"]["stats"]["threads"] == 2, "{}", json["manifest"]);

    let dump = lab.ok(&["inspect", &image, "--hexdump", &format!("{data:#x}:256")])?;
    // The ASCII column, line after line, holds the marker.
    let ascii: String = dump
        .lines()
        .filter_map(|l| l.split_once('|').map(|(_, r)| r.trim_end_matches('|').to_string()))
        .collect();
    ensure!(ascii.contains("MIGRATE-MARKER-MIGRATE-MARKER-"), "the hexdump lacks the marker:\n{dump}");
    ensure!(dump.contains("4d 49 47 52 41 54 45"), "the hexdump shows no bytes of the marker:\n{dump}");
    // Ranges beyond user space, processes the image lacks, no image at all: errors.
    for (args, says) in [
        (vec!["--hexdump", "0xffffffffffffffff:256"], "beyond user space"),
        (vec!["--hexdump", "0x1000", "--pid", "77"], "--pid 77: no such process in the image"),
    ] {
        let err = lab.fails(&[&["inspect", image.as_str()][..], &args].concat())?;
        ensure!(err.contains(says) && !err.contains("panicked"), "{args:?}: {err}");
    }
    let missing = format!("{image}-missing");
    let err = lab.fails(&["inspect", &missing])?;
    ensure!(err.contains("does not exist") && !err.contains("cannot restore"), "{err}");
    lab.down_expecting(&[])?;
    Ok(())
}

/// A process that is not root, with a smaller bounding set, an inheritable and ambient
/// capability, and no_new_privs, keeps all of it (`setpriv`, from util-linux).
#[test]
fn credentials_and_capabilities_of_a_non_root_process_survive_a_move() -> anyhow::Result<()> {
    let img = TempDir::new("creds-img")?;
    let lab = TestLab::up(2)?;
    let setpriv = [
        "setpriv",
        "--reuid=1000",
        "--regid=1000",
        "--groups=1000,1001",
        "--inh-caps=+net_bind_service",
        "--ambient-caps=+net_bind_service",
        "--bounding-set=-sys_admin,-net_raw",
        "--no-new-privs",
        "sh",
        "-c",
        "echo ready; exec sleep 100000",
    ];
    lab.start("host-a", "creds", &setpriv)?;
    lab.wait_log("creds", "ready")?;
    let creds = || -> anyhow::Result<String> {
        let status = lab.ok(&["exec", "creds", "--", "cat", "/proc/1/status"])?;
        let keys = ["Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"];
        Ok(status
            .lines()
            .filter(|l| keys.iter().any(|k| l.starts_with(&format!("{k}:"))))
            .collect::<Vec<_>>()
            .join("\n"))
    };
    let before = creds()?;
    ensure!(before.contains("CapAmb:\t0000000000000400") && before.contains("Uid:\t1000"), "{before}");
    lab.checkpoint_and_restore("creds", &img.join("creds"), "host-b")?;
    let after = creds()?;
    ensure!(after == before, "credentials changed:\nbefore\n{before}\nafter\n{after}");
    lab.down_expecting(&["creds"])?;
    Ok(())
}
