//! `restore`: rebuild a process inside a stub, from the outside, by ptrace.
//!
//! The stub is PID 1 of the container's fresh namespaces (started by its shim like any
//! container, so cgroup, network, hostname and mounts are already the container's). In
//! it, in order: its own rseq is unregistered and its fds closed; everything but its
//! vDSO is unmapped; the vDSO moves to the dumped address; a scratch page is mapped
//! where the image has nothing; every VMA is mapped, memory written (each batch checked
//! before it is written), mm fields set; fds installed; process-wide state restored;
//! threads created with their tids (`clone3` + `set_tid`) and given their state; the
//! scratch page unmapped; registers set last. Only then are the threads detached and
//! run. On any error the caller kills the container: nothing half-built ever runs.

use std::time::Instant;

use migrate_sys::ptrace::{StoppedTracee, Tracee};
use nix::sys::ptrace::Options;

use crate::error::EngineError;
use crate::image::{self, Image};
use crate::inject::{Scratch, Task};
use crate::seize::{self, Seized};
use crate::{Progress, files, host, memory, mm, process, thread};

/// What a restore did and how long it took.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RestoreReport {
    pub total_ms: u64,
    pub memory_ms: u64,
    pub pages: u64,
    pub threads: usize,
    /// What could not be restored exactly (e.g. an rlimit above our hard limit).
    pub warnings: Vec<String>,
}

/// Builds the image's process in the stub `stub` (its pid in our namespace) and lets it run.
pub fn restore(
    img: &Image,
    stub: i32,
    progress: &mut dyn FnMut(Progress),
) -> Result<RestoreReport, EngineError> {
    let t0 = Instant::now();
    let rec = img
        .processes
        .first()
        .ok_or_else(|| EngineError::Incompatible("the image holds no process".into()))?;
    host::check_compatible(&img.manifest.kernel)?;
    if rec.pid != 1 {
        return Err(EngineError::Incompatible(format!(
            "the image's process is pid {} in its namespace; this version restores PID 1",
            rec.pid
        )));
    }
    progress(Progress::Phase("seize"));
    let tracee = Tracee::seize(stub, Options::PTRACE_O_TRACECLONE)
        .and_then(Tracee::interrupt)
        .map_err(EngineError::ptrace(stub, "seize the restore stub"))?;
    let mut s = seize::take(stub, vec![Task::new(stub, tracee)?])?;
    let stub_xstate = s.main().tracee.xstate().map_err(EngineError::ptrace(stub, "read xstate"))?;
    let want = host::xfeatures(&rec.threads[0].xstate);
    if want & !host::xfeatures(&stub_xstate) != 0 || stub_xstate.len() != rec.threads[0].xstate.len() {
        return Err(EngineError::Incompatible(format!(
            "the image's CPU state (xfeatures {want:#x}, {} bytes) does not fit this CPU (xfeatures {:#x}, {} bytes)",
            rec.threads[0].xstate.len(),
            host::xfeatures(&stub_xstate),
            stub_xstate.len()
        )));
    }

    progress(Progress::Phase("address space"));
    let mut gadget = s.gadget;
    thread::forget_rseq(s.main(), gadget)?;
    mm::clear_stub(s.main(), gadget, stub)?;
    let park = mm::find_gap(&rec.vmas, 32 << 20)
        .ok_or_else(|| EngineError::Incompatible("no free address range for the scratch page".into()))?;
    gadget = mm::move_vdso(s.main(), gadget, stub, &rec.vmas, park)?;
    s.gadget = gadget;
    let scratch = Scratch::map(s.main(), gadget, Some(park + (16 << 20)))?;
    let mem = s.mem.try_clone().map_err(crate::error::io_err("dup", format!("/proc/{stub}/mem")))?;
    mm::map_vmas(s.main(), gadget, &mem, stub, scratch, &rec.vmas)?;

    progress(Progress::Phase("memory"));
    let t_mem = Instant::now();
    let pages = write_memory(img, rec, &mem, stub, progress)?;
    let memory_ms = t_mem.elapsed().as_millis() as u64;

    progress(Progress::Phase("state"));
    mm::set_mm(s.main(), gadget, &mem, stub, scratch, &rec.mm)?;
    files::restore(s.main(), gadget, &mem, stub, scratch, &rec.fds)?;
    let warnings = process::restore_misc(s.main(), gadget, &mem, stub, scratch, rec)?;
    process::restore_sigactions(s.main(), gadget, &mem, stub, scratch, &rec.sigactions)?;
    create_threads(&mut s, rec, gadget, &mem, stub, scratch)?;
    let main_mask = thread::restore(s.main(), &rec.threads[0], rec.pid, gadget, &mem, stub, scratch)?;
    s.masks[0] = main_mask;
    for sig in &rec.shared_pending {
        let at = scratch.write(&mem, stub, 0, &sig.raw)?;
        let main = s.main();
        main.call(gadget, libc::SYS_rt_sigqueueinfo, &[rec.pid as u64, sig.signo as u64, at], || {
            format!("rt_sigqueueinfo(signal {})", sig.signo)
        })?;
    }
    process::restore_itimers(s.main(), gadget, &mem, stub, scratch, &rec.itimers)?;
    scratch.unmap(s.main(), gadget)?;

    progress(Progress::Phase("resume"));
    let threads = s.tasks.len();
    resume(s)?;
    warnings.iter().for_each(|w| tracing::warn!("{w}"));
    Ok(RestoreReport { total_ms: t0.elapsed().as_millis() as u64, memory_ms, pages, threads, warnings })
}

fn write_memory(
    img: &Image,
    rec: &migrate_proto::records::ProcessRecord,
    mem: &std::fs::File,
    stub: i32,
    progress: &mut dyn FnMut(Progress),
) -> Result<u64, EngineError> {
    let total = img.manifest.stats.pages_stored * memory::PAGE;
    let mut reader = image::records(&img.dir, image::PAGES)?;
    let mut pages = 0u64;
    while let Some(frame) =
        reader.next().map_err(|source| EngineError::Image { file: image::PAGES.into(), source })?
    {
        let migrate_proto::frame::Frame::Pages(batch) = frame else {
            return Err(EngineError::Incompatible(format!(
                "{} holds a record that is not pages",
                image::PAGES
            )));
        };
        migrate_proto::validate::check_batch(&batch, rec)
            .map_err(|source| EngineError::Image { file: image::PAGES.into(), source })?;
        memory::write_batch(mem, stub, &batch)?;
        pages += batch.runs.iter().map(|r| u64::from(r.npages)).sum::<u64>();
        progress(Progress::Bytes { done: pages * memory::PAGE, total });
    }
    Ok(pages)
}

/// Creates every thread but the main one with its tid, by `clone3(CLONE_THREAD, set_tid)`
/// injected in the main thread, and rebuilds its state.
fn create_threads(
    s: &mut Seized,
    rec: &migrate_proto::records::ProcessRecord,
    gadget: u64,
    mem: &std::fs::File,
    stub: i32,
    scratch: Scratch,
) -> Result<(), EngineError> {
    for t in rec.threads.iter().skip(1) {
        let flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM) as u64;
        let set_tid_at = scratch.write(mem, stub, 512, &(t.tid as u64).to_ne_bytes()[..4])?;
        // struct clone_args (linux/sched.h, CLONE_ARGS_SIZE_VER2 = 88 bytes): flags,
        // pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
        // set_tid_size, cgroup. The new thread starts on the main thread's stack, but it
        // is stopped before it runs and gets its own registers.
        let args = [flags, 0, 0, 0, 0, 0, 0, 0, set_tid_at, 1, 0];
        let bytes: Vec<u8> = args.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let at = scratch.write(mem, stub, 0, &bytes)?;
        let mut created = None;
        let main = s.main();
        let res = main.syscall_cloning(gadget, libc::SYS_clone3, &[at, bytes.len() as u64], |tid| {
            created = Some(tid)
        })?;
        let tid_ns = res.map_err(|errno| EngineError::Injected {
            pid: stub,
            call: format!("clone3(set_tid {})", t.tid),
            errno,
        })?;
        if tid_ns != t.tid as u64 {
            return Err(EngineError::Incompatible(format!("thread {} was created as {tid_ns}", t.tid)));
        }
        let host_tid = created
            .ok_or_else(|| EngineError::Incompatible(format!("no clone event for thread {}", t.tid)))?;
        let tracee =
            StoppedTracee::adopt(host_tid).map_err(EngineError::ptrace(host_tid, "take the new thread"))?;
        let task = s.adopt(host_tid, tracee, 0)?;
        let mask = thread::restore(task, t, rec.pid, gadget, mem, stub, scratch)?;
        if let Some(m) = s.masks.last_mut() {
            *m = mask;
        }
    }
    Ok(())
}

/// Sets every thread's signal mask to the image's and lets them all run.
fn resume(s: Seized) -> Result<(), EngineError> {
    for (t, mask) in s.tasks.iter().zip(&s.masks) {
        t.tracee.set_sigmask(*mask).map_err(EngineError::ptrace(t.tid, "set the signal mask"))?;
    }
    s.detach_as_is()
}
