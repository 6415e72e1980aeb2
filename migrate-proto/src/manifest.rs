//! `manifest.img`: what an image is, where it was taken, and a digest of every other file.
//!
//! ```text
//! offset  size  field
//!      0     8  magic     b"MIGRATE\0"
//!      8     4  version   u32 LE: the image format version (FORMAT_VERSION)
//!     12     4  len       u32 LE: payload bytes
//!     16   len  payload   postcard Manifest
//! 16+len     4  crc32     u32 LE, crc32 (IEEE) of bytes 0 .. 16+len
//! ```
//!
//! As Firecracker's snapshot header, decoding goes size cap → length → checksum → magic →
//! version → payload → semantic check, so nothing is interpreted before it is known to be
//! intact. The magic and the version field at offsets 0 and 8 are frozen for every future
//! version: when the rest does not check out but the header names another version, the
//! error is about the version ("upgrade migrate"), since a later format may frame its
//! manifest differently.
//!
//! The manifest's crc32 covers bytes that hold no other crc, so it is an ordinary CRC check.
//! The record files are different: each frame ends with its own crc, which makes a CRC of a
//! whole record file the same for all files with the same frame lengths. So [`FileSum`]
//! carries a 64-bit XXH3 digest of each file instead (see [`crate::frame`]).

use std::collections::HashSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::FORMAT_VERSION;
use crate::error::{ManifestProblem, ProtoError};
use crate::frame::FileDigest;
use crate::pages::append_postcard;

/// The first 8 bytes of `manifest.img`.
pub const MAGIC: [u8; 8] = *b"MIGRATE\0";

/// The largest manifest file accepted: 16 MiB (a real one is a few KiB).
pub const MAX_MANIFEST: u64 = 16 << 20;

/// The largest size a file of the image may claim: 256 TiB.
pub const MAX_FILE_SIZE: u64 = 1 << 48;

const HEAD_LEN: usize = 16;
const CRC_LEN: usize = 4;

/// The image's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Equal to the file header's version (checked).
    pub format_version: u32,
    /// The migrate that wrote the image (`CARGO_PKG_VERSION`), informational.
    pub tool_version: String,
    /// When the image was taken, ms since the Unix epoch.
    pub created_ms: u64,
    pub kernel: KernelId,
    pub cpu: CpuId,
    /// The clocks at the freeze.
    pub clocks: Clocks,
    /// The last pid the container's pid namespace handed out (`ns_last_pid`): a restore
    /// sets it again, so new processes do not get the pids of processes just gone.
    pub last_pid: i32,
    pub container: ContainerMeta,
    /// Size and XXH3 digest of every other file of the image.
    pub files: Vec<FileSum>,
    pub stats: Stats,
    /// The image this one is incremental on (room for incremental images; `None` so far).
    pub parent: Option<String>,
    /// An authentication tag over the image, keyed by the cluster CA (room for it: `None`
    /// until cluster keys exist, and restore says so).
    pub auth_tag: Option<Vec<u8>>,
}

/// The kernel the image was taken on (`uname`), and a digest of its vDSO: the restored
/// `[vdso]` is the destination's, so it must be the same build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelId {
    pub release: String,
    pub version: String,
    pub machine: String,
    pub vdso_digest: String,
}

/// The CPU features the tasks may have used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuId {
    pub vendor: String,
    /// `/proc/cpuinfo` flags.
    pub flags: Vec<String>,
    /// XCR0: the XSAVE features enabled, which decide the xstate layout.
    pub xfeatures: u64,
}

/// Clocks at the freeze, in ns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clocks {
    pub monotonic_ns: u64,
    pub boottime_ns: u64,
    pub realtime_ns: u64,
}

/// The container the image holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMeta {
    pub name: String,
    pub hostname: String,
    /// Its address, or empty for none.
    pub ip: String,
    pub prefix: u8,
    /// `aa:bb:cc:dd:ee:ff`, or empty for none.
    pub mac: String,
    pub cmd: Vec<String>,
    pub memory_max: Option<u64>,
    pub pids_max: Option<u64>,
    /// When the container was first created (by `run`), ms since the Unix epoch: a
    /// restored container keeps it. Not after the manifest's `created_ms`.
    pub created_ms: u64,
    /// The host it was checkpointed on, e.g. `host-a` (a plain name), or empty.
    pub host: String,
}

/// The size and digest of one file of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// A plain file name in the image directory.
    pub name: String,
    pub size: u64,
    /// The 64-bit XXH3 digest (`xxh3_64`, seed 0) of the whole file.
    pub xxh3: u64,
}

impl FileSum {
    /// Checks a file's digest against this entry.
    pub fn check(&self, digest: FileDigest) -> Result<(), ProtoError> {
        if digest.size == self.size && digest.xxh3 == self.xxh3 {
            Ok(())
        } else {
            Err(ProtoError::FileMismatch {
                name: self.name.clone(),
                size: digest.size,
                xxh3: digest.xxh3,
                expected_size: self.size,
                expected_xxh3: self.xxh3,
            })
        }
    }
}

/// What the image holds, for `inspect` and progress reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub processes: u32,
    pub threads: u32,
    pub vmas: u32,
    pub pages_stored: u64,
    pub pages_zero: u64,
    pub pages_total: u64,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
}

/// Encodes `manifest.img`. Refuses a manifest its decoder would refuse.
pub fn encode_manifest(manifest: &Manifest) -> Result<Vec<u8>, ProtoError> {
    if manifest.format_version != FORMAT_VERSION {
        return Err(ProtoError::manifest(ManifestProblem::VersionMismatch {
            header: FORMAT_VERSION,
            payload: manifest.format_version,
        }));
    }
    check_manifest(manifest).map_err(ProtoError::manifest)?;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    append_postcard(manifest, &mut out)?;
    let len = out.len() - HEAD_LEN;
    let total = (out.len() + CRC_LEN) as u64;
    let len32 = match u32::try_from(len) {
        Ok(l) if total <= MAX_MANIFEST => l,
        _ => return Err(ProtoError::TooLarge { what: "manifest", len: total, cap: MAX_MANIFEST }),
    };
    if let Some(field) = out.get_mut(12..HEAD_LEN) {
        field.copy_from_slice(&len32.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes and checks `manifest.img`.
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest, ProtoError> {
    let total = bytes.len() as u64;
    // 1. Size cap.
    if total > MAX_MANIFEST {
        return Err(ProtoError::manifest(ManifestProblem::TooLarge { len: total, cap: MAX_MANIFEST }));
    }
    // 2. Length.
    let min = (HEAD_LEN + CRC_LEN) as u64;
    let (Some((head, rest)), true) = (bytes.split_first_chunk::<HEAD_LEN>(), total >= min) else {
        return Err(version_or(bytes, ManifestProblem::TooShort { len: total, min }));
    };
    let [m0, m1, m2, m3, m4, m5, m6, m7, v0, v1, v2, v3, l0, l1, l2, l3] = *head;
    let magic = [m0, m1, m2, m3, m4, m5, m6, m7];
    let version = u32::from_le_bytes([v0, v1, v2, v3]);
    let stored_len = u64::from(u32::from_le_bytes([l0, l1, l2, l3]));
    let actual_len = total - min;
    if stored_len != actual_len {
        return Err(version_or(bytes, ManifestProblem::Length { stored: stored_len, actual: actual_len }));
    }
    // 3. Checksum.
    let Some((payload, crc)) = rest.split_last_chunk::<CRC_LEN>() else {
        return Err(version_or(bytes, ManifestProblem::TooShort { len: total, min }));
    };
    let stored = u32::from_le_bytes(*crc);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(head);
    hasher.update(payload);
    let computed = hasher.finalize();
    if stored != computed {
        return Err(version_or(bytes, ManifestProblem::Checksum { stored, computed }));
    }
    // 4. Magic.
    if magic != MAGIC {
        return Err(ProtoError::manifest(ManifestProblem::Magic { found: magic }));
    }
    // 5. Version.
    check_version(version)?;
    // 6. Payload.
    let (manifest, extra) = postcard::take_from_bytes::<Manifest>(payload)
        .map_err(|e| ProtoError::manifest(ManifestProblem::Payload(e)))?;
    if !extra.is_empty() {
        return Err(ProtoError::manifest(ManifestProblem::TrailingPayload { extra: extra.len() as u64 }));
    }
    // 7. Semantic check.
    if manifest.format_version != version {
        return Err(ProtoError::manifest(ManifestProblem::VersionMismatch {
            header: version,
            payload: manifest.format_version,
        }));
    }
    check_manifest(&manifest).map_err(ProtoError::manifest)?;
    Ok(manifest)
}

fn check_version(version: u32) -> Result<(), ProtoError> {
    use std::cmp::Ordering;
    match version.cmp(&FORMAT_VERSION) {
        Ordering::Greater => Err(ProtoError::NewerFormat { found: version, ours: FORMAT_VERSION }),
        Ordering::Less => Err(ProtoError::OlderFormat { found: version, ours: FORMAT_VERSION }),
        Ordering::Equal => Ok(()),
    }
}

/// The error for a manifest whose framing does not check out: the version error if the
/// frozen header names another version (its framing may differ from ours), else `problem`.
fn version_or(bytes: &[u8], problem: ManifestProblem) -> ProtoError {
    if let Some((magic, rest)) = bytes.split_first_chunk::<8>()
        && *magic == MAGIC
        && let Some(version) = rest.first_chunk::<4>()
        && let Err(e) = check_version(u32::from_le_bytes(*version))
    {
        return e;
    }
    ProtoError::manifest(problem)
}

/// The semantic checks of a decoded manifest.
fn check_manifest(m: &Manifest) -> Result<(), ManifestProblem> {
    text("tool_version", &m.tool_version, 256)?;
    text("kernel.release", &m.kernel.release, 64)?;
    text("kernel.version", &m.kernel.version, 64)?;
    text("kernel.machine", &m.kernel.machine, 64)?;
    text("kernel.vdso_digest", &m.kernel.vdso_digest, 256)?;
    text("cpu.vendor", &m.cpu.vendor, 64)?;
    if m.cpu.flags.len() > 4096 {
        return Err(field("cpu.flags", format!("has {} entries, more than 4096", m.cpu.flags.len())));
    }
    for flag in &m.cpu.flags {
        text("cpu.flags entry", flag, 64)?;
    }
    if !(0..=crate::validate::PID_MAX).contains(&m.last_pid) {
        return Err(field("last_pid", format!("{} is not a pid", m.last_pid)));
    }
    check_container(&m.container)?;
    if m.container.created_ms > m.created_ms {
        return Err(field("container.created_ms", "is after the checkpoint".into()));
    }
    check_files(&m.files)?;
    let s = &m.stats;
    match s.pages_stored.checked_add(s.pages_zero) {
        Some(n) if n <= s.pages_total => {}
        _ => {
            return Err(field(
                "stats",
                format!(
                    "counts {} stored and {} zero pages of only {} in all",
                    s.pages_stored, s.pages_zero, s.pages_total
                ),
            ));
        }
    }
    // Zombies have no threads, but PID 1 always has one.
    if s.processes > 0 && s.threads == 0 {
        return Err(field("stats", format!("counts no threads for {} processes", s.processes)));
    }
    if let Some(parent) = &m.parent {
        if parent.is_empty() {
            return Err(field("parent", "is empty".into()));
        }
        text("parent", parent, 4096)?;
    }
    if let Some(tag) = &m.auth_tag
        && tag.len() > 4096
    {
        return Err(field("auth_tag", format!("is {} bytes, more than 4096", tag.len())));
    }
    Ok(())
}

fn check_container(c: &ContainerMeta) -> Result<(), ManifestProblem> {
    if c.name.is_empty() || c.name.contains('/') {
        return Err(field("container.name", format!("{:?} is not a plain name", c.name)));
    }
    text("container.name", &c.name, 255)?;
    text("container.hostname", &c.hostname, 64)?;
    if c.host.contains('/') {
        return Err(field("container.host", format!("{:?} is not a plain name", truncated(&c.host))));
    }
    text("container.host", &c.host, 255)?;
    if !c.ip.is_empty() {
        let max_prefix = match c.ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => 32,
            Ok(IpAddr::V6(_)) => 128,
            Err(_) => {
                return Err(field("container.ip", format!("{:?} is not an IP address", truncated(&c.ip))));
            }
        };
        if c.prefix > max_prefix {
            return Err(field("container.prefix", format!("/{} is too long for {}", c.prefix, c.ip)));
        }
    }
    if !c.mac.is_empty() && !is_mac(&c.mac) {
        return Err(field("container.mac", format!("{:?} is not a MAC address", truncated(&c.mac))));
    }
    for arg in &c.cmd {
        text("container.cmd argument", arg, 1 << 20)?;
    }
    if c.memory_max == Some(0) {
        return Err(field("container.memory_max", "is 0".into()));
    }
    if c.pids_max == Some(0) {
        return Err(field("container.pids_max", "is 0".into()));
    }
    Ok(())
}

fn check_files(files: &[FileSum]) -> Result<(), ManifestProblem> {
    let mut seen = HashSet::with_capacity(files.len());
    for f in files {
        let problem = if f.name.is_empty() {
            Some("is empty")
        } else if f.name.len() > 255 {
            Some("is longer than 255 bytes")
        } else if f.name.contains('/') {
            Some("contains `/`: file names must be plain names")
        } else if f.name == "." || f.name == ".." {
            Some("is not a file name")
        } else if f.name.contains('\0') {
            Some("contains a NUL byte")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(ManifestProblem::FileName { name: truncated(&f.name).to_owned(), problem });
        }
        if f.size > MAX_FILE_SIZE {
            return Err(ManifestProblem::FileTooLarge {
                name: f.name.clone(),
                size: f.size,
                cap: MAX_FILE_SIZE,
            });
        }
        if !seen.insert(f.name.as_str()) {
            return Err(ManifestProblem::DuplicateFile { name: f.name.clone() });
        }
    }
    Ok(())
}

fn field(field: &'static str, problem: String) -> ManifestProblem {
    ManifestProblem::Field { field, problem }
}

/// A string field: at most `max` bytes, no NUL.
fn text(name: &'static str, value: &str, max: usize) -> Result<(), ManifestProblem> {
    if value.len() > max {
        return Err(field(name, format!("is {} bytes, more than {max}", value.len())));
    }
    if value.contains('\0') {
        return Err(field(name, "contains a NUL byte".into()));
    }
    Ok(())
}

/// At most the first 64 bytes of `s`, cut at a character boundary, for messages.
pub(crate) fn truncated(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}
