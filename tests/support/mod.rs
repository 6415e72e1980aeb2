//! Shared by the end-to-end tests: a lab per test (so tests run side by side), the
//! `migrate` binary, and polling helpers.
//!
//! Every test runs as root against the real kernel. A [`TestLab`] removes its lab when
//! dropped, even when the test fails.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

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
        let mut last = String::new();
        if wait_until(Duration::from_secs(20), || {
            last = self.logs(name).unwrap_or_default();
            last.contains(needle)
        }) {
            return Ok(last);
        }
        bail!("log of {name} never showed {needle:?}; it holds:\n{last}")
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

/// Compiles `tests/programs/NAME.c` with `cc FLAGS` into `out`; `None` (with the reason
/// printed) when there is no C compiler.
pub fn compile_c(name: &str, flags: &[&str], out: &std::path::Path) -> anyhow::Result<Option<String>> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/programs")
        .join(format!("{name}.c"));
    let exe = out.join(name);
    let result = Command::new("cc").args(flags).arg("-o").arg(&exe).arg(&src).output();
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "SKIPPED: no C compiler (cc) to build {}: install gcc (scripts/install-deps)",
                src.display()
            );
            Ok(None)
        }
        Err(e) => Err(e).context("running cc"),
        Ok(o) if !o.status.success() => {
            bail!("cc {} failed:\n{}", src.display(), String::from_utf8_lossy(&o.stderr))
        }
        Ok(_) => Ok(Some(exe.to_string_lossy().into_owned())),
    }
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
