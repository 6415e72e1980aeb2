//! `migrate`: the one binary that plays every role — operator CLI, per-host agent,
//! per-container shim, and the lab that simulates hosts on one machine.

mod containers;
mod doctor_cmd;
mod image_cmd;
mod lab_cmd;
mod output;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "migrate",
    version,
    about = "Checkpoint Linux containers to disk and restore them, on the same or another host",
    long_about = "migrate checkpoints Linux containers to an image directory and restores them, on the \
same host or another one, with its own engine (no CRIU). Live migration over the network is not \
there yet: move a container with `checkpoint` on one host and `restore --host` on another. It ships \
with a lab: simulated hosts on this machine, each with its own agent, so that everything can be \
tried without a cluster.",
    after_help = "Examples:\n  migrate lab up\n  \
migrate run --host host-a --name web --wait-port 80 -- python3 -m http.server 80\n  \
migrate ps\n  migrate exec web -- ps ax\n  \
migrate checkpoint web --dir /var/tmp/web.img && migrate restore --dir /var/tmp/web.img --host host-b\n  \
migrate doctor",
    propagate_version = true
)]
struct Cli {
    /// More log output (-v: info, -vv: debug, -vvv: trace); logs go to stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// The lab to act on; labs let tests run side by side [env: MIGRATE_LAB; default: default].
    // Read from the environment by hand, not with clap's `env`: clap would then show
    // `--lab <LAB>` in every usage line whenever MIGRATE_LAB is set.
    #[arg(long, global = true)]
    lab: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Manage the lab: simulated hosts on this machine.
    #[command(
        subcommand,
        after_help = "Examples:\n  migrate lab up\n  migrate lab status\n  \
migrate lab exec host-a -- cat /proc/net/dev\n  migrate lab down"
    )]
    Lab(lab_cmd::LabCmd),
    #[command(flatten)]
    Containers(containers::ContainerCmd),
    #[command(flatten)]
    Images(image_cmd::ImageCmd),
    /// Check what this host can do, and what stands in the way of migration.
    #[command(
        after_help = "Examples:\n  migrate doctor\n  migrate doctor --json | jq '.findings[] | select(.status != \"ok\")'"
    )]
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run the agent of one host (the lab starts these for you).
    #[command(after_help = "Example:\n  migrate agent --host host-a --state-dir /var/lib/migrate/host-a")]
    Agent(AgentArgs),
    /// The per-container supervisor (started by the agent).
    #[command(hide = true)]
    Shim {
        #[arg(long)]
        dir: PathBuf,
    },
    /// The process a restore rebuilds: it waits to be rebuilt from the outside.
    #[command(name = "__restore-stub", hide = true)]
    RestoreStub,
    /// A doctor probe that must run in a process of its own.
    #[command(name = "__probe", hide = true)]
    Probe { name: String },
}

#[derive(clap::Args, Debug)]
struct AgentArgs {
    /// This host's name.
    #[arg(long)]
    host: String,
    /// Where the agent keeps its registry, containers' logs and its socket.
    #[arg(long)]
    state_dir: PathBuf,
    /// The API socket [default: STATE_DIR/agent.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The bridge containers are attached to.
    #[arg(long, default_value = "br0")]
    bridge: String,
    /// The network containers take addresses from; its first /24 belongs to the hosts.
    #[arg(long, default_value = "10.77.0.0/16")]
    subnet: String,
    /// Where names, IPs and MACs are leased; share it between agents that must not
    /// collide [default: STATE_DIR/leases].
    #[arg(long)]
    lease_dir: Option<PathBuf>,
    /// The containers' cgroups go under this path of each hierarchy [default: migrate/HOST].
    #[arg(long)]
    cgroup_parent: Option<PathBuf>,
}

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|err| {
        // Usage errors keep clap's text and exit status; a command that a user may
        // plausibly try gets a tip below the first line, as clap places its own.
        // clap may suggest a hidden internal command (`__probe` for `frob`): never that.
        let text = err.render().to_string();
        let internal = |l: &&str| l.contains("subcommand exists: '__");
        let hint = unknown_command_hint(&err);
        if hint.is_none() && !text.lines().any(|l| internal(&l)) {
            err.exit()
        }
        let text =
            text.lines().filter(|l| !internal(l)).collect::<Vec<_>>().join("\n").replace("\n\n\n", "\n\n");
        let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
        match hint {
            Some(hint) => eprintln!("{first}\n\n  tip: {hint}\n{rest}"),
            None => eprintln!("{first}\n{rest}"),
        }
        std::process::exit(err.exit_code());
    });
    if matches!(cli.cmd, Cmd::Lab(_) | Cmd::Containers(_) | Cmd::Images(_) | Cmd::Doctor { .. }) {
        // Die quietly of SIGPIPE when stdout is a closed pipe (`migrate ps | head -1`),
        // like Unix tools, instead of panicking in `println!`. The agent, the shim and the
        // other internal roles keep it ignored: they write to sockets and pipes whose
        // peers may vanish.
        if let Err(e) = migrate_sys::signal::default_sigpipe() {
            tracing::debug!("restoring SIGPIPE: {e}");
        }
    }
    init_tracing(cli.verbose);
    let json = match &cli.cmd {
        Cmd::Lab(c) => c.json(),
        Cmd::Containers(c) => c.json(),
        Cmd::Images(c) => c.json(),
        Cmd::Doctor { json } => *json,
        _ => false,
    };
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            output::print_error(&err, json);
            output::exit_code(&err)
        }
    };
    std::process::exit(code);
}

/// What to use instead of a command that does not exist but that a user may well try.
fn unknown_command_hint(err: &clap::Error) -> Option<&'static str> {
    use clap::error::{ContextKind, ContextValue};
    if err.kind() != clap::error::ErrorKind::InvalidSubcommand {
        return None;
    }
    let Some(ContextValue::String(word)) = err.get(ContextKind::InvalidSubcommand) else { return None };
    Some(match word.as_str() {
        "send" | "migrate" | "move" | "live-migrate" | "migration" | "receive" => {
            "live migration is not there yet; move a container in two steps: \
`migrate checkpoint NAME --dir DIR`, then `migrate restore --dir DIR --host HOST`"
        }
        "dump" | "save" | "snapshot" => "a container is dumped with `migrate checkpoint NAME --dir DIR`",
        "load" | "resume" => "an image comes back with `migrate restore --dir DIR [--host HOST]`",
        "start" | "create" => "a container is started with `migrate run [--name NAME] -- CMD`",
        "list" | "ls" => "containers are listed with `migrate ps`",
        "kill" => "a container is stopped with `migrate stop NAME` (`--time 0`: SIGKILL at once)",
        "log" => "a container's output is shown with `migrate logs [-f] NAME`",
        _ => return None,
    })
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MIGRATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only for a person at a terminal, not in an agent's log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}

fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let lab_name = || match &cli.lab {
        Some(name) => migrate_lab::LabName::new(name),
        None => migrate_lab::LabName::from_env_or_default(),
    };
    match cli.cmd {
        // The shim must stay single-threaded: no runtime.
        Cmd::Shim { dir } => Ok(migrate_agent::shim::main(&dir)),
        Cmd::Probe { name } => Ok(migrate_agent::doctor::probe_child_main(&name)),
        Cmd::Doctor { json } => doctor_cmd::run(json),
        Cmd::Agent(args) => {
            require_root(
                "migrate agent",
                "it creates namespaces, cgroups and network links for its containers",
            )?;
            runtime()?.block_on(run_agent(args))?;
            Ok(0)
        }
        Cmd::Lab(cmd) => {
            require_root(&format!("migrate lab {}", cmd.verb()), cmd.why_root())?;
            let lab = lab_name()?;
            runtime()?.block_on(lab_cmd::run(cmd, &lab))
        }
        Cmd::Containers(cmd) => {
            require_root(&format!("migrate {}", cmd.verb()), cmd.why_root())?;
            let lab = lab_name()?;
            containers::run(cmd, &lab)
        }
        Cmd::RestoreStub => migrate_engine::stub_main(),
        Cmd::Images(image_cmd::ImageCmd::Inspect { dir, hexdump, pid, json }) => {
            image_cmd::inspect(&dir, hexdump.as_deref(), pid, json)
        }
        Cmd::Images(cmd) => {
            require_root(
                &format!("migrate {}", cmd.verb()),
                "it freezes and traces the container's processes, through the agents' root-only sockets",
            )?;
            let lab = migrate_lab::Lab::load(&lab_name()?)?;
            runtime()?.block_on(image_cmd::run(cmd, &lab))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Everything but `doctor` and `--help` needs root, each verb for its own reason
/// (`why`): say so up front rather than fail halfway with EPERM.
fn require_root(what: &str, why: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("{what} needs root ({why}): run it as root, e.g. with sudo");
    }
    Ok(())
}

async fn run_agent(a: AgentArgs) -> anyhow::Result<()> {
    use migrate_agent::agent::Config;
    let config = Config {
        socket: a.socket.unwrap_or_else(|| a.state_dir.join("agent.sock")),
        leases: migrate_agent::leases::Leases::new(a.lease_dir.unwrap_or_else(|| a.state_dir.join("leases"))),
        cgroup_parent: a.cgroup_parent.unwrap_or_else(|| PathBuf::from("migrate").join(&a.host)),
        subnet: migrate_agent::spec::Subnet::parse(&a.subnet)?,
        bridge: a.bridge,
        migrate_bin: std::env::current_exe()?,
        host: a.host,
        state_dir: a.state_dir,
    };
    migrate_agent::spec::check_name(&config.host)?;
    // The tests' scenario (see migrate_engine::failpoints); a build without failpoints
    // refuses one rather than run without it.
    if let Ok(spec) = std::env::var("FAILPOINTS") {
        migrate_engine::failpoints::configure(&spec).map_err(|e| anyhow::anyhow!("FAILPOINTS: {e}"))?;
        tracing::warn!(scenario = %spec, "failpoints set");
    }
    migrate_agent::server::serve(config).await?;
    Ok(())
}

/// Arguments after `--`, as the OS gave them.
pub(crate) fn utf8_args(args: &[OsString]) -> anyhow::Result<Vec<String>> {
    args.iter()
        .map(|a| {
            a.to_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("argument {a:?} is not valid UTF-8"))
        })
        .collect()
}
