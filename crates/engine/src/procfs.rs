//! Parsers for the `/proc/PID/*` files the dump reads. Pure functions over text, so
//! that each is tested on fixed input; the callers do the reading.

use migrate_proto::records::{Creds, FileLock, LockKind, Rlimit};

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

/// The fields of `/proc/PID/stat` after the command name, indexed from field 3 (state).
pub fn stat_fields(stat: &str) -> Result<Vec<String>, String> {
    let close = stat.rfind(')').ok_or("no command name in stat")?;
    Ok(stat[close + 1..].split_whitespace().map(str::to_string).collect())
}

/// Field `n` (1-based, as in proc(5)) of a stat line, as a number.
pub fn stat_field(fields: &[String], n: usize) -> Result<u64, String> {
    fields
        .get(n.checked_sub(3).ok_or("field index below 3")?)
        .and_then(|f| f.parse::<i64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| format!("stat field {n} missing or not a number"))
}

/// A `Key:\tvalue` field of `/proc/PID/status`.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

fn hex_field(status: &str, key: &str) -> Result<u64, String> {
    let v = status_field(status, key).ok_or_else(|| format!("{key} missing from status"))?;
    u64::from_str_radix(v, 16).map_err(|_| format!("{key}: {v:?} is not hexadecimal"))
}

fn four_ids(status: &str, key: &str) -> Result<[u32; 4], String> {
    let v = status_field(status, key).ok_or_else(|| format!("{key} missing from status"))?;
    let ids: Vec<u32> = v.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    ids.try_into().map_err(|_| format!("{key}: expected four ids in {v:?}"))
}

/// Credentials and capabilities from `/proc/PID/status`.
pub fn parse_creds(status: &str) -> Result<Creds, String> {
    Ok(Creds {
        uids: four_ids(status, "Uid")?,
        gids: four_ids(status, "Gid")?,
        groups: status_field(status, "Groups")
            .unwrap_or("")
            .split_whitespace()
            .map(|g| g.parse().map_err(|_| format!("bad group {g:?}")))
            .collect::<Result<_, _>>()?,
        cap_inheritable: hex_field(status, "CapInh")?,
        cap_permitted: hex_field(status, "CapPrm")?,
        cap_effective: hex_field(status, "CapEff")?,
        cap_bounding: hex_field(status, "CapBnd")?,
        cap_ambient: hex_field(status, "CapAmb")?,
        no_new_privs: status_field(status, "NoNewPrivs") == Some("1"),
        // Not in `status`: the dump asks the task (`PR_GET_SECUREBITS`).
        securebits: 0,
    })
}

/// The innermost (container) value of an `NSpid`/`NSpgid`/`NSsid` line.
pub fn ns_value(status: &str, key: &str) -> Result<i32, String> {
    status_field(status, key)
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{key} missing from status"))
}

/// `/proc/PID/limits`, in resource order (RLIMIT_CPU = 0, …).
pub fn parse_limits(text: &str) -> Result<Vec<Rlimit>, String> {
    let value = |t: &str| if t == "unlimited" { Some(u64::MAX) } else { t.parse().ok() };
    let mut out = Vec::new();
    for (i, line) in text.lines().skip(1).enumerate() {
        let nums: Vec<u64> = line.split_whitespace().filter_map(value).collect();
        let (Some(&cur), Some(&max)) = (nums.first(), nums.get(1)) else {
            return Err(format!("unexpected limits line {line:?}"));
        };
        out.push(Rlimit { resource: i as u32, cur, max });
    }
    Ok(out)
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

    #[test]
    fn limits_and_status() -> Result<(), String> {
        let limits = "Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max file size             unlimited            unlimited            bytes
Max nice priority         0                    0
Max open files            1024                 524288               files
";
        let l = parse_limits(limits)?;
        assert_eq!(l.len(), 4);
        assert_eq!((l[3].resource, l[3].cur, l[3].max), (3, 1024, 524288));
        assert_eq!(l[0].cur, u64::MAX);
        let status = "Name:\tpython3\nUmask:\t0022\nNSpid:\t4242\t1\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t0 10 \n\
CapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n\
CapAmb:\t0000000000000000\nNoNewPrivs:\t0\n";
        let c = parse_creds(status)?;
        assert_eq!(c.groups, vec![0, 10]);
        assert_eq!(c.cap_effective, 0x1ffffffffff);
        assert_eq!(ns_value(status, "NSpid")?, 1);
        assert_eq!(status_field(status, "Umask"), Some("0022"));
        assert_eq!(parse_fdinfo("pos:\t42\nflags:\t02102001\nmnt_id:\t30\n")?, (42, 0o2102001));
        Ok(())
    }

    #[test]
    fn stat() -> Result<(), String> {
        let f = stat_fields("42 (a b) c) S 1 42 42 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 100 200 300")?;
        assert_eq!(f[0], "S");
        assert_eq!(stat_field(&f, 4)?, 1);
        assert_eq!(stat_field(&f, 22)?, 100);
        assert!(stat_field(&f, 60).is_err());
        Ok(())
    }
}
