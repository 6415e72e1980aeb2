//! Unit tests of the format: round trips, every truncation and every flipped bit of small
//! files, version handling, caps, validation, and a seeded fuzz smoke test.

mod files;
mod fuzz_smoke;
mod pages;
mod validation;

use crate::manifest::{Clocks, ContainerMeta, CpuId, FileSum, KernelId, Manifest, Stats};
use crate::pages::{PageBatch, PageRun};
use crate::records::{
    AltStack, Creds, FdKind, FdRecord, FileId, FileLock, ITimer, LockKind, MmFields, ObjectKind,
    ObjectRecord, ProcessAttrs, ProcessRecord, Regs, Rlimit, Rseq, Sched, SigAction, SigInfo, ThreadAttrs,
    ThreadRecord, Vma, VmaBacking,
};
use crate::{FORMAT_VERSION, PAGE_SIZE};

/// A tiny xorshift64* generator: deterministic, no dependencies.
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64() as u8;
        }
    }
}

pub(crate) fn file_id(path: &str) -> FileId {
    FileId { path: path.into(), size: 123_456, mtime_ns: 1_700_000_000_000_000_000, mode: 0o100755 }
}

pub(crate) fn regs(rip: u64) -> Regs {
    Regs {
        r15: 15,
        r14: 14,
        r13: 13,
        r12: 12,
        rbp: 0x7ffd_0000_1000,
        rbx: 1,
        r11: 0x246,
        r10: 0,
        r9: 0,
        r8: 0,
        rax: u64::MAX - 3, // -ERESTARTSYS-ish: a thread inside a syscall
        rcx: rip,
        rdx: 0,
        rsi: 0,
        rdi: 0,
        orig_rax: 7,
        rip,
        cs: 0x33,
        eflags: 0x246,
        rsp: 0x7ffd_0000_0f00,
        ss: 0x2b,
        fs_base: 0x7f00_0000_5000,
        gs_base: 0,
        ds: 0,
        es: 0,
        fs: 0,
        gs: 0,
    }
}

pub(crate) fn thread(tid: i32) -> ThreadRecord {
    ThreadRecord {
        comm: "test".into(),
        tid,
        regs: regs(0x40_1000),
        xstate: vec![0xab; 1024],
        sigmask: 1 << 13,
        rseq: Some(Rseq { addr: 0x7f00_0000_6000, len: 32, signature: 0x5305_3053 }),
        robust_list: (0x7f00_0000_7000, 24),
        clear_child_tid: 0x7f00_0000_7010,
        altstack: AltStack::default(),
        pending: vec![SigInfo { signo: 10, raw: vec![0; 128] }],
        sched: Sched { policy: 0, priority: 0, nice: 0, cpus: vec![0, 1] },
        attrs: ThreadAttrs::default(),
    }
}

fn vma(start: u64, end: u64, backing: VmaBacking, name: &str) -> Vma {
    Vma {
        start,
        end,
        prot: 3,
        offset: 0,
        backing,
        name: name.into(),
        growsdown: false,
        advice: vec![],
        may_write: true,
    }
}

/// A plausible single-process record with two threads.
pub(crate) fn process(pid: i32) -> ProcessRecord {
    let exe = file_id("/usr/bin/server");
    ProcessRecord {
        pid,
        ppid: 0,
        sid: pid,
        pgid: pid,
        comm: "server".into(),
        threads: vec![thread(pid), thread(pid + 1)],
        vmas: vec![
            Vma {
                prot: 5,
                ..vma(
                    0x40_0000,
                    0x40_2000,
                    VmaBacking::File { file: exe.clone(), shared: false },
                    "/usr/bin/server",
                )
            },
            vma(0x60_0000, 0x60_4000, VmaBacking::Anon, "[heap]"),
            vma(0x7f00_0000_0000, 0x7f00_0000_2000, VmaBacking::Anon, ""),
            vma(
                0x7f00_0000_2000,
                0x7f00_0000_3000,
                VmaBacking::Object { id: 1, shared: true },
                "/dev/zero (deleted)",
            ),
            Vma {
                advice: vec!["dd".into()],
                ..vma(
                    0x7f00_0001_0000,
                    0x7f00_0001_1000,
                    VmaBacking::File { file: file_id("/data/shared.db"), shared: true },
                    "/data/shared.db",
                )
            },
            vma(0x7ffc_0000_0000, 0x7ffc_0000_4000, VmaBacking::Vvar, "[vvar]"),
            vma(0x7ffc_0000_4000, 0x7ffc_0000_6000, VmaBacking::Vdso, "[vdso]"),
            Vma { growsdown: true, ..vma(0x7ffd_0000_0000, 0x7ffd_0002_0000, VmaBacking::Anon, "[stack]") },
        ],
        mm: Some(MmFields {
            start_code: 0x40_0000,
            end_code: 0x40_2000,
            start_data: 0x40_2000,
            end_data: 0x40_3000,
            start_brk: 0x60_0000,
            brk: 0x60_4000,
            start_stack: 0x7ffd_0001_f000,
            arg_start: 0x7ffd_0001_f100,
            arg_end: 0x7ffd_0001_f200,
            env_start: 0x7ffd_0001_f200,
            env_end: 0x7ffd_0001_f800,
            auxv: vec![6, 4096, 25, 0x7ffd_0001_f900, 0, 0],
            exe,
        }),
        fds: vec![
            FdRecord {
                fd: 0,
                file_id: 0,
                flags: 0,
                kind: FdKind::Device { path: "/dev/null".into() },
                locks: vec![],
            },
            FdRecord {
                fd: 1,
                file_id: 1,
                flags: 1,
                kind: FdKind::External { name: "stdout".into() },
                locks: vec![],
            },
            FdRecord {
                fd: 2,
                file_id: 2,
                flags: 1,
                kind: FdKind::External { name: "stderr".into() },
                locks: vec![],
            },
            FdRecord {
                fd: 3,
                file_id: 3,
                flags: 0o2,
                kind: FdKind::File { file: file_id("/data/log.txt"), pos: 4242 },
                locks: vec![FileLock { kind: LockKind::Posix, write: true, start: 0, end: None }],
            },
            FdRecord {
                fd: 7,
                file_id: 7,
                flags: 0,
                kind: FdKind::Dir { path: "/data".into(), pos: 0 },
                locks: vec![],
            },
        ],
        creds: Creds {
            uids: [0; 4],
            gids: [0; 4],
            groups: vec![0, 10],
            cap_inheritable: 0,
            cap_permitted: 0x1ff,
            cap_effective: 0x1ff,
            cap_bounding: 0x1ff,
            cap_ambient: 0,
            no_new_privs: false,
            securebits: 0,
        },
        rlimits: vec![
            Rlimit { resource: 7, cur: 1024, max: 4096 },
            Rlimit { resource: 3, cur: 8 << 20, max: u64::MAX },
        ],
        cwd: "/data".into(),
        root: "/".into(),
        umask: 0o022,
        sigactions: vec![SigAction {
            signo: 15,
            handler: 0x40_1100,
            flags: 0x0400_0000,
            restorer: 0x40_1200,
            mask: 0,
        }],
        shared_pending: vec![],
        itimers: [ITimer::default(), ITimer { interval_us: 0, value_us: 0 }, ITimer::default()],
        personality: 0,
        pipes: Vec::new(),
        tmpfs: Vec::new(),
        objects: vec![ObjectRecord {
            id: 1,
            kind: ObjectKind::AnonShared,
            size: 4096,
            meta: None,
            link: None,
        }],
        inherited: Vec::new(),
        oom_score_adj: 0,
        zombie: None,
        ipc: None,
        coredump_filter: 0x33,
        attrs: ProcessAttrs::default(),
        mlockall: 0,

        timers: Vec::new(),
        membarrier: 0,
    }
}

/// A batch in `process(pid)`'s anonymous memory: compressible when `fill` is `None`,
/// pseudo-random (incompressible) otherwise.
pub(crate) fn batch(pid: i32, random: Option<u64>) -> PageBatch {
    let runs = vec![
        PageRun { addr: 0x60_0000, npages: 2 },
        PageRun { addr: 0x60_3000, npages: 1 },
        PageRun { addr: 0x7f00_0000_0000, npages: 2 },
    ];
    let npages: u64 = runs.iter().map(|r| u64::from(r.npages)).sum();
    let mut data = vec![0u8; (npages * PAGE_SIZE) as usize];
    match random {
        Some(seed) => XorShift::new(seed).fill(&mut data),
        None => {
            for (i, b) in data.iter_mut().enumerate() {
                *b = if i % 512 < 8 { (i / 4096) as u8 } else { 0 };
            }
        }
    }
    PageBatch { pid, object: 0, round: 0, runs, data }
}

pub(crate) fn manifest() -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        tool_version: "0.1.0".into(),
        created_ms: 1_760_000_000_000,
        last_pid: 4242,
        kernel: KernelId {
            release: "6.8.0-lab".into(),
            version: "#1 SMP PREEMPT_DYNAMIC".into(),
            machine: "x86_64".into(),
            vdso_digest: "3f2a".repeat(16),
        },
        cpu: CpuId {
            vendor: "GenuineIntel".into(),
            flags: vec!["sse4_2".into(), "avx2".into()],
            xfeatures: 0x2e7,
        },
        clocks: Clocks {
            monotonic_ns: 5_000_000_000,
            boottime_ns: 5_100_000_000,
            realtime_ns: 1_760_000_000_000_000_000,
        },
        container: ContainerMeta {
            name: "web".into(),
            hostname: "web".into(),
            ip: "10.77.1.5".into(),
            prefix: 16,
            mac: "02:42:0a:4d:01:05".into(),
            cmd: vec!["/usr/bin/server".into(), "--port=80".into()],
            memory_max: Some(256 << 20),
            pids_max: None,
            created_ms: 1_759_999_000_000,
            host: "host-a".into(),
        },
        files: vec![
            FileSum { name: "process.img".into(), size: 4242, xxh3: 0xdead_beef_0bad_f00d },
            FileSum { name: "pages.img".into(), size: 1 << 30, xxh3: 0x1234_5678_9abc_def0 },
        ],
        stats: Stats {
            processes: 1,
            threads: 2,
            vmas: 8,
            pages_stored: 5,
            pages_zero: 10,
            pages_total: 100,
            bytes_raw: 5 * 4096,
            bytes_stored: 900,
        },
        parent: None,
        auth_tag: None,
    }
}

#[test]
fn error_stays_small() {
    assert!(std::mem::size_of::<crate::ProtoError>() <= 64, "{}", std::mem::size_of::<crate::ProtoError>());
}
