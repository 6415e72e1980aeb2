//! Running syscalls inside a stopped task, from the outside: no parasite code.
//!
//! The task's registers are saved, `rip` is pointed at a `syscall` instruction that its
//! own vDSO already holds (so no code page is ever written), the syscall number and
//! arguments go into registers, one single step runs it, and the saved registers are
//! put back. `orig_rax` is set to -1 for the injected call, so that a syscall the task
//! was interrupted in is neither restarted nor disturbed by ours: restoring the saved
//! registers restores its restart state too.
//!
//! Calls that take or return memory use a scratch mapping in the task (mapped and
//! unmapped by injection, never part of a dump). [`Remote`] holds a process's task,
//! gadget, memory and scratch page together, for the code that works inside it.

use std::fs::File;
use std::os::unix::fs::FileExt;

use migrate_sys::ptrace::StoppedTracee;
use nix::errno::Errno;

use crate::error::EngineError;

/// A stopped thread we can run syscalls in.
#[derive(Debug)]
pub struct Task {
    pub tid: i32,
    pub tracee: StoppedTracee,
    /// Its registers when we took it; put back by [`Task::syscall`] after each call.
    pub saved: libc::user_regs_struct,
}

impl Task {
    pub fn new(tid: i32, tracee: StoppedTracee) -> Result<Task, EngineError> {
        let saved = tracee.regs().map_err(EngineError::ptrace(tid, "read registers"))?;
        Ok(Task { tid, tracee, saved })
    }

    /// Runs syscall `nr` through the `syscall` instruction at `gadget`; returns its
    /// result or the errno it failed with.
    pub fn syscall(&mut self, gadget: u64, nr: i64, args: &[u64]) -> Result<Result<u64, Errno>, EngineError> {
        self.syscall_cloning(gadget, nr, args, |_| {})
    }

    /// [`Task::syscall`] for calls that create tasks: `on_clone` gets each new tid (in
    /// our pid namespace).
    pub fn syscall_cloning(
        &mut self,
        gadget: u64,
        nr: i64,
        args: &[u64],
        on_clone: impl FnMut(i32),
    ) -> Result<Result<u64, Errno>, EngineError> {
        let mut regs = self.saved;
        regs.rip = gadget;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        let arg = |i: usize| args.get(i).copied().unwrap_or(0);
        regs.rdi = arg(0);
        regs.rsi = arg(1);
        regs.rdx = arg(2);
        regs.r10 = arg(3);
        regs.r8 = arg(4);
        regs.r9 = arg(5);
        let tid = self.tid;
        let out = self
            .tracee
            .run_syscall(regs, on_clone)
            .map_err(EngineError::ptrace(tid, format!("inject syscall {nr}")))?;
        self.tracee.set_regs(self.saved).map_err(EngineError::ptrace(tid, "restore registers"))?;
        let ret = out.rax as i64;
        Ok(if (-4095..0).contains(&ret) { Err(Errno::from_raw(-ret as i32)) } else { Ok(out.rax) })
    }

    /// [`Task::syscall`] that turns a failure in the task into an error naming `call`.
    pub fn call(
        &mut self,
        gadget: u64,
        nr: i64,
        args: &[u64],
        call: impl FnOnce() -> String,
    ) -> Result<u64, EngineError> {
        let tid = self.tid;
        self.syscall(gadget, nr, args)?.map_err(|errno| EngineError::Injected {
            pid: tid,
            call: call(),
            errno,
        })
    }
}

/// A stopped process we act inside: the thread that runs injected calls, the `syscall`
/// gadget it runs them through, its memory, its pid (in our namespace) and a scratch page.
///
/// Every step of a restore, and the injected part of a dump, needs all five: bundled, a
/// step's signature shows only what is its own. `pid` is the process's, not necessarily
/// `task`'s thread id: a new thread is rebuilt through a task of its own, in the same
/// process, memory and scratch page.
#[derive(Debug)]
pub struct Remote<'a> {
    pub task: &'a mut Task,
    pub gadget: u64,
    pub mem: &'a File,
    pub pid: i32,
    pub scratch: Scratch,
}

impl Remote<'_> {
    /// [`Task::syscall`] through the gadget.
    pub fn syscall(&mut self, nr: i64, args: &[u64]) -> Result<Result<u64, Errno>, EngineError> {
        self.task.syscall(self.gadget, nr, args)
    }

    /// [`Task::syscall_cloning`] through the gadget.
    pub fn syscall_cloning(
        &mut self,
        nr: i64,
        args: &[u64],
        on_clone: impl FnMut(i32),
    ) -> Result<Result<u64, Errno>, EngineError> {
        self.task.syscall_cloning(self.gadget, nr, args, on_clone)
    }

    /// [`Task::call`] through the gadget.
    pub fn call(&mut self, nr: i64, args: &[u64], call: impl FnOnce() -> String) -> Result<u64, EngineError> {
        self.task.call(self.gadget, nr, args, call)
    }

    /// [`Scratch::write`] into this process's scratch page.
    pub fn write(&self, off: u64, bytes: &[u8]) -> Result<u64, EngineError> {
        self.scratch.write(self.mem, self.pid, off, bytes)
    }

    /// [`Scratch::read`] from this process's scratch page.
    pub fn read(&self, off: u64, len: usize) -> Result<Vec<u8>, EngineError> {
        self.scratch.read(self.mem, self.pid, off, len)
    }

    /// [`Scratch::path`] into this process's scratch page.
    pub fn path(&self, off: u64, path: &str) -> Result<u64, EngineError> {
        self.scratch.path(self.mem, self.pid, off, path)
    }
}

/// Finds a `syscall` instruction (`0f 05`) in the task's vDSO. Any occurrence works: the
/// CPU decodes from wherever `rip` points.
pub fn find_gadget(mem: &File, pid: i32, vdso: (u64, u64)) -> Result<u64, EngineError> {
    let len = (vdso.1 - vdso.0) as usize;
    let mut buf = vec![0u8; len];
    mem.read_exact_at(&mut buf, vdso.0).map_err(|source| EngineError::Memory {
        pid,
        addr: vdso.0,
        op: "read the vDSO",
        source,
    })?;
    buf.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|off| vdso.0 + off as u64)
        .ok_or_else(|| EngineError::Incompatible(format!("pid {pid}: no syscall instruction in its vDSO")))
}

/// Opens `/proc/PID/mem` for reading and writing the task's memory, also pages it cannot
/// write itself (the kernel's FOLL_FORCE, as for a debugger).
pub fn open_mem(pid: i32) -> Result<File, EngineError> {
    let path = format!("/proc/{pid}/mem");
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(crate::error::proc_err(pid, "open", path))
}

/// A scratch mapping inside the task.
#[derive(Debug, Clone, Copy)]
pub struct Scratch {
    pub addr: u64,
    pub len: u64,
}

impl Scratch {
    pub const LEN: u64 = 64 * 1024;

    /// Maps it by injection (at `at`, if given, without replacing anything).
    pub fn map(task: &mut Task, gadget: u64, at: Option<u64>) -> Result<Scratch, EngineError> {
        let flags = libc::MAP_PRIVATE
            | libc::MAP_ANONYMOUS
            | if at.is_some() { libc::MAP_FIXED_NOREPLACE } else { 0 };
        let addr = task.call(
            gadget,
            libc::SYS_mmap,
            &[
                at.unwrap_or(0),
                Scratch::LEN,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                flags as u64,
                u64::MAX,
                0,
            ],
            || "mmap of a scratch page".into(),
        )?;
        Ok(Scratch { addr, len: Scratch::LEN })
    }

    pub fn unmap(self, task: &mut Task, gadget: u64) -> Result<(), EngineError> {
        task.call(gadget, libc::SYS_munmap, &[self.addr, self.len], || "munmap of the scratch page".into())?;
        Ok(())
    }

    pub fn write(&self, mem: &File, pid: i32, off: u64, bytes: &[u8]) -> Result<u64, EngineError> {
        if off + bytes.len() as u64 > self.len {
            return Err(EngineError::Incompatible(format!(
                "{} bytes do not fit the scratch page",
                bytes.len()
            )));
        }
        mem.write_all_at(bytes, self.addr + off).map_err(EngineError::memory(
            pid,
            self.addr + off,
            "write scratch",
        ))?;
        Ok(self.addr + off)
    }

    pub fn read(&self, mem: &File, pid: i32, off: u64, len: usize) -> Result<Vec<u8>, EngineError> {
        let mut buf = vec![0u8; len];
        mem.read_exact_at(&mut buf, self.addr + off).map_err(EngineError::memory(
            pid,
            self.addr + off,
            "read scratch",
        ))?;
        Ok(buf)
    }

    /// Writes a NUL-terminated path; returns its address in the task.
    pub fn path(&self, mem: &File, pid: i32, off: u64, path: &str) -> Result<u64, EngineError> {
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        self.write(mem, pid, off, &bytes)
    }
}
