//! Per-process and per-thread attributes that programs set with `prctl(2)` and a few
//! files of `/proc`, the domain name of the container's UTS namespace, and the owner,
//! mode and times of the files a restore creates — with the checks [`crate::validate`]
//! runs on them.

use serde::{Deserialize, Serialize};

use crate::error::Invalid;

/// The audit subsystem's value for a login uid or session id never set.
pub const AUDIT_UNSET: u32 = u32::MAX;

/// Every securebit and its lock (`SECURE_ALL_BITS | SECURE_ALL_LOCKS`, Linux 6.14 and
/// later: NOROOT, NO_SETUID_FIXUP, KEEP_CAPS, NO_CAP_AMBIENT_RAISE, EXEC_RESTRICT_FILE,
/// EXEC_DENY_INTERACTIVE).
pub const SECUREBITS_ALL: u32 = 0xfff;

/// `PR_GET_THP_DISABLE`: THP allowed (0), disabled (1), disabled except where
/// `madvise(MADV_HUGEPAGE)` asks (`1 | PR_THP_DISABLE_EXCEPT_ADVISED << 1`, Linux 6.18).
pub const THP_DISABLE_VALUES: [u32; 3] = [0, 1, 3];

/// `PR_MDWE_REFUSE_EXEC_GAIN | PR_MDWE_NO_INHERIT`.
pub const MDWE_ALL: u32 = 0b11;

/// `PR_MCE_KILL_GET`: `PR_MCE_KILL_LATE` (0), `EARLY` (1), `DEFAULT` (2, the system's
/// `vm.memory_failure_early_kill`).
pub const MCE_KILL_DEFAULT: u32 = 2;

/// `PR_GET_TSC`: `PR_TSC_ENABLE` (1) or `PR_TSC_SIGSEGV` (2).
pub const TSC_ENABLE: u32 = 1;

/// The longest domain name (`__NEW_UTS_LEN`).
pub const MAX_DOMAINNAME: usize = 64;

/// What one process set about itself (its mm and signal struct, its audit identity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessAttrs {
    /// `PR_GET_CHILD_SUBREAPER`.
    pub child_subreaper: bool,
    /// `PR_GET_DUMPABLE`: 0, 1, or 2 (only `fs.suid_dumpable` gives 2).
    pub dumpable: u32,
    /// `PR_GET_THP_DISABLE` ([`THP_DISABLE_VALUES`]).
    pub thp_disable: u32,
    /// `PR_GET_MDWE` ([`MDWE_ALL`] bits).
    pub mdwe: u32,
    /// `/proc/PID/loginuid` ([`AUDIT_UNSET`] if never set).
    pub loginuid: u32,
    /// `/proc/PID/sessionid` ([`AUDIT_UNSET`] if never set). The kernel hands out a new
    /// one each time a login uid is set, and never one chosen by the caller.
    pub sessionid: u32,
    /// The UTS namespace's domain name (`setdomainname`), in PID 1's record only.
    pub domainname: Option<String>,
}

impl Default for ProcessAttrs {
    /// What a process that set nothing has (a zombie's record holds this).
    fn default() -> ProcessAttrs {
        ProcessAttrs {
            child_subreaper: false,
            dumpable: 1,
            thp_disable: 0,
            mdwe: 0,
            loginuid: AUDIT_UNSET,
            sessionid: AUDIT_UNSET,
            domainname: None,
        }
    }
}

/// What one thread set about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadAttrs {
    /// `PR_GET_PDEATHSIG`: the signal it gets when the thread that created it exits.
    pub pdeathsig: i32,
    /// `PR_GET_TIMERSLACK`, in ns.
    pub timerslack_ns: u64,
    /// `PR_MCE_KILL_GET`.
    pub mce_kill: u32,
    /// `PR_GET_TSC`.
    pub tsc: u32,
}

impl Default for ThreadAttrs {
    fn default() -> ThreadAttrs {
        ThreadAttrs { pdeathsig: 0, timerslack_ns: 50_000, mce_kill: MCE_KILL_DEFAULT, tsc: TSC_ENABLE }
    }
}

/// The inode attributes of a file a restore creates (a memfd, a deleted file, a FIFO):
/// permission bits, owner, and access and modification times, in ns since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
}

fn bad(field: &'static str, problem: String) -> Result<(), Invalid> {
    Err(Invalid::Field { field, problem })
}

/// Checks a process's attributes (`pid` as the container sees it).
pub(crate) fn check_process(pid: i32, a: &ProcessAttrs) -> Result<(), Invalid> {
    if a.dumpable > 2 {
        return bad("attrs", format!("dumpable {} is not 0, 1 or 2", a.dumpable));
    }
    if !THP_DISABLE_VALUES.contains(&a.thp_disable) {
        return bad("attrs", format!("thp_disable {} is not 0, 1 or 3", a.thp_disable));
    }
    if a.mdwe & !MDWE_ALL != 0 {
        return bad("attrs", format!("mdwe {:#x} has bits beyond PR_MDWE_*", a.mdwe));
    }
    match &a.domainname {
        Some(_) if pid != 1 => bad("attrs", "only PID 1 carries the domain name".into()),
        Some(name) if name.len() > MAX_DOMAINNAME || name.contains('\0') => {
            bad("attrs", format!("{name:?} is not a domain name (at most {MAX_DOMAINNAME} bytes, no NUL)"))
        }
        _ => Ok(()),
    }
}

/// Checks a thread's attributes.
pub(crate) fn check_thread(tid: i32, a: &ThreadAttrs) -> Result<(), Invalid> {
    if !(0..=64).contains(&a.pdeathsig) {
        return bad("attrs", format!("thread {tid}: pdeathsig {} is not a signal", a.pdeathsig));
    }
    if a.mce_kill > MCE_KILL_DEFAULT {
        return bad("attrs", format!("thread {tid}: mce_kill {} is not a PR_MCE_KILL_* policy", a.mce_kill));
    }
    if !(1..=2).contains(&a.tsc) {
        return bad("attrs", format!("thread {tid}: tsc {} is not PR_TSC_ENABLE or PR_TSC_SIGSEGV", a.tsc));
    }
    Ok(())
}

/// Checks securebits: only the bits and locks the kernel knows.
pub(crate) fn check_securebits(bits: u32) -> Result<(), Invalid> {
    if bits & !SECUREBITS_ALL != 0 {
        return bad("creds.securebits", format!("{bits:#x} has bits beyond the securebits and their locks"));
    }
    Ok(())
}

/// Checks a created file's attributes (`what` names it in the error).
pub(crate) fn check_meta(what: &str, m: &FileMeta) -> Result<(), Invalid> {
    if m.mode > 0o7777 {
        return bad("file meta", format!("{what}: mode {:o} is not a permission mode", m.mode));
    }
    Ok(())
}

/// The attributes of `p` (and its threads) that differ from what a process that set
/// nothing has, one phrase each, for `migrate inspect`.
pub fn non_default(p: &super::ProcessRecord) -> Vec<String> {
    let (a, d) = (&p.attrs, ProcessAttrs::default());
    let mut out = Vec::new();
    if a.child_subreaper {
        out.push("child subreaper".into());
    }
    if a.dumpable != d.dumpable {
        out.push(format!("dumpable {}", a.dumpable));
    }
    if a.thp_disable != 0 {
        out.push(format!("THP disabled{}", if a.thp_disable == 3 { " except where advised" } else { "" }));
    }
    if a.mdwe != 0 {
        out.push(format!("MDWE {:#x}", a.mdwe));
    }
    if (a.loginuid, a.sessionid) != (AUDIT_UNSET, AUDIT_UNSET) {
        out.push(format!("login uid {} session {}", a.loginuid, a.sessionid));
    }
    if let Some(name) = a.domainname.as_ref().filter(|n| !n.is_empty() && *n != "(none)") {
        out.push(format!("domain name {name}"));
    }
    if p.creds.securebits != 0 {
        out.push(format!("securebits {:#x}", p.creds.securebits));
    }
    if p.creds.no_new_privs {
        out.push("no_new_privs".into());
    }
    for t in &p.threads {
        let (a, d) = (&t.attrs, ThreadAttrs::default());
        if a.pdeathsig != 0 {
            out.push(format!("thread {}: pdeathsig {}", t.tid, a.pdeathsig));
        }
        if a.timerslack_ns != d.timerslack_ns {
            out.push(format!("thread {}: timer slack {} ns", t.tid, a.timerslack_ns));
        }
        if a.mce_kill != d.mce_kill {
            out.push(format!(
                "thread {}: MCE kill {}",
                t.tid,
                if a.mce_kill == 1 { "early" } else { "late" }
            ));
        }
        if a.tsc != d.tsc {
            out.push(format!("thread {}: TSC reads fault", t.tid));
        }
    }
    out
}
