//! A checkpoint that could not be restored is refused before the source is touched, and
//! tree shapes the restore can rebuild are rebuilt, not refused.
//!
//! - Refusals at the checkpoint (a tmpfs the container mounted itself, a process in a
//!   mount namespace of its own, an O_PATH descriptor of a `/proc/N/fd/M` link, a group
//!   joined from a subtree built before its leader): each names its cause, and the container runs
//!   on (running in `ps`, same pid, not frozen, its log goes on), with no image left.
//! - Orphans of a live session leader (their parent exited, they went to PID 1 or to a
//!   child subreaper; two of them in a group whose leader exited; a zombie), the members
//!   of a group whose creator moved to another group, and a process in the group of its
//!   younger sibling, come back with their pid,
//!   parent, session and group, which they check themselves after the restore (and `ps`
//!   shows the same tree).
//! - An image whose CPU had a feature this CPU lacks is refused before the container is
//!   created, naming the feature.

mod support;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use migrate_proto::{decode_manifest, encode_manifest};
use support::{TempDir, TestLab, wait_until};

/// Prints `tick N` every 100 ms after making what its argument names; `made X` says what.
const PROGRAM: &str = r#"import ctypes, os, subprocess, sys, time
kind = sys.argv[1]
held = []
if kind == 'mount':
    p = sys.argv[2]
    subprocess.run(['mount', '-t', 'tmpfs', 'none', p], check=True)
    open(p + '/data', 'w').write('only in the tmpfs')
    print('made', p, flush=True)
elif kind == 'mntns':
    c = subprocess.Popen(['unshare', '--mount', 'sleep', '100000'])
    print('made', c.pid, flush=True)
elif kind == 'opath':
    r, w = os.pipe(); held += [r, w]
    fd = os.open(f'/proc/self/fd/{r}', os.O_PATH | os.O_NOFOLLOW)
    print('made', fd, flush=True)
elif kind == 'group':
    # A leads group A, its child C joins group B of A's younger sibling B, a leader too:
    # a restore builds A's subtree, C included, before B.
    r, w = os.pipe()
    r2, w2 = os.pipe()
    if os.fork() == 0:
        os.setpgid(0, 0)
        if os.fork() == 0:
            os.setpgid(0, int(os.read(r, 64)))
            os.write(w2, str(os.getpid()).encode())
        time.sleep(100000)
    b = os.fork()
    if b == 0:
        os.setpgid(0, 0)
        time.sleep(100000)
    while os.getpgid(b) != b:
        time.sleep(0.01)
    os.write(w, str(b).encode())
    print('made', os.read(r2, 64).decode(), b, flush=True)
i = 0
while True:
    print(f'tick {i}', flush=True)
    i += 1
    time.sleep(0.1)
"#;

/// Waits until its parent is outside its session (the parent that forked it has exited
/// and the kernel handed it on), then prints its ids, and every 100 ms whether they are
/// still the same: `tick TAG N same`, or `DIFFERENT`.
const ORPHAN: &str = r#"import os, sys, time
def say(*words):
    # One write per line: the other orphan writes into the same pipe.
    os.write(1, (' '.join(map(str, words)) + '\n').encode())
tag = sys.argv[1]
while os.getsid(os.getppid()) == os.getsid(0):
    time.sleep(0.02)
want = (os.getppid(), os.getsid(0), os.getpgid(0))
say('orphan', tag, os.getpid(), *want)
i = 0
while True:
    now = (os.getppid(), os.getsid(0), os.getpgid(0))
    say('tick', tag, i, 'same' if now == want else f'DIFFERENT {now} != {want}')
    i += 1
    time.sleep(0.1)
"#;

/// A session leader L forks C, C forks G, G makes group G, forks two orphans into it and
/// exits, then C exits: the orphans go to PID 1, in L's session, in a group whose leader
/// is gone. argv[1] is the orphan program.
const DEAD_GROUP: &str = r#"import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        if os.fork() == 0:
            os.setpgid(0, 0)
            for _ in range(2):
                if os.fork() == 0:
                    os.execvp('python3', ['python3', '-u', sys.argv[1], 'group'])
            os._exit(0)
        os.wait()
        os._exit(0)
    os.wait()
time.sleep(100000)
"#;

/// With `moved`: A makes group A, forks B into it, then moves back to PID 1's group: B's
/// group outlives its creator's membership. With `joined`: A joins the group of B, its
/// younger sibling. Both then check their ids every 100 ms.
const GROUPS: &str = r#"import os, sys, time
tag = sys.argv[1]
def watch(who):
    want = (os.getppid(), os.getsid(0), os.getpgid(0))
    os.write(1, f'{tag} {who} {os.getpid()} {want[2]}\n'.encode())
    i = 0
    while True:
        now = (os.getppid(), os.getsid(0), os.getpgid(0))
        os.write(1, f'tick {tag} {i} {"same" if now == want else f"DIFFERENT {now} != {want}"}\n'.encode())
        i += 1
        time.sleep(0.1)
r, w = os.pipe()
if tag == 'moved':
    os.setpgid(0, 0)
    if os.fork() == 0:
        os.read(r, 1)
        watch('member')
    os.setpgid(0, 1)
    os.write(w, b'x')
    watch('creator')
a = os.fork()
if a == 0:
    os.read(r, 1)
    watch('member')
b = os.fork()
if b == 0:
    os.setpgid(0, 0)
    watch('leader')
while os.getpgid(b) != b:
    time.sleep(0.01)
os.setpgid(a, b)
os.write(w, b'x')
time.sleep(100000)
"#;

/// The highest `tick N` of a container's log.
fn last_tick(lab: &TestLab, name: &str) -> anyhow::Result<u64> {
    let log = lab.logs(name)?;
    log.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .max()
        .with_context(|| format!("no tick in {log}"))
}

/// What follows `made ` in the container's log.
fn made(lab: &TestLab, name: &str) -> anyhow::Result<Vec<String>> {
    let log = lab.wait_log(name, "tick 2")?;
    let line = log.lines().find_map(|l| l.strip_prefix("made ")).with_context(|| format!("{name}: {log}"))?;
    Ok(line.split_whitespace().map(str::to_string).collect())
}

/// `name` runs as before: same pid, running, not frozen, and its log goes on.
fn runs_on(lab: &TestLab, name: &str, before: &serde_json::Value) -> anyhow::Result<()> {
    let now = lab.container(name)?;
    ensure!(now["state"] == "running" && now["pid"] == before["pid"], "{name}: before {before}, now {now}");
    if let Some(v2) = now["cgroup"]["v2"].as_str() {
        let events = std::fs::read_to_string(Path::new(v2).join("cgroup.events"))?;
        ensure!(events.contains("frozen 0"), "{name} was left frozen: {events}");
    }
    let t = last_tick(lab, name)?;
    ensure!(
        wait_until(Duration::from_secs(20), || last_tick(lab, name).is_ok_and(|n| n >= t + 3)),
        "{name} stopped ticking at {t}"
    );
    Ok(())
}

#[test]
fn what_the_restore_would_refuse_is_refused_at_the_checkpoint_and_the_container_runs_on() -> anyhow::Result<()>
{
    let img = TempDir::new("precheck")?;
    let tmp = TempDir::new("precheck-mnt")?;
    // A directory of the shared filesystem, mounted over only inside the container.
    let x = tmp.join("x");
    std::fs::create_dir(&x)?;
    let lab = TestLab::up(1)?;
    let program =
        |kind: &str| vec!["python3".to_string(), "-u".into(), "-c".into(), PROGRAM.into(), kind.into()];
    let mut mount = program("mount");
    mount.push(x.clone());
    let cases = [("p1", mount), ("p2", program("mntns")), ("p3", program("opath")), ("p4", program("group"))];
    for (name, cmd) in &cases {
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        lab.start("host-a", name, &cmd)?;
    }
    let mut problems = Vec::new();
    for (name, _) in &cases {
        let got = made(&lab, name)?;
        let pid = lab.container(name)?["pid"].to_string();
        let needles: Vec<String> = match *name {
            "p1" => vec![
                format!("PID 1 (python3, host pid {pid})"),
                format!(
                    "the container mounted tmpfs at {x} itself; mounts the container makes are not carried yet"
                ),
            ],
            "p2" => vec![format!("PID {} (", got[0]), "runs in a mount namespace of its own".into()],
            "p3" => vec![
                format!("PID 1 (python3, host pid {pid}) fd {}", got[0]),
                "held as the link itself (O_PATH | O_NOFOLLOW)".into(),
            ],
            _ => vec![format!(
                "its process tree could not be rebuilt: pid {} joins group {} before the group's leader (pid {}) is built: not supported",
                got[0], got[1], got[1]
            )],
        };
        problems.extend(support::refuses_checkpoint(&lab, &img, name, &needles, &[], runs_on));
    }
    // The tmpfs is still there, in the container only.
    let data = lab.ok(&["exec", "p1", "--", "cat", &format!("{x}/data")])?;
    ensure!(data == "only in the tmpfs", "the container's tmpfs holds {data:?}");
    ensure!(!Path::new(&x).join("data").exists(), "the container's tmpfs leaked to the host");
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    lab.down_expecting(&["p1", "p2", "p3", "p4"])?;
    Ok(())
}

/// `(pid, ppid, sid, pgid, comm)` of each process of the container but `ps` itself.
fn tree(lab: &TestLab, name: &str) -> anyhow::Result<Vec<String>> {
    let out = lab.ok(&["exec", name, "--", "ps", "-o", "pid=,ppid=,sid=,pgid=,comm=", "ax"])?;
    let mut rows: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.ends_with(" ps"))
        .collect();
    rows.sort();
    Ok(rows)
}

#[test]
fn tree_shapes_once_refused_come_back_with_their_parents_sessions_and_groups() -> anyhow::Result<()> {
    let img = TempDir::new("orphans")?;
    let tmp = TempDir::new("orphans-prog")?;
    let orphan = tmp.join("orphan.py");
    std::fs::write(&orphan, ORPHAN)?;
    // A session leader whose shell child forks the orphan and exits (a daemon's double
    // fork): once under PID 1, once under a child subreaper of PID 1.
    let daemon =
        |tag: &str| format!("setsid sh -c 'sh -c \"python3 -u {orphan} {tag} &\"; exec sleep 100000'");
    let reaper = tmp.join("reaper.py");
    std::fs::write(
        &reaper,
        format!(
            "import ctypes, subprocess, time\nctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER\n\
             subprocess.Popen({:?}, shell=True)\ntime.sleep(100000)\n",
            daemon("reaped")
        ),
    )?;
    let group = tmp.join("group.py");
    std::fs::write(&group, DEAD_GROUP)?;
    let groups = tmp.join("groups.py");
    std::fs::write(&groups, GROUPS)?;
    // PID 1 starts them all and reaps nothing: the zombie shape's `true` (not the shell's
    // builtin: a forked shell would be the zombie), orphaned in a live leader's session,
    // stays its zombie.
    let shapes = [
        daemon("init"),
        format!("python3 {reaper}"),
        format!("python3 {group} {orphan}"),
        "setsid sh -c 'sh -c \"/bin/true &\"; exec sleep 100000'".into(),
        format!("python3 {groups} moved"),
        format!("python3 {groups} joined"),
    ];
    let init = format!(
        "import subprocess, time\nfor s in {shapes:?}:\n    subprocess.Popen(s, shell=True)\ntime.sleep(100000)\n"
    );
    let lab = TestLab::up(2)?;
    lab.start("host-a", "orph", &["python3", "-c", &init])?;
    lab.wait_log("orph", "tick init 2 ")?;
    lab.wait_log("orph", "tick reaped 2 ")?;
    lab.wait_log("orph", "tick group 4 ")?;
    lab.wait_log("orph", "tick moved 4 ")?;
    lab.wait_log("orph", "tick joined 4 ")?;
    // pid ppid sid pgid comm: a zombie of PID 1 in another session.
    let zombie = |rows: &[String]| {
        rows.iter().any(|r| {
            r.ends_with(" true") && r.split(' ').nth(1) == Some("1") && r.split(' ').nth(2) != Some("1")
        })
    };
    let mut before = Vec::new();
    ensure!(
        wait_until(Duration::from_secs(20), || {
            before = tree(&lab, "orph").unwrap_or_default();
            zombie(&before)
        }),
        "no orphaned zombie in {before:#?}"
    );
    let log = lab.logs("orph")?;
    for tag in ["init", "reaped"] {
        let line = log
            .lines()
            .find(|l| l.starts_with(&format!("orphan {tag} ")))
            .with_context(|| format!("no orphan {tag} in {log}"))?;
        // orphan TAG pid ppid sid pgid: under PID 1, or under the subreaper.
        let f: Vec<&str> = line.split_whitespace().collect();
        ensure!(f.len() == 6 && f[4] != f[2] && (f[3] == "1") == (tag == "init"), "{line}");
    }
    // The group orphans: under PID 1, in a group that is neither their session nor theirs.
    for line in log.lines().filter(|l| l.starts_with("orphan group ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        ensure!(f.len() == 6 && f[3] == "1" && f[5] != f[4] && f[5] != f[2], "{line}");
    }
    let dir = img.join("orph");
    lab.checkpoint_and_restore("orph", &dir, "host-b")?;
    let seen = support::log_in_image(&dir)?.lines().count();
    // The creator is back in group 1, its child in the creator's group.
    let creator = log.lines().find_map(|l| l.strip_prefix("moved creator ")).context("no creator")?;
    let member = log.lines().find_map(|l| l.strip_prefix("moved member ")).context("no member")?;
    let (c, m): (Vec<&str>, Vec<&str>) = (creator.split(' ').collect(), member.split(' ').collect());
    ensure!(c.get(1) == Some(&"1") && m.get(1) == c.first(), "creator {creator}, member {member}");
    // The older sibling is in the younger one's group.
    let leader = log.lines().find_map(|l| l.strip_prefix("joined leader ")).context("no leader")?;
    let member = log.lines().find_map(|l| l.strip_prefix("joined member ")).context("no member")?;
    let (l, m): (Vec<&str>, Vec<&str>) = (leader.split(' ').collect(), member.split(' ').collect());
    let pid = |v: &[&str]| v.first().and_then(|p| p.parse::<i32>().ok());
    ensure!(m.get(1) == l.first() && pid(&m) < pid(&l), "leader {leader}, member {member}");
    for tag in ["init", "reaped", "group", "moved", "joined"] {
        let done = wait_until(Duration::from_secs(20), || {
            lab.logs("orph").is_ok_and(|l| {
                l.lines().skip(seen).filter(|x| x.starts_with(&format!("tick {tag} "))).count() >= 3
            })
        });
        ensure!(done, "the {tag} orphan printed no ticks after the restore: {}", lab.logs("orph")?);
    }
    let after_log = lab.logs("orph")?;
    let after: Vec<&str> = after_log.lines().skip(seen).collect();
    ensure!(
        !after.iter().any(|l| l.contains("DIFFERENT")) && after.iter().any(|l| l.ends_with(" same")),
        "after the restore: {after:?}"
    );
    let now = tree(&lab, "orph")?;
    ensure!(now == before && zombie(&now), "the tree changed:\nbefore {before:#?}\nafter {now:#?}");
    let c = lab.container("orph")?;
    ensure!(c["host"] == "host-b" && c["state"] == "running", "{c}");
    lab.ok(&["stop", "orph"])?;
    lab.down_expecting(&[])?;
    Ok(())
}

#[test]
fn an_image_of_a_cpu_with_a_feature_this_one_lacks_is_refused_before_anything_is_built() -> anyhow::Result<()>
{
    let img = TempDir::new("cpu")?;
    let lab = TestLab::up(2)?;
    lab.start("host-a", "cpu", &["sh", "-c", "echo ready; exec sleep 100000"])?;
    lab.wait_log("cpu", "ready")?;
    let dir = img.path.join("image");
    lab.ok(&["checkpoint", "cpu", "--dir", &dir.to_string_lossy()])?;
    // The manifest is checked by its own crc32, which encoding writes anew.
    let mut m = decode_manifest(&std::fs::read(dir.join("manifest.img"))?)?;
    ensure!(!m.cpu.flags.is_empty(), "the image recorded no CPU flags");
    ensure!(m.cpu.flags.iter().any(|f| f == "fpu"), "no fpu among {:?}", m.cpu.flags);
    // x87 and SSE state (bits 0 and 1) are in every XSAVE area: a zero mask was read from
    // the wrong bytes, and the xstate check of a restore would pass anything.
    ensure!(m.cpu.xfeatures & 3 == 3, "the image recorded xfeatures {:#x}", m.cpu.xfeatures);
    m.cpu.flags.push("migrate_test_feature".into());
    std::fs::write(dir.join("manifest.img"), encode_manifest(&m)?)?;
    let shown = lab.ok(&["inspect", &dir.to_string_lossy()])?;
    ensure!(
        shown.lines().any(|l| l.trim_start().starts_with("cpu ")
            && l.contains(" fpu ")
            && l.ends_with(" migrate_test_feature")),
        "inspect shows no CPU flags:\n{shown}"
    );
    let err = lab.fails(&["restore", "--dir", &dir.to_string_lossy(), "--host", "host-b"])?;
    eprintln!("restore: {}", err.trim());
    ensure!(
        err.contains("this host's CPU lacks 1 of the features the image's CPU offered: migrate_test_feature"),
        "{err}"
    );
    ensure!(!lab.ps()?.iter().any(|c| c["host"] == "host-b"), "host-b holds a container: {:?}", lab.ps()?);
    let left = lab.container_dirs("host-b");
    ensure!(left.is_empty(), "left behind on host-b: {left:?}");
    lab.down_expecting(&[])?;
    Ok(())
}
