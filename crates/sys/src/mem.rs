//! Memory: anonymous mappings owned by this process, and another process's memory read
//! and written through `process_vm_readv`/`process_vm_writev`.
//!
//! An address in another process is a [`RemoteAddr`]: a number that is never turned into
//! a local pointer. Reads and writes of remote memory are safe because the kernel copies
//! the bytes and checks the remote range; only our own buffers are ever dereferenced.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::ptr::NonNull;

use nix::sys::uio::RemoteIoVec;
use nix::unistd::Pid;

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// A private anonymous read-write mapping of this process, unmapped on drop.
#[derive(Debug)]
pub struct AnonMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned exclusively by this value; moving the owner
// to another thread moves that ownership with it.
unsafe impl Send for AnonMapping {}
// SAFETY: shared access only hands out `&[u8]`; mutation needs `&mut self`.
unsafe impl Sync for AnonMapping {}

impl AnonMapping {
    /// Maps `len` bytes (rounded up to whole pages) of zeroed private anonymous memory.
    pub fn new(len: usize) -> io::Result<AnonMapping> {
        let page = page_size();
        let len = len
            .checked_next_multiple_of(page)
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("cannot map {len} bytes")))?;
        // SAFETY: a new anonymous mapping at an address of the kernel's choosing: it
        // overlaps nothing that exists, so no live Rust object is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned address 0"))?;
        Ok(AnonMapping { ptr, len })
    }

    /// The start address (page-aligned).
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The length in bytes (whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapped bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is a live read-write mapping owned by `self` for as long
        // as the borrow lasts; anonymous memory is always initialized (zero-filled).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range `new` mapped; no borrow of it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// An address in another process's address space. Never dereferenced here.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RemoteAddr(pub u64);

impl fmt::Debug for RemoteAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for RemoteAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A failed read or write of another process's memory.
#[derive(Debug, thiserror::Error)]
#[error("{op} {len} bytes at {addr} in pid {pid}")]
pub struct RemoteMemError {
    pub op: &'static str,
    pub pid: i32,
    pub addr: RemoteAddr,
    pub len: usize,
    #[source]
    pub source: io::Error,
}

impl RemoteMemError {
    /// The process no longer exists (ESRCH): it died, it was not our failure.
    pub fn is_gone(&self) -> bool {
        self.source.raw_os_error() == Some(libc::ESRCH)
    }
}

fn remote_iov(addr: RemoteAddr, len: usize) -> io::Result<RemoteIoVec> {
    let base = usize::try_from(addr.0).map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))?;
    Ok(RemoteIoVec { base, len })
}

/// Reads `buf.len()` bytes at `addr` in process `pid` (`process_vm_readv`).
///
/// Returns how many bytes were read: fewer than asked when the range runs into an
/// unmapped page (the read stops there).
pub fn read_remote(pid: i32, addr: RemoteAddr, buf: &mut [u8]) -> Result<usize, RemoteMemError> {
    let len = buf.len();
    let err = |source| RemoteMemError { op: "read", pid, addr, len, source };
    let remote = [remote_iov(addr, len).map_err(err)?];
    nix::sys::uio::process_vm_readv(Pid::from_raw(pid), &mut [IoSliceMut::new(buf)], &remote)
        .map_err(|e| err(e.into()))
}

/// Writes `buf` at `addr` in process `pid` (`process_vm_writev`); returns the bytes
/// written (fewer on an unmapped or read-only page: use `/proc/PID/mem` for those).
pub fn write_remote(pid: i32, addr: RemoteAddr, buf: &[u8]) -> Result<usize, RemoteMemError> {
    let len = buf.len();
    let err = |source| RemoteMemError { op: "write", pid, addr, len, source };
    let remote = [remote_iov(addr, len).map_err(err)?];
    nix::sys::uio::process_vm_writev(Pid::from_raw(pid), &[IoSlice::new(buf)], &remote)
        .map_err(|e| err(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anon_mapping_is_zeroed_and_writable() -> io::Result<()> {
        let mut m = AnonMapping::new(3 * page_size() - 1)?;
        assert_eq!(m.len(), 3 * page_size());
        assert_eq!(m.addr() % page_size() as u64, 0);
        assert!(m.as_slice().iter().all(|&b| b == 0));
        m.as_mut_slice()[page_size()] = 7;
        assert_eq!(m.as_slice()[page_size()], 7);
        Ok(())
    }

    #[test]
    fn read_and_write_own_memory_remotely() -> Result<(), Box<dyn std::error::Error>> {
        let mut m = AnonMapping::new(page_size())?;
        m.as_mut_slice()[..5].copy_from_slice(b"hello");
        let me = std::process::id() as i32;
        let mut buf = [0u8; 5];
        assert_eq!(read_remote(me, RemoteAddr(m.addr()), &mut buf)?, 5);
        assert_eq!(&buf, b"hello");
        assert_eq!(write_remote(me, RemoteAddr(m.addr() + 1), b"ELL")?, 3);
        assert_eq!(&m.as_slice()[..5], b"hELLo");
        let err = read_remote(me, RemoteAddr(0), &mut buf).err().ok_or("read of address 0 succeeded")?;
        assert_eq!(err.source.raw_os_error(), Some(libc::EFAULT));
        assert!(!err.is_gone());
        Ok(())
    }
}
