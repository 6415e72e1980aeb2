//! userfaultfd: the write-protect half used for dirty-page tracking (design §4).
//!
//! The tracker registers a task's writable VMAs in `UFFDIO_REGISTER_MODE_WP` on a
//! userfaultfd opened with `UFFD_FEATURE_WP_ASYNC` (Linux 6.7): a write to a protected
//! page is then resolved by the kernel itself, which only clears the page's
//! write-protect bit, and `PAGEMAP_SCAN` (see [`crate::pagemap`]) reports and re-protects
//! the written pages. Nobody reads fault messages from the fd in that mode.
//!
//! Addresses here are numbers in the address space of the process that *created* the
//! fd, which need not be ours: a userfaultfd injected into a target and taken with
//! `pidfd_getfd` acts on the target's memory. They are never dereferenced locally.
//!
//! Every call is safe: the ioctls read and write only the small argument structs owned by
//! the call. Registering this process's own memory in a blocking mode (`MISSING`, or `WP`
//! without `WP_ASYNC`) could make a later access wait forever for a fault handler, which
//! is a hang, not memory unsafety.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use linux_raw_sys::general as g;
use linux_raw_sys::ioctl as ioc;

/// Feature bits for [`Userfaultfd::api`] (`UFFD_FEATURE_*`).
pub mod feature {
    use linux_raw_sys::general as g;
    pub const PAGEFAULT_FLAG_WP: u64 = g::UFFD_FEATURE_PAGEFAULT_FLAG_WP as u64;
    pub const EVENT_FORK: u64 = g::UFFD_FEATURE_EVENT_FORK as u64;
    pub const EVENT_REMAP: u64 = g::UFFD_FEATURE_EVENT_REMAP as u64;
    pub const EVENT_REMOVE: u64 = g::UFFD_FEATURE_EVENT_REMOVE as u64;
    pub const EVENT_UNMAP: u64 = g::UFFD_FEATURE_EVENT_UNMAP as u64;
    pub const THREAD_ID: u64 = g::UFFD_FEATURE_THREAD_ID as u64;
    pub const WP_HUGETLBFS_SHMEM: u64 = g::UFFD_FEATURE_WP_HUGETLBFS_SHMEM as u64;
    pub const WP_UNPOPULATED: u64 = g::UFFD_FEATURE_WP_UNPOPULATED as u64;
    pub const WP_ASYNC: u64 = g::UFFD_FEATURE_WP_ASYNC as u64;
    pub const MOVE: u64 = g::UFFD_FEATURE_MOVE as u64;
}

/// Registration modes for [`Userfaultfd::register`] (`UFFDIO_REGISTER_MODE_*`).
pub mod mode {
    use linux_raw_sys::general as g;
    pub const MISSING: u64 = g::UFFDIO_REGISTER_MODE_MISSING as u64;
    pub const WP: u64 = g::UFFDIO_REGISTER_MODE_WP as u64;
    pub const MINOR: u64 = g::UFFDIO_REGISTER_MODE_MINOR as u64;
}

// Hand-written: linux-raw-sys 0.12 lacks them because the uapi header defines them as
// `((__u64)1<<0)` expressions, which bindgen does not turn into constants
// (include/uapi/linux/userfaultfd.h).
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

/// A failed userfaultfd operation.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    #[error("userfaultfd(flags {flags:#x})")]
    Open {
        flags: u32,
        #[source]
        source: io::Error,
    },
    #[error("UFFDIO_API requesting features {requested:#x}")]
    Api {
        requested: u64,
        #[source]
        source: io::Error,
    },
    #[error("UFFDIO_API accepted but does not offer features {missing:#x}")]
    MissingFeatures { missing: u64 },
    #[error("{op} {start:#x}..{:#x}", .start.saturating_add(*.len))]
    Range {
        op: &'static str,
        start: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
}

impl UffdError {
    /// The errno, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            UffdError::Open { source, .. }
            | UffdError::Api { source, .. }
            | UffdError::Range { source, .. } => source.raw_os_error(),
            UffdError::MissingFeatures { .. } => None,
        }
    }
}

/// What `UFFDIO_API` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UffdApi {
    /// The features the kernel supports (not only those requested).
    pub features: u64,
    /// Bit `n` set: the ioctl `_UFFDIO_*` number `n` is available on the fd.
    pub ioctls: u64,
}

/// A userfaultfd file descriptor.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Userfaultfd> for OwnedFd {
    fn from(u: Userfaultfd) -> OwnedFd {
        u.fd
    }
}

fn ioctl<T>(fd: BorrowedFd<'_>, request: u32, arg: &mut T) -> io::Result<()> {
    // SAFETY: every caller passes the struct type that `request` is defined with (the
    // `_IOWR`/`_IOR` size of each UFFDIO_* number matches it); the kernel reads and writes
    // only within `*arg`, which lives for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::c_ulong, arg as *mut T) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

impl Userfaultfd {
    /// `userfaultfd(O_CLOEXEC | O_NONBLOCK [| UFFD_USER_MODE_ONLY])`.
    ///
    /// With `vm.unprivileged_userfaultfd = 0`, a caller without `CAP_SYS_PTRACE` gets
    /// `EPERM` unless it asks for `user_mode_only` (faults raised by the kernel on the
    /// task's behalf, e.g. `read()` into the range, are then not *reported* — but write
    /// protection in `WP_ASYNC` mode is resolved without reports anyway).
    pub fn open(user_mode_only: bool) -> Result<Userfaultfd, UffdError> {
        let mut flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u32;
        if user_mode_only {
            flags |= g::UFFD_USER_MODE_ONLY;
        }
        // SAFETY: plain syscall with integer flags; it returns a new fd or -1.
        let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, flags as libc::c_int) };
        if ret < 0 {
            return Err(UffdError::Open { flags, source: io::Error::last_os_error() });
        }
        // SAFETY: `ret` is a new descriptor owned by nobody else.
        Ok(Userfaultfd { fd: unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) } })
    }

    /// The features this kernel offers, asked on a throwaway fd (an fd accepts
    /// `UFFDIO_API` only once, so the real fd cannot be asked first).
    pub fn available_features(user_mode_only: bool) -> Result<u64, UffdError> {
        Ok(Userfaultfd::open(user_mode_only)?.api(0)?.features)
    }

    /// `UFFDIO_API`: the handshake, enabling `features`. Must be the first ioctl.
    pub fn api(&self, features: u64) -> Result<UffdApi, UffdError> {
        let mut arg = g::uffdio_api { api: u64::from(g::UFFD_API), features, ioctls: 0 };
        ioctl(self.fd.as_fd(), ioc::UFFDIO_API, &mut arg)
            .map_err(|source| UffdError::Api { requested: features, source })?;
        let missing = features & !arg.features;
        if missing != 0 {
            return Err(UffdError::MissingFeatures { missing });
        }
        Ok(UffdApi { features: arg.features, ioctls: arg.ioctls })
    }

    /// `UFFDIO_REGISTER` of `start..start+len` (page-aligned) in `mode` ([`mode`] bits);
    /// returns the ioctls available on the range.
    pub fn register(&self, start: u64, len: u64, mode: u64) -> Result<u64, UffdError> {
        let mut arg = g::uffdio_register { range: g::uffdio_range { start, len }, mode, ioctls: 0 };
        ioctl(self.fd.as_fd(), ioc::UFFDIO_REGISTER, &mut arg).map_err(|source| UffdError::Range {
            op: "UFFDIO_REGISTER",
            start,
            len,
            source,
        })?;
        Ok(arg.ioctls)
    }

    /// `UFFDIO_UNREGISTER` of `start..start+len`.
    pub fn unregister(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut arg = g::uffdio_range { start, len };
        ioctl(self.fd.as_fd(), ioc::UFFDIO_UNREGISTER, &mut arg).map_err(|source| UffdError::Range {
            op: "UFFDIO_UNREGISTER",
            start,
            len,
            source,
        })
    }

    /// `UFFDIO_WRITEPROTECT`: sets (`protect`) or clears write protection on
    /// `start..start+len`, which must be registered in [`mode::WP`].
    pub fn write_protect(&self, start: u64, len: u64, protect: bool) -> Result<(), UffdError> {
        let mut arg = g::uffdio_writeprotect {
            range: g::uffdio_range { start, len },
            mode: if protect { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
        };
        ioctl(self.fd.as_fd(), ioc::UFFDIO_WRITEPROTECT, &mut arg).map_err(|source| UffdError::Range {
            op: "UFFDIO_WRITEPROTECT",
            start,
            len,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{AnonMapping, page_size};

    #[test]
    fn api_register_writeprotect() -> Result<(), Box<dyn std::error::Error>> {
        let avail = Userfaultfd::available_features(false)?;
        if avail & feature::WP_ASYNC == 0 {
            println!("SKIP: this kernel has no UFFD_FEATURE_WP_ASYNC (Linux < 6.7)");
            return Ok(());
        }
        let uffd = Userfaultfd::open(false)?;
        let api = uffd.api(feature::WP_ASYNC)?;
        assert_ne!(api.features & feature::WP_ASYNC, 0);
        // A second handshake on the same fd is refused.
        assert!(uffd.api(feature::WP_ASYNC).is_err());
        let mut m = AnonMapping::new(4 * page_size())?;
        let ioctls = uffd.register(m.addr(), m.len() as u64, mode::WP)?;
        assert_ne!(ioctls & (1 << g::_UFFDIO_WRITEPROTECT), 0);
        uffd.write_protect(m.addr(), m.len() as u64, true)?;
        // WP_ASYNC: the write completes without anybody reading the fd.
        m.as_mut_slice()[0] = 1;
        uffd.write_protect(m.addr(), m.len() as u64, false)?;
        uffd.unregister(m.addr(), m.len() as u64)?;
        let err = uffd.register(1, 10, mode::WP).err().ok_or("unaligned register succeeded")?;
        assert_eq!(err.errno(), Some(libc::EINVAL));
        Ok(())
    }
}
