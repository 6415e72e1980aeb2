//! The address space's layout: VMAs and the mm fields (brk, arg/env, auxv, exe).
//!
//! Dump reads `/proc/PID/smaps`, `stat` and `auxv`. Restore works inside a stub process:
//! everything of the stub but its vDSO is unmapped, the vDSO and vvar pages move to
//! the dumped addresses (same kernel build required), each VMA is mapped at its address
//! with its protection, and one `prctl(PR_SET_MM_MAP)` sets the mm fields.
//!
//! What smaps shows of a VMA comes back with it ([`migrate_proto::records::vma`] lists
//! each `VmFlags` mnemonic and what becomes of it): madvise state, the anonymous name,
//! `MAP_NORESERVE`, `MAP_DROPPABLE`, the accounting of a once-writable private mapping,
//! the write right of a shared one (its file is opened for writing again); locks and
//! seals once the process is built, and `mlockall(MCL_FUTURE)`, which a dump reads off
//! a page it maps ([`dump_mlockall`]). userfaultfd registrations, shadow stacks, device
//! mappings and non-zero protection keys are refused by name.
//!
//! Two adjacent VMAs stay two. The kernel merges a new anonymous mapping into an
//! adjacent one with the same flags when their page offsets (for anonymous memory, the
//! address at its birth, `vm_pgoff`) follow on, and `mremap` keeps the page offset only
//! of a VMA that has an `anon_vma` (one faulted page): so an anonymous VMA that would
//! merge is mapped elsewhere, given one page through `/proc/PID/mem`, moved into place
//! (its offset no longer follows on from its neighbour's) and the page dropped. The
//! rebuilt map is then compared with the image's ranges ([`verify`]).

use std::os::unix::fs::MetadataExt;

use std::os::unix::fs::FileExt;

use migrate_proto::records::vma::{CARRIED, MLOCKALL_FUTURE, MLOCKALL_ONFAULT, anon_name};
use migrate_proto::records::{FileId, MmFields, Vma, VmaBacking};

use crate::error::{EngineError, read_proc};
use crate::files::FdWorld;
use crate::inject::{Remote, Scratch, Task};
use crate::objects::shmem::{Named, Registry};
use crate::procfs::{self, MapEntry};

/// madvise flags of smaps `VmFlags` that a restore sets again, with their advice.
const ADVICE: [(&str, i32); 8] = [
    ("dc", libc::MADV_DONTFORK),
    ("dd", libc::MADV_DONTDUMP),
    ("wf", libc::MADV_WIPEONFORK),
    ("hg", libc::MADV_HUGEPAGE),
    ("nh", libc::MADV_NOHUGEPAGE),
    ("mg", libc::MADV_MERGEABLE),
    ("sr", libc::MADV_SEQUENTIAL),
    ("rr", libc::MADV_RANDOM),
];

/// smaps `VmFlags` a checkpoint refuses, and what a VMA with one is. The kernel's vDSO
/// and vvar pages have `pf`, `io` and `de` too: they are moved, not mapped, and skipped.
const REFUSED: [(&str, &str); 10] = [
    ("um", "registered with a userfaultfd (missing pages)"),
    ("uw", "registered with a userfaultfd (write protection)"),
    ("ui", "registered with a userfaultfd (minor faults)"),
    ("ss", "a shadow stack"),
    ("pf", "a device's mapping (VM_PFNMAP)"),
    ("io", "a device's mapping (VM_IO)"),
    ("mm", "a device's mapping (VM_MIXEDMAP)"),
    ("ar", "a device's mapping (VM_PAT)"),
    ("de", "a driver's mapping that may not grow (VM_DONTEXPAND)"),
    ("sf", "a synchronous DAX mapping (MAP_SYNC)"),
];

/// Where a dump maps its scratch page when it can: the first VMA of smaps, so that
/// [`dump_mlockall`] reads one record, not the page tables of the whole process.
pub const PROBE_AT: u64 = 0x1_0000;

const PAGE: u64 = 4096;

/// The identity of the file behind `path` (as this process can open it).
pub fn file_id(shown: &str, path: &str) -> Result<FileId, EngineError> {
    let md = std::fs::metadata(path).map_err(crate::error::io_err("stat", path))?;
    Ok(FileId {
        path: shown.to_string(),
        size: md.size(),
        // Saturating: a file dated beyond 2262 must not overflow (it compares unequal anyway).
        mtime_ns: md.mtime().saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec()),
        mode: md.mode(),
    })
}

/// The VMAs of `pid` (`proc` in image order), classified; refuses kinds this version
/// cannot restore. Shared memory, memfds and deleted files are registered in `objects`.
pub fn dump_vmas(pid: i32, proc: usize, objects: &mut Registry) -> Result<Vec<Vma>, EngineError> {
    let maps = procfs::parse_smaps(&read_proc(pid, "smaps")?).map_err(EngineError::proc(pid, "smaps"))?;
    let mut out = Vec::new();
    for m in &maps {
        if m.name == "[vsyscall]" {
            continue; // the kernel provides it everywhere
        }
        let backing = backing(pid, proc, m, objects)?;
        if !matches!(backing, VmaBacking::Vdso | VmaBacking::Vvar | VmaBacking::VvarVclock) {
            refuse_flags(pid, m)?;
        }
        out.push(Vma {
            start: m.start,
            end: m.end,
            prot: m.prot(),
            offset: m.offset,
            backing,
            name: m.name.clone(),
            growsdown: m.has_flag("gd"),
            advice: m.vm_flags.iter().filter(|f| CARRIED.contains(&f.as_str())).cloned().collect(),
            may_write: m.has_flag("mw"),
        });
    }
    Ok(out)
}

/// Refuses a VMA whose flags a restore cannot give back ([`REFUSED`], a protection key).
fn refuse_flags(pid: i32, m: &MapEntry) -> Result<(), EngineError> {
    let refuse = |what: &str| {
        Err(EngineError::Unsupported(format!(
            "{} VMA {:#x}-{:#x} ({}) is {what}: not supported",
            crate::files::describe_process(pid),
            m.start,
            m.end,
            if m.name.is_empty() { "anonymous" } else { &m.name },
        )))
    };
    if let Some((flag, what)) = REFUSED.iter().find(|(f, _)| m.has_flag(f)) {
        return refuse(&format!("{what}, smaps flag {flag}"));
    }
    if m.pkey != 0 {
        return refuse(&format!("tagged with memory protection key {}", m.pkey));
    }
    Ok(())
}

/// The process's `mlockall` flags for mappings to come (0, or `MCL_FUTURE` with
/// `MCL_ONFAULT` if given): the mm's default flags, which only a new VMA shows. `scratch`
/// is one, just mapped by the dump; smaps is read only as far as it.
pub fn dump_mlockall(pid: i32, scratch: &Scratch) -> Result<u32, EngineError> {
    use std::io::BufRead;
    let path = format!("/proc/{pid}/smaps");
    let file = std::fs::File::open(&path).map_err(crate::error::io_err("open", &path))?;
    let mut at_scratch = false;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(crate::error::io_err("read", &path))?;
        if let Some(flags) = line.strip_prefix("VmFlags:").filter(|_| at_scratch) {
            let has = |f: &str| flags.split_whitespace().any(|x| x == f);
            return Ok(match (has("lo"), has("lf")) {
                (false, _) => 0,
                (true, false) => MLOCKALL_FUTURE,
                (true, true) => MLOCKALL_FUTURE | MLOCKALL_ONFAULT,
            });
        }
        let Some((start, _)) = line.split_once('-') else { continue };
        if let Ok(start) = u64::from_str_radix(start, 16) {
            if start > scratch.addr {
                break;
            }
            at_scratch = start == scratch.addr;
        }
    }
    Err(EngineError::proc(pid, "smaps")(format!("no VmFlags for the scratch page at {:#x}", scratch.addr)))
}

fn backing(pid: i32, proc: usize, m: &MapEntry, objects: &mut Registry) -> Result<VmaBacking, EngineError> {
    let unsupported = |what: &str| {
        Err(EngineError::Unsupported(format!(
            "{} VMA {:#x}-{:#x} is {what}, not supported yet",
            crate::files::describe_process(pid),
            m.start,
            m.end
        )))
    };
    Ok(match m.name.as_str() {
        "[vdso]" => VmaBacking::Vdso,
        "[vvar]" => VmaBacking::Vvar,
        "[vvar_vclock]" => VmaBacking::VvarVclock,
        "" | "[heap]" | "[stack]" if !m.shared() => VmaBacking::Anon,
        n if n.starts_with("[anon:") && !m.shared() => VmaBacking::Anon,
        _ if m.has_flag("ht") => return unsupported(&format!("a hugetlb mapping ({})", m.name)),
        n if n.starts_with("/SYSV") => {
            let via = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
            match objects.known(&via)? {
                Some(id) => VmaBacking::SysvShm { id, may_write: m.has_flag("mw") },
                None => {
                    return unsupported(&format!("System V shared memory ({n}) of another IPC namespace"));
                }
            }
        }
        n if let Some(named) = Named::of(n, m.shared()) => {
            let via = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
            VmaBacking::Object { id: objects.id(proc, &via, named)?, shared: m.shared() }
        }
        n if n.starts_with('/') => {
            // map_files names the very file mapped, whatever its path now resolves to.
            let via = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
            VmaBacking::File { file: file_id(n, &via)?, shared: m.shared() }
        }
        n => return unsupported(&format!("a special mapping ({n})")),
    })
}

/// The mm fields; `brk` comes from an injected `brk(0)` by the caller.
pub fn dump_mm(pid: i32, brk: u64) -> Result<MmFields, EngineError> {
    let st = procfs::read_stat(pid)?;
    // Optional to procfs-core (kernels before 3.3 lack them); required here.
    let n = |v: Option<u64>, name: &str| {
        v.ok_or_else(|| EngineError::proc(pid, "stat")(format!("no {name} in stat")))
    };
    let auxv_path = format!("/proc/{pid}/auxv");
    let auxv =
        procfs::parse_auxv(&std::fs::read(&auxv_path).map_err(crate::error::io_err("read", &auxv_path))?);
    let exe_link = format!("/proc/{pid}/exe");
    let exe_path = std::fs::read_link(&exe_link).map_err(crate::error::io_err("readlink", &exe_link))?;
    let exe_path = exe_path
        .to_str()
        .ok_or_else(|| EngineError::Unsupported(format!("pid {pid}: executable path is not UTF-8")))?;
    Ok(MmFields {
        start_code: st.startcode,
        end_code: st.endcode,
        start_data: n(st.start_data, "start_data")?,
        end_data: n(st.end_data, "end_data")?,
        start_brk: n(st.start_brk, "start_brk")?,
        brk,
        start_stack: st.startstack,
        arg_start: n(st.arg_start, "arg_start")?,
        arg_end: n(st.arg_end, "arg_end")?,
        env_start: n(st.env_start, "env_start")?,
        env_end: n(st.env_end, "env_end")?,
        auxv,
        exe: file_id(exe_path, &exe_link)?,
    })
}

/// Checks that the file behind `id` is still the same file, as the stub sees it.
pub fn check_file(stub: i32, id: &FileId, exact: bool) -> Result<(), EngineError> {
    let now = file_id(&id.path, &format!("/proc/{stub}/root{}", id.path))
        .map_err(|_| EngineError::Incompatible(format!("{} no longer exists", id.path)))?;
    if now.size < id.size {
        return Err(EngineError::Incompatible(format!(
            "{} is shorter than at the checkpoint ({} bytes, was {})",
            id.path, now.size, id.size
        )));
    }
    if exact && (now.size != id.size || now.mtime_ns != id.mtime_ns) {
        return Err(EngineError::Incompatible(format!(
            "{} changed since the checkpoint (size {} → {}, mtime changed: {}); a mapped file must be the same file",
            id.path,
            id.size,
            now.size,
            now.mtime_ns != id.mtime_ns
        )));
    }
    Ok(())
}

/// The stub's mappings from `maps`: ranges and names are all a restore needs of them,
/// and `smaps` would walk every page table (milliseconds for a child that inherited a
/// large parent).
fn stub_maps(stub: i32) -> Result<Vec<MapEntry>, EngineError> {
    procfs::parse_smaps(&read_proc(stub, "maps")?).map_err(EngineError::proc(stub, "maps"))
}

fn special(m: &MapEntry) -> bool {
    matches!(m.name.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]")
}

/// Unmaps everything of the stub but its vDSO and vvar pages and the ranges `keep`
/// (sorted, disjoint: VMAs a child keeps from the parent it was forked from).
pub fn clear_stub(task: &mut Task, gadget: u64, stub: i32, keep: &[&Vma]) -> Result<(), EngineError> {
    let maps = stub_maps(stub)?;
    for m in maps.iter().filter(|m| !special(m)) {
        for (start, end) in subtract(m.start, m.end, keep.iter().map(|v| (v.start, v.end))) {
            task.call(gadget, libc::SYS_munmap, &[start, end - start], || format!("munmap({start:#x})"))?;
        }
    }
    Ok(())
}

/// The parts of `[start, end)` outside the sorted, disjoint ranges `holes`.
pub fn subtract(start: u64, end: u64, holes: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    for (s, e) in holes {
        if e <= at || s >= end {
            continue;
        }
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < end {
        out.push((at, end));
    }
    out
}

/// The VMAs of `child` it keeps from `parent`, whose fork it is: those fork carried over
/// unchanged ([`migrate_proto::validate::inheritable`]), pages and sharing included.
pub fn kept<'a>(child: &'a [Vma], parent: &[Vma]) -> Vec<&'a Vma> {
    child.iter().filter(|v| parent.iter().any(|p| migrate_proto::validate::inheritable(p, v))).collect()
}

/// In the private VMAs a child kept, drops every page that is not one it inherits (its
/// own are written next; the rest were zero or absent at the checkpoint).
pub fn drop_uninherited(
    task: &mut Task,
    gadget: u64,
    kept: &[&Vma],
    inherited: &[migrate_proto::pages::PageRun],
) -> Result<(), EngineError> {
    for v in kept {
        let private = match v.backing {
            VmaBacking::Anon => true,
            VmaBacking::File { shared, .. } | VmaBacking::Object { shared, .. } => !shared,
            _ => false,
        };
        if !private {
            continue;
        }
        let runs = inherited.iter().filter_map(|r| Some((r.addr, r.end()?)));
        for (start, end) in subtract(v.start, v.end, runs) {
            task.call(gadget, libc::SYS_madvise, &[start, end - start, libc::MADV_DONTNEED as u64], || {
                format!("madvise(DONTNEED) of {start:#x}-{end:#x}")
            })?;
        }
    }
    Ok(())
}

/// Moves the stub's `[vvar]`, `[vvar_vclock]` and `[vdso]` to where the image had them;
/// returns the gadget's new address.
pub fn move_vdso(
    task: &mut Task,
    gadget: u64,
    stub: i32,
    image: &[Vma],
    free_at: u64,
) -> Result<u64, EngineError> {
    let maps = stub_maps(stub)?;
    let mut moves = Vec::new();
    for (name, kind) in [
        ("[vvar]", VmaBacking::Vvar),
        ("[vvar_vclock]", VmaBacking::VvarVclock),
        ("[vdso]", VmaBacking::Vdso),
    ] {
        let here = maps.iter().find(|m| m.name == name);
        let there = image.iter().find(|v| v.backing == kind);
        match (here, there) {
            (Some(h), Some(t)) if h.end - h.start == t.end - t.start => {
                moves.push((h.start, t.start, h.end - h.start))
            }
            (None, None) => {}
            (h, t) => {
                return Err(EngineError::Incompatible(format!(
                    "{name} differs here ({}) from the image ({}): the image needs the same kernel build",
                    h.map_or("absent".into(), |h| format!("{} bytes", h.end - h.start)),
                    t.map_or("absent".into(), |t| format!("{} bytes", t.end - t.start)),
                )));
            }
        }
    }
    let vdso_old = maps.iter().find(|m| m.name == "[vdso]").map_or(0, |m| m.start);
    let vdso_new = image.iter().find(|v| v.backing == VmaBacking::Vdso).map_or(0, |v| v.start);
    let overlaps = moves
        .iter()
        .any(|&(_, to, len)| moves.iter().any(|&(from, _, l2)| to < from + l2 && from < to + len));
    let mut gadget = gadget;
    let mut current: Vec<u64> = moves.iter().map(|m| m.0).collect();
    if overlaps {
        // Park everything in a free area first, keeping the relative layout.
        let base = moves.iter().map(|m| m.0).min().unwrap_or(0);
        for (i, &(from, _, len)) in moves.iter().enumerate() {
            let to = free_at + (from - base);
            remap(task, gadget, from, to, len)?;
            if from == vdso_old {
                gadget = gadget - vdso_old + to;
            }
            current[i] = to;
        }
    }
    for (i, &(_, to, len)) in moves.iter().enumerate() {
        let from = current[i];
        remap(task, gadget, from, to, len)?;
        if moves[i].0 == vdso_old {
            gadget = gadget - from + vdso_new;
        }
    }
    Ok(gadget)
}

fn remap(task: &mut Task, gadget: u64, from: u64, to: u64, len: u64) -> Result<(), EngineError> {
    if from == to {
        return Ok(());
    }
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    task.call(gadget, libc::SYS_mremap, &[from, len, len, flags, to], || {
        format!("mremap({from:#x} → {to:#x})")
    })?;
    Ok(())
}

/// A plain anonymous VMA over `start..end`: a range for [`find_gap`] to keep out of.
fn range(start: u64, end: u64) -> Vma {
    Vma {
        start,
        end,
        prot: 0,
        offset: 0,
        backing: VmaBacking::Anon,
        name: String::new(),
        growsdown: false,
        advice: vec![],
        may_write: false,
    }
}

/// A free range of `len` bytes between the image's VMAs (and below the stack).
pub fn find_gap(image: &[Vma], len: u64) -> Option<u64> {
    let mut candidate = 0x1_0000_0000u64;
    let mut sorted: Vec<&Vma> = image.iter().collect();
    sorted.sort_by_key(|v| v.start);
    for v in sorted {
        if v.start >= candidate + len {
            return Some(candidate);
        }
        candidate = candidate.max(v.end.next_multiple_of(0x10_0000));
    }
    (candidate + len <= 0x7fff_0000_0000).then_some(candidate)
}

/// Maps every non-vDSO VMA of the image in the stub `remote` but those it keeps. Files
/// are opened by the stub itself (in the container's mount namespace) and closed again;
/// objects are opened where their owner keeps them (`world`). `park` is the restore's
/// own range (the parked vDSO, the scratch page), 32 MiB.
pub fn map_vmas(
    remote: &mut Remote<'_>,
    vmas: &[Vma],
    kept: &[&Vma],
    world: &FdWorld,
    park: u64,
) -> Result<(), EngineError> {
    let is_kept = |v: &Vma| kept.iter().any(|k| k.start == v.start);
    // Where a VMA may be made apart: outside the image's map and the restore's range.
    let mut taken = vmas.to_vec();
    taken.push(range(park, park + (32 << 20)));
    for (i, v) in vmas.iter().enumerate().filter(|(_, v)| !is_kept(v)) {
        let len = v.end - v.start;
        let has = |flag: &str| v.advice.iter().any(|a| a == flag);
        // MAP_STACK gives VM_NOHUGEPAGE (since 6.7): one madvise fewer per thread stack.
        let mut flags = if v.growsdown { libc::MAP_GROWSDOWN } else { 0 }
            | if has("nr") { libc::MAP_NORESERVE } else { 0 }
            | if has("nh") { libc::MAP_STACK } else { 0 };
        // Charged once writable, a private mapping stays charged when mprotect takes the
        // write right away (smaps `ac`): it is born writable and mprotected after.
        let write = libc::PROT_WRITE as u32;
        let charged = has("ac") && v.prot & write == 0;
        let prot = v.prot | if charged { write } else { 0 };
        let (fd, offset) = match &v.backing {
            VmaBacking::Vdso | VmaBacking::Vvar | VmaBacking::VvarVclock => continue,
            VmaBacking::SysvShm { id, .. } => {
                // The pieces of one attachment (split by mprotect or munmap) share its base;
                // they are made together, by the first, so that they stay one attachment.
                let base = |w: &Vma| w.start.checked_sub(w.offset);
                let pieces: Vec<&Vma> = vmas
                    .iter()
                    .filter(|w| w.backing == v.backing && base(w) == base(v))
                    .filter(|w| !is_kept(w))
                    .collect();
                if base(v).is_none() || pieces.first().is_some_and(|p| p.start == v.start) {
                    crate::objects::sysv::attach(remote, &pieces, world.object(*id)?)?;
                    for p in &pieces {
                        advise(remote, p, false)?;
                    }
                }
                continue;
            }
            VmaBacking::Anon => {
                let kind = if has("dp") { libc::MAP_DROPPABLE } else { libc::MAP_PRIVATE };
                flags |= kind | libc::MAP_ANONYMOUS;
                (None, 0)
            }
            backing => {
                let (path, shared) = match backing {
                    VmaBacking::File { file, shared } => {
                        check_file(remote.pid, file, true)?;
                        (file.path.as_str(), *shared)
                    }
                    VmaBacking::Object { id, shared } => (world.object_path(*id)?, *shared),
                    _ => continue,
                };
                flags |= if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
                // The right to make a shared mapping writable later is the file's access
                // mode: opened read-only, the mapping loses `mw` (and `sh`).
                let mode = if shared && v.may_write { libc::O_RDWR } else { libc::O_RDONLY };
                let at = remote.path(0, path)?;
                let fd = remote.call(
                    libc::SYS_openat,
                    &[libc::AT_FDCWD as u64, at, (mode | libc::O_CLOEXEC) as u64, 0],
                    || format!("open {path}"),
                )?;
                (Some(fd), v.offset)
            }
        };
        let what = || format!("mmap of VMA {:#x}-{:#x} ({})", v.start, v.end, v.name);
        let anon = fd.is_none();
        let apart = anon && merges(vmas, i, &is_kept);
        let res = if apart {
            map_apart(remote, v, prot, flags, &taken)
        } else {
            let args = [
                v.start,
                len,
                u64::from(prot),
                (flags | libc::MAP_FIXED) as u64,
                fd.unwrap_or(u64::MAX),
                offset,
            ];
            remote.call(libc::SYS_mmap, &args, what)
        };
        if let Some(fd) = fd {
            remote.call(libc::SYS_close, &[fd], || "close".into())?;
        }
        let addr = res?;
        if addr != v.start {
            return Err(EngineError::Incompatible(format!("VMA {:#x} was mapped at {addr:#x}", v.start)));
        }
        if charged {
            // mprotect uncharges anonymous memory that has no anon_vma yet: one page first.
            if anon && !apart {
                fault_in(remote, v.start)?;
            }
            remote.call(libc::SYS_mprotect, &[v.start, len, u64::from(v.prot)], || {
                format!("mprotect of VMA {:#x}-{:#x}", v.start, v.end)
            })?;
        }
        if apart || (anon && charged) {
            // The page faulted in for its anon_vma: the image's pages are written next.
            remote.call(libc::SYS_madvise, &[v.start, PAGE, libc::MADV_DONTNEED as u64], || {
                format!("madvise(DONTNEED) of {:#x}", v.start)
            })?;
        }
        if let Some(name) = anon_name(&v.name).filter(|_| v.backing == VmaBacking::Anon) {
            let at = remote.path(0, name)?;
            remote.call(
                libc::SYS_prctl,
                &[libc::PR_SET_VMA as u64, libc::PR_SET_VMA_ANON_NAME as u64, v.start, len, at],
                || format!("naming VMA {:#x}-{:#x} {name:?}", v.start, v.end),
            )?;
        }
        advise(remote, v, true)?;
    }
    Ok(())
}

/// Whether the anonymous VMA `vmas[i]`, mapped in place, could merge with a neighbour:
/// the one before it (mapped just before, or kept), or a kept one after it.
fn merges(vmas: &[Vma], i: usize, is_kept: &dyn Fn(&Vma) -> bool) -> bool {
    let Some(v) = vmas.get(i) else { return false };
    let alike = |w: &Vma| w.backing == VmaBacking::Anon && w.prot == v.prot;
    let before = i.checked_sub(1).and_then(|j| vmas.get(j)).is_some_and(|p| p.end == v.start && alike(p));
    let after = vmas.get(i + 1).is_some_and(|n| n.start == v.end && alike(n) && is_kept(n));
    before || after
}

/// Maps the anonymous VMA `v` where it cannot merge with its neighbours (see the module
/// doc): in a range no VMA of the image or the restore uses (`taken`: the kernel's own
/// choice may be right beside `v`'s place, and merge there), one page faulted in, then
/// moved into place.
fn map_apart(
    remote: &mut Remote<'_>,
    v: &Vma,
    prot: u32,
    flags: i32,
    taken: &[Vma],
) -> Result<u64, EngineError> {
    let len = v.end - v.start;
    let at = find_gap(taken, len).ok_or_else(|| {
        EngineError::Incompatible(format!("no free range to map VMA {:#x}-{:#x} apart", v.start, v.end))
    })?;
    let flags = flags | libc::MAP_FIXED_NOREPLACE;
    let tmp = remote.call(libc::SYS_mmap, &[at, len, u64::from(prot), flags as u64, u64::MAX, 0], || {
        format!("mmap of VMA {:#x}-{:#x} apart, at {at:#x}", v.start, v.end)
    })?;
    fault_in(remote, tmp)?;
    let move_flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    remote.call(libc::SYS_mremap, &[tmp, len, len, move_flags, v.start], || {
        format!("mremap of VMA {:#x}-{:#x} into place", v.start, v.end)
    })
}

/// Gives the anonymous VMA at `addr` its anon_vma: a page, written through
/// /proc/PID/mem (a forced write, whatever the VMA's protection).
fn fault_in(remote: &Remote<'_>, addr: u64) -> Result<(), EngineError> {
    remote.mem.write_all_at(&[0], addr).map_err(EngineError::memory(remote.pid, addr, "fault in"))
}

/// Sets the `madvise` flags the VMA had; `nh` only if `mmap` did not (`stacked`).
fn advise(remote: &mut Remote<'_>, v: &Vma, stacked: bool) -> Result<(), EngineError> {
    for (flag, advice) in ADVICE.into_iter().filter(|&(f, _)| !(stacked && f == "nh")) {
        if v.advice.iter().any(|a| a == flag) {
            remote.call(libc::SYS_madvise, &[v.start, v.end - v.start, advice as u64], || {
                format!("madvise({flag}) of {:#x}", v.start)
            })?;
        }
    }
    Ok(())
}

/// Once the process's memory is written: its locks (`mlock2`, `MLOCK_ONFAULT` for `lf`,
/// on kept VMAs too: fork does not carry locks) and `mlockall(MCL_FUTURE)`; then the
/// rebuilt map is held against the image's.
pub fn lock_and_verify(remote: &mut Remote<'_>, vmas: &[Vma], mlockall: u32) -> Result<(), EngineError> {
    for v in vmas.iter().filter(|v| v.advice.iter().any(|a| a == "lo")) {
        let onfault = v.advice.iter().any(|a| a == "lf");
        let how = if onfault { libc::MLOCK_ONFAULT as u64 } else { 0 };
        remote.call(libc::SYS_mlock2, &[v.start, v.end - v.start, how], || {
            format!("mlock2 of VMA {:#x}-{:#x}", v.start, v.end)
        })?;
    }
    if mlockall != 0 {
        // Without MCL_CURRENT: only the mm's default flags change.
        remote.call(libc::SYS_mlockall, &[u64::from(mlockall)], || format!("mlockall({mlockall:#x})"))?;
    }
    verify(remote.pid, vmas)
}

/// Every VMA of the image is one VMA of the rebuilt process `stub`, with the same range
/// and protection: none merged with a neighbour, none split.
fn verify(stub: i32, vmas: &[Vma]) -> Result<(), EngineError> {
    let maps = stub_maps(stub)?;
    for v in vmas {
        let i = maps.partition_point(|m| m.end <= v.start);
        let got = maps.get(i).filter(|m| m.start < v.end);
        if got.is_some_and(|m| m.start == v.start && m.end == v.end && m.prot() == v.prot) {
            continue;
        }
        return Err(EngineError::Incompatible(format!(
            "VMA {:#x}-{:#x} ({}) of the image came back as {}",
            v.start,
            v.end,
            if v.name.is_empty() { "anonymous" } else { &v.name },
            got.map_or("nothing".into(), |m| format!("{:#x}-{:#x} {}", m.start, m.end, m.perms)),
        )));
    }
    Ok(())
}

/// Seals (`mseal`) the VMAs that were: last, once no step of the restore changes them.
pub fn seal(remote: &mut Remote<'_>, vmas: &[Vma]) -> Result<(), EngineError> {
    for v in vmas.iter().filter(|v| v.advice.iter().any(|a| a == "sl")) {
        remote.call(libc::SYS_mseal, &[v.start, v.end - v.start, 0], || {
            format!("mseal of VMA {:#x}-{:#x}", v.start, v.end)
        })?;
    }
    Ok(())
}

/// `prctl(PR_SET_MM, PR_SET_MM_MAP)`: code/data/brk/stack/arg/env boundaries, auxv and the
/// exe link, in one call (it needs CAP_CHECKPOINT_RESTORE, not CAP_SYS_RESOURCE).
pub fn set_mm(remote: &mut Remote<'_>, mm: &MmFields) -> Result<(), EngineError> {
    let stub = remote.pid;
    check_file(stub, &mm.exe, true)?;
    // The kernel refuses (EBUSY) to replace an exe link while the old file is still
    // mapped: a child forked from a parent with the same executable keeps the link.
    let same = |a: &str, b: &str| {
        let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) else { return false };
        x.dev() == y.dev() && x.ino() == y.ino()
    };
    let exe_fd = if same(&format!("/proc/{stub}/exe"), &format!("/proc/{stub}/root{}", mm.exe.path)) {
        None
    } else {
        let at = remote.path(1024, &mm.exe.path)?;
        Some(remote.call(
            libc::SYS_openat,
            &[libc::AT_FDCWD as u64, at, (libc::O_RDONLY | libc::O_CLOEXEC) as u64, 0],
            || format!("open {}", mm.exe.path),
        )?)
    };
    let auxv: Vec<u8> = mm.auxv.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let auxv_at = remote.write(4096, &auxv)?;
    // struct prctl_mm_map (linux/prctl.h): eleven u64, the auxv pointer, its size (u32)
    // and the exe fd (u32) = 104 bytes.
    let mut b = Vec::with_capacity(104);
    for v in [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv_at,
    ] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b.extend_from_slice(&(auxv.len() as u32).to_ne_bytes());
    // -1: keep the exe link as it is.
    b.extend_from_slice(&exe_fd.map_or(u32::MAX, |fd| fd as u32).to_ne_bytes());
    let map_at = remote.write(0, &b)?;
    let res = remote.call(
        libc::SYS_prctl,
        &[libc::PR_SET_MM as u64, libc::PR_SET_MM_MAP as u64, map_at, b.len() as u64, 0],
        || "prctl(PR_SET_MM_MAP)".into(),
    );
    if let Some(fd) = exe_fd {
        remote.call(libc::SYS_close, &[fd], || "close".into())?;
    }
    res.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtracting_ranges_leaves_the_gaps() {
        assert_eq!(subtract(0, 100, [].into_iter()), [(0, 100)]);
        assert_eq!(subtract(0, 100, [(10, 20), (50, 60)].into_iter()), [(0, 10), (20, 50), (60, 100)]);
        assert_eq!(subtract(10, 20, [(0, 15), (18, 30)].into_iter()), [(15, 18)]);
        assert_eq!(subtract(10, 20, [(0, 30)].into_iter()), []);
        assert_eq!(subtract(10, 20, [(20, 30)].into_iter()), [(10, 20)]);
    }

    #[test]
    fn hugetlb_mappings_are_refused_by_name() {
        // This host may have no huge pages to make one: the kernel's smaps lines do.
        let text = "7f0000000000-7f0000200000 rw-s 00000000 00:0f 1234   /anon_hugepage (deleted)\n\
                    VmFlags: rd wr sh mr mw me ms de ht sd\n";
        let maps = procfs::parse_smaps(text).unwrap_or_default();
        let got = maps.first().map(|m| backing(0, 0, m, &mut Registry::default()));
        let Some(Err(EngineError::Unsupported(what))) = got else { panic!("not refused: {got:?}") };
        assert!(what.contains("is a hugetlb mapping (/anon_hugepage (deleted))"), "{what}");
    }

    #[test]
    fn gaps() {
        assert_eq!(find_gap(&[], 4096), Some(0x1_0000_0000));
        let v = [range(0x1_0000_0000, 0x1_0001_0000), range(0x1_0020_0000, 0x1_0030_0000)];
        assert_eq!(find_gap(&v, 0x10_0000), Some(0x1_0010_0000));
        assert_eq!(find_gap(&v, 0x20_0000), Some(0x1_0030_0000));
    }
}
