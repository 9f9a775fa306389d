//! Sending images straight out of a Docker Engine (`push-peer
//! docker-daemon:NAME`), with no copy in a store and no temporary file.
//!
//! The engine exports only whole images, but its inspect data gives each
//! image's ID and DiffIDs, and rimg stores layers uncompressed, so those
//! are the blob digests. The sender offers the images *deferred* (ID and
//! DiffIDs, no manifest), learns from the `want` which blobs the receiver
//! lacks, and only then reads the export: one pass, front to back, each
//! wanted blob onto its own stream as it goes by (necessarily one after
//! another), the others read into nothing. The manifests, whose blob sizes
//! were unknown until the export was read, follow in a `manifests`
//! message, built as `rimg load` builds a Docker archive's so that both
//! paths give the same manifest digest.
//!
//! The export is read on a thread of its own (the engine client blocks),
//! which hands chunks to the async side through a small bounded channel.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::auto::{Chooser, WireTimer};
use super::codec::ChunkEncoder;
use super::send::{Control, RateLimit, SendEvents, SendOptions, Summary, on_message};
use super::session::{SessionError, check_want_all};
use super::wire::{BlobHeader, ChunkKind, DeferredImage, Message, OfferedImage, encode_chunk};
use super::{TransferError, close};
use crate::digest::Digest;
use crate::engine::export::{BlobSink, ExportError, ExportedImage, Found, split_export};
use crate::image::{Descriptor, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, Manifest};

/// An engine image to offer, from its inspect data.
#[derive(Debug, Clone)]
pub struct EngineOutgoing {
    /// What the user typed, for errors.
    pub source: String,
    /// Names it gets on the receiver.
    pub names: Vec<String>,
    pub id: Digest,
    pub diff_ids: Vec<Digest>,
    /// The engine's size of the image (for the receiver's disk check).
    pub size: u64,
}

/// Opens the export of all the images, once the want is known.
pub type OpenExport = Box<dyn FnOnce() -> io::Result<Box<dyn Read>> + Send>;

/// What the export thread hands to the async side.
enum Feed {
    Read(u64),
    Start {
        digest: Digest,
        size: u64,
        offset: u64,
    },
    Chunk(Vec<u8>),
    End,
    Finished(Result<Found, ExportError>),
}

/// The manifest `rimg load` builds for a Docker archive's image: an OCI
/// manifest of the config and the uncompressed layers.
pub fn manifest_for(image: &EngineOutgoing, found: &Found) -> Vec<u8> {
    let size = |d: &Digest| found.get(d).copied().unwrap_or(0);
    Manifest::new(
        Descriptor::new(MEDIA_OCI_CONFIG, image.id.clone(), size(&image.id)),
        image
            .diff_ids
            .iter()
            .map(|d| Descriptor::new(MEDIA_OCI_LAYER, d.clone(), size(d)))
            .collect(),
    )
    .to_bytes()
}

/// Runs a whole push of engine images over an established connection.
pub async fn send_engine(
    conn: &quinn::Connection,
    peer: &str,
    images: &[EngineOutgoing],
    open: OpenExport,
    opts: &SendOptions,
    events: Arc<dyn SendEvents>,
) -> Result<Summary, TransferError> {
    let started = Instant::now();
    // The receiver may rightly say nothing for long: while this end reads
    // layers it holds already, or while the engine prepares its export. A
    // receiver that is gone is noticed by QUIC's idle timeout instead.
    let patient = SendOptions {
        timeout: Duration::from_secs(24 * 3600),
        ..opts.clone()
    };
    let mut ctl = Control::open(conn, peer, &patient).await?;

    let offer = Message::Offer {
        images: images
            .iter()
            .map(|i| OfferedImage {
                names: i.names.clone(),
                manifest: None,
                deferred: Some(DeferredImage {
                    id: i.id.clone(),
                    diff_ids: i.diff_ids.clone(),
                    size_hint: i.size,
                }),
            })
            .collect(),
    };
    ctl.say(&offer).await?;
    let offered: BTreeSet<Digest> = images
        .iter()
        .flat_map(|i| std::iter::once(&i.id).chain(&i.diff_ids).cloned())
        .collect();
    let (_, wanted) = check_want_all(&BTreeMap::new(), &offered, &ctl.next().await?)?;
    let want: BTreeMap<Digest, u64> = wanted
        .iter()
        .map(|w| (w.digest.clone(), w.offset))
        .collect();
    tracing::debug!(
        peer,
        offered = offered.len(),
        wanted = want.len(),
        "the receiver's answer to the deferred offer"
    );
    let mut summary = Summary {
        blobs_total: offered.len(),
        blobs_sent: want.len(),
        blobs_skipped: offered.len() - want.len(),
        ..Summary::default()
    };

    // The export, on its own thread.
    let (feed_tx, mut feed) = mpsc::channel::<Feed>(8);
    let exported: Vec<ExportedImage> = images
        .iter()
        .map(|i| ExportedImage {
            name: i.source.clone(),
            id: i.id.clone(),
            diff_ids: i.diff_ids.clone(),
        })
        .collect();
    let thread_want = want.clone();
    std::thread::spawn(move || {
        let mut sink = ChannelSink {
            tx: feed_tx,
            last: 0,
        };
        let result = match open() {
            Ok(export) => split_export(export, &exported, &thread_want, &mut sink),
            Err(e) => Err(ExportError::Read(e)),
        };
        let _ = sink.tx.blocking_send(Feed::Finished(result));
    });

    let total: u64 = images.iter().map(|i| i.size).sum();
    let chooser = Chooser::for_peer(opts.compress, conn.remote_address(), opts.bwlimit.is_some());
    let limit = RateLimit::new(opts.bwlimit);
    let zstd_error = |source| TransferError::Io {
        what: "zstd".into(),
        source,
    };
    // The blob being sent: its stream, digest, raw and wire bytes so far,
    // its encoder (a blob stream's zstd stream is its own) and frame timer.
    let mut stream: Option<(quinn::SendStream, Digest, u64, u64, ChunkEncoder, WireTimer)> = None;
    // Once a second, whether the export moves or not (Docker 20.10 writes
    // a whole image to a temporary directory before the first byte): the
    // receiver shows it, and its stall timer starts again.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let found = loop {
        tokio::select! {
            item = feed.recv() => match item {
                Some(Feed::Read(n)) => {
                    events.stage("export", n, Some(total));
                    summary.bytes_export = n;
                }
                Some(Feed::Start { digest, size, offset }) => {
                    let mut s = conn
                        .open_uni()
                        .await
                        .map_err(|e| TransferError::connection(peer, e))?;
                    let header = BlobHeader { digest: digest.clone(), offset, size: Some(size), long_window: false };
                    s.write_all(&header.encode()).await.map_err(|e| write_error(peer, e))?;
                    events.started(&digest, size, offset);
                    let encoder = ChunkEncoder::new(&chooser, false).map_err(zstd_error)?;
                    stream = Some((s, digest, 0, 0, encoder, WireTimer::default()));
                }
                Some(Feed::Chunk(bytes)) => {
                    let Some((s, digest, raw, wire, encoder, timer)) = stream.as_mut() else {
                        continue;
                    };
                    let frame = tokio::task::block_in_place(|| {
                        encoder.encode(encode_chunk(ChunkKind::Raw, &bytes))
                    })
                    .map_err(zstd_error)?;
                    let t = Instant::now();
                    s.write_all(&frame).await.map_err(|e| write_error(peer, e))?;
                    if let Some(limit) = &limit {
                        limit.pace(frame.len()).await;
                    }
                    timer.sent(&chooser, frame.len(), t.elapsed());
                    events.progress(digest, bytes.len() as u64);
                    *raw += bytes.len() as u64;
                    *wire += frame.len() as u64;
                }
                Some(Feed::End) => {
                    if let Some((mut s, digest, raw, wire, _, _)) = stream.take() {
                        s.finish().map_err(|e| TransferError::Stream {
                            what: peer.to_string(),
                            reason: e.to_string(),
                        })?;
                        events.sent(&digest, raw, wire);
                        summary.bytes_raw += raw;
                        summary.bytes_wire += wire;
                    }
                }
                Some(Feed::Finished(result)) => {
                    break result.map_err(|e| TransferError::Engine(Box::new(e)))?;
                }
                None => {
                    return Err(TransferError::Stream {
                        what: "the engine's export".into(),
                        reason: "its reader stopped".into(),
                    });
                }
            },
            _ = tick.tick() => {
                let msg = Message::Progress { stage: "export".into(), bytes: summary.bytes_export };
                ctl.say(&msg).await?;
            }
            msg = ctl.next() => match msg? {
                Message::Done { .. } => {
                    return Err(SessionError::Unexpected {
                        expected: "stored, loaded or progress",
                        got: "done",
                    }
                    .into());
                }
                msg => {
                    on_message(msg, &events, &mut summary, peer)?;
                }
            },
        }
    };

    // Sizes are known now: show what the receiver already had.
    for digest in offered.iter().filter(|d| !want.contains_key(*d)) {
        events.skipped(digest, found.get(digest).copied().unwrap_or(0));
    }
    let manifests = images
        .iter()
        .map(|i| String::from_utf8_lossy(&manifest_for(i, &found)).into_owned())
        .collect();
    ctl.say(&Message::Manifests { manifests }).await?;
    while !on_message(ctl.next().await?, &events, &mut summary, peer)? {}

    let _ = ctl.send.finish();
    conn.close(close::DONE.into(), b"done");
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn write_error(peer: &str, e: quinn::WriteError) -> TransferError {
    match e {
        quinn::WriteError::ConnectionLost(c) => TransferError::connection(peer, c),
        other => TransferError::Stream {
            what: peer.to_string(),
            reason: other.to_string(),
        },
    }
}

/// Hands the export thread's output to the async side, blocking while the
/// channel is full (the wire is the slower end).
struct ChannelSink {
    tx: mpsc::Sender<Feed>,
    /// The last count of bytes read that was passed on.
    last: u64,
}

impl ChannelSink {
    fn send(&self, item: Feed) -> io::Result<()> {
        self.tx
            .blocking_send(item)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the transfer stopped"))
    }
}

impl BlobSink for ChannelSink {
    fn progress(&mut self, read: u64) -> io::Result<()> {
        // At most one report per MiB read.
        if read < self.last + (1 << 20) {
            return Ok(());
        }
        self.last = read;
        self.send(Feed::Read(read))
    }

    fn read_all(&mut self, read: u64) -> io::Result<()> {
        self.send(Feed::Read(read))
    }

    fn start(&mut self, digest: &Digest, size: u64, offset: u64) -> io::Result<()> {
        self.send(Feed::Start {
            digest: digest.clone(),
            size,
            offset,
        })
    }

    fn chunk(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.send(Feed::Chunk(bytes.to_vec()))
    }

    fn end(&mut self) -> io::Result<()> {
        self.send(Feed::End)
    }
}
