//! Memory and files shared between processes: shared anonymous memory, a sealed memfd,
//! deleted files (open, and only mapped), pages shared copy-on-write after fork, and a
//! python multiprocessing pool built on all of that — each moved to another host.

mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use support::{TempDir, TestLab, compile_c, log_in_image, wait_until};

/// The value of `key=` in a status line of `tests/programs/shared.c`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn shared_memory_a_sealed_memfd_and_deleted_files_stay_shared() -> anyhow::Result<()> {
    let bin = TempDir::new("shared-bin")?;
    let exe = compile_c("shared", &["-O2"], &bin.path)?;
    let work = TempDir::new("shared-work")?;
    let img = TempDir::new("shared-img")?;
    let lab = TestLab::up(2)?;
    lab.start("host-a", "shm", &[&exe, &work.path.to_string_lossy()])?;
    lab.wait_log("shm", "status")?;
    // The file was unlinked: nothing of it is left to see but the open fd.
    ensure!(std::fs::read_dir(&work.path)?.next().is_none(), "the deleted file is still there");
    let image = img.join("shm");
    lab.checkpoint_and_restore("shm", &image, "host-b")?;
    // Judged after the freeze only: the image's log is everything printed before it.
    let pre = log_in_image(&image)?;
    let anon = |l: &str| field(l, "anon").and_then(|v| v.parse::<u64>().ok());
    let before = pre.lines().filter_map(anon).next_back().context("no status line before the freeze")?;
    // The child's counters keep moving in the parent's view, and every check holds.
    let moved = |log: &str| {
        log.strip_prefix(pre.as_str()).is_some_and(|new| new.lines().any(|l| anon(l) > Some(before + 50)))
    };
    ensure!(
        wait_until(Duration::from_secs(20), || lab.logs("shm").is_ok_and(|t| moved(&t))),
        "the child's writes are not seen by the parent after the restore: {}",
        lab.logs("shm")?
    );
    let log = lab.logs("shm")?;
    for line in log.lines().filter(|l| l.starts_with("status")) {
        ensure!(
            ["echo", "memfd", "deleted"].iter().all(|k| field(line, k) == Some("ok"))
                // The child bumps one counter, then the other: the parent may read between.
                && anon(line).zip(field(line, "shm").and_then(|v| v.parse::<u64>().ok())).is_some_and(|(a, s)| a.abs_diff(s) <= 1),
            "a check failed: {line}\n{log}"
        );
    }
    ensure!(std::fs::read_dir(&work.path)?.next().is_none(), "the restore left the deleted file behind");
    lab.down_expecting(&["shm"])?;
    Ok(())
}

/// The sum of `Pss` over the container's processes, in KiB (its own `/proc`, leaving out
/// the reader that `exec` starts).
fn pss_kib(lab: &TestLab, name: &str) -> anyhow::Result<u64> {
    let script = r#"
import os
total = 0
for p in (x for x in os.listdir('/proc') if x.isdigit()):
    try:
        if int(p) == os.getpid():
            continue
        for line in open(f'/proc/{p}/smaps_rollup'):
            if line.startswith('Pss:'):
                total += int(line.split()[1])
    except OSError:
        pass
print(total)
"#;
    let out = lab.ok(&["exec", name, "--", "python3", "-c", script])?;
    out.trim().parse().with_context(|| format!("Pss sum: {out}"))
}

/// 200 MB written, then four children forked: every page shared five ways.
const COW_TREE: &str = r#"
import os, time
data = bytearray(os.urandom(1 << 20) * 200)
kids = []
for i in range(4):
    pid = os.fork()
    if pid == 0:
        while True:
            time.sleep(1)
    kids.append(pid)
print(' '.join(['forked', *map(str, kids)]), flush=True)
while True:
    time.sleep(1)
"#;

#[test]
fn pages_shared_copy_on_write_are_stored_once_and_shared_again() -> anyhow::Result<()> {
    let img = TempDir::new("cow-img")?;
    let lab = TestLab::up(2)?;
    lab.start("host-a", "cow", &["python3", "-c", COW_TREE])?;
    lab.wait_log("cow", "forked")?;
    let before = pss_kib(&lab, "cow")?;
    ensure!(before > 200 << 10, "the tree holds {before} KiB, less than its 200 MB");
    // Reading the pages must not unshare them in the source (a pinning read would).
    let live = img.join("cow-live");
    lab.ok(&["checkpoint", "cow", "--dir", &live, "--leave-running"])?;
    let still = pss_kib(&lab, "cow")?;
    ensure!(
        (still as f64) < before as f64 * 1.1,
        "the checkpoint broke the copy-on-write sharing of the source: Pss {before} KiB before, {still} KiB after"
    );
    let dir = img.join("cow");
    let report = lab.json(&["checkpoint", "cow", "--dir", &dir, "--json"])?;
    let stored = report["report"]["stats"]["pages_stored"].as_u64().context("pages_stored")? * 4096;
    ensure!(stored < 260 << 20, "the image stores {} MiB for 200 MB shared by five processes", stored >> 20);
    lab.ok(&["restore", "--dir", &dir, "--host", "host-b"])?;
    let after = pss_kib(&lab, "cow")?;
    let ratio = after as f64 / before as f64;
    eprintln!(
        "CoW tree: image stores {} MiB; Pss {before} KiB before, {after} KiB after (×{ratio:.3})",
        stored >> 20
    );
    ensure!(
        (0.9..=1.1).contains(&ratio),
        "Pss of the tree: {before} KiB before, {after} KiB after the restore (×{ratio:.2})"
    );
    lab.down_expecting(&["cow"])?;
    Ok(())
}

/// A pool of four workers squaring numbers, results gathered through the pool's queues
/// (pipes) and guarded by its locks (POSIX semaphores: unlinked files of /dev/shm).
const POOL: &str = r#"
import multiprocessing as mp, time
def square(x):
    time.sleep(0.004)
    return x * x
if __name__ == '__main__':
    with mp.get_context('fork').Pool(4) as pool:
        got = []
        for i, r in enumerate(pool.imap(square, range(4000), chunksize=2)):
            got.append(r)
            if i % 200 == 0:
                print(f'progress {i}', flush=True)
    print(f"done {len(got)} {'correct' if got == [x * x for x in range(4000)] else 'WRONG'}", flush=True)
"#;

#[test]
fn a_python_multiprocessing_pool_finishes_its_work_after_a_move() -> anyhow::Result<()> {
    let img = TempDir::new("pool-img")?;
    let lab = TestLab::up(2)?;
    lab.start("host-a", "pool", &["python3", "-c", POOL])?;
    lab.wait_log("pool", "progress 400")?;
    ensure!(!lab.logs("pool")?.contains("done"), "the pool finished before the checkpoint");
    lab.checkpoint_and_restore("pool", &img.join("pool"), "host-b")?;
    ensure!(
        wait_until(Duration::from_secs(60), || lab.logs("pool").is_ok_and(|l| l.contains("done"))),
        "the pool did not finish after the restore: {}",
        lab.logs("pool")?
    );
    let log = lab.logs("pool")?;
    ensure!(log.contains("done 4000 correct"), "{log}");
    lab.down_after_exit("pool")?;
    Ok(())
}

/// A parent holds a POSIX lock on all of `a`, a shared `flock` on `b` (its child shares
/// the description) and an OFD write lock on bytes 10–29 of `c`; the child holds a POSIX
/// read lock on bytes 100–104 of `e`.
const LOCKS: &str = r#"
import fcntl, os, struct, sys, time
d = sys.argv[1]
a = open(f'{d}/a', 'w'); fcntl.lockf(a, fcntl.LOCK_EX)
b = open(f'{d}/b', 'w'); fcntl.flock(b, fcntl.LOCK_SH)
c = open(f'{d}/c', 'w'); fcntl.fcntl(c, 37, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 10, 20, 0))  # F_OFD_SETLK
if os.fork() == 0:
    e = open(f'{d}/e', 'w+'); fcntl.lockf(e, fcntl.LOCK_SH, 5, 100)
    print('child locked', flush=True)
    while True:
        time.sleep(1)
print('locked', flush=True)
while True:
    time.sleep(1)
"#;

/// Which of the container's locks a process of the host finds taken: `a b c e` for each
/// conflicting request that fails, and `free` checks of ranges nobody locked.
const PROBE: &str = r#"
import fcntl, struct, sys
d = sys.argv[1]
def taken(f, how):
    try:
        how(f)
        return False
    except BlockingIOError:
        return True
a, b, c, e = (open(f'{d}/{n}', 'r+') for n in 'abce')
out = []
out.append('a' if taken(a, lambda f: fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)) else '-')
out.append('b' if taken(b, lambda f: fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)) else '-')
ofd = lambda start, n: lambda f: fcntl.fcntl(f, 37, struct.pack('hhqqi', fcntl.F_WRLCK, 0, start, n, 0))
out.append('c' if taken(c, ofd(10, 20)) else '-')
out.append('e' if taken(e, lambda f: fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 100)) else '-')
free = not taken(c, ofd(30, 10)) and not taken(e, lambda f: fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 200))
print(''.join(out), 'free' if free else 'busy')
"#;

#[test]
fn file_locks_are_released_with_the_source_and_taken_again_on_restore() -> anyhow::Result<()> {
    let work = TempDir::new("locks-work")?;
    let img = TempDir::new("locks-img")?;
    let lab = TestLab::up(2)?;
    let dir = work.path.to_string_lossy().into_owned();
    lab.start("host-a", "locks", &["python3", "-c", LOCKS, &dir])?;
    lab.wait_log("locks", "child locked")?;
    // The parent's own line, "locked" alone.
    ensure!(
        wait_until(Duration::from_secs(20), || lab
            .logs("locks")
            .is_ok_and(|l| l.lines().any(|l| l == "locked"))),
        "the parent did not take its locks: {}",
        lab.logs("locks")?
    );
    let probe = || -> anyhow::Result<String> {
        let out = std::process::Command::new("python3").args(["-c", PROBE, &dir]).output()?;
        ensure!(out.status.success(), "probe: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    ensure!(probe()? == "abce free", "before the checkpoint: {}", probe()?);
    let image = img.join("locks");
    lab.ok(&["checkpoint", "locks", "--dir", &image])?;
    // The source is gone, and its locks with it.
    ensure!(probe()? == "---- free", "after the checkpoint: {}", probe()?);
    lab.ok(&["restore", "--dir", &image, "--host", "host-b"])?;
    ensure!(probe()? == "abce free", "after the restore: {}", probe()?);
    lab.down_expecting(&["locks"])?;
    Ok(())
}

/// sqlite3 in WAL mode (the database, its write-ahead log and the shared-memory index
/// mapped by the process, POSIX locks on both) fed one INSERT at a time through a pipe.
const SQLITE: &str = r#"
db=$1/rows.db
sqlite3 "$db" 'PRAGMA journal_mode=WAL; CREATE TABLE t(n INTEGER PRIMARY KEY, sq INTEGER);' >/dev/null
for i in $(seq 1 30000); do
  echo "INSERT INTO t VALUES($i, $i * $i);"
  # A pause now and then, so that the checkpoint finds it mid-way.
  [ $((i % 1000)) = 0 ] && { echo "SELECT 'rows', count(*) FROM t;"; sleep 0.1; }
done | sqlite3 -batch "$db"
echo finished
"#;

#[test]
fn sqlite3_in_wal_mode_keeps_writing_after_a_move() -> anyhow::Result<()> {
    let work = TempDir::new("sqlite-work")?;
    let img = TempDir::new("sqlite-img")?;
    let lab = TestLab::up(2)?;
    let dir = work.path.to_string_lossy().into_owned();
    lab.start("host-a", "sql", &["bash", "-c", SQLITE, "sqlite", &dir])?;
    lab.wait_log("sql", "rows|3000")?;
    ensure!(!lab.logs("sql")?.contains("finished"), "sqlite3 finished before the checkpoint");
    let image = img.join("sql");
    lab.ok(&["checkpoint", "sql", "--dir", &image])?;
    lab.ok(&["restore", "--dir", &image, "--host", "host-b"])?;
    ensure!(
        wait_until(Duration::from_secs(120), || lab.logs("sql").is_ok_and(|l| l.contains("finished"))),
        "sqlite3 did not finish after the restore: {}",
        lab.logs("sql")?
    );
    // Every row once, each right, and the file sound.
    let db = work.path.join("rows.db");
    let check = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA integrity_check; SELECT count(*), sum(n), sum(sq = n * n) FROM t;")
        .output()?;
    let out = String::from_utf8_lossy(&check.stdout);
    ensure!(out.trim() == "ok\n30000|450015000|30000", "{out}{}", String::from_utf8_lossy(&check.stderr));
    lab.down_after_exit("sql")?;
    Ok(())
}
