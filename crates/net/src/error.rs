//! The one error type of `migrate-net`.
//!
//! Every variant names the namespace (by its label: a registered name, a path, `pid N`
//! or an anonymous inode) and, where there is one, the link or address that failed, so a
//! message read far from the call site still says what was being done where.

use std::path::PathBuf;

use nix::errno::Errno;

/// An error of a namespace or netlink operation.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A namespace file could not be opened or stat'ed.
    #[error("open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `unshare(CLONE_NEWNET)` failed.
    #[error("create a network namespace")]
    Unshare {
        #[source]
        source: Errno,
    },
    /// `setns` into a namespace failed.
    #[error("enter network namespace {ns}")]
    Enter {
        ns: String,
        #[source]
        source: Errno,
    },
    /// After `setns`, the thread is not where it should be (a kernel or logic error: we
    /// refuse to touch whatever namespace the thread is in instead).
    #[error("entered network namespace {ns} (inode {expected}) but the thread is in inode {found}")]
    WrongNamespace { ns: String, expected: u64, found: u64 },
    /// A step of `NetNs::register` failed (the file it created has been removed).
    #[error("register network namespace {name}: {step}")]
    Register {
        name: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A step of `NetNs::unregister` failed.
    #[error("unregister network namespace {name}: {step}")]
    Unregister {
        name: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Listing `/run/netns` failed.
    #[error("list registered network namespaces in {path}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A namespace or interface name the kernel (or `ip`) would refuse.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName { what: &'static str, name: String, reason: &'static str },
    /// An argument out of range (prefix length, …).
    #[error("invalid {what}: {value}")]
    InvalidArgument { what: &'static str, value: String },
    /// The helper thread that runs in a namespace could not be started.
    #[error("start a thread for network namespace {ns}")]
    Thread {
        ns: String,
        #[source]
        source: std::io::Error,
    },
    /// The per-thread tokio runtime could not be built.
    #[error("start a tokio runtime for network namespace {ns}")]
    Runtime {
        ns: String,
        #[source]
        source: std::io::Error,
    },
    /// The rtnetlink socket could not be opened.
    #[error("open a netlink socket in network namespace {ns}")]
    Socket {
        ns: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a netlink request.
    #[error("{op} {link} in network namespace {ns}")]
    Netlink {
        op: &'static str,
        link: String,
        ns: String,
        /// Boxed: an rtnetlink error can hold a whole netlink message.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// A link that must exist does not.
    #[error("no link {link} in network namespace {ns}")]
    NoSuchLink { link: String, ns: String },
    /// A link that must not exist yet does.
    #[error("link {link} already exists in network namespace {ns}")]
    LinkExists { link: String, ns: String },
    /// An operation failed and undoing its partial work failed too; `failure` is what
    /// went wrong first, `cleanup` what went wrong while undoing it.
    #[error("undoing a failed operation also failed: {cleanup}")]
    Rollback {
        #[source]
        failure: Box<NetError>,
        cleanup: Box<NetError>,
    },
}

impl NetError {
    /// The errno behind this error, if the kernel gave one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            NetError::Unshare { source } | NetError::Enter { source, .. } => Some(*source),
            NetError::Netlink { source, .. } => match source.as_ref() {
                rtnetlink::Error::NetlinkError(msg) => Some(Errno::from_raw(-msg.raw_code())),
                _ => None,
            },
            NetError::Open { source, .. }
            | NetError::Register { source, .. }
            | NetError::Unregister { source, .. }
            | NetError::List { source, .. }
            | NetError::Socket { source, .. } => source.raw_os_error().map(Errno::from_raw),
            NetError::Rollback { failure, .. } => failure.errno(),
            _ => None,
        }
    }
}
