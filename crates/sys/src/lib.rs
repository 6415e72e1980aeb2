//! `migrate-sys`: every `unsafe` of the project lives here, in small wrappers that take
//! plain data and return `Result`s and owned file descriptors.
//!
//! Nothing in this crate holds policy: it does not know what a container, a lab or a
//! checkpoint is. Callers outside it are compiled with `unsafe_code = "forbid"`.

pub mod anon;
pub mod clone3;
pub mod files;
pub mod ipc;
pub mod mem;
pub mod pagemap;
pub mod pidfd;
pub mod process;
pub mod ptrace;
pub mod sched;
pub mod signal;
pub mod sockopt;
pub mod tcp;
pub mod uffd;
pub mod unix;

/// An error and its causes on one line, `a: b: c`, for the places that fold an error into
/// a message of their own (an API body, a report). It lives here because every crate of
/// the project depends on this one.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}
