//! Process-wide state that is not memory, files or threads: signal dispositions, interval
//! timers, credentials, rlimits, cwd, umask, personality — dumped from `/proc` or by
//! injected calls, restored by injected calls.

use migrate_proto::records::{Creds, ITimer, Rlimit, SigAction};

use crate::error::{EngineError, read_proc};
use crate::inject::Remote;
use crate::procfs;

/// The pid namespace's last allocated pid, as its processes see it.
const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";

/// The last pid the container's pid namespace handed out: read by `remote` (in that
/// namespace, with the container's `/proc`) through injected calls.
pub fn dump_last_pid(remote: &mut Remote<'_>) -> Result<i32, EngineError> {
    let at = remote.path(0, NS_LAST_PID)?;
    let fd = remote.call(libc::SYS_openat, &[libc::AT_FDCWD as u64, at, libc::O_RDONLY as u64, 0], || {
        format!("open {NS_LAST_PID}")
    })?;
    let n =
        remote.call(libc::SYS_read, &[fd, remote.scratch.addr + 1024, 32], || format!("read {NS_LAST_PID}"));
    remote.call(libc::SYS_close, &[fd], || "close".into())?;
    let text = remote.read(1024, n? as usize)?;
    String::from_utf8_lossy(&text).trim().parse().map_err(|_| {
        EngineError::proc(remote.pid, "ns_last_pid")(format!(
            "{:?} is not a pid",
            String::from_utf8_lossy(&text)
        ))
    })
}

/// Sets the last pid of the restored namespace, so that new processes get pids after it
/// as they would have at the source, not pids just freed; returns a warning if the
/// kernel refuses (it needs CAP_SYS_ADMIN, which the container's PID 1 may have dropped).
pub fn restore_last_pid(remote: &mut Remote<'_>, last: i32) -> Result<Option<String>, EngineError> {
    let at = remote.path(0, NS_LAST_PID)?;
    let value = last.to_string();
    let buf = remote.write(1024, value.as_bytes())?;
    let fd = match remote.syscall(libc::SYS_openat, &[libc::AT_FDCWD as u64, at, libc::O_WRONLY as u64, 0])? {
        Ok(fd) => fd,
        Err(errno) => {
            return Ok(Some(format!(
                "the pid counter was not restored (open {NS_LAST_PID}: {errno}): new processes may get low pids again"
            )));
        }
    };
    let wrote = remote.syscall(libc::SYS_write, &[fd, buf, value.len() as u64])?;
    remote.call(libc::SYS_close, &[fd], || "close".into())?;
    Ok(wrote.err().map(|errno| format!("the pid counter was not restored (write {NS_LAST_PID}: {errno}): new processes may get low pids again")))
}

/// Signals whose disposition cannot be changed.
fn settable(sig: i32) -> bool {
    sig != libc::SIGKILL && sig != libc::SIGSTOP
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    b.get(i..i + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_ne_bytes)
}

/// Every signal's disposition, by injected `rt_sigaction(sig, NULL, &old)`.
pub fn dump_sigactions(remote: &mut Remote<'_>) -> Result<Vec<SigAction>, EngineError> {
    let mut out = Vec::new();
    for sig in (1..=64).filter(|&s| settable(s)) {
        remote.call(libc::SYS_rt_sigaction, &[sig as u64, 0, remote.scratch.addr, 8], || {
            format!("rt_sigaction({sig})")
        })?;
        let b = remote.read(0, 32)?;
        out.push(SigAction {
            signo: sig,
            handler: u64_at(&b, 0),
            flags: u64_at(&b, 8),
            restorer: u64_at(&b, 16),
            mask: u64_at(&b, 24),
        });
    }
    Ok(out)
}

pub fn restore_sigactions(remote: &mut Remote<'_>, acts: &[SigAction]) -> Result<(), EngineError> {
    // Signals the image does not mention get their default, not the stub's handler.
    for sig in (1..=64).filter(|&s| settable(s)) {
        let act = acts.iter().find(|a| a.signo == sig).copied().unwrap_or(SigAction {
            signo: sig,
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        });
        let mut b = Vec::with_capacity(32);
        for v in [act.handler, act.flags, act.restorer, act.mask] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        let at = remote.write(0, &b)?;
        remote.call(libc::SYS_rt_sigaction, &[sig as u64, at, 0, 8], || format!("rt_sigaction({sig})"))?;
    }
    Ok(())
}

/// ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF, by injected `getitimer`.
pub fn dump_itimers(remote: &mut Remote<'_>) -> Result<[ITimer; 3], EngineError> {
    let mut out = [ITimer::default(); 3];
    for (which, t) in out.iter_mut().enumerate() {
        remote.call(libc::SYS_getitimer, &[which as u64, remote.scratch.addr], || {
            format!("getitimer({which})")
        })?;
        let b = remote.read(0, 32)?;
        let us = |i: usize| u64_at(&b, i).saturating_mul(1_000_000).saturating_add(u64_at(&b, i + 8));
        *t = ITimer { interval_us: us(0), value_us: us(16) };
    }
    Ok(out)
}

pub fn restore_itimers(remote: &mut Remote<'_>, timers: &[ITimer; 3]) -> Result<(), EngineError> {
    for (which, t) in timers.iter().enumerate() {
        if t.value_us == 0 {
            continue;
        }
        let mut b = Vec::with_capacity(32);
        for us in [t.interval_us, t.value_us] {
            b.extend_from_slice(&(us / 1_000_000).to_ne_bytes());
            b.extend_from_slice(&(us % 1_000_000).to_ne_bytes());
        }
        let at = remote.write(0, &b)?;
        remote.call(libc::SYS_setitimer, &[which as u64, at, 0], || format!("setitimer({which})"))?;
    }
    Ok(())
}

/// What `/proc` tells about the process without injection.
#[derive(Debug)]
pub struct ProcFacts {
    pub creds: Creds,
    pub rlimits: Vec<Rlimit>,
    pub cwd: String,
    pub root: String,
    pub umask: u32,
    pub personality: u32,
    pub comm: String,
    pub pid_ns: i32,
    /// The parent's pid in the container's namespace (0 if the parent is outside it).
    pub ppid_ns: i32,
    pub sid_ns: i32,
    pub pgid_ns: i32,
    pub seccomp: u32,
}

/// The parent's pid as the container sees it: the last `NSpid` value of the parent; 0
/// for none (ppid 0) or a parent outside the container (in an outer pid namespace, it has
/// fewer `NSpid` levels than its child). Any other failure to read it is an error: a
/// 0 there would make a child of the container the root of its tree.
fn parent_ns_pid(status: &procfs::Status) -> Result<i32, EngineError> {
    if status.ppid == 0 {
        return Ok(0);
    }
    let parent = procfs::read_status(status.ppid)?;
    let levels = |s: &procfs::Status| s.nspid.as_ref().map_or(0, Vec::len);
    if levels(&parent) < levels(status) {
        return Ok(0);
    }
    procfs::innermost(&parent.nspid, "NSpid").map_err(EngineError::proc(status.ppid, "status"))
}

/// What a zombie still tells: its ids, name and credentials.
pub fn zombie_facts(pid: i32) -> Result<ProcFacts, EngineError> {
    let status = read_proc(pid, "status")?;
    let st = procfs::parse_status(&status).map_err(EngineError::proc(pid, "status"))?;
    let ns = |ids, k| procfs::innermost(ids, k).map_err(EngineError::proc(pid, "status"));
    Ok(ProcFacts {
        creds: procfs::creds(&st).map_err(EngineError::proc(pid, "credentials"))?,
        rlimits: Vec::new(),
        cwd: "/".into(),
        root: "/".into(),
        umask: 0,
        personality: 0,
        comm: procfs::status_field(&status, "Name").unwrap_or("").to_string(),
        pid_ns: ns(&st.nspid, "NSpid")?,
        ppid_ns: parent_ns_pid(&st)?,
        sid_ns: ns(&st.nssid, "NSsid")?,
        pgid_ns: ns(&st.nspgid, "NSpgid")?,
        seccomp: 0,
    })
}

pub fn facts(pid: i32) -> Result<ProcFacts, EngineError> {
    let status = read_proc(pid, "status")?;
    let st = procfs::parse_status(&status).map_err(EngineError::proc(pid, "status"))?;
    let ns = |ids, k| procfs::innermost(ids, k).map_err(EngineError::proc(pid, "status"));
    let err = EngineError::proc(pid, "status");
    let creds = procfs::creds(&st).map_err(EngineError::proc(pid, "credentials"))?;
    let rlimits =
        procfs::parse_limits(&read_proc(pid, "limits")?).map_err(EngineError::proc(pid, "limits"))?;
    let link = |name: &str| -> Result<String, EngineError> {
        let path = format!("/proc/{pid}/{name}");
        let target = std::fs::read_link(&path).map_err(crate::error::io_err("readlink", path))?;
        target
            .to_str()
            .map(str::to_string)
            .ok_or_else(|| EngineError::Unsupported(format!("pid {pid}: its {name} is not UTF-8")))
    };
    let umask = st.umask.ok_or_else(|| err("no Umask".into()))?;
    let personality = u32::from_str_radix(read_proc(pid, "personality")?.trim(), 16)
        .map_err(|_| EngineError::proc(pid, "personality")("not hexadecimal".into()))?;
    let seccomp = st.seccomp.unwrap_or(0);
    Ok(ProcFacts {
        creds,
        rlimits,
        cwd: link("cwd")?,
        root: link("root")?,
        umask,
        personality,
        comm: procfs::status_field(&status, "Name").unwrap_or("").to_string(),
        pid_ns: ns(&st.nspid, "NSpid")?,
        ppid_ns: parent_ns_pid(&st)?,
        sid_ns: ns(&st.nssid, "NSsid")?,
        pgid_ns: ns(&st.nspgid, "NSpgid")?,
        seccomp,
    })
}

/// Restores what the stub does not already have; returns warnings for what the kernel
/// refused (an rlimit above our own hard limit needs CAP_SYS_RESOURCE).
pub fn restore_misc(
    remote: &mut Remote<'_>,
    rec: &migrate_proto::records::ProcessRecord,
) -> Result<Vec<String>, EngineError> {
    let mut warnings = Vec::new();
    remote.call(libc::SYS_personality, &[u64::from(rec.personality)], || "personality".into())?;
    remote.call(libc::SYS_umask, &[u64::from(rec.umask)], || "umask".into())?;
    let at = remote.path(0, &rec.cwd)?;
    remote.call(libc::SYS_chdir, &[at], || format!("chdir({})", rec.cwd))?;
    for l in &rec.rlimits {
        let mut b = l.cur.to_ne_bytes().to_vec();
        b.extend_from_slice(&l.max.to_ne_bytes());
        let at = remote.write(0, &b)?;
        if let Err(errno) = remote.syscall(libc::SYS_prlimit64, &[0, u64::from(l.resource), at, 0])? {
            warnings.push(format!(
                "rlimit {} ({}/{}) not restored: {errno} (raising a hard limit needs CAP_SYS_RESOURCE)",
                l.resource,
                fmt_limit(l.cur),
                fmt_limit(l.max)
            ));
        }
    }
    let pid = remote.pid;
    let stub = procfs::creds(&procfs::read_status(pid)?).map_err(EngineError::proc(pid, "credentials"))?;
    if stub != rec.creds {
        restore_creds(remote, &stub, &rec.creds)?;
    }
    Ok(warnings)
}

fn fmt_limit(v: u64) -> String {
    if v == u64::MAX { "unlimited".into() } else { v.to_string() }
}

/// `capset` of the three sets, for the task itself.
fn capset(
    remote: &mut Remote<'_>,
    effective: u64,
    permitted: u64,
    inheritable: u64,
) -> Result<(), EngineError> {
    use linux_raw_sys::general::{__user_cap_data_struct as Data, __user_cap_header_struct as Header};
    // Written field by field in declaration order: neither struct has padding.
    const _: () = assert!(size_of::<Header>() == 8 && size_of::<Data>() == 12);
    let header = Header { version: linux_raw_sys::general::_LINUX_CAPABILITY_VERSION_3, pid: 0 };
    // Version 3 takes two of them: the low and the high 32 bits of each set.
    let data = [0, 32].map(|half| Data {
        effective: (effective >> half) as u32,
        permitted: (permitted >> half) as u32,
        inheritable: (inheritable >> half) as u32,
    });
    let mut b = Vec::with_capacity(size_of::<Header>() + 2 * size_of::<Data>());
    b.extend_from_slice(&header.version.to_ne_bytes());
    b.extend_from_slice(&header.pid.to_ne_bytes());
    for d in data {
        for v in [d.effective, d.permitted, d.inheritable] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
    }
    let hdr = remote.write(0, &b)?;
    remote.call(libc::SYS_capset, &[hdr, hdr + size_of::<Header>() as u64], || "capset".into())?;
    Ok(())
}

/// The bounding set, groups, gids, uids, then capabilities, the ambient set and the
/// securebits: each step needs the privileges the next drops.
fn restore_creds(remote: &mut Remote<'_>, stub: &Creds, c: &Creds) -> Result<(), EngineError> {
    // The bounding set first, while the stub is still root (dropping needs CAP_SETPCAP),
    // and only what the image lacks.
    let drop = stub.cap_bounding & !c.cap_bounding;
    for cap in (0..64u64).filter(|cap| drop & (1 << cap) != 0) {
        remote.call(libc::SYS_prctl, &[libc::PR_CAPBSET_DROP as u64, cap], || {
            format!("prctl(PR_CAPBSET_DROP, {cap})")
        })?;
    }
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
    let at = remote.write(0, &groups)?;
    remote.call(libc::SYS_setgroups, &[c.groups.len() as u64, at], || "setgroups".into())?;
    remote.call(libc::SYS_setresgid, &[c.gids[0].into(), c.gids[1].into(), c.gids[2].into()], || {
        "setresgid".into()
    })?;
    remote.call(libc::SYS_setfsgid, &[c.gids[3].into()], || "setfsgid".into())?;
    // Keep the permitted set across the uid change; capset below sets the real sets.
    remote.call(libc::SYS_prctl, &[libc::PR_SET_KEEPCAPS as u64, 1], || "prctl(PR_SET_KEEPCAPS)".into())?;
    remote.call(libc::SYS_setresuid, &[c.uids[0].into(), c.uids[1].into(), c.uids[2].into()], || {
        "setresuid".into()
    })?;
    remote.call(libc::SYS_setfsuid, &[c.uids[3].into()], || "setfsuid".into())?;
    // Setting securebits needs CAP_SETPCAP: kept until they are set, if the image lacks it.
    let setpcap = if c.securebits != 0 { 1u64 << linux_raw_sys::general::CAP_SETPCAP } else { 0 };
    capset(remote, c.cap_effective | setpcap, c.cap_permitted | setpcap, c.cap_inheritable)?;
    // Ambient capabilities before the securebits (SECBIT_NO_CAP_AMBIENT_RAISE forbids
    // raising them): each must be permitted and inheritable already.
    for cap in (0..64u64).filter(|cap| c.cap_ambient & (1 << cap) != 0) {
        remote.call(
            libc::SYS_prctl,
            &[libc::PR_CAP_AMBIENT as u64, libc::PR_CAP_AMBIENT_RAISE as u64, cap, 0, 0],
            || format!("prctl(PR_CAP_AMBIENT_RAISE, {cap})"),
        )?;
    }
    // The image's securebits replace the KEEP_CAPS set above (it is one of them);
    // clearing KEEP_CAPS alone needs no capability.
    if c.securebits == 0 {
        remote
            .call(libc::SYS_prctl, &[libc::PR_SET_KEEPCAPS as u64, 0], || "prctl(PR_SET_KEEPCAPS)".into())?;
    } else {
        remote.call(libc::SYS_prctl, &[libc::PR_SET_SECUREBITS as u64, u64::from(c.securebits)], || {
            format!("prctl(PR_SET_SECUREBITS, {:#x})", c.securebits)
        })?;
    }
    if setpcap & !c.cap_effective != 0 || setpcap & !c.cap_permitted != 0 {
        capset(remote, c.cap_effective, c.cap_permitted, c.cap_inheritable)?;
    }
    if c.no_new_privs {
        remote.call(libc::SYS_prctl, &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0], || {
            "prctl(PR_SET_NO_NEW_PRIVS)".into()
        })?;
    }
    Ok(())
}
