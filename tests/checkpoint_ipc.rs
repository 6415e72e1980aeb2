//! The IPC namespace of a container moved to another host, checked by the program that
//! holds it (tests/programs/ipc.c): System V shared memory (attached by a parent and its
//! child, by the child alone, read-only and removed, in pieces, and by no one), a semaphore set, a message queue, a POSIX
//! message queue and a changed limit; and the IPC objects a checkpoint refuses, named.

mod support;

use anyhow::ensure;
use support::{TempDir, TestLab, compile_c, log_in_image};

#[test]
fn sysv_ipc_posix_queues_and_limits_move_with_their_ids() -> anyhow::Result<()> {
    let bin = TempDir::new("ipc-bin")?;
    let exe = compile_c("ipc", &["-O2"], &bin.path)?;
    let work = TempDir::new("ipc-work")?;
    let img = TempDir::new("ipc-img")?;
    let trigger = work.join("go");
    let lab = TestLab::up(2)?;
    lab.start("host-a", "ipc", &[&exe, &trigger])?;
    let log = lab.wait_log("ipc", "ready")?;
    let ids = log.lines().find_map(|l| l.strip_prefix("ready ")).unwrap_or_default().to_string();
    let image = img.join("ipc");
    lab.checkpoint_and_restore("ipc", &image, "host-b")?;
    let inspect = lab.ok(&["inspect", &image])?;
    for needle in [
        "limit kernel/msgmax = 40",
        "limit kernel/shmmax = 4096",
        "shm id 1 key 0x0 mode 600",
        "size 64 KiB",
        "key 0x1234 mode 640",
        "key 0x4567 mode 600 uid 0 gid 0 size 4 KiB",
        "values [5, 0, 9]",
        "qbytes 16 B, 4 messages of types 3 1 2 9",
        "mqueue /ipctest mode 640 maxmsg 8 msgsize 64 messages 3 priorities [5, 1, 1]",
        "System V shm",
        "POSIX message queue /withfd",
    ] {
        ensure!(inspect.contains(needle), "inspect does not show {needle:?}:\n{inspect}");
    }
    let before = log_in_image(&image)?;
    std::fs::write(&trigger, b"")?;
    let log = lab.wait_log("ipc", "verdict")?;
    let after = log.strip_prefix(before.as_str()).unwrap_or(&log);
    ensure!(after.contains("verdict ok"), "after the restore: {after}");
    ensure!(after.contains(&format!("after {ids}")), "ids changed ({ids}): {after}");
    ensure!(
        ids.starts_with("shm=1,2,3,4,5,6 sem=1 msg=1"),
        "the program's ids are those of a fresh namespace: {ids}"
    );
    lab.down_after_exit("ipc")?;
    Ok(())
}

/// Each of these is refused by a checkpoint that names it, and the container runs on.
#[test]
fn what_cannot_move_exactly_is_refused_by_name() -> anyhow::Result<()> {
    let bin = TempDir::new("ipc-refuse-bin")?;
    let exe = compile_c("ipc_refuse", &["-O2"], &bin.path)?;
    let work = TempDir::new("ipc-refuse-work")?;
    let img = TempDir::new("ipc-refuse-img")?;
    let dir = work.path.to_string_lossy().into_owned();
    let lab = TestLab::up(1)?;
    let cases = [
        (
            "notify",
            "POSIX message queue /refused has a notification registered (mq_notify, by PID 1 (ipc_refuse, host pid",
        ),
        ("full", "POSIX message queue /refused is full (2 messages)"),
        ("unlinked", "is a POSIX message queue unlinked while open (/gone (deleted))"),
        ("cwd", "has a deleted directory as its cwd"),
        ("lease", "holds a file lease (fcntl F_SETLEASE)"),
        ("proc", "/proc/1/status, a file of /proc was read up to byte 10"),
        ("procchild", "a file of /proc is of a process or thread the restore makes only after"),
        ("forced", "has kernel.shm_rmid_forced set, and System V segment 0 exists"),
        ("otherq", "is a POSIX message queue of another IPC namespace (/elsewhere)"),
        ("ownns", "runs in an IPC namespace of its own"),
        ("bigsem", "System V semaphore set 0 has 32001 semaphores, more than 32000"),
        ("hugefd", "is a file of huge pages (/memfd:huge (deleted), hugetlbfs)"),
        ("hugetlb", "is a hugetlb mapping"),
    ];
    let mut running = Vec::new();
    for (kind, want) in cases {
        let name = format!("refuse-{kind}");
        lab.start("host-a", &name, &[&exe, kind, &dir])?;
        let log = lab.wait_log(&name, "ready")?;
        running.push(name.clone());
        if log.contains("no-hugetlb") {
            eprintln!("no huge pages on this host: the hugetlb refusal is not tried");
            continue;
        }
        // Twice where a refused checkpoint could have changed what the next one sees.
        for _ in 0..if kind == "forced" { 2 } else { 1 } {
            let err = lab.fails(&["checkpoint", &name, "--dir", &img.join(kind)])?;
            ensure!(err.contains(want), "{kind}: the refusal does not say {want:?}: {err}");
            ensure!(lab.container(&name)?["state"] == "running", "{kind}: the container stopped");
        }
    }
    let names: Vec<&str> = running.iter().map(String::as_str).collect();
    lab.down_expecting(&names)?;
    Ok(())
}
