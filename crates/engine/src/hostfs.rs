//! Files a restore creates on the filesystem, where it may create them, and their removal
//! when the restore fails (issue 11 §4).
//!
//! Lab containers share the host's root filesystem, so a path in an image is a host path,
//! and a restore runs as root: a crafted image must not be able to plant a FIFO at
//! `/etc/ld.so.preload` or a file in `/root`. A restore creates three kinds of file — a
//! FIFO that is gone ([`crate::objects::fifo`]), a file deleted while open, made again and
//! unlinked at once ([`crate::objects::shmem`]), the node of a unix socket it binds to a
//! path ([`crate::objects::unix`]) — and the rule for all three is the same: it creates
//! only in
//! - the container's private tmpfs mounts (`/run`, `/dev/shm`), which die with it: a
//!   tmpfs at that path in the container's root that is not the same mount as ours (a
//!   container without a `/run` of its own sees the host's, which is no place of its), or
//! - a directory under `/tmp` or `/var/tmp` that is sticky and writable by all (as `/tmp`
//!   itself: any user of the host may create files there, and none may remove another's),
//!   or that belongs to the user who will own the file made in it (that user could make
//!   it there). A path prefix alone is not enough: `/tmp/systemd-private-…` of a service is
//!   under `/tmp` and no place of the container's. The owner comes from the image, so an
//!   image naming a user can reach that user's directories under `/tmp`, never another's
//!   and never outside the temporary directories.
//!
//! The rule is decided on the directory actually opened ([`Dir::check`]: its device, and the
//! path the kernel gives for it), never on the path the image writes: `/tmp/x` that is a
//! symlink to `/etc` is `/etc`, and refused. FIFOs and deleted files are then created
//! relative to that open directory (`mknodat`, `openat` on its fd), so it cannot be swapped
//! in between; a socket can only be bound by its path (the path is its name), so there the
//! directory is checked right before the `bind`, and the node the name holds afterwards
//! must be the one the bind made (its inode, as sock_diag reports it) before it is touched.
//! A stale socket node is unlinked first only if nobody is bound to it (`connect` is
//! refused). The same rule holds for a FIFO that is still there (it is filled and its
//! times set). So that a container the restore would refuse is never checkpointed, the
//! checkpoint applies the rule to every deleted file ([`check_deleted`]), FIFO and bound
//! socket path ([`may_create`]).
//!
//! Every file made is recorded in [`Created`], with a handle on its directory and its
//! inode number. If the restore fails, dropping it removes each that is still the same
//! inode (the tmpfs contents go with the container's mount namespace); a restore that
//! succeeds keeps them ([`Created::keep`]).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::fcntl::{AtFlags, OFlag};
use nix::unistd::UnlinkatFlags;

use crate::error::EngineError;

/// The container's private tmpfs mounts (see `objects::tmpfs`).
const CONTAINER_TMPFS: [&str; 2] = ["/run", "/dev/shm"];
/// Host directories under which a restore may create files: any user may.
const HOST_TMP: [&str; 2] = ["/tmp", "/var/tmp"];

/// An open directory in which a restore is about to create `name`.
#[derive(Debug)]
pub(crate) struct Dir {
    pub fd: OwnedFd,
    /// The last component of the path.
    pub name: String,
    /// The whole path, as the image has it (for messages).
    pub path: String,
}

impl Dir {
    /// The directory of `path` in `pid`'s root, resolved inside that root
    /// (`openat2(RESOLVE_IN_ROOT)`): a symlink of the container cannot lead the engine,
    /// root on the host, out of it.
    pub(crate) fn in_root(pid: i32, path: &str) -> Result<Dir, EngineError> {
        use nix::fcntl::{OpenHow, ResolveFlag};
        let root_path = format!("/proc/{pid}/root");
        let err = |what: &str, e: nix::errno::Errno| EngineError::Io {
            op: "open",
            path: format!("{root_path}{what}").into(),
            source: e.into(),
        };
        let (parent, name) = split(path)?;
        let root = nix::fcntl::open(
            root_path.as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| err("", e))?;
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT);
        let fd = nix::fcntl::openat2(&root, parent, how).map_err(|e| err(parent, e))?;
        Ok(Dir { fd, name: name.to_string(), path: path.to_string() })
    }

    /// Refuses, unless this directory is one a restore may create files in (see the
    /// module's doc); `what` completes "… cannot be created: " (e.g. "the FIFO
    /// /etc/x"). `pid` is a process of the container (for its tmpfs mounts), `owner` the
    /// uid the file will have.
    pub(crate) fn check(&self, pid: i32, owner: u32, what: &str) -> Result<(), EngineError> {
        allowed(pid, &self.fd, owner).map_err(|shown| {
            EngineError::Incompatible(format!("{what} cannot be created: it would be in {shown}, and {RULE}"))
        })
    }
}

/// `(parent, last component)` of an absolute path; the parent of `/x` is `/`.
pub(crate) fn split(path: &str) -> Result<(&str, &str), EngineError> {
    let bad = || EngineError::Incompatible(format!("{path:?} is not a path a restore can create a file at"));
    let (parent, name) = path.rsplit_once('/').ok_or_else(bad)?;
    if name.is_empty() || name == "." || name == ".." {
        return Err(bad());
    }
    Ok((if parent.is_empty() { "/" } else { parent }, name))
}

/// Whether `dir` is on one of `pid`'s own tmpfs mounts, or a host temporary directory
/// where a file of `owner` may be made (see the module's doc); where it is when not (the
/// kernel's path for it, and why a temporary directory is not enough).
fn allowed(pid: i32, dir: &OwnedFd, owner: u32) -> Result<(), String> {
    let md = std::fs::metadata(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_err(|e| e.to_string())?;
    // A tmpfs of its own: where the container has none (a host's `/run` on its root
    // filesystem), the device would be the whole root's; where it sees ours (the same
    // mount, so the same device), the host's.
    let on_tmpfs = CONTAINER_TMPFS.iter().any(|m| {
        let at = format!("/proc/{pid}/root{m}");
        let tmpfs = nix::sys::statfs::statfs(at.as_str())
            .is_ok_and(|f| f.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        let ours = std::fs::metadata(format!("/proc/self/root{m}")).map(|o| o.dev());
        tmpfs && std::fs::metadata(&at).is_ok_and(|t| t.dev() == md.dev() && ours.ok() != Some(t.dev()))
    });
    if on_tmpfs {
        return Ok(());
    }
    // The container's root is the host's: the kernel's path for the directory (symlinks
    // resolved) is where it is on the host.
    let shown = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| e.to_string())?;
    let under = |top: &str| shown == top || shown.strip_prefix(top).is_some_and(|rest| rest.starts_with('/'));
    if !HOST_TMP.iter().any(|t| under(t)) {
        return Err(shown);
    }
    // S_ISVTX | S_IWOTH: anyone may add a name, and only its owner remove it.
    if md.mode() & 0o1002 == 0o1002 || md.uid() == owner {
        Ok(())
    } else {
        Err(format!(
            "{shown}, a directory that is neither sticky and writable by all nor uid {owner}'s (the file's owner)"
        ))
    }
}

/// At checkpoint, for a file the restore will make at `path` in `pid`'s view: why it may
/// not (the directory is gone, or where it is on the host), if it may not. `owner` is
/// the uid the file will have.
pub(crate) fn may_create(pid: i32, path: &str, owner: u32) -> Result<(), String> {
    // A directory that is gone would fail the restore: refused as well.
    let dir = Dir::in_root(pid, path).map_err(|e| format!("its directory cannot be opened ({e})"))?;
    allowed(pid, &dir.fd, owner).map_err(|at| format!("it is in {at}"))
}

/// The end of a refusal of a file the restore would have to make (see [`may_create`]).
pub(crate) const RULE: &str = "a restore creates files only in the container's /run and /dev/shm or under /tmp \
     and /var/tmp, in a directory sticky and writable by all or the file owner's (lab containers share the \
     host's filesystem)";

/// At checkpoint: a file deleted while open, which `pid` holds through the magic link
/// `link`, is made again by the restore at its path `shown`, owned by `owner`: refuses it
/// unless that is allowed (see the module's doc).
pub(crate) fn check_deleted(pid: i32, link: &str, shown: &str, owner: u32) -> Result<(), EngineError> {
    may_create(pid, shown, owner).map_err(|why| {
        EngineError::Unsupported(format!(
            "{} holds the deleted file {shown} (through {link}); {why}, and {RULE}",
            crate::files::describe_process(pid)
        ))
    })
}

/// One file a restore made.
#[derive(Debug)]
struct Node {
    dir: OwnedFd,
    name: String,
    ino: (u64, u64),
    path: String,
}

/// The files a restore made so far; removed again when dropped, unless kept.
#[derive(Debug, Default)]
pub(crate) struct Created {
    nodes: Vec<Node>,
}

impl Created {
    /// Records `dir.name`, just made by this restore.
    pub(crate) fn add(&mut self, dir: &Dir) -> Result<(), EngineError> {
        let io = |op, e: nix::errno::Errno| EngineError::Io {
            op,
            path: dir.path.clone().into(),
            source: e.into(),
        };
        let st = nix::sys::stat::fstatat(&dir.fd, dir.name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| io("stat the file just made at", e))?;
        let copy = dir.fd.try_clone().map_err(|e| EngineError::Io {
            op: "dup the directory of",
            path: dir.path.clone().into(),
            source: e,
        })?;
        self.nodes.push(Node {
            dir: copy,
            name: dir.name.clone(),
            ino: (st.st_dev, st.st_ino),
            path: dir.path.clone(),
        });
        Ok(())
    }

    /// Forgets `dir.name`: the restore unlinked it itself.
    pub(crate) fn forget(&mut self, dir: &Dir) {
        self.nodes.retain(|n| !(n.name == dir.name && n.path == dir.path));
    }

    /// The restore succeeded: what it made stays.
    pub(crate) fn keep(&mut self) {
        self.nodes.clear();
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        for n in self.nodes.drain(..).rev() {
            // Only what this restore made: the name may lead elsewhere by now.
            let same = nix::sys::stat::fstatat(&n.dir, n.name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| (st.st_dev, st.st_ino) == n.ino);
            if !same {
                continue;
            }
            match nix::unistd::unlinkat(&n.dir, n.name.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) => tracing::info!("removed {} (made by the failed restore)", n.path),
                Err(e) => tracing::warn!("cannot remove {}, made by the failed restore: {e}", n.path),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_a_directory_and_a_name() {
        assert_eq!(split("/tmp/x").ok(), Some(("/tmp", "x")));
        assert_eq!(split("/x").ok(), Some(("/", "x")));
        assert!(split("/tmp/").is_err() && split("/tmp/..").is_err() && split("x").is_err());
    }

    #[test]
    fn only_temporary_directories_of_the_host_are_allowed() -> Result<(), EngineError> {
        let me = std::process::id() as i32;
        // Our own /run and /dev/shm are the host's, not a container's: refused.
        for (path, ok) in [
            ("/tmp/x", true),
            ("/var/tmp/x", true),
            ("/etc/ld.so.preload", false),
            ("/root/x", false),
            ("/run/x", false),
            ("/dev/shm/x", false),
        ] {
            let dir = Dir::in_root(me, path)?;
            assert_eq!(allowed(me, &dir.fd, 12345).is_ok(), ok, "{path}");
        }
        Ok(())
    }

    #[test]
    fn under_tmp_a_directory_is_sticky_and_open_to_all_or_the_owners() -> Result<(), EngineError> {
        use std::os::unix::fs::PermissionsExt;
        let me = std::process::id() as i32;
        let uid = nix::unistd::geteuid().as_raw();
        let path = std::env::temp_dir().join(format!("migrate-hostfs-{me}"));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(crate::error::io_err("mkdir", &path))?;
        let probe = |mode: u32, owner: u32| -> Result<bool, EngineError> {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(crate::error::io_err("chmod", &path))?;
            let dir = Dir::in_root(me, &format!("{}/x", path.display()))?;
            Ok(allowed(me, &dir.fd, owner).is_ok())
        };
        let seen = [probe(0o755, uid), probe(0o755, uid + 1), probe(0o1777, uid + 1), probe(0o777, uid + 1)];
        let _ = std::fs::remove_dir_all(&path);
        // Ours: yes; another user's file in it: no; sticky and open to all: yes; open to
        // all but not sticky (anyone could swap the name): no.
        assert_eq!(seen.into_iter().collect::<Result<Vec<_>, _>>()?, [true, false, true, false]);
        Ok(())
    }
}
