//! The `/proc/PID/*` files the dump reads. `stat`, `status` and `limits` are parsed by
//! procfs-core, over text read through `read_proc` so that errors keep the pid; what
//! remains here is what procfs-core does not cover: `smaps` with its `VmFlags`, the
//! `pos`/`flags` and `lock:` lines of fdinfo, `auxv` and a status `Name` (see
//! [`status_field`]). Pure functions over text, so that each is tested on fixed input.

use migrate_proto::records::{Creds, FileLock, LockKind, Rlimit};
use procfs_core::process::{LimitValue, Limits};
pub use procfs_core::process::{Stat, Status};
use procfs_core::{FromRead, ProcError};

use crate::error::{EngineError, read_proc};

/// One mapping from `/proc/PID/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    /// `rwxp` / `rwxs`.
    pub perms: String,
    pub offset: u64,
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`), empty for anonymous memory.
    pub name: String,
    /// Two-letter flags of `VmFlags`.
    pub vm_flags: Vec<String>,
    /// `ProtectionKey:` (only on CPUs with memory protection keys; 0 otherwise).
    pub pkey: u32,
}

impl MapEntry {
    pub fn shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }

    pub fn prot(&self) -> u32 {
        let p = self.perms.as_bytes();
        let bit = |i: usize, c: u8, v: i32| if p.get(i) == Some(&c) { v as u32 } else { 0 };
        bit(0, b'r', libc::PROT_READ) | bit(1, b'w', libc::PROT_WRITE) | bit(2, b'x', libc::PROT_EXEC)
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.vm_flags.iter().any(|f| f == flag)
    }
}

/// Parses `/proc/PID/smaps` (a `maps` line per mapping, then its fields), or `maps`.
pub fn parse_smaps(text: &str) -> Result<Vec<MapEntry>, String> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.vm_flags = flags.split_whitespace().map(str::to_string).collect();
            }
            continue;
        }
        if let Some(key) = line.strip_prefix("ProtectionKey:") {
            if let Some(last) = out.last_mut() {
                last.pkey = key.trim().parse().map_err(|_| format!("unexpected smaps line {line:?}"))?;
            }
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        // Field lines are `Name:   value`; mapping lines start with `start-end`.
        if first.ends_with(':') || !first.contains('-') {
            continue;
        }
        out.push(parse_maps_line(line)?);
    }
    Ok(out)
}

fn parse_maps_line(line: &str) -> Result<MapEntry, String> {
    let bad = || format!("unexpected maps line {line:?}");
    let mut it = line.splitn(6, ' ');
    let range = it.next().ok_or_else(bad)?;
    let perms = it.next().ok_or_else(bad)?.to_string();
    let offset = u64::from_str_radix(it.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
    let _dev = it.next().ok_or_else(bad)?;
    let inode = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let name = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-').ok_or_else(bad)?;
    let start = u64::from_str_radix(s, 16).map_err(|_| bad())?;
    let end = u64::from_str_radix(e, 16).map_err(|_| bad())?;
    Ok(MapEntry { start, end, perms, offset, inode, name, vm_flags: Vec::new(), pkey: 0 })
}

/// What procfs-core says of a file it could not parse, without its plea to report a bug
/// in it: here that is a kernel we do not know, or a file that changed under us.
pub fn reason(e: ProcError) -> String {
    match e {
        // Nested failures repeat the prefix; the innermost says what was wrong.
        ProcError::InternalError(e) => e
            .msg
            .rsplit("Internal Unwrap Error: ")
            .next()
            .unwrap_or_default()
            .replace("NoneError", "a field is missing"),
        other => other.to_string(),
    }
}

/// Parses `/proc/PID/stat` (or `task/TID/stat`).
pub fn parse_stat(text: &str) -> Result<Stat, String> {
    Stat::from_read(text.as_bytes()).map_err(|e| format!("unexpected stat: {}", reason(e)))
}

/// Parses `/proc/PID/status` (or `task/TID/status`).
pub fn parse_status(text: &str) -> Result<Status, String> {
    Status::from_read(text.as_bytes()).map_err(|e| format!("unexpected status: {}", reason(e)))
}

/// `/proc/PID/stat`, parsed; errors name the pid.
pub fn read_stat(pid: i32) -> Result<Stat, EngineError> {
    parse_stat(&read_proc(pid, "stat")?).map_err(EngineError::proc(pid, "stat"))
}

/// `/proc/PID/status`, parsed; errors name the pid.
pub fn read_status(pid: i32) -> Result<Status, EngineError> {
    parse_status(&read_proc(pid, "status")?).map_err(EngineError::proc(pid, "status"))
}

/// The error for a file of `/proc` (one that names no process, or ours) whose text is not
/// what it should be.
pub fn unparsable(path: &'static str) -> impl Fn(String) -> EngineError {
    move |what| EngineError::Io {
        op: "parse",
        path: path.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    }
}

/// `pid`'s pid in its innermost pid namespace (the last of `NSpid`).
pub fn ns_pid(pid: i32) -> Result<i32, EngineError> {
    innermost(&read_status(pid)?.nspid, "NSpid").map_err(EngineError::proc(pid, "status"))
}

/// The live processes of `pids` other than `root` (zombies have no namespaces left)
/// whose namespace `kind` (`ipc`, `mnt`: a name under `/proc/PID/ns/`) is not `root`'s.
/// A link that cannot be read is an error, never taken for the same namespace.
pub fn outside_ns(root: i32, pids: &[i32], kind: &str) -> Result<Vec<i32>, EngineError> {
    let ns = |p: i32| {
        let path = format!("/proc/{p}/ns/{kind}");
        std::fs::read_link(&path).map_err(|e| crate::error::proc_err(p, "read the link", path)(e))
    };
    let home = ns(root)?;
    let mut out = Vec::new();
    for &p in pids.iter().filter(|&&p| p != root) {
        if !crate::seize::is_zombie(p) && ns(p)? != home {
            out.push(p);
        }
    }
    Ok(out)
}

/// A `Key:\tvalue` line, as fdinfo files write them (procfs-core has no generic fdinfo
/// parser: each kind adds its own keys). In `status` it serves only `Name`: procfs-core's
/// [`Status`] splits each line at every `:`, so a name such as `worker:1` would lose its
/// tail there.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

/// Credentials and capabilities of a parsed status. `CapBnd` (2.6.26) and `CapAmb` (4.3)
/// are optional to procfs-core; a status without them cannot be restored faithfully.
pub fn creds(status: &Status) -> Result<Creds, String> {
    Ok(Creds {
        uids: [status.ruid, status.euid, status.suid, status.fuid],
        gids: [status.rgid, status.egid, status.sgid, status.fgid],
        groups: status.groups.clone(),
        cap_inheritable: status.capinh,
        cap_permitted: status.capprm,
        cap_effective: status.capeff,
        cap_bounding: status.capbnd.ok_or("CapBnd missing from status")?,
        cap_ambient: status.capamb.ok_or("CapAmb missing from status")?,
        no_new_privs: status.nonewprivs == Some(1),
        // Not in `status`: the dump asks the task (`PR_GET_SECUREBITS`).
        securebits: 0,
    })
}

/// The innermost (container) value of a namespace id list of status (`status.nspid`,
/// named `key` in errors).
pub fn innermost(ids: &Option<Vec<i32>>, key: &str) -> Result<i32, String> {
    ids.as_ref().and_then(|v| v.last().copied()).ok_or_else(|| format!("{key} missing from status"))
}

/// The innermost (container) value of the `NSpid`/`NSpgid`/`NSsid`/`NStgid` line of the
/// text of a status.
pub fn ns_value(status: &str, key: &str) -> Result<i32, String> {
    let st = parse_status(status)?;
    let ids = match key {
        "NSpid" => &st.nspid,
        "NSpgid" => &st.nspgid,
        "NSsid" => &st.nssid,
        "NStgid" => &st.nstgid,
        other => return Err(format!("{other} is not a namespace id list of status")),
    };
    innermost(ids, key)
}

/// `/proc/PID/limits`, in resource order (RLIMIT_CPU = 0, …).
pub fn parse_limits(text: &str) -> Result<Vec<Rlimit>, String> {
    let l = Limits::from_read(text.as_bytes()).map_err(|e| format!("unexpected limits: {}", reason(e)))?;
    let value = |v: LimitValue| match v {
        LimitValue::Unlimited => u64::MAX,
        LimitValue::Value(v) => v,
    };
    let by_resource = [
        (libc::RLIMIT_CPU, l.max_cpu_time),
        (libc::RLIMIT_FSIZE, l.max_file_size),
        (libc::RLIMIT_DATA, l.max_data_size),
        (libc::RLIMIT_STACK, l.max_stack_size),
        (libc::RLIMIT_CORE, l.max_core_file_size),
        (libc::RLIMIT_RSS, l.max_resident_set),
        (libc::RLIMIT_NPROC, l.max_processes),
        (libc::RLIMIT_NOFILE, l.max_open_files),
        (libc::RLIMIT_MEMLOCK, l.max_locked_memory),
        (libc::RLIMIT_AS, l.max_address_space),
        (libc::RLIMIT_LOCKS, l.max_file_locks),
        (libc::RLIMIT_SIGPENDING, l.max_pending_signals),
        (libc::RLIMIT_MSGQUEUE, l.max_msgqueue_size),
        (libc::RLIMIT_NICE, l.max_nice_priority),
        (libc::RLIMIT_RTPRIO, l.max_realtime_priority),
        (libc::RLIMIT_RTTIME, l.max_realtime_timeout),
    ];
    Ok(by_resource
        .into_iter()
        .map(|(resource, lim)| Rlimit { resource, cur: value(lim.soft_limit), max: value(lim.hard_limit) })
        .collect())
}

/// `pos` and `flags` (octal) of `/proc/PID/fdinfo/FD`.
pub fn parse_fdinfo(text: &str) -> Result<(u64, u32), String> {
    let pos = status_field(text, "pos").and_then(|v| v.parse().ok()).ok_or("fdinfo without pos")?;
    let flags = status_field(text, "flags")
        .and_then(|v| u32::from_str_radix(v, 8).ok())
        .ok_or("fdinfo without flags")?;
    Ok((pos, flags))
}

/// The locks of an fdinfo's `lock:` lines that belong with this fd in process `pid` (as
/// this process's namespace numbers it): `flock` and OFD locks (the description's), and
/// POSIX locks owned by `pid` (another process's lock shows up here when it set it through
/// a description both share). Waiters (`->`) are not locks. A lease is an error.
pub fn parse_locks(text: &str, pid: i32) -> Result<Vec<FileLock>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("lock:")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) == Some(&"->") {
            continue;
        }
        let bad = || format!("unexpected lock line {line:?}");
        let [_, kind, _mode, access, owner, _inode, start, end, ..] = f.as_slice() else { return Err(bad()) };
        let kind = match *kind {
            "POSIX" if owner.parse::<i32>().ok() == Some(pid) => LockKind::Posix,
            "POSIX" => continue,
            "OFDLCK" => LockKind::Ofd,
            "FLOCK" => LockKind::Flock,
            "LEASE" => return Err("holds a file lease (fcntl F_SETLEASE): not supported yet".into()),
            other => return Err(format!("holds a {other} lock, not supported yet")),
        };
        let write = match *access {
            "WRITE" => true,
            "READ" => false,
            _ => return Err(bad()),
        };
        let start = start.parse().map_err(|_| bad())?;
        let end = if *end == "EOF" { None } else { Some(end.parse().map_err(|_| bad())?) };
        out.push(FileLock { kind, write, start, end });
    }
    Ok(out)
}

/// `/proc/PID/auxv`: native-endian u64 pairs.
pub fn parse_auxv(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_of_this_fd_and_process() {
        let info = "pos:\t0\nflags:\t02\nlock:\t1: POSIX  ADVISORY  WRITE 42 fe:00:7 0 EOF
lock:\t2: POSIX  ADVISORY  READ 43 fe:00:7 0 9
lock:\t3: OFDLCK ADVISORY  READ -1 fe:00:7 10 29
lock:\t4: FLOCK  ADVISORY  WRITE 43 fe:00:7 0 EOF
lock:\t1: -> POSIX  ADVISORY  WRITE 44 fe:00:7 0 EOF\n";
        let got = parse_locks(info, 42).unwrap_or_default();
        let lock = |kind, write, start, end| FileLock { kind, write, start, end };
        assert_eq!(
            got,
            [
                lock(LockKind::Posix, true, 0, None),
                lock(LockKind::Ofd, false, 10, Some(29)),
                lock(LockKind::Flock, true, 0, None)
            ]
        );
        assert!(parse_locks("lock:\t1: LEASE  ACTIVE    READ 42 fe:00:7 0 EOF", 42).is_err());
    }

    const SMAPS: &str = "55d0c0a00000-55d0c0a02000 r--p 00000000 fe:01 1234 /usr/bin/python3.11
Size:                  8 kB
VmFlags: rd mr mw me sd
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
VmFlags: rd wr mr mw me ac sd
7f00aa000000-7f00aa001000 rw-s 00000000 00:01 42                         /dev/zero (deleted)
VmFlags: rd wr sh mr mw me ms sd
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
VmFlags: rd wr mr mw me gd ac
";

    #[test]
    fn smaps() -> Result<(), String> {
        let m = parse_smaps(SMAPS)?;
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].name, "/usr/bin/python3.11");
        assert_eq!(m[0].prot(), libc::PROT_READ as u32);
        assert_eq!(m[1].name, "[heap]");
        assert!(m[2].shared() && m[2].name == "/dev/zero (deleted)");
        assert!(m[3].has_flag("gd"));
        assert_eq!(m[3].start, 0x7ffc00000000);
        Ok(())
    }

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max file size             unlimited            unlimited            bytes
Max data size             unlimited            unlimited            bytes
Max stack size            8388608              unlimited            bytes
Max core file size        0                    unlimited            bytes
Max resident set          unlimited            unlimited            bytes
Max processes             96362                96362                processes
Max open files            1024                 524288               files
Max locked memory         8388608              8388608              bytes
Max address space         unlimited            unlimited            bytes
Max file locks            unlimited            unlimited            locks
Max pending signals       96362                96362                signals
Max msgqueue size         819200               819200               bytes
Max nice priority         0                    0
Max realtime priority     7                    9
Max realtime timeout      unlimited            unlimited            us
";

    const STATUS: &str = "Name:\tworker:1\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\n\
Pid:\t4242\nPPid:\t4200\nTracerPid:\t0\nUid:\t0\t1\t2\t3\nGid:\t4\t5\t6\t7\nFDSize:\t64\nGroups:\t0 10 \n\
NStgid:\t4242\t1\nNSpid:\t4242\t1\nNSpgid:\t4200\t9\nNSsid:\t4100\t8\nKthread:\t0\nThreads:\t1\nSigQ:\t0/96362\n\
SigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n\
SigCgt:\t0000000000004002\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n\
CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t0\n";

    #[test]
    fn limits_and_status() -> Result<(), String> {
        let l = parse_limits(LIMITS)?;
        assert_eq!(l.len(), 16);
        assert!(l.iter().enumerate().all(|(i, r)| r.resource == i as u32));
        let get = |r: u32| l.iter().find(|x| x.resource == r).map(|x| (x.cur, x.max));
        assert_eq!(get(libc::RLIMIT_NOFILE), Some((1024, 524288)));
        assert_eq!(get(libc::RLIMIT_CPU), Some((u64::MAX, u64::MAX)));
        assert_eq!(get(libc::RLIMIT_RTPRIO), Some((7, 9)));
        assert!(parse_limits("Limit  Soft Limit  Hard Limit  Units\nMax cpu time  1  1  seconds\n").is_err());
        let c = creds(&parse_status(STATUS)?)?;
        assert_eq!((c.uids, c.gids), ([0, 1, 2, 3], [4, 5, 6, 7]));
        assert_eq!(c.groups, vec![0, 10]);
        assert_eq!(c.cap_effective, 0x1ffffffffff);
        assert!(c.no_new_privs);
        assert_eq!(ns_value(STATUS, "NSpid")?, 1);
        assert_eq!(ns_value(STATUS, "NSpgid")?, 9);
        assert_eq!(ns_value(STATUS, "NSsid")?, 8);
        let st = parse_status(STATUS)?;
        assert_eq!((st.ppid, st.umask, st.sigcgt), (4200, Some(0o22), 0x4002));
        assert_eq!(status_field(STATUS, "Name"), Some("worker:1"));
        let without_ambient = STATUS.replace("CapAmb:\t0000000000000000\n", "");
        assert!(creds(&parse_status(&without_ambient)?).is_err());
        assert!(parse_status(&STATUS.replace("Uid:\t0\t1\t2\t3", "Uid:\t0\t1")).is_err());
        let bad_ppid = parse_status(&STATUS.replace("PPid:\t4200", "PPid:\tx")).err().unwrap_or_default();
        assert!(bad_ppid.contains("PPid") && !bad_ppid.contains("bug"), "{bad_ppid}");
        assert_eq!(parse_fdinfo("pos:\t42\nflags:\t02102001\nmnt_id:\t30\n")?, (42, 0o2102001));
        Ok(())
    }

    #[test]
    fn stat() -> Result<(), String> {
        let line = "42 (a b) c) Z 1 42 42 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 100 200 300 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 256\n";
        let st = parse_stat(line)?;
        assert_eq!((st.pid, st.comm.as_str(), st.state, st.ppid), (42, "a b) c", 'Z', 1));
        assert_eq!(st.exit_code, Some(256));
        assert_eq!(parse_stat("42 (sh) S 1").err().as_deref(), Some("unexpected stat: a field is missing"));
        assert_eq!(st.starttime, 100);
        Ok(())
    }
}
