//! Bad input gets a clear error, creates nothing, and never panics.

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::{Context, ensure};
use support::{TestLab, cgroup2_mount, netns_names};

/// The container names this host has cgroups and state for.
fn leftovers(lab: &TestLab) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let cg =
        Path::new(&cgroup2_mount().context("cgroup2")?).join("migrate").join(format!("{}-host-a", lab.name));
    let state = Path::new("/run/migrate/labs").join(&lab.name).join("host-a/containers");
    for dir in [cg, state] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    names.push(format!("{}:{}", dir.display(), e.file_name().to_string_lossy()));
                }
            }
        }
    }
    names.sort();
    Ok(names)
}

#[test]
fn bad_run_requests_are_refused_and_create_nothing() -> anyhow::Result<()> {
    let lab = TestLab::up(2)?;
    lab.ok(&["run", "--host", "host-a", "--name", "web", "--ip", "10.77.1.10/16", "--", "sleep", "600"])?;
    let before = leftovers(&lab)?;
    let cases: [(&[&str], &str); 10] = [
        (
            &["run", "--host", "host-a", "--name", "web", "--", "sleep", "1"],
            "container name web is already in use",
        ),
        (
            &["run", "--host", "host-b", "--name", "web", "--", "sleep", "1"],
            "container name web is already in use",
        ),
        (
            &["run", "--host", "host-b", "--name", "other", "--ip", "10.77.1.10", "--", "sleep", "1"],
            "IP address 10.77.1.10 is already in use",
        ),
        (
            &["run", "--host", "host-a", "--name", "other", "--ip", "192.168.1.5", "--", "sleep", "1"],
            "outside the network 10.77.0.0/16",
        ),
        (
            &["run", "--host", "host-a", "--name", "other", "--ip", "10.77.0.11", "--", "sleep", "1"],
            "reserved for the hosts",
        ),
        (&["run", "--host", "host-q", "--name", "other", "--", "sleep", "1"], "host-q"),
        (&["run", "--host", "host-a", "--name", "other", "--"], "empty"),
        (
            &["run", "--host", "host-a", "--name", "other", "--", "no-such-command-zz"],
            "no-such-command-zz: command not found",
        ),
        (&["run", "--host", "host-a", "--name", "bad/name", "--", "sleep", "1"], "invalid name"),
        (
            &["run", "--host", "host-a", "--name", "other", "--memory-max", "lots", "--", "sleep", "1"],
            "not a size",
        ),
    ];
    for (args, expected) in cases {
        let err = lab.fails(args)?;
        ensure!(err.contains(expected), "migrate {}: expected {expected:?} in: {err}", args.join(" "));
        ensure!(leftovers(&lab)? == before, "migrate {} left something behind", args.join(" "));
    }
    ensure!(lab.ps()?.len() == 1);
    // The unknown-host error lists the hosts there are.
    let err = lab.fails(&["run", "--host", "host-q", "--", "true"])?;
    ensure!(err.contains("host-a") && err.contains("host-b"), "{err}");
    // Names that were refused are still free.
    lab.ok(&["run", "--host", "host-b", "--name", "other", "--", "sleep", "600"])?;
    // Unknown containers.
    for verb in
        [&["logs", "ghost"][..], &["stop", "ghost"], &["rm", "ghost"], &["exec", "ghost", "--", "true"]]
    {
        let err = lab.fails(verb)?;
        ensure!(err.contains("no container named \"ghost\""), "{err}");
    }
    Ok(())
}

#[test]
fn lab_up_twice_changes_nothing() -> anyhow::Result<()> {
    let lab = TestLab::up(2)?;
    let lab_json = format!("/run/migrate/labs/{}/lab.json", lab.name);
    let first = std::fs::read_to_string(&lab_json)?;
    let ns_before = netns_names();
    lab.ok(&["lab", "up", "--hosts", "2"])?;
    ensure!(std::fs::read_to_string(&lab_json)? == first, "lab.json changed");
    ensure!(netns_names() == ns_before);
    let err = lab.fails(&["lab", "up", "--hosts", "3"])?;
    ensure!(err.contains('2') && err.contains('3'), "a lab of another shape is refused clearly: {err}");
    Ok(())
}

#[test]
fn everything_but_doctor_needs_root() -> anyhow::Result<()> {
    for args in [&["lab", "up"][..], &["run", "--", "true"], &["ps"], &["lab", "down"]] {
        let out = std::process::Command::new(support::BIN).args(args).uid(65534).gid(65534).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && err.contains("needs root"), "migrate {}: {err}", args.join(" "));
    }
    Ok(())
}
