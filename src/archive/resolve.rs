//! From a scanned archive to the images it holds.
//!
//! Docker archives list their images in `manifest.json` by path; OCI
//! archives in `index.json` by digest, possibly through nested indexes.
//! Docker 25+ archives have both and say the same thing twice; we read
//! `manifest.json` then, as Docker does. Every path is checked to stay
//! inside the archive, every blob against the digest that names it, and
//! every layer against the DiffID the config lists for it.

use std::collections::BTreeMap;

use serde::Deserialize;
use tracing::{debug, warn};

use super::ArchiveError;
use super::paths::{self, PathProblem};
use super::scan::{Content, Entry, Scanned};
use crate::compress::Compression;
use crate::digest::Digest;
use crate::image::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, Descriptor, ImageConfig, Index, MAX_JSON_SIZE,
    MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_MANIFEST_LIST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
    Manifest, Platform,
};
use crate::reference::Reference;
use crate::store::Store;

/// Nested indexes deeper than this are refused (real ones nest once).
const MAX_DEPTH: usize = 8;

/// One image found in the archive, checked, ready to commit.
pub struct Plan {
    /// The entry the config came from.
    pub config_entry: usize,
    pub config_digest: Digest,
    pub config_size: u64,
    /// The entry of each layer, bottom first, with its DiffID and size.
    pub layers: Vec<(usize, Digest, u64)>,
    pub tags: Vec<Reference>,
    pub platform: Option<Platform>,
}

/// Finds and checks every image in `scanned`.
pub fn resolve(scanned: &Scanned, store: &Store) -> Result<Vec<Plan>, ArchiveError> {
    let reader = Resolver { scanned, store };
    if let Some(index) = reader.find("manifest.json")? {
        return reader.docker(index);
    }
    if let Some(index) = reader.find("index.json")? {
        return reader.oci(index);
    }
    Err(ArchiveError::NoManifest)
}

struct Resolver<'a> {
    scanned: &'a Scanned,
    store: &'a Store,
}

/// One element of a Docker `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl<'a> Resolver<'a> {
    fn find(&self, path: &str) -> Result<Option<usize>, ArchiveError> {
        self.scanned
            .lookup(path)
            .map_err(|why| ArchiveError::UnsafePath {
                entry: path.to_string(),
                path: path.to_string(),
                why,
            })
    }

    /// The entry `path` names, as `named_by` gave it.
    fn entry_at(&self, named_by: &str, path: &str) -> Result<(usize, &'a Entry), ArchiveError> {
        let unsafe_path = |why: PathProblem| ArchiveError::UnsafePath {
            entry: named_by.to_string(),
            path: path.to_string(),
            why,
        };
        let normal = paths::normalize(path).map_err(unsafe_path)?;
        let index = self.scanned.lookup(&normal).map_err(unsafe_path)?;
        let entry = index.and_then(|i| self.scanned.entry(i).map(|e| (i, e)));
        entry.ok_or_else(|| ArchiveError::Missing {
            entry: named_by.to_string(),
            path: path.to_string(),
        })
    }

    /// The bytes of a small JSON entry, read back from where it was staged.
    fn json_bytes(&self, entry: &Entry) -> Result<Vec<u8>, ArchiveError> {
        if entry.raw_size > MAX_JSON_SIZE {
            return Err(ArchiveError::TooLarge {
                entry: entry.path.clone(),
                size: entry.raw_size,
                limit: MAX_JSON_SIZE,
            });
        }
        if entry.compression != Compression::None {
            return Err(ArchiveError::Json {
                entry: entry.path.clone(),
                reason: format!("it is {}-compressed, not JSON", entry.compression),
            });
        }
        match &entry.content {
            Content::Staged(blob) => std::fs::read(blob.path()).map_err(|e| ArchiveError::Io {
                path: blob.path().to_path_buf(),
                source: e,
            }),
            Content::InStore { digest, .. } => Ok(self.store.read_json_blob(digest)?),
            Content::Pending => Err(ArchiveError::BadBlob {
                entry: entry.path.clone(),
                why: "it was never synced".into(),
            }),
            Content::Broken(why) => Err(ArchiveError::BadBlob {
                entry: entry.path.clone(),
                why: why.clone(),
            }),
        }
    }

    fn raw_digest(&self, entry: &Entry) -> Result<Digest, ArchiveError> {
        entry.raw_digest().map_err(|why| ArchiveError::BadBlob {
            entry: entry.path.clone(),
            why,
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, entry: &Entry) -> Result<T, ArchiveError> {
        let bytes = self.json_bytes(entry)?;
        serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Json {
            entry: entry.path.clone(),
            reason: e.to_string(),
        })
    }

    fn docker(&self, index: usize) -> Result<Vec<Plan>, ArchiveError> {
        let manifest = self.scanned.entry(index).expect("found above");
        let images: Vec<DockerImage> = self.parse(manifest)?;
        let mut plans = Vec::new();
        for image in images {
            let (config_entry, config) = self.entry_at(&manifest.path, &image.config)?;
            let layers = image
                .layers
                .iter()
                .map(|path| self.entry_at(&manifest.path, path))
                .collect::<Result<Vec<_>, _>>()?;
            let tags = image
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|tag| parse_tag(&manifest.path, tag))
                .collect::<Result<Vec<_>, _>>()?;
            plans.push(self.plan(config_entry, config, &layers, tags)?);
        }
        Ok(plans)
    }

    /// Checks a config and its layers against each other.
    fn plan(
        &self,
        config_entry: usize,
        config: &Entry,
        layers: &[(usize, &Entry)],
        tags: Vec<Reference>,
    ) -> Result<Plan, ArchiveError> {
        let bytes = self.json_bytes(config)?;
        let parsed = ImageConfig::parse(&bytes).map_err(|e| ArchiveError::Json {
            entry: config.path.clone(),
            reason: e.to_string(),
        })?;
        let diff_ids = &parsed.rootfs.diff_ids;
        if diff_ids.len() != layers.len() {
            return Err(ArchiveError::LayerCount {
                entry: config.path.clone(),
                layers: layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let mut checked = Vec::new();
        for ((index, layer), diff_id) in layers.iter().zip(diff_ids) {
            let (digest, size) = layer
                .content_digest()
                .map_err(|why| ArchiveError::BadBlob {
                    entry: layer.path.clone(),
                    why,
                })?;
            if &digest != diff_id {
                return Err(ArchiveError::DigestMismatch {
                    entry: layer.path.clone(),
                    expected: diff_id.clone(),
                    actual: digest,
                    said_by: format!("the DiffID in {}", config.path),
                });
            }
            checked.push((*index, digest, size));
        }
        let platform = (!parsed.os.is_empty()).then(|| Platform {
            architecture: parsed.architecture.clone(),
            os: parsed.os.clone(),
            variant: parsed.variant.clone(),
        });
        Ok(Plan {
            config_entry,
            config_digest: self.raw_digest(config)?,
            config_size: config.raw_size,
            layers: checked,
            tags,
            platform,
        })
    }

    fn oci(&self, index: usize) -> Result<Vec<Plan>, ArchiveError> {
        let entry = self.scanned.entry(index).expect("found above");
        let top: Index = self.parse(entry)?;
        let mut plans = Vec::new();
        for desc in &top.manifests {
            let tag = oci_tag(&entry.path, desc)?;
            let mut found = Vec::new();
            self.collect(&entry.path, desc, 0, &mut found)?;
            let chosen = match (&tag, found.len()) {
                (_, 0) => {
                    return Err(ArchiveError::Unsupported {
                        entry: entry.path.clone(),
                        what: format!("{} holds no image manifest", desc.digest),
                    });
                }
                (Some(_), n) if n > 1 => vec![pick_platform(&entry.path, desc, found)?],
                _ => found,
            };
            for (platform, manifest) in chosen {
                let mut plan = self.oci_image(&manifest)?;
                plan.tags.extend(tag.clone());
                if plan.platform.is_none() {
                    plan.platform = platform;
                }
                plans.push(plan);
            }
        }
        Ok(plans)
    }

    /// The entry holding the blob `desc` names, checked against it.
    fn blob(&self, named_by: &str, desc: &Descriptor) -> Result<(usize, &'a Entry), ArchiveError> {
        let path = format!("blobs/sha256/{}", desc.digest.hex());
        let (index, entry) = self.entry_at(named_by, &path)?;
        self.check_raw(named_by, desc, entry)?;
        Ok((index, entry))
    }

    fn check_raw(
        &self,
        named_by: &str,
        desc: &Descriptor,
        entry: &Entry,
    ) -> Result<(), ArchiveError> {
        let raw_digest = self.raw_digest(entry)?;
        if raw_digest != desc.digest {
            return Err(ArchiveError::DigestMismatch {
                entry: entry.path.clone(),
                expected: desc.digest.clone(),
                actual: raw_digest,
                said_by: named_by.to_string(),
            });
        }
        if entry.raw_size != desc.size {
            return Err(ArchiveError::SizeMismatch {
                entry: entry.path.clone(),
                expected: desc.size,
                actual: entry.raw_size,
                said_by: named_by.to_string(),
            });
        }
        Ok(())
    }

    /// Walks `desc` down through nested indexes to image manifests.
    fn collect(
        &self,
        named_by: &str,
        desc: &Descriptor,
        depth: usize,
        found: &mut Vec<(Option<Platform>, Manifest)>,
    ) -> Result<(), ArchiveError> {
        if depth > MAX_DEPTH {
            return Err(ArchiveError::Unsupported {
                entry: named_by.to_string(),
                what: format!("indexes nested more than {MAX_DEPTH} deep"),
            });
        }
        let (_, entry) = self.blob(named_by, desc)?;
        match desc.media_type.as_str() {
            MEDIA_OCI_INDEX | MEDIA_DOCKER_MANIFEST_LIST => {
                let index: Index = self.parse(entry)?;
                for child in &index.manifests {
                    if child.platform.as_ref().is_some_and(|p| p.os == "unknown") {
                        debug!(digest = %child.digest, "skipping an attestation manifest");
                        continue;
                    }
                    self.collect(&entry.path, child, depth + 1, found)?;
                }
            }
            MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST => {
                found.push((desc.platform.clone(), self.parse(entry)?));
            }
            other => {
                return Err(ArchiveError::Unsupported {
                    entry: named_by.to_string(),
                    what: format!("media type {other:?} of {}", desc.digest),
                });
            }
        }
        Ok(())
    }

    fn oci_image(&self, manifest: &Manifest) -> Result<Plan, ArchiveError> {
        let named_by = "the image manifest";
        let (config_entry, config) = self.blob(named_by, &manifest.config)?;
        let layers = manifest
            .layers
            .iter()
            .map(|desc| self.blob(named_by, desc))
            .collect::<Result<Vec<_>, _>>()?;
        self.plan(config_entry, config, &layers, Vec::new())
    }
}

/// The name an OCI index entry gives its image, if any.
fn oci_tag(entry: &str, desc: &Descriptor) -> Result<Option<Reference>, ArchiveError> {
    if let Some(name) = desc.annotations.get(ANNOTATION_IMAGE_NAME) {
        return parse_tag(entry, name).map(Some);
    }
    let Some(name) = desc.annotations.get(ANNOTATION_REF_NAME) else {
        return Ok(None);
    };
    // The OCI spec lets a ref name be just a tag ("1"), which names no
    // repository; such an image is loaded untagged rather than guessed at.
    if !name.contains(':') && !name.contains('/') {
        warn!("{entry}: ref name {name:?} has no repository; loading that image untagged");
        return Ok(None);
    }
    parse_tag(entry, name).map(Some)
}

fn parse_tag(entry: &str, tag: &str) -> Result<Reference, ArchiveError> {
    tag.parse().map_err(|source| ArchiveError::InvalidTag {
        entry: entry.to_string(),
        tag: tag.to_string(),
        source,
    })
}

/// From the images of a multi-platform index, the one for this host.
fn pick_platform(
    entry: &str,
    desc: &Descriptor,
    found: Vec<(Option<Platform>, Manifest)>,
) -> Result<(Option<Platform>, Manifest), ArchiveError> {
    let (os, arch) = crate::image::host_platform();
    let count = found.len();
    let mut matching: Vec<_> = found
        .into_iter()
        .filter(|(p, _)| {
            p.as_ref()
                .is_some_and(|p| p.os == os && p.architecture == arch)
        })
        .collect();
    if matching.len() == 1 {
        return Ok(matching.remove(0));
    }
    Err(ArchiveError::Unsupported {
        entry: entry.to_string(),
        what: format!(
            "{} holds {count} images and {} of them are for {os}/{arch}, so the tag names none",
            desc.digest,
            matching.len()
        ),
    })
}

/// Folds plans for the same image (same config and layers) into one with
/// all their tags.
pub fn merge(plans: Vec<Plan>) -> Vec<Plan> {
    let mut merged: BTreeMap<(Digest, Vec<Digest>), Plan> = BTreeMap::new();
    let mut order = Vec::new();
    for plan in plans {
        let key = (
            plan.config_digest.clone(),
            plan.layers.iter().map(|l| l.1.clone()).collect(),
        );
        match merged.get_mut(&key) {
            Some(existing) => {
                for tag in plan.tags {
                    if !existing.tags.contains(&tag) {
                        existing.tags.push(tag);
                    }
                }
            }
            None => {
                order.push(key.clone());
                merged.insert(key, plan);
            }
        }
    }
    order
        .into_iter()
        .filter_map(|k| merged.remove(&k))
        .collect()
}
