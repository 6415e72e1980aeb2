//! Process trees: a bash pipeline checkpointed mid-stream, a tree with sessions, groups
//! and a zombie, bash jobs whose session or group leader has exited, and an open file
//! shared across fork — each moved to another host.

mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use support::{TempDir, TestLab, wait_until};

/// `pid ppid sid pgid state comm` of every process of the container, sorted, as its own
/// `/proc` shows them (read by `exec`, whose own processes are left out). A live process
/// shows `S` whether it was running (R), asleep or in a disk wait (D) at that instant:
/// which one is luck, only a zombie (Z) or a stopped process (T, t) is a state to keep.
fn tree(lab: &TestLab, name: &str) -> anyhow::Result<Vec<String>> {
    let script = r#"
import os
for p in sorted(int(x) for x in os.listdir('/proc') if x.isdigit()):
    try:
        s = open(f'/proc/{p}/stat').read()
        c = s[s.rfind(')') + 2:].split()
        state = 'S' if c[0] in 'RD' else c[0]
        print(p, c[1], c[3], c[2], state, s[s.find('(') + 1:s.rfind(')')])
    except OSError:
        pass
"#;
    let out = lab.ok(&["exec", name, "--", "python3", "-c", script])?;
    // Leave out the exec'd reader itself (its parent is outside the namespace: ppid 0,
    // and it is not PID 1).
    Ok(out
        .lines()
        .filter(|l| l.starts_with("1 ") || l.split(' ').nth(1) != Some("0"))
        .map(str::to_string)
        .collect())
}

#[test]
fn a_bash_pipeline_checkpointed_mid_stream_gives_the_same_output() -> anyhow::Result<()> {
    let img = TempDir::new("pipeline")?;
    let work = TempDir::new("pipeline-out")?;
    let lab = TestLab::up(2)?;
    let out = work.join("out");
    let job =
        format!("seq 1 1000000 | while read x; do echo $((x*x)); done | sort -n > {out}; echo finished");
    lab.start("host-a", "pipe", &["bash", "-c", &job])?;
    // Mid-stream: every stage is running and bytes are on their way through the pipes;
    // sort has not written yet.
    let mut before = Vec::new();
    ensure!(
        wait_until(Duration::from_secs(20), || {
            before = tree(&lab, "pipe").unwrap_or_default();
            before.len() == 4
        }),
        "bash, seq, the loop's bash and sort: {before:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    ensure!(!lab.logs("pipe")?.contains("finished"), "the pipeline finished before the checkpoint");
    lab.checkpoint_and_restore("pipe", &img.join("pipe"), "host-b")?;
    ensure!(
        tree(&lab, "pipe")?
            .iter()
            .map(|l| l.split(' ').take(4).collect::<Vec<_>>())
            .eq(before.iter().map(|l| l.split(' ').take(4).collect::<Vec<_>>()))
    );
    ensure!(
        wait_until(Duration::from_secs(180), || lab.logs("pipe").is_ok_and(|l| l.contains("finished"))),
        "the restored pipeline never finished"
    );
    let got = std::fs::read_to_string(&out)?;
    let mut want: Vec<u64> = (1..=1_000_000u64).map(|x| x * x).collect();
    want.sort_unstable();
    let want: String = want.iter().map(|v| format!("{v}\n")).collect();
    ensure!(
        got.len() == want.len() && got == want,
        "out differs from an uninterrupted run ({} vs {} bytes)",
        got.len(),
        want.len()
    );
    lab.down_after_exit("pipe")?;
    Ok(())
}

/// PID 1 forks: a sleeper in its group, one in a session of its own, one in a group of
/// its own, and a child that exits with 7 and stays a zombie until PID 1 is told to
/// reap it (a trigger file).
const TREE: &str = r#"
import os, sys, time
trigger = sys.argv[1]
def child(fn):
    pid = os.fork()
    if pid == 0:
        fn()
        os._exit(0)
    return pid
def sleeper():
    time.sleep(100000)
def new_session():
    os.setsid(); time.sleep(100000)
def new_group():
    os.setpgid(0, 0); time.sleep(100000)
def quits():
    os._exit(7)
kids = [child(sleeper), child(new_session), child(new_group), child(quits)]
# One write per line: under -u, print() writes each argument on its own.
print(' '.join(['kids', *map(str, kids)]), flush=True)
while True:
    if os.path.exists(trigger):
        pid, status = os.waitpid(kids[3], 0)
        print(f'reaped {pid} exit {os.waitstatus_to_exitcode(status)}', flush=True)
        os.remove(trigger)
    time.sleep(0.05)
"#;

#[test]
fn sessions_groups_and_a_zombie_survive_a_move() -> anyhow::Result<()> {
    let img = TempDir::new("tree")?;
    let work = TempDir::new("tree-trigger")?;
    let lab = TestLab::up(2)?;
    let trigger = work.join("reap");
    lab.start("host-a", "tree", &["python3", "-u", "-c", TREE, &trigger])?;
    // The whole line: the log may be read while it is being written.
    let mut kids: Vec<i32> = Vec::new();
    let whole = wait_until(Duration::from_secs(10), || {
        let log = lab.logs("tree").unwrap_or_default();
        kids = log
            .lines()
            .find_map(|l| l.strip_prefix("kids ").filter(|_| log.contains(&format!("{l}\n"))))
            .map(|l| l.split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default();
        kids.len() == 4
    });
    ensure!(whole, "no line with the children's pids: {}", lab.logs("tree")?);
    let mut before = Vec::new();
    ensure!(
        wait_until(Duration::from_secs(10), || {
            before = tree(&lab, "tree").unwrap_or_default();
            before.iter().any(|l| l.contains(" Z "))
        }),
        "no zombie before the checkpoint: {before:?}"
    );
    // The session and group of their own, and the zombie, are really there.
    let line =
        |pid: i32| before.iter().find(|l| l.starts_with(&format!("{pid} "))).cloned().unwrap_or_default();
    ensure!(line(kids[1]).starts_with(&format!("{0} 1 {0} {0} ", kids[1])), "own session: {before:?}");
    ensure!(line(kids[2]).starts_with(&format!("{0} 1 1 {0} ", kids[2])), "own group: {before:?}");
    ensure!(line(kids[3]).contains(" Z "), "zombie: {before:?}");

    // The pid a new process gets: after every pid handed out so far, here and there.
    let next_pid = || -> anyhow::Result<i32> {
        let out = lab.ok(&["exec", "tree", "--", "sh", "-c", "echo $$"])?;
        out.trim().parse().with_context(|| format!("a pid: {out:?}"))
    };
    let last_before = next_pid()?;

    lab.checkpoint_and_restore("tree", &img.join("tree"), "host-b")?;
    let after = tree(&lab, "tree")?;
    ensure!(after == before, "the tree changed:\nbefore {before:?}\nafter  {after:?}");
    let first_after = next_pid()?;
    // The log goes on from the source's: what was printed before the checkpoint is there.
    let log = lab.logs("tree")?;
    ensure!(log.starts_with("kids "), "the restored container's log lost its past:\n{log}");
    ensure!(
        first_after > last_before,
        "a new process got pid {first_after} after the restore, not one above {last_before}"
    );
    std::fs::write(&trigger, b"")?;
    let log = lab.wait_log("tree", "reaped")?;
    ensure!(
        log.contains(&format!("reaped {} exit 7", kids[3])),
        "the zombie's status did not reach its parent: {log}"
    );
    lab.down_expecting(&["tree"])?;
    Ok(())
}

/// bash as PID 1, with job control (`set -m`: each background job gets a group of its
/// own): a job; a session whose leader exited (`setsid -f bash -c …` leaves two sleepers
/// in it, one in the session's group, one in a group whose leader, a subshell, exited
/// too); a group whose leader exited (a subshell job leaves two sleepers in it); and a
/// keeper with a zombie child in a group of its own. bash reaps every child the moment it
/// exits, so the zombie needs a parent that does not: the keeper reaps it when the trigger
/// file appears, prints its status and exits with it, for bash to print in turn.
const DEAD_LEADERS: &str = r#"
set -m
sleep 100000 &
setsid -f bash -c 'sleep 100000 & set -m; (sleep 100000 &); exit'
( sleep 100000 & sleep 100000 & )
python3 -c '
import os, sys, time
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os._exit(7)
print(f"zombie {pid}", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
p, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
print(f"reaped {p} exit {code}", flush=True)
sys.exit(code)
' "$1" &
wait $!
echo "keeper exited $?"
wait
"#;

/// One line of [`tree`]: `pid ppid sid pgid state comm`.
struct Proc {
    pid: i32,
    ppid: i32,
    sid: i32,
    pgid: i32,
    state: String,
    comm: String,
}

fn parse_tree(lines: &[String]) -> Vec<Proc> {
    lines
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.splitn(6, ' ').collect();
            Some(Proc {
                pid: f.first()?.parse().ok()?,
                ppid: f.get(1)?.parse().ok()?,
                sid: f.get(2)?.parse().ok()?,
                pgid: f.get(3)?.parse().ok()?,
                state: f.get(4)?.to_string(),
                comm: f.get(5)?.to_string(),
            })
        })
        .collect()
}

/// Whether the tree is what [`DEAD_LEADERS`] makes once it has settled: why not, if not.
fn dead_leaders_settled(lines: &[String]) -> Result<i32, String> {
    let procs = parse_tree(lines);
    let pids: std::collections::HashSet<i32> = procs.iter().map(|p| p.pid).collect();
    let sleepers: Vec<&Proc> = procs.iter().filter(|p| p.comm == "sleep").collect();
    if procs.len() != 8 || sleepers.len() != 5 || sleepers.iter().any(|p| p.ppid != 1) {
        return Err("not yet bash, five sleepers under it, the keeper and the zombie".into());
    }
    // The job: a group of its own in bash's session.
    if sleepers.iter().filter(|p| p.sid == 1 && p.pgid == p.pid).count() != 1 {
        return Err("no job sleeper in a group of its own".into());
    }
    // The session whose leader exited: its id is no process's; one sleeper is in the
    // session's own group, one in a group whose leader exited too.
    let in_dead_session: Vec<&&Proc> = sleepers.iter().filter(|p| p.sid != 1).collect();
    match in_dead_session[..] {
        [a, b] if a.sid == b.sid && !pids.contains(&a.sid) => {
            let groups = [a.pgid, b.pgid];
            let other = if a.pgid == a.sid { b.pgid } else { a.pgid };
            if !groups.contains(&a.sid) || other == a.sid || pids.contains(&other) {
                return Err(format!("the dead session's groups are {groups:?}"));
            }
        }
        _ => return Err("not two sleepers in one session whose leader exited".into()),
    }
    // The group whose leader exited, in bash's session.
    let in_dead_group: Vec<&&Proc> =
        sleepers.iter().filter(|p| p.sid == 1 && p.pgid != p.pid && !pids.contains(&p.pgid)).collect();
    match in_dead_group[..] {
        [a, b] if a.pgid == b.pgid => {}
        _ => return Err("not two sleepers in one group whose leader exited".into()),
    }
    let keeper = procs.iter().find(|p| p.comm == "python3" && p.ppid == 1).ok_or("no keeper")?;
    let zombie = procs
        .iter()
        .find(|p| p.state == "Z" && p.ppid == keeper.pid && p.sid == 1 && p.pgid == p.pid)
        .ok_or("no zombie of the keeper in a group of its own")?;
    Ok(zombie.pid)
}

#[test]
fn bash_jobs_whose_session_or_group_leader_exited_survive_a_move() -> anyhow::Result<()> {
    let img = TempDir::new("dead-leaders")?;
    let work = TempDir::new("dead-leaders-trigger")?;
    let lab = TestLab::up(2)?;
    let trigger = work.join("reap");
    lab.start("host-a", "jobs", &["bash", "-c", DEAD_LEADERS, "bash", &trigger])?;
    let mut before = Vec::new();
    let mut why = String::new();
    let settled = wait_until(Duration::from_secs(20), || {
        before = tree(&lab, "jobs").unwrap_or_default();
        dead_leaders_settled(&before).map_err(|e| why = e).is_ok()
    });
    ensure!(settled, "{why}: {before:?}");
    let zombie = dead_leaders_settled(&before).map_err(anyhow::Error::msg)?;

    lab.checkpoint_and_restore("jobs", &img.join("jobs"), "host-b")?;
    let after = tree(&lab, "jobs")?;
    ensure!(after == before, "the tree changed:\nbefore {before:?}\nafter  {after:?}");
    std::fs::write(&trigger, b"")?;
    let log = lab.wait_log("jobs", "keeper exited")?;
    ensure!(
        log.contains(&format!("reaped {zombie} exit 7")) && log.contains("keeper exited 7"),
        "the zombie's status did not reach its parent and bash: {log}"
    );
    lab.down_expecting(&["jobs"])?;
    Ok(())
}

/// A child subreaper (not PID 1) that reaps nothing until told: `setsid -f bash -c …`
/// leaves it the session's leader as a zombie (exit 3) and two sleepers in that session,
/// one in a group whose leader exited; a subshell job leaves it two sleepers in a group
/// whose leader exited, in its own session.
const SUBREAPER: &str = r#"
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
os.system("setsid -f bash -c 'sleep 100000 & set -m; (sleep 100000 &); exit 3'")
os.system("bash -c 'set -m; (sleep 100000 & sleep 100000 &)'")
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
# Its only child that has exited: the session's leader.
pid, status = os.waitpid(-1, os.WNOHANG)
print(f'reaped {pid} exit {os.waitstatus_to_exitcode(status)}', flush=True)
time.sleep(100000)
"#;

/// Whether the tree is what [`SUBREAPER`] makes once it has settled; the zombie's pid.
fn subreaper_settled(lines: &[String]) -> Result<i32, String> {
    let procs = parse_tree(lines);
    let pids: std::collections::HashSet<i32> = procs.iter().map(|p| p.pid).collect();
    let reaper = procs.iter().find(|p| p.comm == "python3" && p.ppid == 1).ok_or("no subreaper")?;
    let leader = procs
        .iter()
        .find(|p| p.state == "Z" && p.ppid == reaper.pid && p.sid == p.pid && p.pgid == p.pid)
        .ok_or("no zombie session leader under the subreaper")?;
    let sleepers: Vec<&Proc> = procs.iter().filter(|p| p.comm == "sleep" && p.ppid == reaper.pid).collect();
    if procs.len() != 7 || sleepers.len() != 4 {
        return Err("not yet bash, the subreaper, its zombie and four sleepers under it".into());
    }
    let in_session: Vec<i32> = sleepers.iter().filter(|p| p.sid == leader.pid).map(|p| p.pgid).collect();
    let dead = |g: &i32| *g != leader.pid && !pids.contains(g);
    if in_session.len() != 2 || !in_session.contains(&leader.pid) || !in_session.iter().any(dead) {
        return Err(format!("the zombie's session holds sleepers in groups {in_session:?}"));
    }
    match sleepers.iter().filter(|p| p.sid == 1).map(|p| p.pgid).collect::<Vec<_>>()[..] {
        [a, b] if a == b && dead(&a) => Ok(leader.pid),
        _ => Err("not two sleepers in one group whose leader exited".into()),
    }
}

#[test]
fn a_subreaper_keeps_a_zombie_session_leader_and_its_orphans() -> anyhow::Result<()> {
    let img = TempDir::new("subreaper")?;
    let work = TempDir::new("subreaper-trigger")?;
    let lab = TestLab::up(2)?;
    let trigger = work.join("reap");
    // bash as PID 1 runs the script ($0) with the trigger ($1) and waits.
    lab.start("host-a", "reaper", &["bash", "-c", r#"python3 -c "$0" "$1" & wait"#, SUBREAPER, &trigger])?;
    let mut before = Vec::new();
    let mut why = String::new();
    let settled = wait_until(Duration::from_secs(20), || {
        before = tree(&lab, "reaper").unwrap_or_default();
        subreaper_settled(&before).map_err(|e| why = e).is_ok()
    });
    ensure!(settled, "{why}: {before:?}");
    let zombie = subreaper_settled(&before).map_err(anyhow::Error::msg)?;

    lab.checkpoint_and_restore("reaper", &img.join("reaper"), "host-b")?;
    let after = tree(&lab, "reaper")?;
    ensure!(after == before, "the tree changed:\nbefore {before:?}\nafter  {after:?}");
    std::fs::write(&trigger, b"")?;
    let log = lab.wait_log("reaper", "reaped")?;
    ensure!(
        log.contains(&format!("reaped {zombie} exit 3")),
        "the zombie's status did not reach its parent: {log}"
    );
    Ok(())
}

/// A parent and its child write lines through one open file description (opened before
/// the fork, no O_APPEND): they share its offset, so no line is ever overwritten.
const SHARED: &str = r#"
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
who = 'child' if os.fork() == 0 else 'parent'
i = 0
while True:
    os.write(fd, f'{who} {i}\n'.encode())
    if who == 'parent' and i % 10 == 0:
        print(f'wrote {i}', flush=True)
    i += 1
    time.sleep(0.02)
"#;

#[test]
fn an_open_file_shared_across_fork_stays_shared() -> anyhow::Result<()> {
    let img = TempDir::new("shared")?;
    let work = TempDir::new("shared-out")?;
    let lab = TestLab::up(2)?;
    let file = work.join("lines");
    lab.start("host-a", "share", &["python3", "-u", "-c", SHARED, &file])?;
    lab.wait_log("share", "wrote 20")?;
    lab.checkpoint_and_restore("share", &img.join("share"), "host-b")?;
    let count = |who: &str| {
        std::fs::read_to_string(&file).map(|t| t.lines().filter(|l| l.starts_with(who)).count()).unwrap_or(0)
    };
    let (p0, c0) = (count("parent"), count("child"));
    ensure!(
        wait_until(Duration::from_secs(20), || count("parent") > p0 + 20 && count("child") > c0 + 20),
        "the writers did not go on after the restore"
    );
    let text = std::fs::read_to_string(&file)?;
    // Every line whole, and each writer's numbers consecutive: a private offset after the
    // restore would overwrite the other's lines.
    for who in ["parent", "child"] {
        let nums: Vec<u64> = text.lines().filter_map(|l| l.strip_prefix(who)?.trim().parse().ok()).collect();
        ensure!(
            nums.iter().enumerate().all(|(i, &n)| n == i as u64),
            "{who}'s lines are not 0, 1, 2, …: {:?}",
            &nums[..nums.len().min(40)]
        );
    }
    ensure!(
        text.lines().all(|l| l.starts_with("parent ") || l.starts_with("child ")),
        "a line was overwritten"
    );
    lab.down_expecting(&["share"])?;
    Ok(())
}

#[test]
fn the_contents_of_dev_shm_and_run_move_with_the_container() -> anyhow::Result<()> {
    let img = TempDir::new("tmpfs")?;
    let lab = TestLab::up(2)?;
    let setup = "mkdir -p /run/app/sub && echo state-1 > /run/app/sub/file && chmod 600 /run/app/sub/file \
&& ln -s sub/file /run/app/link && head -c 100000 /dev/urandom > /dev/shm/blob && echo ready && exec sleep 100000";
    lab.start("host-a", "tmpfs", &["sh", "-c", setup])?;
    lab.wait_log("tmpfs", "ready")?;
    let look = "cat /run/app/link; stat -c '%a %s' /run/app/sub/file; md5sum < /dev/shm/blob; readlink /run/app/link";
    let before = lab.ok(&["exec", "tmpfs", "--", "sh", "-c", look])?;
    ensure!(before.starts_with("state-1\n600 8\n"), "{before}");
    lab.checkpoint_and_restore("tmpfs", &img.join("tmpfs"), "host-b")?;
    let after = lab.ok(&["exec", "tmpfs", "--", "sh", "-c", look])?;
    ensure!(after == before, "the tmpfs contents changed:\nbefore {before}\nafter  {after}");
    Ok(())
}

/// Bash with two FIFOs. `/run/q` (the container's private tmpfs, mode 620): a writer
/// enlarges it to 256 KiB, writes lines 1..=1000 of 107+ bytes (more than the default
/// 64 KiB would hold) and waits for a trigger file before writing 1001..=2000; a reader
/// opens it but reads nothing before the trigger. A FIFO on a host path (`$2`, mode 640)
/// holds one line, open read-write by its only holder. `/run/w` holds a line for a reader
/// that opens it only after the trigger: its holder has only a write end open.
const FIFOS: &str = r#"
go=$1 hostq=$2
mkfifo -m 0620 /run/q /run/w
mkfifo -m 0640 "$hostq"
(
    exec 3</run/q
    while [ ! -e "$go" ]; do sleep 0.05; done
    while read -r word n pad <&3; do echo "got $n"; done
    echo "reader done"
) &
(
    exec 4>/run/q
    python3 -c 'import fcntl; fcntl.fcntl(4, 1031, 256 << 10)'
    for i in $(seq 1 1000); do printf 'line %d %0100d\n' "$i" 0 >&4; done
    echo "wrote 1000"
    while [ ! -e "$go" ]; do sleep 0.05; done
    for i in $(seq 1001 2000); do printf 'line %d %0100d\n' "$i" 0 >&4; done
    echo "wrote 2000"
) &
(
    exec 5<>"$hostq"
    echo "hello through the host FIFO" >&5
    echo "host FIFO filled"
    while [ ! -e "$go" ]; do sleep 0.05; done
    read -r x <&5
    echo "host FIFO: $x"
) &
(
    exec 6<>/run/w 7>/run/w
    echo "kept for a later reader" >&7
    exec 6<&-
    echo "only a writer left"
    while [ ! -e "$go" ]; do sleep 0.05; done
    read -r y </run/w
    echo "later reader: $y"
) &
wait
echo finished
"#;

#[test]
fn fifos_keep_their_bytes_across_a_move() -> anyhow::Result<()> {
    let img = TempDir::new("fifo")?;
    let work = TempDir::new("fifo-work")?;
    let lab = TestLab::up(2)?;
    let (go, hostq) = (work.join("go"), work.join("hostq"));
    lab.start("host-a", "fifo", &["bash", "-c", FIFOS, "bash", &go, &hostq])?;
    lab.wait_log("fifo", "wrote 1000")?;
    lab.wait_log("fifo", "host FIFO filled")?;
    lab.wait_log("fifo", "only a writer left")?;
    let dir = img.join("fifo");
    lab.ok(&["checkpoint", "fifo", "--dir", &dir])?;
    // Every byte written so far is still in the FIFO: 107 bytes a line plus its number.
    let digits: usize = (1..=1000).map(|i: u32| i.to_string().len()).sum();
    let shown = lab.ok(&["inspect", &dir])?;
    for want in [
        format!("FIFO /run/q read end, {} bytes buffered", 107 * 1000 + digits),
        format!("FIFO {hostq} read-write end, 28 bytes buffered"),
        "FIFO /run/w write end, 24 bytes buffered".to_string(),
    ] {
        ensure!(shown.contains(&want), "inspect does not show {want:?}:\n{shown}");
    }
    // Gone from the host path: the restore makes it again.
    std::fs::remove_file(&hostq)?;
    lab.ok(&["restore", "--dir", &dir, "--host", "host-b"])?;
    let q = lab.ok(&["exec", "fifo", "--", "stat", "-c", "%F %a", "/run/q"])?;
    ensure!(q.trim() == "fifo 620", "/run/q after the restore: {q}");
    let md = std::fs::symlink_metadata(&hostq).context("the host FIFO was not made again")?;
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        ensure!(
            md.file_type().is_fifo() && md.permissions().mode() & 0o7777 == 0o640,
            "{hostq} after the restore: {md:?}"
        );
    }
    std::fs::write(&go, b"")?;
    ensure!(
        wait_until(Duration::from_secs(60), || lab.logs("fifo").is_ok_and(|l| l.contains("finished"))),
        "the restored container never finished: {}",
        lab.logs("fifo")?
    );
    let log = lab.logs("fifo")?;
    let got: Vec<u32> = log.lines().filter_map(|l| l.strip_prefix("got ")?.parse().ok()).collect();
    let want: Vec<u32> = (1..=2000).collect();
    if got != want {
        let first_bad = got.iter().zip(&want).position(|(g, w)| g != w).unwrap_or(got.len().min(want.len()));
        anyhow::bail!(
            "{} lines arrived, not 1..=2000 once each in order; from index {first_bad}: {:?}",
            got.len(),
            &got[first_bad..got.len().min(first_bad + 10)]
        );
    }
    for line in [
        "reader done",
        "wrote 2000",
        "host FIFO: hello through the host FIFO",
        "later reader: kept for a later reader",
    ] {
        ensure!(log.lines().any(|l| l == line), "no {line:?} in the log:\n{log}");
    }
    lab.down_after_exit("fifo")?;
    Ok(())
}

/// Zombies of children killed by SIGKILL and by SIGSEGV (which would dump core) stay
/// zombies, and their parent reaps the same statuses after the move.
const KILLED: &str = r#"
import os, signal, sys, time
kids = []
for sig in (signal.SIGKILL, signal.SIGSEGV):
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), sig)
    kids.append(pid)
print(' '.join(['kids', *map(str, kids)]), flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
for pid in kids:
    _, status = os.waitpid(pid, 0)
    print(f'reaped {pid} signal {os.WTERMSIG(status)}', flush=True)
time.sleep(100000)
"#;

#[test]
fn zombies_killed_by_a_signal_keep_their_status() -> anyhow::Result<()> {
    let img = TempDir::new("killed")?;
    let work = TempDir::new("killed-trigger")?;
    let lab = TestLab::up(2)?;
    let trigger = work.join("reap");
    lab.start("host-a", "killed", &["python3", "-c", KILLED, &trigger])?;
    let log = lab.wait_log("killed", "kids ")?;
    let kids: Vec<String> = log
        .lines()
        .find_map(|l| l.strip_prefix("kids "))
        .context("kids")?
        .split(' ')
        .map(String::from)
        .collect();
    ensure!(
        wait_until(Duration::from_secs(10), || tree(&lab, "killed").is_ok_and(|t| t
            .iter()
            .filter(|l| l.contains(" Z "))
            .count()
            == 2)),
        "two zombies before the checkpoint: {:?}",
        tree(&lab, "killed")?
    );
    lab.checkpoint_and_restore("killed", &img.join("killed"), "host-b")?;
    std::fs::write(&trigger, b"")?;
    let log = lab.wait_log("killed", &format!("reaped {} signal", kids[1]))?;
    ensure!(
        log.contains(&format!("reaped {} signal 9", kids[0]))
            && log.contains(&format!("reaped {} signal 11", kids[1])),
        "{log}"
    );
    lab.down_expecting(&["killed"])?;
    Ok(())
}
