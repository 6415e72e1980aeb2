//! The container verbs: `run`, `ps`, `logs`, `exec`, `stop`, `rm`. Each is a thin
//! client of the agents' API; the lab tells which agents exist.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use migrate_agent::api::{ContainerInfo, RunRequest, State};
use migrate_agent::client::{Client, ClientError};
use migrate_lab::{Lab, LabName};

use crate::output::{self, ago, table};

#[derive(Subcommand, Debug)]
pub enum ContainerCmd {
    /// Start a container on a host; returns once its process exists (like `docker run -d`),
    /// or with --wait-port once it listens.
    ///
    /// The container has its own pid, network, hostname, IPC, mount, cgroup and time
    /// namespaces, but NOT its own root filesystem: it sees the host's files (`/` is the
    /// host's `/`, with a private /proc, /sys, /dev/shm and /run), and what it writes
    /// elsewhere lands on the host. `python3 -m http.server` serves the directory it
    /// starts in, which is `/`: the host's files.
    ///
    /// migrate's options go before `--`; everything after the program's name is its own.
    /// At a terminal (or when one of run's options follows the program's name), run
    /// watches the program for a second and warns if it ends.
    #[command(after_help = "Examples:\n  \
migrate run --host host-a --name web --wait-port 80 -- python3 -m http.server 80\n  \
migrate run --name web2 --ip 10.77.1.20/16 -- python3 -m http.server 80\n  \
migrate run --name small --memory-max 256M --pids-max 64 -- sleep 600")]
    Run {
        /// The host to run on [default: the lab's first host].
        #[arg(long)]
        host: Option<String>,
        /// Unique across the lab [default: generated].
        #[arg(long)]
        name: Option<String>,
        /// Its address, e.g. 10.77.1.10 or 10.77.1.10/16 [default: the first free one].
        #[arg(long, value_parser = output::parse_ip)]
        ip: Option<String>,
        /// Its MAC address, e.g. 02:4d:0a:4d:01:0a [default: derived from the IP].
        #[arg(long)]
        mac: Option<String>,
        /// Memory limit in bytes or with a unit K, M, G or T, e.g. 256M or 1G.
        #[arg(long, value_parser = output::parse_size, allow_negative_numbers = true)]
        memory_max: Option<u64>,
        /// Maximum number of processes and threads (at least 1).
        #[arg(long, value_parser = output::parse_pids_max, allow_negative_numbers = true)]
        pids_max: Option<u64>,
        /// Return only once the program listens on this TCP port (on any address of the
        /// container), or fail if it exits first or has not after 30 s.
        #[arg(long, value_name = "PORT")]
        wait_port: Option<u16>,
        /// Print the new container as JSON (the fields of `ps --json`).
        #[arg(long)]
        json: bool,
        /// The program and its arguments (after `--` if they start with a dash); it runs as PID 1.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
    /// List containers (all hosts of the lab, or one).
    #[command(after_help = "Examples:\n  migrate ps\n  migrate ps --host host-b --json")]
    Ps {
        /// Only the containers of this host (host-a, host-b, …).
        #[arg(long)]
        host: Option<String>,
        /// Print a JSON array with every field, the full command line included.
        #[arg(long)]
        json: bool,
    },
    /// Print a container's output (stdout and stderr).
    #[command(after_help = "Examples:\n  migrate logs web\n  migrate logs -f web")]
    Logs {
        /// The container (see `migrate ps`).
        name: String,
        /// Keep printing what it writes until it ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Run a command inside a running container (all its namespaces and its cgroup).
    ///
    /// The exit status is the command's; 127 if the program is not found, 126 if it
    /// cannot be executed.
    #[command(after_help = "Examples:\n  migrate exec web -- hostname\n  migrate exec web -- sh -c 'ps ax'")]
    Exec {
        /// The container (see `migrate ps`).
        name: String,
        /// The program and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
    /// Stop a container: SIGTERM, then SIGKILL after the grace period.
    #[command(after_help = "Examples:\n  migrate stop web\n  migrate stop --time 0 web")]
    Stop {
        /// The container (see `migrate ps`).
        name: String,
        /// Seconds between SIGTERM and SIGKILL (0: SIGKILL at once).
        #[arg(short, long, default_value_t = 10, value_parser = output::parse_seconds, allow_negative_numbers = true)]
        time: u64,
        /// Print what was done (signals sent, the container's final state) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a stopped container: its cgroup, network link, log and name.
    #[command(after_help = "Examples:\n  migrate rm web\n  migrate rm --force web")]
    Rm {
        /// The container (see `migrate ps`).
        name: String,
        /// Kill it first if it is running.
        #[arg(short, long)]
        force: bool,
        /// Print the removed container as JSON (the fields of `ps --json`).
        #[arg(long)]
        json: bool,
    },
}

impl ContainerCmd {
    /// Whether the command was asked for machine-readable output.
    pub fn json(&self) -> bool {
        matches!(
            self,
            ContainerCmd::Run { json: true, .. }
                | ContainerCmd::Ps { json: true, .. }
                | ContainerCmd::Stop { json: true, .. }
                | ContainerCmd::Rm { json: true, .. }
        )
    }
}

impl ContainerCmd {
    pub fn verb(&self) -> &'static str {
        match self {
            ContainerCmd::Run { .. } => "run",
            ContainerCmd::Ps { .. } => "ps",
            ContainerCmd::Logs { .. } => "logs",
            ContainerCmd::Exec { .. } => "exec",
            ContainerCmd::Stop { .. } => "stop",
            ContainerCmd::Rm { .. } => "rm",
        }
    }

    /// Why the verb needs root, for the error a non-root user gets.
    pub fn why_root(&self) -> &'static str {
        match self {
            ContainerCmd::Run { .. } | ContainerCmd::Stop { .. } | ContainerCmd::Rm { .. } => {
                "it asks the agent over its root-only socket, and the agent creates or removes the container's namespaces, cgroup and network link"
            }
            ContainerCmd::Ps { .. } | ContainerCmd::Logs { .. } => {
                "it talks to the agents over their root-only sockets"
            }
            ContainerCmd::Exec { .. } => {
                "it enters the container's namespaces and cgroup, and asks the agent over its root-only socket"
            }
        }
    }
}

pub fn run(cmd: ContainerCmd, lab_name: &LabName) -> anyhow::Result<i32> {
    let lab = Lab::load(lab_name)?;
    // `exec` must not run on a multi-threaded runtime: it forks.
    if let ContainerCmd::Exec { name, cmd } = &cmd {
        let argv = crate::utf8_args(cmd)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (_, info) = rt.block_on(find(&lab, name))?;
        drop(rt);
        if info.state != State::Running {
            bail!("container {name} is {}: only a running container can exec", info.state);
        }
        return Ok(migrate_agent::exec::exec(&info, &argv)?);
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run_async(cmd, &lab))
}

async fn run_async(cmd: ContainerCmd, lab: &Lab) -> anyhow::Result<i32> {
    match cmd {
        ContainerCmd::Run { host, name, ip, mac, memory_max, pids_max, wait_port, json, cmd } => {
            let host = match host {
                Some(h) => lab.host(&h)?,
                None => lab.hosts.first().context("the lab has no hosts")?,
            };
            let req = RunRequest { name, ip, mac, memory_max, pids_max, cmd: crate::utf8_args(&cmd)? };
            let client = Client::new(&host.socket);
            let mut info = client.run(&req).await?;
            let misplaced = misplaced_option(&req.cmd);
            if let Some(port) = wait_port {
                wait_listening(&client, &info, port).await?;
            } else if misplaced.is_some() || std::io::stdout().is_terminal() {
                // A program that ends at once was most likely started wrongly: say so now
                // rather than let the user find out at the first request.
                info = watch_start(&client, info).await?;
                if info.state != State::Running {
                    eprintln!(
                        "warning: {} exited within a second of its start{}: see `migrate logs {}`",
                        info.name,
                        exit_text(&info),
                        info.name
                    );
                    if let Some(opt) = misplaced {
                        eprintln!(
                            "  note: {opt} came after the program's name, so the program got it as an \
argument: put migrate's options before `--`"
                        );
                    }
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else if info.state != State::Running {
                println!(
                    "{} ran on {}: ip {}/{}, mac {}; now {}{}",
                    info.name,
                    info.host,
                    info.ip,
                    info.prefix,
                    info.mac,
                    info.state,
                    exit_text(&info)
                );
            } else {
                println!(
                    "{} is running on {}: ip {}/{}, mac {}, pid {}",
                    info.name, info.host, info.ip, info.prefix, info.mac, info.pid
                );
                for l in &info.limits {
                    match (&l.file, &l.warning) {
                        (_, Some(w)) => println!("  warning: {}: {w}", l.limit),
                        (Some(f), None) => println!("  {} = {} ({})", l.limit, l.value, f.display()),
                        (None, None) => {}
                    }
                }
            }
            Ok(0)
        }
        ContainerCmd::Ps { host, json } => {
            let hosts: Vec<_> = match &host {
                Some(h) => vec![lab.host(h)?],
                None => lab.hosts.iter().collect(),
            };
            let mut all = Vec::new();
            let mut unreachable = 0;
            for h in hosts {
                match Client::new(&h.socket).list().await {
                    Ok(list) => all.extend(list),
                    Err(e) => {
                        unreachable += 1;
                        eprintln!("warning: {}: {e}", h.name);
                    }
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print_ps(&all);
            }
            Ok(if unreachable > 0 { 1 } else { 0 })
        }
        ContainerCmd::Logs { name, follow } => {
            let (client, info) = find(lab, &name).await?;
            let mut out = std::io::stdout().lock();
            let mut write_failed = None;
            let streamed = client
                .logs(&name, follow, |chunk| {
                    let written = out.write_all(chunk).and_then(|()| out.flush());
                    if let Err(e) = &written {
                        write_failed = Some(std::io::Error::new(e.kind(), e.to_string()));
                    }
                    written
                })
                .await;
            match (streamed, write_failed) {
                (Ok(()), _) => Ok(0),
                (Err(_), Some(e)) => Err(anyhow::Error::from(e).context("write the log to stdout")),
                // Connected, then the connection broke: the agent died or restarted.
                (Err(e @ ClientError::Protocol { .. }), None) => {
                    Err(anyhow::Error::from(e).context(format!(
                        "the agent of {} stopped answering while sending the log of {name} (the container \
                     itself keeps running): bring the agent back with `migrate lab up`, then run \
                     `migrate logs{} {name}` again",
                        info.host,
                        if follow { " -f" } else { "" }
                    )))
                }
                (Err(e), None) => Err(e.into()),
            }
        }
        ContainerCmd::Stop { name, time, json } => {
            let (client, _) = find(lab, &name).await?;
            let report = client.stop(&name, Some(time)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let c = &report.container;
                let how = if report.signals.is_empty() {
                    "was not running".to_string()
                } else {
                    format!("sent {}", report.signals.join(", then "))
                };
                println!("{}: {how}; now {}{}", c.name, c.state, exit_text(c));
                if let Some(note) = report.note {
                    println!("  note: {note}");
                }
            }
            Ok(0)
        }
        ContainerCmd::Rm { name, force, json } => {
            let (client, _) = find(lab, &name).await?;
            let info = client.remove(&name, force).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
                return Ok(0);
            }
            println!("{} removed from {} (ip {} and name released)", info.name, info.host, info.ip);
            Ok(0)
        }
        ContainerCmd::Exec { .. } => unreachable!("handled before the runtime starts"),
    }
}

/// `run`'s own options: after the program's name they are the program's arguments.
const RUN_OPTIONS: &[&str] =
    &["--json", "--host", "--name", "--ip", "--mac", "--memory-max", "--pids-max", "--wait-port"];

/// The first of `run`'s options among the program's arguments, if any.
fn misplaced_option(argv: &[String]) -> Option<&'static str> {
    argv.iter().skip(1).find_map(|a| {
        let opt = a.split_once('=').map_or(a.as_str(), |(o, _)| o);
        RUN_OPTIONS.iter().copied().find(|o| *o == opt)
    })
}

/// Watches a new container for up to a second; returns its state at the end.
async fn watch_start(client: &Client, info: ContainerInfo) -> anyhow::Result<ContainerInfo> {
    let until = std::time::Instant::now() + Duration::from_secs(1);
    let mut info = info;
    while info.state == State::Running && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        info = client.get(&info.name).await?;
    }
    ended(client, info).await
}

/// For a container whose PID 1 is gone: waits (up to a second) for its shim to record
/// how it ended, which it does right after reaping it.
async fn ended(client: &Client, mut info: ContainerInfo) -> anyhow::Result<ContainerInfo> {
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while info.state == State::Unknown && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        info = client.get(&info.name).await?;
    }
    Ok(info)
}

/// How long `run --wait-port` waits for the program to listen.
const WAIT_PORT_LIMIT: Duration = Duration::from_secs(30);

/// Waits until a socket of the container listens on TCP `port`, as its network
/// namespace's `/proc/PID/net/tcp` and `tcp6` show; fails if the container ends first.
async fn wait_listening(client: &Client, info: &ContainerInfo, port: u16) -> anyhow::Result<()> {
    let until = std::time::Instant::now() + WAIT_PORT_LIMIT;
    loop {
        if listens(info.pid, port) {
            return Ok(());
        }
        let now = client.get(&info.name).await?;
        if now.state != State::Running {
            let now = ended(client, now).await?;
            bail!(
                "{} ended before it listened on port {port}{}: see `migrate logs {}`",
                info.name,
                exit_text(&now),
                info.name
            );
        }
        if std::time::Instant::now() >= until {
            bail!(
                "{} runs but has not listened on TCP port {port} for {} s: see `migrate logs {}`",
                info.name,
                WAIT_PORT_LIMIT.as_secs(),
                info.name
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the network namespace of `pid` has a TCP socket listening on `port`.
fn listens(pid: i32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|table| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))
            .is_ok_and(|text| listening_ports(&text).any(|p| p == port))
    })
}

/// The local ports of the listening sockets in a `/proc/net/tcp` table: lines of
/// `sl local_address rem_address st …`, addresses as `HEXADDR:HEXPORT`, state 0A LISTEN.
fn listening_ports(table: &str) -> impl Iterator<Item = u16> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (_, port) = fields.get(1)?.rsplit_once(':')?;
        (*fields.get(3)? == "0A").then(|| u16::from_str_radix(port, 16).ok())?
    })
}

/// Finds the agent that holds container `name`.
pub(crate) async fn find(lab: &Lab, name: &str) -> anyhow::Result<(Client, ContainerInfo)> {
    let mut unreachable = Vec::new();
    for host in &lab.hosts {
        let client = Client::new(&host.socket);
        match client.get(name).await {
            Ok(info) => return Ok((client, info)),
            Err(e) if e.kind() == Some("not_found") => {}
            Err(e) => unreachable.push(format!("{}: {e}", host.name)),
        }
    }
    if unreachable.is_empty() {
        bail!("no container named {name:?} in the lab (see `migrate ps`)")
    }
    bail!("no container named {name:?} on the hosts that answered; not answering: {}", unreachable.join("; "))
}

fn exit_text(c: &ContainerInfo) -> String {
    match &c.exit {
        Some(e) => match (e.code, e.signal) {
            (Some(code), _) => format!(" (exit code {code})"),
            (_, Some(sig)) => format!(" (killed by signal {sig})"),
            _ => String::new(),
        },
        None => String::new(),
    }
}

/// The most characters of a command line `ps` shows (`--json` has it all).
const COMMAND_WIDTH: usize = 60;

/// The table of `ps`; a RESTORED column (when and from which host) only when a
/// container was restored.
fn print_ps(all: &[ContainerInfo]) {
    let any_restored = all.iter().any(|c| c.restored.is_some());
    let mut header = vec!["NAME", "HOST", "STATE", "PID", "IP", "CREATED"];
    if any_restored {
        header.push("RESTORED");
    }
    header.push("COMMAND");
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for c in all {
        let mut row = vec![
            c.name.clone(),
            c.host.clone(),
            format!("{}{}", c.state, exit_text(c)),
            if c.state == State::Running { c.pid.to_string() } else { "-".into() },
            c.ip.clone(),
            ago(c.created_ms),
        ];
        if any_restored {
            row.push(c.restored.as_ref().map_or_else(|| "-".into(), restored_text));
        }
        row.push(output::command_cell(&c.cmd, COMMAND_WIDTH));
        rows.push(row);
    }
    table(&rows);
    // What an agent found at its start, e.g. an interrupted checkpoint it undid.
    for c in all {
        if let Some(note) = &c.note {
            println!("note: {}: {note}", c.name);
        }
    }
}

/// "5s ago from host-a".
pub(crate) fn restored_text(r: &migrate_agent::api::Restored) -> String {
    match r.from_host.as_str() {
        "" => ago(r.restored_ms),
        host => format!("{} from {host}", ago(r.restored_ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_are_read_from_the_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0A4D010A:1F90 0A4D0002:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1";
        assert_eq!(listening_ports(table).collect::<Vec<_>>(), [80]);
    }

    #[test]
    fn run_options_after_the_program_are_noticed() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(misplaced_option(&argv(&["sleep", "600", "--json"])), Some("--json"));
        assert_eq!(misplaced_option(&argv(&["x", "--name=web"])), Some("--name"));
        assert_eq!(misplaced_option(&argv(&["--json"])), None);
        assert_eq!(misplaced_option(&argv(&["python3", "-m", "http.server"])), None);
    }
}
