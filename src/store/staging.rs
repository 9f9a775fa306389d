//! Writing blobs: through `tmp/`, hashed, synced, checked, then committed
//! together with the tags that name them.
//!
//! A [`Staging`] is one unit of work (an import, a load, a transfer). Its
//! blobs stay in `tmp/` until [`Staging::commit`], so a failed or killed
//! write leaves nothing under `blobs/` and no tag; `prune` clears `tmp/`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};

use tempfile::{NamedTempFile, TempPath};

use super::{Result, Store, StoreError, io_err, sync_dir};
use crate::digest::{Digest, Hasher};
use crate::image::{Descriptor, ImageConfig, MAX_JSON_SIZE, MEDIA_OCI_MANIFEST, Manifest};
use crate::reference::Reference;

/// A blob being written: hashed as it goes, to a temporary file.
pub struct BlobWriter {
    file: BufWriter<NamedTempFile>,
    hasher: Hasher,
}

/// A complete, synced blob in `tmp/`, waiting for commit.
pub struct StagedBlob {
    temp: TempPath,
    pub digest: Digest,
    pub size: u64,
}

impl StagedBlob {
    /// Where the blob waits in `tmp/`, to read it back before commit (a
    /// config that arrived before the manifest naming it, say).
    pub fn path(&self) -> &std::path::Path {
        &self.temp
    }

    /// A blob already synced and checked elsewhere (a completed partial).
    pub(super) fn from_verified(temp: TempPath, digest: Digest, size: u64) -> StagedBlob {
        StagedBlob { temp, digest, size }
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// Another handle on the temporary file, for a thread that syncs what
    /// has been written so far while writing goes on (so that the final
    /// sync in [`finish`](Self::finish) has little left to do).
    pub fn sync_handle(&self) -> io::Result<File> {
        self.file.get_ref().as_file().try_clone()
    }

    /// Syncs the blob and checks it against `expected`, when one is given.
    /// A mismatch deletes the temporary file.
    pub fn finish(self, what: &str, expected: Option<&Digest>) -> Result<StagedBlob> {
        let (digest, size) = self.hasher.finish();
        if let Some(expected) = expected
            && expected != &digest
        {
            return Err(StoreError::DigestMismatch {
                what: what.to_string(),
                expected: expected.clone(),
                actual: digest,
            });
        }
        let tmp = self.file.into_inner().map_err(|e| {
            let source = io::Error::new(e.error().kind(), e.error().to_string());
            StoreError::Io {
                path: e.into_inner().get_ref().path().to_path_buf(),
                source,
            }
        })?;
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
        Ok(StagedBlob {
            temp: tmp.into_temp_path(),
            digest,
            size,
        })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.hasher.update(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// One image to tag at commit.
pub struct NewImage {
    pub manifest: Descriptor,
    pub tags: Vec<Reference>,
}

/// What a commit did to one image.
#[derive(Debug, Clone)]
pub struct Committed {
    pub id: Digest,
    pub manifest: Digest,
    pub tags: Vec<Reference>,
}

/// Blobs written together and committed together.
pub struct Staging {
    store: Store,
    _gc: File,
    staged: HashMap<Digest, StagedBlob>,
}

impl Staging {
    pub(super) fn new(store: &Store) -> Result<Staging> {
        let gc = store.lock_gc_shared()?;
        Ok(Staging {
            store: store.clone(),
            _gc: gc,
            staged: HashMap::new(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A new blob writer in the store's temporary area.
    pub fn writer(&self) -> Result<BlobWriter> {
        let dir = self.store.tmp_dir();
        let file = super::readable_temp(&dir, "blob-")?;
        Ok(BlobWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            hasher: Hasher::new(),
        })
    }

    /// Is this blob already in the store or staged here?
    pub fn has(&self, digest: &Digest) -> bool {
        self.staged.contains_key(digest) || self.store.has_blob(digest)
    }

    /// Size of a blob in the store or staged here.
    pub fn size_of(&self, digest: &Digest) -> Option<u64> {
        self.staged
            .get(digest)
            .map(|b| b.size)
            .or_else(|| self.store.blob_size(digest))
    }

    /// Adds a finished blob. A second copy of the same digest is dropped.
    pub fn add(&mut self, blob: StagedBlob) -> (Digest, u64) {
        let key = (blob.digest.clone(), blob.size);
        self.staged.entry(blob.digest.clone()).or_insert(blob);
        key
    }

    /// Stages a small blob held in memory.
    pub fn put_bytes(&mut self, bytes: &[u8]) -> Result<(Digest, u64)> {
        let digest = Digest::of(bytes);
        if self.has(&digest) {
            return Ok((digest, bytes.len() as u64));
        }
        let mut writer = self.writer()?;
        writer
            .write_all(bytes)
            .map_err(io_err(&self.store.tmp_dir()))?;
        let blob = writer.finish("blob", Some(&digest))?;
        Ok(self.add(blob))
    }

    /// Stages a manifest for `config` and `layers` and returns its
    /// descriptor.
    pub fn put_manifest(&mut self, manifest: &Manifest) -> Result<Descriptor> {
        let (digest, size) = self.put_bytes(&manifest.to_bytes())?;
        Ok(Descriptor::new(MEDIA_OCI_MANIFEST, digest, size))
    }

    /// Refuses to tag an image unless its config parses as an image config
    /// and lists the manifest's layers as its DiffIDs. Every command that
    /// lists the store reads every config, so one that does not parse (a
    /// transfer peer that named a layer as its config, say) would make
    /// `images` fail for all of them; and this store keeps layers
    /// uncompressed, so a layer's digest is its DiffID: an image whose
    /// config describes other layers is one no engine would load.
    fn check_config(&self, manifest: &Manifest) -> Result<()> {
        let digest = &manifest.config.digest;
        let corrupt = |reason: String| StoreError::Corrupt {
            what: format!("config {digest}"),
            reason,
        };
        let bytes = match self.staged.get(digest) {
            Some(b) if b.size > MAX_JSON_SIZE => {
                return Err(corrupt(format!("larger than {MAX_JSON_SIZE} bytes")));
            }
            Some(b) => std::fs::read(&b.temp).map_err(io_err(&b.temp))?,
            None => self.store.read_json_blob(digest)?,
        };
        let config = ImageConfig::parse(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let layers = manifest.layers.iter().map(|l| &l.digest);
        if !layers.eq(&config.rootfs.diff_ids) {
            return Err(corrupt(format!(
                "its DiffIDs ({} of them) are not the manifest's {} layer(s)",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        Ok(())
    }

    /// Moves every staged blob into `blobs/`, then tags the images in one
    /// index change. Every blob an image names must be present by then.
    pub fn commit(mut self, images: Vec<NewImage>) -> Result<Vec<Committed>> {
        let mut manifests = Vec::new();
        for image in &images {
            let bytes = match self.staged.get(&image.manifest.digest) {
                Some(b) => std::fs::read(&b.temp).map_err(io_err(&b.temp))?,
                None => self.store.read_json_blob(&image.manifest.digest)?,
            };
            let manifest: Manifest =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    what: format!("manifest {}", image.manifest.digest),
                    reason: e.to_string(),
                })?;
            for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
                match self.size_of(&desc.digest) {
                    None => return Err(StoreError::MissingBlob(desc.digest.clone())),
                    Some(size) if size != desc.size => {
                        return Err(StoreError::Corrupt {
                            what: format!("blob {}", desc.digest),
                            reason: format!("{size} bytes, manifest says {}", desc.size),
                        });
                    }
                    Some(_) => {}
                }
            }
            self.check_config(&manifest)?;
            manifests.push(manifest);
        }

        // The index change is worked out and checked before any blob moves,
        // so a change that cannot be written leaves the store as it was.
        // Blobs alone (a transfer storing each layer as it arrives) leave
        // the index as it is.
        let lock = if images.is_empty() {
            None
        } else {
            let mut lock = self.store.edit_index()?;
            for image in images.iter().filter(|i| i.tags.is_empty()) {
                lock.keep_untagged(&image.manifest);
            }
            let tags: Vec<_> = images
                .iter()
                .flat_map(|i| i.tags.iter().map(move |t| (t, &i.manifest)))
                .collect();
            lock.set_tags(&tags);
            lock.check_size()?;
            Some(lock)
        };

        let blobs_dir = self.store.blobs_dir();
        for (digest, blob) in self.staged.drain() {
            let target = self.store.blob_path(&digest);
            if target.exists() {
                continue;
            }
            blob.temp.persist(&target).map_err(|e| StoreError::Io {
                path: target.clone(),
                source: e.error,
            })?;
        }
        sync_dir(&blobs_dir)?;

        let Some(lock) = lock else {
            return Ok(Vec::new());
        };
        let mut committed = Vec::new();
        for (image, manifest) in images.into_iter().zip(manifests) {
            committed.push(Committed {
                id: manifest.config.digest,
                manifest: image.manifest.digest,
                tags: image.tags,
            });
        }
        lock.commit()?;
        Ok(committed)
    }
}
