//! The bytes on the wire: control messages and blob-stream chunks, encoded
//! and decoded without any I/O.
//!
//! Every frame starts with its length as a 32-bit big-endian number, and the
//! length is checked against a fixed bound before anything is allocated, so
//! a hostile peer can make us hold at most one bounded frame per stream. The
//! format is described, with test vectors, in `proto/PROTOCOL.md`; the unit
//! tests below check those vectors.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// The highest protocol version this build speaks (`Hello.version`).
pub const VERSION: u32 = 4;

/// The oldest version a receiver of this build still serves: a version 1
/// sender offers store images only and gets no `engine` report.
pub const MIN_VERSION: u32 = 1;

/// The ALPN protocol name; a peer that does not offer it fails the
/// handshake before any message is exchanged.
pub const ALPN: &[u8] = b"rimg/1";

/// Largest control message accepted (an offer carries every manifest).
pub const MAX_MESSAGE: usize = 16 << 20;

/// Raw bytes per blob chunk: the unit of compression and of progress.
pub const CHUNK: usize = 1 << 20;

/// Largest chunk payload on the wire. zstd can grow incompressible data by
/// a little; anything beyond this is a protocol violation.
pub const MAX_CHUNK_WIRE: usize = CHUNK + (64 << 10);

/// A control message, on the one bidirectional stream the sender opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// Sender, first: the version it speaks and, for an ssh bootstrap, the
    /// one-time token the receiver printed.
    Hello {
        version: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Receiver: the version both will speak.
    Welcome { version: u32 },
    /// Sender: the images, each with its exact manifest bytes.
    Offer { images: Vec<OfferedImage> },
    /// Receiver: the blobs it lacks, and where each should start.
    Want {
        blobs: Vec<WantedBlob>,
        /// Version 2: blobs of deferred images, size unknown.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        deferred: Vec<WantedDeferred>,
        /// Version 4: the receiver takes one blob stream of this
        /// connection with a zstd window up to 128 MiB (see `codec`).
        #[serde(default, skip_serializing_if = "is_false")]
        long_window: bool,
    },
    /// Receiver: a blob was received, verified and stored.
    Stored { digest: Digest },
    /// Receiver: an image was committed and tagged.
    Loaded { id: Digest, names: Vec<String> },
    /// Receiver: every offered image is in its store.
    Done { images: u32 },
    /// Either side, version 2: a long stage is moving. The sender reports
    /// the bytes of the engine's export read so far (`stage` "export"); a
    /// receiver the bytes fed to its engine ("engine"). Each one also
    /// resets the peer's stall timer.
    Progress { stage: String, bytes: u64 },
    /// Sender, version 2, after the last blob stream: the manifest of each
    /// deferred image, in the order of the offer.
    Manifests { manifests: Vec<String> },
    /// Receiver, version 2, before `done`: what its Docker Engine made of
    /// the images (its report lines, or why it refused them).
    Engine {
        lines: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Either side: the transfer is over because of this.
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<Digest>,
    },
}

/// One image in an offer: exactly one of `manifest` and `deferred`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferedImage {
    /// Names to tag it with on the receiver (`docker.io/library/x:1`).
    pub names: Vec<String>,
    /// The manifest, byte for byte: its digest is computed from this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Version 2: an image whose manifest comes after its blobs (read from
    /// a Docker Engine's export, where blob sizes are known only once read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<DeferredImage>,
}

/// What a sender knows of an engine image before reading its export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeferredImage {
    /// The config digest (the image ID).
    pub id: Digest,
    /// The layers' DiffIDs, bottom first: the layer blobs' digests.
    pub diff_ids: Vec<Digest>,
    /// About how many bytes the image holds (the engine's figure); only for
    /// the receiver's free-disk check.
    pub size_hint: u64,
}

/// Version 2: a blob of a deferred image the receiver asks for; its size is
/// not known yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WantedDeferred {
    pub digest: Digest,
    pub offset: u64,
}

/// One blob the receiver asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WantedBlob {
    pub digest: Digest,
    pub size: u64,
    /// Bytes the receiver already holds from an interrupted transfer.
    pub offset: u64,
}

impl WantedBlob {
    /// Bytes left to send.
    pub fn left(&self) -> u64 {
        self.size.saturating_sub(self.offset)
    }
}

/// The first frame of a blob stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobHeader {
    pub digest: Digest,
    pub offset: u64,
    /// Version 2: the whole blob's size, for a blob wanted without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Version 4: this stream takes the long zstd window the receiver
    /// granted in `want`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub long_window: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// How a chunk's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    Raw = 0,
    /// One zstd frame of its own.
    Zstd = 1,
    /// Version 3: the raw length (u32 BE), then the next piece of the zstd
    /// stream that runs across the blob stream (see `codec`).
    ZstdStream = 2,
}

/// A frame that cannot be decoded. The peer sent it, so this ends the
/// transfer, never the process.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("unknown chunk encoding {0}")]
    UnknownChunkKind(u8),
    #[error("chunk decompresses to more than {0} bytes")]
    ChunkTooLarge(usize),
    #[error("empty chunk frame")]
    EmptyChunk,
    #[error("bad zstd stream: {0}")]
    Zstd(String),
    #[error("a stream chunk does not decode to the {announced} bytes it announces")]
    ChunkLength { announced: usize },
}

/// Encodes any frame body with its length prefix.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The length in a 4-byte prefix, checked against `max`.
pub fn frame_len(prefix: [u8; 4], max: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(WireError::TooLong { len, max });
    }
    Ok(len)
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        frame(&serde_json::to_vec(self).expect("messages always serialise"))
    }

    /// Decodes a message body (after the length prefix).
    pub fn decode(body: &[u8]) -> Result<Message, WireError> {
        if body.len() > MAX_MESSAGE {
            return Err(WireError::TooLong {
                len: body.len(),
                max: MAX_MESSAGE,
            });
        }
        serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))
    }

    /// Its name, for errors like "expected want, got hello".
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Welcome { .. } => "welcome",
            Message::Offer { .. } => "offer",
            Message::Want { .. } => "want",
            Message::Stored { .. } => "stored",
            Message::Loaded { .. } => "loaded",
            Message::Done { .. } => "done",
            Message::Progress { .. } => "progress",
            Message::Manifests { .. } => "manifests",
            Message::Engine { .. } => "engine",
            Message::Error { .. } => "error",
        }
    }
}

impl BlobHeader {
    pub fn encode(&self) -> Vec<u8> {
        frame(&serde_json::to_vec(self).expect("headers always serialise"))
    }

    /// Largest header body: a digest and a number, with room to spare.
    pub const MAX: usize = 1024;

    pub fn decode(body: &[u8]) -> Result<BlobHeader, WireError> {
        serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))
    }
}

/// Encodes one chunk frame: length (of kind + payload), kind, payload.
pub fn encode_chunk(kind: ChunkKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.extend_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
    out.push(kind as u8);
    out.extend_from_slice(payload);
    out
}

/// Decodes a chunk frame body (after the length prefix) into raw bytes,
/// never producing more than `limit` bytes (at most [`CHUNK`]).
pub fn decode_chunk(body: &[u8], limit: usize) -> Result<Vec<u8>, WireError> {
    let (&kind, payload) = body.split_first().ok_or(WireError::EmptyChunk)?;
    let limit = limit.min(CHUNK);
    match kind {
        0 if payload.len() > limit => Err(WireError::ChunkTooLarge(limit)),
        0 => Ok(payload.to_vec()),
        1 => {
            use zstd::zstd_safe;
            // A frame that says it holds more than the limit is refused
            // unread; one that does not say is decompressed into a buffer
            // of at most `limit` bytes, so that a zstd bomb fails instead
            // of allocating. Any other failure is bad zstd, and named so.
            if let Ok(Some(n)) = zstd_safe::get_frame_content_size(payload)
                && n > limit as u64
            {
                return Err(WireError::ChunkTooLarge(limit));
            }
            let mut dctx = zstd_safe::DCtx::try_create()
                .ok_or_else(|| WireError::Zstd("cannot allocate a decompression context".into()))?;
            let mut out = vec![0u8; limit];
            let n = dctx.decompress(&mut out[..], payload).map_err(|code| {
                match zstd_safe::get_error_name(code) {
                    "Destination buffer is too small" => WireError::ChunkTooLarge(limit),
                    name => WireError::Zstd(name.into()),
                }
            })?;
            out.truncate(n);
            Ok(out)
        }
        other => Err(WireError::UnknownChunkKind(other)),
    }
}

/// [`decode_chunk`] for a frame body that arrived in pieces: a raw chunk
/// is passed on without copying, a compressed one is joined and unpacked.
pub fn decode_chunk_pieces(
    mut pieces: Vec<bytes::Bytes>,
    limit: usize,
) -> Result<Vec<bytes::Bytes>, WireError> {
    pieces.retain(|p| !p.is_empty());
    let first = pieces.first_mut().ok_or(WireError::EmptyChunk)?;
    if first[0] != ChunkKind::Raw as u8 {
        let body: Vec<u8> = pieces.concat();
        return decode_chunk(&body, limit).map(|raw| vec![raw.into()]);
    }
    let _kind = first.split_to(1);
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    if len > limit.min(CHUNK) {
        return Err(WireError::ChunkTooLarge(limit.min(CHUNK)));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        Digest::from_hex(&c.to_string().repeat(64)).unwrap()
    }

    /// The vectors in proto/PROTOCOL.md, byte for byte.
    #[test]
    fn test_vectors_match_the_protocol_document() {
        let hello = Message::Hello {
            version: 1,
            token: Some("tok".into()),
        };
        assert_eq!(
            hex::encode(hello.encode()),
            "0000002a7b2274797065223a2268656c6c6f222c2276657273696f6e223a312c22746f6b656e223a22746f6b227d"
        );
        let want = Message::Want {
            blobs: vec![WantedBlob {
                digest: digest('a'),
                size: 10,
                offset: 4,
            }],
            deferred: Vec::new(),
            long_window: false,
        };
        let offer_deferred = Message::Offer {
            images: vec![OfferedImage {
                names: vec!["x:1".into()],
                manifest: None,
                deferred: Some(DeferredImage {
                    id: digest('c'),
                    diff_ids: vec![digest('a')],
                    size_hint: 10,
                }),
            }],
        };
        let want_deferred = Message::Want {
            blobs: Vec::new(),
            deferred: vec![WantedDeferred {
                digest: digest('a'),
                offset: 0,
            }],
            long_window: false,
        };
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/PROTOCOL.md"))
                .unwrap();
        for (name, bytes) in [
            ("hello", hello.encode()),
            ("want", want.encode()),
            ("welcome", Message::Welcome { version: 1 }.encode()),
            ("welcome-2", Message::Welcome { version: 2 }.encode()),
            (
                "header",
                BlobHeader {
                    digest: digest('b'),
                    offset: 0,
                    size: None,
                    long_window: false,
                }
                .encode(),
            ),
            (
                "want-long",
                Message::Want {
                    blobs: Vec::new(),
                    deferred: Vec::new(),
                    long_window: true,
                }
                .encode(),
            ),
            (
                "header-long",
                BlobHeader {
                    digest: digest('b'),
                    offset: 0,
                    size: None,
                    long_window: true,
                }
                .encode(),
            ),
            ("offer-deferred", offer_deferred.encode()),
            ("want-deferred", want_deferred.encode()),
            (
                "header-sized",
                BlobHeader {
                    digest: digest('a'),
                    offset: 0,
                    size: Some(10),
                    long_window: false,
                }
                .encode(),
            ),
            (
                "progress",
                Message::Progress {
                    stage: "export".into(),
                    bytes: 4096,
                }
                .encode(),
            ),
            (
                "manifests",
                Message::Manifests {
                    manifests: vec!["{}".into()],
                }
                .encode(),
            ),
            (
                "engine",
                Message::Engine {
                    lines: vec!["Loaded image: x:1".into()],
                    error: None,
                }
                .encode(),
            ),
            ("raw-chunk", encode_chunk(ChunkKind::Raw, b"hi")),
        ] {
            let line = format!("{name}: {}", hex::encode(&bytes));
            assert!(doc.contains(&line), "PROTOCOL.md lacks `{line}`");
            let body = &bytes[4..];
            assert_eq!(
                frame_len(bytes[..4].try_into().unwrap(), MAX_MESSAGE),
                Ok(body.len())
            );
        }
        for msg in [want, offer_deferred, want_deferred] {
            assert_eq!(
                Message::decode(&msg.encode()[4..]).unwrap(),
                msg,
                "round-trips"
            );
        }
    }

    #[test]
    fn hostile_frames_are_errors() {
        assert!(matches!(
            frame_len([0xff, 0xff, 0xff, 0xff], MAX_MESSAGE),
            Err(WireError::TooLong { .. })
        ));
        assert!(Message::decode(b"{\"type\":\"hello\"}").is_err());
        assert!(Message::decode(b"{\"type\":\"stored\",\"digest\":\"sha256:../x\"}").is_err());
        assert!(Message::decode(b"{\"type\":\"welcome\",\"version\":1,\"x\":1}").is_err());
        assert_eq!(decode_chunk(&[], 10), Err(WireError::EmptyChunk));
        assert_eq!(
            decode_chunk(&[9, 1], 10),
            Err(WireError::UnknownChunkKind(9))
        );
        assert_eq!(
            decode_chunk(&[0, 1, 2, 3], 2),
            Err(WireError::ChunkTooLarge(2))
        );

        // A zstd bomb: 1 MiB of zeros compresses to a few bytes, but a
        // limit of 100 bytes must hold.
        let bomb = zstd::bulk::compress(&vec![0u8; CHUNK], 1).unwrap();
        let mut body = vec![1u8];
        body.extend_from_slice(&bomb);
        assert_eq!(decode_chunk(&body, 100), Err(WireError::ChunkTooLarge(100)));
        // The same bomb without the size in its header.
        let mut c = zstd::bulk::Compressor::new(1).unwrap();
        c.include_contentsize(false).unwrap();
        let mut body = vec![1u8];
        body.extend_from_slice(&c.compress(&vec![0u8; CHUNK]).unwrap());
        assert_eq!(decode_chunk(&body, 100), Err(WireError::ChunkTooLarge(100)));
        // Bytes that are not zstd at all are named as such, not as too large.
        assert!(matches!(
            decode_chunk(&[1, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a], 100),
            Err(WireError::Zstd(_))
        ));
        assert_eq!(decode_chunk(&body, CHUNK).unwrap().len(), CHUNK);
    }

    #[test]
    fn chunks_in_pieces_decode_like_whole_ones() {
        use bytes::Bytes;
        let split = |frame: &[u8], at: usize| -> Vec<Bytes> {
            let body = &frame[4..];
            vec![
                Bytes::copy_from_slice(&body[..at]),
                Bytes::new(),
                Bytes::copy_from_slice(&body[at..]),
            ]
        };
        let joined = |pieces: Vec<Bytes>| pieces.concat();
        let raw = encode_chunk(ChunkKind::Raw, b"hello");
        for at in 0..=6 {
            let pieces = decode_chunk_pieces(split(&raw, at), 10).unwrap();
            assert_eq!(joined(pieces), b"hello");
        }
        assert_eq!(
            decode_chunk_pieces(split(&raw, 3), 4),
            Err(WireError::ChunkTooLarge(4))
        );
        let packed = zstd::bulk::compress(&[7u8; 5000], 1).unwrap();
        let zst = encode_chunk(ChunkKind::Zstd, &packed);
        let pieces = decode_chunk_pieces(split(&zst, 2), CHUNK).unwrap();
        assert_eq!(joined(pieces), vec![7u8; 5000]);
        assert_eq!(
            decode_chunk_pieces(split(&zst, 2), 100),
            Err(WireError::ChunkTooLarge(100))
        );
        assert_eq!(decode_chunk_pieces(vec![], 10), Err(WireError::EmptyChunk));
        assert_eq!(
            decode_chunk_pieces(vec![Bytes::from_static(&[9, 1])], 10),
            Err(WireError::UnknownChunkKind(9))
        );
    }
}
