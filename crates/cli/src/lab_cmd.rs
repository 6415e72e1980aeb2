//! `migrate lab …`: simulated hosts on this machine (design §9), the CLI face of
//! `migrate-lab`.
//!
//! This file only parses and prints: what a lab is and how it is built, checked and torn
//! down lives in `migrate-lab`. The lab is chosen by `$MIGRATE_LAB` (default: `default`).

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use anyhow::Context;
use migrate_lab::{DownReport, LabName, LabStatus, UpReport};

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
    /// with its state. Needs root. The lab is named by $MIGRATE_LAB (default: "default").
    #[command(after_help = "Examples:\n  \
        sudo migrate lab up                # host-a, host-b and a client\n  \
        sudo migrate lab up --hosts 3      # host-a … host-c\n  \
        sudo MIGRATE_LAB=t1 migrate lab up # a second, independent lab")]
    Up {
        /// Number of simulated hosts (1 to 26: host-a … host-z).
        #[arg(long, default_value_t = 2)]
        hosts: usize,
    },
    /// Show the lab's namespaces and agents (exit status 1 unless all is healthy).
    ///
    /// For each host: whether its namespace exists, the agent's pid, whether it is alive
    /// and accepts connections on its socket, and how many processes and containers it has.
    #[command(after_help = "Examples:\n  \
        sudo migrate lab status\n  \
        sudo migrate lab status --json | jq '.hosts[] | {name, agent_pid}'")]
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
    #[command(after_help = "Example:\n  sudo migrate lab down")]
    Down,
    /// Run a command inside a host's (or the client's) network namespace.
    ///
    /// Only the network changes: files are the machine's. The exit status is the command's.
    #[command(after_help = "Examples:\n  \
        sudo migrate lab exec client -- curl http://10.77.1.5:8080/\n  \
        sudo migrate lab exec host-a -- ip -br addr\n  \
        sudo migrate lab exec host-b -- bash")]
    Exec {
        /// host-a, host-b, … or client.
        host: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<OsString>,
    },
}

/// Runs a lab command; returns the process exit status.
pub async fn run(cmd: LabCmd, name: &LabName) -> anyhow::Result<i32> {
    let name = name.clone();
    match cmd {
        LabCmd::Up { hosts } => {
            let bin = std::env::current_exe().context("find the migrate binary to run the agents")?;
            let report = migrate_lab::up(&name, hosts, &bin).await?;
            print_up(&report);
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
        LabCmd::Down => {
            let report = migrate_lab::down(&name).await?;
            print_down(&report);
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
    println!(
        "  try:   migrate lab exec client -- ping -c1 {}",
        lab.hosts.first().map_or(lab.client.ip, |h| h.ip)
    );
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
    for k in &r.killed {
        println!("{indent}killed pid {} ({})", k.pid, k.comm);
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
