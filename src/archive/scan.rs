//! The one pass over an archive's tar stream.
//!
//! Docker 24 and older write `manifest.json` last, so nothing tells us which
//! entries are blobs until the stream has ended. Every regular entry is
//! therefore written to the store's temporary area as it streams past,
//! hashed, and remembered by its path; a layer that is itself compressed is
//! decompressed on the way, so the staged blob is the uncompressed layer
//! (its digest is the DiffID) while the digest of the bytes as they were in
//! the archive is kept too, for OCI descriptors that name it. Symlinks and
//! hard links are remembered and resolved later. Nothing is held in memory
//! but one copy buffer.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::mpsc::{self, SyncSender};

use tracing::{debug, trace};

use super::ArchiveError;
use super::paths::{self, Links};
use crate::compress::{self, Compression, Sniffed};
use crate::digest::{Digest, Hasher};
use crate::store::{BlobWriter, StagedBlob, Staging};

/// An archive with more regular entries than this is refused: each one is
/// a temporary file until the load ends, and real archives have a few
/// entries per layer.
pub const MAX_ENTRIES: usize = 100_000;

const COPY_BUF: usize = 1 << 20;

/// What one regular entry turned out to hold.
pub enum Content {
    /// Staged in the store's temporary area (uncompressed).
    Staged(StagedBlob),
    /// Already in the store under this digest, so only hashed.
    InStore { digest: Digest, size: u64 },
    /// Written, being synced on the syncer thread.
    Pending,
    /// Could not be decompressed; the reason, reported only if the entry
    /// turns out to be needed.
    Broken(String),
}

/// A regular entry of the archive.
pub struct Entry {
    pub path: String,
    /// The digest of the bytes as they are in the archive, when they are
    /// compressed; `None` when they are the content itself (hashed once).
    raw_digest: Option<Digest>,
    /// The size of the bytes as they are in the archive.
    pub raw_size: u64,
    /// How those bytes were compressed (`None`: stored as they are).
    pub compression: Compression,
    pub content: Content,
}

impl Entry {
    /// The digest of the bytes as they are in the archive (what an OCI
    /// descriptor names).
    pub fn raw_digest(&self) -> Result<Digest, String> {
        match &self.raw_digest {
            Some(digest) => Ok(digest.clone()),
            None => self.content_digest().map(|(digest, _)| digest),
        }
    }

    /// Digest and size of the uncompressed content, when it is readable.
    pub fn content_digest(&self) -> Result<(Digest, u64), String> {
        match &self.content {
            Content::Staged(blob) => Ok((blob.digest.clone(), blob.size)),
            Content::InStore { digest, size } => Ok((digest.clone(), *size)),
            Content::Broken(why) => Err(why.clone()),
            Content::Pending => Err("not synced".into()),
        }
    }
}

/// Everything the pass learned: entries by path, and the links between them.
#[derive(Default)]
pub struct Scanned {
    pub entries: Vec<Option<Entry>>,
    by_path: HashMap<String, usize>,
    pub links: Links,
}

impl Scanned {
    /// The entry at `path` after following symlinks and hard links.
    pub fn lookup(&self, path: &str) -> Result<Option<usize>, paths::PathProblem> {
        let real = self.links.resolve(path)?;
        Ok(self.by_path.get(&real).copied())
    }

    pub fn entry(&self, index: usize) -> Option<&Entry> {
        self.entries.get(index).and_then(Option::as_ref)
    }
}

/// Blobs waiting for their sync, at most: enough to keep the disk busy
/// while the next entry is read and hashed.
const SYNC_QUEUE: usize = 4;

/// Reads the whole tar stream `tar`, staging every regular entry.
///
/// Each staged blob is synced on a second thread while the stream goes
/// on, so the disk writes one blob while the next is read and hashed;
/// syncing in line made a load wait for the disk once per blob.
pub fn scan<R: Read>(tar: R, staging: &Staging) -> Result<Scanned, ArchiveError> {
    std::thread::scope(|scope| {
        let (queue, pending) = mpsc::sync_channel::<(usize, String, BlobWriter)>(SYNC_QUEUE);
        let syncer = scope.spawn(move || {
            let mut synced = Vec::new();
            for (index, path, writer) in pending {
                synced.push((index, writer.finish(&path, None)?));
            }
            Ok::<_, ArchiveError>(synced)
        });
        let scanned = scan_entries(tar, staging, &queue);
        drop(queue);
        let synced = syncer.join().expect("the syncer does not panic");

        // A failed sync explains a failed send, so it is reported first.
        let synced = synced?;
        let mut scanned = scanned?;
        for (index, blob) in synced {
            if let Some(Some(entry)) = scanned.entries.get_mut(index) {
                entry.content = Content::Staged(blob);
            }
        }
        Ok(scanned)
    })
}

fn scan_entries<R: Read>(
    tar: R,
    staging: &Staging,
    queue: &SyncSender<(usize, String, BlobWriter)>,
) -> Result<Scanned, ArchiveError> {
    let mut archive = tar::Archive::new(super::guard::Guard::new(tar));
    let mut scanned = Scanned::default();
    let mut buf = vec![0u8; COPY_BUF];
    let mut last = String::from("(none: at the start)");
    let damaged = |after: &str, source| ArchiveError::Damaged {
        after: after.to_string(),
        source,
    };

    let entries = archive.entries().map_err(|e| damaged(&last, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| damaged(&last, e))?;
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        last = raw_name.clone();
        let kind = entry.header().entry_type();
        if kind.is_dir() || kind.is_pax_global_extensions() {
            continue;
        }
        let path = paths::normalize(&raw_name).map_err(|why| ArchiveError::UnsafeEntry {
            entry: raw_name.clone(),
            why,
        })?;

        if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry.link_name_bytes() else {
                continue;
            };
            let target = String::from_utf8_lossy(&target).into_owned();
            trace!(%path, %target, "link");
            if kind.is_hard_link() {
                // A hard link names its target from the root of the archive.
                let target =
                    paths::normalize(&target).map_err(|why| ArchiveError::UnsafeEntry {
                        entry: format!("{raw_name} (hard link to {target})"),
                        why,
                    })?;
                if let Some(&index) = scanned.by_path.get(&target) {
                    scanned.by_path.insert(path, index);
                }
            } else {
                scanned.links.insert(path, target);
            }
            continue;
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            debug!(%path, ?kind, "skipping an entry that is neither a file nor a link");
            continue;
        }

        if scanned.entries.len() >= MAX_ENTRIES {
            return Err(ArchiveError::TooManyEntries(MAX_ENTRIES));
        }
        let size = entry.size();
        let (stored, writer) = read_entry(&mut entry, &path, size, staging, &mut buf)?;
        if let Some(writer) = writer {
            let sent = queue.send((scanned.entries.len(), path.clone(), writer));
            if sent.is_err() {
                return Err(ArchiveError::Unsupported {
                    entry: path,
                    what: "the blob syncer stopped".into(),
                });
            }
        }
        trace!(%path, size, compression = %stored.compression, "entry");
        scanned.by_path.insert(path, scanned.entries.len());
        scanned.entries.push(Some(stored));
    }
    Ok(scanned)
}

/// A reader that counts what passes, hashes it while asked to, and
/// remembers whether it failed, so a failure of the archive itself is told
/// apart from a corrupt layer. Plain entries are hashed once, by the blob
/// writer; only compressed ones need the digest of their bytes as well.
struct Tap<R> {
    inner: R,
    hasher: Option<Hasher>,
    len: u64,
    failed: bool,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                if let Some(hasher) = &mut self.hasher {
                    hasher.update(&buf[..n]);
                }
                self.len += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }
}

/// Where an entry's content goes: a staged blob, or nowhere when the store
/// already has it and only the digest is wanted.
enum Sink {
    Stage(BlobWriter),
    Hash(Hasher),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stage(w) => w.write(buf),
            Sink::Hash(h) => {
                h.update(buf);
                Ok(buf.len())
            }
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stage(w) => w.write_all(buf),
            Sink::Hash(h) => {
                h.update(buf);
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stage(w) => w.flush(),
            Sink::Hash(_) => Ok(()),
        }
    }
}

/// Streams one entry into the staging area, decompressing it when its
/// bytes say it is compressed.
fn read_entry<R: Read>(
    entry: R,
    path: &str,
    size: u64,
    staging: &Staging,
    buf: &mut [u8],
) -> Result<(Entry, Option<BlobWriter>), ArchiveError> {
    let mut tap = Tap {
        inner: entry,
        hasher: Some(Hasher::new()),
        len: 0,
        failed: false,
    };
    let (head, mut rest) =
        compress::peek(&mut tap, compress::SNIFF_LEN).map_err(|e| ArchiveError::read(path, e))?;
    // A valid tar header first is a plain layer even if its first file
    // name happens to start like a compression magic ("BZh...").
    let compression = if head.len() == compress::SNIFF_LEN && compress::is_tar_header(&head) {
        Compression::None
    } else {
        match compress::sniff(&head) {
            Sniffed::Compressed(c) => c,
            _ => Compression::None,
        }
    };
    if compression == Compression::None {
        rest.get_mut().1.hasher = None;
    }

    // An OCI blob already in the store need not be written again: hash it
    // only. Compressed blobs are named by their compressed digest, which
    // says nothing about the layer we keep, so they are always staged.
    let known = path
        .strip_prefix("blobs/sha256/")
        .and_then(|hex| Digest::from_hex(hex).ok())
        .filter(|d| compression == Compression::None && staging.store().has_blob(d));
    let mut sink = match &known {
        Some(_) => Sink::Hash(Hasher::new()),
        None => Sink::Stage(staging.writer()?),
    };

    let mut broken = None;
    if compression == Compression::None {
        copy(&mut rest, &mut sink, buf).map_err(|e| ArchiveError::read(path, e))?;
    } else {
        let copied = compress::Decoder::new(&mut rest, compression)
            .and_then(|mut decoder| copy(&mut decoder, &mut sink, buf));
        if let Err(e) = copied {
            if rest.get_ref().1.failed || sink_failed(&e) {
                return Err(ArchiveError::read(path, e));
            }
            broken = Some(format!("its {compression} stream is corrupt: {e}"));
        }
        // Whatever follows the compressed stream still counts for the
        // digest of the entry as it is in the archive.
        io::copy(&mut rest, &mut io::sink()).map_err(|e| ArchiveError::read(path, e))?;
    }

    let raw_size = tap.len;
    let raw_digest = tap.hasher.map(|h| h.finish().0);
    if raw_size != size {
        return Err(ArchiveError::Truncated {
            entry: path.to_string(),
            expected: size,
            actual: raw_size,
        });
    }

    let (content, writer) = match (broken, sink) {
        (Some(why), _) => (Content::Broken(why), None),
        (None, Sink::Hash(hasher)) => {
            let (digest, size) = hasher.finish();
            let content = match known {
                Some(k) if k == digest => Content::InStore { digest, size },
                Some(k) => Content::Broken(format!("its content is {digest}, its name says {k}")),
                None => Content::Broken("not staged".into()),
            };
            (content, None)
        }
        (None, Sink::Stage(writer)) => (Content::Pending, Some(writer)),
    };
    let entry = Entry {
        path: path.to_string(),
        raw_digest,
        raw_size,
        compression,
        content,
    };
    Ok((entry, writer))
}

/// Whether an error came from writing the staged blob (disk full, say)
/// rather than from the decoder: only the operating system's errors carry
/// an errno, decoders report theirs without one.
fn sink_failed(e: &io::Error) -> bool {
    e.raw_os_error().is_some()
}

fn copy(from: &mut impl Read, to: &mut Sink, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}
