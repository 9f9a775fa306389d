//! Partly received blobs: `ROOT/.rimg/partial/HEX`, kept across a dropped
//! transfer so that the next one continues from the byte where it stopped.
//!
//! A partial file holds a prefix of the blob named by its file name, written
//! by a peer we do not trust. Nothing in it is believed until the whole blob
//! has been hashed: resuming re-hashes the prefix already on disk, and
//! [`PartialBlob::finish`] checks the size and the digest before the file
//! may be adopted by a [`Staging`] and renamed into `blobs/`. A file whose
//! bytes turn out wrong is deleted, so the next attempt starts from zero.
//!
//! Each partial file is locked while it is written, so two transfers of the
//! same blob into one store cannot interleave their bytes.
//!
//! The bytes are gathered into blocks and written with `O_DIRECT` where
//! the filesystem takes it: a received blob is not read again soon, and
//! copying it into the page cache first was the receiver's largest cost
//! (42% of its CPU time on a loopback push, more than SHA-256). A direct
//! write waits for the disk, so it runs on a thread of its own while the
//! next block is gathered and hashed.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tempfile::TempPath;

use super::{Staging, Store, StoreError, io_err};
use crate::digest::{Digest, Hasher};

/// A blob being received into `partial/`, hashed as it grows.
pub struct PartialBlob {
    file: Appender,
    path: PathBuf,
    /// The store's temporary area, where a verified blob waits to be
    /// staged.
    tmp_dir: PathBuf,
    digest: Digest,
    size: u64,
    hasher: Hasher,
}

/// A blob whose size and digest have been checked, moved out of
/// `partial/` into the temporary area: ready to stage.
pub struct VerifiedPartial {
    temp: TempPath,
    digest: Digest,
    size: u64,
}

/// Why a partial blob cannot be continued.
#[derive(Debug, thiserror::Error)]
pub enum PartialError {
    /// Another transfer holds the lock on this partial file.
    #[error("blob {0} is being received by another transfer")]
    Busy(Digest),
    /// More bytes arrived than the blob's announced size.
    #[error("blob {digest} is larger than the {size} bytes offered")]
    TooLarge { digest: Digest, size: u64 },
    /// The stream ended before the blob was complete.
    #[error("blob {digest} ended after {got} of {size} bytes")]
    Short { digest: Digest, got: u64, size: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.partial_dir().join(digest.hex())
    }

    /// How many bytes of `digest` an interrupted transfer left behind.
    /// Zero when there is no partial file, or when the one there is longer
    /// than the blob (it cannot be a prefix of it).
    pub fn partial_len(&self, digest: &Digest, size: u64) -> u64 {
        fs::metadata(self.partial_path(digest))
            .map(|m| m.len())
            .ok()
            .filter(|&len| len <= size)
            .unwrap_or(0)
    }

    /// Opens (creating it if needed) the partial file for `digest`, locks
    /// it, and re-hashes the prefix already there so that writing can go on
    /// from [`PartialBlob::offset`].
    pub fn open_partial(
        &self,
        digest: &Digest,
        size: u64,
    ) -> std::result::Result<PartialBlob, PartialError> {
        self.open_partial_at(digest, size, size)
    }

    /// As [`Store::open_partial`], but keeps at most `at` bytes: the offset
    /// a transfer agreed on, even if an earlier connection appended more
    /// after that (it drains what its peer had sent before dying).
    pub fn open_partial_at(
        &self,
        digest: &Digest,
        size: u64,
        at: u64,
    ) -> std::result::Result<PartialBlob, PartialError> {
        let path = self.partial_path(digest);
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(PartialError::Busy(digest.clone())),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e).into()),
        }

        // A file longer than the blob is not a prefix of it: start over.
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len > size {
            file.set_len(0).map_err(io_err(&path))?;
        } else if len > at {
            file.set_len(at).map_err(io_err(&path))?;
        }

        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        file.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
        loop {
            let n = file.read(&mut buf).map_err(io_err(&path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let offset = hasher.len();
        Ok(PartialBlob {
            file: Appender::new(file, &path, offset),
            path,
            tmp_dir: self.tmp_dir(),
            digest: digest.clone(),
            size,
            hasher,
        })
    }
}

impl PartialBlob {
    /// Bytes of the blob held so far: where the sender must continue.
    pub fn offset(&self) -> u64 {
        self.hasher.len()
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// A second handle on the file, for syncing written bytes from another
    /// thread while writing goes on, so the final sync has little left.
    pub fn sync_handle(&self) -> std::result::Result<File, PartialError> {
        Ok(self.file.file.try_clone().map_err(io_err(&self.path))?)
    }

    /// Appends bytes, refusing any beyond the announced size.
    pub fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), PartialError> {
        self.write_pieces(&[bytes])
    }

    /// Appends the pieces in order, refusing any byte beyond the announced
    /// size. A chunk from the network arrives as many datagram-sized
    /// pieces; they are gathered into blocks before they reach the kernel.
    pub fn write_pieces<B: AsRef<[u8]>>(
        &mut self,
        pieces: &[B],
    ) -> std::result::Result<(), PartialError> {
        let total: u64 = pieces.iter().map(|p| p.as_ref().len() as u64).sum();
        if self.offset() + total > self.size {
            return Err(PartialError::TooLarge {
                digest: self.digest.clone(),
                size: self.size,
            });
        }
        for piece in pieces {
            self.file
                .append(piece.as_ref())
                .map_err(io_err(&self.path))?;
            self.hasher.update(piece.as_ref());
        }
        Ok(())
    }

    /// Writes out the bytes gathered so far (a dropped blob does too,
    /// ignoring errors): what is on disk is what a resume continues from.
    pub fn flush(&mut self) -> std::result::Result<(), PartialError> {
        Ok(self.file.write_out(true).map_err(io_err(&self.path))?)
    }

    /// Checks the size and digest, and syncs. A digest mismatch deletes the
    /// file: its bytes are wrong somewhere and cannot be resumed.
    pub fn finish(mut self) -> std::result::Result<VerifiedPartial, PartialError> {
        self.flush()?;
        let got = self.offset();
        if got != self.size {
            return Err(PartialError::Short {
                digest: self.digest,
                got,
                size: self.size,
            });
        }
        let (actual, _) = self.hasher.finish();
        if actual != self.digest {
            let _ = fs::remove_file(&self.path);
            return Err(StoreError::DigestMismatch {
                what: format!("received blob {}", self.digest),
                expected: self.digest,
                actual,
            }
            .into());
        }
        self.file.file.sync_all().map_err(io_err(&self.path))?;
        // Out of `partial/` while the lock is still held: a transfer of the
        // same blob waiting for that lock would otherwise take it between
        // here and the rename into `blobs/`, cut the verified file to its
        // own offset and write into it.
        let temp = tempfile::Builder::new()
            .prefix("verified-")
            .tempfile_in(&self.tmp_dir)
            .map_err(io_err(&self.tmp_dir))?
            .into_temp_path();
        fs::rename(&self.path, &temp).map_err(io_err(&self.path))?;
        Ok(VerifiedPartial {
            temp,
            digest: self.digest,
            size: self.size,
        })
    }

    /// Deletes the partial file: for bytes from a peer that misbehaved.
    pub fn discard(mut self) {
        self.file.len = 0;
        let _ = fs::remove_file(&self.path);
    }
}

/// Where `O_DIRECT` writes start, and what their lengths and buffers are
/// multiples of: the largest logical block size in common use.
const ALIGN: usize = 4096;

/// Bytes gathered before a write.
const BLOCK: usize = 1 << 20;

/// A block's worth of memory aligned to [`ALIGN`], as `O_DIRECT` needs.
struct Block {
    buf: Vec<u8>,
    start: usize,
}

impl Block {
    fn new() -> Block {
        let buf = vec![0u8; BLOCK + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        Block { buf, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + BLOCK]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + BLOCK]
    }
}

/// A block handed to the writing thread: its first `len` bytes go at `at`.
struct Job {
    block: Block,
    len: usize,
    at: u64,
}

/// A thread that writes blocks through the `O_DIRECT` handle, one at a
/// time, while the next block is gathered and hashed: a direct write
/// waits for the disk, and in the same thread that wait and SHA-256 took
/// turns.
struct DirectWriter {
    /// Taken on drop, which ends the thread.
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    done: std::sync::mpsc::Receiver<(Job, io::Result<()>)>,
    /// A block is being written.
    busy: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DirectWriter {
    fn start(file: File) -> io::Result<DirectWriter> {
        let (jobs, jobs_rx) = std::sync::mpsc::sync_channel::<Job>(1);
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("rimg-direct-write".into())
            .spawn(move || {
                for job in jobs_rx {
                    let result = file.write_all_at(&job.block.bytes()[..job.len], job.at);
                    if done_tx.send((job, result)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(DirectWriter {
            jobs: Some(jobs),
            done,
            busy: false,
            thread: Some(thread),
        })
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Appends to a file in blocks, through `O_DIRECT` where the filesystem
/// takes it and through the page cache where it does not (tmpfs, some
/// overlays) or where a write would not be aligned: the head up to the
/// first aligned offset when a resume starts mid-block, and the tail.
struct Appender {
    /// The file, opened normally: the lock, the unaligned writes, syncs.
    file: File,
    /// Writes through a second handle on the file, opened with
    /// `O_DIRECT`, while that works.
    direct: Option<DirectWriter>,
    /// The block being gathered, and the one not in use (none until the
    /// first direct write).
    block: Block,
    spare: Option<Block>,
    /// Bytes gathered, to be written at `at`.
    len: usize,
    at: u64,
    /// A block was lost: nothing more may be written.
    failed: bool,
}

impl Appender {
    fn new(file: File, path: &Path, at: u64) -> Appender {
        let direct = File::options()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)
            .and_then(DirectWriter::start)
            .ok();
        Appender {
            file,
            direct,
            block: Block::new(),
            spare: None,
            len: 0,
            at,
            failed: false,
        }
    }

    /// How many bytes to gather before writing: a whole block, or while
    /// `at` is not aligned only as many as reach the next aligned offset.
    fn capacity(&self) -> usize {
        match self.at as usize % ALIGN {
            0 => BLOCK,
            off if self.direct.is_some() => ALIGN - off,
            _ => BLOCK,
        }
    }

    fn append(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = (self.capacity() - self.len).min(bytes.len());
            self.block.bytes_mut()[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if self.len == self.capacity() {
                self.write_out(false)?;
            }
        }
        Ok(())
    }

    /// Waits for the block being written, if any, and takes it back as the
    /// spare. Where a direct write fails (a filesystem that took
    /// `O_DIRECT` at open refuses it for writes with EINVAL or EOPNOTSUPP),
    /// that block goes through the page cache, and so does everything
    /// after it. If that fails too, nothing more is written: the file
    /// stays a prefix of the blob for a resume, without a hole.
    fn wait(&mut self) -> io::Result<()> {
        let Some(direct) = self.direct.as_mut().filter(|d| d.busy) else {
            return Ok(());
        };
        direct.busy = false;
        let Ok((job, result)) = direct.done.recv() else {
            // The block went with the thread.
            self.failed = true;
            return Err(io::Error::other("the direct-write thread ended"));
        };
        if result.is_err() {
            self.direct = None;
            let again = self
                .file
                .write_all_at(&job.block.bytes()[..job.len], job.at);
            if let Err(e) = again {
                self.failed = true;
                return Err(e);
            }
        }
        self.spare = Some(job.block);
        Ok(())
    }

    /// Writes the gathered bytes: the aligned part directly, on the
    /// writing thread, the rest through the page cache when `all` (else it
    /// waits for more). With `all`, returns only once every byte is
    /// written.
    fn write_out(&mut self, all: bool) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier write to this file failed"));
        }
        let n = self.len / ALIGN * ALIGN;
        if self.direct.is_some() && self.at.is_multiple_of(ALIGN as u64) && n > 0 {
            self.wait()?;
            if let Some(direct) = &mut self.direct {
                // The second block only once there is a first to write.
                let mut next = self.spare.take().unwrap_or_else(Block::new);
                // The unaligned rest starts the next block.
                let rest = self.len - n;
                next.bytes_mut()[..rest].copy_from_slice(&self.block.bytes()[n..self.len]);
                let block = std::mem::replace(&mut self.block, next);
                let job = Job {
                    block,
                    len: n,
                    at: self.at,
                };
                let jobs = direct.jobs.as_ref().expect("open until dropped");
                if jobs.send(job).is_err() {
                    self.failed = true;
                    return Err(io::Error::other("the direct-write thread ended"));
                }
                direct.busy = true;
                self.at += n as u64;
                self.len = rest;
            }
        }
        if all || self.direct.is_none() || !self.at.is_multiple_of(ALIGN as u64) {
            // The file grows in order: the block in flight first.
            self.wait()?;
            self.file
                .write_all_at(&self.block.bytes()[..self.len], self.at)?;
            self.at += self.len as u64;
            self.len = 0;
        }
        Ok(())
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        let _ = self.write_out(true);
    }
}

impl Staging {
    /// Takes a verified partial file into this staging, as if it had been
    /// written through [`Staging::writer`]. It is renamed into `blobs/` at
    /// commit; dropping the staging deletes it, like any staged blob.
    pub fn adopt(&mut self, partial: VerifiedPartial) -> super::Result<(Digest, u64)> {
        let blob = super::StagedBlob::from_verified(partial.temp, partial.digest, partial.size);
        Ok(self.add(blob))
    }
}

impl From<PartialError> for io::Error {
    fn from(e: PartialError) -> io::Error {
        io::Error::other(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_from_the_bytes_on_disk_and_verifies_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let data = vec![7u8; 3000];
        let digest = Digest::of(&data);

        let mut p = store.open_partial(&digest, 3000).unwrap();
        p.write(&data[..1000]).unwrap();
        drop(p);
        assert_eq!(store.partial_len(&digest, 3000), 1000);

        let mut p = store.open_partial(&digest, 3000).unwrap();
        assert_eq!(p.offset(), 1000);
        assert!(matches!(
            p.write(&[0u8; 2001]),
            Err(PartialError::TooLarge { .. })
        ));
        p.write(&data[1000..]).unwrap();
        let verified = p.finish().unwrap();

        let mut staging = store.stage().unwrap();
        staging.adopt(verified).unwrap();
        staging.commit(vec![]).unwrap();
        assert!(store.has_blob(&digest));
        assert_eq!(store.partial_len(&digest, 3000), 0);
    }

    /// Blocks go to disk through O_DIRECT where the filesystem allows,
    /// the page cache elsewhere: either way, pieces of any size, a resume
    /// from an offset that is not a multiple of the block size and a tail
    /// shorter than a block give back exactly the bytes written.
    #[test]
    fn odd_pieces_and_an_unaligned_resume_keep_every_byte() {
        let data = crate::testdata::noise(3_300_001, 0x9e37_79b9_7f4a_7c15);
        let digest = Digest::of(&data);
        let size = data.len() as u64;
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path().join("s")).unwrap();
            let open = || {
                let mut p = store.open_partial(&digest, size).unwrap();
                if !direct {
                    p.file.direct = None;
                }
                p
            };
            let mut p = open();
            let mut at = 0;
            for n in [1, 4095, 65_537, 1 << 20, 3, 100_000] {
                p.write(&data[at..at + n]).unwrap();
                at += n;
            }
            drop(p);
            assert_eq!(store.partial_len(&digest, size), at as u64);

            let mut p = open();
            assert_eq!(p.offset(), at as u64);
            let pieces: Vec<&[u8]> = data[at..].chunks(1452).collect();
            p.write_pieces(&pieces).unwrap();
            let verified = p.finish().unwrap();
            let mut staging = store.stage().unwrap();
            staging.adopt(verified).unwrap();
            staging.commit(vec![]).unwrap();
            let stored = fs::read(store.blob_path(&digest)).unwrap();
            assert!(stored == data, "direct {direct}: the stored bytes differ");
        }
    }

    /// A direct write that fails on its own thread (here EBADF, as a
    /// filesystem's EINVAL or EOPNOTSUPP would) is written again through
    /// the page cache, and so is all after it: every byte arrives.
    #[test]
    fn a_failed_direct_write_goes_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut appender = Appender::new(File::create(&path).unwrap(), &path, 0);
        appender.direct = Some(DirectWriter::start(File::open(&path).unwrap()).unwrap());
        let data = crate::testdata::noise(2 * BLOCK + 100, 3);
        appender.append(&data).unwrap();
        appender.write_out(true).unwrap();
        assert!(appender.direct.is_none());
        assert!(fs::read(&path).unwrap() == data, "bytes lost");
    }

    /// When the page cache fails that block too, the error is reported and
    /// nothing after it is written, not even when dropped: a hole would
    /// look like a longer prefix to the next resume.
    #[test]
    fn after_a_lost_block_nothing_more_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        File::create(&path).unwrap();
        let mut appender = Appender::new(File::open(&path).unwrap(), &path, 0);
        appender.direct = Some(DirectWriter::start(File::open(&path).unwrap()).unwrap());
        let data = crate::testdata::noise(BLOCK + 100, 4);
        let lost = appender
            .append(&data)
            .and_then(|()| appender.write_out(true));
        assert!(lost.is_err(), "the lost block went unnoticed");
        // Writable again, but the block before is gone.
        appender.file = File::options().write(true).open(&path).unwrap();
        assert!(appender.write_out(true).is_err());
        drop(appender);
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn wrong_bytes_are_deleted_and_locked_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let digest = Digest::of(b"right");

        let mut p = store.open_partial(&digest, 5).unwrap();
        assert!(matches!(
            store.open_partial(&digest, 5),
            Err(PartialError::Busy(_))
        ));
        p.write(b"wrong").unwrap();
        assert!(matches!(
            p.finish(),
            Err(PartialError::Store(StoreError::DigestMismatch { .. }))
        ));
        assert_eq!(store.partial_len(&digest, 5), 0);
        assert!(!store.has_blob(&digest));
    }

    /// A partly received blob outlives garbage collection (an `rmi`, a
    /// `prune`) for a day, so the transfer can still resume; then it goes,
    /// and `prune --partial` removes it at once.
    #[test]
    fn garbage_collection_keeps_a_recent_partial_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let (fresh, old) = (Digest::of(b"fresh"), Digest::of(b"old"));
        for d in [&fresh, &old] {
            let mut p = store.open_partial(d, 100).unwrap();
            p.write(b"some").unwrap();
        }
        let aged = std::time::SystemTime::now() - super::super::PARTIAL_KEEP * 2;
        File::options()
            .write(true)
            .open(store.partial_dir().join(old.hex()))
            .unwrap()
            .set_modified(aged)
            .unwrap();

        let report = store.collect_garbage(false, false).unwrap().unwrap();
        assert_eq!((report.partial_kept, report.leftovers), (1, 1));
        assert_eq!(store.partial_len(&fresh, 100), 4);
        assert_eq!(store.partial_len(&old, 100), 0);

        let report = store.collect_garbage(false, true).unwrap().unwrap();
        assert_eq!((report.partial_kept, report.leftovers), (0, 1));
        assert_eq!(store.partial_len(&fresh, 100), 0);
    }

    /// A second transfer of the same blob, waiting for the partial file's
    /// lock, gets it once the first has verified the blob: it must find a
    /// new file, never the verified one on its way into `blobs/`.
    #[test]
    fn a_verified_blob_is_out_of_reach_of_the_next_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let data = b"a whole blob".to_vec();
        let digest = Digest::of(&data);
        let size = data.len() as u64;

        let mut first = store.open_partial_at(&digest, size, 0).unwrap();
        first.write(&data).unwrap();
        let verified = first.finish().unwrap();

        let mut second = store.open_partial_at(&digest, size, 0).unwrap();
        assert_eq!(second.offset(), 0);
        second.write(b"junk").unwrap();

        let mut staging = store.stage().unwrap();
        staging.adopt(verified).unwrap();
        staging.commit(vec![]).unwrap();
        assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), data);
        drop(second);
        assert!(store.check().unwrap().is_empty());
    }
}
