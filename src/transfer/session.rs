//! The protocol's decisions, without sockets: what a receiver answers to
//! each message, which blobs it wants, when an image is complete, and what
//! a sender accepts as an answer.
//!
//! The async code in `send.rs` and `receive.rs` moves bytes and calls into
//! this; everything a peer can get wrong is caught here, where it can be
//! unit-tested message by message.

use std::collections::{BTreeMap, BTreeSet};

use crate::digest::Digest;
use crate::image::{MAX_JSON_SIZE, Manifest};
use crate::reference::Reference;
use crate::store::Store;

use super::wire::{Message, OfferedImage, VERSION, WantedBlob};

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
}

/// What a receiver can look up about its store.
pub trait BlobLookup {
    fn has(&self, digest: &Digest) -> bool;
    /// Bytes held from an interrupted transfer (zero when none).
    fn partial(&self, digest: &Digest, size: u64) -> u64;
}

impl BlobLookup for Store {
    fn has(&self, digest: &Digest) -> bool {
        self.has_blob(digest)
    }

    fn partial(&self, digest: &Digest, size: u64) -> u64 {
        self.partial_len(digest, size)
    }
}

/// One offered image, checked.
#[derive(Debug, Clone)]
pub struct PlannedImage {
    pub manifest_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
    pub names: Vec<Reference>,
    missing: BTreeSet<Digest>,
    committed: bool,
}

#[derive(Debug)]
struct Wanted {
    size: u64,
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
    token: Option<String>,
    limits: Limits,
    images: Vec<PlannedImage>,
    wanted: BTreeMap<Digest, Wanted>,
}

/// The receiver's answer to an offer.
#[derive(Debug)]
pub struct Plan {
    pub want: Vec<WantedBlob>,
    /// Bytes still to arrive: what free disk must hold.
    pub bytes_needed: u64,
    /// Images whose blobs are all present already: commit them now.
    pub ready: Vec<usize>,
}

fn unexpected(expected: &'static str, got: &Message) -> SessionError {
    if let Message::Error { message, .. } = got {
        return SessionError::Peer(message.clone());
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
        if *version != VERSION {
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
        Ok(Message::Welcome { version: VERSION })
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
        for (i, offered) in images.iter().enumerate() {
            let image = self.check_image(i, offered)?;
            for desc in std::iter::once(&image.manifest.config).chain(&image.manifest.layers) {
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
            bytes_needed: 0,
            ready: Vec::new(),
        };
        for (digest, size) in sizes {
            if store.has(&digest) {
                continue;
            }
            let offset = store.partial(&digest, size);
            plan.bytes_needed += size - offset;
            plan.want.push(WantedBlob {
                digest: digest.clone(),
                size,
                offset,
            });
            self.wanted.insert(
                digest,
                Wanted {
                    size,
                    offset,
                    started: false,
                },
            );
        }
        for (i, image) in self.images.iter_mut().enumerate() {
            image.missing = std::iter::once(&image.manifest.config)
                .chain(&image.manifest.layers)
                .map(|d| d.digest.clone())
                .filter(|d| self.wanted.contains_key(d))
                .collect();
            if image.missing.is_empty() {
                plan.ready.push(i);
            }
        }
        self.state = State::Receiving;
        Ok(plan)
    }

    fn check_image(&self, i: usize, offered: &OfferedImage) -> Result<PlannedImage, SessionError> {
        let bad = |reason: String| SessionError::BadManifest { image: i, reason };
        let bytes = offered.manifest.as_bytes();
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
        Ok(PlannedImage {
            manifest_digest: Digest::of(bytes),
            manifest_bytes: bytes.to_vec(),
            manifest,
            names,
            missing: BTreeSet::new(),
            committed: false,
        })
    }

    /// A blob stream began: returns the blob's size and the offset the
    /// stream must start at.
    pub fn start_blob(&mut self, digest: &Digest, offset: u64) -> Result<u64, SessionError> {
        let wanted = self
            .wanted
            .get_mut(digest)
            .ok_or_else(|| SessionError::NotWanted(digest.clone()))?;
        if wanted.started {
            return Err(SessionError::Duplicate(digest.clone()));
        }
        if offset != wanted.offset {
            return Err(SessionError::WrongOffset {
                digest: digest.clone(),
                expected: wanted.offset,
                got: offset,
            });
        }
        wanted.started = true;
        Ok(wanted.size)
    }

    /// A blob is stored: returns the images that are now complete.
    pub fn blob_stored(&mut self, digest: &Digest) -> Vec<usize> {
        let mut ready = Vec::new();
        for (i, image) in self.images.iter_mut().enumerate() {
            if image.missing.remove(digest) && image.missing.is_empty() {
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
    let Message::Want { blobs } = msg else {
        return Err(unexpected("want", msg));
    };
    let mut seen = BTreeSet::new();
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
    Ok(blobs.clone())
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
            manifest: String::from_utf8(manifest.to_bytes()).unwrap(),
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
            Ok(Message::Welcome { version: 1 })
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
            s.start_blob(&d("top"), 0),
            Err(SessionError::WrongOffset {
                digest: d("top"),
                expected: 40,
                got: 0
            })
        );
        assert_eq!(s.start_blob(&d("top"), 40), Ok(100));
        assert_eq!(
            s.start_blob(&d("top"), 40),
            Err(SessionError::Duplicate(d("top")))
        );
        assert_eq!(
            s.start_blob(&d("base"), 0),
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
        bad.manifest = "{\"schemaVersion\":2}".into();
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
        };
        assert_eq!(check_want(&offered, &ok).unwrap().len(), 1);
        let past_end = Message::Want {
            blobs: vec![WantedBlob {
                digest: d("a"),
                size: 10,
                offset: 11,
            }],
        };
        assert!(check_want(&offered, &past_end).is_err());
        let unknown = Message::Want {
            blobs: vec![WantedBlob {
                digest: d("b"),
                size: 10,
                offset: 0,
            }],
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
}
