//! inotify: every watch of an instance, with the path it watches, its mask and its
//! watch descriptor (wd) number, which the program holds.
//!
//! Dump: each watch is a line of the fdinfo,
//! `inotify wd:2 ino:12402b sdev:fe00000 mask:4000002 ignored_mask:0 fhandle-bytes:8
//! fhandle-type:1 f_handle:2b40…` (hex; `sdev` in the kernel's encoding, major << 20 |
//! minor; `mask` the events with `IN_ONESHOT` and `IN_EXCL_UNLINK`, the flags the kernel
//! keeps — `IN_MASK_ADD` has already been merged into it). The watched inode holds no
//! path: a mount of the container on its device (`/proc/PID/mountinfo`) is opened
//! through `/proc/PID/root`, the handle opened on it with `open_by_handle_at`, and the
//! link of that fd is the path inside the container's mounts. It is checked by
//! `stat`ing it through `/proc/PID/root` (same inode, same device). A watch on a file or
//! directory that was deleted, or that no mount reaches, is refused. Events queued and
//! not yet read (`FIONREAD` on a copy of the fd) are refused too: userspace cannot put
//! them back; once the program has read them the checkpoint can be tried again.
//!
//! Restore, inside the task: `inotify_init1(IN_NONBLOCK)`, then each watch with
//! `inotify_add_watch(path, mask | IN_DONT_FOLLOW)` (the path names the watched inode
//! itself, a symlink if it was watched as one). The kernel hands wds out in increasing
//! order (`idr_alloc_cyclic` from the last one given), so a watch whose wd is higher
//! than the next one is preceded by throwaway watches on its own path
//! (`IN_DELETE_SELF`, which practically never fires), each removed at once, until the
//! next wd is the recorded one; their `IN_IGNORED` events are read away before the
//! real watch is added. Last, the fd gets its own `O_NONBLOCK` back. The next wd a new
//! watch gets is one above the highest restored, where the source may have counted
//! further (a watch removed above it): new watches get other numbers than they would
//! have, none that is in use.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use migrate_proto::records::{FdKind, FdRecord, Inotify, InotifyWatch, MAX_WATCHES, MAX_WD};
use procfs_core::FromRead;
use procfs_core::process::MountInfos;

use super::{Classified, FdSeen, install};
use crate::error::EngineError;
use crate::inject::Remote;

/// One `inotify wd:…` line of an fdinfo.
#[derive(Debug, PartialEq, Eq)]
struct Line {
    wd: i32,
    ino: u64,
    /// Kernel encoding: major << 20 | minor.
    sdev: u64,
    mask: u32,
    handle_type: i32,
    handle: Vec<u8>,
}

fn parse_line(line: &str) -> Option<Line> {
    let rest = line.strip_prefix("inotify ")?;
    let field = |key: &str| rest.split_whitespace().find_map(|f| f.strip_prefix(key)?.strip_prefix(':'));
    let hex = |key: &str| field(key).and_then(|v| u64::from_str_radix(v, 16).ok());
    let bytes = field("f_handle")?;
    let handle = (0..bytes.len())
        .step_by(2)
        .map(|i| bytes.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect::<Option<Vec<u8>>>()?;
    let len = hex("fhandle-bytes")? as usize;
    (handle.len() == len).then_some(())?;
    Some(Line {
        wd: field("wd")?.parse().ok()?,
        ino: hex("ino")?,
        sdev: hex("sdev")?,
        mask: u32::try_from(hex("mask")?).ok()?,
        handle_type: i32::try_from(hex("fhandle-type")?).ok()?,
        handle,
    })
}

/// The path, inside the container, of the inode a watch names; `Err` says why there is
/// none.
fn resolve(pid: i32, w: &Line) -> Result<String, String> {
    let (major, minor) = (w.sdev >> 20, w.sdev & 0xf_ffff);
    let mountinfo = crate::error::read_proc(pid, "mountinfo").map_err(|e| e.to_string())?;
    let mounts = MountInfos::from_read(mountinfo.as_bytes())
        .map_err(|e| format!("unexpected mountinfo: {}", crate::procfs::reason(e)))?;
    let root = format!("/proc/{pid}/root");
    let dev = format!("{major}:{minor}");
    let mut deleted = false;
    for m in mounts.iter().filter(|m| m.majmin == dev) {
        // Mount points with mountinfo's escapes (\040 for a space; procfs-core keeps
        // them) do not open: another mount of the device may serve. Directories only:
        // opening anything else bind-mounted (a device, a FIFO) could block or act;
        // open_by_handle_at needs an fd opened for real, not O_PATH.
        let Ok(mount) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(format!("{root}{}", m.mount_point.display()))
        else {
            continue;
        };
        let Ok(file) = migrate_sys::anon::open_by_handle(mount.as_fd(), w.handle_type, &w.handle) else {
            continue;
        };
        let link = format!("/proc/self/fd/{}", file.as_raw_fd());
        let Ok(path) = std::fs::read_link(&link) else { continue };
        let path = path.to_string_lossy().into_owned();
        if path.ends_with(" (deleted)") || std::fs::metadata(&link).is_ok_and(|m| m.nlink() == 0) {
            deleted = true;
            continue;
        }
        // The link must name that very inode in the container.
        let here = std::fs::symlink_metadata(format!("{root}{path}"));
        if here.is_ok_and(|m| {
            m.ino() == w.ino && libc::major(m.dev()) as u64 == major && libc::minor(m.dev()) as u64 == minor
        }) {
            return Ok(path);
        }
    }
    Err(if deleted {
        format!("wd {}: its file or directory (inode {}) was deleted", w.wd, w.ino)
    } else {
        format!(
            "wd {}: inode {} of device {major}:{minor} is not reached by any path of the container",
            w.wd, w.ino
        )
    })
}

pub fn dump(seen: &FdSeen<'_>) -> Result<Classified, EngineError> {
    let copy = crate::files::take(seen.pid, seen.fd)?;
    let queued = migrate_sys::anon::queued_bytes(copy.as_fd()).map_err(|e| EngineError::Proc {
        pid: seen.pid,
        what: format!("inotify at fd {}", seen.fd),
        reason: format!("FIONREAD: {e}"),
    })?;
    if queued > 0 {
        return Ok(Err(format!(
            "an inotify instance with events queued, not yet read ({queued} bytes): they cannot be put back; retry the checkpoint once the program has read them"
        )));
    }
    let mut watches = Vec::new();
    for line in seen.info.lines().filter(|l| l.starts_with("inotify ")) {
        let Some(w) = parse_line(line) else {
            return Err(EngineError::Proc {
                pid: seen.pid,
                what: format!("fdinfo of fd {}", seen.fd),
                reason: format!("inotify line {line:?}"),
            });
        };
        if w.wd > MAX_WD {
            return Ok(Err(format!(
                "an inotify instance with watch descriptor {}, beyond {MAX_WD}: reaching it again would take as many throwaway watches",
                w.wd
            )));
        }
        match resolve(seen.pid, &w) {
            Ok(path) => watches.push(InotifyWatch { wd: w.wd, path, mask: w.mask }),
            Err(why) => {
                return Ok(Err(format!("an inotify instance watching what cannot be found again: {why}")));
            }
        }
    }
    if watches.len() > MAX_WATCHES {
        return Ok(Err(format!(
            "an inotify instance with {} watches, more than {MAX_WATCHES}",
            watches.len()
        )));
    }
    watches.sort_by_key(|w| w.wd);
    Ok(Ok(FdKind::Inotify(Inotify { watches })))
}

pub fn restore(
    remote: &mut Remote<'_>,
    rec: &FdRecord,
    i: &Inotify,
    cloexec: u64,
) -> Result<(), EngineError> {
    let fd = remote.call(libc::SYS_inotify_init1, &[libc::IN_NONBLOCK as u64 | cloexec], || {
        format!("inotify_init1 for fd {}", rec.fd)
    })?;
    let target = rec.fd as u64;
    install(remote, fd, target, cloexec)?;
    // A new instance gives wd 1 first, then one more each time.
    let mut next = 1;
    for w in &i.watches {
        let at = remote.path(0, &w.path)?;
        if next < w.wd {
            for wd in next..w.wd {
                add_watch(remote, target, at, &w.path, libc::IN_DELETE_SELF, wd)?;
                remote.call(libc::SYS_inotify_rm_watch, &[target, wd as u64], || {
                    format!("inotify_rm_watch({wd}) of fd {target}")
                })?;
            }
            drain(remote, target)?;
        }
        add_watch(remote, target, at, &w.path, w.mask, w.wd)?;
        next = w.wd + 1;
    }
    let status = u64::from(rec.flags & libc::O_NONBLOCK as u32);
    remote.call(libc::SYS_fcntl, &[target, libc::F_SETFL as u64, status], || {
        format!("fcntl(F_SETFL) of fd {target}")
    })?;
    Ok(())
}

/// Adds a watch on `path` (at `at` in the scratch page) to inotify fd `fd`, which must
/// be given wd `want`.
fn add_watch(
    remote: &mut Remote<'_>,
    fd: u64,
    at: u64,
    path: &str,
    mask: u32,
    want: i32,
) -> Result<(), EngineError> {
    let wd = remote.call(
        libc::SYS_inotify_add_watch,
        &[fd, at, u64::from(mask | libc::IN_DONT_FOLLOW)],
        || format!("inotify_add_watch({path}) for wd {want} of fd {fd}"),
    )?;
    if wd != want as u64 {
        return Err(EngineError::Incompatible(format!(
            "inotify fd {fd}: a watch on {path} was given wd {wd}, not {want}"
        )));
    }
    Ok(())
}

/// Reads away the `IN_IGNORED` events of the throwaway watches (the fd is non-blocking).
fn drain(remote: &mut Remote<'_>, fd: u64) -> Result<(), EngineError> {
    // Past the watch's path at offset 0 (up to PATH_MAX and its NUL), which the real
    // watch is added with next.
    let buf = remote.scratch.addr + 8192;
    loop {
        match remote.syscall(libc::SYS_read, &[fd, buf, 16 << 10])? {
            Ok(n) if n > 0 => {}
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => return Ok(()),
            Err(errno) => {
                return Err(EngineError::Injected {
                    pid: remote.pid,
                    call: format!("read of inotify fd {fd}"),
                    errno,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_fdinfo_watch_line_parses() {
        let l = "inotify wd:2 ino:12402b sdev:fe00000 mask:4000002 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:2b401200a837b705";
        let w = parse_line(l);
        assert_eq!(
            w,
            Some(Line {
                wd: 2,
                ino: 0x12402b,
                sdev: 0xfe00000,
                mask: 0x400_0002,
                handle_type: 1,
                handle: vec![0x2b, 0x40, 0x12, 0x00, 0xa8, 0x37, 0xb7, 0x05],
            })
        );
        assert_eq!(parse_line(&l.replace("fhandle-bytes:8", "fhandle-bytes:9")), None);
    }
}
