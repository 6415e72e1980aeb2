//! Objects whose contents only the image holds: the shmem behind `MAP_SHARED |
//! MAP_ANONYMOUS`, memfds (name, size, seals, contents) and files deleted while open or
//! mapped.
//!
//! Dump: each object is found through whatever refers to it (a `map_files` link of a
//! mapping, an `fd` link) and known by its inode; it gets one id in the image, one
//! [`ObjectRecord`] in the record of the first process (image order) that refers to it —
//! its owner — and its data ranges (`SEEK_DATA`/`SEEK_HOLE`) travel once, as page batches
//! of the object after the owner's own ([`crate::memory`]).
//!
//! Restore: the owner, built first, creates the object by injected syscalls and keeps
//! it at a spare fd (the *anchor*) until the whole tree is built; every mapping and fd of
//! it, in any process, is opened from `/proc/OWNER/fd/ANCHOR` (a new description of the
//! same inode), so all of them share it again. The agent takes its own copy of the
//! anchor with `pidfd_getfd` to write the contents and, at the very end, the seals and the
//! times (a memfd's and a deleted file's mode and owner are set when it is made).
//!
//! `(deleted)` in `/proc` means the name a file was opened by is gone, not the file: one
//! with a link left is no object of the image but that very file. Its other name is
//! looked for in the directory of the deleted one (a file kept under a new name by
//! `link` + `unlink`); the restore links it back under the deleted name, opens it and
//! unlinks that name again ([`relink`]). Found nowhere there, it is refused.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use migrate_proto::records::{FileMeta, ObjectKind, ObjectRecord};
use nix::sys::time::TimeSpec;

use crate::error::{EngineError, io_err};
use crate::hostfs::{Created, Dir};
use crate::inject::Remote;

/// `F_SEAL_SEAL`: no more seals; a memfd made without `MFD_ALLOW_SEALING` has just this.
const F_SEAL_SEAL: u32 = libc::F_SEAL_SEAL as u32;

/// One object found by a dump.
#[derive(Debug)]
pub struct Found {
    pub record: ObjectRecord,
    /// Index (image order) of the first process that refers to it.
    pub owner: usize,
    /// A path the dump can open to read its contents (`/proc/PID/map_files/…` or
    /// `/proc/PID/fd/N`).
    pub source: String,
}

/// The objects of one dump, by inode.
#[derive(Debug, Default)]
pub struct Registry {
    by_inode: HashMap<(u64, u64), usize>,
    pub found: Vec<Found>,
}

/// What kind of object a `maps` name or an fd link names, with the name it shows.
#[derive(Debug)]
pub enum Named<'a> {
    AnonShared,
    Memfd(&'a str),
    Deleted(&'a str),
    /// A System V shared memory segment, by its id ([`super::sysv`]).
    Sysv(i32),
}

impl<'a> Named<'a> {
    /// Classifies a `maps` name or an fd link; `None` for anything else.
    pub fn of(link: &'a str, shared_mapping: bool) -> Option<Named<'a>> {
        if link == "/dev/zero (deleted)" && shared_mapping {
            return Some(Named::AnonShared);
        }
        if let Some(rest) = link.strip_prefix("/memfd:") {
            return Some(Named::Memfd(rest.strip_suffix(" (deleted)").unwrap_or(rest)));
        }
        link.strip_suffix(" (deleted)").filter(|p| p.starts_with('/')).map(Named::Deleted)
    }
}

impl Registry {
    /// The id of the object `named`, reached through `path` (a magic link of process
    /// `proc`, image order), registering it the first time.
    pub fn id(&mut self, proc: usize, path: &str, named: Named<'_>) -> Result<u64, EngineError> {
        let md = std::fs::metadata(path).map_err(io_err("stat", path))?;
        let key = (md.dev(), md.ino());
        if let Some(&i) = self.by_inode.get(&key) {
            let f = &mut self.found[i];
            f.owner = f.owner.min(proc);
            return Ok(f.record.id);
        }
        let mut link = None;
        let kind = match named {
            Named::AnonShared => ObjectKind::AnonShared,
            Named::Memfd(name) => {
                let f = File::open(path).map_err(io_err("open", path))?;
                let seals = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GET_SEALS).map_err(|e| {
                    EngineError::Io { op: "F_GET_SEALS of", path: path.into(), source: e.into() }
                })?;
                if md.nlink() != 0 && name.is_empty() {
                    return Err(EngineError::Unsupported(format!("{path}: an unnamed memfd with links")));
                }
                ObjectKind::Memfd { name: name.to_string(), seals: seals as u32 }
            }
            Named::Deleted(p) => {
                let (kind, other) = deleted(p, &md, path)?;
                link = other;
                kind
            }
            Named::Sysv(shmid) => ObjectKind::SysvShm { shmid },
        };
        // A linked file is the file itself, not a copy: its inode is not ours to change.
        let copied = matches!(kind, ObjectKind::Memfd { .. } | ObjectKind::Deleted { .. }) && link.is_none();
        let meta = copied.then(|| {
            let (atime_ns, mtime_ns) = times_ns(&md);
            FileMeta { mode: md.mode() & 0o7777, uid: md.uid(), gid: md.gid(), atime_ns, mtime_ns }
        });
        let id = self.found.len() as u64 + 1;
        self.by_inode.insert(key, self.found.len());
        self.found.push(Found {
            record: ObjectRecord { id, kind, size: md.size(), meta, link },
            owner: proc,
            source: path.to_string(),
        });
        Ok(id)
    }
}

impl Registry {
    /// The id of the object already registered that `path` leads to, if any.
    pub fn known(&self, path: &str) -> Result<Option<u64>, EngineError> {
        let md = std::fs::metadata(path).map_err(io_err("stat", path))?;
        Ok(self.by_inode.get(&(md.dev(), md.ino())).map(|&i| self.found[i].record.id))
    }
}

/// Access and modification times of `md`, in ns since the epoch.
pub fn times_ns(md: &Metadata) -> (i64, i64) {
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    (ns(md.atime(), md.atime_nsec()), ns(md.mtime(), md.mtime_nsec()))
}

/// [`times_ns`]' form back, for `utimensat`.
pub fn timespec(ns: i64) -> TimeSpec {
    TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

/// A deleted file, and its other name if it has one (see [`ObjectRecord::link`]).
fn deleted(shown: &str, md: &Metadata, path: &str) -> Result<(ObjectKind, Option<String>), EngineError> {
    if !md.is_file() {
        return Err(EngineError::Unsupported(format!(
            "{path} is a deleted {}, not a regular file: not supported yet",
            if md.is_dir() { "directory" } else { "special file" }
        )));
    }
    // `path` is a magic link of its process: `/proc/PID/fd/N` or `/proc/PID/map_files/…`.
    let pid = path
        .split('/')
        .nth(2)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| EngineError::Unsupported(format!("{path}: not a link under /proc/PID")))?;
    crate::hostfs::check_deleted(pid, path, shown, md.uid())?;
    // `(deleted)` says the name it was opened by is gone, not the file (checked on 6.18:
    // a file opened as A, linked as B, A unlinked, shows "A (deleted)" with nlink 1): with
    // a link left, a copy made by the restore would no longer be that file.
    let link = if md.nlink() > 0 {
        let Some(other) = other_link(path, shown, md) else {
            let (who, how) = via(path);
            return Err(EngineError::Unsupported(format!(
                "{who} {how} is {shown} (deleted), a file that still has {} link(s), none in its directory: reopening it through a name elsewhere is not supported yet",
                md.nlink()
            )));
        };
        Some(other)
    } else {
        None
    };
    let kind = ObjectKind::Deleted {
        path: shown.to_string(),
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
    };
    Ok((kind, link))
}

/// One object rebuilt by a restore.
#[derive(Debug)]
pub struct Live {
    /// Where processes of the container open it: `/proc/OWNER/fd/ANCHOR`.
    pub path: String,
    /// The agent's copy, for contents and seals.
    pub file: File,
    pub record: ObjectRecord,
}

/// Creates `rec` in the process `remote` (`pid_ns` in the container), keeping it at a
/// spare fd at or above `base`; returns the spare fd and the object.
pub fn create(
    remote: &mut Remote<'_>,
    pid_ns: i32,
    rec: &ObjectRecord,
    base: u64,
    created: &mut Created,
) -> Result<(u64, Live), EngineError> {
    let (id, host) = (rec.id, remote.pid);
    let fd = match &rec.kind {
        ObjectKind::AnonShared => {
            // The kernel makes this shmem only for a shared anonymous mmap: make one,
            // open it through map_files (root may), and let the mapping go.
            let len = rec.size.next_multiple_of(4096).max(4096);
            let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
            let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
            let at = remote.call(libc::SYS_mmap, &[0, len, prot, flags, u64::MAX, 0], || {
                format!("mmap of shared memory (object {id})")
            })?;
            let link = format!("/proc/self/map_files/{at:x}-{:x}", at + len);
            let p = remote.path(0, &link)?;
            let fd = remote.call(
                libc::SYS_openat,
                &[libc::AT_FDCWD as u64, p, (libc::O_RDWR | libc::O_CLOEXEC) as u64, 0],
                || format!("open {link}"),
            );
            remote.call(libc::SYS_munmap, &[at, len], || "munmap".into())?;
            fd?
        }
        ObjectKind::Memfd { name, seals } => {
            let p = remote.path(0, name)?;
            // F_SEAL_EXEC: the mode's exec bits are fixed (MFD_NOEXEC_SEAL sets it at birth).
            let exec =
                if seals & libc::F_SEAL_EXEC as u32 != 0 { libc::MFD_NOEXEC_SEAL } else { libc::MFD_EXEC };
            // One with only F_SEAL_SEAL was made without MFD_ALLOW_SEALING: so is this.
            let sealing = if *seals == F_SEAL_SEAL { 0 } else { libc::MFD_ALLOW_SEALING };
            let flags = u64::from(libc::MFD_CLOEXEC | sealing);
            let fd = match remote.syscall(libc::SYS_memfd_create, &[p, flags | u64::from(exec)])? {
                Ok(fd) => fd,
                // A kernel before 6.3 knows neither exec flag.
                Err(nix::errno::Errno::EINVAL) => {
                    remote.call(libc::SYS_memfd_create, &[p, flags], || format!("memfd_create({name:?})"))?
                }
                Err(errno) => {
                    return Err(EngineError::Injected {
                        pid: host,
                        call: format!("memfd_create({name:?})"),
                        errno,
                    });
                }
            };
            remote.call(libc::SYS_ftruncate, &[fd, rec.size], || format!("ftruncate memfd {name:?}"))?;
            fd
        }
        ObjectKind::Deleted { path, uid, gid, .. } if let Some(link) = &rec.link => {
            relink(remote, rec, path, link, (*uid, *gid))?
        }
        ObjectKind::Deleted { path, mode, uid, .. } => {
            // Made where it was, then unlinked: /proc shows it as it showed the original.
            // If that name is taken again, beside it. Made in its directory as this
            // process opens it (its own view), once the engine has checked that a restore
            // may create files there (`hostfs`).
            let (parent, name) = crate::hostfs::split(path)?;
            let p = remote.path(0, parent)?;
            let dflags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
            let dfd = remote.call(libc::SYS_openat, &[libc::AT_FDCWD as u64, p, dflags, 0], || {
                format!("open {parent}, the directory of deleted file {path}")
            })?;
            let parent_dir =
                Dir { fd: crate::files::take(host, dfd as i32)?, path: path.clone(), name: name.into() };
            parent_dir.check(host, *uid, &format!("the deleted file {path} (object {id})"))?;
            let flags =
                (libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
            let mut made = None;
            for name in [name.to_string(), format!("{name}.migrate-deleted-{id}")] {
                let fd = parent_dir.fd.try_clone().map_err(io_err("dup", parent))?;
                let dir = Dir { fd, path: path.clone(), name };
                let p = remote.path(0, &dir.name)?;
                match remote.syscall(libc::SYS_openat, &[dfd, p, flags, u64::from(*mode)])? {
                    Ok(fd) => {
                        created.add(&dir)?;
                        made = Some((fd, dir));
                        break;
                    }
                    Err(nix::errno::Errno::EEXIST) => continue,
                    Err(errno) => {
                        return Err(EngineError::Injected {
                            pid: host,
                            call: format!("create {}/{} (a file deleted while open)", parent, dir.name),
                            errno,
                        });
                    }
                }
            }
            let (fd, dir) = made.ok_or_else(|| {
                EngineError::Incompatible(format!("cannot recreate deleted file {path}: its names are taken"))
            })?;
            let p = remote.path(0, &dir.name)?;
            remote.call(libc::SYS_unlinkat, &[dfd, p, 0], || format!("unlink {path}"))?;
            created.forget(&dir);
            remote.call(libc::SYS_close, &[dfd], || "close".into())?;
            remote.call(libc::SYS_ftruncate, &[fd, rec.size], || format!("ftruncate {path}"))?;
            fd
        }
        ObjectKind::SysvShm { shmid } => {
            return Err(EngineError::Incompatible(format!(
                "object {id} (System V segment {shmid}) is made with the IPC namespace, not by a process"
            )));
        }
    };
    let anchor = remote
        .call(libc::SYS_fcntl, &[fd, libc::F_DUPFD_CLOEXEC as u64, base], || "fcntl(F_DUPFD)".into())?;
    remote.call(libc::SYS_close, &[fd], || "close".into())?;
    let file = File::from(crate::files::take(host, anchor as i32)?);
    let owner = match (&rec.kind, &rec.meta) {
        (ObjectKind::Deleted { .. }, _) if rec.link.is_some() => None,
        (ObjectKind::Deleted { uid, gid, mode, .. }, _) => Some((uid, gid, mode)),
        (ObjectKind::Memfd { .. }, Some(m)) => Some((&m.uid, &m.gid, &m.mode)),
        _ => None,
    };
    if let Some((uid, gid, mode)) = owner {
        let err = |op| {
            move |e: nix::errno::Errno| EngineError::Io {
                op,
                path: format!("object {id}").into(),
                source: e.into(),
            }
        };
        nix::unistd::fchown(file.as_fd(), Some((*uid).into()), Some((*gid).into())).map_err(err("fchown"))?;
        // The umask trimmed the mode given to open.
        nix::sys::stat::fchmod(file.as_fd(), nix::sys::stat::Mode::from_bits_truncate(*mode))
            .map_err(err("fchmod"))?;
    }
    Ok((anchor, Live { path: format!("/proc/{pid_ns}/fd/{anchor}"), file, record: rec.clone() }))
}

impl Live {
    /// Writes `data` at `offset`, not past the object's size (its last page may be
    /// partial).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), EngineError> {
        // A linked file is the host's file itself: the image has no bytes for it (the
        // validation refuses such batches; this holds even if a caller skipped it).
        if let Some(link) = &self.record.link {
            return Err(EngineError::Incompatible(format!(
                "object {} is the file {link}, not a copy: the image may not write it",
                self.record.id
            )));
        }
        let room = self.record.size.saturating_sub(offset).min(data.len() as u64) as usize;
        self.file.write_all_at(&data[..room], offset).map_err(|source| EngineError::Memory {
            pid: 0,
            addr: offset,
            op: "write object",
            source,
        })
    }

    /// Adds the seals the object had (a memfd's), then sets its times back: once
    /// everything is written and mapped.
    pub fn finish(&self) -> Result<(), EngineError> {
        self.seal()?;
        let Some(m) = &self.record.meta else { return Ok(()) };
        nix::sys::stat::futimens(&self.file, &timespec(m.atime_ns), &timespec(m.mtime_ns)).map_err(|e| {
            EngineError::Io {
                op: "set the times of",
                path: format!("object {}", self.record.id).into(),
                source: e.into(),
            }
        })
    }

    fn seal(&self) -> Result<(), EngineError> {
        let ObjectKind::Memfd { seals, name } = &self.record.kind else { return Ok(()) };
        if *seals == F_SEAL_SEAL || *seals == 0 {
            return Ok(());
        }
        let flags = nix::fcntl::SealFlag::from_bits_truncate(*seals as i32);
        nix::fcntl::fcntl(&self.file, nix::fcntl::FcntlArg::F_ADD_SEALS(flags)).map(|_| ()).map_err(|e| {
            EngineError::Io { op: "F_ADD_SEALS on", path: format!("memfd:{name}").into(), source: e.into() }
        })
    }
}

/// The process and the way (`fd N`, `a mapping`) a `/proc/PID/fd/N` or
/// `/proc/PID/map_files/…` path reaches an object.
fn via(path: &str) -> (String, String) {
    let mut parts = path.strip_prefix("/proc/").unwrap_or(path).split('/');
    let pid = parts.next().and_then(|p| p.parse().ok());
    let who = pid.map_or_else(|| path.to_string(), crate::files::describe_process);
    let how = match (parts.next(), parts.next()) {
        (Some("fd"), Some(n)) => format!("fd {n}"),
        (Some("map_files"), Some(range)) => format!("the mapping at {range}"),
        _ => path.to_string(),
    };
    (who, how)
}

/// Another name of the file `md` in the directory its deleted name `shown` was in (in
/// the view of the process of `path`), if there is one: the usual way to keep a file
/// while removing a name (`link` then `unlink`). Other directories are not searched.
fn other_link(path: &str, shown: &str, md: &Metadata) -> Option<String> {
    let pid = path.strip_prefix("/proc/")?.split('/').next()?;
    let dir = std::path::Path::new(shown).parent()?;
    let entries = std::fs::read_dir(format!("/proc/{pid}/root{}", dir.display())).ok()?;
    entries.take(10_000).filter_map(|e| e.ok()).find_map(|e| {
        let m = e.metadata().ok()?;
        (m.dev() == md.dev() && m.ino() == md.ino()).then(|| dir.join(e.file_name()).display().to_string())
    })
}

/// Opens, in `remote`, the deleted file `path` that still has the name `link`: linked back
/// as `path`, opened, unlinked again, so that `/proc` shows it as before. If `path` is
/// taken again, it is opened as `link` (the same file, shown by that name). Returns the fd.
///
/// The file must still be the one the checkpoint saw: as large, and with the owner it had
/// (`owner`, recorded from that very inode). The image carries no inode number, and one
/// would not survive a move to another host anyway; the owner is what keeps a crafted
/// image from handing the container another user's file through a name in `/tmp`.
fn relink(
    remote: &mut Remote<'_>,
    rec: &ObjectRecord,
    path: &str,
    link: &str,
    owner: (u32, u32),
) -> Result<u64, EngineError> {
    let (host, id, size) = (remote.pid, rec.id, rec.size);
    // Both names in one directory (the checkpoint looks for the other name only there),
    // and one a restore may create files in: a crafted image must not hard-link a host
    // file to a name of its choosing.
    let (parent, name) = crate::hostfs::split(path)?;
    let (link_parent, link_name) = crate::hostfs::split(link)?;
    if link_parent != parent {
        return Err(EngineError::Incompatible(format!(
            "the deleted file {path} (object {id}) has its other name {link} in another directory: a checkpoint writes no such image"
        )));
    }
    let p = remote.path(0, parent)?;
    let dflags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    let dfd = remote.call(libc::SYS_openat, &[libc::AT_FDCWD as u64, p, dflags, 0], || {
        format!("open {parent}, the directory of deleted file {path}")
    })?;
    let dir = Dir { fd: crate::files::take(host, dfd as i32)?, path: path.to_string(), name: name.into() };
    dir.check(host, owner.0, &format!("the deleted file {path} (object {id})"))?;
    let from = remote.path(0, link_name)?;
    let to = remote.path(8192, name)?;
    let linked = match remote.syscall(libc::SYS_linkat, &[dfd, from, dfd, to, 0])? {
        Ok(_) => true,
        Err(nix::errno::Errno::EEXIST) => false,
        Err(errno) => {
            return Err(EngineError::Injected {
                pid: host,
                call: format!("link {link} to {path} (object {id})"),
                errno,
            });
        }
    };
    let at = if linked { to } else { from };
    let flags = (libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    let fd = remote.call(libc::SYS_openat, &[dfd, at, flags, 0], || {
        format!("open {path} (object {id}, linked as {link})")
    });
    if linked {
        remote.call(libc::SYS_unlinkat, &[dfd, to, 0], || format!("unlink {path}"))?;
    }
    remote.call(libc::SYS_close, &[dfd], || "close".into())?;
    let fd = fd?;
    let md = std::fs::metadata(format!("/proc/{host}/fd/{fd}")).map_err(io_err("stat", link))?;
    // As for any file reopened by name: shorter than at the checkpoint, or another
    // owner's, it is another one.
    if !md.is_file() || md.size() < size || (md.uid(), md.gid()) != owner {
        return Err(EngineError::Incompatible(format!(
            "{link}, the other name of the deleted file {path}, is no longer that file ({} bytes, owner {}:{}; the image has {size} bytes, owner {}:{})",
            md.size(),
            md.uid(),
            md.gid(),
            owner.0,
            owner.1
        )));
    }
    Ok(fd)
}
