//! `migrate-sys`: every `unsafe` of the project lives here, in small wrappers that take
//! plain data and return `Result`s and owned file descriptors.
//!
//! Nothing in this crate holds policy: it does not know what a container, a lab or a
//! checkpoint is. Callers outside it are compiled with `unsafe_code = "forbid"`.

pub mod clone3;
pub mod mem;
pub mod pagemap;
pub mod pidfd;
pub mod process;
pub mod ptrace;
pub mod signal;
pub mod tcp;
pub mod uffd;
