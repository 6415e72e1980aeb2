//! Dirty-page tracking for pre-copy: userfaultfd async write-protect + `PAGEMAP_SCAN`
//! (preferred), soft-dirty bits (older kernels), page digests (always, the fallback).

use migrate_sys::mem::{AnonMapping, page_size};
use migrate_sys::pagemap::{self, Pagemap, ScanRequest, category, scan_flags};
use migrate_sys::uffd::{UffdError, Userfaultfd, feature, mode};

use super::{Finding, Status};

/// The pages the probe writes, out of [`PAGES`]: runs, single pages, first and last.
const WRITTEN: [usize; 7] = [0, 3, 7, 8, 9, 40, 63];
const PAGES: usize = 64;

/// `clear_refs` 4 write-protects every page of this process on kernels with soft-dirty:
/// the two probes never run at the same time (tests run probes side by side).
static PAGE_TABLES: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(super) fn uffd_wp() -> Finding {
    match try_uffd_wp() {
        Ok(detail) => Finding::ok("uffd-wp", "uffd write-protect + PAGEMAP_SCAN", detail),
        Err(detail) => Finding::bad(
            Status::Warn,
            "uffd-wp",
            "uffd write-protect + PAGEMAP_SCAN",
            detail,
            "Pre-copy rounds cannot ask the kernel which pages were written: they fall back to soft-dirty \
             bits if the kernel has them, else to digesting every page each round (more CPU, longer rounds, \
             longer downtime for busy containers).",
            "Use Linux 6.7+ built with CONFIG_USERFAULTFD and CONFIG_PTE_MARKER_UFFD_WP (x86_64, arm64), and \
             make sure no seccomp filter blocks userfaultfd.",
        ),
    }
}

/// Opens a userfaultfd, with `UFFD_USER_MODE_ONLY` if a plain one is refused (as with
/// `vm.unprivileged_userfaultfd = 0` without CAP_SYS_PTRACE). Returns the features
/// offered, and whether user-mode-only was needed.
fn open_uffd() -> Result<(Userfaultfd, u64, bool), UffdError> {
    let mut user_mode_only = false;
    let avail = match Userfaultfd::available_features(false) {
        Ok(f) => f,
        Err(e) if e.errno() == Some(libc::EPERM) => {
            user_mode_only = true;
            Userfaultfd::available_features(true)?
        }
        Err(e) => return Err(e),
    };
    Ok((Userfaultfd::open(user_mode_only)?, avail, user_mode_only))
}

fn try_uffd_wp() -> Result<String, String> {
    let _serial = PAGE_TABLES.lock().unwrap_or_else(|p| p.into_inner());
    let page = page_size() as u64;
    let (uffd, avail, user_mode_only) = open_uffd().map_err(|e| migrate_sys::error_chain(&e))?;
    if avail & feature::WP_ASYNC == 0 {
        return Err(format!(
            "userfaultfd offers features {avail:#x} without UFFD_FEATURE_WP_ASYNC (Linux < 6.7, or no \
             userfaultfd write-protect on this architecture)"
        ));
    }
    let wanted = feature::WP_ASYNC | (avail & (feature::WP_UNPOPULATED | feature::WP_HUGETLBFS_SHMEM));
    uffd.api(wanted).map_err(|e| migrate_sys::error_chain(&e))?;

    let mut mem = AnonMapping::new(PAGES * page_size()).map_err(|e| format!("mmap {PAGES} pages: {e}"))?;
    // Populate every page first, as a real target's pages are.
    mem.as_mut_slice().iter_mut().step_by(page_size()).for_each(|b| *b = 1);
    let (start, len) = (mem.addr(), mem.len() as u64);
    uffd.register(start, len, mode::WP).map_err(|e| migrate_sys::error_chain(&e))?;
    let registered = Registered { uffd: &uffd, start, len };
    uffd.write_protect(start, len, true).map_err(|e| migrate_sys::error_chain(&e))?;
    for &i in &WRITTEN {
        let slice = mem.as_mut_slice();
        slice[i * page_size() + 1] = std::hint::black_box(0x5a);
    }
    std::hint::black_box(mem.as_slice());

    let pm = Pagemap::open(None).map_err(|e| migrate_sys::error_chain(&e))?;
    let req = ScanRequest {
        start,
        end: start + len,
        flags: scan_flags::WP_MATCHING | scan_flags::CHECK_WPASYNC,
        category_mask: category::WRITTEN,
        return_mask: category::WRITTEN,
        ..ScanRequest::default()
    };
    let pages = |regions: Vec<pagemap::PageRegion>| -> Vec<usize> {
        regions
            .iter()
            .flat_map(|r| (r.start..r.end).step_by(page as usize))
            .map(|a| ((a - start) / page) as usize)
            .collect()
    };
    let first = pages(pm.scan_all(&req).map_err(|e| migrate_sys::error_chain(&e))?);
    if first != WRITTEN {
        return Err(format!("wrote pages {WRITTEN:?} of {PAGES}, PAGEMAP_SCAN reported {first:?}"));
    }
    let second = pages(pm.scan_all(&req).map_err(|e| migrate_sys::error_chain(&e))?);
    if !second.is_empty() {
        return Err(format!("a rescan without writes reported pages {second:?}"));
    }
    drop(registered);
    Ok(format!(
        "UFFD_FEATURE_WP_ASYNC{}{}: wrote {} of {PAGES} write-protected pages, PAGEMAP_SCAN reported exactly \
         those, then none on a rescan",
        if avail & feature::WP_UNPOPULATED != 0 { " + WP_UNPOPULATED" } else { "" },
        if user_mode_only { " (UFFD_USER_MODE_ONLY)" } else { "" },
        WRITTEN.len()
    ))
}

/// Unregisters the range when dropped (also on an early return).
struct Registered<'a> {
    uffd: &'a Userfaultfd,
    start: u64,
    len: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let _ = self.uffd.unregister(self.start, self.len);
    }
}

pub(super) fn soft_dirty() -> Finding {
    match try_soft_dirty() {
        Ok(true) => Finding::ok(
            "soft-dirty",
            "soft-dirty bits",
            "after clear_refs 4, a written page has bit 55 in /proc/self/pagemap",
        ),
        Ok(false) => Finding::bad(
            Status::Warn,
            "soft-dirty",
            "soft-dirty bits",
            "not available: after clear_refs 4, a written page has no soft-dirty bit (kernel without \
             CONFIG_MEM_SOFT_DIRTY)",
            "Only matters where userfaultfd write-protect is missing too: then pre-copy digests every page each \
             round.",
            "Nothing to do while uffd-wp works; otherwise use a kernel built with CONFIG_MEM_SOFT_DIRTY.",
        ),
        Err(detail) => Finding::bad(
            Status::Warn,
            "soft-dirty",
            "soft-dirty bits",
            detail,
            "Soft-dirty tracking cannot be used; uffd-wp or page digests are used instead.",
            "Check that /proc is mounted read-write.",
        ),
    }
}

/// Whether a page written after `clear_refs` 4 has its soft-dirty bit.
fn try_soft_dirty() -> Result<bool, String> {
    let _serial = PAGE_TABLES.lock().unwrap_or_else(|p| p.into_inner());
    let mut mem = AnonMapping::new(page_size()).map_err(|e| format!("mmap a page: {e}"))?;
    mem.as_mut_slice()[0] = 1;
    pagemap::clear_soft_dirty(None).map_err(|e| migrate_sys::error_chain(&e))?;
    mem.as_mut_slice()[0] = std::hint::black_box(2);
    std::hint::black_box(mem.as_slice());
    let entry =
        Pagemap::open(None).and_then(|pm| pm.entry(mem.addr())).map_err(|e| migrate_sys::error_chain(&e))?;
    if !entry.present() {
        return Err(format!("the written page at {:#x} is not present in /proc/self/pagemap", mem.addr()));
    }
    Ok(entry.soft_dirty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uffd_wp_reports_exactly_the_written_pages() {
        let f = uffd_wp();
        assert_eq!(f.status, Status::Ok, "{f:#?}");
        assert!(f.detail.contains("exactly"));
    }

    #[test]
    fn soft_dirty_is_a_warning_at_worst() {
        let f = soft_dirty();
        assert_ne!(f.status, Status::Fail, "{f:#?}");
    }
}
