//! What a process sets about itself with `prctl` and a few inode calls, moved to another
//! host and checked by the program that set it (tests/programs/attrs.c): dumpable, THP,
//! timer slack, MCE kill policy, TSC access, per-thread names, securebits and keep-caps
//! across a uid change, no_new_privs, pdeathsig, child subreaper, MDWE, the UTS domain
//! name, a memfd's mode and owner, the times of a FIFO the restore re-creates and of a
//! deleted file, a file deleted under one name but linked under another (the same file
//! again, shown by the same name); and what a checkpoint refuses, named.

mod support;

use anyhow::ensure;
use support::{TempDir, TestLab, compile_c, log_in_image};

#[test]
fn prctl_attributes_owners_and_times_survive_a_move() -> anyhow::Result<()> {
    let bin = TempDir::new("attrs-bin")?;
    let exe = compile_c("attrs", &["-O2", "-pthread"], &bin.path)?;
    let work = TempDir::new("attrs-work")?;
    let img = TempDir::new("attrs-img")?;
    let trigger = work.join("go");
    let dir = work.path.to_string_lossy().into_owned();
    let lab = TestLab::up(2)?;
    lab.start("host-a", "attrs", &[&exe, &trigger, &dir])?;
    let log = lab.wait_log("attrs", "ready")?;
    let thp = if log.contains("ready thp=3") { "THP disabled except where advised" } else { "THP disabled" };
    let image = img.join("attrs");
    lab.checkpoint("attrs", &image, &[])?;
    lab.ensure_gone("attrs")?;
    // Gone at the restore: it is made again, with its mode and times.
    std::fs::remove_file(work.join("fifo"))?;
    lab.restore(&image, "host-b")?;
    let inspect = lab.ok(&["inspect", &image])?;
    for needle in [
        &format!("attributes: dumpable 0, {thp}, domain name attrs.example"),
        "timer slack 123456 ns",
        "MCE kill early",
        "timer slack 654321 ns",
        "TSC reads fault",
        "attributes: child subreaper, MDWE 0x1, securebits 0x13, no_new_privs",
        "pdeathsig 10",
        "memfd:attrs-memfd (10 bytes, seals 0x1, mode 640, owner 1000:1000)",
        "/linked-a, still linked as /",
    ] {
        ensure!(inspect.contains(needle), "inspect does not show {needle:?}:\n{inspect}");
    }
    let before = log_in_image(&image)?;
    std::fs::write(&trigger, b"")?;
    let log = lab.wait_log("attrs", "parent verdict")?;
    let after = log.strip_prefix(before.as_str()).unwrap_or(&log);
    ensure!(after.contains("child verdict ok"), "the child after the restore: {after}");
    ensure!(after.contains("parent verdict ok"), "the parent after the restore: {after}");
    lab.down_after_exit("attrs")?;
    Ok(())
}

/// Each of these is refused by a checkpoint that names it, and the container runs on.
#[test]
fn what_a_restore_could_not_give_back_is_refused_by_name() -> anyhow::Result<()> {
    let bin = TempDir::new("attrs-refuse-bin")?;
    let exe = compile_c("attrs", &["-O2", "-pthread"], &bin.path)?;
    let work = TempDir::new("attrs-refuse-work")?;
    let img = TempDir::new("attrs-refuse-img")?;
    let dir = work.path.to_string_lossy().into_owned();
    let lab = TestLab::up(1)?;
    let cases = [
        ("refuse-link", "fd 3 is /"),
        ("refuse-audit", "(login uid 1000) (set inside the container), which a restore cannot give it"),
    ];
    let mut running = Vec::new();
    for (kind, want) in cases {
        lab.start("host-a", kind, &[&exe, kind, &dir])?;
        lab.wait_log(kind, "ready")?;
        running.push(kind);
        let err = lab.fails(&["checkpoint", kind, "--dir", &img.join(kind)])?;
        ensure!(err.contains(want), "{kind}: the refusal does not say {want:?}: {err}");
        let link = "/first (deleted), a file that still has 1 link(s), none in its directory";
        ensure!(
            kind != "refuse-link" || err.contains(link),
            "{kind}: the refusal does not say {link:?}: {err}"
        );
        ensure!(lab.container(kind)?["state"] == "running", "{kind}: the container stopped");
    }
    lab.down_expecting(&running)?;
    Ok(())
}
