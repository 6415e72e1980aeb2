//! `migrate-agent`: the daemon that owns one host's containers.
//!
//! - [`agent`]: the registry and its configuration; [`container`]: start, stop, remove;
//! - [`shim`]: the per-container supervisor process (parent of PID 1, holder of the log);
//! - [`server`] / [`client`]: the local HTTP + JSON API on a unix socket, [`api`] its types;
//! - [`exec`]: running a command inside a container;
//! - [`images`]: checkpoint and restore, run by the engine on threads of their own;
//! - [`doctor`]: what this host can and cannot do, probed.

pub mod agent;
pub mod api;
pub mod client;
pub mod container;
pub mod doctor;
pub mod error;
pub mod exec;
pub mod images;
pub mod leases;
pub mod record;
pub mod server;
pub mod shim;
pub mod spec;

pub use migrate_engine::host::now_ms;
