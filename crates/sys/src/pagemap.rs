//! `/proc/PID/pagemap`: per-page entries (present, swapped, soft-dirty, PFN) and the
//! `PAGEMAP_SCAN` ioctl (Linux 6.7), which walks a range and returns runs of pages by
//! category — written since the last write-protect, present, file-backed, zero-PFN, …
//!
//! With `PM_SCAN_WP_MATCHING` the scan also write-protects the pages it reports, so one
//! ioctl both reads and resets the dirty set of a userfaultfd `WP_ASYNC` range (see
//! [`crate::uffd`]); `PM_SCAN_CHECK_WPASYNC` makes it fail with `EPERM` on a VMA not
//! registered that way instead of silently reporting nothing.
//!
//! Soft-dirty (`clear_refs` 4, then bit 55) is the older mechanism; it needs
//! `CONFIG_MEM_SOFT_DIRTY`. Without it `clear_refs` accepts "4" and does nothing, and bit
//! 55 is never set: only a write-then-check probe tells the two apart.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use linux_raw_sys::general as g;

/// Page categories of `PAGEMAP_SCAN` (`PAGE_IS_*`).
pub mod category {
    use linux_raw_sys::general as g;
    pub const WPALLOWED: u64 = g::PAGE_IS_WPALLOWED as u64;
    pub const WRITTEN: u64 = g::PAGE_IS_WRITTEN as u64;
    pub const FILE: u64 = g::PAGE_IS_FILE as u64;
    pub const PRESENT: u64 = g::PAGE_IS_PRESENT as u64;
    pub const SWAPPED: u64 = g::PAGE_IS_SWAPPED as u64;
    pub const PFNZERO: u64 = g::PAGE_IS_PFNZERO as u64;
    pub const HUGE: u64 = g::PAGE_IS_HUGE as u64;
    pub const SOFT_DIRTY: u64 = g::PAGE_IS_SOFT_DIRTY as u64;
    pub const GUARD: u64 = g::PAGE_IS_GUARD as u64;
}

/// `PAGEMAP_SCAN` flags (`PM_SCAN_*`).
pub mod scan_flags {
    use linux_raw_sys::general as g;
    /// Write-protect the pages that are reported.
    pub const WP_MATCHING: u64 = g::PM_SCAN_WP_MATCHING as u64;
    /// Fail (`EPERM`) on a VMA not registered with userfaultfd `WP_ASYNC`.
    pub const CHECK_WPASYNC: u64 = g::PM_SCAN_CHECK_WPASYNC as u64;
}

/// `_IOWR(type, nr, size)` of `asm-generic/ioctl.h`.
const fn iowr(ty: u8, nr: u8, size: usize) -> u32 {
    (3 << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

// Hand-written: linux-raw-sys 0.12 has `pm_scan_arg` but not the ioctl number, which
// `include/uapi/linux/fs.h` defines as `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u32 = iowr(b'f', 16, size_of::<g::pm_scan_arg>());
const _: () = assert!(size_of::<g::pm_scan_arg>() == 96);
const _: () = assert!(size_of::<g::page_region>() == 24);
const _: () = assert!(PAGEMAP_SCAN == 0xc060_6610);

/// Bits of a `/proc/PID/pagemap` entry (Documentation/admin-guide/mm/pagemap.rst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapEntry(pub u64);

impl PagemapEntry {
    pub fn present(self) -> bool {
        self.0 & (1 << 63) != 0
    }
    pub fn swapped(self) -> bool {
        self.0 & (1 << 62) != 0
    }
    /// File-backed page or shared anonymous page.
    pub fn file_or_shared(self) -> bool {
        self.0 & (1 << 61) != 0
    }
    pub fn uffd_wp(self) -> bool {
        self.0 & (1 << 57) != 0
    }
    /// Mapped exclusively by one process.
    pub fn exclusive(self) -> bool {
        self.0 & (1 << 56) != 0
    }
    pub fn soft_dirty(self) -> bool {
        self.0 & (1 << 55) != 0
    }
    /// The page frame number of a present page (0 without `CAP_SYS_ADMIN`).
    pub fn pfn(self) -> Option<u64> {
        self.present().then_some(self.0 & ((1 << 55) - 1))
    }
}

/// One run of pages reported by `PAGEMAP_SCAN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    /// The `category` bits of the run, masked by the request's `return_mask`.
    pub categories: u64,
}

/// The arguments of a `PAGEMAP_SCAN` (see `struct pm_scan_arg`). A page matches when
/// `(categories ^ category_inverted) & category_mask == category_mask` and, if
/// `category_anyof_mask` is non-zero, at least one of its bits is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanRequest {
    pub start: u64,
    pub end: u64,
    /// [`scan_flags`] bits.
    pub flags: u64,
    /// Stop after this many matching pages (0: no limit).
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// The answer of one `PAGEMAP_SCAN` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    pub regions: Vec<PageRegion>,
    /// Where the walk stopped: `end` when it covered the whole range.
    pub walk_end: u64,
}

/// A failed pagemap operation.
#[derive(Debug, thiserror::Error)]
pub enum PagemapError {
    #[error("open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("read the pagemap entry of {addr:#x} in {path}")]
    Read {
        path: PathBuf,
        addr: u64,
        #[source]
        source: io::Error,
    },
    #[error("PAGEMAP_SCAN {start:#x}..{end:#x} of {path}")]
    Scan {
        path: PathBuf,
        start: u64,
        end: u64,
        #[source]
        source: io::Error,
    },
    #[error("write to {path}")]
    ClearRefs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl PagemapError {
    /// The errno, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            PagemapError::Open { source, .. }
            | PagemapError::Read { source, .. }
            | PagemapError::Scan { source, .. }
            | PagemapError::ClearRefs { source, .. } => source.raw_os_error(),
        }
    }
}

fn proc_path(pid: Option<i32>, file: &str) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/{file}")),
        None => PathBuf::from(format!("/proc/self/{file}")),
    }
}

/// An open `/proc/PID/pagemap`.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
    path: PathBuf,
}

impl Pagemap {
    /// Opens the pagemap of `pid`, or of this process for `None`.
    pub fn open(pid: Option<i32>) -> Result<Pagemap, PagemapError> {
        let path = proc_path(pid, "pagemap");
        let file = File::open(&path).map_err(|source| PagemapError::Open { path: path.clone(), source })?;
        Ok(Pagemap { file, path })
    }

    /// The entry of the page holding `addr`.
    pub fn entry(&self, addr: u64) -> Result<PagemapEntry, PagemapError> {
        let page = crate::mem::page_size() as u64;
        let mut buf = [0u8; 8];
        self.file.read_exact_at(&mut buf, addr / page * 8).map_err(|source| PagemapError::Read {
            path: self.path.clone(),
            addr,
            source,
        })?;
        Ok(PagemapEntry(u64::from_ne_bytes(buf)))
    }

    /// The raw entries of the pages of `start..end` (page-aligned), into `out` (cleared).
    pub fn entries(&self, start: u64, end: u64, out: &mut Vec<u64>) -> Result<(), PagemapError> {
        let page = crate::mem::page_size() as u64;
        let n = usize::try_from((end.saturating_sub(start)) / page).unwrap_or(0);
        let mut raw = vec![0u8; n * 8];
        self.file.read_exact_at(&mut raw, start / page * 8).map_err(|source| PagemapError::Read {
            path: self.path.clone(),
            addr: start,
            source,
        })?;
        out.clear();
        out.extend(
            raw.chunks_exact(8).map(|e| u64::from_ne_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]])),
        );
        Ok(())
    }

    /// The runs of `start..end` whose pages hold something (present or swapped): one
    /// `PAGEMAP_SCAN` walk, which skips empty page tables, where reading every entry would
    /// cost 8 bytes per page of a reservation however large.
    pub fn populated(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>, PagemapError> {
        let held = category::PRESENT | category::SWAPPED;
        let req = ScanRequest {
            start,
            end,
            category_anyof_mask: held,
            return_mask: held,
            ..ScanRequest::default()
        };
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for r in self.scan_all(&req)? {
            // The kernel splits runs by category; adjacent ones are one range here.
            match runs.last_mut() {
                Some(last) if last.1 == r.start => last.1 = r.end,
                _ => runs.push((r.start, r.end)),
            }
        }
        Ok(runs)
    }

    /// One `PAGEMAP_SCAN` call that returns at most `max_regions` runs. The walk stops
    /// early when they are used up; continue from `walk_end` (or use [`Self::scan_all`]).
    pub fn scan(&self, req: &ScanRequest, max_regions: usize) -> Result<ScanOutcome, PagemapError> {
        let mut regions: Vec<g::page_region> = Vec::with_capacity(max_regions.max(1));
        let mut arg = g::pm_scan_arg {
            size: size_of::<g::pm_scan_arg>() as u64,
            flags: req.flags,
            start: req.start,
            end: req.end,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.capacity() as u64,
            max_pages: req.max_pages,
            category_inverted: req.category_inverted,
            category_mask: req.category_mask,
            category_anyof_mask: req.category_anyof_mask,
            return_mask: req.return_mask,
        };
        let err =
            |source| PagemapError::Scan { path: self.path.clone(), start: req.start, end: req.end, source };
        // SAFETY: `arg` is a live `pm_scan_arg` whose `size` says so; `vec` points to
        // `vec_len` writable (uninitialized) `page_region`s of `regions`, which outlives the
        // call. The kernel writes at most `vec_len` of them and `walk_end` in `arg`. The
        // scanned range belongs to the pagemap's process and is never dereferenced here.
        let ret = unsafe {
            libc::ioctl(self.file.as_raw_fd(), PAGEMAP_SCAN as libc::c_ulong, &mut arg as *mut g::pm_scan_arg)
        };
        if ret < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        let n = usize::try_from(ret).unwrap_or(0).min(regions.capacity());
        // SAFETY: the kernel initialized the first `ret` entries (it returns how many it
        // filled), and `n` never exceeds the capacity.
        unsafe { regions.set_len(n) };
        Ok(ScanOutcome {
            regions: regions
                .iter()
                .map(|r| PageRegion { start: r.start, end: r.end, categories: r.categories })
                .collect(),
            walk_end: arg.walk_end,
        })
    }

    /// Scans `req.start..req.end` completely, in calls of up to 512 runs. With
    /// `max_pages` set, stops once that many pages were reported.
    pub fn scan_all(&self, req: &ScanRequest) -> Result<Vec<PageRegion>, PagemapError> {
        let page = crate::mem::page_size() as u64;
        let mut out = Vec::new();
        let mut next = *req;
        let mut reported = 0u64;
        loop {
            let got = self.scan(&next, 512)?;
            reported += got.regions.iter().map(|r| (r.end - r.start) / page).sum::<u64>();
            out.extend(got.regions);
            let limit_hit = req.max_pages != 0 && reported >= req.max_pages;
            if got.walk_end >= req.end || got.walk_end <= next.start || limit_hit {
                return Ok(out);
            }
            next.start = got.walk_end;
            if req.max_pages != 0 {
                next.max_pages = req.max_pages - reported;
            }
        }
    }
}

/// Writes "4" to `/proc/PID/clear_refs` (this process for `None`): clears the soft-dirty
/// bit of every page of the process. Does nothing, without an error, on kernels built
/// without `CONFIG_MEM_SOFT_DIRTY`.
pub fn clear_soft_dirty(pid: Option<i32>) -> Result<(), PagemapError> {
    let path = proc_path(pid, "clear_refs");
    std::fs::write(&path, "4").map_err(|source| PagemapError::ClearRefs { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{AnonMapping, page_size};
    use crate::uffd::{Userfaultfd, feature, mode};

    /// `clear_refs` write-protects every page of the process where soft-dirty exists:
    /// keep it apart from the uffd-wp test.
    static PAGE_TABLES: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn ioctl_number() {
        assert_eq!(PAGEMAP_SCAN, 0xc0606610);
    }

    #[test]
    fn entries_of_present_and_absent_pages() -> Result<(), Box<dyn std::error::Error>> {
        let mut m = AnonMapping::new(2 * page_size())?;
        m.as_mut_slice()[0] = 1;
        let pm = Pagemap::open(None)?;
        let e = pm.entry(m.addr())?;
        assert!(e.present() && !e.swapped() && !e.file_or_shared());
        assert!(e.pfn().is_some());
        assert!(!pm.entry(m.addr() + page_size() as u64)?.present());
        Ok(())
    }

    #[test]
    fn scan_present_pages() -> Result<(), Box<dyn std::error::Error>> {
        let page = page_size() as u64;
        let mut m = AnonMapping::new(8 * page_size())?;
        for i in [1usize, 2, 5] {
            m.as_mut_slice()[i * page_size()] = 1;
        }
        let pm = Pagemap::open(None)?;
        let req = ScanRequest {
            start: m.addr(),
            end: m.addr() + m.len() as u64,
            category_mask: category::PRESENT,
            return_mask: category::PRESENT,
            ..ScanRequest::default()
        };
        let got = pm.scan_all(&req)?;
        let runs: Vec<(u64, u64)> =
            got.iter().map(|r| ((r.start - m.addr()) / page, (r.end - m.addr()) / page)).collect();
        assert_eq!(runs, vec![(1, 3), (5, 6)]);
        // One region at a time: the walk stops after the first run and resumes from there.
        let first = pm.scan(&req, 1)?;
        assert_eq!(first.regions.len(), 1);
        assert!(first.walk_end < req.end);
        Ok(())
    }

    /// The dirty-tracking sequence of design §4, on this process: exactly the written
    /// pages are reported, then none.
    #[test]
    fn uffd_wp_async_dirty_tracking() -> Result<(), Box<dyn std::error::Error>> {
        let _serial = PAGE_TABLES.lock().unwrap_or_else(|p| p.into_inner());
        let page = page_size() as u64;
        let avail = Userfaultfd::available_features(false)?;
        if avail & feature::WP_ASYNC == 0 {
            println!("SKIP: no UFFD_FEATURE_WP_ASYNC on this kernel (Linux < 6.7)");
            return Ok(());
        }
        let uffd = Userfaultfd::open(false)?;
        uffd.api(feature::WP_ASYNC | (avail & feature::WP_UNPOPULATED))?;
        let mut m = AnonMapping::new(64 * page_size())?;
        m.as_mut_slice().iter_mut().step_by(page_size()).for_each(|b| *b = 1);
        let len = m.len() as u64;
        uffd.register(m.addr(), len, mode::WP)?;
        uffd.write_protect(m.addr(), len, true)?;
        let written = [0usize, 3, 7, 8, 9, 40, 63];
        for &i in &written {
            m.as_mut_slice()[i * page_size() + 17] = 0xaa;
        }
        let pm = Pagemap::open(None)?;
        let req = ScanRequest {
            start: m.addr(),
            end: m.addr() + len,
            flags: scan_flags::WP_MATCHING | scan_flags::CHECK_WPASYNC,
            category_mask: category::WRITTEN,
            return_mask: category::WRITTEN,
            ..ScanRequest::default()
        };
        let mut pages = Vec::new();
        for r in pm.scan_all(&req)? {
            assert_eq!(r.categories, category::WRITTEN);
            pages.extend((r.start..r.end).step_by(page as usize).map(|a| ((a - m.addr()) / page) as usize));
        }
        assert_eq!(pages, written);
        assert!(pm.scan_all(&req)?.is_empty(), "a rescan reports pages again");
        // A write after the scan is seen by the next one.
        m.as_mut_slice()[5 * page_size()] = 2;
        let again = pm.scan_all(&req)?;
        assert_eq!(
            again,
            vec![PageRegion {
                start: m.addr() + 5 * page,
                end: m.addr() + 6 * page,
                categories: category::WRITTEN
            }]
        );
        uffd.unregister(m.addr(), len)?;
        // CHECK_WPASYNC refuses a range that is not registered.
        let err = pm.scan(&req, 16).err().ok_or("scan of an unregistered range succeeded")?;
        assert_eq!(err.errno(), Some(libc::EPERM));
        Ok(())
    }

    #[test]
    fn soft_dirty_probe_runs() -> Result<(), Box<dyn std::error::Error>> {
        let _serial = PAGE_TABLES.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = AnonMapping::new(page_size())?;
        m.as_mut_slice()[0] = 1;
        clear_soft_dirty(None)?;
        m.as_mut_slice()[0] = 2;
        let e = Pagemap::open(None)?.entry(m.addr())?;
        assert!(e.present());
        println!("soft-dirty bit after a write: {} (CONFIG_MEM_SOFT_DIRTY)", e.soft_dirty());
        Ok(())
    }
}
