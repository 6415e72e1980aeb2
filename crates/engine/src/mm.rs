//! The address space's layout: VMAs and the mm fields (brk, arg/env, auxv, exe).
//!
//! Dump reads `/proc/PID/smaps`, `stat` and `auxv`. Restore works inside a stub process:
//! everything of the stub but its vDSO is unmapped, the vDSO and vvar pages move to
//! the dumped addresses (same kernel build required), each VMA is mapped at its address
//! with its protection, and one `prctl(PR_SET_MM_MAP)` sets the mm fields.

use std::os::unix::fs::MetadataExt;

use migrate_proto::records::{FileId, MmFields, Vma, VmaBacking};

use crate::error::{EngineError, read_proc};
use crate::files::FdWorld;
use crate::inject::{Remote, Task};
use crate::objects::shmem::{Named, Registry};
use crate::procfs::{self, MapEntry};

/// madvise flags of smaps `VmFlags` that a restore sets again, with their advice.
const ADVICE: [(&str, i32); 3] =
    [("dc", libc::MADV_DONTFORK), ("dd", libc::MADV_DONTDUMP), ("wf", libc::MADV_WIPEONFORK)];

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
        out.push(Vma {
            start: m.start,
            end: m.end,
            prot: m.prot(),
            offset: m.offset,
            backing,
            name: m.name.clone(),
            growsdown: m.has_flag("gd"),
            advice: m.vm_flags.iter().filter(|f| ADVICE.iter().any(|(a, _)| a == f)).cloned().collect(),
        });
    }
    Ok(out)
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
    let stat = read_proc(pid, "stat")?;
    let f = procfs::stat_fields(&stat).map_err(EngineError::proc(pid, "stat"))?;
    let n = |i: usize| procfs::stat_field(&f, i).map_err(EngineError::proc(pid, "stat"));
    let auxv_path = format!("/proc/{pid}/auxv");
    let auxv =
        procfs::parse_auxv(&std::fs::read(&auxv_path).map_err(crate::error::io_err("read", &auxv_path))?);
    let exe_link = format!("/proc/{pid}/exe");
    let exe_path = std::fs::read_link(&exe_link).map_err(crate::error::io_err("readlink", &exe_link))?;
    let exe_path = exe_path
        .to_str()
        .ok_or_else(|| EngineError::Unsupported(format!("pid {pid}: executable path is not UTF-8")))?;
    Ok(MmFields {
        start_code: n(26)?,
        end_code: n(27)?,
        start_data: n(45)?,
        end_data: n(46)?,
        start_brk: n(47)?,
        brk,
        start_stack: n(28)?,
        arg_start: n(48)?,
        arg_end: n(49)?,
        env_start: n(50)?,
        env_end: n(51)?,
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
/// objects are opened where their owner keeps them (`world`).
pub fn map_vmas(
    remote: &mut Remote<'_>,
    vmas: &[Vma],
    kept: &[&Vma],
    world: &FdWorld,
) -> Result<(), EngineError> {
    for v in vmas.iter().filter(|v| !kept.iter().any(|k| k.start == v.start)) {
        let len = v.end - v.start;
        let mut flags = libc::MAP_FIXED | if v.growsdown { libc::MAP_GROWSDOWN } else { 0 };
        let (fd, offset) = match &v.backing {
            VmaBacking::Vdso | VmaBacking::Vvar | VmaBacking::VvarVclock => continue,
            VmaBacking::SysvShm { id, .. } => {
                // The pieces of one attachment (split by mprotect or munmap) share its base;
                // they are made together, by the first, so that they stay one attachment.
                let base = |w: &Vma| w.start.checked_sub(w.offset);
                let pieces: Vec<&Vma> = vmas
                    .iter()
                    .filter(|w| w.backing == v.backing && base(w) == base(v))
                    .filter(|w| !kept.iter().any(|k| k.start == w.start))
                    .collect();
                if base(v).is_none() || pieces.first().is_some_and(|p| p.start == v.start) {
                    crate::objects::sysv::attach(remote, &pieces, world.object(*id)?)?;
                    for p in &pieces {
                        advise(remote, p)?;
                    }
                }
                continue;
            }
            VmaBacking::Anon => {
                flags |= libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
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
                let mode = if shared && v.prot & libc::PROT_WRITE as u32 != 0 {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                };
                let at = remote.path(0, path)?;
                let fd = remote.call(
                    libc::SYS_openat,
                    &[libc::AT_FDCWD as u64, at, (mode | libc::O_CLOEXEC) as u64, 0],
                    || format!("open {path}"),
                )?;
                (Some(fd), v.offset)
            }
        };
        let res = remote.call(
            libc::SYS_mmap,
            &[v.start, len, u64::from(v.prot), flags as u64, fd.unwrap_or(u64::MAX), offset],
            || format!("mmap of VMA {:#x}-{:#x} ({})", v.start, v.end, v.name),
        );
        if let Some(fd) = fd {
            remote.call(libc::SYS_close, &[fd], || "close".into())?;
        }
        let addr = res?;
        if addr != v.start {
            return Err(EngineError::Incompatible(format!("VMA {:#x} was mapped at {addr:#x}", v.start)));
        }
        advise(remote, v)?;
    }
    Ok(())
}

/// Sets the `madvise` flags the VMA had.
fn advise(remote: &mut Remote<'_>, v: &Vma) -> Result<(), EngineError> {
    for (flag, advice) in ADVICE {
        if v.advice.iter().any(|a| a == flag) {
            remote.call(libc::SYS_madvise, &[v.start, v.end - v.start, advice as u64], || {
                format!("madvise({flag}) of {:#x}", v.start)
            })?;
        }
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

    fn vma(start: u64, end: u64) -> Vma {
        Vma {
            start,
            end,
            prot: 0,
            offset: 0,
            backing: VmaBacking::Anon,
            name: String::new(),
            growsdown: false,
            advice: vec![],
        }
    }

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
        let v = [vma(0x1_0000_0000, 0x1_0001_0000), vma(0x1_0020_0000, 0x1_0030_0000)];
        assert_eq!(find_gap(&v, 0x10_0000), Some(0x1_0010_0000));
        assert_eq!(find_gap(&v, 0x20_0000), Some(0x1_0030_0000));
    }
}
