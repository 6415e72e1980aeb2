//! A whole image's process records, as the restore sees them before it builds anything:
//! `validate_tree`, then the engine's own checks on the records alone
//! (`migrate_engine::check_records`: PID 1, sessions and groups, the scratch page's gap),
//! then every page batch against its process. None may panic.
//!
//! Input: `[mode][n][n × 5 bytes of tree shape][record file]`. The record file is repaired
//! as in `records` when `mode` is odd. Each 5-byte shape `(pid, ppid, sid, pgid, zombie)`
//! (small signed pids, so that they meet) is given to the i-th process, cloned from the
//! decoded ones when there are fewer: mutating real records' varints rarely makes a tree
//! the session checks have to think about, five bytes do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use migrate_proto::records::ProcessRecord;
use migrate_proto::{Frame, RecordReader, check_batch, validate_tree};

#[path = "fixup.rs"]
mod fixup;

/// More shapes than this only make each run slower.
const MAX_SHAPES: usize = 32;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Some((&n, rest)) = rest.split_first() else { return };
    let n = usize::from(n).min(MAX_SHAPES).min(rest.len() / 5);
    let (shapes, file) = rest.split_at(n * 5);
    let mut framed = vec![mode];
    framed.extend_from_slice(file);
    let file = fixup::choose(&framed, fixup::repair_records);
    let mut reader = RecordReader::new(file.as_slice());
    let (mut processes, mut batches) = (Vec::new(), Vec::new());
    loop {
        match reader.next() {
            Ok(Some(Frame::Process(p))) => processes.push(*p),
            Ok(Some(Frame::Pages(b))) => batches.push(b),
            Ok(None) | Err(_) => break,
        }
    }
    if processes.is_empty() {
        return;
    }
    let decoded = processes.len();
    for (i, shape) in shapes.chunks_exact(5).enumerate() {
        if i >= processes.len() {
            processes.push(bare(&processes[i % decoded]));
        }
        let p = &mut processes[i];
        let id = |b: u8| i32::from(b as i8);
        (p.pid, p.ppid, p.sid, p.pgid) = (id(shape[0]), id(shape[1]), id(shape[2]), id(shape[3]));
        p.zombie = (shape[4] & 1 == 1).then_some(i32::from(shape[4] >> 1));
    }
    if validate_tree(&processes).is_err() {
        return;
    }
    if let Err(e) = migrate_engine::check_records(&processes) {
        let _ = e.to_string();
        return;
    }
    for b in &batches {
        if let Some(p) = processes.iter().find(|p| p.pid == b.pid) {
            let _ = check_batch(b, p);
        }
    }
});

/// A copy of `p` without what must be unique in an image (pipes, objects and the fds
/// that name them) or depends on its parent (inherited pages).
fn bare(p: &ProcessRecord) -> ProcessRecord {
    let mut p = p.clone();
    p.fds.clear();
    p.pipes.clear();
    p.objects.clear();
    p.inherited.clear();
    p.tmpfs.clear();
    p.ipc = None;
    p
}
