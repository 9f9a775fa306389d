//! Image archives in and out: `load` reads every shape Docker, podman and
//! skopeo write; `save` writes the Docker 25+ shape every tool reads.
//!
//! Reading is one streaming pass ([`scan`]) that stages every entry in the
//! store's temporary area, then a check of what the archive's
//! `manifest.json` or `index.json` says against what was staged
//! ([`resolve`]), then one commit. Any error before the commit drops the
//! staging area, so a failed load leaves the store exactly as it was: no
//! blob, no tag, no untagged image.

mod guard;
mod paths;
mod resolve;
mod scan;
mod write;

use std::io::{self, Read};
use std::path::PathBuf;

use tracing::debug;

pub use paths::PathProblem;
pub use write::{SaveError, SaveImage, save, save_leaving_out};

use crate::compress::{self, OpenError};
use crate::digest::Digest;
use crate::image::{Descriptor, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, Manifest};
use crate::reference::{InvalidReference, Reference};
use crate::store::{NewImage, Store, StoreError};

/// Why an archive could not be loaded. Each variant names the archive
/// entry it is about, and for digests both values.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The input is not a tar, or not a compression we read.
    #[error("cannot read the archive: {0}")]
    Open(#[from] OpenError),
    /// Reading the stream failed at or after `entry` (a truncated or
    /// corrupt stream).
    #[error("reading the archive failed at {entry}")]
    Read {
        entry: String,
        #[source]
        source: io::Error,
    },
    /// The next header could not be read: the stream ends early or is
    /// not a tar from here on.
    #[error("the archive is truncated or damaged after entry {after}")]
    Damaged {
        after: String,
        #[source]
        source: io::Error,
    },
    /// The stream ended inside an entry.
    #[error(
        "the archive is truncated: entry {entry} should be {expected} bytes, the stream ended after {actual}"
    )]
    Truncated {
        entry: String,
        expected: u64,
        actual: u64,
    },
    /// An entry of the tar itself has an absolute or climbing name.
    #[error("archive entry {entry:?} {why}")]
    UnsafeEntry { entry: String, why: PathProblem },
    /// A path named by `manifest.json` or `index.json` would leave the
    /// archive.
    #[error("{entry}: path {path:?} {why}")]
    UnsafePath {
        entry: String,
        path: String,
        why: PathProblem,
    },
    /// A path or digest named by the archive's metadata is not in it.
    #[error("{entry} names {path}, which is not in the archive")]
    Missing { entry: String, path: String },
    /// Bytes that do not hash to the digest that names them.
    #[error("{entry}: digest mismatch: {said_by} says {expected}, the content is {actual}")]
    DigestMismatch {
        entry: String,
        expected: Digest,
        actual: Digest,
        said_by: String,
    },
    #[error("{entry}: size mismatch: {said_by} says {expected} bytes, the entry has {actual}")]
    SizeMismatch {
        entry: String,
        expected: u64,
        actual: u64,
        said_by: String,
    },
    /// An image whose layer list and config disagree.
    #[error("{entry}: the image has {layers} layer(s) but its config lists {diff_ids} diff_ids")]
    LayerCount {
        entry: String,
        layers: usize,
        diff_ids: usize,
    },
    /// A needed entry whose content could not be read (a corrupt layer).
    #[error("{entry} cannot be used: {why}")]
    BadBlob { entry: String, why: String },
    #[error("{entry} is not valid JSON of the expected shape: {reason}")]
    Json { entry: String, reason: String },
    #[error("{entry} is {size} bytes, more than the {limit} allowed for a JSON document")]
    TooLarge {
        entry: String,
        size: u64,
        limit: u64,
    },
    #[error("{entry}: invalid tag {tag:?}")]
    InvalidTag {
        entry: String,
        tag: String,
        #[source]
        source: InvalidReference,
    },
    #[error("{entry}: unsupported: {what}")]
    Unsupported { entry: String, what: String },
    #[error("the archive has neither manifest.json nor index.json, so it names no image")]
    NoManifest,
    #[error("the archive has more than {0} entries")]
    TooManyEntries(usize),
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ArchiveError {
    fn read(entry: &str, source: io::Error) -> ArchiveError {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            return ArchiveError::Read {
                entry: entry.to_string(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the stream ends early (truncated?): {source}"),
                ),
            };
        }
        ArchiveError::Read {
            entry: entry.to_string(),
            source,
        }
    }
}

/// One image a load committed.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The config digest: the image ID.
    pub id: Digest,
    pub manifest: Digest,
    pub tags: Vec<Reference>,
    /// Tags that named another image before, with that image's ID.
    pub moved: Vec<(Reference, Digest)>,
}

/// Loads every image of the archive read from `input` (plain or
/// compressed) into `store`. Either every image is committed or none.
pub fn load<R: Read + Send>(store: &Store, input: R) -> Result<Vec<Loaded>, ArchiveError> {
    let (tar, compression) = compress::open_tar(input)?;
    debug!(%compression, "reading an archive");

    let mut staging = store.stage()?;
    let mut scanned = scan::scan(tar, &staging)?;
    debug!(
        entries = scanned.entries.len(),
        links = scanned.links.len(),
        "archive read"
    );
    let plans = resolve::merge(resolve::resolve(&scanned, store)?);

    let before = store.records()?;
    let mut images = Vec::new();
    for plan in &plans {
        for index in std::iter::once(plan.config_entry).chain(plan.layers.iter().map(|l| l.0)) {
            if let Some(entry) = scanned.entries.get_mut(index).and_then(Option::take)
                && let scan::Content::Staged(blob) = entry.content
            {
                staging.add(blob);
            }
        }
        let config = Descriptor::new(
            MEDIA_OCI_CONFIG,
            plan.config_digest.clone(),
            plan.config_size,
        );
        let layers = plan
            .layers
            .iter()
            .map(|(_, digest, size)| Descriptor::new(MEDIA_OCI_LAYER, digest.clone(), *size))
            .collect();
        let mut manifest = staging.put_manifest(&Manifest::new(config, layers))?;
        manifest.platform = plan.platform.clone();
        images.push(NewImage {
            manifest,
            tags: plan.tags.clone(),
        });
    }
    drop(scanned);

    let committed = staging.commit(images)?;
    Ok(committed
        .into_iter()
        .map(|c| {
            let moved = c
                .tags
                .iter()
                .filter_map(|tag| {
                    let old = before.iter().find(|r| r.tags.contains(tag))?;
                    (old.manifest != c.manifest).then(|| (tag.clone(), old.id.clone()))
                })
                .collect();
            Loaded {
                id: c.id,
                manifest: c.manifest,
                tags: c.tags,
                moved,
            }
        })
        .collect())
}
