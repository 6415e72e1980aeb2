//! Bad input gets a clear error, creates nothing, and never panics.

mod support;

use std::os::unix::process::{CommandExt, ExitStatusExt};
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
        (
            &["run", "--host", "host-a", "--name", "other", "--"],
            "required arguments were not provided:\n  <CMD>",
        ),
        (
            &["run", "--host", "host-a", "--name", "other", "--", "no-such-command-zz"],
            "no-such-command-zz: command not found",
        ),
        (&["run", "--host", "host-a", "--name", "bad/name", "--", "sleep", "1"], "invalid name"),
        (
            &["run", "--host", "host-a", "--name", "other", "--memory-max", "lots", "--", "sleep", "1"],
            "e.g. 256M or 1G",
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
    // A name in use says how to get another; restore names its directory once, and a
    // file given as the image gets the same plain words as checkpoint gives it.
    let err = lab.fails(&["run", "--name", "web", "--", "sleep", "1"])?;
    ensure!(err.contains("choose another with --name") && err.contains("`migrate rm web`"), "{err}");
    let tmp = support::TempDir::new("bad-restore")?;
    let file = tmp.join("file");
    std::fs::write(&file, "not an image")?;
    let missing = tmp.join("missing.img");
    let cases = [
        (missing.as_str(), format!("invalid image: {missing} does not exist")),
        (file.as_str(), format!("invalid image: {file} is a file: give the image's directory")),
    ];
    for (dir, expected) in cases {
        let err = lab.fails(&["restore", "--dir", dir])?;
        ensure!(err.contains(&expected) && err.matches(dir).count() == 1, "{err}");
        ensure!(!err.contains("os error"), "{err}");
    }
    Ok(())
}

#[test]
fn lab_up_twice_changes_nothing() -> anyhow::Result<()> {
    let lab = TestLab::up(3)?;
    let lab_json = format!("/run/migrate/labs/{}/lab.json", lab.name);
    let first = std::fs::read_to_string(&lab_json)?;
    // Only this lab's namespaces: other tests make and remove theirs meanwhile.
    let ours = || -> Vec<String> {
        let mut v: Vec<String> =
            netns_names().into_iter().filter(|n| n.starts_with(&format!("{}-", lab.name))).collect();
        v.sort();
        v
    };
    let ns_before = ours();
    ensure!(ns_before.len() == 5, "3 hosts, a client and a LAN: {ns_before:?}");
    lab.ok(&["lab", "up", "--hosts", "3"])?;
    // `lab up` is the repair command: without --hosts it keeps the lab's size.
    let out = lab.ok(&["lab", "up"])?;
    ensure!(out.contains("already up and healthy") && out.contains("host-c"), "{out}");
    ensure!(std::fs::read_to_string(&lab_json)? == first, "lab.json changed");
    ensure!(ours() == ns_before);
    let err = lab.fails(&["lab", "up", "--hosts", "2"])?;
    ensure!(err.contains("is up with 3 hosts, not 2"), "a lab of another shape is refused clearly: {err}");
    // Both ends of a lab's life speak JSON too.
    let up: serde_json::Value = serde_json::from_str(&lab.ok(&["lab", "up", "--json"])?)?;
    ensure!(
        up["lab"]["hosts"].as_array().is_some_and(|h| h.len() == 3) && up["created"] == serde_json::json!([]),
        "{up}"
    );
    let down: serde_json::Value = serde_json::from_str(&lab.ok(&["lab", "down", "--json"])?)?;
    ensure!(down["netns_removed"].as_array().is_some_and(|n| n.len() == 5), "{down}");
    ensure!(ours().is_empty());
    Ok(())
}

#[test]
fn everything_but_doctor_needs_root() -> anyhow::Result<()> {
    // Each verb gives its own reason; the read-only ones create nothing.
    let cases: [(&[&str], &str); 7] = [
        (&["lab", "up"], "creates network namespaces"),
        (&["lab", "down"], "removes its namespaces"),
        (&["lab", "status"], "root-only sockets"),
        (&["run", "--", "true"], "creates or removes"),
        (&["ps"], "root-only sockets"),
        (&["logs", "web"], "root-only sockets"),
        (&["exec", "web", "--", "true"], "enters the container's namespaces"),
    ];
    for (args, why) in cases {
        let out = std::process::Command::new(support::BIN).args(args).uid(65534).gid(65534).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(1), "migrate {}: {:?}", args.join(" "), out.status);
        ensure!(
            err.starts_with("error: ") && err.contains("needs root"),
            "migrate {}: {err}",
            args.join(" ")
        );
        ensure!(err.contains(why), "migrate {}: expected {why:?} in: {err}", args.join(" "));
        if matches!(args[0], "ps" | "logs") || args[1] == "status" {
            ensure!(!err.contains("creates"), "a read-only command creates nothing: {err}");
        }
    }
    Ok(())
}

/// Bad numbers and addresses are usage errors (exit 2) that name the option and the
/// form expected; runtime errors (exit 1) start with `error:` too.
#[test]
fn bad_values_name_the_option_and_the_form() -> anyhow::Result<()> {
    let cases: [(&[&str], &str, &str); 8] = [
        (&["run", "--pids-max", "-1", "--", "true"], "'--pids-max <PIDS_MAX>'", "at least 1"),
        (&["run", "--pids-max", "abc", "--", "true"], "'--pids-max <PIDS_MAX>'", "whole number"),
        (&["stop", "-t", "abc", "web"], "'--time <TIME>'", "whole number of seconds"),
        (&["stop", "-t", "-1", "web"], "'--time <TIME>'", "whole number of seconds"),
        (&["run", "--memory-max", "99999999T", "--", "true"], "'--memory-max <MEMORY_MAX>'", "too large"),
        (&["run", "--memory-max", "12x", "--", "true"], "'--memory-max <MEMORY_MAX>'", "unknown unit \"x\""),
        (&["run", "--ip", "10.77.1.53/", "--", "true"], "'--ip <IP>'", "e.g. 10.77.1.10 or 10.77.1.10/16"),
        (&["lab", "up", "--hosts", "0"], "'--hosts <HOSTS>'", "from 1 to 26"),
    ];
    for (args, option, form) in cases {
        let out = std::process::Command::new(support::BIN).args(args).env("MIGRATE_LAB", "nolab").output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(2), "migrate {}: {:?}: {err}", args.join(" "), out.status);
        ensure!(err.starts_with("error: invalid value"), "migrate {}: {err}", args.join(" "));
        ensure!(err.contains(option) && err.contains(form), "migrate {}: {err}", args.join(" "));
        ensure!(
            !err.contains("invalid digit") && !err.contains("use '--"),
            "migrate {}: {err}",
            args.join(" ")
        );
        // With MIGRATE_LAB set, usage lines do not show --lab.
        ensure!(!err.contains("--lab"), "migrate {}: {err}", args.join(" "));
    }
    let out = std::process::Command::new(support::BIN).args(["ps"]).env("MIGRATE_LAB", "nolab").output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1) && err.starts_with("error: lab nolab is not up"), "{err}");
    // Asked for JSON, the error is JSON too, and stdout stays empty.
    for args in [&["ps", "--json"][..], &["inspect", "/nonexistent/image", "--json"]] {
        let out = std::process::Command::new(support::BIN).args(args).env("MIGRATE_LAB", "nolab").output()?;
        let err: serde_json::Value = serde_json::from_slice(&out.stderr).with_context(|| {
            format!("migrate {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr))
        })?;
        ensure!(out.status.code() == Some(1) && out.stdout.is_empty(), "migrate {}: {out:?}", args.join(" "));
        ensure!(
            err["error"].as_str().is_some() && err["causes"].is_array(),
            "migrate {}: {err}",
            args.join(" ")
        );
    }
    Ok(())
}

/// A MAC derived from the IP steps aside for one a user chose by hand; a clash between
/// two chosen MACs stays an error.
#[test]
fn a_derived_mac_never_fails_a_run() -> anyhow::Result<()> {
    let lab = TestLab::up(1)?;
    let chosen = "02:4d:0a:4d:01:c8";
    lab.ok(&["run", "--name", "mc1", "--mac", chosen, "--", "sleep", "600"])?;
    // 10.77.1.200 derives 02:4d:0a:4d:01:c8, which mc1 holds.
    lab.ok(&["run", "--name", "mc2", "--ip", "10.77.1.200", "--", "sleep", "600"])?;
    let mac2 = lab.container("mc2")?["mac"].as_str().context("mac")?.to_string();
    ensure!(mac2 != chosen && mac2.ends_with(":4d:0a:4d:01:c8"), "{mac2}");
    let mac2_byte = u8::from_str_radix(&mac2[..2], 16)?;
    ensure!(mac2_byte & 0b11 == 0b10, "locally administered unicast: {mac2}");
    let err = lab.fails(&["run", "--name", "mc3", "--mac", chosen, "--", "sleep", "600"])?;
    ensure!(err.contains(&format!("MAC address {chosen} is already in use")), "{err}");
    // Removing mc2 gives its MAC back.
    lab.ok(&["rm", "--force", "mc2"])?;
    lab.ok(&["run", "--name", "mc4", "--mac", &mac2, "--", "sleep", "600"])?;
    Ok(())
}

/// Output into a closed pipe (`migrate ps | head -1`) ends the command quietly, like a
/// Unix tool (SIGPIPE), never with a panic.
#[test]
fn a_closed_stdout_is_not_a_panic() -> anyhow::Result<()> {
    let lab = TestLab::up(1)?;
    lab.ok(&["run", "--name", "talker", "--", "sh", "-c", "seq 1 20000; sleep 600"])?;
    lab.wait_log("talker", "20000")?;
    for args in [&["ps"][..], &["lab", "status"], &["lab", "up"], &["logs", "talker"], &["--help"]] {
        let (read, write) = nix::unistd::pipe()?;
        drop(read);
        let out = lab.cmd(args).stdout(std::process::Stdio::from(write)).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !err.contains("panicked") && out.status.code() != Some(101),
            "migrate {}: {err}",
            args.join(" ")
        );
        ensure!(
            out.status.signal() == Some(nix::libc::SIGPIPE) || out.status.success(),
            "migrate {}: {:?} {err}",
            args.join(" "),
            out.status
        );
        ensure!(err.is_empty(), "migrate {} says nothing: {err}", args.join(" "));
    }
    Ok(())
}

/// `--help` says what exists; commands a user will plausibly try point to what to use
/// instead; clap never suggests an internal command.
#[test]
fn unknown_commands_point_to_what_exists() -> anyhow::Result<()> {
    let help = std::process::Command::new(support::BIN).arg("--help").output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    ensure!(help.contains("Live migration over the network is not there yet"), "{help}");
    ensure!(!help.contains("live-migrate"), "{help}");
    // That containers see the host's files is said where a user starts one.
    let run = std::process::Command::new(support::BIN).args(["run", "--help"]).output()?;
    let run = String::from_utf8_lossy(&run.stdout);
    ensure!(
        run.contains("root filesystem") && run.contains("the host's files") && run.contains("--wait-port"),
        "{run}"
    );
    let cases =
        [("send", "migrate checkpoint NAME --dir DIR"), ("migrate", "live migration is not there yet")];
    for (word, tip) in cases {
        let out = std::process::Command::new(support::BIN).args(["-v", word]).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(2), "migrate {word}: {:?}", out.status);
        ensure!(err.starts_with(&format!("error: unrecognized subcommand '{word}'")), "{err}");
        ensure!(err.contains("tip: ") && err.contains(tip) && err.contains("Usage:"), "{err}");
    }
    let out = std::process::Command::new(support::BIN).arg("frob").output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(2) && !err.contains("__"), "{err}");
    Ok(())
}
