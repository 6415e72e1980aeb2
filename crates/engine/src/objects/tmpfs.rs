//! The contents of the tmpfs mounts the container's runtime gives it privately
//! (`/dev/shm`, `/run`): they exist nowhere but in the container's mount namespace, so
//! the image carries them, and a restore writes them into the new container's mounts
//! before any process is rebuilt (a process may map a file there).
//!
//! A FIFO there is recreated as a node; the bytes buffered in it, if it is open, travel
//! with its pipe record (see `fifo.rs`). A socket node is left out when a unix socket of
//! the container's network namespace is bound to it (`UNIX_DIAG_VFS` names its inode):
//! that socket's restore binds it again (`unix/`); a node no socket is bound to is
//! refused.
//!
//! Both sides go through `/proc/PID/root`, which resolves paths in the container's mount
//! namespace from the outside.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use migrate_proto::records::{TmpfsEntry, TmpfsKind};
use migrate_proto::validate::TMPFS_MOUNTS;
use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use crate::error::{EngineError, io_err};

/// Everything under the tmpfs mounts of `pid`'s mount namespace, parents first.
pub fn dump(pid: i32) -> Result<Vec<TmpfsEntry>, EngineError> {
    let root = format!("/proc/{pid}/root");
    let mut out = Vec::new();
    let mut bound = None;
    for mount in TMPFS_MOUNTS {
        walk(pid, Path::new(&root), Path::new(mount), &mut out, &mut bound)?;
    }
    Ok(out)
}

/// Whether a unix socket of `pid`'s network namespace is bound to the node `md`; the
/// table of bound nodes is read once, when the first socket node is met.
fn bound_socket(
    pid: i32,
    md: &std::fs::Metadata,
    bound: &mut Option<Vec<(u64, u64)>>,
) -> Result<bool, EngineError> {
    if bound.is_none() {
        let table = super::unix::diag::Table::of(pid)?;
        // The diag gives the kernel's dev_t: major above bit 20.
        *bound = Some(
            table
                .by_ino
                .values()
                .filter_map(|d| d.vfs)
                .map(|(ino, dev)| (u64::from(ino), libc::makedev(dev >> 20, dev & 0xfffff)))
                .collect(),
        );
    }
    Ok(bound.as_ref().is_some_and(|b| b.contains(&(md.ino(), md.dev()))))
}

fn walk(
    pid: i32,
    root: &Path,
    dir: &Path,
    out: &mut Vec<TmpfsEntry>,
    bound: &mut Option<Vec<(u64, u64)>>,
) -> Result<(), EngineError> {
    let here = root.join(dir.strip_prefix("/").unwrap_or(dir));
    let mut entries: Vec<_> = match std::fs::read_dir(&here) {
        Ok(d) => d.filter_map(|e| e.ok()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(EngineError::Io { op: "list", path: here, source: e }),
    };
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let inside = dir.join(e.file_name());
        let path = inside
            .to_str()
            .ok_or_else(|| EngineError::Unsupported(format!("{} is not UTF-8", inside.display())))?
            .to_string();
        let md = std::fs::symlink_metadata(e.path()).map_err(io_err("stat", e.path()))?;
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            TmpfsKind::Dir
        } else if ft.is_file() {
            TmpfsKind::File { data: std::fs::read(e.path()).map_err(io_err("read", e.path()))? }
        } else if ft.is_symlink() {
            let t = std::fs::read_link(e.path()).map_err(io_err("readlink", e.path()))?;
            TmpfsKind::Symlink { target: t.to_string_lossy().into_owned() }
        } else if ft.is_fifo() {
            TmpfsKind::Fifo
        } else if ft.is_socket() && bound_socket(pid, &md, bound)? {
            continue;
        } else if ft.is_socket() {
            return Err(EngineError::Unsupported(format!(
                "{path} in the container's tmpfs is a socket node no socket is bound to (its socket is closed): not supported yet"
            )));
        } else {
            return Err(EngineError::Unsupported(format!(
                "{path} in the container's tmpfs is a device: not supported yet"
            )));
        };
        let is_dir = matches!(kind, TmpfsKind::Dir);
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        out.push(TmpfsEntry {
            path,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            atime_ns: ns(md.atime(), md.atime_nsec()),
            kind,
        });
        if is_dir {
            walk(pid, root, &inside, out, bound)?;
        }
    }
    Ok(())
}

/// Writes `entries` into the (fresh, empty) tmpfs mounts of `pid`'s mount namespace.
pub fn restore(pid: i32, entries: &[TmpfsEntry]) -> Result<(), EngineError> {
    let root = format!("/proc/{pid}/root");
    for e in entries {
        let at = Path::new(&root).join(e.path.trim_start_matches('/'));
        match &e.kind {
            TmpfsKind::Dir => std::fs::create_dir(&at).map_err(io_err("create", &at))?,
            TmpfsKind::File { data } => std::fs::write(&at, data).map_err(io_err("write", &at))?,
            TmpfsKind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &at).map_err(io_err("symlink", &at))?
            }
            // Its mode is set below, past the umask.
            TmpfsKind::Fifo => nix::unistd::mkfifo(&at, nix::sys::stat::Mode::empty())
                .map_err(|e| EngineError::Io { op: "mkfifo", path: at.clone(), source: e.into() })?,
        }
        if !matches!(e.kind, TmpfsKind::Symlink { .. }) {
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(e.mode))
                .map_err(io_err("chmod", &at))?;
        }
        std::os::unix::fs::lchown(&at, Some(e.uid), Some(e.gid)).map_err(io_err("chown", &at))?;
    }
    // Times last, children before their directory: making an entry touches its parent's.
    for e in entries.iter().rev() {
        let at = Path::new(&root).join(e.path.trim_start_matches('/'));
        let ts = |ns: i64| TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000));
        utimensat(AT_FDCWD, &at, &ts(e.atime_ns), &ts(e.mtime_ns), UtimensatFlags::NoFollowSymlink).map_err(
            |err| EngineError::Io { op: "set the times of", path: at.clone(), source: err.into() },
        )?;
    }
    Ok(())
}
