//! FIFOs (named pipes), with the bytes buffered in them.
//!
//! To the kernel an open FIFO is a pipe: `F_GETPIPE_SZ`, `tee` and `pidfd_getfd` work on
//! its fds as on a pipe's ends, so [`crate::files`] dumps it as one (its bytes copied with
//! `tee` from a read end, consuming nothing). This module adds what the name changes.
//!
//! Dump:
//! - its key in the image ([`key`]): a pipe is named by its pipefs inode number, which is
//!   32-bit (`get_next_ino`); a FIFO by a key with bit 63 set, mixed from its device and
//!   inode number, since FIFOs on different filesystems may share an inode number (the
//!   container's `/run` and `/dev/shm` are two tmpfs mounts, each numbering from 1).
//!   [`check`] refuses two FIFOs with one key;
//! - a FIFO held open by a process outside the container is refused ([`check`]), as a pipe
//!   is: after a move one side would lose its peer. It has no `pipe:[N]` link, so holders
//!   are found by device and inode;
//! - its path and permission bits ([`record`]); when the container holds only write ends,
//!   its bytes are copied from a read end the dumper opens itself ([`reader`]): a process
//!   that opened the FIFO later would still read them.
//!
//! Restore: the first process that needs the FIFO makes sure it exists at its path in its
//! own view (a FIFO in `/run` or `/dev/shm` was already recreated from the image's tmpfs
//! entries; one on a host path may have gone: it is created with its mode and removed
//! again if the restore fails), then opens it `O_RDWR` at a spare fd ([`make`]), checking
//! that what it opened is the node it found or made. Found or made, it must be where
//! [`crate::hostfs`] allows, since the restore fills it and sets its times; a checkpoint
//! refuses one elsewhere ([`check`]). On Linux that open never blocks (fifo(7)), and that
//! one description is both reader and writer, so the FIFO's buffer lives (sized and filled
//! through it) until the restore ends and the spares are closed, and every end can be
//! opened anew, with its own access mode and `O_NONBLOCK`, without blocking or `ENXIO`
//! ([`open_end`]). Each end of a FIFO is an open file description of its own; fds that
//! share one are copied from its first holder by [`crate::files`], as for any file.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use migrate_proto::records::{FdRecord, Fifo, PipeRecord};
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::fstatat;

use crate::error::{EngineError, io_err};
use crate::files::describe_process;
use crate::hostfs::{Created, Dir};
use crate::inject::Remote;
use crate::objects::shmem::timespec;

/// Set in every FIFO's key, never in a pipe's inode number (32-bit).
const KEY_BIT: u64 = 1 << 63;

/// Where in the scratch page `stat` buffers go (the path is at 0; data from 32 KiB, see
/// `files::fill_pipe`).
const STAT_AT: u64 = 8 << 10;

/// The image's key for the FIFO `md` describes.
pub fn key(md: &Metadata) -> u64 {
    KEY_BIT | mix(mix(md.dev()) ^ md.ino()) >> 1
}

/// Whether a pipe key of the image names a FIFO.
pub fn is_fifo(key: u64) -> bool {
    key & KEY_BIT != 0
}

/// splitmix64's finalizer: every input bit changes about half of the output bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What fd `fd` of `pid` is open on (`stat` through the `/proc` link, which opens nothing).
fn stat(pid: i32, fd: i32) -> Result<Metadata, EngineError> {
    let link = format!("/proc/{pid}/fd/{fd}");
    std::fs::metadata(&link).map_err(io_err("stat", link))
}

/// Refuses, before anything is seized, FIFOs that cannot be moved: one also held open by a
/// process outside `inside` (the container's pids), two FIFOs with one key, and one in a
/// directory where a restore may not create files ([`crate::hostfs`]). `fifos`
/// holds `(pid, fd, key)` for every FIFO fd of the container.
pub fn check(inside: &[i32], fifos: &[(i32, i32, u64)]) -> Result<(), EngineError> {
    if fifos.is_empty() {
        return Ok(());
    }
    let mut objects: HashMap<(u64, u64), (i32, i32)> = HashMap::new();
    let mut keys: HashMap<u64, (u64, u64)> = HashMap::new();
    for &(pid, fd, key) in fifos {
        let md = stat(pid, fd)?;
        let id = (md.dev(), md.ino());
        if keys.insert(key, id).is_some_and(|other| other != id) {
            return Err(EngineError::Unsupported(format!(
                "{} fd {fd} is a FIFO whose key {key:#x} is another FIFO's: not supported",
                describe_process(pid)
            )));
        }
        objects.entry(id).or_insert((pid, fd));
        // The restore opens it, fills it and sets its times, or makes it if it is gone:
        // only where it may create files (`hostfs`), or a crafted image could do the same
        // to any FIFO of the host.
        let link = format!("/proc/{pid}/fd/{fd}");
        let path = std::fs::read_link(&link).map_err(io_err("readlink", link))?;
        let path = path.to_string_lossy();
        if let Err(why) = crate::hostfs::may_create(pid, &path, md.uid()) {
            return Err(EngineError::Unsupported(format!(
                "{} fd {fd} is the FIFO {path}, which a restore opens and fills again or makes anew; {why}, and {}",
                describe_process(pid),
                crate::hostfs::RULE
            )));
        }
    }
    // One walk of /proc for all of them. Only links that are paths can be FIFOs.
    let Ok(procs) = std::fs::read_dir("/proc") else { return Ok(()) };
    for holder in procs.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        if inside.contains(&holder) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{holder}/fd")) else { continue };
        for e in fds.filter_map(|e| e.ok()) {
            if !std::fs::read_link(e.path()).is_ok_and(|l| l.starts_with("/")) {
                continue;
            }
            let Ok(md) = std::fs::metadata(e.path()) else { continue };
            if !md.file_type().is_fifo() {
                continue;
            }
            if let Some(&(pid, fd)) = objects.get(&(md.dev(), md.ino())) {
                let path = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let comm = std::fs::read_to_string(format!("/proc/{holder}/comm")).unwrap_or_default();
                return Err(EngineError::Unsupported(format!(
                    "{} fd {fd} is the FIFO {path}, also held open by pid {holder} ({}), outside the container",
                    describe_process(pid),
                    comm.trim_end()
                )));
            }
        }
    }
    Ok(())
}

/// The FIFO behind fd `fd` of `pid`, whose `/proc` link reads `link`; `None` for a pipe.
pub fn record(pid: i32, fd: i32, link: &str) -> Result<Option<Fifo>, EngineError> {
    if !link.starts_with('/') {
        return Ok(None);
    }
    let md = stat(pid, fd)?;
    let (atime_ns, mtime_ns) = crate::objects::shmem::times_ns(&md);
    Ok(md.file_type().is_fifo().then(|| Fifo {
        path: link.to_string(),
        mode: md.mode() & 0o7777,
        atime_ns,
        mtime_ns,
    }))
}

/// A read end of the FIFO behind fd `fd` of `pid`, opened by the dumper through its
/// `/proc` link: for a FIFO the container holds only write ends of. `O_NONBLOCK`, so the
/// open does not wait for a writer.
pub fn reader(pid: i32, fd: i32) -> Result<OwnedFd, EngineError> {
    let link = format!("/proc/{pid}/fd/{fd}");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&link)
        .map_err(io_err("open a read end through", link))?;
    Ok(f.into())
}

/// Makes the FIFO of `rec` ready in the process `remote` (`pid_ns` in the container):
/// there at its path, created with its mode if gone (only where a restore may create
/// files, and recorded in `created`: see [`crate::hostfs`]); open read-write at a spare fd above
/// `base` (pushed to `spares`, closed when the restore ends); sized and filled with its
/// bytes. Returns the spare.
pub fn make(
    remote: &mut Remote<'_>,
    pid_ns: i32,
    rec: &PipeRecord,
    fifo: &Fifo,
    base: u64,
    spares: &mut Vec<(i32, u64)>,
    created: &mut Created,
) -> Result<u64, EngineError> {
    let (path, host) = (fifo.path.as_str(), remote.pid);
    let at = remote.path(0, path)?;
    let statbuf = remote.scratch.addr + STAT_AT;
    // Found or made, opened and filled: only in a directory a restore may create files
    // in, the same as a checkpoint allows (`check`), whether the FIFO is there or not.
    let dir = Dir::in_root(host, path)?;
    let at_dir = |dir: &Dir| fstatat(&dir.fd, dir.name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW);
    let found = at_dir(&dir);
    // Its owner: the one it has, or the engine, which makes it.
    let owner = found.as_ref().map_or_else(|_| nix::unistd::geteuid().as_raw(), |st| st.st_uid);
    dir.check(host, owner, &format!("the FIFO {path}"))?;
    let io = |op, e: Errno| EngineError::Io { op, path: path.into(), source: e.into() };
    let node = match found {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFIFO => st,
        Ok(st) => {
            return Err(EngineError::Incompatible(format!(
                "the FIFO {path} is no FIFO here (mode {:o})",
                st.st_mode
            )));
        }
        Err(Errno::ENOENT) => {
            // Made by the engine in the directory it checked, not by path in the process.
            let perm = nix::sys::stat::Mode::from_bits_truncate(fifo.mode);
            nix::sys::stat::mknodat(&dir.fd, dir.name.as_str(), nix::sys::stat::SFlag::S_IFIFO, perm, 0)
                .map_err(|e| io("mknod", e))?;
            created.add(&dir)?;
            // mknodat applied the umask.
            nix::sys::stat::fchmodat(
                &dir.fd,
                dir.name.as_str(),
                perm,
                nix::sys::stat::FchmodatFlags::NoFollowSymlink,
            )
            .map_err(|e| io("chmod", e))?;
            at_dir(&dir).map_err(|e| io("stat", e))?
        }
        Err(e) => return Err(io("stat", e)),
    };
    let flags = (libc::O_RDWR | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    let fd = remote.call(libc::SYS_openat, &[libc::AT_FDCWD as u64, at, flags, 0], || {
        format!("open {path} read-write")
    })?;
    let spare = remote.call(libc::SYS_fcntl, &[fd, libc::F_DUPFD_CLOEXEC as u64, base + 32], || {
        format!("fcntl(F_DUPFD) of {path}")
    })?;
    remote.call(libc::SYS_close, &[fd], || "close".into())?;
    spares.push((pid_ns, spare));
    // What was opened by path in the process is the node checked above, not what the
    // path named a moment later.
    let md = stat(host, spare as i32)?;
    if (md.dev(), md.ino()) != (node.st_dev, node.st_ino) {
        return Err(EngineError::Incompatible(format!(
            "the FIFO {path} was replaced while the restore opened it"
        )));
    }
    remote.call(libc::SYS_ioctl, &[spare, libc::FIONREAD, statbuf], || format!("FIONREAD of {path}"))?;
    let raw = remote.read(STAT_AT, 4)?;
    let queued = i32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    if queued != 0 {
        return Err(EngineError::Incompatible(format!(
            "the FIFO {path} already holds {queued} bytes: something outside the container has it open"
        )));
    }
    crate::files::fill_pipe(remote, spare, rec, &format!("the FIFO {path}"))?;
    // Filling it moved its times; nothing writes or reads it again before the restore ends.
    let link = format!("/proc/{host}/fd/{spare}");
    let (atime, mtime) = (timespec(fifo.atime_ns), timespec(fifo.mtime_ns));
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        link.as_str(),
        &atime,
        &mtime,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )
    .map_err(|e| EngineError::Io { op: "set the times of", path: path.into(), source: e.into() })?;
    Ok(spare)
}

/// Opens an end of `fifo` anew at fd `rec.fd` of the process `remote`, with the end's
/// access mode and `O_NONBLOCK` (the spare of [`make`] is a reader and a writer, so
/// neither side waits nor fails with `ENXIO`). The caller sets the end's status flags.
pub fn open_end(
    remote: &mut Remote<'_>,
    fifo: &Fifo,
    rec: &FdRecord,
    cloexec: u64,
) -> Result<(), EngineError> {
    let (path, target) = (fifo.path.as_str(), rec.fd as u64);
    let at = remote.path(0, path)?;
    let cwd = libc::AT_FDCWD as u64;
    let access = u64::from(rec.flags & libc::O_ACCMODE as u32);
    let flags = access | libc::O_NONBLOCK as u64 | cloexec;
    let tmp = if rec.flags & libc::O_NOFOLLOW as u32 != 0 {
        remote.call(libc::SYS_openat, &[cwd, at, flags | libc::O_NOFOLLOW as u64, 0], || {
            format!("open {path} for fd {target}")
        })?
    } else {
        // The path is not followed if it is a symlink, yet the end must not keep
        // O_NOFOLLOW, which F_SETFL cannot clear and `fcntl(F_GETFL)` shows: opened as a
        // path first, then reopened through its /proc link.
        let opath = remote.call(
            libc::SYS_openat,
            &[cwd, at, (libc::O_PATH | libc::O_NOFOLLOW) as u64 | cloexec, 0],
            || format!("open {path} (O_PATH) for fd {target}"),
        )?;
        ensure_fifo(remote.pid, opath, path)?;
        let link = remote.path(0, &format!("/proc/self/fd/{opath}"))?;
        let end =
            remote.call(libc::SYS_openat, &[cwd, link, flags, 0], || format!("open {path} for fd {target}"));
        remote.call(libc::SYS_close, &[opath], || "close".into())?;
        end?
    };
    if tmp != target {
        remote.call(libc::SYS_dup3, &[tmp, target, cloexec], || format!("dup3 to fd {target}"))?;
        remote.call(libc::SYS_close, &[tmp], || "close".into())?;
    }
    ensure_fifo(remote.pid, target, path)
}

/// Fd `fd` of `host` must be open on a FIFO.
fn ensure_fifo(host: i32, fd: u64, path: &str) -> Result<(), EngineError> {
    let md = stat(host, fd as i32)?;
    if md.file_type().is_fifo() {
        Ok(())
    } else {
        Err(EngineError::Incompatible(format!("pid {host} fd {fd}: {path} is not a FIFO")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_look_like_pipes() -> std::io::Result<()> {
        let dir = std::env::temp_dir();
        let md = std::fs::metadata(&dir)?;
        let k = key(&md);
        assert!(is_fifo(k) && k == key(&md));
        assert!(!is_fifo(u64::from(u32::MAX)));
        // One inode number on two devices: two keys.
        assert_ne!(mix(mix(1) ^ 5) >> 1, mix(mix(2) ^ 5) >> 1);
        Ok(())
    }
}
