//! Network namespaces as owned file descriptors, and the `/run/netns` registry.
//!
//! A [`NetNs`] holds an `OwnedFd` on an nsfs inode: the namespace lives as long as any fd,
//! bind mount or process refers to it, so an anonymous namespace made by a test dies with
//! its handle. Work *inside* a namespace happens on a short-lived std thread that
//! `setns`es into it ([`run_in`]): a namespace is a per-thread attribute, so the calling
//! thread (perhaps a tokio worker) never changes namespace, and the machine's own
//! namespace is never touched by accident.
//!
//! [`NetNs::register`] / [`NetNs::unregister`] do what `ip netns add` / `ip netns del` do
//! (iproute2 `ip/ipnetns.c`), so that `ip netns exec NAME …` works on what we create:
//! `/run/netns` is made a shared mount point (bound onto itself first if it is not one)
//! so that the bind mounts under it propagate to other mount namespaces; `NAME` is
//! created with `O_EXCL`; a thread unshares a new namespace and bind-mounts its
//! `/proc/thread-self/ns/net` on the file. Unregistering is `umount2(MNT_DETACH)` +
//! `unlink`.

use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::NetError;

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The calling thread's own network namespace (`/proc/self` would be the main thread's).
const THREAD_SELF_NS: &str = "/proc/thread-self/ns/net";

/// Serializes the mount dance on `/run/netns` between threads of this process, so that
/// two concurrent first registrations do not stack two bind mounts.
static REGISTRY: Mutex<()> = Mutex::new(());

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    inode: u64,
    label: String,
}

impl NetNs {
    /// The calling thread's network namespace.
    pub fn current() -> Result<NetNs, NetError> {
        NetNs::open_labeled(Path::new(THREAD_SELF_NS), "current".into())
    }

    /// Opens the namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`, …).
    pub fn open(path: &Path) -> Result<NetNs, NetError> {
        NetNs::open_labeled(path, path.display().to_string())
    }

    /// Opens the namespace registered as `name` in `/run/netns`.
    pub fn open_registered(name: &str) -> Result<NetNs, NetError> {
        validate_ns_name(name)?;
        NetNs::open_labeled(&registered_path(name), name.to_string())
    }

    /// Creates a new namespace that no name refers to: it dies with the last handle.
    pub fn new_anonymous() -> Result<NetNs, NetError> {
        let fd = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("netns-new".into())
                .spawn_scoped(s, || -> Result<File, NetError> {
                    nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                        .map_err(|source| NetError::Unshare { source })?;
                    File::open(THREAD_SELF_NS)
                        .map_err(|source| NetError::Open { path: THREAD_SELF_NS.into(), source })
                })
                .map_err(|source| NetError::Thread { ns: "(new)".into(), source })?
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })?;
        let inode = inode_of(&fd, Path::new(THREAD_SELF_NS))?;
        Ok(NetNs { fd: fd.into(), inode, label: format!("anonymous:{inode}") })
    }

    /// Creates a new namespace and registers it as `/run/netns/NAME`, like
    /// `ip netns add NAME`. Fails if the name is taken.
    pub fn register(name: &str) -> Result<NetNs, NetError> {
        validate_ns_name(name)?;
        let _guard = REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let step_err = |step| move |source| NetError::Register { name: name.to_string(), step, source };
        fs::create_dir_all(NETNS_RUN_DIR).map_err(step_err("create /run/netns"))?;
        make_shared_mount_point().map_err(step_err("make /run/netns a shared mount point"))?;
        let path = registered_path(name);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o000)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(step_err("create the mount point file"))?;
        let bound = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("netns-add".into())
                .spawn_scoped(s, || -> Result<(), NetError> {
                    nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                        .map_err(|e| step_err("create the namespace")(e.into()))?;
                    nix::mount::mount(
                        Some(THREAD_SELF_NS),
                        &path,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(|e| step_err("bind-mount the namespace")(e.into()))
                })
                .map_err(|source| NetError::Thread { ns: name.to_string(), source })?
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        if let Err(err) = bound {
            let _ = fs::remove_file(&path);
            return Err(err);
        }
        NetNs::open_labeled(&path, name.to_string())
    }

    /// Removes the name `name` like `ip netns del NAME`: the namespace itself lives on
    /// while a process or an fd still refers to it. Returns `false` if no such name was
    /// registered.
    pub fn unregister(name: &str) -> Result<bool, NetError> {
        validate_ns_name(name)?;
        let _guard = REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = registered_path(name);
        if fs::symlink_metadata(&path).is_err() {
            return Ok(false);
        }
        let step_err = |step| move |source| NetError::Unregister { name: name.to_string(), step, source };
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (a half-made registration); remove the file anyway.
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(e) => return Err(step_err("unmount")(e.into())),
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(step_err("remove the mount point file")(e)),
        }
    }

    /// The names registered in `/run/netns`, sorted.
    pub fn registered_names() -> Result<Vec<String>, NetError> {
        let entries = match fs::read_dir(NETNS_RUN_DIR) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(NetError::List { path: NETNS_RUN_DIR.into(), source }),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| NetError::List { path: NETNS_RUN_DIR.into(), source })?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Whether `name` is registered in `/run/netns`.
    pub fn is_registered(name: &str) -> bool {
        validate_ns_name(name).is_ok() && registered_path(name).exists()
    }

    /// The nsfs inode number: two handles refer to the same namespace iff equal.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// How errors and logs name this namespace.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A second handle on the same namespace.
    pub fn try_clone(&self) -> Result<NetNs, NetError> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|source| NetError::Open { path: self.label.clone().into(), source })?;
        Ok(NetNs { fd, inode: self.inode, label: self.label.clone() })
    }

    fn open_labeled(path: &Path, label: String) -> Result<NetNs, NetError> {
        let file = File::open(path).map_err(|source| NetError::Open { path: path.to_path_buf(), source })?;
        let inode = inode_of(&file, path)?;
        Ok(NetNs { fd: file.into(), inode, label })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `/run/netns/NAME`.
pub fn registered_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// The nsfs inode of the network namespace of process `pid`, or `None` if the process is
/// gone, a zombie (its namespaces are already released) or not ours to inspect.
pub fn netns_inode_of_pid(pid: i32) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/net")).ok().map(|m| m.ino())
}

/// Runs `f` on a new thread inside `ns` and returns its result. A panic in `f` is
/// propagated to the caller.
///
/// The thread checks that it really is in `ns` after `setns`, and does not run `f` if it
/// is not: whatever `f` does must never land in the caller's namespace instead.
pub fn run_in<T, F>(ns: &NetNs, f: F) -> Result<T, NetError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(s, || {
                enter(ns)?;
                Ok(f())
            })
            .map_err(|source| NetError::Thread { ns: ns.label.clone(), source })?
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Moves the calling thread into `ns` and checks that it arrived.
fn enter(ns: &NetNs) -> Result<(), NetError> {
    nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|source| NetError::Enter { ns: ns.label.clone(), source })?;
    let found = fs::metadata(THREAD_SELF_NS)
        .map_err(|source| NetError::Open { path: THREAD_SELF_NS.into(), source })?
        .ino();
    if found != ns.inode {
        return Err(NetError::WrongNamespace { ns: ns.label.clone(), expected: ns.inode, found });
    }
    Ok(())
}

fn inode_of(file: &File, path: &Path) -> Result<u64, NetError> {
    Ok(file.metadata().map_err(|source| NetError::Open { path: path.to_path_buf(), source })?.ino())
}

/// `mount --make-shared /run/netns`, binding it onto itself first if it is not a mount
/// point yet (EINVAL), exactly as iproute2 does.
fn make_shared_mount_point() -> std::io::Result<()> {
    let shared = || {
        nix::mount::mount(
            Some("none"),
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            nix::mount::mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            Ok(shared()?)
        }
        Err(e) => Err(e.into()),
    }
}

/// A name `ip netns` would accept: a single path component.
fn validate_ns_name(name: &str) -> Result<(), NetError> {
    let invalid =
        |reason| Err(NetError::InvalidName { what: "network namespace", name: name.into(), reason });
    if name.is_empty() {
        return invalid("empty");
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return invalid("must be a single path component");
    }
    if name.len() > 255 {
        return invalid("longer than 255 bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_names() {
        assert!(validate_ns_name("host-a").is_ok());
        assert!(validate_ns_name("").is_err());
        assert!(validate_ns_name("..").is_err());
        assert!(validate_ns_name("a/b").is_err());
    }
}
