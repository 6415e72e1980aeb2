//! An image directory: `manifest.img` (which covers the other files by size and digest),
//! `process.img` (metadata records) and `pages.img` (page batches). Format:
//! `docs/image-format.md`. Reading checks every checksum and validates every record
//! before anything live is built; page batches are checked as they stream.

use std::fs::{self, File};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use migrate_proto::frame::{Frame, RecordReader, RecordWriter};
use migrate_proto::manifest::{FileSum, MAX_MANIFEST, Manifest, decode_manifest, encode_manifest};
use migrate_proto::records::ProcessRecord;

use crate::error::{EngineError, io_err};
use crate::pipeline::Spool;

pub const MANIFEST: &str = "manifest.img";
pub const PROCESS: &str = "process.img";
pub const PAGES: &str = "pages.img";
/// The container's stdout and stderr up to the checkpoint (its last [`LOG_CAP`] bytes),
/// so that its log goes on where it is restored.
pub const STDIO_LOG: &str = "stdio.log";
/// How much of a container's log an image carries.
pub const LOG_CAP: u64 = 16 << 20;

/// Copies the last [`LOG_CAP`] bytes of `log` (from a line start, if cut) into the image
/// directory as [`STDIO_LOG`]; returns its entry for the manifest.
pub fn carry_log(dir: &Path, log: &Path) -> Result<FileSum, EngineError> {
    use std::io::{BufRead, Read, Seek};
    let mut src = File::open(log).map_err(io_err("open", log))?;
    let len = src.metadata().map_err(io_err("stat", log))?.len();
    let mut reader = BufReader::new(&mut src);
    if len > LOG_CAP {
        reader.seek(std::io::SeekFrom::Start(len - LOG_CAP)).map_err(io_err("seek", log))?;
        // The rest of a cut line.
        reader.read_until(b'\n', &mut Vec::new()).map_err(io_err("read", log))?;
    }
    let path = dir.join(STDIO_LOG);
    let mut out = std::io::BufWriter::new(File::create(&path).map_err(io_err("create", &path))?);
    std::io::copy(&mut reader.take(LOG_CAP), &mut out).map_err(io_err("copy into", &path))?;
    out.flush().map_err(io_err("write", &path))?;
    let digest = migrate_proto::digest_reader(File::open(&path).map_err(io_err("open", &path))?)
        .map_err(io_err("read", &path))?;
    Ok(FileSum { name: STDIO_LOG.into(), size: digest.size, xxh3: digest.xxh3 })
}

/// The image's copy of the container's log, if it carries one (checked with the image).
pub fn log_of(img: &Image) -> Option<PathBuf> {
    img.manifest.files.iter().any(|f| f.name == STDIO_LOG).then(|| img.dir.join(STDIO_LOG))
}

fn image_err(file: &str) -> impl FnOnce(migrate_proto::ProtoError) -> EngineError + '_ {
    move |source| EngineError::Image { file: file.to_string(), source }
}

/// Prepares `dir` for a new image: it may exist only if empty.
pub fn prepare_dir(dir: &Path) -> Result<(), EngineError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(EngineError::Unsupported(format!(
                    "{} is not empty: give a new or empty directory",
                    dir.display()
                )));
            }
            Ok(())
        }
        // Only the last component is made: a typo must not create directories at `/`.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir(dir).map_err(|e| match (e.kind(), dir.parent()) {
                (std::io::ErrorKind::NotFound, Some(parent)) => EngineError::Unsupported(format!(
                    "{} does not exist: the image directory is made, not its parents",
                    parent.display()
                )),
                _ => EngineError::Io { op: "create", path: dir.to_path_buf(), source: e },
            })
        }
        Err(_) if dir.exists() && !dir.is_dir() => Err(EngineError::Unsupported(format!(
            "{} is a file: give a new or empty directory",
            dir.display()
        ))),
        Err(e) => Err(EngineError::Io { op: "open", path: dir.to_path_buf(), source: e }),
    }
}

/// A record file being written; the bytes reach the file from a thread of their own
/// ([`Spool`]), so the caller encodes the next frame while the last one is written.
pub struct Writer {
    name: &'static str,
    path: PathBuf,
    inner: RecordWriter<Spool>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("path", &self.path).finish()
    }
}

impl Writer {
    pub fn create(dir: &Path, name: &'static str) -> Result<Writer, EngineError> {
        let path = dir.join(name);
        let file = File::create(&path).map_err(io_err("create", &path))?;
        Ok(Writer { name, path, inner: RecordWriter::new(Spool::new(file)) })
    }

    pub fn inner(&mut self) -> &mut RecordWriter<Spool> {
        &mut self.inner
    }

    pub fn err(&self) -> impl FnOnce(migrate_proto::ProtoError) -> EngineError + '_ {
        image_err(self.name)
    }

    /// Ends the file (END frame), syncs it, and returns its entry for the manifest.
    pub fn finish(self) -> Result<FileSum, EngineError> {
        let (out, digest) = self.inner.finish().map_err(image_err(self.name))?;
        let file = out.finish().map_err(io_err("write", &self.path))?;
        file.sync_all().map_err(io_err("sync", &self.path))?;
        Ok(digest.sum(self.name))
    }
}

/// Writes the manifest last: an image without one is incomplete, never half-valid.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<u64, EngineError> {
    let path = dir.join(MANIFEST);
    let bytes = encode_manifest(manifest).map_err(image_err(MANIFEST))?;
    let mut f = File::create(&path).map_err(io_err("create", &path))?;
    f.write_all(&bytes).map_err(io_err("write", &path))?;
    f.sync_all().map_err(io_err("sync", &path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync", dir))?;
    Ok(bytes.len() as u64)
}

/// A checked image: its manifest and process records; pages are read later.
#[derive(Debug)]
pub struct Image {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub processes: Vec<ProcessRecord>,
}

/// Opens an image: manifest first (magic, version, checksum), then every file against
/// the manifest's sizes and digests, then the process records, each validated (by the
/// reader, as it decodes each PROCESS frame).
pub fn open(dir: &Path) -> Result<Image, EngineError> {
    open_checked(dir, true)
}

/// [`open`] for a restore: `pages.img` is only checked for its size here; its digest is
/// checked as the restore streams it, before anything resumes (one read instead of two).
pub fn open_for_restore(dir: &Path) -> Result<Image, EngineError> {
    open_checked(dir, false)
}

fn open_checked(dir: &Path, whole_pages: bool) -> Result<Image, EngineError> {
    let mpath = dir.join(MANIFEST);
    let md = fs::metadata(&mpath).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            // The manifest is written last: other files without it are a checkpoint that
            // did not finish (its agent died before it could remove them).
            if dir.join(PAGES).exists() || dir.join(PROCESS).exists() {
                EngineError::NoImage(format!(
                    "{} holds an incomplete image (no {MANIFEST}): the checkpoint that wrote it did not finish",
                    dir.display()
                ))
            } else if dir.is_dir() {
                EngineError::NoImage(format!("{} holds no image (no {MANIFEST})", dir.display()))
            } else {
                EngineError::NoImage(format!("{} does not exist", dir.display()))
            }
        }
        _ => EngineError::Io { op: "stat", path: mpath.clone(), source: e },
    })?;
    if md.len() > MAX_MANIFEST {
        return Err(EngineError::Incompatible(format!(
            "{MANIFEST} is {} bytes: not an image manifest",
            md.len()
        )));
    }
    let bytes = fs::read(&mpath).map_err(io_err("read", &mpath))?;
    let manifest = decode_manifest(&bytes).map_err(image_err(MANIFEST))?;
    for name in [PROCESS, PAGES] {
        if !manifest.files.iter().any(|f| f.name == name) {
            return Err(EngineError::Incompatible(format!("the manifest does not list {name}")));
        }
    }
    for sum in &manifest.files {
        let path = dir.join(&sum.name);
        if !path.exists() {
            return Err(EngineError::NoImage(format!(
                "{} lacks {}, which its manifest lists: the image is incomplete",
                dir.display(),
                sum.name
            )));
        }
        if !whole_pages && sum.name == PAGES {
            let size = fs::metadata(&path).map_err(io_err("stat", &path))?.len();
            if size != sum.size {
                return Err(first_bad_frame(dir, &sum.name).unwrap_or_else(|| {
                    EngineError::Incompatible(format!(
                        "{PAGES} is {size} bytes, the manifest says {}",
                        sum.size
                    ))
                }));
            }
            continue;
        }
        let file = File::open(&path).map_err(io_err("open", &path))?;
        if let Err(mismatch) = migrate_proto::verify_file(sum, BufReader::new(file)) {
            // In a record file, say which frame is damaged, if one is; else the file as a
            // whole is wrong (frames reordered, swapped or missing; a plain file changed).
            let frame =
                [PROCESS, PAGES].contains(&sum.name.as_str()).then(|| first_bad_frame(dir, &sum.name));
            return Err(frame
                .flatten()
                .unwrap_or(EngineError::Image { file: sum.name.clone(), source: mismatch }));
        }
    }
    let mut reader = records(dir, PROCESS)?;
    let mut processes = Vec::new();
    while let Some(frame) = reader.next().map_err(image_err(PROCESS))? {
        match frame {
            Frame::Process(p) => processes.push(*p),
            Frame::Pages(_) => return Err(EngineError::Incompatible(format!("{PROCESS} holds page data"))),
        }
    }
    migrate_proto::validate_tree(&processes).map_err(image_err(PROCESS))?;
    Ok(Image { dir: dir.to_path_buf(), manifest, processes })
}

/// Reads a record file frame by frame and returns the first frame's error, if any.
fn first_bad_frame(dir: &Path, name: &str) -> Option<EngineError> {
    let mut reader = records(dir, name).ok()?;
    loop {
        match reader.next() {
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(source) => return Some(EngineError::Image { file: name.to_string(), source }),
        }
    }
}

/// A reader over one record file of the image.
pub fn records(dir: &Path, name: &str) -> Result<RecordReader<BufReader<File>>, EngineError> {
    let path = dir.join(name);
    let file = File::open(&path).map_err(io_err("open", &path))?;
    Ok(RecordReader::new(BufReader::with_capacity(1 << 20, file)))
}

/// How many page bytes the image stores for each VMA, per process (in image order).
pub fn stored_per_vma(img: &Image) -> Result<Vec<Vec<u64>>, EngineError> {
    let mut out: Vec<Vec<u64>> = img.processes.iter().map(|p| vec![0u64; p.vmas.len()]).collect();
    each_batch(img, |b| {
        // An object's pages are its own, at offsets, not at any VMA's address.
        if b.object != 0 {
            return;
        }
        let Some(pi) = img.processes.iter().position(|p| p.pid == b.pid) else { return };
        let vmas = &img.processes[pi].vmas;
        for r in &b.runs {
            if migrate_proto::validate::vma_holding(vmas, r).is_some() {
                out[pi][vmas.partition_point(|v| v.end <= r.addr)] += r.bytes();
            }
        }
    })?;
    Ok(out)
}

/// The stored bytes of `[addr, addr+len)` in process `pid`; `None` where the image
/// stores nothing.
pub fn read_range(img: &Image, pid: i32, addr: u64, len: u64) -> Result<Vec<Option<u8>>, EngineError> {
    let mut out = vec![None; len as usize];
    let end = addr.saturating_add(len);
    each_batch(img, |b| {
        if b.pid != pid || b.object != 0 {
            return;
        }
        let mut off = 0usize;
        for r in &b.runs {
            let rlen = r.bytes();
            // Runs were checked on decode (no overflow), but not against a process.
            let (s, e) = (r.addr.max(addr), r.end().unwrap_or(u64::MAX).min(end));
            for a in s..e {
                out[(a - addr) as usize] = b.data.get(off + (a - r.addr) as usize).copied();
            }
            off += rlen as usize;
        }
    })?;
    Ok(out)
}

fn each_batch(img: &Image, mut f: impl FnMut(&migrate_proto::pages::PageBatch)) -> Result<(), EngineError> {
    let mut reader = records(&img.dir, PAGES)?;
    while let Some(frame) = reader.next().map_err(image_err(PAGES))? {
        if let Frame::Pages(b) = frame {
            f(&b);
        }
    }
    Ok(())
}
