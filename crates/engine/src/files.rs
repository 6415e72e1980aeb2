//! File descriptors: regular files (position, flags), directories, harmless character
//! devices, and the container's stdio pipes to its shim, which are *external*: on
//! restore they are reconnected to the new shim's pipes, never compared.
//!
//! Restore opens each file in the stub itself (so paths resolve in the container's mount
//! namespace), moves it to its number with `dup3` and seeks it to its position.

use std::fs::File;
use std::os::unix::fs::FileTypeExt;

use migrate_proto::records::{FdKind, FdRecord};

use crate::error::{EngineError, io_err};
use crate::inject::{Scratch, Task};
use crate::mm::{check_file, file_id};
use crate::procfs;

/// Devices a container may simply open again.
const DEVICES: [&str; 5] = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

/// A pipe owned by the container's runtime: its inode and role (`stdout`, `stderr`).
#[derive(Debug, Clone)]
pub struct ExternalPipe {
    pub inode: u64,
    pub name: String,
}

/// The fds of `pid`; refuses kinds this version cannot restore, naming pid, fd and kind.
pub fn dump(pid: i32, external: &[ExternalPipe]) -> Result<Vec<FdRecord>, EngineError> {
    let dir = format!("/proc/{pid}/fd");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io_err("list", &dir))? {
        let entry = entry.map_err(io_err("list", &dir))?;
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let link = std::fs::read_link(entry.path()).map_err(io_err("readlink", entry.path()))?;
        let link = link.to_string_lossy().into_owned();
        let info = crate::error::read_proc(pid, &format!("fdinfo/{fd}"))?;
        let (pos, flags) =
            procfs::parse_fdinfo(&info).map_err(EngineError::proc(pid, format!("fdinfo of fd {fd}")))?;
        let refuse = |what: String| Err(EngineError::Unsupported(format!("pid {pid} fd {fd} is {what}")));
        let kind = if let Some(ino) = link.strip_prefix("pipe:[").and_then(|s| s.strip_suffix(']')) {
            match external.iter().find(|e| Some(e.inode) == ino.parse().ok()) {
                Some(e) => FdKind::External { name: e.name.clone() },
                None => {
                    return refuse(format!(
                        "a pipe ({link}) that does not lead to the container's log: pipes are not supported yet"
                    ));
                }
            }
        } else if link.starts_with("socket:") {
            return refuse(format!("a socket ({link}): sockets are not supported yet"));
        } else if let Some(kind) = link.strip_prefix("anon_inode:") {
            return refuse(format!("an {kind} ({link}): not supported yet"));
        } else if link.starts_with("/memfd:") {
            return refuse(format!("a memfd ({link}): not supported yet"));
        } else if link.ends_with(" (deleted)") {
            return refuse(format!("a deleted file ({link}): not supported yet"));
        } else if link.starts_with('/') {
            let md = std::fs::metadata(entry.path()).map_err(io_err("stat", entry.path()))?;
            if md.is_file() {
                FdKind::File { file: file_id(&link, &entry.path().to_string_lossy())?, pos }
            } else if md.is_dir() {
                FdKind::Dir { path: link, pos }
            } else if md.file_type().is_char_device() && DEVICES.contains(&link.as_str()) {
                FdKind::Device { path: link }
            } else {
                return refuse(format!("{link}, a kind of file not supported yet"));
            }
        } else {
            return refuse(format!("{link}, a kind of file not supported yet"));
        };
        out.push(FdRecord { fd, flags, kind });
    }
    out.sort_by_key(|f| f.fd);
    Ok(out)
}

/// Installs every fd of the image in the stub, closing the stub's own.
pub fn restore(
    task: &mut Task,
    gadget: u64,
    mem: &File,
    stub: i32,
    scratch: Scratch,
    fds: &[FdRecord],
) -> Result<(), EngineError> {
    // Keep the new shim's pipes (the stub's stdout and stderr) above every image fd.
    let base = fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) as u64 + 1;
    let mut ext = Vec::new();
    for (fd, name) in [(1u64, "stdout"), (2, "stderr")] {
        let copy = task.call(gadget, libc::SYS_fcntl, &[fd, libc::F_DUPFD_CLOEXEC as u64, base], || {
            format!("fcntl(F_DUPFD, {name})")
        })?;
        ext.push((name, copy));
    }
    let stub_fds: Vec<u64> = std::fs::read_dir(format!("/proc/{stub}/fd"))
        .map_err(io_err("list", format!("/proc/{stub}/fd")))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| !ext.iter().any(|(_, e)| e == fd))
        .collect();
    for fd in stub_fds {
        // EBADF: the fd listing itself (opened by us, not the stub) may appear.
        let _ = task.syscall(gadget, libc::SYS_close, &[fd])?;
    }
    for rec in fds {
        let cloexec = if rec.flags & libc::O_CLOEXEC as u32 != 0 { libc::O_CLOEXEC as u64 } else { 0 };
        let target = rec.fd as u64;
        let (path, pos) = match &rec.kind {
            FdKind::External { name } => {
                let (_, src) = ext.iter().find(|(n, _)| n == name).ok_or_else(|| {
                    EngineError::Incompatible(format!("fd {}: unknown external object {name:?}", rec.fd))
                })?;
                task.call(gadget, libc::SYS_dup3, &[*src, target, cloexec], || {
                    format!("dup3 of {name} to fd {target}")
                })?;
                continue;
            }
            FdKind::File { file, pos } => {
                check_file(stub, file, false)?;
                (&file.path, *pos)
            }
            FdKind::Dir { path, pos } => (path, *pos),
            FdKind::Device { path } => (path, 0),
        };
        let keep = !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC) as u32;
        let at = scratch.path(mem, stub, 0, path)?;
        let tmp = task.call(
            gadget,
            libc::SYS_openat,
            &[libc::AT_FDCWD as u64, at, u64::from(rec.flags & keep) | cloexec, 0],
            || format!("open {path} for fd {}", rec.fd),
        )?;
        if tmp != target {
            task.call(gadget, libc::SYS_dup3, &[tmp, target, cloexec], || format!("dup3 to fd {target}"))?;
            task.call(gadget, libc::SYS_close, &[tmp], || "close".into())?;
        }
        if pos != 0 {
            task.call(gadget, libc::SYS_lseek, &[target, pos, libc::SEEK_SET as u64], || {
                format!("lseek fd {target} to {pos}")
            })?;
        }
    }
    for (_, fd) in ext {
        task.call(gadget, libc::SYS_close, &[fd], || "close".into())?;
    }
    Ok(())
}
