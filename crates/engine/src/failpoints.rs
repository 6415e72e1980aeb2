//! Failpoints: named places in a checkpoint and a restore where a test makes the agent
//! fail or die, to check that an interruption at that moment leaves nothing half-done
//! (`tests/failpoints.rs` walks every one of them).
//!
//! They exist only in a build with the `failpoints` feature (the tests'; `scripts/test`
//! turns it on): without it [`hit`] does nothing and [`configure`] refuses. The agent
//! reads its scenario at start from the `FAILPOINTS` environment variable, in the `fail`
//! crate's syntax: `checkpoint/after-seize=return(kill)`. Two actions mean something
//! here: `return(kill)` SIGKILLs the whole agent on the spot (no destructor, no unwinding
//! runs: what an OOM kill or a power cut does), any other `return` fails the operation
//! with [`crate::EngineError::Failpoint`] (the ordinary error path and its guards).
//!
//! The list below is the one table of failpoints: a new one is added there, and the
//! tests walk it from [`Failpoint::ALL`].

use crate::error::EngineError;

macro_rules! failpoints {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// A place where a checkpoint or a restore can be made to fail.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Failpoint {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Failpoint {
            /// Every failpoint, checkpoint ones first, each in the order it is reached.
            pub const ALL: &[Failpoint] = &[$(Failpoint::$variant,)*];

            /// Its name in `FAILPOINTS`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Failpoint::$variant => $name,)*
                }
            }
        }
    };
}

failpoints! {
    /// The cgroup is frozen; nothing is traced yet.
    CheckpointFrozen = "checkpoint/after-freeze",
    /// Every thread is seized and its signal mask journaled, none blocked yet; the cgroup
    /// is thawed (the threads sit in their ptrace stops).
    CheckpointMasksJournaled = "checkpoint/before-block",
    /// Every thread is seized and its signals blocked; the cgroup frozen again.
    CheckpointSeized = "checkpoint/after-seize",
    /// PID 1's registers, signals and timers are read by injected calls; the others not.
    CheckpointMidCollect = "checkpoint/mid-collect",
    /// Every process is collected, its fds copied into the agent.
    CheckpointCollected = "checkpoint/after-collect",
    /// PID 1's memory is written, the other processes' not.
    CheckpointMidMemory = "checkpoint/mid-memory",
    /// All memory is written; the process records and the manifest are not.
    CheckpointMemory = "checkpoint/after-memory",
    /// The image is complete on disk but not yet journaled as such: an interruption
    /// still removes it and puts the container back.
    CheckpointWritten = "checkpoint/before-release",
    /// The first process is released (or killed), the others not.
    CheckpointMidRelease = "checkpoint/mid-release",
    /// The stub is seized; nothing is built.
    RestoreStubSeized = "restore/after-stub-seize",
    /// PID 1's address space is laid out, its memory not written.
    RestoreAddressSpace = "restore/after-address-space",
    /// PID 1's memory is written, its children's not.
    RestoreMidMemory = "restore/mid-memory",
    /// PID 1's fds are installed.
    RestoreFds = "restore/after-fds",
    /// A process's other threads are made, its registers not yet set (the first process
    /// to get there is a leaf of the tree: children are built before their parent ends).
    RestoreThreads = "restore/after-threads",
    /// PID 1's first child is built, its other children not.
    RestoreFirstChild = "restore/after-first-child",
    /// Every process and thread is built; nothing is resumed.
    RestoreBeforeResume = "restore/before-resume",
    /// The first process is let go (still frozen), the others are still traced.
    RestoreMidResume = "restore/mid-resume",
}

/// Fails here if the scenario says so: `Err` for `return`, a SIGKILL of the whole agent
/// for `return(kill)`.
#[cfg(feature = "failpoints")]
pub fn hit(point: Failpoint) -> Result<(), EngineError> {
    let name = point.name();
    match fail::eval(name, |arg| arg) {
        None => Ok(()),
        Some(Some(arg)) if arg == "kill" => {
            tracing::warn!(failpoint = name, "failpoint: the agent kills itself");
            // SIGKILL cannot be caught or blocked: raise returns only if it failed.
            let raised = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            Err(EngineError::Failpoint { name, action: format!("kill failed: {raised:?}") })
        }
        Some(arg) => Err(EngineError::Failpoint { name, action: arg.unwrap_or_else(|| "return".into()) }),
    }
}

/// Without the `failpoints` feature: nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_point: Failpoint) -> Result<(), EngineError> {
    Ok(())
}

/// Sets the scenario from `spec` (`name=action;name=action`, the `FAILPOINTS` syntax);
/// every name must be one of [`Failpoint::ALL`], so a misspelt scenario is an error, not
/// a test that silently passes.
pub fn configure(spec: &str) -> Result<(), String> {
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, action) = part.split_once('=').ok_or_else(|| format!("{part:?}: expected NAME=ACTION"))?;
        if !Failpoint::ALL.iter().any(|f| f.name() == name) {
            return Err(format!("{name:?} is not a failpoint"));
        }
        set(name, action)?;
    }
    Ok(())
}

#[cfg(feature = "failpoints")]
fn set(name: &str, action: &str) -> Result<(), String> {
    fail::cfg(name, action).map_err(|e| format!("{name}: {e}"))
}

#[cfg(not(feature = "failpoints"))]
fn set(name: &str, _action: &str) -> Result<(), String> {
    Err(format!("{name}: this build has no failpoints (build with the `failpoints` feature)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_namespaced() {
        let names: std::collections::BTreeSet<&str> = Failpoint::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), Failpoint::ALL.len());
        assert!(names.iter().all(|n| n.starts_with("checkpoint/") || n.starts_with("restore/")));
    }

    #[test]
    fn unknown_names_are_refused() {
        assert!(configure("checkpoint/after-lunch=return").is_err());
        assert!(configure("no-equals-sign").is_err());
        assert!(configure("").is_ok());
    }
}
