//! `migrate-engine`: checkpoint and restore of a container's processes with our own
//! engine — freeze, seize, dump; rebuild by ptrace in a stub. No CRIU, no parasite code.
//!
//! Each kind of kernel object has one module that both dumps and restores it, as
//! Firecracker keeps `persist.rs` beside each device: [`thread`], [`mm`] (layout),
//! [`memory`] (contents), [`files`] (the fd table, regular files and pipes),
//! [`process`] (signals, itimers, credentials, limits), [`attrs`] (what `prctl` sets),
//! [`timers`] (POSIX timers, membarrier registrations), and one file per kind of kernel
//! object in [`objects`] (eventfd, FIFOs, shared memory, the private tmpfs mounts, …).
//! [`seize`] stops and releases tasks, [`inject`] runs syscalls inside them, [`image`]
//! reads and writes image directories through `migrate-proto`, [`session`] rebuilds
//! sessions and process groups whose leader has exited or moved, and orphans of a live
//! session leader; [`mounts`] refuses mounts the container made itself.
//!
//! All ptrace requests of one checkpoint or restore must come from one thread: call
//! [`checkpoint`] and [`restore`] from a dedicated thread, never from an async runtime's
//! workers.

mod attrs;
mod dump;
pub mod error;
pub mod failpoints;
pub mod files;
pub mod host;
mod hostfs;
pub mod image;
mod inject;
pub mod journal;
mod memory;
mod mm;
mod mounts;
mod objects;
mod pipeline;
mod process;
mod procfs;
mod restore;
mod sched;
mod seize;
mod session;
mod thread;
mod timers;

pub use dump::{CheckpointReport, CheckpointRequest, checkpoint, precheck};
pub use error::EngineError;
pub use files::ExternalPipe;
pub use image::{Image, open as open_image, open_for_restore};
pub use restore::{Made, RestoreReport, check_records, restore};

/// What a long operation is doing, for progress bars.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Progress {
    /// A phase started (`freeze`, `collect`, `memory`, …).
    Phase(&'static str),
    /// Memory bytes done of a total.
    Bytes { done: u64, total: u64 },
}

/// The restore stub's `main`: it waits, doing nothing, to be rebuilt from the outside.
pub fn stub_main() -> ! {
    loop {
        nix::unistd::pause();
    }
}
