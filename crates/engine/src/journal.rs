//! What a checkpoint has changed in a running container, written down before it changes
//! it, so that an agent killed in the middle (SIGKILL, OOM, power cut: no destructor
//! runs) can put the container back at its next start ([`recover`]).
//!
//! A tracer that dies detaches its tracees and the kernel wakes them (`exit_ptrace`): left
//! alone they would run on with every signal blocked (the seize blocks them, see
//! [`crate::seize`]). So the checkpoint keeps the container's cgroup frozen whenever it is
//! not running injected calls: a woken tracee of a freezing cgroup traps into the freezer
//! before it reaches user space, and stays there until [`recover`] has put each thread's
//! signal mask back from this journal and thawed it. Registers and the scratch page are
//! changed only inside one process's injected calls (thawed: an injected call does not
//! run in a frozen cgroup), a window of a few milliseconds that the journal cannot cover;
//! every failpoint lies outside it.
//!
//! The journal is a JSON file in the container's state directory, replaced atomically at
//! each stage and removed when the checkpoint returns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use migrate_cgroup::Cgroup;
use migrate_sys::ptrace::Tracee;
use nix::sys::ptrace::Options;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, io_err};

/// How far a checkpoint got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The cgroup is (being) frozen; nothing is traced.
    Frozen,
    /// Threads are seized, their signals blocked or about to be: the original masks are
    /// in `masks`, written before the seize blocks any signal.
    Seized,
    /// The image is complete; the processes are being released or killed.
    Written,
}

/// The journal of one checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub stage: Stage,
    /// The image directory: removed by [`recover`] unless the image was complete.
    pub dir: PathBuf,
    pub leave_running: bool,
    /// Every seized thread and the signal mask it had: `(tid, mask)`, host tids.
    pub masks: Vec<(i32, u64)>,
    /// The process (host pid) running injected calls in a thawed cgroup, if one is: an
    /// agent that died then may have left it with changed registers or a scratch page,
    /// which no journal can undo (see the module doc); [`recover`] names it.
    #[serde(default)]
    pub injecting: Option<i32>,
}

impl Journal {
    /// Replaces the journal at `path` (atomically: a reader sees the old or the new).
    pub fn save(&self, path: &Path) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec(self).map_err(|e| EngineError::Io {
            op: "encode",
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(io_err("write", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err("rename", path))
    }

    fn load(path: &Path) -> Result<Journal, EngineError> {
        let bytes = std::fs::read(path).map_err(io_err("read", path))?;
        serde_json::from_slice(&bytes).map_err(|e| EngineError::Io {
            op: "parse",
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })
    }
}

/// What [`recover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// The checkpoint was undone: the partial image removed, every thread's signal mask
    /// put back, the container thawed. It runs on as before.
    PutBack { stage: Stage, threads: usize, injecting: Option<i32> },
    /// The image was complete and the container was to stop (no `--leave-running`): the
    /// checkpoint is done; the caller kills what is left of the container.
    Completed { dir: PathBuf },
}

/// Finishes a checkpoint whose agent died, from the journal at `path` (removed after).
pub fn recover(path: &Path, cgroup: &Cgroup) -> Result<Recovered, EngineError> {
    let journal = Journal::load(path)?;
    if journal.stage == Stage::Written && !journal.leave_running {
        remove(path)?;
        return Ok(Recovered::Completed { dir: journal.dir });
    }
    if journal.stage != Stage::Written {
        match std::fs::remove_dir_all(&journal.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("remove", &journal.dir)(e));
            }
            _ => {}
        }
    }
    // Frozen already, unless the agent died inside injected calls.
    cgroup.freeze(Duration::from_secs(10))?;
    let mut threads = 0;
    // Only threads of the container's processes: a tid may have been reused elsewhere.
    let members = cgroup.pids()?;
    let in_container = |tid: i32| crate::procfs::read_status(tid).is_ok_and(|s| members.contains(&s.tgid));
    for &(tid, mask) in journal.masks.iter().filter(|(tid, _)| in_container(*tid)) {
        // A frozen task stops at once on PTRACE_INTERRUPT; a thread that ended is skipped.
        let put_back = Tracee::seize(tid, Options::empty())
            .and_then(Tracee::interrupt)
            .and_then(|t| t.set_sigmask(mask).and_then(|()| t.detach()));
        match put_back.map_err(EngineError::ptrace(tid, "put its signal mask back")) {
            Ok(()) => threads += 1,
            Err(EngineError::TargetDied { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    cgroup.thaw(Duration::from_secs(10))?;
    remove(path)?;
    Ok(Recovered::PutBack { stage: journal.stage, threads, injecting: journal.injecting })
}

/// Removes the journal at `path` (the checkpoint is over, one way or the other).
pub fn remove(path: &Path) -> Result<(), EngineError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_image_of_a_stopping_container_is_finished_not_undone() -> Result<(), EngineError> {
        let dir = std::env::temp_dir().join(format!("migrate-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let path = dir.join("checkpoint.json");
        let image = dir.join("image");
        let journal = Journal {
            stage: Stage::Written,
            dir: image.clone(),
            leave_running: false,
            masks: vec![(1, 0)],
            injecting: None,
        };
        journal.save(&path)?;
        // Never touched on this path: the caller kills what is left of the container.
        let cgroup = Cgroup { rel: "none".into(), v2: dir.join("no-such-cgroup"), v1: Vec::new() };
        let got = recover(&path, &cgroup);
        let journal_left = path.exists();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got?, Recovered::Completed { dir: image });
        assert!(!journal_left, "the journal is removed once acted on");
        Ok(())
    }
}
