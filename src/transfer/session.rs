//! The protocol's decisions, without sockets: what a receiver answers to
//! each message, which blobs it wants, when an image is complete, and what
//! a sender accepts as an answer.
//!
//! The async code in `send.rs` and `receive.rs` moves bytes and calls into
//! this; everything a peer can get wrong is caught here, where it can be
//! unit-tested message by message.

use std::collections::{BTreeMap, BTreeSet};

use crate::digest::Digest;
use crate::image::{
    MAX_JSON_SIZE, MEDIA_DOCKER_CONFIG, MEDIA_DOCKER_LAYER, MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, MEDIA_OCI_MANIFEST, Manifest,
};
use crate::reference::Reference;
use crate::store::Store;

use super::wire::{
    DeferredImage, MIN_VERSION, Message, OfferedImage, VERSION, WantedBlob, WantedDeferred,
};

/// Bounds a receiver puts on what a sender may ask of it.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_images: usize,
    pub max_layers: usize,
    pub max_blob_size: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_images: 256,
            max_layers: 1024,
            max_blob_size: 64 << 30,
        }
    }
}

/// What a peer did wrong, or why the transfer cannot go on. Each variant
/// names the digest or image it is about.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("expected a {expected} message, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("peer speaks protocol version {0}; this rimg speaks version {VERSION}")]
    Version(u32),
    #[error("wrong or missing bootstrap token")]
    BadToken,
    #[error("offer has {got} images; the limit is {max}")]
    TooManyImages { got: usize, max: usize },
    #[error("image {image} has {got} layers; the limit is {max}")]
    TooManyLayers {
        image: usize,
        got: usize,
        max: usize,
    },
    #[error("image {image} in the offer: {reason}")]
    BadManifest { image: usize, reason: String },
    #[error("image {image} in the offer: invalid name {name:?}")]
    BadName { image: usize, name: String },
    #[error("blob {digest} is {size} bytes; this receiver accepts at most {max}")]
    BlobTooLarge { digest: Digest, size: u64, max: u64 },
    #[error("blob {0} was not asked for")]
    NotWanted(Digest),
    #[error("blob {0} is sent twice")]
    Duplicate(Digest),
    #[error("blob {digest} starts at byte {got}; the receiver asked for byte {expected}")]
    WrongOffset {
        digest: Digest,
        expected: u64,
        got: u64,
    },
    #[error("the same blob {digest} is offered with sizes {a} and {b}")]
    SizeConflict { digest: Digest, a: u64, b: u64 },
    #[error("the receiver reported: {0}")]
    Peer(String),
    #[error("image {image}: {reason}")]
    Deferred { image: usize, reason: String },
    #[error("image {image}'s manifest does not match what was offered: {reason}")]
    ManifestMismatch { image: usize, reason: String },
    #[error("blob {0} was asked for without a size, and its stream gave none")]
    NoSize(Digest),
}

/// What a receiver can look up about its store.
pub trait BlobLookup {
    fn has(&self, digest: &Digest) -> bool;
    /// Bytes held from an interrupted transfer (zero when none).
    fn partial(&self, digest: &Digest, size: u64) -> u64;
    /// The size of a blob held.
    fn size(&self, digest: &Digest) -> Option<u64>;
}

impl BlobLookup for Store {
    fn has(&self, digest: &Digest) -> bool {
        self.has_blob(digest)
    }

    fn partial(&self, digest: &Digest, size: u64) -> u64 {
        self.partial_len(digest, size)
    }

    fn size(&self, digest: &Digest) -> Option<u64> {
        self.blob_size(digest)
    }
}

/// One offered image, checked. A deferred image has no manifest until the
/// sender's `manifests` message.
#[derive(Debug, Clone)]
pub struct PlannedImage {
    pub manifest_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub manifest: Option<Manifest>,
    pub names: Vec<Reference>,
    pub deferred: Option<DeferredImage>,
    missing: BTreeSet<Digest>,
    committed: bool,
}

impl PlannedImage {
    /// The config and layer digests, from the manifest or the deferred
    /// offer.
    pub fn blob_digests(&self) -> Vec<Digest> {
        match (&self.manifest, &self.deferred) {
            (Some(m), _) => std::iter::once(&m.config)
                .chain(&m.layers)
                .map(|d| d.digest.clone())
                .collect(),
            (None, Some(d)) => std::iter::once(&d.id).chain(&d.diff_ids).cloned().collect(),
            (None, None) => Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Wanted {
    /// `None` for a blob of a deferred image until its stream or the
    /// manifest says.
    size: Option<u64>,
    offset: u64,
    started: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitOffer,
    Receiving,
}

/// The receiver's side of one transfer.
#[derive(Debug)]
pub struct ReceiverSession {
    state: State,
    version: u32,
    manifests_received: bool,
    token: Option<String>,
    limits: Limits,
    images: Vec<PlannedImage>,
    wanted: BTreeMap<Digest, Wanted>,
}

/// The receiver's answer to an offer.
#[derive(Debug)]
pub struct Plan {
    pub want: Vec<WantedBlob>,
    /// Blobs of deferred images, size unknown.
    pub deferred: Vec<WantedDeferred>,
    /// Bytes still to arrive: what free disk must hold.
    pub bytes_needed: u64,
    /// Images whose blobs are all present already: commit them now.
    pub ready: Vec<usize>,
}

fn unexpected(expected: &'static str, got: &Message) -> SessionError {
    if let Message::Error { message, .. } = got {
        return SessionError::Peer(super::printable(message));
    }
    SessionError::Unexpected {
        expected,
        got: got.kind(),
    }
}

impl ReceiverSession {
    /// `token`: the one-time token a bootstrap receiver printed; `None` for
    /// a listener, which relies on the sender's certificate instead.
    pub fn new(token: Option<String>, limits: Limits) -> ReceiverSession {
        ReceiverSession {
            state: State::AwaitHello,
            version: VERSION,
            manifests_received: false,
            token,
            limits,
            images: Vec::new(),
            wanted: BTreeMap::new(),
        }
    }

    pub fn on_hello(&mut self, msg: &Message) -> Result<Message, SessionError> {
        let Message::Hello { version, token } = msg else {
            return Err(unexpected("hello", msg));
        };
        if self.state != State::AwaitHello {
            return Err(unexpected("offer", msg));
        }
        if !(MIN_VERSION..=VERSION).contains(version) {
            return Err(SessionError::Version(*version));
        }
        if let Some(expected) = &self.token
            && !token
                .as_deref()
                .is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()))
        {
            return Err(SessionError::BadToken);
        }
        self.state = State::AwaitOffer;
        self.version = *version;
        Ok(Message::Welcome { version: *version })
    }

    /// The version agreed in `hello`.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Checks every offered image and decides what to ask for.
    pub fn on_offer(
        &mut self,
        msg: &Message,
        store: &dyn BlobLookup,
    ) -> Result<Plan, SessionError> {
        let Message::Offer { images } = msg else {
            return Err(unexpected("offer", msg));
        };
        if self.state != State::AwaitOffer {
            return Err(unexpected("hello", msg));
        }
        if images.len() > self.limits.max_images {
            return Err(SessionError::TooManyImages {
                got: images.len(),
                max: self.limits.max_images,
            });
        }

        let mut sizes: BTreeMap<Digest, u64> = BTreeMap::new();
        let mut unsized_blobs: BTreeSet<Digest> = BTreeSet::new();
        let mut hints = 0u64;
        for (i, offered) in images.iter().enumerate() {
            let image = match (&offered.manifest, &offered.deferred) {
                (Some(manifest), None) => self.check_image(i, offered, manifest)?,
                (None, Some(deferred)) if self.version >= 2 => {
                    self.check_deferred(i, offered, deferred)?
                }
                (None, Some(_)) => {
                    return Err(SessionError::Deferred {
                        image: i,
                        reason: "a deferred image needs protocol version 2".into(),
                    });
                }
                _ => {
                    return Err(SessionError::BadManifest {
                        image: i,
                        reason: "an offered image carries exactly one of manifest and deferred"
                            .into(),
                    });
                }
            };
            if let Some(deferred) = &image.deferred {
                hints = hints.saturating_add(deferred.size_hint);
                unsized_blobs.extend(image.blob_digests());
                self.images.push(image);
                continue;
            }
            let manifest = image.manifest.as_ref().expect("checked above");
            for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
                if desc.size > self.limits.max_blob_size {
                    return Err(SessionError::BlobTooLarge {
                        digest: desc.digest.clone(),
                        size: desc.size,
                        max: self.limits.max_blob_size,
                    });
                }
                if let Some(&a) = sizes.get(&desc.digest)
                    && a != desc.size
                {
                    return Err(SessionError::SizeConflict {
                        digest: desc.digest.clone(),
                        a,
                        b: desc.size,
                    });
                }
                sizes.insert(desc.digest.clone(), desc.size);
            }
            self.images.push(image);
        }

        let mut plan = Plan {
            want: Vec::new(),
            deferred: Vec::new(),
            bytes_needed: hints,
            ready: Vec::new(),
        };
        for (digest, size) in sizes {
            unsized_blobs.remove(&digest);
            if store.has(&digest) {
                continue;
            }
            let offset = store.partial(&digest, size);
            plan.bytes_needed = plan.bytes_needed.saturating_add(size - offset);
            plan.want.push(WantedBlob {
                digest: digest.clone(),
                size,
                offset,
            });
            self.wanted.insert(
                digest,
                Wanted {
                    size: Some(size),
                    offset,
                    started: false,
                },
            );
        }
        // A blob of a deferred image is bounded by the largest blob this
        // receiver takes until its stream announces its size.
        for digest in unsized_blobs {
            if store.has(&digest) {
                continue;
            }
            let offset = store.partial(&digest, self.limits.max_blob_size);
            plan.deferred.push(WantedDeferred {
                digest: digest.clone(),
                offset,
            });
            self.wanted.insert(
                digest,
                Wanted {
                    size: None,
                    offset,
                    started: false,
                },
            );
        }
        for (i, image) in self.images.iter_mut().enumerate() {
            image.missing = image
                .blob_digests()
                .into_iter()
                .filter(|d| self.wanted.contains_key(d))
                .collect();
            if image.missing.is_empty() && image.manifest.is_some() {
                plan.ready.push(i);
            }
        }
        self.state = State::Receiving;
        Ok(plan)
    }

    fn check_image(
        &self,
        i: usize,
        offered: &OfferedImage,
        manifest: &str,
    ) -> Result<PlannedImage, SessionError> {
        let names = self.check_names(i, offered)?;
        let (manifest, bytes) = self.check_manifest(i, manifest)?;
        Ok(PlannedImage {
            manifest_digest: Digest::of(&bytes),
            manifest_bytes: bytes,
            manifest: Some(manifest),
            names,
            deferred: None,
            missing: BTreeSet::new(),
            committed: false,
        })
    }

    fn check_deferred(
        &self,
        i: usize,
        offered: &OfferedImage,
        deferred: &DeferredImage,
    ) -> Result<PlannedImage, SessionError> {
        let names = self.check_names(i, offered)?;
        if deferred.diff_ids.len() > self.limits.max_layers {
            return Err(SessionError::TooManyLayers {
                image: i,
                got: deferred.diff_ids.len(),
                max: self.limits.max_layers,
            });
        }
        Ok(PlannedImage {
            manifest_digest: deferred.id.clone(),
            manifest_bytes: Vec::new(),
            manifest: None,
            names,
            deferred: Some(deferred.clone()),
            missing: BTreeSet::new(),
            committed: false,
        })
    }

    fn check_names(
        &self,
        i: usize,
        offered: &OfferedImage,
    ) -> Result<Vec<Reference>, SessionError> {
        let mut names = Vec::new();
        for name in &offered.names {
            let reference = name
                .parse::<Reference>()
                .map_err(|_| SessionError::BadName {
                    image: i,
                    name: name.clone(),
                })?;
            names.push(reference);
        }
        Ok(names)
    }

    /// Parses and bounds a manifest a peer sent.
    fn check_manifest(&self, i: usize, text: &str) -> Result<(Manifest, Vec<u8>), SessionError> {
        let bad = |reason: String| SessionError::BadManifest { image: i, reason };
        let bytes = text.as_bytes();
        if bytes.len() as u64 > MAX_JSON_SIZE {
            return Err(bad(format!("manifest larger than {MAX_JSON_SIZE} bytes")));
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("manifest: {e}")))?;
        if manifest.schema_version != 2 {
            return Err(bad(format!(
                "manifest schemaVersion {}",
                manifest.schema_version
            )));
        }
        // The media type goes into the store's index as the descriptor's:
        // anything but an image manifest there breaks OCI tools.
        if let Some(media) = &manifest.media_type
            && ![MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST].contains(&media.as_str())
        {
            return Err(bad(format!(
                "media type {media:?} is not an image manifest"
            )));
        }
        if manifest.layers.len() > self.limits.max_layers {
            return Err(SessionError::TooManyLayers {
                image: i,
                got: manifest.layers.len(),
                max: self.limits.max_layers,
            });
        }
        if manifest.config.size > MAX_JSON_SIZE {
            return Err(bad(format!(
                "config {} is larger than {MAX_JSON_SIZE} bytes",
                manifest.config.digest
            )));
        }
        Ok((manifest, bytes.to_vec()))
    }

    /// The sender's `manifests`, after the blobs of its deferred images:
    /// each must name exactly the offered config and DiffIDs, uncompressed,
    /// with the sizes of the blobs received or held. Returns the images
    /// that are now complete.
    pub fn on_manifests(
        &mut self,
        msg: &Message,
        store: &dyn BlobLookup,
    ) -> Result<Vec<usize>, SessionError> {
        let Message::Manifests { manifests } = msg else {
            return Err(unexpected("manifests", msg));
        };
        let deferred: Vec<usize> = (0..self.images.len())
            .filter(|&i| self.images[i].deferred.is_some())
            .collect();
        if self.state != State::Receiving || self.manifests_received || deferred.is_empty() {
            return Err(unexpected("stored, loaded or done", msg));
        }
        if manifests.len() != deferred.len() {
            return Err(SessionError::ManifestMismatch {
                image: 0,
                reason: format!(
                    "{} manifests for {} deferred images",
                    manifests.len(),
                    deferred.len()
                ),
            });
        }

        let mut checked = Vec::new();
        for (&i, text) in deferred.iter().zip(manifests) {
            let (manifest, bytes) = self.check_manifest(i, text)?;
            self.match_offer(i, &manifest, store)?;
            checked.push((i, manifest, bytes));
        }
        self.manifests_received = true;

        let mut ready = Vec::new();
        for (i, manifest, bytes) in checked {
            let image = &mut self.images[i];
            image.manifest_digest = Digest::of(&bytes);
            image.manifest_bytes = bytes;
            image.manifest = Some(manifest);
            if image.missing.is_empty() {
                ready.push(i);
            }
        }
        Ok(ready)
    }

    /// Checks one deferred image's manifest against its offer, and settles
    /// the size of each blob it names.
    fn match_offer(
        &mut self,
        i: usize,
        manifest: &Manifest,
        store: &dyn BlobLookup,
    ) -> Result<(), SessionError> {
        let mismatch = |reason: String| SessionError::ManifestMismatch { image: i, reason };
        let offer = self.images[i].deferred.clone().expect("a deferred image");
        if manifest.config.digest != offer.id {
            return Err(mismatch(format!(
                "config {} is not the offered ID {}",
                manifest.config.digest, offer.id
            )));
        }
        let layers: Vec<&Digest> = manifest.layers.iter().map(|l| &l.digest).collect();
        if layers != offer.diff_ids.iter().collect::<Vec<_>>() {
            return Err(mismatch("its layers are not the offered DiffIDs".into()));
        }
        if ![MEDIA_OCI_CONFIG, MEDIA_DOCKER_CONFIG].contains(&manifest.config.media_type.as_str()) {
            return Err(mismatch(format!(
                "config media type {}",
                manifest.config.media_type
            )));
        }
        if let Some(layer) = manifest
            .layers
            .iter()
            .find(|l| ![MEDIA_OCI_LAYER, MEDIA_DOCKER_LAYER].contains(&l.media_type.as_str()))
        {
            return Err(mismatch(format!(
                "layer {} is {}, not an uncompressed layer",
                layer.digest, layer.media_type
            )));
        }
        if manifest.config.size > MAX_JSON_SIZE {
            return Err(mismatch(format!(
                "config {} is larger than {MAX_JSON_SIZE} bytes",
                manifest.config.digest
            )));
        }

        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if let Some(wanted) = self.wanted.get_mut(&desc.digest) {
                match wanted.size {
                    Some(size) if size != desc.size => {
                        return Err(mismatch(format!(
                            "blob {} is {size} bytes, the manifest says {}",
                            desc.digest, desc.size
                        )));
                    }
                    Some(_) => {}
                    None if desc.size > self.limits.max_blob_size => {
                        return Err(SessionError::BlobTooLarge {
                            digest: desc.digest.clone(),
                            size: desc.size,
                            max: self.limits.max_blob_size,
                        });
                    }
                    None if desc.size < wanted.offset => {
                        return Err(mismatch(format!(
                            "blob {} is {} bytes, fewer than the {} held",
                            desc.digest, desc.size, wanted.offset
                        )));
                    }
                    None => wanted.size = Some(desc.size),
                }
            } else if store.size(&desc.digest) != Some(desc.size) {
                return Err(mismatch(format!(
                    "blob {} is {} bytes here, the manifest says {}",
                    desc.digest,
                    store.size(&desc.digest).unwrap_or(0),
                    desc.size
                )));
            }
        }
        Ok(())
    }

    /// The sender must still send the manifests of its deferred images.
    pub fn awaiting_manifests(&self) -> bool {
        !self.manifests_received && self.images.iter().any(|i| i.deferred.is_some())
    }

    /// A blob stream began: returns the blob's size and the offset the
    /// stream must start at. `announced` is the size in the stream's
    /// header, which a blob of a deferred image must carry.
    pub fn start_blob(
        &mut self,
        digest: &Digest,
        offset: u64,
        announced: Option<u64>,
    ) -> Result<u64, SessionError> {
        let wanted = self
            .wanted
            .get_mut(digest)
            .ok_or_else(|| SessionError::NotWanted(digest.clone()))?;
        if wanted.started {
            return Err(SessionError::Duplicate(digest.clone()));
        }
        // A blob wanted without a size, from a partial file longer than the
        // blob turns out to be: that file is no prefix of it, and the sender
        // starts over (opening the partial file then empties it).
        let restart = offset == 0
            && wanted.size.is_none()
            && announced.is_some_and(|size| size < wanted.offset);
        if offset != wanted.offset && !restart {
            return Err(SessionError::WrongOffset {
                digest: digest.clone(),
                expected: wanted.offset,
                got: offset,
            });
        }
        let size = match (wanted.size, announced) {
            (Some(size), None) => size,
            (Some(size), Some(got)) if size == got => size,
            (Some(size), Some(got)) => {
                return Err(SessionError::SizeConflict {
                    digest: digest.clone(),
                    a: size,
                    b: got,
                });
            }
            (None, None) => return Err(SessionError::NoSize(digest.clone())),
            (None, Some(got)) if got > self.limits.max_blob_size => {
                return Err(SessionError::BlobTooLarge {
                    digest: digest.clone(),
                    size: got,
                    max: self.limits.max_blob_size,
                });
            }
            (None, Some(got)) => got,
        };
        if offset > size {
            return Err(SessionError::WrongOffset {
                digest: digest.clone(),
                expected: size,
                got: offset,
            });
        }
        wanted.size = Some(size);
        wanted.offset = offset;
        wanted.started = true;
        Ok(size)
    }

    /// A blob is stored: returns the images that are now complete.
    pub fn blob_stored(&mut self, digest: &Digest) -> Vec<usize> {
        let mut ready = Vec::new();
        for (i, image) in self.images.iter_mut().enumerate() {
            if image.missing.remove(digest) && image.missing.is_empty() && image.manifest.is_some()
            {
                ready.push(i);
            }
        }
        ready
    }

    pub fn image(&self, i: usize) -> &PlannedImage {
        &self.images[i]
    }

    pub fn image_committed(&mut self, i: usize) {
        self.images[i].committed = true;
    }

    /// Every offered image is committed.
    pub fn is_done(&self) -> bool {
        self.state == State::Receiving && self.images.iter().all(|i| i.committed)
    }

    pub fn image_count(&self) -> usize {
        self.images.len()
    }
}

/// Compares secrets without leaking, through timing, how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The sender's check of a `want`: every blob was offered, with the size
/// offered, and the offset lies inside it.
pub fn check_want(
    offered: &BTreeMap<Digest, u64>,
    msg: &Message,
) -> Result<Vec<WantedBlob>, SessionError> {
    Ok(check_want_all(offered, &BTreeSet::new(), msg)?.0)
}

/// [`check_want`] for an offer with deferred images, whose blobs
/// (`deferred`) may be asked for without a size.
pub fn check_want_all(
    offered: &BTreeMap<Digest, u64>,
    deferred: &BTreeSet<Digest>,
    msg: &Message,
) -> Result<(Vec<WantedBlob>, Vec<WantedDeferred>), SessionError> {
    let Message::Want {
        blobs,
        deferred: unsized_blobs,
        ..
    } = msg
    else {
        return Err(unexpected("want", msg));
    };
    let mut seen = BTreeSet::new();
    for blob in unsized_blobs {
        if !deferred.contains(&blob.digest) || offered.contains_key(&blob.digest) {
            return Err(SessionError::NotWanted(blob.digest.clone()));
        }
        if !seen.insert(&blob.digest) {
            return Err(SessionError::Duplicate(blob.digest.clone()));
        }
    }
    for blob in blobs {
        match offered.get(&blob.digest) {
            None => return Err(SessionError::NotWanted(blob.digest.clone())),
            Some(&size) if size != blob.size || blob.offset > size => {
                return Err(SessionError::WrongOffset {
                    digest: blob.digest.clone(),
                    expected: size,
                    got: blob.offset,
                });
            }
            Some(_) => {}
        }
        if !seen.insert(&blob.digest) {
            return Err(SessionError::Duplicate(blob.digest.clone()));
        }
    }
    Ok((blobs.clone(), unsized_blobs.clone()))
}

/// The sender's check of the receiver's first answer.
pub fn check_welcome(msg: &Message) -> Result<(), SessionError> {
    match msg {
        Message::Welcome { version } if *version == VERSION => Ok(()),
        Message::Welcome { version } => Err(SessionError::Version(*version)),
        other => Err(unexpected("welcome", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Descriptor, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER};

    struct Fake {
        have: Vec<Digest>,
        partial: Vec<(Digest, u64)>,
    }

    impl BlobLookup for Fake {
        fn has(&self, d: &Digest) -> bool {
            self.have.contains(d)
        }
        fn partial(&self, d: &Digest, _size: u64) -> u64 {
            self.partial
                .iter()
                .find(|(p, _)| p == d)
                .map_or(0, |(_, n)| *n)
        }
        fn size(&self, d: &Digest) -> Option<u64> {
            self.has(d).then_some(100)
        }
    }

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    fn offer(layers: &[&str]) -> OfferedImage {
        let manifest = Manifest::new(
            Descriptor::new(MEDIA_OCI_CONFIG, d("config"), 6),
            layers
                .iter()
                .map(|l| Descriptor::new(MEDIA_OCI_LAYER, d(l), 100))
                .collect(),
        );
        OfferedImage {
            names: vec!["edge:1".into()],
            manifest: Some(String::from_utf8(manifest.to_bytes()).unwrap()),
            deferred: None,
        }
    }

    fn hello(token: Option<&str>) -> Message {
        Message::Hello {
            version: VERSION,
            token: token.map(String::from),
        }
    }

    #[test]
    fn wants_only_what_is_missing_and_resumes_partials() {
        let mut s = ReceiverSession::new(None, Limits::default());
        assert_eq!(
            s.on_hello(&hello(None)),
            Ok(Message::Welcome { version: VERSION })
        );
        let store = Fake {
            have: vec![d("config"), d("base")],
            partial: vec![(d("top"), 40)],
        };
        let msg = Message::Offer {
            images: vec![offer(&["base", "top"]), offer(&["base"])],
        };
        let plan = s.on_offer(&msg, &store).unwrap();
        assert_eq!(
            plan.want,
            vec![WantedBlob {
                digest: d("top"),
                size: 100,
                offset: 40
            }]
        );
        assert_eq!(plan.bytes_needed, 60);
        assert_eq!(plan.ready, vec![1], "the second image is already complete");

        assert_eq!(
            s.start_blob(&d("top"), 0, None),
            Err(SessionError::WrongOffset {
                digest: d("top"),
                expected: 40,
                got: 0
            })
        );
        assert_eq!(s.start_blob(&d("top"), 40, None), Ok(100));
        assert_eq!(
            s.start_blob(&d("top"), 40, None),
            Err(SessionError::Duplicate(d("top")))
        );
        assert_eq!(
            s.start_blob(&d("base"), 0, None),
            Err(SessionError::NotWanted(d("base")))
        );
        assert_eq!(s.blob_stored(&d("top")), vec![0]);
        s.image_committed(0);
        assert!(!s.is_done());
        s.image_committed(1);
        assert!(s.is_done());
    }

    #[test]
    fn refuses_bad_hellos_and_offers() {
        let mut s = ReceiverSession::new(Some("secret".into()), Limits::default());
        assert_eq!(
            s.on_hello(&hello(Some("guess"))),
            Err(SessionError::BadToken)
        );
        assert_eq!(s.on_hello(&hello(None)), Err(SessionError::BadToken));
        let old = Message::Hello {
            version: 0,
            token: None,
        };
        assert_eq!(s.on_hello(&old), Err(SessionError::Version(0)));
        let store = Fake {
            have: vec![],
            partial: vec![],
        };
        assert!(matches!(
            s.on_offer(&Message::Offer { images: vec![] }, &store),
            Err(SessionError::Unexpected { .. })
        ));
        s.on_hello(&hello(Some("secret"))).unwrap();

        let mut bad = offer(&["a"]);
        bad.manifest = Some("{\"schemaVersion\":2}".into());
        let err = s
            .on_offer(&Message::Offer { images: vec![bad] }, &store)
            .unwrap_err();
        assert!(
            matches!(err, SessionError::BadManifest { image: 0, .. }),
            "{err}"
        );

        let mut s = ReceiverSession::new(
            None,
            Limits {
                max_blob_size: 50,
                ..Limits::default()
            },
        );
        s.on_hello(&hello(None)).unwrap();
        let err = s
            .on_offer(
                &Message::Offer {
                    images: vec![offer(&["a"])],
                },
                &store,
            )
            .unwrap_err();
        assert!(
            matches!(err, SessionError::BlobTooLarge { size: 100, .. }),
            "{err}"
        );

        let mut s = ReceiverSession::new(None, Limits::default());
        s.on_hello(&hello(None)).unwrap();
        let mut named = offer(&["a"]);
        named.names = vec!["UPPER/case:1".into()];
        assert!(matches!(
            s.on_offer(
                &Message::Offer {
                    images: vec![named]
                },
                &store
            ),
            Err(SessionError::BadName { .. })
        ));
    }

    #[test]
    fn sender_checks_the_want() {
        let offered: BTreeMap<Digest, u64> = [(d("a"), 10)].into();
        let ok = Message::Want {
            blobs: vec![WantedBlob {
                digest: d("a"),
                size: 10,
                offset: 3,
            }],
            deferred: vec![],
            long_window: false,
        };
        assert_eq!(check_want(&offered, &ok).unwrap().len(), 1);
        let past_end = Message::Want {
            blobs: vec![WantedBlob {
                digest: d("a"),
                size: 10,
                offset: 11,
            }],
            deferred: vec![],
            long_window: false,
        };
        assert!(check_want(&offered, &past_end).is_err());
        let unknown = Message::Want {
            blobs: vec![WantedBlob {
                digest: d("b"),
                size: 10,
                offset: 0,
            }],
            deferred: vec![],
            long_window: false,
        };
        assert_eq!(
            check_want(&offered, &unknown),
            Err(SessionError::NotWanted(d("b")))
        );
        let refused = Message::Error {
            message: "no".into(),
            digest: None,
        };
        assert_eq!(
            check_want(&offered, &refused),
            Err(SessionError::Peer("no".into()))
        );
        assert_eq!(
            check_welcome(&Message::Welcome { version: 9 }),
            Err(SessionError::Version(9))
        );
    }

    fn deferred(layers: &[&str]) -> OfferedImage {
        OfferedImage {
            names: vec!["engine:1".into()],
            manifest: None,
            deferred: Some(DeferredImage {
                id: d("config"),
                diff_ids: layers.iter().map(|l| d(l)).collect(),
                size_hint: 1000,
            }),
        }
    }

    fn manifest_of(layers: &[(&str, u64)]) -> String {
        let m = Manifest::new(
            Descriptor::new(MEDIA_OCI_CONFIG, d("config"), 6),
            layers
                .iter()
                .map(|(l, size)| Descriptor::new(MEDIA_OCI_LAYER, d(l), *size))
                .collect(),
        );
        String::from_utf8(m.to_bytes()).unwrap()
    }

    fn deferred_session(store: &Fake, layers: &[&str], max: u64) -> (ReceiverSession, Plan) {
        let mut s = ReceiverSession::new(
            None,
            Limits {
                max_blob_size: max,
                ..Limits::default()
            },
        );
        s.on_hello(&hello(None)).unwrap();
        let plan = s
            .on_offer(
                &Message::Offer {
                    images: vec![deferred(layers)],
                },
                store,
            )
            .unwrap();
        (s, plan)
    }

    #[test]
    fn a_deferred_image_wants_unsized_blobs_and_commits_after_its_manifest() {
        let store = Fake {
            have: vec![d("base")],
            partial: vec![(d("top"), 7)],
        };
        let (mut s, plan) = deferred_session(&store, &["base", "top"], 1 << 20);
        assert!(plan.want.is_empty());
        let wanted: BTreeMap<Digest, u64> = plan
            .deferred
            .iter()
            .map(|w| (w.digest.clone(), w.offset))
            .collect();
        assert_eq!(wanted, [(d("config"), 0), (d("top"), 7)].into());
        assert_eq!(plan.bytes_needed, 1000, "the hint");
        assert!(plan.ready.is_empty());

        assert_eq!(
            s.start_blob(&d("top"), 7, None),
            Err(SessionError::NoSize(d("top")))
        );
        assert_eq!(s.start_blob(&d("top"), 7, Some(50)), Ok(50));
        assert_eq!(s.start_blob(&d("config"), 0, Some(6)), Ok(6));
        assert!(s.blob_stored(&d("top")).is_empty());
        assert!(s.blob_stored(&d("config")).is_empty(), "no manifest yet");
        assert!(s.awaiting_manifests());

        let msg = Message::Manifests {
            manifests: vec![manifest_of(&[("base", 100), ("top", 50)])],
        };
        assert_eq!(s.on_manifests(&msg, &store), Ok(vec![0]));
        assert!(!s.awaiting_manifests());
        assert!(s.on_manifests(&msg, &store).is_err(), "only once");
    }

    #[test]
    fn a_deferred_manifest_must_match_the_offer() {
        let store = Fake {
            have: vec![d("base")],
            partial: vec![],
        };
        let cases = [
            (manifest_of(&[("top", 50), ("base", 100)]), "DiffIDs"),
            (manifest_of(&[("base", 100)]), "DiffIDs"),
            (manifest_of(&[("base", 99), ("top", 50)]), "bytes here"),
            (
                manifest_of(&[("base", 100), ("top", 51)]),
                "the manifest says",
            ),
            (
                manifest_of(&[("base", 100), ("top", 50)])
                    .replace(&d("config").to_string(), &d("other").to_string()),
                "offered ID",
            ),
            (
                manifest_of(&[("base", 100), ("top", 50)])
                    .replace(MEDIA_OCI_LAYER, crate::image::MEDIA_OCI_LAYER_GZIP),
                "not an uncompressed layer",
            ),
        ];
        for (manifest, why) in cases {
            let (mut s, _) = deferred_session(&store, &["base", "top"], 1 << 20);
            s.start_blob(&d("top"), 0, Some(50)).unwrap();
            let err = s
                .on_manifests(
                    &Message::Manifests {
                        manifests: vec![manifest],
                    },
                    &store,
                )
                .unwrap_err();
            assert!(err.to_string().contains(why), "{err} (expected {why})");
        }
    }

    #[test]
    fn a_deferred_blob_is_bounded_by_the_largest_blob_taken() {
        let store = Fake {
            have: vec![],
            partial: vec![],
        };
        let (mut s, _) = deferred_session(&store, &["top"], 100);
        assert!(matches!(
            s.start_blob(&d("top"), 0, Some(101)),
            Err(SessionError::BlobTooLarge { size: 101, .. })
        ));
        let (mut s, _) = deferred_session(&store, &["top"], 100);
        let err = s
            .on_manifests(
                &Message::Manifests {
                    manifests: vec![manifest_of(&[("top", 500)])],
                },
                &store,
            )
            .unwrap_err();
        assert!(matches!(err, SessionError::BlobTooLarge { .. }), "{err}");

        // A version 1 sender may not defer.
        let mut s = ReceiverSession::new(None, Limits::default());
        s.on_hello(&Message::Hello {
            version: 1,
            token: None,
        })
        .unwrap();
        let err = s
            .on_offer(
                &Message::Offer {
                    images: vec![deferred(&["top"])],
                },
                &store,
            )
            .unwrap_err();
        assert!(matches!(err, SessionError::Deferred { .. }), "{err}");
    }

    /// A partial file longer than the deferred blob it is for is no prefix
    /// of it: the sender may start over from 0, and only then.
    #[test]
    fn a_deferred_blob_restarts_when_the_partial_is_longer_than_it() {
        let store = Fake {
            have: vec![],
            partial: vec![(d("top"), 500)],
        };
        let (mut s, _) = deferred_session(&store, &["top"], 1 << 20);
        assert!(matches!(
            s.start_blob(&d("top"), 0, Some(600)),
            Err(SessionError::WrongOffset { expected: 500, .. })
        ));
        let (mut s, _) = deferred_session(&store, &["top"], 1 << 20);
        assert!(matches!(
            s.start_blob(&d("top"), 100, Some(400)),
            Err(SessionError::WrongOffset { .. })
        ));
        let (mut s, _) = deferred_session(&store, &["top"], 1 << 20);
        assert_eq!(s.start_blob(&d("top"), 0, Some(400)), Ok(400));
    }
}
