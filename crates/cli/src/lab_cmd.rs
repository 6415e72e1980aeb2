//! `migrate lab …`: simulated hosts on this machine (design §9), the CLI face of
//! `migrate-lab`.
//!
//! This file only parses and prints: what a lab is and how it is built, checked and torn
//! down lives in `migrate-lab`. The lab is chosen by `$MIGRATE_LAB` (default: `default`).

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use anyhow::Context;
use migrate_lab::{DownReport, KilledProcess, LabName, LabStatus, ProcessKind, UpReport};

use crate::output;

/// Simulated hosts on this machine: network namespaces joined by a LAN bridge, one agent
/// per host.
#[derive(clap::Subcommand, Debug)]
pub enum LabCmd {
    /// Create the lab (or repair it) and start one agent per host.
    ///
    /// Creates a network namespace per host (host-a 10.77.0.11, host-b 10.77.0.12, …), a
    /// client namespace (10.77.0.2) and a LAN namespace whose bridge joins them, then
    /// starts `migrate agent` inside each host. The machine's own network is not touched.
    /// Idempotent: on a healthy lab it changes nothing; an agent that died is restarted
    /// with its state, so `migrate lab up` is also the repair command. Needs root. The lab
    /// is named by --lab or $MIGRATE_LAB (default: "default").
    #[command(after_help = "Examples:\n  \
        migrate lab up                 # host-a, host-b and a client; or repair the lab\n  \
        migrate lab up --hosts 3       # host-a … host-c\n  \
        MIGRATE_LAB=t1 migrate lab up  # a second, independent lab")]
    Up {
        /// Number of simulated hosts, 1 to 26 (host-a … host-z) [default: the size the lab
        /// has; 2 for a new lab].
        #[arg(long, value_parser = output::parse_hosts, allow_negative_numbers = true)]
        hosts: Option<usize>,
        /// Print what was done and the lab (hosts, addresses, agents) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the lab's namespaces and agents (exit status 1 unless all is healthy).
    ///
    /// For each host: whether its namespace exists, the agent's pid, whether it is alive
    /// and accepts connections on its socket, and how many processes and containers it has.
    #[command(after_help = "Examples:\n  \
        migrate lab status\n  \
        migrate lab status --json | jq '.hosts[] | {name, agent_pid}'")]
    Status {
        /// Print machine-readable JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove the lab completely: agents, containers, namespaces, state.
    ///
    /// Kills every process living in the lab's namespaces and every container under the
    /// hosts' cgroups, removes the namespaces (and with them every link) and the lab's
    /// directory. Works on a half-broken lab too.
    #[command(after_help = "Examples:\n  migrate lab down\n  migrate lab down --json")]
    Down {
        /// Print what was removed as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a host's (or the client's) network namespace.
    ///
    /// Only the network changes: files are the machine's. The exit status is the
    /// command's; 127 if the program is not found, 126 if it cannot be executed.
    #[command(after_help = "Examples:\n  \
        migrate lab exec host-a -- cat /proc/net/dev\n  \
        migrate lab exec client -- python3 -m http.server 8080  # at 10.77.0.2:8080\n  \
        migrate lab exec host-b -- bash")]
    Exec {
        /// host-a, host-b, … or client.
        host: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<OsString>,
    },
}

impl LabCmd {
    /// Whether the command was asked for machine-readable output.
    pub fn json(&self) -> bool {
        matches!(
            self,
            LabCmd::Up { json: true, .. } | LabCmd::Status { json: true, .. } | LabCmd::Down { json: true }
        )
    }
}

impl LabCmd {
    pub fn verb(&self) -> &'static str {
        match self {
            LabCmd::Up { .. } => "up",
            LabCmd::Status { .. } => "status",
            LabCmd::Down { .. } => "down",
            LabCmd::Exec { .. } => "exec",
        }
    }

    /// Why the verb needs root, for the error a non-root user gets.
    pub fn why_root(&self) -> &'static str {
        match self {
            LabCmd::Up { .. } => "it creates network namespaces, links and bridges, and starts the agents",
            LabCmd::Status { .. } => {
                "it looks into the lab's network namespaces and talks to the agents over their root-only sockets"
            }
            LabCmd::Down { .. } => "it kills the lab's processes and removes its namespaces and cgroups",
            LabCmd::Exec { .. } => "it enters a network namespace of the lab",
        }
    }
}

/// Runs a lab command; returns the process exit status.
pub async fn run(cmd: LabCmd, name: &LabName) -> anyhow::Result<i32> {
    let name = name.clone();
    match cmd {
        LabCmd::Up { hosts, json } => {
            let bin = std::env::current_exe().context("find the migrate binary to run the agents")?;
            let report = migrate_lab::up(&name, hosts, &bin).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_up(&report);
            }
            Ok(0)
        }
        LabCmd::Status { json } => {
            let status = migrate_lab::status(&name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(if status.healthy { 0 } else { 1 })
        }
        LabCmd::Down { json } => {
            let report = migrate_lab::down(&name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_down(&report);
            }
            Ok(0)
        }
        LabCmd::Exec { host, cmd } => {
            let status = tokio::task::spawn_blocking(move || migrate_lab::exec(&name, &host, &cmd)).await??;
            Ok(status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1))
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn print_up(r: &UpReport) {
    let lab = &r.lab;
    if r.unchanged() {
        println!("lab {} is already up and healthy ({})", lab.name, secs(r.elapsed));
    } else {
        println!(
            "lab {} is up: {} hosts in {} (network {}, agents {})",
            lab.name,
            lab.hosts.len(),
            secs(r.elapsed),
            secs(r.network_time),
            secs(r.agents_time)
        );
    }
    for p in &r.problems {
        println!("  rebuilt because: {p}");
    }
    if let Some(cleared) = r.cleared.as_ref().filter(|c| !c.is_empty()) {
        println!("  cleared leftovers of an earlier lab:");
        print_removed(cleared, "    ");
    }
    for c in &r.created {
        println!("  created {c}");
    }
    println!();
    println!("  {:<8} {:<14} {:<12} AGENT", "HOST", "NETNS", "IP");
    for h in &lab.hosts {
        let how = if r.started.iter().any(|(n, _)| *n == h.name) { "started" } else { "running" };
        let pid = h.agent_pid.map_or_else(|| "-".into(), |p| format!("pid {p} ({how})"));
        println!("  {:<8} {:<14} {:<12} {pid}", h.name, h.netns, h.ip.to_string());
    }
    println!("  {:<8} {:<14} {:<12} -", "client", lab.client.netns, lab.client.ip.to_string());
    println!();
    println!("  LAN: bridge {} in netns {}, {}", lab.lan_bridge, lab.lan_netns, lab.subnet);
    println!("  state: {}", lab.dir.display());
    // Only programs install-deps provides (python3, curl); the same steps as the
    // README's, which `run --wait-port` makes safe to paste: the first request is served.
    if let Some(host) = lab.hosts.first() {
        let ip = "10.77.1.10";
        println!(
            "  try:   migrate run --host {} --name web --ip {ip} --wait-port 80 -- python3 -m http.server 80",
            host.name
        );
        println!("         migrate lab exec client -- curl -sI http://{ip}/");
    }
}

fn print_status(s: &LabStatus) {
    if !s.up {
        println!("lab {} is not up (run `migrate lab up`)", s.name);
        if !s.stray_netns.is_empty() {
            println!("  leftover namespaces: {} (run `migrate lab down`)", s.stray_netns.join(", "));
        }
        return;
    }
    let verdict = if s.healthy { "healthy" } else { "NOT healthy" };
    println!("lab {} ({}): {verdict}", s.name, s.subnet.as_deref().unwrap_or("?"));
    let yes = |b: bool| if b { "yes" } else { "NO" };
    println!(
        "  {:<8} {:<14} {:<12} {:<6} {:<8} {:<6} {:<9} {:<6} CONTAINERS",
        "HOST", "NETNS", "IP", "NETNS?", "AGENT", "ALIVE", "ANSWERS", "PROCS"
    );
    for h in &s.hosts {
        println!(
            "  {:<8} {:<14} {:<12} {:<6} {:<8} {:<6} {:<9} {:<6} {}",
            h.name,
            h.netns,
            h.ip.to_string(),
            yes(h.netns_present),
            h.agent_pid.map_or_else(|| "-".into(), |p| p.to_string()),
            yes(h.agent_alive),
            yes(h.agent_answering),
            h.processes,
            h.containers
        );
    }
    if let Some(c) = &s.client {
        println!("  {:<8} {:<14} {:<12} {}", "client", c.netns, c.ip.to_string(), yes(c.present));
    }
    println!("  LAN netns {}: {}", s.lan.netns, if s.lan.present { "present" } else { "MISSING" });
    if !s.stray_netns.is_empty() {
        println!("  stray namespaces of this lab: {}", s.stray_netns.join(", "));
    }
    if let Some(h) = s.hosts.iter().find(|h| !h.agent_answering) {
        println!("  agent log of {}: {}", h.name, h.log.display());
    }
}

fn print_down(r: &DownReport) {
    if r.is_empty() {
        println!("lab {}: nothing to remove ({})", r.lab, secs(r.elapsed));
        return;
    }
    println!("lab {} removed in {}:", r.lab, secs(r.elapsed));
    print_removed(r, "  ");
}

fn print_removed(r: &DownReport, indent: &str) {
    if !r.killed.is_empty() {
        println!("{indent}killed {}", killed_summary(&r.killed));
    }
    for c in &r.cgroups_removed {
        println!("{indent}removed cgroup {c}");
    }
    for n in &r.netns_removed {
        println!("{indent}removed network namespace {n}");
    }
    for p in &r.paths_removed {
        println!("{indent}removed {}", p.display());
    }
}

/// "2 agents (host-a, host-b), 5 container shims and 1 other process (bash, pid 42)".
fn killed_summary(killed: &[KilledProcess]) -> String {
    let of =
        |kind: ProcessKind| -> Vec<&KilledProcess> { killed.iter().filter(|k| k.kind == kind).collect() };
    let names = |ks: &[&KilledProcess]| {
        ks.iter()
            .map(|k| k.of.clone().unwrap_or_else(|| format!("pid {}", k.pid)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    let agents = of(ProcessKind::Agent);
    if !agents.is_empty() {
        parts.push(format!("{} ({})", plural(agents.len(), "agent"), names(&agents)));
    }
    let shims = of(ProcessKind::Shim);
    if !shims.is_empty() {
        parts.push(format!("{} ({})", plural(shims.len(), "container shim"), names(&shims)));
    }
    let others = of(ProcessKind::Other);
    if !others.is_empty() {
        let list: Vec<String> = others.iter().map(|k| format!("{}, pid {}", k.comm, k.pid)).collect();
        parts.push(format!("{} ({})", plural(others.len(), "other process"), list.join("; ")));
    }
    match parts.len() {
        0 | 1 => parts.concat(),
        n => format!("{} and {}", parts[..n - 1].join(", "), parts[n - 1]),
    }
}

fn plural(n: usize, word: &str) -> String {
    match (n, word.strip_suffix("process")) {
        (1, _) => format!("1 {word}"),
        (_, Some(stem)) => format!("{n} {stem}processes"),
        _ => format!("{n} {word}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(pid: i32, kind: ProcessKind, of: Option<&str>) -> KilledProcess {
        KilledProcess { pid, comm: "bash".into(), kind, of: of.map(str::to_string) }
    }

    #[test]
    fn killed_processes_are_summarised() {
        let all = [
            k(1, ProcessKind::Agent, Some("host-a")),
            k(2, ProcessKind::Shim, Some("web")),
            k(3, ProcessKind::Agent, Some("host-b")),
            k(4, ProcessKind::Other, None),
        ];
        assert_eq!(
            killed_summary(&all),
            "2 agents (host-a, host-b), 1 container shim (web) and 1 other process (bash, pid 4)"
        );
        assert_eq!(killed_summary(&all[..1]), "1 agent (host-a)");
        assert_eq!(
            killed_summary(&[k(4, ProcessKind::Other, None), k(5, ProcessKind::Other, None)]),
            "2 other processes (bash, pid 4; bash, pid 5)"
        );
    }
}
