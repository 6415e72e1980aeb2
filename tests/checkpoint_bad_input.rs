//! Bad input to checkpoint and restore: damaged or foreign images, names and addresses in
//! use, containers holding what this version cannot checkpoint, a directory in the way.
//!
//! Each is a clear error on stderr naming what is wrong, a non-zero exit and no panic;
//! nothing is left behind (the target host holds no new container, cgroup, state
//! directory or process), and the source is untouched (the image files are unchanged, a
//! refused container runs on, unfrozen).

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use migrate_proto::frame::{Frame, RecordReader, RecordWriter};
use migrate_proto::records::{ObjectKind, ProcessRecord};
use migrate_proto::{decode_manifest, digest_reader, encode_manifest};
use support::{TempDir, TestLab, wait_until};

const FILES: [&str; 3] = ["manifest.img", "process.img", "pages.img"];

/// A python3 program with a few MiB of data that prints `tick N` every 100 ms. With an
/// argument it first opens something this version cannot checkpoint and prints `fd N`
/// (or `child PID` for a child process). The kinds it opens are ones no version is
/// expected to carry soon (a netlink socket, a userfaultfd, io_uring).
const TICKER: &str = r#"import ctypes, os, socket, sys, time
def uffd():
    # userfaultfd(UFFD_USER_MODE_ONLY)
    return ctypes.CDLL(None).syscall(323, 1)
data = bytes(range(256)) * 20000
kind = sys.argv[1] if len(sys.argv) > 1 else ''
held = []
if kind == 'socket':
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); held.append(s); print(f'fd {s.fileno()}', flush=True)
elif kind == 'fifo':
    p = sys.argv[2]; os.mkfifo(p); fd = os.open(p, os.O_RDWR); print('fd', fd, flush=True)
elif kind == 'userfaultfd':
    print(f'fd {uffd()}', flush=True)
elif kind == 'io_uring':
    print(f'fd {ctypes.CDLL(None).syscall(425, 4, ctypes.create_string_buffer(120))}', flush=True)
elif kind == 'deleted-dir':
    p = sys.argv[2]; os.mkdir(p); fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY); os.rmdir(p); print('fd', fd, flush=True)
elif kind == 'made':
    # What a restore creates on the host: a FIFO, a file deleted while open, a socket node.
    d = sys.argv[2]; f = os.path.join(d, 'fifo'); os.mkfifo(f); held.append(os.open(f, os.O_RDWR))
    g = open(os.path.join(d, 'gone'), 'w+'); g.write('kept'); g.flush(); os.unlink(g.name); held.append(g)
    u = socket.socket(socket.AF_UNIX); u.bind(os.path.join(d, 'sock')); u.listen(1); held.append(u)
elif kind == 'bound':
    u = socket.socket(socket.AF_UNIX); u.bind(os.path.join(sys.argv[2], 'bound')); u.listen(1); held.append(u)
elif kind == 'child':
    import subprocess; c = subprocess.Popen(['sleep', '100000']); print(f'child {c.pid}', flush=True)
elif kind == 'several':
    # Two refusals at once, in two processes: a socket here, a userfaultfd in a child.
    import subprocess
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); held.append(s)
    c = subprocess.Popen(['python3', '-c', 'import ctypes, time; ctypes.CDLL(None).syscall(323, 1); time.sleep(100000)'])
    print(f'child {c.pid}', flush=True)
elif kind == 'stopped':
    import signal, subprocess; c = subprocess.Popen(['sleep', '100000']); os.kill(c.pid, signal.SIGSTOP)
    print(f'child {c.pid}', flush=True)
elif kind == 'traced':
    import ctypes, subprocess; c = subprocess.Popen(['sleep', '100000'])
    if ctypes.CDLL(None).ptrace(0x4206, c.pid, 0, 0) != 0:  # PTRACE_SEIZE
        sys.exit('ptrace failed')
    print(f'child {c.pid}', flush=True)
elif kind == 'lonely':
    # A child whose main thread leaves by the raw exit syscall while another thread runs.
    import subprocess
    prog = 'import ctypes, threading, time; threading.Thread(target=time.sleep, args=(100000,)).start(); ctypes.CDLL(None).syscall(60, 0)'
    c = subprocess.Popen(['python3', '-c', prog]); print(f'child {c.pid}', flush=True)
elif kind == 'nested':
    import subprocess; c = subprocess.Popen(['unshare', '--pid', '--fork', 'sleep', '100000']); print(f'child {c.pid}', flush=True)
i = 0
while True:
    print(f'tick {i}', flush=True)
    i += 1
    time.sleep(0.1)
"#;

fn ticker(extra: &[&str]) -> Vec<String> {
    let mut v = vec!["python3".to_string(), "-u".into(), "-c".into(), TICKER.into()];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn start(lab: &TestLab, host: &str, name: &str, cmd: &[String]) -> anyhow::Result<()> {
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    lab.start(host, name, &cmd)?;
    lab.wait_log(name, "tick 2")?;
    Ok(())
}

/// The highest `tick N` of a container's log.
fn last_tick(lab: &TestLab, name: &str) -> anyhow::Result<u64> {
    let log = lab.logs(name)?;
    log.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .max()
        .with_context(|| format!("no tick in {log}"))
}

/// Requires that `name` runs on as before: same pid, running, not frozen, still ticking.
fn ensure_untouched(lab: &TestLab, name: &str, before: &serde_json::Value) -> anyhow::Result<()> {
    let now = lab.container(name)?;
    ensure!(
        now["state"] == "running" && now["pid"] == before["pid"],
        "{name} changed: before {before}, now {now}"
    );
    if let Some(v2) = now["cgroup"]["v2"].as_str() {
        let events = std::fs::read_to_string(Path::new(v2).join("cgroup.events"))?;
        ensure!(events.contains("frozen 0"), "{name} was left frozen: {events}");
    }
    let t = last_tick(lab, name)?;
    let mut last = t;
    ensure!(
        wait_until(Duration::from_secs(20), || {
            last = last_tick(lab, name).unwrap_or(0);
            last >= t + 3
        }),
        "{name} stopped ticking at {last}"
    );
    Ok(())
}

/// The image's files, by name.
fn read_image(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        out.push((e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path())?));
    }
    out.sort();
    Ok(out)
}

/// Writes `bytes` as the image's file `name` and makes the manifest's digest of it match:
/// a forgery every checksum agrees with.
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(dir.join(name), bytes)?;
    let mut m = decode_manifest(&std::fs::read(dir.join("manifest.img"))?)?;
    let digest = digest_reader(bytes)?;
    for f in m.files.iter_mut().filter(|f| f.name == name) {
        *f = digest.sum(name);
    }
    std::fs::write(dir.join("manifest.img"), encode_manifest(&m)?)?;
    Ok(())
}

fn copy_image(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name())).with_context(|| format!("copying {:?}", e.path()))?;
    }
    Ok(())
}

/// `(processes, containers)` of a host, from `lab status --json`.
fn host_counts(lab: &TestLab, host: &str) -> anyhow::Result<(u64, u64)> {
    let status = lab.json(&["lab", "status", "--json"])?;
    let h = status["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["name"] == host))
        .with_context(|| format!("{host} not in {status}"))?;
    Ok((h["processes"].as_u64().context("processes")?, h["containers"].as_u64().context("containers")?))
}

/// A lab with a container checkpointed to `<img>/good`; host-b is left empty.
fn lab_with_image(img: &TempDir) -> anyhow::Result<(TestLab, std::path::PathBuf)> {
    let lab = TestLab::up(2)?;
    start(&lab, "host-a", "src", &ticker(&[]))?;
    let good = img.path.join("good");
    lab.ok(&["checkpoint", "src", "--dir", &good.to_string_lossy()])?;
    Ok((lab, good))
}

/// Restores `dir` on host-b, requiring a failure whose stderr holds every one of `all`
/// and one of `any` (when not empty); with `inspect_too`, `inspect` must refuse it the
/// same way. Afterwards host-b must hold nothing new and the image be unchanged. Returns
/// the problems found (empty: all good).
fn refused(
    lab: &TestLab,
    what: &str,
    dir: &Path,
    all: &[&str],
    any: &[&str],
    inspect_too: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let before = match read_image(dir) {
        Ok(files) => files,
        Err(e) => return vec![format!("{what}: reading the image: {e:#}")],
    };
    let procs_before = match host_counts(lab, "host-b") {
        Ok((procs, _)) => procs,
        Err(e) => return vec![format!("{what}: lab status: {e:#}")],
    };
    let d = dir.to_string_lossy().into_owned();
    let mut attempts = vec![("restore", vec!["restore", "--dir", d.as_str(), "--host", "host-b"])];
    if inspect_too {
        attempts.push(("inspect", vec!["inspect", d.as_str()]));
    }
    for (verb, args) in attempts {
        match lab.fails(&args) {
            Err(e) => problems.push(format!("{what}: {verb}: {e:#}")),
            Ok(stderr) => {
                eprintln!("{what}: {verb}: {}", stderr.trim());
                let missing: Vec<&&str> = all.iter().filter(|n| !stderr.contains(**n)).collect();
                if !missing.is_empty() {
                    problems.push(format!("{what}: {verb}'s error lacks {missing:?}: {}", stderr.trim()));
                }
                if !any.is_empty() && !any.iter().any(|n| stderr.contains(n)) {
                    problems.push(format!("{what}: {verb}'s error names none of {any:?}: {}", stderr.trim()));
                }
            }
        }
    }
    match lab.ps() {
        Ok(ps) if ps.iter().any(|c| c["host"] == "host-b") => {
            problems.push(format!("{what}: host-b holds a container after the failed restore: {ps:?}"))
        }
        Ok(_) => {}
        Err(e) => problems.push(format!("{what}: ps: {e:#}")),
    }
    let dirs = lab.container_dirs("host-b");
    if !dirs.is_empty() {
        problems.push(format!("{what}: left behind on host-b: {dirs:?}"));
    }
    match host_counts(lab, "host-b") {
        Ok((procs, containers)) if procs != procs_before || containers != 0 => problems.push(format!(
            "{what}: host-b has {procs} processes (before: {procs_before}) and {containers} containers"
        )),
        Ok(_) => {}
        Err(e) => problems.push(format!("{what}: lab status: {e:#}")),
    }
    if !read_image(dir).is_ok_and(|now| now == before) {
        problems.push(format!("{what}: the failed restore changed the image in {d}"));
    }
    problems
}

#[test]
fn damaged_images_are_refused_naming_the_file_and_the_frame() -> anyhow::Result<()> {
    let img = TempDir::new("damaged")?;
    let (lab, good) = lab_with_image(&img)?;
    let mut problems = Vec::new();

    // Cut pages.img in the middle.
    let cut = img.path.join("case-cut");
    copy_image(&good, &cut)?;
    let len = std::fs::metadata(cut.join("pages.img"))?.len();
    std::fs::OpenOptions::new().write(true).open(cut.join("pages.img"))?.set_len(len / 2)?;
    problems.extend(refused(
        &lab,
        "pages.img cut in half",
        &cut,
        &["pages.img"],
        &["frame", "batch", "truncated"],
        true,
    ));

    // One flipped byte: in the magic or frame kind, in a length field, in the middle, in
    // the last (checksum) byte.
    for file in FILES {
        let size = std::fs::metadata(good.join(file))?.len() as usize;
        for pos in [0, 5, 13, size / 2, size - 1] {
            // Neutral names: the needles must come from the message, not the path.
            let dir = img.path.join(format!("case-{}-{pos}", file.len()));
            copy_image(&good, &dir)?;
            let mut bytes = std::fs::read(dir.join(file))?;
            bytes[pos] ^= 0x40;
            std::fs::write(dir.join(file), bytes)?;
            let what = format!("{file} with byte {pos} of {size} flipped");
            let (all, any): (&[&str], &[&str]) = if file == "manifest.img" {
                (&["manifest"], &["checksum", "magic", "length", "version"])
            } else {
                (&[file], &["frame", "batch"])
            };
            problems.extend(refused(&lab, &what, &dir, all, any, true));
        }
    }
    // The container's log it carries: any change is caught by the manifest's digest.
    let dir = img.path.join("case-log");
    copy_image(&good, &dir)?;
    let mut bytes = std::fs::read(dir.join("stdio.log"))?;
    ensure!(bytes.starts_with(b"tick 0"), "the image's log: {:?}", String::from_utf8_lossy(&bytes));
    bytes[0] ^= 0x40;
    std::fs::write(dir.join("stdio.log"), bytes)?;
    problems.extend(refused(&lab, "stdio.log with byte 0 flipped", &dir, &["stdio.log"], &["digest"], true));
    // The undamaged image restores: the refusals above were for the damage. Its log goes
    // on from the source's.
    if problems.is_empty() {
        lab.ok(&["restore", "--dir", &good.to_string_lossy(), "--host", "host-b"])?;
        let carried = last_tick(&lab, "src")?;
        ensure!(
            wait_until(Duration::from_secs(20), || last_tick(&lab, "src").is_ok_and(|t| t > carried + 2)),
            "the restored container does not tick on from {carried}"
        );
    }
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    lab.down_expecting(&["src"])?;
    Ok(())
}

#[test]
fn an_image_of_a_newer_format_or_another_kernel_is_refused() -> anyhow::Result<()> {
    let img = TempDir::new("foreign")?;
    let (lab, good) = lab_with_image(&img)?;
    let mut problems = Vec::new();

    // The version field of the header (bytes 8..12), with the manifest's crc32 fixed.
    let newer = img.path.join("case-version");
    copy_image(&good, &newer)?;
    let mut bytes = std::fs::read(newer.join("manifest.img"))?;
    bytes[8..12].copy_from_slice(&(migrate_proto::FORMAT_VERSION + 1).to_le_bytes());
    let body = bytes.len() - 4;
    let crc = crc32(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(newer.join("manifest.img"), &bytes)?;
    let v = format!("version {}", migrate_proto::FORMAT_VERSION + 1);
    problems.extend(refused(&lab, "format version +1", &newer, &[&v, "newer", "upgrade migrate"], &[], true));

    // Another kernel build: a well-formed manifest naming another release.
    let other = img.path.join("case-kernel");
    copy_image(&good, &other)?;
    let mut m = decode_manifest(&std::fs::read(other.join("manifest.img"))?)?;
    let ours = m.kernel.release.clone();
    m.kernel.release = "5.10.0-other-build".into();
    std::fs::write(other.join("manifest.img"), encode_manifest(&m)?)?;
    problems.extend(refused(
        &lab,
        "kernel 5.10.0-other-build",
        &other,
        &["kernel", "5.10.0-other-build", &ours],
        &[],
        false,
    ));

    // The same release but another vDSO.
    let vdso = img.path.join("case-vdso");
    copy_image(&good, &vdso)?;
    let mut m = decode_manifest(&std::fs::read(vdso.join("manifest.img"))?)?;
    m.kernel.vdso_digest = "crc32:00000000/8192".into();
    std::fs::write(vdso.join("manifest.img"), encode_manifest(&m)?)?;
    // The message must say what differs: the two releases are the same here.
    problems.extend(refused(&lab, "another vDSO", &vdso, &["vDSO", "crc32:00000000/8192"], &[], false));

    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    lab.down_expecting(&[])?;
    Ok(())
}

/// crc32 (IEEE), as frames and the manifest end with.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// postcard's varint encoding of a u64 (LEB128).
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

#[test]
fn an_image_with_overlapping_vmas_is_refused_by_the_semantic_check() -> anyhow::Result<()> {
    let img = TempDir::new("overlap")?;
    let (lab, good) = lab_with_image(&img)?;
    let dir = img.path.join("case");
    copy_image(&good, &dir)?;
    let mut bytes = std::fs::read(dir.join("process.img"))?;
    let mut reader = RecordReader::new(&bytes[..]);
    let Some(Frame::Process(rec)) = reader.next()? else {
        anyhow::bail!("process.img does not start with a process")
    };
    let payload_len = u32::from_le_bytes(bytes[4..8].try_into()?) as usize;

    // Move the start of a VMA into the one before it, in the encoded record: its start and
    // end are consecutive varints. Pick a VMA whose new start encodes to the same length
    // and whose (start, end) pattern occurs once.
    let mut patched = None;
    for pair in rec.vmas.windows(2) {
        let (prev, v) = (&pair[0], &pair[1]);
        let new_start = prev.end - 4096;
        let old: Vec<u8> = [varint(v.start), varint(v.end)].concat();
        let new: Vec<u8> = [varint(new_start), varint(v.end)].concat();
        let payload = &bytes[8..8 + payload_len];
        let hits: Vec<usize> =
            payload.windows(old.len()).enumerate().filter(|(_, w)| *w == old).map(|(i, _)| i).collect();
        if new.len() == old.len() && hits.len() == 1 {
            patched = Some((8 + hits[0], new, v.start, v.end, prev.start, prev.end));
            break;
        }
    }
    let (at, new, start, end, prev_start, prev_end) = patched.context("no VMA could be patched in place")?;
    bytes[at..at + new.len()].copy_from_slice(&new);
    // Fix the frame's crc32 (after its header and payload) and the manifest's entry.
    let crc = crc32(&bytes[..8 + payload_len]);
    bytes[8 + payload_len..12 + payload_len].copy_from_slice(&crc.to_le_bytes());
    replace_file(&dir, "process.img", &bytes)?;

    // Every checksum holds; only the semantic check of the record can catch it.
    let m = decode_manifest(&std::fs::read(dir.join("manifest.img"))?)?;
    for sum in &m.files {
        migrate_proto::verify_file(sum, std::fs::File::open(dir.join(&sum.name))?)?;
    }
    let err = RecordReader::new(&bytes[..]).next().err().context("the patched record still validates")?;
    ensure!(err.to_string().contains("overlaps") || format!("{err:?}").contains("Overlaps"), "{err:?}");
    eprintln!(
        "moved VMA {start:#x}-{end:#x} to start at {:#x}, inside {prev_start:#x}-{prev_end:#x}",
        prev_end - 4096
    );

    let problems = refused(
        &lab,
        "overlapping VMAs",
        &dir,
        &["process.img", "overlaps", &format!("{prev_start:#x}")],
        &[],
        true,
    );
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    lab.down_expecting(&[])?;
    Ok(())
}

#[test]
fn restore_refuses_a_name_or_an_ip_in_use() -> anyhow::Result<()> {
    let img = TempDir::new("taken")?;
    let lab = TestLab::up(2)?;
    start(&lab, "host-a", "web", &ticker(&[]))?;
    let ip = lab.container("web")?["ip"].as_str().context("ip")?.to_string();
    let image = img.path.join("web");
    lab.ok(&["checkpoint", "web", "--dir", &image.to_string_lossy()])?;
    let mut problems = Vec::new();

    // The name is taken by a new container (with another address).
    let mut cmd: Vec<&str> = vec!["run", "--host", "host-a", "--name", "web", "--ip", "10.77.1.200/16", "--"];
    let t = ticker(&[]);
    cmd.extend(t.iter().map(String::as_str));
    lab.ok(&cmd)?;
    lab.wait_log("web", "tick 2")?;
    let holder = lab.container("web")?;
    problems.extend(refused(&lab, "name web in use", &image, &["web", "in use"], &[], false));
    ensure_untouched(&lab, "web", &holder)?;

    // The address is taken (the image restored under a free name).
    let mut cmd: Vec<&str> = vec!["run", "--host", "host-a", "--name", "holder", "--ip", &ip, "--"];
    cmd.extend(t.iter().map(String::as_str));
    lab.ok(&cmd)?;
    lab.wait_log("holder", "tick 2")?;
    let holder2 = lab.container("holder")?;
    let d = image.to_string_lossy().into_owned();
    match lab.fails(&["restore", "--dir", &d, "--host", "host-b", "--name", "web2"]) {
        Ok(e) if e.contains(&ip) && e.contains("in use") => {}
        Ok(e) => problems.push(format!("ip in use: the error does not say {ip} is in use: {e}")),
        Err(e) => problems.push(format!("ip in use: {e:#}")),
    }
    ensure!(lab.ps()?.iter().all(|c| c["host"] != "host-b"), "{:?}", lab.ps()?);
    ensure!(lab.container_dirs("host-b").is_empty(), "{:?}", lab.container_dirs("host-b"));
    ensure_untouched(&lab, "holder", &holder2)?;
    ensure_untouched(&lab, "web", &holder)?;

    // Both free again: it restores.
    if problems.is_empty() {
        lab.ok(&["rm", "--force", "holder"])?;
        lab.ok(&["rm", "--force", "web"])?;
        lab.ok(&["restore", "--dir", &d, "--host", "host-b"])?;
        ensure!(lab.container("web")?["ip"] == ip.as_str());
    }
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    lab.down_expecting(&["web"])?;
    Ok(())
}

/// The number after `word ` in a container's log.
fn logged(lab: &TestLab, name: &str, word: &str) -> anyhow::Result<Vec<String>> {
    let log = lab.wait_log(name, &format!("{word} "))?;
    let line = log.lines().find(|l| l.starts_with(&format!("{word} "))).context("line")?;
    Ok(line.split_whitespace().skip(1).map(str::to_string).collect())
}

#[test]
fn checkpoint_refuses_sockets_fifos_and_other_fds_naming_them() -> anyhow::Result<()> {
    let img = TempDir::new("fds")?;
    let tmp = TempDir::new("fds-tmp")?;
    let lab = TestLab::up(1)?;
    let deleted = tmp.join("gone");
    let fifo = tmp.join("fifo");
    let me = format!("pid {} (", std::process::id());
    // (container, what it holds, what its refusal must name, what it must not say)
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<&'a str>, &'a [&'a str]);
    let cases: [Case; 5] = [
        // Names that do not hold the kind: the kind must come from the message.
        ("c1", vec!["socket"], vec!["socket"], &[]),
        // A FIFO is fine, unless a process outside the container (this test) holds it too.
        ("c2", vec!["fifo", fifo.as_str()], vec!["FIFO", &me, "outside the container"], &[]),
        ("c3", vec!["userfaultfd"], vec!["userfaultfd"], &[]),
        ("c4", vec!["io_uring"], vec!["io_uring"], &[]),
        // Its link reads `/PATH (deleted)` like a deleted file's, which is restored.
        ("c5", vec!["deleted-dir", deleted.as_str()], vec!["deleted directory"], &["deleted file"]),
    ];
    for (name, args, _, _) in &cases {
        start(&lab, "host-a", name, &ticker(args))?;
    }
    // Read-write: opening a FIFO that way never waits for the other side.
    let _outside = std::fs::OpenOptions::new().read(true).write(true).open(&fifo)?;
    let mut problems = Vec::new();
    for (name, _, kinds, forbid) in &cases {
        let pid = lab.container(name)?["pid"].to_string();
        let fds = logged(&lab, name, "fd")?;
        // The first of them is the one found first.
        let fd = fds.first().with_context(|| format!("{name} logged no fd"))?;
        let mut needles = vec![format!("pid {pid}"), format!("fd {fd}")];
        needles.extend(kinds.iter().map(|k| k.to_string()));
        problems.extend(support::refuses_checkpoint(&lab, &img, name, &needles, forbid, ensure_untouched));
    }
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    lab.down_expecting(&["c1", "c2", "c3", "c4", "c5"])?;
    Ok(())
}

/// An image whose FIFO record names a regular file (a forgery: every checksum holds): the
/// restore refuses it, naming the path, and writes nothing into the file.
#[test]
fn a_fifo_record_naming_a_regular_file_is_refused_at_restore() -> anyhow::Result<()> {
    let img = TempDir::new("fifo-forged")?;
    let tmp = TempDir::new("fifo-forged-tmp")?;
    let lab = TestLab::up(2)?;
    let (fifo, victim) = (tmp.join("fifo"), tmp.join("victim"));
    std::fs::write(&victim, b"precious")?;
    start(&lab, "host-a", "src", &ticker(&["fifo", &fifo]))?;
    let good = img.path.join("good");
    lab.ok(&["checkpoint", "src", "--dir", &good.to_string_lossy()])?;
    let dir = img.path.join("case");
    copy_image(&good, &dir)?;
    let bytes = std::fs::read(dir.join("process.img"))?;
    let mut reader = RecordReader::new(&bytes[..]);
    let mut writer = RecordWriter::new(Vec::new());
    let mut forged = 0;
    while let Some(frame) = reader.next()? {
        let Frame::Process(mut rec) = frame else { anyhow::bail!("process.img holds pages") };
        for pipe in &mut rec.pipes {
            if let Some(f) = &mut pipe.fifo {
                f.path = victim.clone();
                pipe.data = b"overwritten".to_vec();
                forged += 1;
            }
        }
        writer.process(&rec)?;
    }
    ensure!(forged == 1, "the image holds {forged} FIFOs, not 1");
    replace_file(&dir, "process.img", &writer.finish()?.0)?;
    let problems = refused(&lab, "a FIFO that is a file", &dir, &[victim.as_str(), "FIFO"], &[], false);
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    ensure!(std::fs::read(&victim)? == b"precious", "the restore wrote into {victim}");
    lab.down_expecting(&[])?;
    Ok(())
}

#[test]
fn checkpoint_refuses_stopped_traced_and_nested_processes_naming_them() -> anyhow::Result<()> {
    let img = TempDir::new("states")?;
    let lab = TestLab::up(1)?;
    // (container, what it runs, what the refusal must name besides the child's pid)
    let cases = [
        ("s1", "stopped", "is stopped"),
        ("s2", "traced", "is traced by PID 1 (python3"),
        ("s3", "lonely", "has exited its main thread while its other threads run"),
        ("s4", "nested", "runs in a pid namespace of its own"),
        ("s5", "several", "2 things stand in the way"),
    ];
    for (name, kind, _) in &cases {
        start(&lab, "host-a", name, &ticker(&[kind]))?;
    }
    let mut problems = Vec::new();
    for (name, kind, what) in &cases {
        let child = logged(&lab, name, "child")?;
        let child = child.first().with_context(|| format!("{name} logged no child"))?;
        // The nested sleeper is the unshare's child: its pid is not the one printed.
        let mut needles = vec![what.to_string()];
        if *kind != "nested" {
            needles.push(format!("PID {child} ("));
        }
        if *kind == "several" {
            needles.extend(["PID 1 (python3".to_string(), "is a socket".into(), "userfaultfd".into()]);
        }
        problems.extend(support::refuses_checkpoint(&lab, &img, name, &needles, &[], ensure_untouched));
    }
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    lab.down_expecting(&["s1", "s2", "s3", "s4", "s5"])?;
    Ok(())
}

#[test]
fn checkpoint_into_a_non_empty_directory_is_refused() -> anyhow::Result<()> {
    let img = TempDir::new("nonempty")?;
    let lab = TestLab::up(1)?;
    start(&lab, "host-a", "busy", &ticker(&[]))?;
    let before = lab.container("busy")?;
    let dir = img.path.join("busy");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("precious.txt"), b"keep me")?;
    let err = lab.fails(&["checkpoint", "busy", "--dir", &dir.to_string_lossy()])?;
    ensure!(err.contains(&dir.to_string_lossy().into_owned()) && err.contains("not empty"), "{err}");
    let entries: Vec<_> = std::fs::read_dir(&dir)?.flatten().map(|e| e.file_name()).collect();
    ensure!(entries == ["precious.txt"], "the directory now holds {entries:?}");
    ensure!(std::fs::read(dir.join("precious.txt"))? == b"keep me");
    ensure_untouched(&lab, "busy", &before)?;
    // A file where the directory should be.
    let file = img.path.join("a-file");
    std::fs::write(&file, b"x")?;
    let err = lab.fails(&["checkpoint", "busy", "--dir", &file.to_string_lossy()])?;
    ensure!(err.contains(&file.to_string_lossy().into_owned()), "{err}");
    ensure!(std::fs::read(&file)? == b"x");
    ensure_untouched(&lab, "busy", &before)?;
    lab.down_expecting(&["busy"])?;
    Ok(())
}

/// An image from which a whole batch of pages was dropped, every digest made to match
/// again: the restore counts the pages it wrote against the manifest's count and refuses
/// it, instead of a process whose memory has holes.
#[test]
fn an_image_missing_a_batch_of_pages_is_refused_at_restore() -> anyhow::Result<()> {
    let img = TempDir::new("pages-dropped")?;
    let lab = TestLab::up(2)?;
    start(&lab, "host-a", "src", &ticker(&[]))?;
    let good = img.path.join("good");
    lab.ok(&["checkpoint", "src", "--dir", &good.to_string_lossy()])?;
    let dir = img.path.join("case");
    copy_image(&good, &dir)?;
    let bytes = std::fs::read(dir.join("pages.img"))?;
    let mut reader = RecordReader::new(&bytes[..]);
    let mut writer = RecordWriter::new(Vec::new());
    let mut kept = 0;
    let mut dropped = false;
    while let Some(frame) = reader.next()? {
        let Frame::Pages(batch) = frame else { anyhow::bail!("pages.img holds a process record") };
        if !dropped && kept == 1 {
            dropped = true;
            continue;
        }
        writer.pages(&batch)?;
        kept += 1;
    }
    ensure!(dropped, "the image has fewer than two batches of pages");
    replace_file(&dir, "pages.img", &writer.finish()?.0)?;
    let problems =
        refused(&lab, "a batch dropped", &dir, &["pages.img holds", "the manifest counts"], &[], false);
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    lab.down_expecting(&[])?;
    Ok(())
}

/// A working directory removed between the checkpoint and the restore: the restore says
/// which, before it builds anything, and leaves nothing behind.
#[test]
fn a_working_directory_gone_since_the_checkpoint_is_named_at_restore() -> anyhow::Result<()> {
    let img = TempDir::new("cwd-gone")?;
    let work = TempDir::new("cwd-gone-dir")?;
    let lab = TestLab::up(2)?;
    let cwd = work.join("here");
    std::fs::create_dir(&cwd)?;
    let script =
        format!("import os, time; os.chdir({cwd:?}); print('ready', flush=True); time.sleep(100000)");
    lab.start("host-a", "src", &["python3", "-c", &script])?;
    lab.wait_log("src", "ready")?;
    let dir = img.path.join("image");
    lab.ok(&["checkpoint", "src", "--dir", &dir.to_string_lossy()])?;
    std::fs::remove_dir(&cwd)?;
    let want = format!("the working directory {cwd} of PID 1 (python3) no longer exists");
    let problems = refused(&lab, "a cwd gone", &dir, &[want.as_str()], &[], false);
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    lab.down_expecting(&[])?;
    Ok(())
}

/// Applies `change` to every process record of the image in `dir` and makes every digest
/// match again; returns what `change` counted.
fn forge(dir: &Path, mut change: impl FnMut(&mut ProcessRecord) -> usize) -> anyhow::Result<usize> {
    let bytes = std::fs::read(dir.join("process.img"))?;
    let mut reader = RecordReader::new(&bytes[..]);
    let mut writer = RecordWriter::new(Vec::new());
    let mut n = 0;
    while let Some(frame) = reader.next()? {
        let Frame::Process(mut rec) = frame else { anyhow::bail!("process.img holds pages") };
        n += change(&mut rec);
        writer.process(&rec)?;
    }
    replace_file(dir, "process.img", &writer.finish()?.0)?;
    Ok(n)
}

/// Lab containers share the host's filesystem, so an image's paths are host paths: a
/// forged image cannot make a restore create a FIFO in `/etc` or re-create a deleted file
/// in `/root` (refused, naming it, nothing created); and a restore that fails late (a
/// batch of pages missing, found once every process is built) removes the FIFO and the
/// socket node it made.
#[test]
fn a_restore_creates_files_only_where_it_may_and_removes_them_when_it_fails() -> anyhow::Result<()> {
    let img = TempDir::new("hostile")?;
    let work = TempDir::new("hostile-work")?;
    let lab = TestLab::up(2)?;
    start(&lab, "host-a", "src", &ticker(&["made", &work.path.to_string_lossy()]))?;
    let good = img.path.join("good");
    lab.ok(&["checkpoint", "src", "--dir", &good.to_string_lossy()])?;
    let inspect = lab.ok(&["inspect", &good.to_string_lossy()])?;
    ensure!(inspect.contains("lab containers share the host's filesystem"), "{inspect}");
    let tag = std::process::id();
    let (fifo, file) = (format!("/etc/migrate-hostile-{tag}"), format!("/root/migrate-hostile-{tag}"));
    let mut problems = Vec::new();

    let dir = img.path.join("fifo");
    copy_image(&good, &dir)?;
    let forged = forge(&dir, |rec| {
        rec.pipes.iter_mut().filter_map(|p| p.fifo.as_mut()).map(|f| f.path = fifo.clone()).count()
    })?;
    ensure!(forged == 1, "the image holds {forged} FIFOs, not 1");
    let want = format!("the FIFO {fifo} cannot be created: it would be in /etc");
    problems.extend(refused(
        &lab,
        "a FIFO in /etc",
        &dir,
        &[&want, "share the host's filesystem"],
        &[],
        false,
    ));

    let dir = img.path.join("deleted");
    copy_image(&good, &dir)?;
    let forged = forge(&dir, |rec| {
        let mut n = 0;
        for o in &mut rec.objects {
            if let ObjectKind::Deleted { path, .. } = &mut o.kind {
                *path = file.clone();
                n += 1;
            }
        }
        n
    })?;
    ensure!(forged == 1, "the image holds {forged} deleted files, not 1");
    let want = format!("the deleted file {file} (object 1) cannot be created: it would be in /root");
    problems.extend(refused(&lab, "a deleted file in /root", &dir, &[&want], &[], false));
    for p in [&fifo, &file] {
        if Path::new(p).exists() {
            problems.push(format!("a refused restore created {p}"));
        }
    }

    // A FIFO that exists, but outside the rule: neither filled nor its times set (a fill
    // moves its mtime; the restore would set the image's).
    let outside = std::path::PathBuf::from(format!("/var/lib/migrate-test-fifo-{tag}"));
    let _ = std::fs::remove_dir_all(&outside);
    std::fs::create_dir_all(&outside)?;
    let host_fifo = outside.join("fifo");
    nix::unistd::mkfifo(&host_fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let old = nix::sys::time::TimeSpec::new(1_000_000, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &host_fifo,
        &old,
        &old,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    let dir = img.path.join("host-fifo");
    copy_image(&good, &dir)?;
    let shown = host_fifo.to_string_lossy().into_owned();
    forge(&dir, |rec| {
        rec.pipes.iter_mut().filter_map(|p| p.fifo.as_mut()).map(|f| f.path = shown.clone()).count()
    })?;
    let want = format!("the FIFO {shown} cannot be created: it would be in {}", outside.display());
    problems.extend(refused(&lab, "an existing FIFO in /var/lib", &dir, &[&want], &[], false));
    let md = std::fs::metadata(&host_fifo);
    let _ = std::fs::remove_dir_all(&outside);
    if !md.is_ok_and(|m| m.mtime() == 1_000_000 && m.atime() == 1_000_000) {
        problems.push(format!("a refused restore changed the times of {shown}"));
    }

    // The FIFO is gone, so the restore makes it; the socket's stale node is made anew.
    let dir = img.path.join("late");
    copy_image(&good, &dir)?;
    std::fs::remove_file(work.path.join("fifo"))?;
    let bytes = std::fs::read(dir.join("pages.img"))?;
    let mut reader = RecordReader::new(&bytes[..]);
    let mut writer = RecordWriter::new(Vec::new());
    let mut kept = 0;
    while let Some(frame) = reader.next()? {
        let Frame::Pages(batch) = frame else { anyhow::bail!("pages.img holds a process record") };
        if kept != 1 {
            writer.pages(&batch)?;
        }
        kept += 1;
    }
    ensure!(kept > 1, "the image has fewer than two batches of pages");
    replace_file(&dir, "pages.img", &writer.finish()?.0)?;
    problems.extend(refused(&lab, "a late failure", &dir, &["the manifest counts"], &[], false));
    let left: Vec<_> = std::fs::read_dir(&work.path)?.flatten().map(|e| e.file_name()).collect();
    if !left.is_empty() {
        problems.push(format!("the failed restore left {left:?} in {}", work.path.display()));
    }

    // Another program listens at the socket's path now: its node is not stale, and stays.
    let sock = work.path.join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock)?;
    let want =
        format!("cannot be bound to {} again: a socket of another program is bound there", sock.display());
    problems.extend(refused(&lab, "a live socket at the path", &good, &[&want], &[], false));
    if !std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
        problems.push(format!("a refused restore removed {}, where another program listens", sock.display()));
    }
    drop(listener);
    let _ = std::fs::remove_file(&sock);
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    lab.down_expecting(&[])?;
    Ok(())
}

/// A file deleted while open, a socket bound and a FIFO in a host directory outside `/tmp`
/// and `/var/tmp`: a restore would have to make or fill them there, so the checkpoint
/// refuses each, naming them and where they are, and the container runs on.
#[test]
fn checkpoint_refuses_files_a_restore_would_make_outside_the_allowed_places() -> anyhow::Result<()> {
    let img = TempDir::new("outside")?;
    // Removed at the end (and by a rerun): a directory of the host's own, not under /tmp.
    let work = std::path::PathBuf::from(format!("/var/lib/migrate-test-outside-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let lab = TestLab::up(1)?;
    let shown = work.to_string_lossy().into_owned();
    let run = || -> anyhow::Result<Vec<String>> {
        start(&lab, "host-a", "out1", &ticker(&["made", &shown]))?;
        start(&lab, "host-a", "out2", &ticker(&["bound", &shown]))?;
        start(&lab, "host-a", "out3", &ticker(&["fifo", &format!("{shown}/q")]))?;
        let rule = "lab containers share the host's filesystem".to_string();
        let deleted = [
            "PID 1 (python3, host pid".to_string(),
            format!("holds the deleted file {shown}/gone (through /proc/"),
            format!("; it is in {shown}, and"),
            rule.clone(),
        ];
        let bound =
            [format!("bound to {shown}/bound, whose node a restore makes again; it is in {shown}"), rule];
        let mut problems = support::refuses_checkpoint(&lab, &img, "out1", &deleted, &[], ensure_untouched);
        problems.extend(support::refuses_checkpoint(&lab, &img, "out2", &bound, &[], ensure_untouched));
        let fifo = [
            "PID 1 (python3, host pid".to_string(),
            format!(
                "is the FIFO {shown}/q, which a restore opens and fills again or makes anew; it is in {shown}"
            ),
        ];
        problems.extend(support::refuses_checkpoint(&lab, &img, "out3", &fifo, &[], ensure_untouched));
        Ok(problems)
    };
    let problems = run();
    let _ = std::fs::remove_dir_all(&work);
    let problems = problems?;
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    lab.down_expecting(&["out1", "out2", "out3"])?;
    Ok(())
}
