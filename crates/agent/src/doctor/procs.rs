//! Processes: ptrace, namespaces, clone3 with `set_tid`, pidfd_getfd and
//! process_vm_readv — each tried on a real child process.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use migrate_sys::mem::{RemoteAddr, read_remote};
use migrate_sys::pidfd::PidFd;
use migrate_sys::process::Step;
use migrate_sys::ptrace::Tracee;
use procfs_core::FromRead;
use procfs_core::process::Stat;

use super::{
    ChildGuard, Finding, Helper, PROBE_CLONE3_SET_TID, SET_TID_PROBE_PID, Status, spawn_sleeper, wait_timeout,
};

pub(super) fn ptrace() -> Finding {
    let run = || -> Result<String, String> {
        let child = spawn_sleeper(Vec::new()).map_err(|e| migrate_sys::error_chain(&e))?;
        let tracee = Tracee::seize(child.pid(), nix::sys::ptrace::Options::empty())
            .map_err(|e| migrate_sys::error_chain(&e))?;
        let stopped = tracee.interrupt().map_err(|e| migrate_sys::error_chain(&e))?;
        let regs = stopped.regs().map_err(|e| migrate_sys::error_chain(&e))?;
        stopped.detach().map_err(|e| migrate_sys::error_chain(&e))?;
        Ok(format!(
            "seized pid {}, stopped it with PTRACE_INTERRUPT, read its registers (rip {:#x}), detached",
            child.pid(),
            regs.rip
        ))
    };
    match run() {
        Ok(detail) => Finding::ok("ptrace", "ptrace seize/interrupt", detail),
        Err(detail) => Finding::bad(
            Status::Fail,
            "ptrace",
            "ptrace seize/interrupt",
            detail,
            "Every task is seized with ptrace to read its registers and to inject syscalls, and every restored \
             task is built through ptrace: nothing can be checkpointed or restored.",
            "Allow ptrace: run as root with CAP_SYS_PTRACE, set kernel.yama.ptrace_scope to at most 2, and \
             make sure no seccomp or LSM policy (AppArmor, SELinux) denies ptrace to migrate.",
        ),
    }
}

/// A namespace kind: its `unshare` flag, and the `/proc/PID/ns` link that shows it (for
/// pid and time, the namespace a process's *children* get).
struct Ns {
    name: &'static str,
    flag: libc::c_int,
    link: &'static str,
    why: &'static str,
}

const NAMESPACES: [Ns; 8] = [
    Ns { name: "pid", flag: libc::CLONE_NEWPID, link: "pid_for_children", why: "containers keep their pids" },
    Ns {
        name: "net",
        flag: libc::CLONE_NEWNET,
        link: "net",
        why: "containers keep their addresses and links",
    },
    Ns { name: "uts", flag: libc::CLONE_NEWUTS, link: "uts", why: "containers keep their hostname" },
    Ns {
        name: "ipc",
        flag: libc::CLONE_NEWIPC,
        link: "ipc",
        why: "containers keep their SysV IPC and mqueues",
    },
    Ns { name: "mnt", flag: libc::CLONE_NEWNS, link: "mnt", why: "containers keep their mounts" },
    Ns {
        name: "cgroup",
        flag: libc::CLONE_NEWCGROUP,
        link: "cgroup",
        why: "containers keep their cgroup view",
    },
    Ns {
        name: "time",
        flag: libc::CLONE_NEWTIME,
        link: "time_for_children",
        why: "CLOCK_MONOTONIC and CLOCK_BOOTTIME continue across hosts",
    },
    Ns {
        name: "user",
        flag: libc::CLONE_NEWUSER,
        link: "user",
        why: "containers with their own user namespace",
    },
];

/// One finding per namespace kind: a child unshares it, and its `/proc/PID/ns` link must
/// then differ from ours.
pub(super) fn namespaces() -> Vec<Finding> {
    NAMESPACES.iter().map(namespace).collect()
}

fn namespace(ns: &Ns) -> Finding {
    let id = format!("ns-{}", ns.name);
    let title = format!("{} namespace", ns.name);
    let run = || -> Result<String, String> {
        let child = spawn_sleeper(vec![Step::Unshare { flags: ns.flag }])
            .map_err(|e| migrate_sys::error_chain(&e))?;
        let read = |path: String| std::fs::read_link(&path).map_err(|e| format!("readlink {path}: {e}"));
        let ours = read(format!("/proc/self/ns/{}", ns.link))?;
        let theirs_path = format!("/proc/{}/ns/{}", child.pid(), ns.link);
        let theirs = match std::fs::read_link(&theirs_path) {
            // A pid namespace shows in pid_for_children only once its init exists; before
            // that the link is absent (and ours, which has an init, is present).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && ns.flag == libc::CLONE_NEWPID => {
                read(format!("/proc/{}/ns/pid", child.pid()))?;
                return Ok(format!(
                    "a child unshared it: its pid namespace for children is new and still without an init \
                     (ours: {})",
                    ours.display()
                ));
            }
            Err(e) => return Err(format!("readlink {theirs_path}: {e}")),
            Ok(link) => link,
        };
        if ours == theirs {
            return Err(format!("unshare succeeded but the child is still in {}", ours.display()));
        }
        Ok(format!("a child unshared it: {} (ours: {})", theirs.display(), ours.display()))
    };
    match run() {
        Ok(detail) => Finding::ok(&id, &title, detail),
        Err(detail) => {
            // A container in its own user namespace cannot move; the others can.
            let status = if ns.name == "user" { Status::Warn } else { Status::Fail };
            let meaning = if ns.name == "user" {
                format!("Containers that use a user namespace cannot be created or restored ({}).", ns.why)
            } else {
                format!(
                    "Containers run in a {} namespace of their own, and restore recreates it ({}): no container \
                     can be started or restored.",
                    ns.name, ns.why
                )
            };
            let fix = match ns.name {
                "time" => "Use Linux 5.6+ built with CONFIG_TIME_NS.".to_string(),
                "user" => "Enable user namespaces: CONFIG_USER_NS, sysctl user.max_user_namespaces > 0 (and \
                           kernel.unprivileged_userns_clone=1 where that sysctl exists)."
                    .to_string(),
                other => format!(
                    "Build the kernel with CONFIG_{}_NS and check the sysctl user.max_{other}_namespaces is not 0.",
                    other.to_uppercase()
                ),
            };
            Finding::bad(status, &id, &title, detail, meaning, fix)
        }
    }
}

/// `clone3` with `set_tid` in a new pid namespace, in a helper process (or thread).
pub(super) fn clone3_set_tid(helper: &Helper) -> Finding {
    let ok_detail = format!(
        "in a new pid namespace, clone3 set_tid [1] made the init, which made pid {SET_TID_PROBE_PID} with \
         set_tid [{SET_TID_PROBE_PID}]"
    );
    let result = match helper {
        Helper::Thread => in_thread(),
        Helper::CurrentExe => match std::env::current_exe() {
            Ok(exe) => in_helper(&exe),
            Err(e) => Err(format!("cannot find the migrate executable: {e}")),
        },
        Helper::Exe(exe) => in_helper(exe),
    };
    match result {
        Ok(()) => Finding::ok("clone3-set-tid", "clone3 with set_tid", ok_detail),
        Err(detail) => Finding::bad(
            Status::Fail,
            "clone3-set-tid",
            "clone3 with set_tid",
            detail,
            "Restore recreates every process and thread at its original pid with clone3 set_tid; without it \
             no process tree can be restored.",
            "Use Linux 5.5+ and run migrate with CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN; check that no \
             seccomp filter blocks clone3.",
        ),
    }
}

fn in_thread() -> Result<(), String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
                .map_err(|e| format!("unshare(CLONE_NEWPID): {e}"))?;
            migrate_sys::clone3::verify_set_tid(SET_TID_PROBE_PID).map_err(|e| migrate_sys::error_chain(&e))
        })
        .join()
        .unwrap_or_else(|_| Err("the probe thread panicked".into()))
    })
}

fn in_helper(exe: &std::path::Path) -> Result<(), String> {
    let mut cmd = Command::new(exe);
    cmd.args(["__probe", PROBE_CLONE3_SET_TID])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = migrate_sys::process::spawn(&mut cmd, vec![Step::Unshare { flags: libc::CLONE_NEWPID }])
        .map_err(|e| format!("start {} __probe: {}", exe.display(), migrate_sys::error_chain(&e)))?;
    let mut child = ChildGuard(child);
    let status = wait_timeout(&mut child.0, Duration::from_secs(10))
        .map_err(|e| format!("wait for the helper: {e}"))?
        .ok_or("the helper did not finish within 10 s")?;
    let mut stderr = String::new();
    if let Some(mut err) = child.0.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} __probe {PROBE_CLONE3_SET_TID}: {status}: {}", exe.display(), stderr.trim()))
    }
}

/// pidfd_getfd of a pipe from a child, then process_vm_readv of the child's argv.
pub(super) fn pidfd_and_vm_readv() -> Vec<Finding> {
    const FD: i32 = 10;
    let setup = || -> Result<(ChildGuard, std::io::PipeReader), String> {
        let (rd, wr) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
        let step = Step::pass_fd(wr.as_fd(), FD).map_err(|e| format!("dup the pipe: {e}"))?;
        let child = spawn_sleeper(vec![step]).map_err(|e| migrate_sys::error_chain(&e))?;
        Ok((child, rd))
    };
    let (child, rd) = match setup() {
        Ok(x) => x,
        Err(e) => {
            let detail = format!("could not start a child to probe: {e}");
            return vec![getfd_failed(detail.clone()), vm_readv_failed(detail)];
        }
    };
    let getfd = match getfd(child.pid(), FD, rd) {
        Ok(d) => Finding::ok("pidfd-getfd", "pidfd_open + pidfd_getfd", d),
        Err(e) => getfd_failed(e),
    };
    let vm = match vm_readv(child.pid()) {
        Ok(d) => Finding::ok("process-vm-readv", "process_vm_readv", d),
        Err(e) => vm_readv_failed(e),
    };
    vec![getfd, vm]
}

fn getfd(pid: i32, fd: i32, mut rd: std::io::PipeReader) -> Result<String, String> {
    let pidfd = PidFd::open(pid).map_err(|e| migrate_sys::error_chain(&e))?;
    let taken = pidfd.get_fd(fd).map_err(|e| migrate_sys::error_chain(&e))?;
    let msg = b"migrate doctor";
    std::fs::File::from(taken).write_all(msg).map_err(|e| format!("write through the taken fd: {e}"))?;
    let mut buf = [0u8; 14];
    rd.read_exact(&mut buf).map_err(|e| format!("read the pipe: {e}"))?;
    if &buf != msg {
        return Err(format!("the pipe carried {buf:?}, not what was written through the taken fd"));
    }
    Ok(format!("took fd {fd} (a pipe) from pid {pid}; bytes written through the copy came out of the pipe"))
}

fn getfd_failed(detail: String) -> Finding {
    Finding::bad(
        Status::Fail,
        "pidfd-getfd",
        "pidfd_open + pidfd_getfd",
        detail,
        "Sockets, pipes, eventfds and the dirty-tracking userfaultfd are read through copies of the \
         target's fds taken with pidfd_getfd: their state cannot be dumped.",
        "Use Linux 5.6+ and run migrate as root with CAP_SYS_PTRACE.",
    )
}

fn vm_readv(pid: i32) -> Result<String, String> {
    let stat = Stat::from_file(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields 48 and 49 (proc(5), since Linux 3.5).
    let (Some(start), Some(end)) = (stat.arg_start, stat.arg_end) else {
        return Err(format!("no arg_start/arg_end in /proc/{pid}/stat"));
    };
    let len = usize::try_from(end.saturating_sub(start)).unwrap_or(0).min(4096);
    let mut via_readv = vec![0u8; len];
    let n = read_remote(pid, RemoteAddr(start), &mut via_readv).map_err(|e| migrate_sys::error_chain(&e))?;
    via_readv.truncate(n);
    let mem =
        std::fs::File::open(format!("/proc/{pid}/mem")).map_err(|e| format!("open /proc/{pid}/mem: {e}"))?;
    let mut via_mem = vec![0u8; len];
    mem.read_exact_at(&mut via_mem, start).map_err(|e| format!("read /proc/{pid}/mem at {start:#x}: {e}"))?;
    if via_readv != via_mem || !via_readv.starts_with(b"sleep\0") {
        return Err(format!(
            "read {:?} at {start:#x}, but /proc/{pid}/mem holds {:?}",
            String::from_utf8_lossy(&via_readv),
            String::from_utf8_lossy(&via_mem)
        ));
    }
    Ok(format!(
        "read {n} bytes of pid {pid}'s argv at {start:#x} ({:?}), the same as /proc/{pid}/mem",
        String::from_utf8_lossy(&via_readv).replace('\0', " ").trim()
    ))
}

fn vm_readv_failed(detail: String) -> Finding {
    Finding::bad(
        Status::Fail,
        "process-vm-readv",
        "process_vm_readv",
        detail,
        "Memory pages are read from the target with process_vm_readv: no memory can be dumped.",
        "Run migrate as root with CAP_SYS_PTRACE; check kernel.yama.ptrace_scope (at most 2) and that no \
         seccomp or LSM policy blocks process_vm_readv.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            println!("SKIP: these probes need root");
        }
        root
    }

    #[test]
    fn ptrace_probe() {
        if root() {
            let f = ptrace();
            assert_eq!(f.status, Status::Ok, "{f:#?}");
        }
    }

    #[test]
    fn every_namespace_kind() {
        if root() {
            for f in namespaces() {
                assert_eq!(f.status, Status::Ok, "{f:#?}");
            }
        }
    }

    #[test]
    fn clone3_in_a_thread() {
        if root() {
            let f = clone3_set_tid(&Helper::Thread);
            assert_eq!(f.status, Status::Ok, "{f:#?}");
        }
    }

    #[test]
    fn missing_helper_is_a_failure() {
        let f = clone3_set_tid(&Helper::Exe("/nonexistent/migrate".into()));
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("/nonexistent/migrate"), "{}", f.detail);
    }

    #[test]
    fn pidfd_and_process_vm_readv() {
        if root() {
            for f in pidfd_and_vm_readv() {
                assert_eq!(f.status, Status::Ok, "{f:#?}");
            }
        }
    }
}
