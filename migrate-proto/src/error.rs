//! [`ProtoError`]: everything that can be wrong with an image, named precisely enough to
//! find the byte or the record.
//!
//! One error type for the crate. The top-level variants say *where* (the manifest, frame N at
//! byte X, pid P); the problem enums beneath them say *what*. Problems are printed inline
//! (they are not `source`s) so a report reads as one line, e.g.
//! `frame 12 at byte 4096: checksum mismatch (stored 0x1234abcd, computed 0x99887766)`.
//! Only I/O and postcard errors, which come from outside, are `source`s. Large problems are
//! boxed so a `Result<_, ProtoError>` stays small on the hot path.

use std::fmt;
use std::io;

/// Anything wrong with an image, a record stream or a record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The processes of an image do not form one valid tree.
    #[error("process tree: {problem}")]
    Tree { problem: String },

    /// The manifest file is malformed.
    #[error("manifest: {0}")]
    Manifest(Box<ManifestProblem>),

    /// The image was written by a newer migrate.
    #[error("image format version {found} is newer than this migrate understands ({ours}): upgrade migrate")]
    NewerFormat { found: u32, ours: u32 },

    /// The image was written in an older format that this build no longer reads.
    #[error(
        "image format version {found} is older than this migrate understands ({ours}): \
         no older format can be read yet; restore it with the migrate that wrote it"
    )]
    OlderFormat { found: u32, ours: u32 },

    /// A frame of a record file or stream is malformed.
    #[error("frame {index} at byte {offset}: {problem}")]
    Frame { index: u64, offset: u64, problem: Box<FrameProblem> },

    /// A page batch, decoded or encoded on its own (outside a frame), is malformed.
    #[error("page batch: {0}")]
    Batch(Box<BatchProblem>),

    /// A record fails its semantic checks.
    #[error("pid {pid}: {problem}")]
    Invalid { pid: i32, problem: Box<Invalid> },

    /// A file's size or XXH3 digest differs from what the manifest says.
    #[error(
        "file {name}: size {size} and digest {xxh3:#018x} do not match the manifest's \
         size {expected_size} and digest {expected_xxh3:#018x}"
    )]
    FileMismatch { name: String, size: u64, xxh3: u64, expected_size: u64, expected_xxh3: u64 },

    /// Reading a whole file to check it against the manifest failed.
    #[error("reading file {name}")]
    FileIo {
        name: String,
        #[source]
        source: io::Error,
    },

    /// A record is too large to be written within the format's caps.
    #[error("{what} is too large to encode: {len} bytes, the limit is {cap}")]
    TooLarge { what: &'static str, len: u64, cap: u64 },

    /// postcard could not encode a record (not expected for this crate's types).
    #[error("encoding {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },

    /// zstd could not be set up or failed while compressing.
    #[error("zstd {op}")]
    Zstd {
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// Reading or writing the underlying stream failed.
    #[error("{op} frame {index} at byte {offset}")]
    Io {
        op: &'static str,
        index: u64,
        offset: u64,
        #[source]
        source: io::Error,
    },

    /// A reader or writer is used after it has failed (it cannot resynchronise).
    #[error("the record {role} already failed and cannot be used again")]
    Poisoned { role: &'static str },
}

impl ProtoError {
    pub(crate) fn manifest(problem: ManifestProblem) -> Self {
        ProtoError::Manifest(Box::new(problem))
    }

    pub(crate) fn frame(index: u64, offset: u64, problem: FrameProblem) -> Self {
        ProtoError::Frame { index, offset, problem: Box::new(problem) }
    }

    pub(crate) fn batch(problem: BatchProblem) -> Self {
        ProtoError::Batch(Box::new(problem))
    }

    pub(crate) fn invalid(pid: i32, problem: Invalid) -> Self {
        ProtoError::Invalid { pid, problem: Box::new(problem) }
    }
}

/// What is wrong with `manifest.img`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestProblem {
    #[error("{len} bytes is larger than the {cap}-byte limit")]
    TooLarge { len: u64, cap: u64 },
    #[error("{len} bytes is too short for a manifest (at least {min})")]
    TooShort { len: u64, min: u64 },
    #[error("the length field says {stored} payload bytes but the file holds {actual}")]
    Length { stored: u64, actual: u64 },
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("not a migrate manifest (magic {found:02x?})")]
    Magic { found: [u8; 8] },
    #[error("bad payload: {0}")]
    Payload(postcard::Error),
    #[error("{extra} unexpected bytes after the payload")]
    TrailingPayload { extra: u64 },
    #[error("the header says format version {header} but the payload says {payload}")]
    VersionMismatch { header: u32, payload: u32 },
    #[error("file name {name:?} {problem}")]
    FileName { name: String, problem: &'static str },
    #[error("file {name:?} is listed twice")]
    DuplicateFile { name: String },
    #[error("file {name:?} claims {size} bytes, more than the {cap}-byte limit")]
    FileTooLarge { name: String, size: u64, cap: u64 },
    #[error("{field} {problem}")]
    Field { field: &'static str, problem: String },
}

/// What is wrong with one frame of a record file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameProblem {
    #[error("truncated: the file ends inside the frame header ({got} of 8 bytes)")]
    TruncatedHeader { got: u64 },
    #[error("truncated: the file ends inside the frame ({got} of {want} bytes after the header)")]
    TruncatedBody { got: u64, want: u64 },
    #[error("truncated: the file ends here without an END frame")]
    MissingEnd,
    #[error("{kind} frame claims {len} payload bytes, more than the {cap}-byte limit")]
    TooLong { kind: FrameKindName, len: u64, cap: u64 },
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown frame kind {kind} (written by a newer migrate?)")]
    UnknownKind { kind: u16 },
    #[error("{kind} frame has unknown flags {flags:#06x}")]
    UnknownFlags { kind: FrameKindName, flags: u16 },
    #[error("bad {kind} payload: {source}")]
    Payload { kind: FrameKindName, source: postcard::Error },
    #[error("{kind} payload has {extra} unexpected bytes at its end")]
    TrailingPayload { kind: FrameKindName, extra: u64 },
    #[error("END says {stored} frames came before it, but {counted} did")]
    EndCount { stored: u64, counted: u64 },
    #[error("unexpected bytes after the END frame")]
    TrailingAfterEnd,
    #[error("page batch: {0}")]
    Pages(BatchProblem),
    #[error("pid {pid}: {problem}")]
    Invalid { pid: i32, problem: Invalid },
}

/// The name of a frame kind, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameKindName(pub u16);

impl fmt::Display for FrameKindName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            crate::frame::KIND_PROCESS => f.write_str("PROCESS"),
            crate::frame::KIND_PAGES => f.write_str("PAGES"),
            crate::frame::KIND_END => f.write_str("END"),
            other => write!(f, "kind-{other}"),
        }
    }
}

/// What is wrong with a page batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchProblem {
    #[error("bad header: {0}")]
    Header(postcard::Error),
    #[error("the batch has no page runs")]
    Empty,
    #[error("run at {addr:#x} has no pages")]
    EmptyRun { addr: u64 },
    #[error("run at {addr:#x} is not page-aligned")]
    UnalignedRun { addr: u64 },
    #[error("run at {addr:#x} of {npages} pages runs past the end of the address space")]
    RunOverflow { addr: u64, npages: u32 },
    #[error(
        "run at {addr:#x} starts before the end of the previous run ({prev_end:#x}): runs must be sorted and disjoint"
    )]
    RunOrder { addr: u64, prev_end: u64 },
    #[error("the runs hold {bytes} bytes, more than the {cap}-byte batch limit")]
    TooLarge { bytes: u64, cap: u64 },
    #[error("raw_len {raw_len} does not match the runs ({expected} bytes)")]
    RawLen { raw_len: u64, expected: u64 },
    #[error("data holds {len} bytes but the runs need {expected}")]
    DataLen { len: u64, expected: u64 },
    #[error("zstd data does not decompress: {0}")]
    Decompress(io::Error),
    #[error("zstd data decompresses to {got} bytes, not the {expected} announced")]
    DecompressedLen { got: u64, expected: u64 },
}

/// What a path belongs to, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathOwner {
    Cwd,
    Root,
    Exe,
    Fd(i32),
    Vma {
        start: u64,
        end: u64,
    },
    Tmpfs,
    Object(u64),
    /// The FIFO of the pipe record with this key.
    Fifo(u64),
}

impl fmt::Display for PathOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathOwner::Cwd => f.write_str("cwd"),
            PathOwner::Root => f.write_str("root"),
            PathOwner::Exe => f.write_str("exe"),
            PathOwner::Fd(fd) => write!(f, "fd {fd}"),
            PathOwner::Tmpfs => f.write_str("tmpfs entry"),
            PathOwner::Object(id) => write!(f, "object {id}"),
            PathOwner::Fifo(key) => write!(f, "FIFO of pipe:[{key}]"),
            PathOwner::Vma { start, end } => write!(f, "VMA {start:#x}-{end:#x}"),
        }
    }
}

/// Why a path is refused: it must name a place inside the container's root, as the kernel
/// would resolve it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    #[error("is not absolute")]
    NotAbsolute,
    #[error("contains a NUL byte")]
    Nul,
    #[error("contains a `..` component")]
    DotDot,
    #[error("is {0} bytes long, more than 4096")]
    TooLong(usize),
}

/// What is semantically wrong with a process record or a page batch for it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    #[error("{what} {value} is out of range")]
    Id { what: &'static str, value: i32 },
    #[error("VMA {start:#x}-{end:#x} {problem}")]
    Vma { start: u64, end: u64, problem: VmaProblem },
    #[error("{owner} path {path:?} {problem}")]
    Path { owner: PathOwner, path: String, problem: PathProblem },
    #[error("has no threads")]
    NoThreads,
    #[error("the first thread is {tid}, not the main thread (tid == pid)")]
    MainThreadNotFirst { tid: i32 },
    #[error("thread {tid}: tid out of range")]
    BadTid { tid: i32 },
    #[error("thread {tid} is listed twice")]
    DuplicateTid { tid: i32 },
    #[error("thread {tid}: xstate is {len} bytes, more than {cap}")]
    XstateTooLarge { tid: i32, len: u64, cap: u64 },
    #[error("{owner}: pending signal {signo} {problem}")]
    SigInfo { owner: SigOwner, signo: i32, problem: &'static str },
    #[error("fd {fd} is out of range (0..1048576)")]
    BadFd { fd: i32 },
    #[error("fd {fd} is listed twice")]
    DuplicateFd { fd: i32 },
    #[error("fd {fd}: {problem}")]
    Fd { fd: i32, problem: String },
    #[error("sigaction for signal {signo}: {problem}")]
    SigAction { signo: i32, problem: &'static str },
    #[error("rlimit {resource}: {problem}")]
    Rlimit { resource: u32, problem: &'static str },
    #[error("auxv: {problem}")]
    Auxv { problem: String },
    #[error("mm: {low_name} {low:#x} is above {high_name} {high:#x}")]
    MmOrder { low_name: &'static str, low: u64, high_name: &'static str, high: u64 },
    #[error("mm: {name} {value:#x} lies beyond user space")]
    MmOutside { name: &'static str, value: u64 },
    #[error("{field} {problem}")]
    Field { field: &'static str, problem: String },
    #[error("page batch is for pid {batch_pid}")]
    BatchPid { batch_pid: i32 },
    #[error("page run {addr:#x}+{npages} lies in no single VMA")]
    RunOutsideVma { addr: u64, npages: u32 },
    #[error(
        "page run {addr:#x}+{npages} lies in VMA {start:#x}-{end:#x}, which holds no dumped pages ({backing})"
    )]
    RunNotDumpable { addr: u64, npages: u32, start: u64, end: u64, backing: &'static str },
}

/// What a pending signal belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigOwner {
    Process,
    Thread(i32),
}

impl fmt::Display for SigOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigOwner::Process => f.write_str("process"),
            SigOwner::Thread(tid) => write!(f, "thread {tid}"),
        }
    }
}

/// What is wrong with one VMA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VmaProblem {
    #[error("is empty or inverted")]
    Empty,
    #[error("is not page-aligned")]
    Unaligned,
    #[error("lies beyond user space (which ends at {:#x})", crate::USER_END)]
    OutsideUser,
    #[error("overlaps {start:#x}-{end:#x}")]
    Overlaps { start: u64, end: u64 },
    #[error("comes after {start:#x}-{end:#x}: VMAs must be sorted")]
    Unsorted { start: u64, end: u64 },
    #[error("is a second {0} (the first is at {1:#x})")]
    DuplicateSpecial(&'static str, u64),
    #[error("has unknown protection bits {0:#x}")]
    BadProt(u32),
    #[error("has file offset {0:#x}, which is not page-aligned or overflows")]
    BadOffset(u64),
    #[error("has advice flag {0:?}, which is not a VmFlags mnemonic")]
    BadAdvice(String),
    #[error("has {0} flags, more than there are flags a restore carries")]
    TooManyAdvice(usize),
    #[error("is anonymous memory named {0:?}, which is no name PR_SET_VMA_ANON_NAME gives")]
    BadAnonName(String),
    #[error("has a name of {0} bytes, more than 4096")]
    NameTooLong(usize),
}
