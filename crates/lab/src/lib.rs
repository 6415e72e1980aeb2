//! `migrate-lab`: several simulated hosts on one machine (design §9), so that the whole
//! tool can be tried and tested without a cluster.
//!
//! A lab is network namespaces — one per host, a client, and a LAN namespace whose bridge
//! joins them — plus one `migrate agent` per host running inside its host's namespace
//! with its own state directory. The machine's own network namespace is never changed:
//! every link is created inside a lab namespace (see [`migrate_net`]). Addresses come
//! from 10.77.0.0/16; 10.77.0.0/24 is the lab's own (client .2, hosts .11…), the rest is
//! for containers.
//!
//! The CLI calls [`up`], [`down`], [`status`] and [`exec`]. Everything a lab creates is
//! named from its [`LabName`], so `down` (and `up` after a crash) can find and remove it
//! even without `lab.json`.

mod agents;
mod error;
mod exec;
mod lifecycle;
pub mod model;
pub mod name;
mod procs;
mod teardown;
mod topology;

pub use error::LabError;
pub use exec::exec;
pub use lifecycle::{
    ClientStatus, DEFAULT_HOSTS, HostStatus, LabStatus, NetnsStatus, UpReport, down, status, up,
};
pub use model::{ClientInfo, HostInfo, Lab};
pub use name::LabName;
pub use procs::{KilledProcess, ProcessKind};
pub use teardown::DownReport;
