//! `checkpoint`, `restore` and `inspect`: the CLI face of the engine. Checkpoint and
//! restore run in the agents (which own the containers); inspect reads an image
//! directory itself.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use migrate_agent::api::{CheckpointRequest, Event, RestoreRequest};
use migrate_agent::client::Client;
use migrate_lab::Lab;
use migrate_proto::records::{FdKind, VmaBacking};

use crate::containers::find;
use crate::output::size;

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Dump a running container to an image directory; then it is gone (unless
    /// --leave-running) and its name, IP and MAC are free again.
    #[command(after_help = "Examples:\n  migrate checkpoint web --dir /var/tmp/web.img\n  \
migrate checkpoint web --dir /var/tmp/web.img --leave-running")]
    Checkpoint {
        /// The container.
        name: String,
        /// Where to write the image: a new or empty directory.
        #[arg(long)]
        dir: PathBuf,
        /// Keep the container running after the dump (a forensic snapshot).
        #[arg(long)]
        leave_running: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Bring a checkpointed container back to life, on any host of the lab.
    #[command(after_help = "Examples:\n  migrate restore --dir /var/tmp/web.img --host host-b\n  \
migrate restore --dir /var/tmp/web.img --name web2")]
    Restore {
        /// The image directory.
        #[arg(long)]
        dir: PathBuf,
        /// The host to restore on [default: the lab's first host].
        #[arg(long)]
        host: Option<String>,
        /// A new name [default: the image's].
        #[arg(long)]
        name: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show what an image holds: threads, memory map, files, sizes, checksums.
    #[command(after_help = "Examples:\n  migrate inspect /var/tmp/web.img\n  \
migrate inspect /var/tmp/web.img --json\n  migrate inspect /var/tmp/web.img --hexdump 0x7f3a12000000:256")]
    Inspect {
        /// The image directory.
        dir: PathBuf,
        /// Print the stored bytes of an address range, ADDR[:LEN] (hex address, LEN
        /// bytes, 256 by default).
        #[arg(long, value_name = "ADDR[:LEN]")]
        hexdump: Option<String>,
        /// The process whose memory --hexdump shows (its pid in the container) [default: 1].
        #[arg(long, requires = "hexdump")]
        pid: Option<i32>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

impl ImageCmd {
    /// Whether the command was asked for machine-readable output.
    pub fn json(&self) -> bool {
        matches!(
            self,
            ImageCmd::Checkpoint { json: true, .. }
                | ImageCmd::Restore { json: true, .. }
                | ImageCmd::Inspect { json: true, .. }
        )
    }
}

impl ImageCmd {
    pub fn verb(&self) -> &'static str {
        match self {
            ImageCmd::Checkpoint { .. } => "checkpoint",
            ImageCmd::Restore { .. } => "restore",
            ImageCmd::Inspect { .. } => "inspect",
        }
    }
}

fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    Ok(if dir.is_absolute() { dir.to_path_buf() } else { std::env::current_dir()?.join(dir) })
}

/// A progress bar on stderr, only when it is a terminal.
fn progress_bar() -> impl FnMut(&Event) {
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    move |ev| match ev {
        Event::Phase { phase } => bar.set_message(phase.clone()),
        Event::Bytes { done, total } => {
            bar.set_length(*total);
            bar.set_position(*done);
        }
        _ => bar.finish_and_clear(),
    }
}

pub async fn run(cmd: ImageCmd, lab: &Lab) -> anyhow::Result<i32> {
    match cmd {
        ImageCmd::Checkpoint { name, dir, leave_running, json } => {
            let (client, _) = find(lab, &name).await?;
            let req = CheckpointRequest { dir: absolute(&dir)?, leave_running };
            let ev = client.checkpoint(&name, &req, progress_bar()).await?;
            let Event::Checkpointed { report, container } = ev else {
                bail!("unexpected answer from the agent")
            };
            if json {
                println!("{}", serde_json::json!({ "report": report, "container": container }));
                return Ok(0);
            }
            let s = &report.stats;
            println!(
                "checkpointed {} to {} in {} ms (frozen {} ms: collect {} ms, memory {} ms)",
                container.name,
                report.dir.display(),
                report.total_ms,
                report.frozen_ms,
                report.collect_ms,
                report.memory_ms
            );
            println!(
                "  {} process(es), {} thread(s), {} VMAs; memory {} in {} pages stored, {} zero pages skipped; image {}",
                s.processes,
                s.threads,
                s.vmas,
                size(s.bytes_raw),
                s.pages_stored,
                s.pages_zero,
                size(report.image_bytes)
            );
            if leave_running {
                println!("  {} keeps running on {}", container.name, container.host);
            } else {
                println!(
                    "  {} is gone from {}: its name, {} and {} are free again",
                    container.name, container.host, container.ip, container.mac
                );
            }
            Ok(0)
        }
        ImageCmd::Restore { dir, host, name, json } => {
            let host = match host {
                Some(h) => lab.host(&h)?,
                None => lab.hosts.first().context("the lab has no hosts")?,
            };
            let req = RestoreRequest { dir: absolute(&dir)?, name };
            let ev = Client::new(&host.socket).restore(&req, progress_bar()).await?;
            let Event::Restored { report, container } = ev else { bail!("unexpected answer from the agent") };
            if json {
                println!("{}", serde_json::json!({ "report": report, "container": container }));
                return Ok(0);
            }
            println!(
                "restored {} on {} in {} ms (memory {} ms, {} pages, {} process(es), {} thread(s)): ip {}/{}, mac {}, pid {}",
                container.name,
                container.host,
                report.total_ms,
                report.memory_ms,
                report.pages,
                report.processes,
                report.threads,
                container.ip,
                container.prefix,
                container.mac,
                container.pid
            );
            if let Some(r) = &container.restored {
                let host =
                    if r.from_host.is_empty() { String::new() } else { format!(" on {}", r.from_host) };
                println!(
                    "  checkpointed{host} {}, created {}",
                    crate::output::ago(r.checkpointed_ms),
                    crate::output::ago(container.created_ms)
                );
            }
            for w in &report.warnings {
                println!("  warning: {w}");
            }
            Ok(0)
        }
        ImageCmd::Inspect { .. } => unreachable!("inspect runs without the lab"),
    }
}

/// `migrate inspect`: reads and checks the image itself; needs no agent.
pub fn inspect(dir: &Path, hexdump: Option<&str>, pid: Option<i32>, json: bool) -> anyhow::Result<i32> {
    let img =
        migrate_engine::open_image(dir).with_context(|| format!("reading the image in {}", dir.display()))?;
    if let Some(spec) = hexdump {
        return hex(&img, spec, pid.unwrap_or(1));
    }
    let stored = migrate_engine::image::stored_per_vma(&img)?;
    if json {
        let stored: Vec<_> = img
            .processes
            .iter()
            .zip(&stored)
            .map(|(p, s)| serde_json::json!({ "pid": p.pid, "bytes_stored_per_vma": s }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "manifest": img.manifest,
                "processes": img.processes,
                "stored": stored,
            }))?
        );
        return Ok(0);
    }
    let m = &img.manifest;
    println!("image {} (format {}, migrate {})", dir.display(), m.format_version, m.tool_version);
    println!(
        "  container {} (hostname {}), ip {}/{}, mac {}",
        m.container.name, m.container.hostname, m.container.ip, m.container.prefix, m.container.mac
    );
    println!(
        "  taken     {} on {}, of a container created {}",
        crate::output::ago(m.created_ms),
        if m.container.host.is_empty() { "an unnamed host" } else { &m.container.host },
        crate::output::ago(m.container.created_ms)
    );
    println!("  command   {}", crate::output::command_cell(&m.container.cmd, usize::MAX));
    // Its paths are host paths: what a restore may create where is in engine/src/hostfs.rs.
    println!(
        "  paths     host paths: lab containers share the host's filesystem (a restore creates files only in \
         the container's /run and /dev/shm and under /tmp and /var/tmp)"
    );
    println!(
        "  kernel    {} {} ({}), vDSO {}",
        m.kernel.release, m.kernel.machine, m.kernel.version, m.kernel.vdso_digest
    );
    // Every flag: a restore on a CPU lacking one of them is refused.
    println!(
        "  cpu       {}, xfeatures {:#x}, {} flags: {}",
        m.cpu.vendor,
        m.cpu.xfeatures,
        m.cpu.flags.len(),
        m.cpu.flags.join(" ")
    );
    println!(
        "  clocks    monotonic {:.3} s, boottime {:.3} s at the freeze",
        m.clocks.monotonic_ns as f64 / 1e9,
        m.clocks.boottime_ns as f64 / 1e9
    );
    println!("  files:");
    for f in &m.files {
        println!("    {:<14} {:>12} bytes  xxh3 {:016x}", f.name, f.size, f.xxh3);
    }
    println!("\nprocess tree:");
    println!("    {:>6} {:>6} {:>6} {:>6}  {:<16} STATE", "PID", "PPID", "SID", "PGID", "COMMAND");
    for p in &img.processes {
        let state = match p.zombie {
            Some(st) if st & 0x7f != 0 => format!("zombie (killed by signal {})", st & 0x7f),
            Some(st) => format!("zombie (exit code {})", (st >> 8) & 0xff),
            None => format!("{} thread(s)", p.threads.len()),
        };
        println!("    {:>6} {:>6} {:>6} {:>6}  {:<16} {state}", p.pid, p.ppid, p.sid, p.pgid, p.comm);
    }
    if let Some(ns) = img.processes.iter().find_map(|p| p.ipc.as_ref()) {
        let lines = ipc_lines(ns);
        if !lines.is_empty() {
            println!("IPC namespace:");
            for line in lines {
                println!("    {line}");
            }
        }
    }
    let mut shared = shared_files(&img.processes);
    shared.extend(shared_objects(&img.processes));
    if !shared.is_empty() {
        println!("shared objects:");
        for line in shared {
            println!("    {line}");
        }
    }
    for (p, stored) in img.processes.iter().zip(&stored).filter(|(p, _)| p.zombie.is_none()) {
        println!(
            "\nprocess {} ({}), ppid {}, sid {}, pgid {}, cwd {}",
            p.pid, p.comm, p.ppid, p.sid, p.pgid, p.cwd
        );
        println!("  threads:");
        for t in &p.threads {
            println!(
                "    tid {:<6} rip {:#014x} rsp {:#014x} sigmask {:#x}{}",
                t.tid,
                t.regs.rip,
                t.regs.rsp,
                t.sigmask,
                if t.rseq.is_some() { " rseq" } else { "" }
            );
        }
        let attrs = migrate_proto::records::non_default(p);
        if !attrs.is_empty() {
            println!("  attributes: {}", attrs.join(", "));
        }
        println!(
            "  memory map:{}",
            match p.mlockall {
                0 => "",
                2 => " (mlockall MCL_FUTURE)",
                _ => " (mlockall MCL_FUTURE|MCL_ONFAULT)",
            }
        );
        for (v, b) in p.vmas.iter().zip(stored) {
            let prot = format!(
                "{}{}{}",
                if v.prot & 1 != 0 { 'r' } else { '-' },
                if v.prot & 2 != 0 { 'w' } else { '-' },
                if v.prot & 4 != 0 { 'x' } else { '-' }
            );
            let backing = match &v.backing {
                VmaBacking::Anon => "anon".to_string(),
                VmaBacking::Object { id, shared } => {
                    let name = object_name(&img.processes, *id);
                    if *shared { name } else { format!("private {name}") }
                }
                VmaBacking::File { file, shared } => {
                    format!("{} {}", if *shared { "shared" } else { "private" }, file.path)
                }
                VmaBacking::Vdso => "[vdso]".into(),
                VmaBacking::Vvar => "[vvar]".into(),
                VmaBacking::VvarVclock => "[vvar_vclock]".into(),
                VmaBacking::SysvShm { id, may_write } => {
                    let name = object_name(&img.processes, *id);
                    if *may_write { name } else { format!("{name}, SHM_RDONLY") }
                }
            };
            let shared = matches!(
                v.backing,
                VmaBacking::File { shared: true, .. } | VmaBacking::Object { shared: true, .. }
            );
            println!(
                "    {:#014x}-{:#014x} {:>10} {prot} {:>10} stored  {backing}{}{}{}",
                v.start,
                v.end,
                size(v.end - v.start),
                size(*b),
                // [heap], [stack], [anon:…]; the vDSO's names are its backing already.
                if v.name.starts_with('[') && !backing.starts_with('[') {
                    format!(" {}", v.name)
                } else {
                    String::new()
                },
                if shared && v.may_write { ", may write" } else { "" },
                if v.advice.is_empty() { String::new() } else { format!(" [{}]", v.advice.join(" ")) },
            );
        }
        println!("  files:");
        for f in &p.fds {
            let what = match &f.kind {
                FdKind::File { file, pos } => format!("{} at {pos}", file.path),
                FdKind::Dir { path, .. } => format!("{path}/"),
                FdKind::Device { path } => path.clone(),
                FdKind::External { name } => format!("external: the container's {name}"),
                FdKind::Object { id, pos } => format!("{} at {pos}", object_name(&img.processes, *id)),
                FdKind::Pipe { inode, write } => {
                    let buffered = p.pipes.iter().find(|r| r.inode == *inode).map(|r| r.data.len());
                    let end = pipe_end(f.flags, *write);
                    format!(
                        "{} {end} end{}",
                        pipe_name(&img.processes, *inode),
                        buffered.map_or(String::new(), |n| format!(", {n} bytes buffered"))
                    )
                }
                other => kernel_object(other),
            };
            let locks: Vec<String> = f
                .locks
                .iter()
                .map(|l| {
                    let range = match l.end {
                        Some(end) => format!("{}-{end}", l.start),
                        None => format!("{}-EOF", l.start),
                    };
                    format!("{:?} {} {range}", l.kind, if l.write { "write" } else { "read" })
                })
                .collect();
            let locks =
                if locks.is_empty() { String::new() } else { format!("; locks: {}", locks.join(", ")) };
            println!("    fd {:<4} {:<30} {what}{locks}", f.fd, crate::output::open_flags(f.flags));
        }
        for line in timer_lines(p) {
            println!("  {line}");
        }
    }
    let s = &m.stats;
    println!(
        "\nsizes: {} pages stored ({}), {} zero pages skipped, of {} mapped; pages.img {}",
        s.pages_stored,
        size(s.bytes_raw),
        s.pages_zero,
        s.pages_total,
        size(s.bytes_stored)
    );
    Ok(0)
}

/// How `inspect` names object `id`: "memfd:cache (4096 bytes, seals 0x5)", "deleted
/// /tmp/x (12 bytes)", "shared anonymous memory #3 (1 MiB)".
fn object_name(processes: &[migrate_proto::records::ProcessRecord], id: u64) -> String {
    use migrate_proto::records::ObjectKind;
    let Some(o) = processes.iter().flat_map(|p| &p.objects).find(|o| o.id == id) else {
        return format!("object {id} (no record)");
    };
    match &o.kind {
        ObjectKind::AnonShared => format!("shared anonymous memory #{id} ({})", size(o.size)),
        ObjectKind::Memfd { name, seals } => {
            let owner = o
                .meta
                .map_or_else(String::new, |m| format!(", mode {:o}, owner {}:{}", m.mode, m.uid, m.gid));
            format!("memfd:{name} ({} bytes, seals {seals:#x}{owner})", o.size)
        }
        ObjectKind::Deleted { path, .. } => match &o.link {
            Some(link) => format!("deleted {path}, still linked as {link} ({} bytes)", o.size),
            None => format!("deleted {path} ({} bytes)", o.size),
        },
        ObjectKind::SysvShm { shmid } => format!("System V shm {shmid} ({} bytes)", o.size),
    }
}

/// How `inspect` shows the container's IPC namespace, one line per object.
fn ipc_lines(ns: &migrate_proto::records::IpcNamespace) -> Vec<String> {
    let mut out: Vec<String> = ns.limits.iter().map(|l| format!("limit {} = {}", l.name, l.value)).collect();
    let perm = |p: &migrate_proto::records::IpcPerm| {
        format!("id {} key {:#x} mode {:o} uid {} gid {}", p.id, p.key, p.mode, p.uid, p.gid)
    };
    for s in &ns.shm {
        let flags = match (s.locked, s.removed) {
            (true, true) => ", locked, removed",
            (true, false) => ", locked",
            (false, true) => ", removed",
            (false, false) => "",
        };
        out.push(format!("shm {} size {}{flags}", perm(&s.perm), crate::output::size(s.size)));
    }
    for s in &ns.sem {
        out.push(format!("sem {} values {:?}", perm(&s.perm), s.values));
    }
    for q in &ns.msg {
        let types: Vec<String> = q.messages.iter().map(|m| m.mtype.to_string()).collect();
        let types = if types.is_empty() { String::new() } else { format!(" of types {}", types.join(" ")) };
        out.push(format!(
            "msg {} qbytes {}, {} messages{types}",
            perm(&q.perm),
            crate::output::size(q.qbytes),
            q.messages.len()
        ));
    }
    for q in &ns.mqueues {
        let prios: Vec<u32> = q.messages.iter().map(|m| m.prio).collect();
        out.push(format!(
            "mqueue /{} mode {:o} maxmsg {} msgsize {} messages {} priorities {prios:?}",
            q.name,
            q.mode,
            q.maxmsg,
            q.msgsize,
            q.messages.len()
        ));
    }
    out
}

/// The objects (shared memory, memfds, deleted files) referred to by more than one
/// process, and by whom.
fn shared_objects(processes: &[migrate_proto::records::ProcessRecord]) -> Vec<String> {
    let mut users: std::collections::BTreeMap<u64, Vec<i32>> = std::collections::BTreeMap::new();
    for p in processes {
        for id in p.object_ids() {
            let list = users.entry(id).or_default();
            if !list.contains(&p.pid) {
                list.push(p.pid);
            }
        }
    }
    users
        .into_iter()
        .filter(|(_, pids)| pids.len() > 1)
        .map(|(id, pids)| {
            let pids: Vec<String> = pids.iter().map(i32::to_string).collect();
            format!("{} is shared by pids {}", object_name(processes, id), pids.join(", "))
        })
        .collect()
}

/// Which end of a pipe an fd with these flags holds.
fn pipe_end(flags: u32, write: bool) -> &'static str {
    // O_ACCMODE is 3, O_RDWR 2: a FIFO may be open both ways.
    match flags & 3 {
        2 => "read-write",
        _ if write => "write",
        _ => "read",
    }
}

/// `pipe:[N]`, or `FIFO /path` for a FIFO.
fn pipe_name(processes: &[migrate_proto::records::ProcessRecord], inode: u64) -> String {
    match processes.iter().flat_map(|p| &p.pipes).find(|r| r.inode == inode).and_then(|r| r.fifo.as_ref()) {
        Some(fifo) => format!("FIFO {}", fifo.path),
        None => format!("pipe:[{inode}]"),
    }
}

/// An fd of a kind of `engine/src/objects/` (eventfd, …), with its state.
fn kernel_object(kind: &FdKind) -> String {
    match kind {
        FdKind::EventFd(e) => {
            format!("eventfd, counter {}{}", e.count, if e.semaphore { ", semaphore" } else { "" })
        }
        FdKind::TimerFd(t) => {
            // Milliseconds at most: "1.5 s", "2 s".
            let secs = |ns: u64| {
                let v = format!("{:.3}", ns as f64 / 1e9);
                format!("{} s", v.trim_end_matches('0').trim_end_matches('.'))
            };
            let clock = t.clock_name();
            let when = match (t.left_ns, t.abs_ns) {
                (0, _) => "disarmed".to_string(),
                (left, Some(at)) => format!(
                    "{} left (absolute: at {}{})",
                    secs(left),
                    secs(at),
                    if t.cancel_on_set { ", cancel on set" } else { "" }
                ),
                (left, None) => format!("{} left", secs(left)),
            };
            let every =
                if t.interval_ns > 0 { format!(", every {}", secs(t.interval_ns)) } else { String::new() };
            let s = if t.ticks == 1 { "" } else { "s" };
            format!("timerfd {clock}, {when}{every}, {} tick{s} unread", t.ticks)
        }
        FdKind::SignalFd(sf) => {
            let sigs: Vec<String> =
                (1..=64).filter(|n| sf.mask & (1u64 << (n - 1)) != 0).map(|n: u64| n.to_string()).collect();
            format!("signalfd, signals {}", sigs.join(" "))
        }
        FdKind::Inotify(i) => {
            let w: Vec<String> =
                i.watches.iter().map(|w| format!("wd {} {} mask {:#x}", w.wd, w.path, w.mask)).collect();
            format!("inotify, {} watches: {}", w.len(), w.join(", "))
        }
        FdKind::PidFd(p) => match p.pid {
            Some(pid) => format!("pidfd of {} {pid}", if p.thread { "thread" } else { "pid" }),
            None => "pidfd of a process that has exited".to_string(),
        },
        FdKind::Epoll(e) => {
            let regs: Vec<String> = e
                .targets
                .iter()
                .map(|t| {
                    // Every registration watches EPOLLERR and EPOLLHUP: not worth a word.
                    let events = migrate_proto::records::event_names(t.events & !0x18);
                    format!("fd {} {events} (data {:#x})", t.fd, t.data)
                })
                .collect();
            format!("epoll: {}", if regs.is_empty() { "nothing registered".into() } else { regs.join(", ") })
        }
        FdKind::Inet(s) => s.to_string(),
        FdKind::Mqueue { name } => format!("POSIX message queue /{name}"),
        FdKind::Unix(u) => u.describe(),
        FdKind::File { .. }
        | FdKind::Dir { .. }
        | FdKind::Device { .. }
        | FdKind::External { .. }
        | FdKind::Object { .. }
        | FdKind::Pipe { .. } => format!("{kind:?}"),
    }
}

/// The open file descriptions held by more than one fd, and who holds them.
fn shared_files(processes: &[migrate_proto::records::ProcessRecord]) -> Vec<String> {
    let mut by_id: std::collections::BTreeMap<u64, Vec<String>> = std::collections::BTreeMap::new();
    for p in processes {
        for f in &p.fds {
            by_id.entry(f.file_id).or_default().push(format!("{}:{}", p.pid, f.fd));
        }
    }
    by_id
        .into_iter()
        .filter(|(_, holders)| holders.len() > 1)
        .map(|(id, holders)| {
            let kind = processes
                .iter()
                .flat_map(|p| &p.fds)
                .find(|f| f.file_id == id)
                .map(|f| match &f.kind {
                    FdKind::File { file, .. } => file.path.clone(),
                    FdKind::Dir { path, .. } | FdKind::Device { path } => path.clone(),
                    FdKind::Pipe { inode, write } => {
                        format!("{} ({} end)", pipe_name(processes, *inode), pipe_end(f.flags, *write))
                    }
                    FdKind::External { name } => format!("the container's {name}"),
                    FdKind::Object { id, .. } => object_name(processes, *id),
                    other => kernel_object(other),
                })
                .unwrap_or_default();
            format!("{kind} is one open file in pid:fd {}", holders.join(", "))
        })
        .collect()
}

fn hex(img: &migrate_engine::Image, spec: &str, pid: i32) -> anyhow::Result<i32> {
    let (addr, len) = match spec.split_once(':') {
        Some((a, l)) => (
            a,
            l.parse::<u64>().with_context(|| format!("--hexdump {spec}: LEN must be a number of bytes"))?,
        ),
        None => (spec, 256),
    };
    let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16)
        .with_context(|| format!("--hexdump {spec}: ADDR must be hexadecimal"))?;
    if len == 0 || len > 1 << 20 {
        bail!("--hexdump {spec}: LEN must be between 1 and 1048576");
    }
    if addr.checked_add(len).is_none_or(|end| end > migrate_proto::USER_END) {
        bail!("--hexdump {spec}: the range ends beyond user space ({:#x})", migrate_proto::USER_END);
    }
    if !img.processes.iter().any(|p| p.pid == pid && p.zombie.is_none()) {
        let pids: Vec<String> =
            img.processes.iter().filter(|p| p.zombie.is_none()).map(|p| p.pid.to_string()).collect();
        bail!("--pid {pid}: no such process in the image (its processes: {})", pids.join(", "));
    }
    let bytes = migrate_engine::image::read_range(img, pid, addr, len)?;
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let line_addr = addr + i as u64 * 16;
        let hexs: Vec<String> =
            chunk.iter().map(|b| b.map_or("..".to_string(), |b| format!("{b:02x}"))).collect();
        let ascii: String = chunk
            .iter()
            .map(|b| b.map_or(' ', |b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }))
            .collect();
        println!("{line_addr:#014x}  {:<48} |{ascii}|", hexs.join(" "));
    }
    if bytes.iter().any(Option::is_none) {
        println!("(.. = not stored in the image: a zero page, a file page, or unmapped)");
    }
    Ok(0)
}

/// A process's POSIX timers and membarrier registrations, for `inspect`.
fn timer_lines(p: &migrate_proto::records::ProcessRecord) -> Vec<String> {
    use migrate_proto::records::{TimerNotify, clock_name, membarrier_names};
    let mut out = Vec::new();
    if !p.timers.is_empty() {
        out.push("POSIX timers:".to_string());
    }
    let secs = |ns: u64| format!("{:.3} s", ns as f64 / 1e9);
    for t in &p.timers {
        let notify = match t.notify {
            TimerNotify::None => "no signal (SIGEV_NONE)".to_string(),
            TimerNotify::Signal => format!("signal {} to the process", t.signo),
            TimerNotify::Thread { tid } => format!("signal {} to thread {tid}", t.signo),
        };
        let armed = match (t.left_ns, t.interval_ns) {
            (0, _) => "disarmed".to_string(),
            (left, 0) => format!("{} left, one-shot", secs(left)),
            (left, every) => format!("{} left, every {}", secs(left), secs(every)),
        };
        let armed = if t.abs_ns.is_some() { format!("{armed}, absolute (TIMER_ABSTIME)") } else { armed };
        out.push(format!(
            "  timer {:<4} {}, {notify}, value {:#x}, {armed}",
            t.id,
            clock_name(t.clock),
            t.value
        ));
    }
    if p.membarrier != 0 {
        out.push(format!("membarrier: registered {}", membarrier_names(p.membarrier).join(", ")));
    }
    out
}
