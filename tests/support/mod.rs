//! Shared by the end-to-end tests: a lab per test (so tests run side by side), the
//! `migrate` binary, and polling helpers.
//!
//! Every test runs as root against the real kernel. A [`TestLab`] removes its lab when
//! dropped, even when the test fails.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub mod procstate;

pub use migrate_agent::container::wait_until;

use anyhow::{Context, bail};

pub const BIN: &str = env!("CARGO_BIN_EXE_migrate");

/// A lab of its own for one test, taken down on drop.
pub struct TestLab {
    pub name: String,
}

impl TestLab {
    /// Brings up a lab with `hosts` hosts under a name no other test uses.
    pub fn up(hosts: usize) -> anyhow::Result<TestLab> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Lab names are at most 8 characters: t + 5 hex digits of the pid + 2 digits.
        let name = format!("t{:05x}{:02}", std::process::id() & 0xfffff, n % 100);
        let lab = TestLab { name };
        lab.ok(&["lab", "up", "--hosts", &hosts.to_string()])?;
        Ok(lab)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).env("MIGRATE_LAB", &self.name).env_remove("MIGRATE_LOG");
        c
    }

    /// Runs `migrate ARGS` in this lab.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.cmd(args).output().with_context(|| format!("running migrate {}", args.join(" ")))
    }

    /// Runs `migrate ARGS` and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "migrate {} failed ({}):\nstdout: {}\nstderr: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `migrate ARGS`, requires failure, and returns stderr.
    pub fn fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            bail!(
                "migrate {} succeeded but should have failed; stdout: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        if stderr.contains("panicked") {
            bail!("migrate {} panicked: {stderr}", args.join(" "));
        }
        Ok(stderr)
    }

    /// `migrate ps --json`, parsed.
    pub fn ps(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(serde_json::from_str(&self.ok(&["ps", "--json"])?)?)
    }

    /// One container from `ps --json`.
    pub fn container(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        self.ps()?
            .into_iter()
            .find(|c| c["name"] == name)
            .with_context(|| format!("container {name} not in ps"))
    }

    /// The container's log so far.
    pub fn logs(&self, name: &str) -> anyhow::Result<String> {
        self.ok(&["logs", name])
    }

    /// Waits until the container's log contains `needle`; returns the log.
    pub fn wait_log(&self, name: &str, needle: &str) -> anyhow::Result<String> {
        self.wait_log_for(name, needle, Duration::from_secs(20))
    }

    /// [`TestLab::wait_log`] with a time limit of its own.
    pub fn wait_log_for(&self, name: &str, needle: &str, limit: Duration) -> anyhow::Result<String> {
        let mut last = Ok(String::new());
        if wait_until(limit, || {
            last = self.logs(name);
            last.as_ref().is_ok_and(|l| l.contains(needle))
        }) {
            return last;
        }
        match last {
            Ok(log) => bail!("log of {name} never showed {needle:?}; it holds:\n{log}"),
            Err(e) => Err(e.context(format!("waiting for {needle:?} in the log of {name}"))),
        }
    }

    /// `migrate checkpoint NAME --dir DIR --json [EXTRA]`, parsed; prints its times.
    pub fn checkpoint(&self, name: &str, dir: &str, extra: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut args = vec!["checkpoint", name, "--dir", dir, "--json"];
        args.extend_from_slice(extra);
        let out = self.json(&args)?;
        let r = &out["report"];
        eprintln!(
            "checkpoint {name}: total {} ms, frozen {} ms (collect {} ms, memory {} ms), {} bytes of memory, image {} bytes",
            r["total_ms"],
            r["frozen_ms"],
            r["collect_ms"],
            r["memory_ms"],
            r["stats"]["bytes_raw"],
            r["image_bytes"]
        );
        anyhow::ensure!(out["container"]["name"] == name, "checkpoint --json names another container: {out}");
        Ok(out)
    }

    /// `migrate restore --dir DIR --host HOST --json`, parsed; prints its times.
    pub fn restore(&self, dir: &str, host: &str) -> anyhow::Result<serde_json::Value> {
        let out = self.json(&["restore", "--dir", dir, "--host", host, "--json"])?;
        let r = &out["report"];
        eprintln!(
            "restore on {host}: total {} ms (memory {} ms), {} pages, {} threads, warnings {}",
            r["total_ms"], r["memory_ms"], r["pages"], r["threads"], r["warnings"]
        );
        anyhow::ensure!(out["container"]["host"] == host, "restored on the wrong host: {out}");
        anyhow::ensure!(
            out["container"]["state"] == "running",
            "restore returned before the container runs: {out}"
        );
        Ok(out)
    }

    /// Requires that `name` is not in `ps` any more.
    pub fn ensure_gone(&self, name: &str) -> anyhow::Result<()> {
        let ps = self.ps()?;
        anyhow::ensure!(
            ps.iter().all(|c| c["name"] != name),
            "{name} is still listed after checkpoint: {ps:?}"
        );
        Ok(())
    }

    /// Checkpoints `name` into `dir`, requires it gone, and restores it on `to`.
    pub fn checkpoint_and_restore(&self, name: &str, dir: &str, to: &str) -> anyhow::Result<()> {
        self.checkpoint(name, dir, &[])?;
        self.ensure_gone(name)?;
        self.restore(dir, to)?;
        Ok(())
    }

    /// An HTTP GET from the lab's client netns; returns the body.
    pub fn http_get_from_client(&self, url: &str) -> anyhow::Result<String> {
        let script = format!(
            "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('{url}', timeout=5).read().decode())"
        );
        self.ok(&["lab", "exec", "client", "--", "python3", "-c", &script])
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        match self.run(&["lab", "down"]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("lab down {} failed: {}", self.name, String::from_utf8_lossy(&out.stderr)),
            Err(e) => eprintln!("lab down {} failed: {e}", self.name),
        }
    }
}

/// A python3 HTTP server on port 80 that answers every GET with `text`.
pub fn http_server(text: &str) -> Vec<String> {
    let script = [
        "import http.server",
        "class H(http.server.BaseHTTPRequestHandler):",
        "    def do_GET(self):",
        &format!("        b = {text:?}.encode()"),
        "        self.send_response(200); self.send_header('Content-Length', str(len(b))); self.end_headers(); self.wfile.write(b)",
        "print('serving', flush=True)",
        "http.server.HTTPServer(('0.0.0.0', 80), H).serve_forever()",
    ]
    .join("\n");
    vec!["python3".into(), "-u".into(), "-c".into(), script]
}

/// nginx.conf for a master and two workers serving `root` on port 80.
pub fn nginx_conf(root: &str, tmp: &str) -> String {
    format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\nuser root;\npid /run/nginx.pid;\n\
         error_log stderr notice;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n\
           fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n\
           server {{ listen 80; root {root}; }}\n}}\n"
    )
}

/// Registered network namespaces, as `ip netns list` would show them.
pub fn netns_names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// The cgroup2 mount, from mountinfo.
pub fn cgroup2_mount() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right.starts_with("cgroup2 ").then(|| left.split(' ').nth(4).map(str::to_string)).flatten()
    })
}

// ---- Checkpoint and restore (tests/checkpoint_*.rs) ----

/// A directory of its own under /tmp for one test (visible inside containers, whose
/// filesystem is the machine's), removed on drop. Declare it before the [`TestLab`], so
/// that the lab (and every container using the directory) is gone first.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> anyhow::Result<TempDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("migrate-test-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// A path inside the directory, as a string (for command lines).
    pub fn join(&self, name: &str) -> String {
        self.path.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The image's copy of the container's log up to the checkpoint: what it printed before
/// the freeze (a restored container's log goes on from it).
pub fn log_in_image(dir: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(dir).join("stdio.log");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Compiles `tests/programs/NAME.c` with `cc FLAGS` into `out` (`scripts/install-deps`
/// installs the compiler: a missing one is an error).
pub fn compile_c(name: &str, flags: &[&str], out: &std::path::Path) -> anyhow::Result<String> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/programs")
        .join(format!("{name}.c"));
    let exe = out.join(name);
    let o = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .context("running cc (scripts/install-deps installs gcc)")?;
    if !o.status.success() {
        bail!("cc {} failed:\n{}", src.display(), String::from_utf8_lossy(&o.stderr));
    }
    Ok(exe.to_string_lossy().into_owned())
}

/// The cgroup hierarchies of this machine (v2 and v1), from mountinfo.
pub fn cgroup_mounts() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.starts_with("cgroup2 ") || right.starts_with("cgroup "))
                .then(|| left.split(' ').nth(4).map(str::to_string))?
        })
        .collect()
}

impl TestLab {
    /// `migrate ARGS` with `--json`-style output: requires success, parses stdout.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = self.ok(args)?;
        serde_json::from_str(&out)
            .with_context(|| format!("migrate {} printed no JSON: {out}", args.join(" ")))
    }

    /// `migrate run --host HOST --name NAME -- CMD…`.
    pub fn start(&self, host: &str, name: &str, cmd: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["run", "--host", host, "--name", name, "--"];
        args.extend_from_slice(cmd);
        self.ok(&args)
    }

    /// What a host holds for containers: its containers' cgroups (in every hierarchy)
    /// and state directories, as `path/name` strings; empty when it has none.
    pub fn container_dirs(&self, host: &str) -> Vec<String> {
        let mut dirs: Vec<std::path::PathBuf> = cgroup_mounts()
            .iter()
            .map(|m| std::path::Path::new(m).join("migrate").join(format!("{}-{host}", self.name)))
            .collect();
        dirs.push(std::path::Path::new("/run/migrate/labs").join(&self.name).join(host).join("containers"));
        let mut names = Vec::new();
        for dir in dirs {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        names.push(e.path().to_string_lossy().into_owned());
                    }
                }
            }
        }
        names.sort();
        names
    }
}

impl TestLab {
    /// For a container whose program has ended: waits until it is listed as exited (its
    /// shim gone), then [`TestLab::down_expecting`] no shim at all.
    pub fn down_after_exit(&self, name: &str) -> anyhow::Result<()> {
        let exited = wait_until(Duration::from_secs(20), || {
            self.container(name).is_ok_and(|c| c["state"] == "exited")
        });
        anyhow::ensure!(exited, "{name} did not exit: {}", self.container(name)?);
        self.down_expecting(&[])
    }

    /// `migrate lab down`, required to succeed and to find exactly the container shims
    /// `shims` (by name) and no other process: nothing was left behind. The drop that
    /// follows finds nothing to remove.
    pub fn down_expecting(&self, shims: &[&str]) -> anyhow::Result<()> {
        let out = self.ok(&["lab", "down"])?;
        if out.contains("other process") {
            bail!("lab down found processes that are neither agents nor shims:\n{out}");
        }
        let mut found: Vec<String> = match out.find("container shim") {
            None => Vec::new(),
            Some(i) => {
                let rest = &out[i..];
                let list = rest.split_once('(').and_then(|(_, r)| r.split_once(')')).map(|(l, _)| l);
                list.with_context(|| format!("no shim names in: {out}"))?
                    .split(", ")
                    .map(str::to_string)
                    .collect()
            }
        };
        found.sort();
        let mut want: Vec<String> = shims.iter().map(|s| s.to_string()).collect();
        want.sort();
        if found != want {
            bail!("lab down found the shims {found:?}, expected {want:?}:\n{out}");
        }
        Ok(())
    }
}

/// Checkpoints `name` expecting a refusal whose message holds every needle and none of
/// `forbid`; the container must run on (`untouched` checks it against its `ps` entry from
/// before) and the image directory be left empty. Returns the problems found.
pub fn refuses_checkpoint(
    lab: &TestLab,
    img: &TempDir,
    name: &str,
    needles: &[String],
    forbid: &[&str],
    untouched: impl Fn(&TestLab, &str, &serde_json::Value) -> anyhow::Result<()>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let before = match lab.container(name) {
        Ok(c) => c,
        Err(e) => return vec![format!("{name}: {e:#}")],
    };
    let dir = img.path.join(name);
    match lab.fails(&["checkpoint", name, "--dir", &dir.to_string_lossy()]) {
        Err(e) => problems.push(format!("{name}: {e:#}")),
        Ok(stderr) => {
            eprintln!("checkpoint {name}: {}", stderr.trim());
            let missing: Vec<&String> = needles.iter().filter(|n| !stderr.contains(n.as_str())).collect();
            if !missing.is_empty() {
                problems.push(format!("{name}: the refusal lacks {missing:?}: {}", stderr.trim()));
            }
            if let Some(f) = forbid.iter().find(|f| stderr.contains(**f)) {
                problems.push(format!("{name}: the refusal says {f:?}: {}", stderr.trim()));
            }
        }
    }
    if let Err(e) = untouched(lab, name, &before) {
        problems.push(format!("{name} after the refused checkpoint: {e:#}"));
    }
    if let Ok(entries) = std::fs::read_dir(&dir)
        && entries.count() > 0
    {
        problems.push(format!("{name}: the refused checkpoint left files in {}", dir.display()));
    }
    problems
}
