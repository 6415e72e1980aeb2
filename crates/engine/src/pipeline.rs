//! A file written by a thread of its own, so that the caller encodes and checksums the
//! next frames while the kernel copies the previous ones: a write to tmpfs costs about as
//! much CPU as everything else a dump does to a page together.
//!
//! A [`Spool`] gathers what it is given into chunks of [`CHUNK`] bytes and hands each
//! full chunk to its writer thread (started with the first chunk: a small file is written
//! at [`Spool::finish`] by the caller, with no thread at all). Chunk buffers go back and
//! forth, so nothing is allocated after the first few chunks.

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Bytes per write.
const CHUNK: usize = 1 << 20;
/// Full chunks queued for the writer thread, beside the one it is writing.
const QUEUED: usize = 4;

/// Bytes on their way to a file.
#[derive(Debug)]
pub struct Spool {
    buf: Vec<u8>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// No chunk was full yet: the file is still ours.
    Direct(File),
    /// The writer thread owns the file.
    Threaded { full: SyncSender<Vec<u8>>, free: Receiver<Vec<u8>>, thread: JoinHandle<io::Result<File>> },
    /// The writer failed, or the spool is finished.
    Gone,
}

impl Spool {
    pub fn new(file: File) -> Spool {
        Spool { buf: Vec::new(), state: State::Direct(file) }
    }

    /// Hands the gathered bytes to the writer thread (starting it if need be).
    fn send(&mut self) -> io::Result<()> {
        if let State::Direct(_) = self.state {
            let State::Direct(file) = std::mem::replace(&mut self.state, State::Gone) else {
                return Err(io::Error::other("spool state changed"));
            };
            let (full, full_rx) = sync_channel::<Vec<u8>>(QUEUED);
            let (free_tx, free) = sync_channel::<Vec<u8>>(QUEUED + 2);
            let thread = std::thread::Builder::new().name("image-write".into()).spawn(move || {
                let mut file = file;
                for mut chunk in full_rx {
                    file.write_all(&chunk)?;
                    chunk.clear();
                    let _ = free_tx.try_send(chunk);
                }
                Ok(file)
            })?;
            self.state = State::Threaded { full, free, thread };
        }
        let State::Threaded { full, free, .. } = &self.state else {
            return Err(io::Error::other("the image writer stopped"));
        };
        let next = free.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let chunk = std::mem::replace(&mut self.buf, next);
        if full.send(chunk).is_err() {
            // The thread stopped on an error: join it to learn which.
            return Err(self.stop().err().unwrap_or_else(|| io::Error::other("the image writer stopped")));
        }
        Ok(())
    }

    /// Waits for the writer thread (if any) and takes the file back.
    fn stop(&mut self) -> io::Result<File> {
        match std::mem::replace(&mut self.state, State::Gone) {
            State::Direct(file) => Ok(file),
            State::Threaded { full, thread, .. } => {
                drop(full);
                thread.join().unwrap_or_else(|_| Err(io::Error::other("the image writer panicked")))
            }
            State::Gone => Err(io::Error::other("the image writer stopped")),
        }
    }

    /// Writes what is left and returns the file once every byte is in it.
    pub fn finish(mut self) -> io::Result<File> {
        if matches!(self.state, State::Threaded { .. }) && !self.buf.is_empty() {
            self.send()?;
        }
        let mut file = self.stop()?;
        if !self.buf.is_empty() {
            file.write_all(&self.buf)?;
        }
        Ok(file)
    }
}

impl Write for Spool {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            self.buf.reserve(CHUNK.min(data.len().max(64 << 10)));
        }
        let mut rest = data;
        while !rest.is_empty() {
            let room = CHUNK.saturating_sub(self.buf.len());
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.buf.extend_from_slice(now);
            rest = later;
            if self.buf.len() >= CHUNK {
                self.send()?;
            }
        }
        Ok(data.len())
    }

    /// Does not wait for the disk: [`Spool::finish`] does.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_writes_arrive_in_order() -> io::Result<()> {
        let dir = std::env::temp_dir().join(format!("spool-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        for total in [10usize, CHUNK - 1, CHUNK, 3 * CHUNK + 12345] {
            let path = dir.join("f");
            let mut spool = Spool::new(File::create(&path)?);
            let want: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            for piece in want.chunks(777_777) {
                spool.write_all(piece)?;
            }
            drop(spool.finish()?);
            assert_eq!(std::fs::read(&path)?, want, "{total} bytes");
        }
        std::fs::remove_dir_all(&dir)
    }
}
