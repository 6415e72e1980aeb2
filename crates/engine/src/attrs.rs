//! Attributes a process or a thread sets about itself with `prctl(2)` (and two files of
//! `/proc`): dumped by injected `PR_GET_*` calls, restored by injected `PR_SET_*` calls;
//! and what a restore cannot make, refused by name before anything is touched.
//!
//! Carried, per thread: `PR_SET_PDEATHSIG`, `PR_SET_TIMERSLACK`, `PR_MCE_KILL`,
//! `PR_SET_TSC` (the name, `PR_SET_NAME`, travels in [`crate::thread`]). Per process:
//! `PR_SET_CHILD_SUBREAPER`, `PR_SET_DUMPABLE`, `PR_SET_THP_DISABLE` (with 6.18's
//! `PR_THP_DISABLE_EXCEPT_ADVISED`), `PR_SET_MDWE`, the securebits (`KEEP_CAPS` is one;
//! set among the credentials by [`crate::process`], which needs `CAP_SETPCAP` for them),
//! the audit login uid (see below), and PID 1's UTS domain name (the hostname is the
//! container's own, given to the runtime from the manifest).
//!
//! Order on restore. The kernel resets the dumpable flag and the parent-death signal
//! whenever credentials change (`commit_creds`), clears the parent-death signal of every
//! new task, and sends it when the parent thread exits — as the session helpers of
//! [`crate::session`] do under the processes they fork. So everything but the login uid
//! and the domain name is set at the very end ([`restore`]), once every process, thread
//! and helper is done, just before the tasks resume; also the child-subreaper flag, which
//! those helpers use for a moment. The login uid is cleared before the credentials, while
//! the task still has `CAP_AUDIT_CONTROL` ([`before_creds`]).
//!
//! Audit identity. The kernel gives a task a new session id each time its login uid is
//! set, never one chosen by the caller, and a child inherits both. A restored process is
//! forked, through its parents, from the restore stub, so it is born with the stub's —
//! the restoring agent's — login uid and session: the only two identities it can have
//! afterwards are that one, or "never set" (written back as `4294967295`, which also unsets
//! the session). [`check`] refuses at the checkpoint a process whose identity no restore
//! can give (one set inside the container), and [`check_audit`] refuses a restore whose
//! agent is in another session, before anything is built.
//!
//! Refused at the checkpoint when not the default (nothing restores them yet):
//! `PR_SET_IO_FLUSHER` (`PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE` in the task's `stat`
//! flags), `PR_SET_MEMORY_MERGE` (`ksm_merge_any` in `ksm_stat`), a speculation control
//! (`PR_SET_SPECULATION_CTRL`: the `Speculation*` lines of `status` differ from the
//! agent's own), x86 linear address masking (`untag_mask`), x86 shadow stacks
//! (`x86_Thread_features`), threads of one process with different `no_new_privs`, and a
//! process in a UTS or time namespace other than PID 1's (or about to put its children in
//! one: `time_for_children`). `PR_SET_PTRACER` needs Yama, absent here;
//! `PR_SCHED_CORE` needs `CONFIG_SCHED_CORE`, unset here.

use migrate_proto::records::{AUDIT_UNSET, MCE_KILL_DEFAULT, ProcessAttrs, ProcessRecord, ThreadAttrs};

use crate::error::{EngineError, Refusals, read_proc};
use crate::files::describe_process;
use crate::inject::{Remote, Scratch};
use crate::seize::Seized;

/// `PR_THP_DISABLE_EXCEPT_ADVISED` (Linux 6.18), as `PR_GET_THP_DISABLE` reports it.
const THP_EXCEPT_ADVISED: u32 = 2;
/// `PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE`: what `PR_SET_IO_FLUSHER` sets.
const PF_IO_FLUSHER: u32 = 0x0008_0000 | 0x0010_0000;
/// Where in the scratch page a `PR_GET_*` that writes an int puts it.
const OUT: u64 = 2048;

/// A login uid and session id.
type Audit = (u32, u32);
const UNSET: Audit = (AUDIT_UNSET, AUDIT_UNSET);

/// `prctl(option, args…)` injected in `remote.task`.
fn prctl(remote: &mut Remote<'_>, option: i32, args: &[u64]) -> Result<u64, EngineError> {
    let mut all = vec![option as u64];
    all.extend_from_slice(args);
    all.resize(5, 0);
    remote.call(libc::SYS_prctl, &all, || format!("prctl({option}, {args:?})"))
}

/// A `PR_GET_*` that writes an int at its second argument.
fn prctl_int(remote: &mut Remote<'_>, option: i32) -> Result<i32, EngineError> {
    let at = remote.scratch.addr + OUT;
    prctl(remote, option, &[at])?;
    let b = remote.read(OUT, 4)?;
    Ok(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// The thread `remote.task`'s attributes.
pub fn dump_thread(remote: &mut Remote<'_>) -> Result<ThreadAttrs, EngineError> {
    Ok(ThreadAttrs {
        pdeathsig: prctl_int(remote, libc::PR_GET_PDEATHSIG)?,
        timerslack_ns: prctl(remote, libc::PR_GET_TIMERSLACK, &[])?,
        mce_kill: prctl(remote, libc::PR_MCE_KILL_GET, &[])? as u32,
        tsc: prctl_int(remote, libc::PR_GET_TSC)? as u32,
    })
}

/// The process's attributes (from its main thread, `remote.task`) and its securebits;
/// `domainname` is PID 1's UTS domain name.
pub fn dump_process(
    remote: &mut Remote<'_>,
    domainname: Option<String>,
) -> Result<(ProcessAttrs, u32), EngineError> {
    let (loginuid, sessionid) = audit(remote.pid)?;
    let mdwe = match remote.syscall(libc::SYS_prctl, &[libc::PR_GET_MDWE as u64, 0, 0, 0, 0])? {
        Ok(v) => v as u32,
        // A kernel before 6.3: nothing to carry.
        Err(nix::errno::Errno::EINVAL) => 0,
        Err(errno) => {
            return Err(EngineError::Injected { pid: remote.pid, call: "prctl(PR_GET_MDWE)".into(), errno });
        }
    };
    let attrs = ProcessAttrs {
        child_subreaper: prctl_int(remote, libc::PR_GET_CHILD_SUBREAPER)? != 0,
        dumpable: prctl(remote, libc::PR_GET_DUMPABLE, &[])? as u32,
        thp_disable: prctl(remote, libc::PR_GET_THP_DISABLE, &[])? as u32,
        mdwe,
        loginuid,
        sessionid,
        domainname,
    };
    Ok((attrs, prctl(remote, libc::PR_GET_SECUREBITS, &[])? as u32))
}

/// The audit login uid and session id of the task whose `/proc` directory is `dir`;
/// never set on a kernel without audit (`CONFIG_AUDIT`: no such files).
fn audit_of(dir: &str) -> Result<Audit, EngineError> {
    let read = |name: &str| -> Result<u32, EngineError> {
        let path = format!("{dir}/{name}");
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::fs::metadata(dir).is_ok() => {
                return Ok(AUDIT_UNSET);
            }
            read => read.map_err(crate::error::io_err("read", path.clone()))?,
        };
        text.trim()
            .parse()
            .map_err(|_| EngineError::Incompatible(format!("{path}: {text:?} is not a number")))
    };
    Ok((read("loginuid")?, read("sessionid")?))
}

/// [`audit_of`] the process `pid` (ours).
fn audit(pid: i32) -> Result<Audit, EngineError> {
    audit_of(&format!("/proc/{pid}"))
}

fn describe_audit((uid, session): Audit) -> String {
    if (uid, session) == UNSET {
        "no audit session".into()
    } else {
        format!("audit session {session} (login uid {uid})")
    }
}

/// Refuses, before anything is seized, what [`restore`] cannot give back: see the module
/// documentation. `pids`: the container's processes, PID 1 first.
pub fn check(pids: &[i32], refusals: &mut Refusals) -> Result<(), EngineError> {
    let Some(&root) = pids.first() else { return Ok(()) };
    let own_status = std::fs::read_to_string("/proc/thread-self/status")
        .map_err(crate::error::io_err("read", "/proc/thread-self/status"))?;
    let ours = audit_of("/proc/self")?;
    let root_audit = audit(root)?;
    let ns = |p: i32, name: &str| std::fs::read_link(format!("/proc/{p}/ns/{name}")).ok();
    for &p in pids.iter().filter(|&&p| !crate::seize::is_zombie(p)) {
        let who = || describe_process(p);
        let mine = audit(p)?;
        if mine != UNSET && p == root && mine != ours {
            refusals.push(format!(
                "{} is in {}, which a restore cannot give it: it would be in this agent's ({}); a session id cannot be chosen",
                who(),
                describe_audit(mine),
                describe_audit(ours)
            ));
        } else if mine != UNSET && p != root && mine != root_audit {
            refusals.push(format!(
                "{} is in {} (set inside the container), which a restore cannot give it: it would be in PID 1's ({}); a session id cannot be chosen",
                who(),
                describe_audit(mine),
                describe_audit(root_audit)
            ));
        }
        for name in ["uts", "time"] {
            if p != root && ns(p, name) != ns(root, name) {
                refusals.push(format!(
                    "{} runs in a {name} namespace of its own, not the container's: not supported yet",
                    who()
                ));
            }
        }
        if ns(p, "time_for_children") != ns(p, "time") {
            refusals.push(format!(
                "{} has made a time namespace for its future children (unshare CLONE_NEWTIME): not supported yet",
                who()
            ));
        }
        if read_proc(p, "ksm_stat")
            .is_ok_and(|s| crate::procfs::status_field(&s, "ksm_merge_any") == Some("yes"))
        {
            refusals.push(format!(
                "{} made all its memory mergeable by KSM (PR_SET_MEMORY_MERGE): not supported yet",
                who()
            ));
        }
        check_threads(p, &own_status, refusals)?;
    }
    Ok(())
}

/// The per-thread part of [`check`].
fn check_threads(pid: i32, own_status: &str, refusals: &mut Refusals) -> Result<(), EngineError> {
    let field = crate::procfs::status_field;
    let mut main_nnp = None;
    for tid in crate::seize::thread_ids(pid)? {
        let who = || format!("{} thread {tid}", describe_process(pid));
        let status = read_proc(pid, &format!("task/{tid}/status"))?;
        let nnp = field(&status, "NoNewPrivs").unwrap_or("?").to_string();
        if *main_nnp.get_or_insert_with(|| nnp.clone()) != nnp {
            refusals
                .push(format!("{} has no_new_privs {nnp}, unlike its main thread: not supported yet", who()));
        }
        for key in ["Speculation_Store_Bypass", "SpeculationIndirectBranch"] {
            if field(&status, key) != field(own_status, key) {
                refusals.push(format!(
                    "{} set its speculation control (PR_SET_SPECULATION_CTRL: {key} {}): not supported yet",
                    who(),
                    field(&status, key).unwrap_or("?")
                ));
            }
        }
        if field(&status, "untag_mask").is_some_and(|m| m != "0xffffffffffffffff") {
            refusals.push(format!(
                "{} uses linear address masking (ARCH_ENABLE_TAGGED_ADDR): not supported",
                who()
            ));
        }
        if field(&status, "x86_Thread_features").is_some_and(|f| !f.is_empty()) {
            refusals.push(format!(
                "{} has x86 thread features enabled (shadow stack: {}): not supported",
                who(),
                field(&status, "x86_Thread_features").unwrap_or("")
            ));
        }
        let stat = read_proc(pid, &format!("task/{tid}/stat"))?;
        let flags = crate::procfs::parse_stat(&stat).map_err(EngineError::proc(tid, "stat"))?.flags;
        if flags & PF_IO_FLUSHER == PF_IO_FLUSHER {
            refusals.push(format!("{} is an IO flusher (PR_SET_IO_FLUSHER): not supported yet", who()));
        }
    }
    Ok(())
}

/// Refuses to restore, before anything is built, processes whose audit identity would
/// differ: each is born with the stub's (`stub`, our pid), and can only keep it or unset
/// it.
pub fn check_audit(stub: i32, processes: &[ProcessRecord]) -> Result<(), EngineError> {
    let here = audit(stub)?;
    for p in processes.iter().filter(|p| p.zombie.is_none()) {
        let want = (p.attrs.loginuid, p.attrs.sessionid);
        if want != UNSET && want != here {
            return Err(EngineError::Incompatible(format!(
                "PID {} ({}) was in {}; restored here it would be in {}, this agent's: a session id cannot be chosen (restore from an agent started in that session)",
                p.pid,
                p.comm,
                describe_audit(want),
                describe_audit(here)
            )));
        }
    }
    Ok(())
}

/// What must come before the credentials, while the task is still root: the login uid
/// unset if the image's is, and PID 1's domain name (the task is in the container's UTS
/// namespace).
pub fn before_creds(remote: &mut Remote<'_>, rec: &ProcessRecord) -> Result<(), EngineError> {
    if (rec.attrs.loginuid, rec.attrs.sessionid) == UNSET && audit(remote.pid)? != UNSET {
        // Only the task itself may write its login uid (`proc_loginuid_write`).
        let path = "/proc/self/loginuid";
        let at = remote.path(0, path)?;
        let fd =
            remote.call(libc::SYS_openat, &[libc::AT_FDCWD as u64, at, libc::O_WRONLY as u64, 0], || {
                format!("open {path}")
            })?;
        let value = AUDIT_UNSET.to_string();
        let buf = remote.write(1024, value.as_bytes())?;
        let wrote = remote.call(libc::SYS_write, &[fd, buf, value.len() as u64], || format!("write {path}"));
        remote.call(libc::SYS_close, &[fd], || "close".into())?;
        wrote?;
    }
    if let Some(name) = &rec.attrs.domainname {
        let at = remote.write(0, name.as_bytes())?;
        remote
            .call(libc::SYS_setdomainname, &[at, name.len() as u64], || format!("setdomainname({name:?})"))?;
    }
    Ok(())
}

/// Sets the attributes of `rec`'s process and threads in `s` (every thread built, the
/// credentials set): the last step before the tasks resume.
pub fn restore(s: &mut Seized, scratch: Scratch, rec: &ProcessRecord) -> Result<(), EngineError> {
    // Every thread of the image gets its own attributes: a count that differs would
    // leave some with their creator's.
    let host = match s.tasks.first() {
        Some(main) if s.tasks.len() == rec.threads.len() => main.tid,
        _ => {
            return Err(EngineError::Incompatible(format!(
                "pid {}: {} threads were built, the image has {}: their attributes cannot be set",
                rec.pid,
                s.tasks.len(),
                rec.threads.len()
            )));
        }
    };
    let (gadget, mem) = (s.gadget, &s.mem);
    for (i, (task, t)) in s.tasks.iter_mut().zip(&rec.threads).enumerate() {
        let mut remote = Remote { task, gadget, mem, pid: host, scratch };
        if i == 0 {
            restore_process(&mut remote, rec)?;
        }
        let a = t.attrs;
        // A realtime thread's slack is the kernel's (0), and setting it is ignored.
        let realtime =
            matches!(t.sched.policy & !libc::SCHED_RESET_ON_FORK, libc::SCHED_FIFO | libc::SCHED_RR);
        if a.timerslack_ns != 0 && !realtime {
            prctl(&mut remote, libc::PR_SET_TIMERSLACK, &[a.timerslack_ns])?;
        }
        // Each set even to its default: a task is born with what its creator (the stub,
        // a forked parent) had, not with the default.
        if a.mce_kill == MCE_KILL_DEFAULT {
            prctl(&mut remote, libc::PR_MCE_KILL, &[libc::PR_MCE_KILL_CLEAR as u64])?;
        } else {
            prctl(&mut remote, libc::PR_MCE_KILL, &[libc::PR_MCE_KILL_SET as u64, u64::from(a.mce_kill)])?;
        }
        prctl(&mut remote, libc::PR_SET_TSC, &[u64::from(a.tsc)])?;
        prctl(&mut remote, libc::PR_SET_PDEATHSIG, &[a.pdeathsig as u64])?;
    }
    Ok(())
}

fn restore_process(remote: &mut Remote<'_>, rec: &ProcessRecord) -> Result<(), EngineError> {
    let a = &rec.attrs;
    prctl(remote, libc::PR_SET_CHILD_SUBREAPER, &[u64::from(a.child_subreaper)])?;
    if a.dumpable == 2 {
        // SUID_DUMP_ROOT comes only from `fs.suid_dumpable` when credentials change.
        if prctl(remote, libc::PR_GET_DUMPABLE, &[])? != 2 {
            return Err(EngineError::Incompatible(format!(
                "PID {} ({}) was dumpable 2 (fs.suid_dumpable), which prctl cannot set",
                rec.pid, rec.comm
            )));
        }
    } else {
        prctl(remote, libc::PR_SET_DUMPABLE, &[u64::from(a.dumpable)])?;
    }
    let thp = a.thp_disable & 1;
    prctl(
        remote,
        libc::PR_SET_THP_DISABLE,
        &[u64::from(thp), u64::from(a.thp_disable & THP_EXCEPT_ADVISED)],
    )?;
    if a.mdwe != 0 {
        prctl(remote, libc::PR_SET_MDWE, &[u64::from(a.mdwe)])?;
    }
    Ok(())
}
