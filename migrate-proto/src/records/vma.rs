//! What a VMA carries beyond its range, protection and backing: the `VmFlags` of
//! `/proc/PID/smaps` that user space can set and a restore sets again, the name user space
//! gave an anonymous mapping, and the process's `mlockall` state.
//!
//! Each mnemonic of the kernel's `show_smap_vma_flags` (fs/proc/task_mmu.c, 6.18) is
//! either carried ([`CARRIED`]), refused at checkpoint by the engine (userfaultfd
//! `um`/`uw`/`ui`, shadow stacks `ss`, device mappings `pf`/`io`/`mm`/`ar`/`de`, `sf`,
//! hugetlb `ht`), or follows from the rest of the record (`rd`/`wr`/`ex` the protection,
//! `sh`/`ms` a shared mapping with [`Vma::may_write`], `mr`/`me` what the
//! file's mount allows, `gd` [`Vma::growsdown`], `sd` soft-dirty, which
//! the kernel sets on every new VMA).

use crate::error::VmaProblem;
use crate::records::Vma;

/// The mnemonics a restore sets again, and how:
/// - `madvise`: `dc` DONTFORK, `dd` DONTDUMP, `wf` WIPEONFORK, `hg` HUGEPAGE,
///   `nh` NOHUGEPAGE (also what `MAP_STACK` gives), `mg` MERGEABLE, `sr` SEQUENTIAL,
///   `rr` RANDOM;
/// - `mlock2`: `lo` locked, `lf` with `MLOCK_ONFAULT`;
/// - `mmap` flags: `nr` MAP_NORESERVE, `dp` MAP_DROPPABLE;
/// - `ac` (VM_ACCOUNT, charged to the commit limit): a private mapping that was writable
///   once keeps it after `mprotect` takes the write right away, so such a mapping is made
///   writable, then `mprotect`ed to its protection;
/// - `sl` (`mseal`): sealed last, once nothing of the restore changes the VMA any more.
pub const CARRIED: [&str; 14] =
    ["dc", "dd", "wf", "hg", "nh", "mg", "sr", "rr", "lo", "lf", "nr", "dp", "ac", "sl"];

/// `mlockall` flags a process record may hold: `MCL_FUTURE` (2), with `MCL_ONFAULT` (4).
pub const MLOCKALL_FUTURE: u32 = 2;
pub const MLOCKALL_ONFAULT: u32 = 4;

/// The longest name `PR_SET_VMA_ANON_NAME` takes (the kernel's ANON_VMA_NAME_MAX_LEN,
/// 80 bytes with the NUL).
pub const ANON_NAME_MAX: usize = 79;

/// The name `PR_SET_VMA_ANON_NAME` gave a private anonymous mapping, from its maps name
/// (`[anon:NAME]`); `None` for a mapping without one.
pub fn anon_name(maps_name: &str) -> Option<&str> {
    maps_name.strip_prefix("[anon:")?.strip_suffix(']')
}

/// Checks a VMA's carried flags and, for private anonymous memory, its name: the names a
/// kernel shows there, or a name `PR_SET_VMA_ANON_NAME` accepts.
pub(crate) fn check(advice: &[String], anon: bool, name: &str) -> Result<(), VmaProblem> {
    if advice.len() > CARRIED.len() {
        return Err(VmaProblem::TooManyAdvice(advice.len()));
    }
    for a in advice {
        if !CARRIED.contains(&a.as_str()) {
            let shown: String = a.chars().take(16).collect();
            return Err(VmaProblem::BadAdvice(shown));
        }
    }
    if advice.iter().any(|a| a == "lf") && !advice.iter().any(|a| a == "lo") {
        return Err(VmaProblem::BadAdvice("lf without lo".into()));
    }
    if anon && !matches!(name, "" | "[heap]" | "[stack]") {
        // The kernel refuses control characters and `\`, `` ` ``, `$`, `[`, `]` in a name.
        let ok = anon_name(name).is_some_and(|n| {
            !n.is_empty()
                && n.len() <= ANON_NAME_MAX
                && n.bytes().all(|b| (0x20..0x7f).contains(&b) && !b"\\`$[]".contains(&b))
        });
        if !ok {
            let shown: String = name.chars().take(100).collect();
            return Err(VmaProblem::BadAnonName(shown));
        }
    }
    Ok(())
}

/// Checks a process's `mlockall` flags: none, or `MCL_FUTURE` with or without `MCL_ONFAULT`.
pub(crate) fn check_mlockall(flags: u32) -> bool {
    flags == 0 || flags == MLOCKALL_FUTURE || flags == MLOCKALL_FUTURE | MLOCKALL_ONFAULT
}

/// Whether two VMAs differ at most in their locks: fork does not carry `mlock` into the
/// child, and each process locks its own after a restore.
pub fn same_but_locks(a: &Vma, b: &Vma) -> bool {
    let unlocked = |v: &Vma| Vma {
        advice: v.advice.iter().filter(|f| !matches!(f.as_str(), "lo" | "lf")).cloned().collect(),
        ..v.clone()
    };
    unlocked(a) == unlocked(b)
}
