//! Writing an archive in the shape Docker 25 and later write: an OCI image
//! layout (`oci-layout`, `index.json`, `blobs/sha256/...`) plus Docker's
//! `manifest.json` and `repositories`, so that every Docker since 1.10 and
//! every OCI tool reads it.
//!
//! The metadata goes first, then the blobs, each written once however many
//! images share it. A streaming reader can thus learn what it is about to
//! receive before the bulk arrives; Docker's and skopeo's readers do not
//! care about order. Blobs are copied from the store as they are; the
//! store's own invariant (a blob matches its name) is what vouches for them.
//! The output is the same bytes for the same images: mtimes are zero.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Write};

use serde::Serialize;

use crate::digest::Digest;
use crate::image::{Descriptor, Index, MEDIA_OCI_MANIFEST};
use crate::reference::Reference;
use crate::store::{Image, Store, StoreError, tagged_entry};

/// Why a save failed.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blob in the store is not the size its manifest says: the store is
    /// damaged (`rimg check` tells more).
    #[error("blob {digest} is {actual} bytes in the store, its manifest says {expected}")]
    WrongSize {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("writing the archive failed")]
    Write(#[source] io::Error),
    #[error("reading blob {digest} from the store failed")]
    ReadBlob {
        digest: Digest,
        #[source]
        source: io::Error,
    },
}

/// One image to save, with the tags to save it under (none: untagged).
pub struct SaveImage {
    pub image: Image,
    pub tags: Vec<Reference>,
}

/// One element of Docker's `manifest.json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerImage {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Writes `images` as one tar to `out`, calling `progress` with the number
/// of bytes of each blob written. Returns the bytes of blob data written.
pub fn save<W: Write>(
    store: &Store,
    images: &[SaveImage],
    out: W,
    progress: impl FnMut(u64),
) -> Result<W, SaveError> {
    save_leaving_out(store, images, &BTreeSet::new(), out, progress)
}

/// [`save`], with the blobs in `leave_out` named by the manifests but not
/// written: for a Docker Engine that already holds those layers, which its
/// classic store never opens (it finds them by chain ID).
pub fn save_leaving_out<W: Write>(
    store: &Store,
    images: &[SaveImage],
    leave_out: &BTreeSet<Digest>,
    out: W,
    mut progress: impl FnMut(u64),
) -> Result<W, SaveError> {
    let mut tar = TarWriter { out };

    let mut index = Index::default();
    let mut docker = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for SaveImage { image, tags } in images {
        let base = Descriptor::new(
            MEDIA_OCI_MANIFEST,
            image.manifest_digest.clone(),
            store
                .blob_size(&image.manifest_digest)
                .ok_or_else(|| StoreError::MissingBlob(image.manifest_digest.clone()))?,
        );
        if tags.is_empty() {
            index.manifests.push(base.clone());
        }
        for tag in tags {
            index.manifests.push(tagged_entry(&base, tag));
            if let Some(top) = image.manifest.layers.last() {
                repositories
                    .entry(tag.familiar_repository())
                    .or_default()
                    .insert(tag.tag().to_string(), top.digest.hex().to_string());
            }
        }
        docker.push(DockerImage {
            config: blob_name(&image.id),
            repo_tags: tags.iter().map(Reference::familiar).collect(),
            layers: image
                .manifest
                .layers
                .iter()
                .map(|l| blob_name(&l.digest))
                .collect(),
        });
    }

    tar.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar.file("index.json", &to_json(&index))?;
    tar.file("manifest.json", &to_json(&docker))?;
    tar.file("repositories", &to_json(&repositories))?;
    tar.dir("blobs/")?;
    tar.dir("blobs/sha256/")?;

    let mut written = BTreeSet::new();
    for SaveImage { image, .. } in images {
        let blobs = std::iter::once((&image.manifest_digest, None))
            .chain(std::iter::once((
                &image.id,
                Some(image.manifest.config.size),
            )))
            .chain(
                image
                    .manifest
                    .layers
                    .iter()
                    .map(|l| (&l.digest, Some(l.size))),
            );
        for (digest, expected) in blobs {
            if !written.insert(digest.clone()) || leave_out.contains(digest) {
                continue;
            }
            let size = tar.blob(store, digest, expected)?;
            progress(size);
        }
    }
    tar.finish()
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("metadata always serialises")
}

/// A tar stream written entry by entry, headers built with the `tar` crate.
/// Blob data is copied with `std::io::copy`, which lets the kernel move
/// the bytes (`copy_file_range`, `splice`) when `W` is a file or a pipe.
struct TarWriter<W> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    fn header(path: &str, size: u64, kind: tar::EntryType) -> io::Result<tar::Header> {
        let mut header = tar::Header::new_ustar();
        header.set_path(path)?;
        header.set_size(size);
        header.set_entry_type(kind);
        header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        Ok(header)
    }

    fn file(&mut self, path: &str, bytes: &[u8]) -> Result<(), SaveError> {
        let header = Self::header(path, bytes.len() as u64, tar::EntryType::Regular)
            .map_err(SaveError::Write)?;
        self.write(header.as_bytes())?;
        self.write(bytes)?;
        self.pad(bytes.len() as u64)
    }

    fn dir(&mut self, path: &str) -> Result<(), SaveError> {
        let header = Self::header(path, 0, tar::EntryType::Directory).map_err(SaveError::Write)?;
        self.write(header.as_bytes())
    }

    /// Copies a blob from the store; its size is checked first because the
    /// tar header promises it before the bytes follow.
    fn blob(
        &mut self,
        store: &Store,
        digest: &Digest,
        expected: Option<u64>,
    ) -> Result<u64, SaveError> {
        let file: File = store.open_blob(digest)?;
        let read_err = |source| SaveError::ReadBlob {
            digest: digest.clone(),
            source,
        };
        let size = file.metadata().map_err(read_err)?.len();
        if let Some(expected) = expected
            && expected != size
        {
            return Err(SaveError::WrongSize {
                digest: digest.clone(),
                expected,
                actual: size,
            });
        }
        let header = Self::header(&blob_name(digest), size, tar::EntryType::Regular)
            .map_err(SaveError::Write)?;
        self.write(header.as_bytes())?;
        let copied = io::copy(&mut file.take(size), &mut self.out).map_err(SaveError::Write)?;
        if copied != size {
            return Err(read_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the blob shrank to {copied} bytes while being saved"),
            )));
        }
        self.pad(size)?;
        Ok(size)
    }

    fn pad(&mut self, len: u64) -> Result<(), SaveError> {
        let rest = (512 - len % 512) % 512;
        self.write(&[0u8; 512][..rest as usize])
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SaveError> {
        self.out.write_all(bytes).map_err(SaveError::Write)
    }

    fn finish(mut self) -> Result<W, SaveError> {
        self.write(&[0u8; 1024])?;
        self.out.flush().map_err(SaveError::Write)?;
        Ok(self.out)
    }
}
