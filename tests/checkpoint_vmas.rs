//! The memory map as `/proc/PID/smaps` shows it: after a move, every VMA of
//! `tests/programs/vmas.c` has the range, protection, name and `VmFlags` it had (two
//! adjacent VMAs stay two, madvise state, locks, `mlockall(MCL_FUTURE)`, the right to make
//! a shared file mapping writable), as the program itself finds, and its child, which
//! keeps what fork gave it.

mod support;

use anyhow::{Context, ensure};
use support::{TempDir, TestLab, compile_c, log_in_image};

#[test]
fn every_vma_comes_back_with_its_range_name_and_flags() -> anyhow::Result<()> {
    let bin = TempDir::new("vmas-bin")?;
    let exe = compile_c("vmas", &["-O2", "-pthread"], &bin.path)?;
    let work = TempDir::new("vmas-work")?;
    let img = TempDir::new("vmas-img")?;
    let trigger = work.join("go");
    let lab = TestLab::up(2)?;
    lab.start("host-a", "vmas", &[&exe, &work.path.to_string_lossy(), &trigger])?;
    lab.wait_log("vmas", "child ready")?;
    let ready = lab.wait_log("vmas", "parent ready")?;
    let image = img.join("vmas");
    lab.checkpoint_and_restore("vmas", &image, "host-b")?;

    // What the image says: the flags and the mlockall state are carried.
    let inspect = lab.ok(&["inspect", &image])?;
    // Each VMA's flags are listed last on its line, in brackets.
    let flags: Vec<&str> =
        inspect.lines().filter_map(|l| l.strip_suffix(']')?.rsplit_once('[').map(|(_, f)| f)).collect();
    for want in ["lo lf", "dc", "dd", "wf", "hg", "nh", "sr", "rr", "nr", "ac"] {
        ensure!(
            flags.iter().any(|f| f.split(' ').any(|x| x == want) || f.contains(want)),
            "inspect shows no VMA with {want:?}: {inspect}"
        );
    }
    ensure!(inspect.contains("work/rw, may write"), "inspect does not show the write right: {inspect}");
    ensure!(!inspect.contains("work/ro, may write"), "a read-only file's mapping may write: {inspect}");
    if ready.contains("future set") {
        ensure!(inspect.contains("(mlockall MCL_FUTURE)"), "inspect does not show mlockall: {inspect}");
    }

    std::fs::write(&trigger, b"")?;
    lab.wait_log("vmas", "child verdict")?;
    let log = lab.wait_log("vmas", "parent verdict")?;
    // Judged on what was printed after the restore only.
    let pre = log_in_image(&image)?;
    let after = log.strip_prefix(pre.as_str()).context("the log does not go on from the image's")?;
    let verdict =
        after.lines().find(|l| l.starts_with("parent verdict")).context("no verdict after the restore")?;
    // The child's kept VMAs (fork from its rebuilt parent), its own locks dropped.
    let child = after.lines().find(|l| l.starts_with("child verdict")).context("no child verdict")?;
    ensure!(
        child == "child verdict vmas=same future=none writable=ok readonly=ok",
        "the child found its memory map changed: {child}\n{after}\nbefore the checkpoint:\n{pre}"
    );
    ensure!(
        verdict == "parent verdict vmas=same future=lo writable=ok readonly=ok"
            || (!ready.contains("future set")
                && verdict == "parent verdict vmas=same future=none writable=ok readonly=ok"),
        "the program found its memory map changed: {verdict}\n{after}\nbefore the checkpoint:\n{pre}"
    );
    lab.down_after_exit("vmas")?;
    Ok(())
}

/// A mapping registered with a userfaultfd: its faults would go to a handler the restore
/// cannot give back, so the checkpoint refuses it by name and the program runs on.
#[test]
fn a_vma_registered_with_a_userfaultfd_is_refused_by_name() -> anyhow::Result<()> {
    let bin = TempDir::new("vmas-uffd-bin")?;
    let exe = compile_c("vmas", &["-O2", "-pthread"], &bin.path)?;
    let img = TempDir::new("vmas-uffd-img")?;
    let lab = TestLab::up(1)?;
    lab.start("host-a", "uffd", &[&exe, "uffd"])?;
    let ready = lab.wait_log("uffd", "ready")?;
    let at = ready
        .lines()
        .find_map(|l| l.strip_prefix("ready uffd at 0x"))
        .context("the program did not say where its mapping is")?;
    let err = lab.fails(&["checkpoint", "uffd", "--dir", &img.join("uffd")])?;
    ensure!(
        err.contains("PID 1 (vmas, host pid ")
            && err.contains(&format!("VMA 0x{at}-"))
            && err.contains("(anonymous) is registered with a userfaultfd (missing pages), smaps flag um"),
        "the refusal does not name the process, the VMA and its flag: {err}"
    );
    ensure!(lab.container("uffd")?["state"] == "running", "the refused container is not running");
    lab.down_expecting(&["uffd"])?;
    Ok(())
}
