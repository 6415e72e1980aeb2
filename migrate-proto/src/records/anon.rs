//! Records of the fds behind an anonymous inode (`anon_inode:[…]` links): eventfd, …

use serde::{Deserialize, Serialize};

/// An eventfd (`eventfd2`): its counter and whether it counts as a semaphore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFd {
    /// At most `u64::MAX - 1`: the kernel's ceiling.
    pub count: u64,
    /// `EFD_SEMAPHORE`: each read takes 1.
    pub semaphore: bool,
}
