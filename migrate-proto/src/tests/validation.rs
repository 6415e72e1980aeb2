//! Semantic checks of process records and of page batches against them.

use super::{batch, file_id, process, thread};
use crate::pages::PageRun;
use crate::records::{
    FdKind, FdRecord, Fifo, FileLock, Inotify, InotifyWatch, LockKind, ObjectKind, ObjectRecord, PidFd,
    PipeRecord, ProcessRecord, Rlimit, SigAction, SigInfo, SignalFd, TimerFd, VmaBacking,
};
use crate::validate::{check_batch, validate_process};

type Mutation = Box<dyn Fn(&mut ProcessRecord)>;

#[test]
fn sample_record_is_valid() -> Result<(), crate::ProtoError> {
    validate_process(&process(1))?;
    validate_process(&process(4_194_303))
}

#[test]
fn overlapping_vmas_are_named() {
    let mut p = process(1);
    p.vmas[3].start = 0x7f00_0000_1000; // overlaps 0x7f0000000000-0x7f0000002000
    let err = validate_process(&p).err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(err, "pid 1: VMA 0x7f0000001000-0x7f0000003000 overlaps 0x7f0000000000-0x7f0000002000");
}

#[test]
fn each_check_fires_with_a_precise_message() {
    let cases: Vec<(&str, Mutation)> = vec![
        ("pid 0 is out of range", Box::new(|p| p.pid = 0)),
        ("ppid -1 is out of range", Box::new(|p| p.ppid = -1)),
        ("VMA 0x600000-0x600000 is empty or inverted", Box::new(|p| p.vmas[1].end = 0x60_0000)),
        ("VMA 0x600800-0x604000 is not page-aligned", Box::new(|p| p.vmas[1].start = 0x60_0800)),
        (
            "VMA 0x7ffd00000000-0x800000000000 lies beyond user space",
            Box::new(|p| p.vmas[7].end = 0x8000_0000_0000),
        ),
        ("comes after 0x600000-0x604000: VMAs must be sorted", Box::new(|p| p.vmas.swap(0, 1))),
        (
            "is a second [vdso] (the first is at 0x7ffc00004000)",
            Box::new(|p| p.vmas[7].backing = VmaBacking::Vdso),
        ),
        ("has unknown protection bits 0x8", Box::new(|p| p.vmas[1].prot = 8)),
        ("has file offset 0x10, which is not page-aligned", Box::new(|p| p.vmas[0].offset = 0x10)),
        ("has advice flag \"ddd\"", Box::new(|p| p.vmas[4].advice = vec!["ddd".into()])),
        // A mnemonic the restore does not carry (userfaultfd) is refused, not ignored.
        ("has advice flag \"uw\"", Box::new(|p| p.vmas[4].advice = vec!["uw".into()])),
        ("has advice flag \"lf without lo\"", Box::new(|p| p.vmas[4].advice = vec!["lf".into()])),
        ("has 15 flags, more than", Box::new(|p| p.vmas[4].advice = vec!["dd".into(); 15])),
        (
            "is anonymous memory named \"[anon:a$b]\"",
            Box::new(|p| {
                p.vmas[4].backing = VmaBacking::Anon;
                p.vmas[4].name = "[anon:a$b]".into()
            }),
        ),
        ("mlockall 0x1 is not MCL_FUTURE", Box::new(|p| p.mlockall = 1)),
        (
            "VMA 0x400000-0x402000 path \"/usr/../../etc/shadow\" contains a `..` component",
            Box::new(|p| {
                p.vmas[0].backing = VmaBacking::File { file: file_id("/usr/../../etc/shadow"), shared: false }
            }),
        ),
        ("has no threads", Box::new(|p| p.threads.clear())),
        ("the first thread is 2, not the main thread", Box::new(|p| p.threads.swap(0, 1))),
        ("thread 2 is listed twice", Box::new(|p| p.threads.push(thread(2)))),
        ("thread -5: tid out of range", Box::new(|p| p.threads[1].tid = -5)),
        (
            "thread 2: xstate is 65537 bytes, more than 65536",
            Box::new(|p| p.threads[1].xstate = vec![0; 65537]),
        ),
        (
            "thread 1: pending signal 65 is not a signal",
            Box::new(|p| p.threads[0].pending.push(SigInfo { signo: 65, raw: vec![0; 128] })),
        ),
        (
            "process: pending signal 10 siginfo is not 128 bytes",
            Box::new(|p| p.shared_pending.push(SigInfo { signo: 10, raw: vec![0; 4] })),
        ),
        ("oom_score_adj 2000 is not within", Box::new(|p| p.oom_score_adj = 2000)),
        ("coredump_filter 0x200 has bits beyond", Box::new(|p| p.coredump_filter = 0x200)),
        ("sched thread 1: nice 20 is not a nice value", Box::new(|p| p.threads[0].sched.nice = 20)),
        ("sched thread 1: policy 6 is not one", Box::new(|p| p.threads[0].sched.policy = 6)),
        (
            "sched thread 1: priority 5 does not go with policy 0",
            Box::new(|p| p.threads[0].sched.priority = 5),
        ),
        ("sched thread 1: its CPUs are not", Box::new(|p| p.threads[0].sched.cpus = vec![3, 1])),
        ("sched thread 1: its CPUs are not", Box::new(|p| p.threads[0].sched.cpus = vec![1 << 20])),
        ("fd 1048576 is out of range", Box::new(|p| p.fds[4].fd = 1 << 20)),
        ("fd -1 is out of range", Box::new(|p| p.fds[4].fd = -1)),
        ("fd 3 is listed twice", Box::new(|p| p.fds[4].fd = 3)),
        (
            "fd 9: device \"/run/fifo\" is not one of /dev/null",
            Box::new(|p| p.fds.push(fd9(FdKind::Device { path: "/run/fifo".into() }))),
        ),
        (
            "fd 9 path \"/a\\0b\" contains a NUL byte",
            Box::new(|p| p.fds.push(fd9(FdKind::Dir { path: "/a\0b".into(), pos: 0 }))),
        ),
        (
            "is 4097 bytes long, more than 4096",
            Box::new(|p| p.fds.push(fd9(FdKind::Dir { path: "/".repeat(4097), pos: 0 }))),
        ),
        (
            "fd 9: position 9223372036854775808 is beyond",
            Box::new(|p| p.fds.push(fd9(FdKind::File { file: file_id("/x"), pos: 1 << 63 }))),
        ),
        ("fd 9: external name", Box::new(|p| p.fds.push(fd9(FdKind::External { name: String::new() })))),
        (
            "fd 9: timerfd clock 3 is not one",
            Box::new(|p| p.fds.push(fd9(FdKind::TimerFd(timer(|t| t.clock = 3))))),
        ),
        (
            "fd 9: timerfd time beyond the kernel's range",
            Box::new(|p| p.fds.push(fd9(FdKind::TimerFd(timer(|t| t.interval_ns = u64::MAX))))),
        ),
        (
            "fd 9: timerfd TFD_TIMER_CANCEL_ON_SET without an absolute CLOCK_REALTIME timer",
            Box::new(|p| p.fds.push(fd9(FdKind::TimerFd(timer(|t| t.cancel_on_set = true))))),
        ),
        (
            "fd 9: timerfd ticks beyond",
            Box::new(|p| p.fds.push(fd9(FdKind::TimerFd(timer(|t| t.ticks = u64::MAX))))),
        ),
        (
            "fd 9: signalfd mask 0x100 holds SIGKILL or SIGSTOP",
            Box::new(|p| p.fds.push(fd9(FdKind::SignalFd(SignalFd { mask: 0x100 })))),
        ),
        (
            "fd 9: inotify wd 1 is out of order or beyond 65536",
            Box::new(|p| p.fds.push(fd9(FdKind::Inotify(watches(&[(2, "/a", 2), (1, "/b", 2)]))))),
        ),
        (
            "fd 9: inotify wd 0 is out of order",
            Box::new(|p| p.fds.push(fd9(FdKind::Inotify(watches(&[(0, "/a", 2)]))))),
        ),
        (
            "fd 9: inotify wd 1: mask 0x1000000 is not a watch's mask",
            Box::new(|p| p.fds.push(fd9(FdKind::Inotify(watches(&[(1, "/a", 0x100_0000)]))))),
        ),
        (
            "fd 9 path \"/run/../etc\" contains a `..` component",
            Box::new(|p| p.fds.push(fd9(FdKind::Inotify(watches(&[(1, "/run/../etc", 2)]))))),
        ),
        (
            "fd 9: inotify has 65537 watches",
            Box::new(|p| {
                let many: Vec<(i32, &str, u32)> = (1..=65537).map(|wd| (wd, "/a", 2)).collect();
                p.fds.push(fd9(FdKind::Inotify(watches(&many))))
            }),
        ),
        (
            "fd 9: pidfd of pid 0, out of range",
            Box::new(|p| p.fds.push(fd9(FdKind::PidFd(PidFd { pid: Some(0), thread: false, status: None })))),
        ),
        (
            "fd 9: pidfd exit status 0xf is not an exit code or SIGKILL",
            Box::new(|p| {
                p.fds.push(fd9(FdKind::PidFd(PidFd { pid: None, thread: false, status: Some(15) })))
            }),
        ),
        (
            "fd 9: pidfd exit status 0x300 is not",
            Box::new(|p| {
                p.fds.push(fd9(FdKind::PidFd(PidFd { pid: Some(2), thread: false, status: Some(0x300) })))
            }),
        ),
        (
            "FIFO of pipe:[9223372036854775809] path \"/run/../etc/shadow\" contains a `..` component",
            Box::new(|p| p.pipes.push(fifo("/run/../etc/shadow", 0o600))),
        ),
        (
            "the FIFO /run/q: mode 10000 is not a permission mode",
            Box::new(|p| p.pipes.push(fifo("/run/q", 0o10000))),
        ),
        ("cwd path \"..\" is not absolute", Box::new(|p| p.cwd = "..".into())),
        ("root path \"/..\" contains a `..` component", Box::new(|p| p.root = "/..".into())),
        ("exe path \"\" is not absolute", Box::new(|p| mm(p).exe.path = String::new())),
        (
            "sigaction for signal 9: SIGKILL and SIGSTOP cannot be caught",
            Box::new(|p| {
                p.sigactions.push(SigAction { signo: 9, handler: 1, flags: 0, restorer: 0, mask: 0 })
            }),
        ),
        (
            "sigaction for signal 19: SIGKILL",
            Box::new(|p| {
                p.sigactions.push(SigAction { signo: 19, handler: 1, flags: 0, restorer: 0, mask: 0 })
            }),
        ),
        (
            "sigaction for signal 0: not a signal",
            Box::new(|p| {
                p.sigactions.push(SigAction { signo: 0, handler: 1, flags: 0, restorer: 0, mask: 0 })
            }),
        ),
        ("sigaction for signal 15: is listed twice", Box::new(|p| p.sigactions.push(p.sigactions[0]))),
        (
            "rlimit 16: is not a resource",
            Box::new(|p| p.rlimits.push(Rlimit { resource: 16, cur: 0, max: 0 })),
        ),
        ("rlimit 7: is listed twice", Box::new(|p| p.rlimits.push(Rlimit { resource: 7, cur: 0, max: 0 }))),
        ("rlimit 7: soft limit is above the hard limit", Box::new(|p| p.rlimits[0].cur = 5000)),
        ("auxv: has 5 words, not pairs", Box::new(|p| mm(p).auxv.truncate(5))),
        ("auxv: has 514 words, more than 512", Box::new(|p| mm(p).auxv = vec![0; 514])),
        ("auxv: does not end with AT_NULL", Box::new(|p| mm(p).auxv = vec![6, 4096])),
        ("mm: start_code 0x400000 is above end_code 0x3ff000", Box::new(|p| mm(p).end_code = 0x3f_f000)),
        ("mm: brk 0xffffffffffffffff lies beyond user space", Box::new(|p| mm(p).brk = u64::MAX)),
        (
            "mm: env_start",
            Box::new(|p| {
                let m = mm(p);
                m.env_start = m.env_end + 1
            }),
        ),
        ("umask 0o1777 has bits beyond 0o777", Box::new(|p| p.umask = 0o1777)),
        ("creds.groups has 65537 groups", Box::new(|p| p.creds.groups = vec![0; 65537])),
        (
            "fd 3: lock range 10..Some(5) is not a file range",
            Box::new(|p| {
                p.fds[3].locks[0] = FileLock { kind: LockKind::Ofd, write: false, start: 10, end: Some(5) }
            }),
        ),
        ("object id 1 is 0 or listed twice", Box::new(|p| p.objects.push(p.objects[0].clone()))),
        ("object 1 claims 1099511627777 bytes", Box::new(|p| p.objects[0].size = (1 << 40) + 1)),
        (
            "object 2: \"a/b\" is not a memfd name",
            Box::new(|p| {
                let kind = ObjectKind::Memfd { name: "a/b".into(), seals: 0 };
                p.objects.push(ObjectRecord { id: 2, kind, size: 0, meta: None, link: None })
            }),
        ),
        (
            "object 2: seals 0x40 are not F_SEAL_* bits",
            Box::new(|p| {
                let kind = ObjectKind::Memfd { name: "m".into(), seals: 0x40 };
                p.objects.push(ObjectRecord { id: 2, kind, size: 0, meta: None, link: None })
            }),
        ),
        (
            "object 2 path \"/tmp/../etc/passwd\" contains a `..` component",
            Box::new(|p| {
                let kind =
                    ObjectKind::Deleted { path: "/tmp/../etc/passwd".into(), mode: 0o600, uid: 0, gid: 0 };
                p.objects.push(ObjectRecord { id: 2, kind, size: 0, meta: None, link: None })
            }),
        ),
        (
            "inherited run 0x500000+1 pages is unsorted, overlapping or outside a VMA",
            Box::new(|p| p.inherited = vec![PageRun { addr: 0x50_0000, npages: 1 }]),
        ),
        (
            "inherited run 0x600000+1 pages is unsorted",
            Box::new(|p| {
                p.inherited =
                    vec![PageRun { addr: 0x60_1000, npages: 1 }, PageRun { addr: 0x60_0000, npages: 1 }]
            }),
        ),
    ];
    for (want, mutate) in cases {
        let mut p = process(1);
        mutate(&mut p);
        let err = validate_process(&p).err().map(|e| e.to_string()).unwrap_or_else(|| "accepted".into());
        assert!(err.starts_with("pid ") && err.contains(want), "{err} (wanted {want:?})");
    }
}

#[test]
fn batches_must_lie_in_dumpable_vmas() {
    let p = process(1);
    let ok = batch(1, None);
    assert!(check_batch(&ok, &p).is_ok());
    let run = |addr, npages| {
        let mut b = batch(1, None);
        b.runs = vec![PageRun { addr, npages }];
        b
    };
    // Private file mapping: its copied-on-write pages are dumped.
    assert!(check_batch(&run(0x40_0000, 2), &p).is_ok());
    // Shared anonymous memory is dumped once, as its object's pages, not the mapping's.
    assert!(check_batch(&run(0x7f00_0000_2000, 1), &p).is_err());
    let object = |id, offset, npages| crate::PageBatch { object: id, ..run(offset, npages) };
    assert!(check_batch(&object(1, 0, 1), &p).is_ok());
    assert!(check_batch(&object(1, 0x1000, 1), &p).is_err(), "beyond the object's 4096 bytes");
    assert!(check_batch(&object(2, 0, 1), &p).is_err(), "an object the process does not own");
    // A linked file's bytes are the file's: a batch would overwrite a host file.
    let mut linked = p.clone();
    linked.objects[0].link = Some("/tmp/other".into());
    let err = check_batch(&object(1, 0, 1), &linked).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("a batch of object 1, a file the image does not carry"), "{err}");

    let cases = [
        (
            run(0x7ffc_0000_4000, 1),
            "page run 0x7ffc00004000+1 lies in VMA 0x7ffc00004000-0x7ffc00006000, which holds no dumped pages ([vdso])",
        ),
        (run(0x7f00_0001_0000, 1), "(shared file mapping)"),
        (run(0x7ffc_0000_0000, 1), "([vvar])"),
        (run(0x7f00_0000_1000, 2), "lies in no single VMA"), // straddles two VMAs
        (run(0x50_0000, 1), "lies in no single VMA"),        // in a hole
        (run(0x7fff_0000_0000, 1), "lies in no single VMA"), // above every VMA
        (run(0x60_3000, 2), "lies in no single VMA"),        // runs off the end
        (run(!0xfff, 2), "lies in no single VMA"),           // overflows
        (crate::PageBatch { pid: 2, ..batch(1, None) }, "pid 1: page batch is for pid 2"),
    ];
    for (b, want) in cases {
        let err = check_batch(&b, &p).err().map(|e| e.to_string()).unwrap_or_else(|| "accepted".into());
        assert!(err.contains(want), "{err} (wanted {want:?})");
    }
}

/// The mm fields of a live test process.
/// A FIFO's pipe record, its key with bit 63 set.
fn fifo(path: &str, mode: u32) -> PipeRecord {
    PipeRecord {
        inode: 1 << 63 | 1,
        size: 4096,
        data: Vec::new(),
        fifo: Some(Fifo { path: path.into(), mode, atime_ns: 0, mtime_ns: 0 }),
    }
}

fn mm(p: &mut ProcessRecord) -> &mut crate::records::MmFields {
    p.mm.as_mut().expect("a live test process has mm fields")
}

#[test]
fn a_tree_names_only_objects_it_records_and_inherits_only_what_the_parent_has() {
    let root = process(1);
    let mut child = process(2);
    child.ppid = 1;
    child.threads = vec![thread(2)];
    child.objects.clear();
    // Its parent's object, and pages of the heap both have identically.
    child.inherited = vec![PageRun { addr: 0x60_0000, npages: 2 }];
    assert!(crate::validate_tree(&[root.clone(), child.clone()]).is_ok());

    let mut orphan = child.clone();
    orphan.vmas[3].backing = VmaBacking::Object { id: 9, shared: true };
    let err = crate::validate_tree(&[root.clone(), orphan]).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("pid 2 refers to object 9, which has no record"), "{err}");

    let mut grown = child.clone();
    grown.vmas[1].end = 0x60_8000;
    let err = crate::validate_tree(&[root.clone(), grown]).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("pid 2 inherits pages (at 0x600000…) from its parent (pid 1), which has no such VMA"),
        "{err}"
    );

    let twice = process(2);
    let err = crate::validate_tree(&[root, ProcessRecord { ppid: 1, ..twice }])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("object 1 has two records"), "{err}");
}

#[test]
fn tmpfs_entries_are_made_in_directories_listed_before_them() {
    use crate::records::{TmpfsEntry, TmpfsKind};
    let entry = |path: &str, kind| TmpfsEntry {
        path: path.into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        atime_ns: 0,
        kind,
    };
    let mut p = process(1);
    p.tmpfs = vec![
        entry("/run/app", TmpfsKind::Dir),
        entry("/run/app/state", TmpfsKind::File { data: b"1".to_vec() }),
        entry("/run/link", TmpfsKind::Symlink { target: "/etc".into() }),
    ];
    assert!(validate_process(&p).is_ok());
    // Through the symlink, the restore would write the host's /etc.
    p.tmpfs.push(entry("/run/link/cron.d", TmpfsKind::Dir));
    let err = validate_process(&p).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("/run/link/cron.d: its parent /run/link is not a directory listed before it"),
        "{err}"
    );
    // A child listed before its directory.
    p.tmpfs = vec![entry("/run/a/b", TmpfsKind::Fifo), entry("/run/a", TmpfsKind::Dir)];
    assert!(validate_process(&p).is_err());
}

#[test]
fn a_zombie_carries_the_wait_status_of_an_exit() {
    let zombie = |status| ProcessRecord {
        zombie: Some(status),
        threads: vec![],
        vmas: vec![],
        mm: None,
        fds: vec![],
        objects: vec![],
        ..process(2)
    };
    for ok in [0, 7 << 8, 9, 0x80 | 11] {
        assert!(validate_process(&zombie(ok)).is_ok(), "{ok:#x}");
    }
    for bad in [0x7f, 65, 0x1_0000, (7 << 8) | 9, -1] {
        let err = validate_process(&zombie(bad)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("is not the wait status of an exit"), "{bad:#x}: {err}");
    }
}

/// A relative CLOCK_MONOTONIC timerfd, changed by `change`.
fn timer(change: impl Fn(&mut TimerFd)) -> TimerFd {
    let mut t =
        TimerFd { clock: 1, left_ns: 1, interval_ns: 0, abs_ns: None, cancel_on_set: false, ticks: 0 };
    change(&mut t);
    t
}

/// An inotify instance with these `(wd, path, mask)` watches.
fn watches(list: &[(i32, &str, u32)]) -> Inotify {
    let watches = list.iter().map(|&(wd, path, mask)| InotifyWatch { wd, path: path.into(), mask }).collect();
    Inotify { watches }
}

/// Fd 9 of the given kind, a description of its own.
fn fd9(kind: FdKind) -> FdRecord {
    FdRecord { fd: 9, file_id: 9, flags: 0, kind, locks: vec![] }
}

/// An epoll at fd 9 watching `targets`: (fd, events, file).
fn epoll9(targets: &[(i32, u32, u64)]) -> FdRecord {
    use crate::records::{Epoll, EpollTarget};
    let targets =
        targets.iter().map(|&(fd, events, file)| EpollTarget { fd, events, data: 7, file }).collect();
    fd9(FdKind::Epoll(Epoll { targets }))
}

#[test]
fn the_inotify_instances_of_an_image_reach_a_bounded_number_of_wds_together() {
    // Sixteen instances at wd 65536 are the cap; one more instance passes it. An
    // instance held at two fds (or by two processes) counts once.
    let mut p = process(1);
    for i in 0..16 {
        let kind = FdKind::Inotify(watches(&[(65536, "/a", 2)]));
        p.fds.push(FdRecord { fd: 100 + i, file_id: 1000 + i as u64, flags: 0, kind, locks: vec![] });
    }
    let again = FdRecord { fd: 200, ..p.fds[p.fds.len() - 1].clone() };
    p.fds.push(again);
    assert!(validate_process(&p).is_ok());
    assert!(crate::validate_tree(std::slice::from_ref(&p)).is_ok());
    p.fds.push(FdRecord {
        fd: 201,
        file_id: 2000,
        flags: 0,
        kind: FdKind::Inotify(watches(&[(1, "/a", 2)])),
        locks: vec![],
    });
    let err = crate::validate_tree(&[p]).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("the inotify instances reach 1048577 watch descriptors together, more than 1048576"),
        "{err}"
    );
}

#[test]
fn epoll_registrations_are_checked() {
    let cases: [(&str, FdRecord); 5] = [
        ("fd 9: epoll registration of fd -1 is out of range", epoll9(&[(-1, 1, 1)])),
        ("fd 9: epoll registration of fd 1: unknown event bits 0x4001", epoll9(&[(1, 0x4001, 1)])),
        ("fd 9: epoll registration of fd 1: EPOLLEXCLUSIVE with 0x40000000", epoll9(&[(1, 0x5000_0001, 1)])),
        ("fd 9: epoll registration of fd 9 is the epoll itself", epoll9(&[(9, 1, 9)])),
        ("fd 9: epoll registration of fd 1 (file 1) is listed twice", epoll9(&[(1, 1, 1), (1, 4, 1)])),
    ];
    for (want, fd) in cases {
        let mut p = process(1);
        p.fds.push(fd);
        let err = validate_process(&p).err().map(|e| e.to_string()).unwrap_or_else(|| "accepted".into());
        assert!(err.contains(want), "{err} (wanted {want:?})");
    }
    // The same file at two numbers, and a disarmed ONESHOT (only its private bits).
    let mut p = process(1);
    p.fds.push(epoll9(&[(1, 0x19, 1), (5, 0x19, 1), (3, 0x4000_0000, 3)]));
    assert!(validate_process(&p).is_ok());
    assert!(crate::validate_tree(std::slice::from_ref(&p)).is_ok());
    // A file no holder of the epoll holds.
    p.fds[5] = epoll9(&[(4, 0x19, 44)]);
    let err = crate::validate_tree(&[p]).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("pid 1 fd 9: the epoll's registration of fd 4 names file 44, which no process holding the epoll holds"),
        "{err}"
    );
}

#[test]
fn inet_sockets_are_checked() {
    use crate::records::{InetAddr, InetProto, InetSocket, InetState, IntOption, SockOpt};
    let addr =
        |ip: &str, port| InetAddr { ip: ip.parse().unwrap_or_else(|e| panic!("{e}")), port, scope_id: 0 };
    let listener = InetSocket {
        v6: true,
        proto: InetProto::Tcp,
        state: InetState::Listening { local: addr("::", 80), backlog: 511 },
        owner: 0,
        options: vec![IntOption { opt: SockOpt::Ipv6V6Only, value: 1 }],
        linger: None,
        rcv_timeout_us: None,
        snd_timeout_us: None,
        congestion: Some("cubic".into()),
        bind_device: None,
    };
    let mut p = process(1);
    p.fds.push(fd9(FdKind::Inet(listener.clone())));
    assert!(validate_process(&p).is_ok(), "{:?}", validate_process(&p));
    type Change<'a> = Box<dyn Fn(&mut InetSocket) + 'a>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "address 10.0.0.1:80 is not of the socket's family",
            Box::new(|s| s.state = InetState::Bound { local: addr("10.0.0.1", 80) }),
        ),
        (
            "a listener must be TCP",
            Box::new(|s| {
                s.proto = InetProto::Udp;
                s.congestion = None
            }),
        ),
        (
            "only a UDP socket is carried connected",
            Box::new(|s| s.state = InetState::Connected { local: addr("::1", 80), peer: addr("::1", 81) }),
        ),
        (
            "bound to [::]:0, which binds nothing",
            Box::new(|s| s.state = InetState::Bound { local: addr("::", 0) }),
        ),
        (
            "listening on [::1]:0, without a port",
            Box::new(|s| s.state = InetState::Listening { local: addr("::1", 0), backlog: 1 }),
        ),
        ("option IPV6_V6ONLY recorded twice", Box::new(|s| s.options.push(s.options[0]))),
        (
            "the congestion algorithm's name must be 1 to 15 bytes",
            Box::new(|s| s.congestion = Some("x".repeat(16))),
        ),
        ("the interface name must be", Box::new(|s| s.bind_device = Some("../eth0".into()))),
    ];
    for (want, mutate) in cases {
        let mut s = listener.clone();
        mutate(&mut s);
        let mut p = process(1);
        p.fds.push(fd9(FdKind::Inet(s)));
        let err = validate_process(&p).err().map(|e| e.to_string()).unwrap_or_else(|| "accepted".into());
        assert!(err.contains("fd 9: ") && err.contains(want), "{err} (wanted {want:?})");
    }
}

/// PID 1 with an IPC namespace: one segment (object 7), a semaphore set, a message queue
/// and a POSIX queue.
fn with_ipc() -> ProcessRecord {
    use crate::records::*;
    let perm = |id, key| IpcPerm { key, id, mode: 0o600, uid: 0, gid: 0, cuid: 0, cgid: 0 };
    let mut p = process(1);
    p.objects.push(ObjectRecord {
        id: 7,
        kind: ObjectKind::SysvShm { shmid: 3 },
        size: 8192,
        meta: None,
        link: None,
    });
    p.ipc = Some(IpcNamespace {
        limits: vec![IpcLimit { name: "kernel/msgmax".into(), value: "4321".into() }],
        shm: vec![ShmSegment { perm: perm(3, 0), size: 8192, locked: false, removed: false }],
        sem: vec![SemSet { perm: perm(0, 5), values: vec![1, 2] }],
        msg: vec![MsgQueue {
            perm: perm(0, 6),
            qbytes: 16384,
            messages: vec![SysvMessage { mtype: 1, text: b"hi".to_vec() }],
        }],
        mqueues: vec![PosixQueue {
            name: "q".into(),
            mode: 0o600,
            uid: 0,
            gid: 0,
            maxmsg: 10,
            msgsize: 64,
            messages: vec![PosixMessage { prio: 1, data: b"x".to_vec() }],
        }],
    });
    p
}

#[test]
fn ipc_records_are_checked() {
    assert!(validate_process(&with_ipc()).is_ok(), "{:?}", validate_process(&with_ipc()));
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "\"kernel/core_pattern\" is not an IPC sysctl",
            Box::new(|p| ipc(p).limits[0].name = "kernel/core_pattern".into()),
        ),
        (
            "kernel/msgmax: \"1; x\" is not a list of numbers",
            Box::new(|p| ipc(p).limits[0].value = "1; x".into()),
        ),
        ("id -1 is negative or listed twice", Box::new(|p| ipc(p).sem[0].perm.id = -1)),
        ("mode 4777 is not a permission mode", Box::new(|p| ipc(p).msg[0].perm.mode = 0o4777)),
        ("segment 3 has not exactly one object of its size", Box::new(|p| ipc(p).shm[0].size = 4096)),
        (
            "segment 3 is removed but has a key",
            Box::new(|p| {
                let s = &mut ipc(p).shm[0];
                (s.removed, s.perm.key) = (true, 9);
            }),
        ),
        ("an object of System V shared memory has no segment", Box::new(|p| ipc(p).shm.clear())),
        ("System V shared memory without a namespace", Box::new(|p| p.ipc = None)),
        ("set 0: 0 values, or one above SEMVMX", Box::new(|p| ipc(p).sem[0].values.clear())),
        ("set 0: 1 values, or one above SEMVMX", Box::new(|p| ipc(p).sem[0].values = vec![40000])),
        ("queue 0: a message of bad type or size", Box::new(|p| ipc(p).msg[0].messages[0].mtype = 0)),
        ("\"../x\" is not a queue name", Box::new(|p| ipc(p).mqueues[0].name = "../x".into())),
        ("/q: mode or attributes out of range", Box::new(|p| ipc(p).mqueues[0].msgsize = 0)),
        (
            "/q: more or larger messages than it holds",
            Box::new(|p| ipc(p).mqueues[0].messages[0].data = vec![0; 65]),
        ),
        (
            "only PID 1 carries the IPC namespace",
            Box::new(|p| {
                let ns = p.ipc.take();
                *p = process(2);
                p.ipc = ns;
            }),
        ),
        (
            "object 7: System V shared memory is PID 1's",
            Box::new(|p| {
                let objects = std::mem::take(&mut p.objects);
                *p = process(2);
                p.objects = objects;
            }),
        ),
    ];
    for (want, mutate) in cases {
        let mut p = with_ipc();
        mutate(&mut p);
        let err = validate_process(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(want), "want {want:?}, got {err:?}");
    }
}

fn ipc(p: &mut ProcessRecord) -> &mut crate::records::IpcNamespace {
    p.ipc.get_or_insert_with(Default::default)
}

#[test]
fn a_message_queue_fd_must_name_a_queue_of_the_namespace() {
    let mut p = with_ipc();
    let fd = |name: &str| FdRecord {
        fd: 9,
        file_id: 99,
        flags: 2,
        kind: FdKind::Mqueue { name: name.into() },
        locks: vec![],
    };
    p.fds.push(fd("q"));
    assert!(validate_process(&p).is_ok(), "{:?}", validate_process(&p));
    for bad in ["other", "a/b", ""] {
        p.fds.pop();
        p.fds.push(fd(bad));
        let err = validate_process(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("is not a queue of the namespace"), "{bad:?}: {err}");
    }
}

#[test]
fn an_attachment_must_name_a_segment() {
    let mut p = with_ipc();
    p.vmas[3].backing = VmaBacking::SysvShm { id: 7, may_write: true };
    assert!(crate::validate::validate_tree(std::slice::from_ref(&p)).is_ok());
    p.vmas[3].backing = VmaBacking::Object { id: 7, shared: true };
    let err = crate::validate::validate_tree(std::slice::from_ref(&p))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("maps an object of the wrong kind"), "{err}");
}

#[test]
fn unix_socket_records_are_checked() {
    use crate::records::{UnixName, UnixSocket, UnixState, UnixType};
    let sock = UnixSocket {
        inode: 5,
        ty: UnixType::Stream,
        name: Some(UnixName::Path { path: "/run/a.sock".into(), file: None }),
        state: UnixState::Connected { peer: 6 },
        queue: vec![b"abc".to_vec()],
        shutdown: 2,
        passcred: false,
        passsec: false,
        rcvbuf: 212992,
        sndbuf: 212992,
        peek_off: -1,
        owner: 0,
        timeouts: [0, 0],
        peer_cred: None,
    };
    let with = |f: &dyn Fn(&mut UnixSocket)| {
        let mut p = process(1);
        let mut u = sock.clone();
        f(&mut u);
        p.fds.push(fd9(FdKind::Unix(u)));
        validate_process(&p).err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert_eq!(with(&|_| {}), "");
    type Change = Box<dyn Fn(&mut UnixSocket)>;
    let cases: Vec<(&str, Change)> = vec![
        ("65537 entries", Box::new(|u| u.queue = vec![vec![]; 65537])),
        ("shutdown state 4", Box::new(|u| u.shutdown = 4)),
        ("peek offset -2", Box::new(|u| u.peek_off = -2)),
        ("a timeout beyond 4611686018427387904", Box::new(|u| u.timeouts = [u64::MAX, 0])),
        ("a timeout beyond 4611686018427387904", Box::new(|u| u.timeouts = [0, i64::MAX as u64])),
        (
            "more than 4096 peer groups",
            Box::new(|u| {
                u.peer_cred = Some(crate::records::PeerCred { pid: 1, uid: 0, gid: 0, groups: vec![0; 4097] })
            }),
        ),
        ("buffer size beyond i32", Box::new(|u| u.rcvbuf = u32::MAX)),
        ("abstract name of 107 bytes", Box::new(|u| u.name = Some(UnixName::Abstract(vec![b'a'; 107])))),
        (
            "path name of 108 bytes",
            Box::new(|u| u.name = Some(UnixName::Path { path: format!("/{}", "a".repeat(107)), file: None })),
        ),
        (
            "contains a `..` component",
            Box::new(|u| u.name = Some(UnixName::Path { path: "/run/../etc/x".into(), file: None })),
        ),
        (
            "a listening datagram socket",
            Box::new(|u| {
                u.ty = UnixType::Dgram;
                u.state = UnixState::Listening { backlog: 1, pending: vec![] };
            }),
        ),
        (
            "4097 pending connections",
            Box::new(|u| u.state = UnixState::Listening { backlog: 1, pending: vec![7; 4097] }),
        ),
        (
            "a listener with bytes queued",
            Box::new(|u| u.state = UnixState::Listening { backlog: 1, pending: vec![] }),
        ),
        ("connected to itself", Box::new(|u| u.state = UnixState::Connected { peer: 5 })),
        (
            "an accepted socket with a name of its own",
            Box::new(|u| {
                u.name = Some(UnixName::Path { path: "/etc/passwd".into(), file: None });
                u.state = UnixState::Accepted {
                    peer: 6,
                    listener: Some(7),
                    address: UnixName::Path { path: "/a.sock".into(), file: None },
                }
            }),
        ),
        (
            "socket file mode 100644 is not a permission mode",
            Box::new(|u| {
                let file = Some(crate::records::SocketFile { mode: 0o100644, uid: 0, gid: 0 });
                u.name = Some(UnixName::Path { path: "/run/a.sock".into(), file })
            }),
        ),
        (
            "a pending connection listed twice",
            Box::new(|u| u.state = UnixState::Listening { backlog: 1, pending: vec![7, 7] }),
        ),
        (
            "or the listener's own",
            Box::new(|u| u.state = UnixState::Listening { backlog: 1, pending: vec![5] }),
        ),
        (
            "accepted at a path from a closed listener",
            Box::new(|u| {
                u.name = None;
                u.state = UnixState::Accepted {
                    peer: 6,
                    listener: None,
                    address: UnixName::Path { path: "/a.sock".into(), file: None },
                }
            }),
        ),
        (
            "accepted at a path that is not absolute",
            Box::new(|u| {
                u.name = None;
                u.state = UnixState::Accepted {
                    peer: 6,
                    listener: Some(7),
                    address: UnixName::Path { path: "rel.sock".into(), file: None },
                }
            }),
        ),
    ];
    for (needle, f) in cases {
        let err = with(&*f);
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

/// `change` applied to a valid process; the validation error, or "" if it passed.
fn attrs_error(change: impl Fn(&mut ProcessRecord)) -> String {
    let mut p = process(1);
    change(&mut p);
    validate_process(&p).err().map(|e| e.to_string()).unwrap_or_default()
}

#[test]
fn process_attributes_are_values_prctl_gives() {
    use crate::records::{FileMeta, ProcessAttrs};
    assert_eq!(attrs_error(|_| {}), "");
    let ok = ProcessAttrs {
        child_subreaper: true,
        dumpable: 0,
        thp_disable: 3,
        mdwe: 1,
        loginuid: 1000,
        sessionid: 4,
        domainname: Some("example.org".into()),
    };
    assert_eq!(attrs_error(|p| p.attrs = ok.clone()), "");
    type Change = Box<dyn Fn(&mut ProcessRecord)>;
    let cases: [(&str, Change); 9] = [
        ("dumpable 3", Box::new(|p| p.attrs.dumpable = 3)),
        ("thp_disable 2", Box::new(|p| p.attrs.thp_disable = 2)),
        ("mdwe 0x4", Box::new(|p| p.attrs.mdwe = 4)),
        (
            "only PID 1 carries the domain name",
            Box::new(|p| {
                p.pid = 2;
                p.threads = vec![crate::tests::thread(2)];
                p.attrs.domainname = Some("x".into())
            }),
        ),
        ("is not a domain name", Box::new(|p| p.attrs.domainname = Some("d".repeat(65)))),
        ("is not a domain name", Box::new(|p| p.attrs.domainname = Some("a\0b".into()))),
        ("beyond the securebits", Box::new(|p| p.creds.securebits = 0x1000)),
        ("pdeathsig 65", Box::new(|p| p.threads[1].attrs.pdeathsig = 65)),
        ("mce_kill 3", Box::new(|p| p.threads[0].attrs.mce_kill = 3)),
    ];
    for (want, change) in cases {
        let err = attrs_error(change);
        assert!(err.contains(want), "want {want:?}, got {err:?}");
    }
    assert!(attrs_error(|p| p.threads[0].attrs.tsc = 0).contains("tsc 0"));
    let meta = FileMeta { mode: 0o640, uid: 1, gid: 2, atime_ns: 1, mtime_ns: 2 };
    assert_eq!(
        attrs_error(|p| p.objects.push(ObjectRecord {
            id: 9,
            kind: ObjectKind::Memfd { name: "m".into(), seals: 0 },
            size: 0,
            meta: Some(meta),
            link: None,
        })),
        ""
    );
    let err = attrs_error(|p| {
        p.objects.push(ObjectRecord {
            id: 9,
            kind: ObjectKind::Memfd { name: "m".into(), seals: 0 },
            size: 0,
            meta: Some(FileMeta { mode: 0o10000, ..meta }),
            link: None,
        })
    });
    assert!(err.contains("is not a permission mode"), "{err}");
    let err = attrs_error(|p| p.objects[0].meta = Some(meta));
    assert!(err.contains("only a memfd or a deleted file"), "{err}");
}

#[test]
fn only_a_deleted_file_has_another_link() {
    let deleted = ObjectKind::Deleted { path: "/data/a".into(), mode: 0o600, uid: 0, gid: 0 };
    let with = |kind: ObjectKind, link: &str| {
        attrs_error(|p| {
            p.objects.push(ObjectRecord {
                id: 9,
                kind: kind.clone(),
                size: 0,
                meta: None,
                link: Some(link.into()),
            })
        })
    };
    assert_eq!(with(deleted.clone(), "/data/b"), "");
    assert!(with(deleted.clone(), "data/b").contains("object 9"), "a relative link");
    let err = with(deleted, "/etc/passwd");
    assert!(err.contains("its other name \"/etc/passwd\" is not in the directory of \"/data/a\""), "{err}");
    let err = with(ObjectKind::AnonShared, "/data/b");
    assert!(err.contains("only a deleted file without file attributes has a link"), "{err}");
}

fn with_timers() -> ProcessRecord {
    use crate::records::{PosixTimer, TimerNotify};
    let mut p = process(10);
    let t = |id, clock, notify| PosixTimer {
        id,
        clock,
        notify,
        signo: 34,
        value: 0x1234,
        left_ns: 5_000_000_000,
        interval_ns: 1_000_000_000,
        abs_ns: None,
    };
    p.timers = vec![
        t(0, 1, TimerNotify::Signal),
        t(1, 7, TimerNotify::None),
        t(2, 0, TimerNotify::Thread { tid: 11 }),
        // The process's own scheduler CPU clock (`clock_getcpuclockid(10)`), and thread
        // 11's (`pthread_getcpuclockid`).
        t(3, (!10 << 3) | 2, TimerNotify::Signal),
        t(4, (!11 << 3) | 6, TimerNotify::Signal),
    ];
    p.timers[2].abs_ns = Some(1_800_000_000_000_000_000);
    p.membarrier = 16 | 256;
    p
}

#[test]
fn timers_and_membarrier_are_checked() {
    use crate::records::{MAX_TIMERS, TimerNotify};
    assert!(validate_process(&with_timers()).is_ok(), "{:?}", validate_process(&with_timers()));
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "more than 65536",
            Box::new(|p| {
                let t = p.timers[0];
                p.timers = (0..=MAX_TIMERS as i32).map(|id| crate::records::PosixTimer { id, ..t }).collect();
            }),
        ),
        ("timer id 0 is negative or listed twice", Box::new(|p| p.timers[1].id = 0)),
        ("timer id -1 is negative or listed twice", Box::new(|p| p.timers[1].id = -1)),
        ("timer 0: clock 4, a clock a timer cannot be restored on", Box::new(|p| p.timers[0].clock = 4)),
        ("timer 0: clock 9, an alarm clock", Box::new(|p| p.timers[0].clock = 9)),
        (
            "a CPU clock of another process",
            Box::new(|p| p.timers[3].clock = (!99 << 3) | 2), // another process
        ),
        ("(-85), not a CPU clock", Box::new(|p| p.timers[3].clock = (!10 << 3) | 3)),
        ("a CPU clock of another process", Box::new(|p| p.timers[3].clock = (!11 << 3) | 2)),
        (
            "the calling thread's CPU clock, in a process of several threads",
            Box::new(|p| p.timers[0].clock = 3),
        ),
        (
            "the calling thread's CPU clock, in a process of several threads",
            Box::new(|p| p.timers[0].clock = (!0 << 3) | 6),
        ),
        ("timer 0: signal 65 is not a signal (1..=64)", Box::new(|p| p.timers[0].signo = 65)),
        ("timer 2: signal 0 is not a signal (1..=64)", Box::new(|p| p.timers[2].signo = 0)),
        (
            "timer 2: thread 12 is not a thread of the process",
            Box::new(|p| p.timers[2].notify = TimerNotify::Thread { tid: 12 }),
        ),
        ("timer 0: time beyond the kernel's range", Box::new(|p| p.timers[0].left_ns = u64::MAX)),
        ("timer 0: time beyond the kernel's range", Box::new(|p| p.timers[0].interval_ns = 1 << 63)),
        (
            "timer 0: absolute, but disarmed or on a clock other than REALTIME or TAI",
            Box::new(|p| p.timers[0].abs_ns = Some(1)),
        ),
        (
            "timer 2: absolute, but disarmed or on a clock other than REALTIME or TAI",
            Box::new(|p| p.timers[2].left_ns = 0),
        ),
        ("timer 2: time beyond the kernel's range", Box::new(|p| p.timers[2].abs_ns = Some(u64::MAX))),
        ("0x1000 holds bits that are not registrations", Box::new(|p| p.membarrier = 0x1000)),
        (
            "a zombie holds no threads",
            Box::new(|p| {
                let timers = std::mem::take(&mut p.timers);
                *p = process(10);
                p.threads.clear();
                p.vmas.clear();
                p.fds.clear();
                p.mm = None;
                p.objects.clear();
                p.zombie = Some(0);
                p.timers = timers;
            }),
        ),
    ];
    for (want, mutate) in cases {
        let mut p = with_timers();
        mutate(&mut p);
        let err = validate_process(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(want), "want {want:?}, got {err:?}");
    }
    // A signal number does not matter to a timer that sends none.
    let mut p = with_timers();
    p.timers[1].signo = 0;
    assert!(validate_process(&p).is_ok());
    // A process of one thread says which thread made a timer on the calling thread's clock.
    p.threads.truncate(1);
    p.timers.retain(|t| !matches!(t.notify, TimerNotify::Thread { .. }) && t.id != 4);
    p.timers[0].clock = 3;
    assert!(validate_process(&p).is_ok(), "{:?}", validate_process(&p));
}
