//! `index.json`: which manifests the store holds and under which tags.
//!
//! One entry per tag, annotated with the full name
//! (`io.containerd.image.name`) and the familiar `name:tag`
//! (`org.opencontainers.image.ref.name`, so that
//! `skopeo inspect oci:ROOT:busybox:latest` finds it). An image with no tag
//! has one entry without annotations. Docker keeps an image whose last tag
//! moved to another image as a dangling `<none>` image, and so do we.

use std::collections::BTreeMap;
use std::fs::File;

use super::{Result, Store, StoreError, io_err};
use crate::digest::Digest;
use crate::image::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, Descriptor, Index, MAX_JSON_SIZE,
    MEDIA_OCI_MANIFEST,
};
use crate::reference::Reference;

/// One image as the index lists it: a manifest and its tags.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    pub manifest: Digest,
    pub manifest_size: u64,
    /// The config digest: the image ID.
    pub id: Digest,
    pub tags: Vec<Reference>,
}

impl ImageRecord {
    pub(crate) fn describe(&self) -> String {
        match self.tags.first() {
            Some(tag) => tag.familiar(),
            None => format!("image {}", self.id.short()),
        }
    }
}

/// A change to the index, applied under its lock.
pub struct IndexLock<'a> {
    store: &'a Store,
    _file: File,
    pub index: Index,
}

impl IndexLock<'_> {
    /// Points `tag` at `manifest`. Returns the image the tag left, if any.
    pub fn set_tag(&mut self, tag: &Reference, manifest: &Descriptor) -> Option<Digest> {
        let previous = self.untag(tag);
        // An untagged entry for the same manifest is now redundant.
        self.index
            .manifests
            .retain(|d| !(d.digest == manifest.digest && entry_name(d).is_none()));
        self.index.manifests.push(tagged_entry(manifest, tag));
        previous.filter(|p| p != &manifest.digest)
    }

    /// Points each tag at its manifest, as [`IndexLock::set_tag`] one by one
    /// would (the last assignment of a tag wins), but reading each entry's
    /// name once: an archive may carry thousands of tags, and tagging them
    /// one at a time is quadratic while the index lock is held.
    pub fn set_tags(&mut self, tags: &[(&Reference, &Descriptor)]) {
        use std::collections::{HashMap, HashSet};
        let mut wanted: HashMap<&Reference, &Descriptor> = HashMap::new();
        let mut order = Vec::new();
        for &(tag, manifest) in tags {
            if wanted.insert(tag, manifest).is_none() {
                order.push(tag);
            }
        }
        let tagged: HashSet<&Digest> = wanted.values().map(|m| &m.digest).collect();
        let mut left = Vec::new();
        self.index.manifests.retain(|d| match entry_name(d) {
            Some(name) if wanted.contains_key(&name) => {
                left.push((d.digest.clone(), d.size));
                false
            }
            // An untagged entry for a manifest about to be tagged.
            None => !tagged.contains(&d.digest),
            Some(_) => true,
        });
        for tag in order {
            self.index.manifests.push(tagged_entry(wanted[tag], tag));
        }
        // An image whose last tag moved stays, untagged.
        let mut present: HashSet<Digest> = self
            .index
            .manifests
            .iter()
            .map(|d| d.digest.clone())
            .collect();
        for (digest, size) in left {
            if present.insert(digest.clone()) {
                self.index.manifests.push(untagged_entry(&digest, size));
            }
        }
    }

    /// Removes `tag`. The image it named stays, untagged, if nothing else
    /// names it (Docker's dangling image). Returns its manifest digest.
    pub fn untag(&mut self, tag: &Reference) -> Option<Digest> {
        let position = self
            .index
            .manifests
            .iter()
            .position(|d| entry_name(d).as_ref() == Some(tag))?;
        let removed = self.index.manifests.remove(position);
        if !self
            .index
            .manifests
            .iter()
            .any(|d| d.digest == removed.digest)
        {
            self.index
                .manifests
                .push(untagged_entry(&removed.digest, removed.size));
        }
        Some(removed.digest)
    }

    /// Keeps `manifest` as an image even though no tag names it.
    pub fn keep_untagged(&mut self, manifest: &Descriptor) {
        if !self
            .index
            .manifests
            .iter()
            .any(|d| d.digest == manifest.digest)
        {
            self.index
                .manifests
                .push(untagged_entry(&manifest.digest, manifest.size));
        }
    }

    /// Drops every entry for `manifest`, tagged or not.
    pub fn remove_image(&mut self, manifest: &Digest) {
        self.index.manifests.retain(|d| &d.digest != manifest);
    }

    /// Fails, before anything is written, when the changed index would be
    /// larger than a store can read back.
    pub fn check_size(&self) -> Result<()> {
        index_bytes(&self.index).map(drop)
    }

    /// Writes the index and releases the lock.
    pub fn commit(self) -> Result<()> {
        self.store.write_index(&self.index)
    }
}

/// An index entry naming `manifest` as `tag`, with both annotations.
pub(crate) fn tagged_entry(manifest: &Descriptor, tag: &Reference) -> Descriptor {
    let mut entry = Descriptor::new(MEDIA_OCI_MANIFEST, manifest.digest.clone(), manifest.size);
    entry.platform = manifest.platform.clone();
    entry
        .annotations
        .insert(ANNOTATION_IMAGE_NAME.to_string(), tag.to_string());
    entry
        .annotations
        .insert(ANNOTATION_REF_NAME.to_string(), tag.familiar());
    entry
}

fn untagged_entry(digest: &Digest, size: u64) -> Descriptor {
    Descriptor::new(MEDIA_OCI_MANIFEST, digest.clone(), size)
}

/// The tag an index entry stands for, from either annotation.
fn entry_name(entry: &Descriptor) -> Option<Reference> {
    entry
        .annotations
        .get(ANNOTATION_IMAGE_NAME)
        .or_else(|| entry.annotations.get(ANNOTATION_REF_NAME))
        .and_then(|n| n.parse().ok())
}

/// The largest `index.json` a store reads or writes.
const MAX_INDEX_SIZE: u64 = MAX_JSON_SIZE * 4;

/// The index as written, or an error when it would be larger than
/// [`MAX_INDEX_SIZE`]: never write an index that `read_index` refuses, which
/// would lock the user out of the whole store. The bytes are capped as they
/// are produced, so a huge index is never built in memory.
fn index_bytes(index: &Index) -> Result<Vec<u8>> {
    struct Capped(Vec<u8>);
    impl std::io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if (self.0.len() + buf.len()) as u64 > MAX_INDEX_SIZE {
                return Err(std::io::Error::other("index too large"));
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Capped(Vec::new());
    serde_json::to_writer_pretty(&mut out, index).map_err(|_| StoreError::IndexTooLarge {
        limit: MAX_INDEX_SIZE,
    })?;
    out.0.push(b'\n');
    if out.0.len() as u64 > MAX_INDEX_SIZE {
        return Err(StoreError::IndexTooLarge {
            limit: MAX_INDEX_SIZE,
        });
    }
    Ok(out.0)
}

impl Store {
    fn index_path(&self) -> std::path::PathBuf {
        self.root.join("index.json")
    }

    pub fn read_index(&self) -> Result<Index> {
        let path = self.index_path();
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        if bytes.len() as u64 > MAX_INDEX_SIZE {
            return Err(StoreError::Corrupt {
                what: path.display().to_string(),
                reason: "too large".into(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            what: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    pub(super) fn write_index(&self, index: &Index) -> Result<()> {
        let bytes = index_bytes(index)?;
        self.write_file_atomic(&self.index_path(), &bytes)
    }

    pub(super) fn lock_index(&self) -> Result<File> {
        let file = self.lock_file("index.lock")?;
        file.lock()
            .map_err(io_err(&self.state_dir().join("index.lock")))?;
        Ok(file)
    }

    /// Takes the index lock and reads the index, for a change.
    pub fn edit_index(&self) -> Result<IndexLock<'_>> {
        let file = self.lock_index()?;
        let index = self.read_index()?;
        Ok(IndexLock {
            store: self,
            _file: file,
            index,
        })
    }

    /// The images in the index, one record per manifest, tags sorted.
    pub fn records(&self) -> Result<Vec<ImageRecord>> {
        let index = self.read_index()?;
        let mut by_manifest: BTreeMap<Digest, ImageRecord> = BTreeMap::new();
        let mut order = Vec::new();
        for entry in &index.manifests {
            let record = match by_manifest.get_mut(&entry.digest) {
                Some(r) => r,
                None => {
                    let id = self.config_digest(&entry.digest)?;
                    order.push(entry.digest.clone());
                    by_manifest
                        .entry(entry.digest.clone())
                        .or_insert(ImageRecord {
                            manifest: entry.digest.clone(),
                            manifest_size: entry.size,
                            id,
                            tags: Vec::new(),
                        })
                }
            };
            if let Some(name) = entry_name(entry)
                && !record.tags.contains(&name)
            {
                record.tags.push(name);
            }
        }
        Ok(order
            .into_iter()
            .filter_map(|d| by_manifest.remove(&d))
            .map(|mut r| {
                r.tags.sort();
                r
            })
            .collect())
    }

    fn config_digest(&self, manifest: &Digest) -> Result<Digest> {
        #[derive(serde::Deserialize)]
        struct ConfigOnly {
            config: ConfigRef,
        }
        #[derive(serde::Deserialize)]
        struct ConfigRef {
            digest: Digest,
        }
        let bytes = self.read_json_blob(manifest)?;
        let parsed: ConfigOnly =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                what: format!("manifest {manifest}"),
                reason: e.to_string(),
            })?;
        Ok(parsed.config.digest)
    }
}
