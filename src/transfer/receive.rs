//! The receiving end: answer an offer with what the store lacks, store
//! each blob as it arrives (hashed while written, verified, then moved into
//! `blobs/`), and commit each image as soon as all its blobs are in.
//!
//! The sender is treated as hostile. Every frame is bounded before it is
//! read, every blob is checked against the size and digest the manifest
//! gives, every read has a stall timeout, and free disk is checked before
//! anything is accepted. A failure ends this connection and nothing else:
//! complete blobs stay (they are verified), a partial blob stays for a
//! resume unless its bytes were shown to be wrong, and no image is tagged
//! unless all of it is present.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::codec::{ChunkDecoder, LONG_WINDOW_MIN};
use super::session::{Limits, ReceiverSession};
use super::wire::{BlobHeader, CHUNK, MAX_CHUNK_WIRE, Message, WireError};
use super::{FrameReader, TransferError, close, read_frame, read_message, write_message};
use crate::digest::Digest;
use crate::image::{Descriptor, MEDIA_OCI_MANIFEST};
use crate::store::{NewImage, PartialError, Staging, Store};

/// How a receiver bounds a transfer.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    pub limits: Limits,
    /// Longest silence on any stream before the transfer is abandoned.
    pub stall: Duration,
    /// The one-time token a bootstrap receiver printed.
    pub token: Option<String>,
    /// Free disk kept in reserve beyond what an offer needs.
    pub reserve: u64,
    /// Where committed images also go (the local Docker Engine), before
    /// `done`, so that the sender hears the result.
    pub into: Option<Arc<dyn Deliver>>,
    /// Long zstd windows (128 MiB each) this receiver grants at once, one
    /// per connection, shared by every connection served with these
    /// options (clones share it): what bounds its memory.
    pub long_windows: Arc<tokio::sync::Semaphore>,
}

/// A destination beyond the store, fed once a transfer has committed its
/// images and before the receiver sends `done`.
pub trait Deliver: Send + Sync + std::fmt::Debug {
    /// Loads the committed images (ID, names); `progress` takes the bytes
    /// fed so far. Returns the lines to report, or why it failed.
    fn deliver(
        &self,
        store: &Store,
        images: &[(Digest, Vec<String>)],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<String>, String>;
}

impl Default for ReceiveOptions {
    fn default() -> ReceiveOptions {
        ReceiveOptions {
            limits: Limits::default(),
            stall: Duration::from_secs(60),
            token: None,
            reserve: 256 << 20,
            into: None,
            long_windows: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }
}

/// What the receiver reports as it goes.
pub trait ReceiveEvents: Send + Sync {
    /// The blobs this transfer will receive.
    fn planned(&self, _wanted: &[super::wire::WantedBlob]) {}
    fn skipped(&self, digest: &Digest, size: u64);
    fn started(&self, digest: &Digest, size: u64, offset: u64);
    fn progress(&self, digest: &Digest, bytes: u64);
    fn stored(&self, digest: &Digest);
    /// A blob stream failed; the transfer ends with the error.
    fn failed(&self, _digest: &Digest) {}
    fn loaded(&self, id: &Digest, names: &[String]);
    /// A long stage moved on: the sender's reading of its engine's export
    /// ("export", with the offer's size hint as `total`), or feeding the
    /// local engine ("engine").
    fn stage(&self, _stage: &str, _bytes: u64, _total: Option<u64>) {}
    /// What the local engine made of the images.
    fn delivered(&self, _result: &Result<Vec<String>, String>) {}
}

/// The totals of one received transfer.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub images: Vec<(Digest, Vec<String>)>,
    pub blobs_stored: usize,
    pub blobs_skipped: usize,
    /// What `ReceiveOptions::into` reported, when it ran.
    pub engine: Option<Result<Vec<String>, String>>,
}

struct Shared {
    store: Store,
    session: Mutex<ReceiverSession>,
    stall: Duration,
    reserve: u64,
    events: Arc<dyn ReceiveEvents>,
    peer: String,
    /// The long window granted in `want`, until a blob stream takes it.
    long_window: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

/// Serves one connection until the transfer is done or fails. On failure
/// the connection is closed with the error as its reason, so the sender
/// sees it too.
pub async fn serve(
    conn: quinn::Connection,
    peer: &str,
    store: Store,
    opts: ReceiveOptions,
    events: Arc<dyn ReceiveEvents>,
) -> Result<Received, TransferError> {
    let result = serve_inner(&conn, peer, store, opts, events).await;
    match &result {
        Ok(_) => {
            // The sender closes once it has read `done`; wait for that so the
            // last message is not lost, but not for ever.
            let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        }
        Err(e) => {
            let reason = e.close_reason();
            conn.close(close::ERROR.into(), reason.as_bytes());
        }
    }
    result
}

async fn serve_inner(
    conn: &quinn::Connection,
    peer: &str,
    store: Store,
    opts: ReceiveOptions,
    events: Arc<dyn ReceiveEvents>,
) -> Result<Received, TransferError> {
    let (mut ctl_send, mut ctl_recv) = tokio::time::timeout(opts.stall, conn.accept_bi())
        .await
        .map_err(|_| TransferError::Stalled {
            what: format!("{peer}: waiting for the control stream"),
            secs: opts.stall.as_secs(),
        })?
        .map_err(|e| TransferError::connection(peer, e))?;
    let mut next = async || -> Result<Message, TransferError> {
        read_message(&mut ctl_recv, opts.stall, peer)
            .await?
            .ok_or_else(|| TransferError::Remote {
                peer: peer.to_string(),
                message: "the sender closed the control stream".into(),
            })
    };

    let mut session = ReceiverSession::new(opts.token.clone(), opts.limits.clone());
    let welcome = session.on_hello(&next().await?)?;
    write_message(&mut ctl_send, &welcome, peer).await?;

    let offer = next().await?;
    // Held from here to the end: garbage collection must not remove a blob
    // the plan counts as present, nor one that arrived before the commit
    // of the image that names it.
    let _guard = store.stage()?;
    let plan = tokio::task::block_in_place(|| session.on_offer(&offer, &store))?;
    check_free_disk(&store, plan.bytes_needed.saturating_add(opts.reserve))?;
    let version = session.version();

    events.planned(&plan.want);
    let mut received = Received::default();
    let wanted: std::collections::BTreeSet<&Digest> = plan
        .want
        .iter()
        .map(|w| &w.digest)
        .chain(plan.deferred.iter().map(|w| &w.digest))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut export_total = 0u64;
    for i in 0..session.image_count() {
        let image = session.image(i);
        if let Some(d) = &image.deferred {
            export_total = export_total.saturating_add(d.size_hint);
        }
        for digest in image.blob_digests() {
            if !wanted.contains(&digest) && seen.insert(digest.clone()) {
                events.skipped(&digest, store.blob_size(&digest).unwrap_or(0));
                received.blobs_skipped += 1;
            }
        }
    }

    // Only for a blob big enough for the sender to use it; held by the
    // stream that takes it to its end, else to the end of the connection.
    let big = plan.want.iter().any(|w| w.left() >= LONG_WINDOW_MIN);
    let long_permit = match version >= 4 && big {
        true => opts.long_windows.clone().try_acquire_owned().ok(),
        false => None,
    };
    write_message(
        &mut ctl_send,
        &Message::Want {
            blobs: plan.want.clone(),
            deferred: plan.deferred.clone(),
            long_window: long_permit.is_some(),
        },
        peer,
    )
    .await?;

    // From here the sender may speak at any time (progress, manifests):
    // its messages are read by their own task, as a read cancelled half way
    // by `select!` would lose bytes. Silence is bounded by the stall timer
    // below, not by the reader.
    let (ctl_tx, mut ctl_rx) = mpsc::channel(16);
    tokio::spawn(super::send::read_control(
        ctl_recv,
        ctl_tx,
        Duration::from_secs(24 * 3600),
        peer.to_string(),
    ));

    let shared = Arc::new(Shared {
        store: store.clone(),
        session: Mutex::new(session),
        stall: opts.stall,
        reserve: opts.reserve,
        events: events.clone(),
        peer: peer.to_string(),
        long_window: Mutex::new(long_permit),
    });
    let mut commit = Committer {
        store: &store,
        shared: &shared,
        peer,
        received: &mut received,
    };
    commit.ready(plan.ready, &mut ctl_send).await?;

    let mut tasks = JoinSet::new();
    let mut remaining = plan.want.len() + plan.deferred.len();
    let mut control_open = true;
    // Silence between blob streams ends the transfer at this deadline.
    // Export progress moves it only as the export grows by a step and
    // stays within reach of its size hint: repeated, it would otherwise let
    // a sender hold one of the listener's slots for ever.
    let from_now = || tokio::time::Instant::now() + opts.stall;
    let mut deadline = from_now();
    let mut export_counted = 0u64;
    let export_cap = export_total.saturating_mul(2).saturating_add(1 << 30);
    let awaiting = |shared: &Shared| {
        shared
            .session
            .lock()
            .expect("not poisoned")
            .awaiting_manifests()
    };
    while remaining > 0 || !tasks.is_empty() || awaiting(&shared) {
        tokio::select! {
            stream = conn.accept_uni(), if remaining > 0 => {
                let stream = stream.map_err(|e| TransferError::connection(peer, e))?;
                remaining -= 1;
                tasks.spawn(receive_blob(stream, shared.clone()));
                deadline = from_now();
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let digest = joined.map_err(|e| TransferError::Stream {
                    what: "blob task".into(),
                    reason: e.to_string(),
                })??;
                commit.received.blobs_stored += 1;
                deadline = from_now();
                write_message(&mut ctl_send, &Message::Stored { digest: digest.clone() }, peer).await?;
                let ready = shared.session.lock().expect("not poisoned").blob_stored(&digest);
                commit.ready(ready, &mut ctl_send).await?;
            }
            msg = ctl_rx.recv(), if control_open => match msg {
                None if awaiting(&shared) => {
                    return Err(TransferError::Remote {
                        peer: peer.to_string(),
                        message: "the sender closed the control stream before its manifests".into(),
                    });
                }
                None => control_open = false,
                Some(Err(e)) => return Err(e),
                Some(Ok(Message::Progress { stage, bytes })) if version >= 2 && stage == "export" => {
                    if bytes > export_cap {
                        return Err(TransferError::Remote {
                            peer: peer.to_string(),
                            message: format!(
                                "export progress {bytes} is past twice the size offered ({export_total})"
                            ),
                        });
                    }
                    // Without a deferred image there is no export to wait for.
                    if export_total > 0 && bytes >= export_counted.saturating_add(EXPORT_STEP) {
                        export_counted = bytes;
                        deadline = from_now();
                    }
                    events.stage("export", bytes, Some(export_total));
                }
                Some(Ok(msg @ Message::Manifests { .. })) => {
                    deadline = from_now();
                    let ready = tokio::task::block_in_place(|| {
                        shared.session.lock().expect("not poisoned").on_manifests(&msg, &store)
                    })?;
                    commit.ready(ready, &mut ctl_send).await?;
                }
                Some(Ok(Message::Error { message, .. })) => {
                    let message = super::printable(&message);
                    return Err(TransferError::Remote { peer: peer.to_string(), message });
                }
                Some(Ok(other)) => {
                    return Err(super::session::SessionError::Unexpected {
                        expected: "progress or manifests",
                        got: other.kind(),
                    }
                    .into());
                }
            },
            _ = tokio::time::sleep_until(deadline), if tasks.is_empty() => {
                return Err(TransferError::Stalled {
                    what: format!("{peer}: waiting for a blob stream"),
                    secs: opts.stall.as_secs(),
                });
            }
        }
    }

    if let Some(into) = &opts.into
        && !received.images.is_empty()
    {
        let result = deliver(
            into.clone(),
            &store,
            &received.images,
            version,
            &mut ctl_send,
            &events,
            peer,
        )
        .await?;
        events.delivered(&result);
        if version >= 2 {
            let (lines, error) = match &result {
                Ok(lines) => (lines.clone(), None),
                Err(e) => (Vec::new(), Some(e.clone())),
            };
            write_message(&mut ctl_send, &Message::Engine { lines, error }, peer).await?;
        }
        received.engine = Some(result);
    }

    let count = received.images.len() as u32;
    write_message(&mut ctl_send, &Message::Done { images: count }, peer).await?;
    let _ = ctl_send.finish();
    Ok(received)
}

/// Commits the images that became complete and tells the sender.
struct Committer<'a> {
    store: &'a Store,
    shared: &'a Shared,
    peer: &'a str,
    received: &'a mut Received,
}

impl Committer<'_> {
    async fn ready(
        &mut self,
        ready: Vec<usize>,
        ctl_send: &mut quinn::SendStream,
    ) -> Result<(), TransferError> {
        for i in ready {
            let loaded = {
                let session = self.shared.session.lock().expect("not poisoned");
                commit_image(self.store, &session, i)?
            };
            self.shared
                .session
                .lock()
                .expect("not poisoned")
                .image_committed(i);
            self.shared.events.loaded(&loaded.id, &loaded.names);
            write_message(ctl_send, &loaded.message(), self.peer).await?;
            self.received.images.push((loaded.id, loaded.names));
        }
        Ok(())
    }
}

/// Runs the delivery (the local engine's load) off the async threads, and
/// tells the sender how far it is once a second, which also keeps the
/// sender from giving up on a long load.
async fn deliver(
    into: Arc<dyn Deliver>,
    store: &Store,
    images: &[(Digest, Vec<String>)],
    version: u32,
    ctl_send: &mut quinn::SendStream,
    events: &Arc<dyn ReceiveEvents>,
    peer: &str,
) -> Result<Result<Vec<String>, String>, TransferError> {
    let fed = Arc::new(AtomicU64::new(0));
    let (store, images, counter) = (store.clone(), images.to_vec(), fed.clone());
    let mut job = tokio::task::spawn_blocking(move || {
        into.deliver(&store, &images, &|n| counter.store(n, Ordering::Relaxed))
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            result = &mut job => {
                let bytes = fed.load(Ordering::Relaxed);
                events.stage("engine", bytes, None);
                if version >= 2 {
                    let msg = Message::Progress { stage: "engine".into(), bytes };
                    write_message(ctl_send, &msg, peer).await?;
                }
                return Ok(result.unwrap_or_else(|e| Err(format!("the engine load failed: {e}"))));
            }
            _ = tick.tick() => {
                let bytes = fed.load(Ordering::Relaxed);
                events.stage("engine", bytes, None);
                if version >= 2 {
                    let msg = Message::Progress { stage: "engine".into(), bytes };
                    write_message(ctl_send, &msg, peer).await?;
                }
            }
        }
    }
}

struct Loaded {
    id: Digest,
    names: Vec<String>,
}

impl Loaded {
    fn message(&self) -> Message {
        Message::Loaded {
            id: self.id.clone(),
            names: self.names.clone(),
        }
    }
}

/// Stores the manifest and tags an image whose blobs are all present.
fn commit_image(
    store: &Store,
    session: &ReceiverSession,
    i: usize,
) -> Result<Loaded, TransferError> {
    let image = session.image(i);
    let Some(manifest) = &image.manifest else {
        return Err(TransferError::Stream {
            what: format!("image {i}"),
            reason: "committed before its manifest arrived".into(),
        });
    };
    let mut staging: Staging = store.stage()?;
    let (digest, size) = staging.put_bytes(&image.manifest_bytes)?;
    let media = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| MEDIA_OCI_MANIFEST.to_string());
    let desc = Descriptor::new(&media, digest, size);
    let committed = tokio::task::block_in_place(|| {
        staging.commit(vec![NewImage {
            manifest: desc,
            tags: image.names.clone(),
        }])
    })?;
    let id = committed
        .first()
        .map(|c| c.id.clone())
        .unwrap_or_else(|| manifest.config.digest.clone());
    Ok(Loaded {
        id,
        names: image.names.iter().map(|n| n.familiar()).collect(),
    })
}

fn check_free_disk(store: &Store, need: u64) -> Result<(), TransferError> {
    let stat = rustix::fs::statvfs(store.root()).map_err(|e| TransferError::Io {
        what: format!("free space of {}", store.root().display()),
        source: e.into(),
    })?;
    let have = stat.f_bavail.saturating_mul(stat.f_frsize);
    if need > have {
        return Err(TransferError::NoSpace {
            path: store.root().display().to_string(),
            need,
            have,
        });
    }
    Ok(())
}

/// How much a sender's engine export must grow for its progress to count
/// as the transfer moving.
const EXPORT_STEP: u64 = 1 << 20;

/// Chunks queued between a blob stream and its writer thread (each at most
/// [`CHUNK`] bytes). Four held up to 10 MiB more at the listener's peak
/// on a loopback push, and were no faster: the connection's flow-control
/// window is the buffer that matters.
const WRITE_AHEAD: usize = 2;

/// Written bytes not yet handed to the syncing thread: syncing as the blob
/// arrives leaves little for the final sync to wait for.
const SYNC_EVERY: u64 = 64 << 20;

/// The writer thread of one blob: appends and hashes each chunk, and has a
/// second thread sync what is written as it goes. Returns the partial blob
/// and, if a write failed, why.
fn write_chunks(
    mut partial: crate::store::PartialBlob,
    mut chunks: tokio::sync::mpsc::Receiver<Vec<bytes::Bytes>>,
    digest: &Digest,
    events: &dyn ReceiveEvents,
) -> (crate::store::PartialBlob, Result<(), PartialError>) {
    let syncer = match partial.sync_handle() {
        Ok(file) => file,
        Err(e) => return (partial, Err(e)),
    };
    let (sync_tx, sync_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let result = std::thread::scope(|scope| {
        scope.spawn(move || {
            // An error shows again at the final sync, which reports it.
            for () in sync_rx {
                let _ = syncer.sync_data();
            }
        });
        // Moved in, so that the syncing thread ends however this does.
        let sync_tx = sync_tx;
        let mut unsynced = 0;
        while let Some(chunk) = chunks.blocking_recv() {
            partial.write_pieces(&chunk)?;
            let n = chunk.iter().map(|p| p.len() as u64).sum::<u64>();
            events.progress(digest, n);
            unsynced += n;
            if unsynced >= SYNC_EVERY {
                let _ = sync_tx.try_send(());
                unsynced = 0;
            }
        }
        Ok(())
    });
    (partial, result)
}

/// Receives one blob stream into `partial/`, verifies it, stores it.
async fn receive_blob(
    mut stream: quinn::RecvStream,
    shared: Arc<Shared>,
) -> Result<Digest, TransferError> {
    let what = format!("{}: blob stream", shared.peer);
    let header = read_frame(&mut stream, BlobHeader::MAX, shared.stall, &what)
        .await?
        .ok_or_else(|| TransferError::Stream {
            what: what.clone(),
            reason: "ended before its header".into(),
        })?;
    let header = BlobHeader::decode(&header)?;
    let digest = header.digest.clone();
    // A blob of a deferred image was not in the free-disk check of the
    // offer (only the sender's hint was): check it now that its size is
    // known.
    if let Some(size) = header.size {
        let need = size.saturating_sub(header.offset);
        check_free_disk(&shared.store, need.saturating_add(shared.reserve))?;
    }
    let result = receive_body(&mut stream, &shared, header).await;
    if result.is_err() {
        shared.events.failed(&digest);
    }
    result.map_err(|e| TransferError::Blob {
        digest: digest.clone(),
        source: Box::new(e),
    })?;
    Ok(digest)
}

/// Opens the partial file, waiting while a previous transfer of the same
/// blob still holds it: after a sender is killed, its connection lives on
/// here until the stall timeout, and the resumed push should not fail for
/// that.
async fn open_partial(
    shared: &Shared,
    digest: &Digest,
    size: u64,
    at: u64,
) -> Result<crate::store::PartialBlob, TransferError> {
    let deadline = tokio::time::Instant::now() + shared.stall + Duration::from_secs(1);
    loop {
        match tokio::task::block_in_place(|| shared.store.open_partial_at(digest, size, at)) {
            Err(PartialError::Busy(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// Why a blob header's `long_window` is refused.
const NOT_GRANTED: &str = "the blob stream asks for a long zstd window this receiver did not grant \
     (at most one stream per connection, when `want` says so)";

async fn receive_body(
    stream: &mut quinn::RecvStream,
    shared: &Shared,
    header: BlobHeader,
) -> Result<(), TransferError> {
    let digest = header.digest;
    let (size, version) = {
        let mut session = shared.session.lock().expect("not poisoned");
        let size = session.start_blob(&digest, header.offset, header.size)?;
        (size, session.version())
    };
    // Held to the end of this stream.
    let _long_window = match header.long_window {
        false => None,
        true => {
            let permit = shared.long_window.lock().expect("not poisoned").take();
            Some(permit.ok_or_else(|| WireError::Malformed(NOT_GRANTED.into()))?)
        }
    };
    let partial = open_partial(shared, &digest, size, header.offset).await?;
    if partial.offset() != header.offset {
        return Err(super::session::SessionError::WrongOffset {
            digest,
            expected: partial.offset(),
            got: header.offset,
        }
        .into());
    }
    shared.events.started(&digest, size, header.offset);

    let what = format!("{}: blob {digest}", shared.peer);
    let (tx, rx) = tokio::sync::mpsc::channel(WRITE_AHEAD);
    let events = shared.events.clone();
    let writer = tokio::task::spawn_blocking({
        let digest = digest.clone();
        move || write_chunks(partial, rx, &digest, events.as_ref())
    });

    // Frames are read here and written by the writer thread, so the stream
    // keeps moving while the disk and the hash work.
    let mut left = size - header.offset;
    let mut frames = FrameReader::new(stream, shared.stall, &what);
    let mut decoder = ChunkDecoder::new(version >= 3, header.long_window);
    let outcome: Result<(), (TransferError, bool)> = loop {
        let frame = match frames.next(MAX_CHUNK_WIRE + 1).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            // Bytes so far are a good prefix, as far as we know: keep them
            // for a resume.
            Err(e @ (TransferError::Stalled { .. } | TransferError::Connection { .. })) => {
                break Err((e, false));
            }
            Err(e) => break Err((e, true)),
        };
        let chunk = match decoder.decode(frame, left.min(CHUNK as u64) as usize) {
            Ok(chunk) => chunk,
            Err(WireError::ChunkTooLarge(_)) if left < CHUNK as u64 => {
                break Err((
                    PartialError::TooLarge {
                        digest: digest.clone(),
                        size,
                    }
                    .into(),
                    true,
                ));
            }
            Err(e) => break Err((e.into(), true)),
        };
        left -= chunk.iter().map(|p| p.len() as u64).sum::<u64>();
        if tx.send(chunk).await.is_err() {
            // The writer stopped on an error, which it returns below.
            break Ok(());
        }
    };
    drop(tx);
    let (partial, written) = writer.await.map_err(|e| TransferError::Stream {
        what: what.clone(),
        reason: e.to_string(),
    })?;
    if let Err(e) = written {
        partial.discard();
        return Err(e.into());
    }
    match outcome {
        Ok(()) => {}
        Err((e, true)) => {
            partial.discard();
            return Err(e);
        }
        Err((e, false)) => return Err(e),
    }

    let verified = tokio::task::block_in_place(|| partial.finish())?;
    let mut staging = shared.store.stage()?;
    staging.adopt(verified)?;
    tokio::task::block_in_place(|| staging.commit(Vec::new()))?;
    shared.events.stored(&digest);
    Ok(())
}
