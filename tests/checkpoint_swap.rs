//! Swapped-out pages are memory too: a checkpoint must store them and a restore bring
//! them back. The machine has no swap, so the test adds a small swap file, pages a
//! buffer out with MADV_PAGEOUT and checks the kernel really swapped it before the dump.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use support::{TestLab, wait_until};

/// A swap file, switched off and removed on drop.
struct Swap(PathBuf);

impl Swap {
    fn on(mib: usize) -> anyhow::Result<Swap> {
        let path = PathBuf::from(format!("/var/tmp/migrate-test-swap-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; mib << 20])?;
        let swap = Swap(path);
        std::fs::set_permissions(&swap.0, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        for (prog, args) in [("mkswap", vec![swap.0.as_os_str()]), ("swapon", vec![swap.0.as_os_str()])] {
            let out = Command::new(prog).args(&args).output().with_context(|| format!("running {prog}"))?;
            if !out.status.success() {
                bail!("{prog} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(swap)
    }
}

impl Drop for Swap {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg(&self.0).status();
        let _ = std::fs::remove_file(&self.0);
    }
}

const SCRIPT: &str = r#"
import ctypes, hashlib, mmap, os, time
n = 16 << 20
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(0, n, 4096):
    m[i:i + 16] = (b'%015d.' % i)
h = hashlib.sha256(m).hexdigest()
buf = (ctypes.c_char * n).from_buffer(m)
libc = ctypes.CDLL(None, use_errno=True)
# MADV_PAGEOUT = 21 (Linux 5.4): reclaim these pages now, to swap.
rc = libc.madvise(ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(n), 21)
swap = [l for l in open('/proc/self/status') if l.startswith('VmSwap')][0].split()[1]
print(f'paged out {rc} swap_kb {swap} sum {h}', flush=True)
check = '/tmp/migrate-swap-check-' + os.environ['HOSTNAME']
while True:
    if os.path.exists(check):
        os.remove(check)
        print(f'check {hashlib.sha256(m).hexdigest()}', flush=True)
    time.sleep(0.05)
"#;

#[test]
fn swapped_out_pages_survive_checkpoint_and_restore() -> anyhow::Result<()> {
    let _swap = Swap::on(64)?;
    let lab = TestLab::up(2)?;
    let name = format!("swap{}", std::process::id());
    lab.ok(&["run", "--host", "host-a", "--name", &name, "--", "python3", "-u", "-c", SCRIPT])?;
    let log = lab.wait_log(&name, "paged out")?;
    let field = |key: &str| -> Option<String> {
        let rest = log.split(key).nth(1)?;
        rest.split_whitespace().next().map(str::to_string)
    };
    let sum = field("sum ").context("sum")?;
    let swapped: u64 = field("swap_kb ").and_then(|v| v.parse().ok()).context("swap_kb")?;
    ensure!(swapped > 1024, "the kernel did not swap the buffer out (VmSwap {swapped} kB): {log}");
    let dir = tempdir(&name)?;
    lab.ok(&["checkpoint", &name, "--dir", dir.0.to_str().context("dir")?])?;
    lab.ok(&["restore", "--dir", dir.0.to_str().context("dir")?, "--host", "host-b"])?;
    std::fs::write(format!("/tmp/migrate-swap-check-{name}"), b"")?;
    let mut log = String::new();
    ensure!(
        wait_until(Duration::from_secs(20), || {
            log = lab.logs(&name).unwrap_or_default();
            log.contains("check ")
        }),
        "no check after restore: {log}"
    );
    ensure!(
        log.contains(&format!("check {sum}")),
        "memory differs after restore: expected {sum}, log: {log}"
    );
    Ok(())
}

/// A directory removed on drop.
struct TempDir(PathBuf);

fn tempdir(tag: &str) -> anyhow::Result<TempDir> {
    let p = PathBuf::from(format!("/var/tmp/migrate-test-{tag}"));
    let _ = std::fs::remove_dir_all(&p);
    Ok(TempDir(p))
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
