//! The checkpoint image format, version [`FORMAT_VERSION`]: records, framing, versions and
//! validation.
//!
//! A checkpoint is a stream of typed records; an image directory is that same stream written
//! to files (design §2). Live migration, checkpoint to disk, restore from disk and `inspect`
//! share this one encoder, decoder and validator, so this crate is where hostile bytes meet
//! typed data. It does no I/O beyond [`std::io::Read`] and [`std::io::Write`], has no
//! `unsafe`, and knows nothing of live processes: it turns bytes into checked plain data and
//! back.
//!
//! - [`manifest`]: `manifest.img`, the image's header file: magic, format version, the
//!   machine it was taken on, and a size and XXH3 digest for every other file.
//! - [`frame`]: the record files (`process.img`, `pages.img`) as a sequence of
//!   `[kind][flags][len][payload][crc32]` frames closed by an END frame that counts them.
//! - [`pages`]: memory contents as batches of page runs, zstd-compressed when it pays.
//! - [`records`]: the metadata types, encoded with postcard.
//! - [`validate`]: the semantic checks a decoded record passes before anything live is built
//!   from it.
//!
//! Decoding follows one order everywhere: size cap → length → checksum → magic → version →
//! payload → semantic check, and every length is checked against its cap before anything is
//! allocated for it. No input makes this crate panic; the unit tests and the `cargo fuzz`
//! targets in `fuzz/` hold it to that. `docs/image-format.md` describes the format byte by
//! byte.

pub mod error;
pub mod frame;
pub mod manifest;
pub mod pages;
pub mod records;
pub mod validate;

#[cfg(test)]
mod tests;

pub use error::{
    BatchProblem, FrameKindName, FrameProblem, Invalid, ManifestProblem, PathOwner, PathProblem, ProtoError,
    SigOwner, VmaProblem,
};
pub use frame::{FileDigest, Filled, Frame, RecordReader, RecordWriter, digest_reader, verify_file};
pub use manifest::{
    Clocks, ContainerMeta, CpuId, FileSum, KernelId, Manifest, Stats, decode_manifest, encode_manifest,
};
pub use pages::{BatchHeader, Codec, EncodedHead, PageBatch, PageCodec, PageRun};
pub use validate::{check_batch, validate_process, validate_tree};

/// The version of the image format this build writes and the only one it reads.
///
/// Independent of the crate's version: it changes when, and only when, the bytes change. A
/// reader refuses an image whose version is not its own, with a message that says which side
/// to upgrade.
pub const FORMAT_VERSION: u32 = 4;

/// The page size of every address and length in the format (x86-64).
pub const PAGE_SIZE: u64 = 4096;

/// The end of x86-64 user space with 4-level paging (`TASK_SIZE_MAX`): no user mapping ends
/// above it. (With 5-level paging a task only gets higher addresses by asking for them; the
/// format does not support such tasks.)
pub const USER_END: u64 = 0x0000_7fff_ffff_f000;
