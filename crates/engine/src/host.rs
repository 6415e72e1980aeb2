//! What an image needs from the host that restores it: the same kernel build (the vDSO
//! and vvar layout and contents), the CPU's xstate features, and the container's clocks
//! (time-namespace offsets keep CLOCK_MONOTONIC and CLOCK_BOOTTIME continuous).

use std::os::unix::fs::FileExt;

use migrate_proto::manifest::{Clocks, CpuId, KernelId, Manifest};
use procfs_core::{CpuInfo, FromRead};

use crate::error::{EngineError, io_err, read_proc};

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The running kernel, identified by release, build string, machine and vDSO contents.
pub fn kernel_id() -> Result<KernelId, EngineError> {
    let u = nix::sys::utsname::uname().map_err(|e| EngineError::Io {
        op: "uname",
        path: "/".into(),
        source: e.into(),
    })?;
    Ok(KernelId {
        release: u.release().to_string_lossy().into_owned(),
        version: u.version().to_string_lossy().into_owned(),
        machine: u.machine().to_string_lossy().into_owned(),
        vdso_digest: vdso_digest()?,
    })
}

/// crc32 and length of this process's vDSO: the same for every process of one kernel.
fn vdso_digest() -> Result<String, EngineError> {
    let me = std::process::id() as i32;
    let (start, end) = crate::seize::vdso_range(me)?
        .ok_or_else(|| EngineError::Incompatible("this process has no vDSO".into()))?;
    let mut buf = vec![0u8; (end - start) as usize];
    std::fs::File::open("/proc/self/mem")
        .and_then(|f| f.read_exact_at(&mut buf, start))
        .map_err(io_err("read", "/proc/self/mem"))?;
    Ok(format!("crc32:{:08x}/{}", crc32fast::hash(&buf), buf.len()))
}

/// The CPU: vendor, flags, and the xstate features of an XSAVE area (`xfeatures` of its
/// software-reserved bytes), which a restoring CPU must have too. Vendor and flags are
/// the first CPU's: an image that claimed no flags would match any CPU, so an unreadable
/// `/proc/cpuinfo` is an error.
pub fn cpu_id(xstate: &[u8]) -> Result<CpuId, EngineError> {
    const PATH: &str = "/proc/cpuinfo";
    let text = std::fs::read_to_string(PATH).map_err(io_err("read", PATH))?;
    let bad = crate::procfs::unparsable(PATH);
    let info = CpuInfo::from_read(text.as_bytes()).map_err(|e| bad(crate::procfs::reason(e)))?;
    let field = |k: &str| info.get_field(0, k).ok_or_else(|| bad(format!("no {k} for the first CPU")));
    Ok(CpuId {
        vendor: field("vendor_id")?.to_string(),
        flags: field("flags")?.split_whitespace().map(str::to_string).collect(),
        xfeatures: xfeatures(xstate),
    })
}

/// XCR0, the features the XSAVE area holds: an area read with ptrace
/// (`PTRACE_GETREGSET`, `NT_X86_XSTATE`) carries it in the first 8 bytes of the FXSAVE
/// area's software-reserved bytes (byte 464; the kernel's `USER_XSTATE_XCR0_WORD`, put
/// there for debuggers), not in a signal frame's `_fpx_sw_bytes` layout.
pub fn xfeatures(xstate: &[u8]) -> u64 {
    xstate.get(464..472).and_then(|b| b.try_into().ok()).map_or(0, u64::from_ne_bytes)
}

/// The container's CLOCK_MONOTONIC and CLOCK_BOOTTIME (ours plus its namespace's offsets)
/// and CLOCK_REALTIME, now.
pub fn container_clocks(pid: i32) -> Result<Clocks, EngineError> {
    let (mono_off, boot_off) = timens_offsets(pid)?;
    let now = |c| {
        nix::time::clock_gettime(c)
            .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
            .unwrap_or(0)
    };
    let shift = |v: i128, off: i128| (v + off).max(0) as u64;
    Ok(Clocks {
        monotonic_ns: shift(now(nix::time::ClockId::CLOCK_MONOTONIC), mono_off),
        boottime_ns: shift(now(nix::time::ClockId::CLOCK_BOOTTIME), boot_off),
        realtime_ns: now(nix::time::ClockId::CLOCK_REALTIME).max(0) as u64,
    })
}

/// `/proc/PID/timens_offsets`: `monotonic SECS NSECS` and `boottime SECS NSECS`.
pub fn timens_offsets(pid: i32) -> Result<(i128, i128), EngineError> {
    let text = read_proc(pid, "timens_offsets")?;
    let mut out = (0i128, 0i128);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(name), Some(s), Some(ns)) = (f.first(), f.get(1), f.get(2)) else { continue };
        let v = s.parse::<i128>().unwrap_or(0) * 1_000_000_000 + ns.parse::<i128>().unwrap_or(0);
        match *name {
            "monotonic" => out.0 = v,
            "boottime" => out.1 = v,
            _ => {}
        }
    }
    Ok(out)
}

/// The time-namespace offsets that make a new namespace's clocks continue from `clocks`.
pub fn offsets_for(clocks: &Clocks) -> (i128, i128) {
    let now = |c| {
        nix::time::clock_gettime(c)
            .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
            .unwrap_or(0)
    };
    (
        clocks.monotonic_ns as i128 - now(nix::time::ClockId::CLOCK_MONOTONIC),
        clocks.boottime_ns as i128 - now(nix::time::ClockId::CLOCK_BOOTTIME),
    )
}

/// Refuses an image this host cannot run: another kernel build or architecture, or a CPU
/// lacking a feature the source CPU offered. Called before anything is built (the agent
/// calls it before it creates the container). The xstate layout is checked against the
/// stub's in the restore itself.
pub fn check_compatible(manifest: &Manifest) -> Result<(), EngineError> {
    check_kernel(&manifest.kernel)?;
    check_cpu_flags(&manifest.cpu)
}

/// Programs choose their code by CPUID once, at start (glibc's ifuncs pick `memcpy` and
/// friends for AVX2 or AVX-512, a JIT compiles for what it found), and never look again:
/// on a CPU without one of those features they die of SIGILL, at any later moment. So
/// every flag the source CPU had must be here; a flag only this host has is harmless.
fn check_cpu_flags(there: &CpuId) -> Result<(), EngineError> {
    let here = cpu_id(&[])?;
    let have: std::collections::HashSet<&str> = here.flags.iter().map(String::as_str).collect();
    let missing: Vec<&str> = there.flags.iter().map(String::as_str).filter(|f| !have.contains(f)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(EngineError::Incompatible(format!(
        "this host's CPU lacks {} of the features the image's CPU offered: {}; its processes may use them \
         (programs pick their code by CPUID when they start): restore on a host whose CPU has them",
        missing.len(),
        missing.join(", ")
    )))
}

/// The same kernel build and architecture.
fn check_kernel(kernel: &KernelId) -> Result<(), EngineError> {
    let here = kernel_id()?;
    if here.machine != kernel.machine {
        return Err(EngineError::Incompatible(format!(
            "the image is for {}, this host is {}",
            kernel.machine, here.machine
        )));
    }
    if here.release != kernel.release || here.version != kernel.version {
        return Err(EngineError::Incompatible(format!(
            "the image was made on kernel {} ({}), this host runs {} ({}): restoring needs the same kernel build",
            kernel.release, kernel.version, here.release, here.version
        )));
    }
    if here.vdso_digest != kernel.vdso_digest {
        return Err(EngineError::Incompatible(format!(
            "the image's vDSO ({}) differs from this host's ({}) on the same kernel release {}: restoring needs the same kernel build",
            kernel.vdso_digest, here.vdso_digest, here.release
        )));
    }
    Ok(())
}
