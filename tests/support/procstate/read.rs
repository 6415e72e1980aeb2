//! Reading a container's processes from `/proc` and bringing what they show to the
//! container's view (pids, mounts, inode numbers of new objects): see the parent module.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use super::{Entries, Snapshot};

/// The host pids of every process in the cgroup `cgroup` (a directory of the cgroup2
/// hierarchy) and the cgroups below it.
pub fn cgroup_pids(cgroup: &Path) -> anyhow::Result<Vec<i64>> {
    let mut pids = Vec::new();
    let procs = cgroup.join("cgroup.procs");
    let text = std::fs::read_to_string(&procs).with_context(|| format!("reading {}", procs.display()))?;
    for l in text.lines() {
        pids.push(l.trim().parse().with_context(|| format!("a pid in {}: {l:?}", procs.display()))?);
    }
    for e in std::fs::read_dir(cgroup)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(cgroup_pids(&e.path())?);
        }
    }
    Ok(pids)
}

/// `pids` and their children, grandchildren, …: a zombie has left its cgroup
/// (cgroup.procs does not list it) but is still its parent's child.
fn with_children(pids: &[i64]) -> Vec<i64> {
    let mut all: Vec<i64> = pids.to_vec();
    let mut i = 0;
    while i < all.len() {
        let pid = all[i];
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
        for t in tasks {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if !all.contains(&c) {
                    all.push(c);
                }
            }
        }
        i += 1;
    }
    all
}

/// Reads the state of the processes `host_pids` (one container: PID 1 first is not
/// required), their descendants, and their namespaces, as the container sees it.
pub fn snapshot(host_pids: &[i64]) -> anyhow::Result<Snapshot> {
    let mut raw = Vec::new();
    for pid in with_children(host_pids) {
        raw.push(read_process(pid).with_context(|| format!("reading /proc/{pid}"))?);
    }
    // Host pid → namespace pid, for every task and every group and session id.
    let mut pids = HashMap::new();
    for p in &raw {
        for t in &p.threads {
            for field in ["NSpid", "NSpgid", "NSsid"] {
                let ids =
                    t.status.get(field).map(|v| v.split_whitespace().collect::<Vec<_>>()).unwrap_or_default();
                if let (Some(host), Some(ns)) = (ids.first(), ids.last()) {
                    pids.insert(host.to_string(), ns.to_string());
                }
            }
        }
    }
    let mut renumber = Renumber::default();
    let mut snap = Snapshot::default();
    let mut by_ns: Vec<(i64, RawProcess)> = Vec::new();
    for p in raw {
        let main = p.threads.first().with_context(|| format!("/proc/{} has no task", p.pid))?;
        let ns = ns_id(&main.status, "NSpid")?;
        by_ns.push((ns, p));
    }
    by_ns.sort_by_key(|(ns, _)| *ns);
    // The container's cgroup (PID 1's, cgroup v2), as the host names it: another on
    // each host.
    let cgroup = by_ns
        .first()
        .and_then(|(_, p)| p.files.get("cgroup"))
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("0::")))
        .unwrap_or("")
        .to_string();
    for (ns, p) in &by_ns {
        snap.procs.insert(*ns, normalise(p, &pids, &cgroup, &mut renumber)?);
    }
    if let Some((_, first)) = by_ns.first() {
        snap.namespaces = sysctls(first.pid)?;
        // After the processes: a socket a process holds has the number its fd shows.
        snap.namespaces.extend(sockets(first.pid, &mut renumber)?);
    }
    Ok(snap)
}

/// The last number of a status field such as `NSpid`: the id in the innermost namespace.
fn ns_id(status: &BTreeMap<String, String>, field: &str) -> anyhow::Result<i64> {
    let v = status.get(field).with_context(|| format!("no {field} in status"))?;
    v.split_whitespace().last().and_then(|s| s.parse().ok()).with_context(|| format!("{field}: {v:?}"))
}

struct RawThread {
    tid: i64,
    status: BTreeMap<String, String>,
    stat: String,
    sched: String,
    comm: String,
    timerslack: String,
}

struct RawProcess {
    pid: i64,
    threads: Vec<RawThread>,
    /// Whole files by name (limits, smaps, timers, …).
    files: BTreeMap<String, String>,
    /// Symlinks: cwd, root, exe, ns/*, fd/N.
    links: BTreeMap<String, String>,
    /// fdinfo/N by fd.
    fdinfo: BTreeMap<i64, String>,
    /// The fds whose file is reachable by the name the link shows.
    named: std::collections::BTreeSet<i64>,
}

fn read(path: &str) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn link(path: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_link(path)
        .with_context(|| format!("reading the link {path}"))?
        .to_string_lossy()
        .into_owned())
}

fn key_values(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn read_process(pid: i64) -> anyhow::Result<RawProcess> {
    let base = format!("/proc/{pid}");
    let mut threads = Vec::new();
    let mut tids: Vec<i64> = std::fs::read_dir(format!("{base}/task"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    tids.sort();
    // The main thread first: its status names the process.
    tids.sort_by_key(|&t| t != pid);
    for tid in tids {
        let t = format!("{base}/task/{tid}");
        threads.push(RawThread {
            tid,
            status: key_values(&read(&format!("{t}/status"))?),
            stat: read(&format!("{t}/stat"))?,
            sched: read(&format!("{t}/sched"))?,
            comm: read(&format!("{t}/comm"))?,
            timerslack: read(&format!("/proc/{tid}/timerslack_ns"))?,
        });
    }
    let (mut files, mut links, mut fdinfo) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut named = std::collections::BTreeSet::new();
    // A zombie has its status and stat left, no memory, fds, cwd or namespaces.
    let zombie = threads.first().and_then(|t| t.status.get("State")).is_some_and(|s| s.starts_with('Z'));
    if zombie {
        return Ok(RawProcess { pid, threads, files, links, fdinfo, named });
    }
    for f in [
        "limits",
        "smaps",
        "timers",
        "oom_score_adj",
        "loginuid",
        "sessionid",
        "mountinfo",
        "personality",
        "environ",
        "cmdline",
        "timens_offsets",
        "coredump_filter",
        "cgroup",
    ] {
        files.insert(f.to_string(), read(&format!("{base}/{f}"))?);
    }
    for l in ["cwd", "root", "exe"] {
        links.insert(l.to_string(), link(&format!("{base}/{l}"))?);
    }
    for e in std::fs::read_dir(format!("{base}/ns"))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        links.insert(format!("ns/{name}"), link(&format!("{base}/ns/{name}"))?);
    }
    for e in std::fs::read_dir(format!("{base}/fd"))?.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i64>().ok()) else { continue };
        let target = link(&format!("{base}/fd/{fd}"))?;
        if reachable(&format!("{base}/fd/{fd}"), &format!("{base}/root{target}")) {
            named.insert(fd);
        }
        links.insert(format!("fd/{fd}"), target);
        fdinfo.insert(fd, read(&format!("{base}/fdinfo/{fd}"))?);
    }
    Ok(RawProcess { pid, threads, files, links, fdinfo, named })
}

/// Whether the file open as `fd` (a /proc/PID/fd/N path) is the one at `path`: then its
/// inode number is that of a file which outlives the process. A POSIX queue's fd shows
/// a path of the queue filesystem, which `path` does not reach.
fn reachable(fd: &str, path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(fd), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The sockets of the network namespace of the host task `pid`, keyed by renumbered
/// inode. The kernel's addresses, reference counts and timers are left out.
fn sockets(pid: i64, re: &mut Renumber) -> anyhow::Result<Entries> {
    let mut e = Entries::new();
    let mut ino = |w: &str| w.parse().map(|n| re.get("ino", n)).unwrap_or_else(|_| w.to_string());
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        // sl local rem st tx_queue:rx_queue tr:when retrnsmt uid timeout inode …; a
        // listener's queues are its backlog and the connections waiting in it.
        for l in read(&format!("/proc/{pid}/net/{proto}"))?.lines().skip(1) {
            let w: Vec<&str> = l.split_whitespace().collect();
            if let [_, local, remote, st, queues, _, _, uid, _, inode, ..] = w[..] {
                let v = format!("{local} → {remote} st {st} queues {queues} uid {uid}");
                e.insert((format!("net/{proto}"), ino(inode)), v);
            }
        }
    }
    // Num RefCount Protocol Flags Type St Inode [Path]
    for l in read(&format!("/proc/{pid}/net/unix"))?.lines().skip(1) {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let [_, _, _, flags, kind, st, inode, ref path @ ..] = w[..] {
            let v = format!("flags {flags} type {kind} st {st} {}", path.join(" "));
            e.insert(("net/unix".to_string(), ino(inode)), v.trim_end().to_string());
        }
    }
    Ok(e)
}

/// `/proc/sys` of the namespaces of the host task `pid`, read from inside them.
fn sysctls(pid: i64) -> anyhow::Result<Entries> {
    let script = "cd /proc/sys && grep -r . kernel/hostname kernel/domainname kernel/shm* kernel/msg* kernel/sem* \
                  fs/mqueue net 2>/dev/null; true";
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "-u", "-i", "--", "sh", "-c", script])
        .output()
        .context("running nsenter (util-linux)")?;
    if !out.status.success() {
        bail!("nsenter into {pid}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut e = Entries::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((path, v)) = l.split_once(':') {
            let key = path.replace('/', ".");
            // Multi-line values (a few net files) keep every line.
            e.entry(("sysctl".into(), key))
                .and_modify(|s: &mut String| {
                    s.push('\n');
                    s.push_str(v)
                })
                .or_insert_with(|| v.to_string());
        }
    }
    Ok(e)
}

// ---- Normalising ----

/// Numbers of objects new by nature (inodes, eventfd ids), renumbered in order of
/// appearance, each kind on its own.
#[derive(Default)]
struct Renumber(HashMap<(&'static str, u64), usize>);

impl Renumber {
    fn get(&mut self, kind: &'static str, n: u64) -> String {
        let next = self.0.len() + 1;
        format!("#{}", self.0.entry((kind, n)).or_insert(next))
    }

    /// `pipe:[123]` → `pipe:[#1]`; other text as it is.
    fn bracketed(&mut self, s: &str) -> String {
        if let Some((kind, rest)) = s.split_once(":[")
            && let Some(ino) = rest.strip_suffix(']').and_then(|n| n.parse().ok())
        {
            return format!("{kind}:[{}]", self.get("ino", ino));
        }
        s.to_string()
    }
}

/// The names of `/proc/PID/stat`'s fields, from the second on (proc(5)).
const STAT_FIELDS: &[&str] = &[
    "comm",
    "state",
    "ppid",
    "pgrp",
    "session",
    "tty_nr",
    "tpgid",
    "flags",
    "minflt",
    "cminflt",
    "majflt",
    "cmajflt",
    "utime",
    "stime",
    "cutime",
    "cstime",
    "priority",
    "nice",
    "num_threads",
    "itrealvalue",
    "starttime",
    "vsize",
    "rss",
    "rsslim",
    "startcode",
    "endcode",
    "startstack",
    "kstkesp",
    "kstkeip",
    "signal",
    "blocked",
    "sigignore",
    "sigcatch",
    "wchan",
    "nswap",
    "cnswap",
    "exit_signal",
    "processor",
    "rt_priority",
    "policy",
    "delayacct_blkio_ticks",
    "guest_time",
    "cguest_time",
    "start_data",
    "end_data",
    "start_brk",
    "arg_start",
    "arg_end",
    "env_start",
    "env_end",
    "exit_code",
];

/// PF_FORKNOEXEC | PF_SUPERPRIV (include/linux/sched.h): process accounting's bits.
const PF_ACCOUNTING: u64 = 0x40 | 0x100;

/// Running and sleeping alternate by the moment; stopped, traced, zombie and the rest
/// are state.
fn run_state(s: &str) -> String {
    match s.chars().next() {
        Some('R' | 'S') => "running or sleeping".into(),
        _ => s.to_string(),
    }
}

fn map_pid(pids: &HashMap<String, String>, host: &str) -> String {
    match host {
        "0" | "-1" => host.to_string(),
        _ => pids.get(host).cloned().unwrap_or_else(|| "outside".into()),
    }
}

/// Mount id → mount point, and anonymous device (`0:43`) → mount point, from mountinfo.
struct Mounts {
    by_id: HashMap<String, String>,
    by_dev: HashMap<(u32, u32), String>,
}

impl Mounts {
    fn new(mountinfo: &str) -> Mounts {
        let mut m = Mounts { by_id: HashMap::new(), by_dev: HashMap::new() };
        for l in mountinfo.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            if f.len() < 5 {
                continue;
            }
            m.by_id.insert(f[0].to_string(), f[4].to_string());
            if let Some((maj, min)) = f[2].split_once(':')
                && let (Ok(maj), Ok(min)) = (maj.parse(), min.parse())
            {
                m.by_dev.entry((maj, min)).or_insert_with(|| f[4].to_string());
            }
        }
        m
    }

    /// A device as smaps prints it (`00:2b`, hex): an anonymous one named by its mount.
    fn dev(&self, hex: &str) -> String {
        let parsed = hex
            .split_once(':')
            .and_then(|(a, b)| Some((u32::from_str_radix(a, 16).ok()?, u32::from_str_radix(b, 16).ok()?)));
        match parsed {
            Some((0, min)) => {
                self.by_dev.get(&(0, min)).map(|p| format!("dev of {p}")).unwrap_or_else(|| hex.to_string())
            }
            _ => hex.to_string(),
        }
    }
}

/// Whether `name` (a VMA's or an fd's target) is a file that exists under that name:
/// only then is its inode number the same object's before and after.
/// (/proc makes an inode when a file is looked up: a new process's files are new ones.)
fn lasting_path(name: &str) -> bool {
    name.starts_with('/')
        && !name.ends_with(" (deleted)")
        && !name.starts_with("/memfd:")
        && !name.starts_with("/SYSV")
        && !name.starts_with("/proc/")
}

fn normalise(
    p: &RawProcess,
    pids: &HashMap<String, String>,
    cgroup: &str,
    re: &mut Renumber,
) -> anyhow::Result<Entries> {
    let mut e = Entries::new();
    let mut put = |file: &str, key: &str, v: String| {
        e.insert((file.to_string(), key.to_string()), v);
    };
    let mounts = Mounts::new(p.files.get("mountinfo").map(String::as_str).unwrap_or(""));
    for t in &p.threads {
        let tid = ns_id(&t.status, "NSpid")?;
        let main = t.tid == p.pid;
        // The main thread's files stand for the process: no task/ copy of them. A
        // zombie's are named as such: only its ids and exit status are left to compare.
        let zombie = t.status.get("State").is_some_and(|s| s.starts_with('Z'));
        let prefix = match (main, zombie) {
            (true, true) => "zombie ".to_string(),
            (true, false) => String::new(),
            (false, _) => format!("task/{tid}/"),
        };
        let status = normal_status(&t.status, pids);
        for (k, v) in &status {
            put(&format!("{prefix}status"), k, v.clone());
        }
        let (comm, rest) = t
            .stat
            .split_once(" (")
            .and_then(|(_, r)| r.rsplit_once(") "))
            .with_context(|| format!("stat of {}: {:?}", t.tid, t.stat))?;
        let mut fields = vec![comm.to_string()];
        fields.extend(rest.split_whitespace().map(str::to_string));
        for (i, v) in fields.iter().enumerate() {
            let name = STAT_FIELDS.get(i).copied().unwrap_or("extra");
            let v = match name {
                "state" => run_state(v),
                "ppid" => status.get("PPid").cloned().unwrap_or_default(),
                "pgrp" => status.get("NSpgid").cloned().unwrap_or_default(),
                "session" => status.get("NSsid").cloned().unwrap_or_default(),
                "tpgid" => map_pid(pids, v),
                "flags" => {
                    let flags: u64 = v.parse().with_context(|| format!("stat flags {v:?}"))?;
                    put(
                        &format!("{prefix}stat"),
                        "flags:accounting",
                        format!("{:#x}", flags & PF_ACCOUNTING),
                    );
                    format!("{:#x}", flags & !PF_ACCOUNTING)
                }
                _ => v.clone(),
            };
            put(&format!("{prefix}stat"), name, v);
        }
        for l in t.sched.lines().skip(2) {
            if let Some((k, v)) = l.split_once(':') {
                put(&format!("{prefix}sched"), k.trim(), v.trim().to_string());
            }
        }
        put(&format!("{prefix}comm"), "comm", t.comm.trim().to_string());
        put(&format!("{prefix}timerslack_ns"), "timerslack_ns", t.timerslack.trim().to_string());
    }
    for (name, text) in &p.files {
        match name.as_str() {
            "limits" => {
                for l in text.lines().skip(1) {
                    // "Max open files            1024                 1048576              files"
                    let name = l.get(..26).unwrap_or(l).trim();
                    put(
                        "limits",
                        name,
                        l.get(26..).unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" "),
                    );
                }
            }
            "smaps" => smaps(text, &mounts, re, &mut put),
            "timers" => {
                let mut id = String::new();
                for l in text.lines() {
                    let Some((k, v)) = l.split_once(':') else { continue };
                    let v = v.trim();
                    if k == "ID" {
                        id = v.to_string();
                        continue;
                    }
                    let v = match (k, v.rsplit_once('.')) {
                        ("notify", Some((how, pid))) => format!("{how}.{}", map_pid(pids, pid)),
                        _ => v.to_string(),
                    };
                    put("timers", &format!("timer {id} {k}"), v);
                }
            }
            "mountinfo" => {
                let mut seen: HashMap<String, usize> = HashMap::new();
                for l in text.lines() {
                    let f: Vec<&str> = l.split(' ').collect();
                    if f.len() < 5 {
                        continue;
                    }
                    let n = seen.entry(f[4].to_string()).or_default();
                    *n += 1;
                    // ids and anonymous devices are new by nature: named by mount points.
                    let parent = mounts.by_id.get(f[1]).cloned().unwrap_or_else(|| "outside".into());
                    let dev = if f[2].starts_with("0:") { "anon".to_string() } else { f[2].to_string() };
                    let v = format!(
                        "parent {parent} dev {dev} {}",
                        f[3..].iter().filter(|s| **s != f[4]).copied().collect::<Vec<_>>().join(" ")
                    );
                    put("mountinfo", &format!("{} #{n}", f[4]), v);
                }
            }
            "timens_offsets" => {
                for l in text.lines() {
                    let mut w = l.split_whitespace();
                    if let Some(clock) = w.next() {
                        put("timens_offsets", clock, w.collect::<Vec<_>>().join(" "));
                    }
                }
            }
            "environ" | "cmdline" => put(name, name, text.replace('\0', "\\0")),
            // "ID:CONTROLLERS:PATH", read through the host's cgroup namespace: the
            // container's own cgroup is named for what it is.
            "cgroup" => {
                for l in text.lines() {
                    if let Some((hierarchy, path)) = l.rsplit_once(':') {
                        let path = match path.strip_prefix(cgroup) {
                            Some(rest) if !cgroup.is_empty() => format!("(the container's){rest}"),
                            _ => path.to_string(),
                        };
                        put("cgroup", hierarchy, path);
                    }
                }
            }
            _ => put(name, name, text.trim().to_string()),
        }
    }
    let mut targets = BTreeMap::new();
    for (name, target) in &p.links {
        let v = re.bracketed(target);
        if let Some(fd) = name.strip_prefix("fd/").and_then(|s| s.parse::<i64>().ok()) {
            targets.insert(fd, target.clone());
        }
        put(name, "target", v);
    }
    for (fd, text) in &p.fdinfo {
        let target = targets.get(fd).map(String::as_str).unwrap_or("");
        let lasting = p.named.contains(fd) && lasting_path(target);
        fdinfo(*fd, text, lasting, &mounts, pids, re, &mut put);
    }
    Ok(e)
}

fn normal_status(
    status: &BTreeMap<String, String>,
    pids: &HashMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let last = |k: &str| status.get(k).and_then(|v| v.split_whitespace().last()).unwrap_or("").to_string();
    for (k, v) in status {
        let v = match k.as_str() {
            "Tgid" | "NStgid" => last("NStgid"),
            "Pid" | "NSpid" => last("NSpid"),
            "NSpgid" | "NSsid" => last(k),
            "PPid" | "TracerPid" => map_pid(pids, v),
            "State" => run_state(v),
            // "queued/limit": the queued count is the uid's across the machine.
            "SigQ" => {
                let (queued, limit) = v.split_once('/').unwrap_or((v.as_str(), ""));
                out.insert("SigQ:queued".into(), queued.to_string());
                limit.to_string()
            }
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    out
}

fn smaps(text: &str, mounts: &Mounts, re: &mut Renumber, put: &mut impl FnMut(&str, &str, String)) {
    let mut start = String::new();
    for l in text.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if let Some((s, end)) = first.split_once('-')
            && s.chars().all(|c| c.is_ascii_hexdigit())
            && !s.is_empty()
        {
            // "start-end perms offset dev inode name"
            let f: Vec<&str> = l.splitn(6, char::is_whitespace).collect();
            let name = f.get(5).map(|s| s.trim()).unwrap_or("");
            let inode = f.get(4).copied().unwrap_or("0");
            let inode = match inode.parse::<u64>() {
                Ok(0) => "0".to_string(),
                Ok(n) if !lasting_path(name) => re.get("ino", n),
                _ => inode.to_string(),
            };
            let dev = mounts.dev(f.get(3).copied().unwrap_or(""));
            start = s.to_string();
            let v = format!(
                "end {end} {} offset {} {dev} inode {inode} {name}",
                f.get(1).unwrap_or(&""),
                f.get(2).unwrap_or(&"")
            );
            put("smaps", &format!("{start}:vma"), v);
        } else if let Some((k, v)) = l.split_once(':') {
            put(
                "smaps",
                &format!("{start}:{}", k.trim()),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            );
        }
    }
}

fn fdinfo(
    fd: i64,
    text: &str,
    lasting: bool,
    mounts: &Mounts,
    pids: &HashMap<String, String>,
    re: &mut Renumber,
    put: &mut impl FnMut(&str, &str, String),
) {
    let file = format!("fdinfo/{fd}");
    for l in text.lines() {
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        let v = match k {
            "mnt_id" => mounts.by_id.get(v).cloned().unwrap_or_else(|| "outside".into()),
            "ino" if !lasting => v.parse().map(|n| re.get("ino", n)).unwrap_or_else(|_| v.to_string()),
            "eventfd-id" => v.parse().map(|n| re.get("eventfd", n)).unwrap_or_else(|_| v.to_string()),
            "Pid" => map_pid(pids, v),
            "NSpid" => v.split_whitespace().last().unwrap_or("").to_string(),
            // "1: POSIX  ADVISORY  READ PID MAJ:MIN:INO START END": the owner's pid.
            "lock" => v
                .split_whitespace()
                .enumerate()
                .map(|(i, w)| if i == 4 { map_pid(pids, w) } else { w.to_string() })
                .collect::<Vec<_>>()
                .join(" "),
            _ => v.to_string(),
        };
        match k {
            // Lines that repeat (one per epoll target or watch) are keyed by their id;
            // an epoll's targets (pipes, sockets, anonymous inodes) are new by nature.
            "tfd" | "inotify wd" | "fanotify ino" => {
                let (id, rest) = v.split_once(' ').unwrap_or((v.as_str(), ""));
                put(&file, &format!("{k} {id}"), words(rest, k == "tfd", mounts, re));
            }
            _ => put(&file, k, v),
        }
    }
}

/// The words of a watch or epoll line: `sdev:HEX` of an anonymous device named by its
/// mount point, `ino:HEX` renumbered when `new_inodes`.
fn words(s: &str, new_inodes: bool, mounts: &Mounts, re: &mut Renumber) -> String {
    s.split_whitespace()
        .map(|w| {
            let hex = |p: &str| w.strip_prefix(p).and_then(|h| u64::from_str_radix(h, 16).ok());
            if let Some(n) = hex("ino:").filter(|_| new_inodes) {
                format!("ino:{}", re.get("ino", n))
            } else if let Some(dev) = hex("sdev:") {
                // The kernel's dev_t: major above bit 20.
                match mounts.by_dev.get(&((dev >> 20) as u32, (dev & 0xfffff) as u32)) {
                    Some(point) if dev >> 20 == 0 => format!("sdev:{point}"),
                    _ => w.to_string(),
                }
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
