//! The sending end: offer images, send each blob the receiver wants on its
//! own stream, several at once, and report what the receiver stored.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::auto::{Chooser, Compress, WireTimer};
use super::codec::{ChunkEncoder, LONG_WINDOW_MIN};
use super::session::{check_want, check_welcome};
use super::wire::{BlobHeader, CHUNK, ChunkKind, Message, OfferedImage, VERSION, WantedBlob};
use super::{TransferError, close, printable, read_message, write_message};
use crate::digest::Digest;
use crate::store::{Image, Store};

/// How to send.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub compress: Compress,
    /// Wire bytes per second, all streams together (`--bwlimit`).
    pub bwlimit: Option<u64>,
    /// Blob streams open at once.
    pub streams: usize,
    /// The bootstrap token, when the receiver printed one.
    pub token: Option<String>,
    /// How long to wait for the receiver's answers.
    pub timeout: Duration,
}

impl Default for SendOptions {
    fn default() -> SendOptions {
        SendOptions {
            compress: Compress::Auto,
            bwlimit: None,
            streams: 4,
            token: None,
            timeout: Duration::from_secs(120),
        }
    }
}

/// One image to offer, with the names it gets on the receiver.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub image: Image,
    pub names: Vec<String>,
    pub manifest_bytes: Vec<u8>,
}

/// What the sender reports as it goes (to bars, lines or JSON).
pub trait SendEvents: Send + Sync {
    /// The receiver's answer: the blobs that will be sent.
    fn planned(&self, _wanted: &[WantedBlob]) {}
    /// The receiver already has this blob.
    fn skipped(&self, digest: &Digest, size: u64);
    /// A blob starts at `offset` (non-zero when resuming).
    fn started(&self, digest: &Digest, size: u64, offset: u64);
    /// `raw` more bytes of a blob are on their way.
    fn progress(&self, digest: &Digest, raw: u64);
    /// A blob is sent; the receiver will confirm with `stored`.
    fn sent(&self, digest: &Digest, raw: u64, wire: u64);
    /// The receiver verified and stored a blob.
    fn stored(&self, _digest: &Digest) {}
    /// The receiver committed an image.
    fn loaded(&self, id: &Digest, names: &[String]);
    /// A long stage moved on: reading the engine's export here ("export",
    /// `total` the engine's figure for the images), or the receiver feeding
    /// its engine ("engine", no total).
    fn stage(&self, _stage: &str, _bytes: u64, _total: Option<u64>) {}
    /// The receiver loaded the images into its Docker Engine, or failed to.
    fn engine(&self, _report: &EngineReport) {}
}

/// What the receiver's Docker Engine made of the images.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct EngineReport {
    /// The engine's lines (`Loaded image: x:1`) after rimg's own.
    pub lines: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The totals of one push.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub images: Vec<LoadedImage>,
    pub blobs_total: usize,
    pub blobs_sent: usize,
    pub blobs_skipped: usize,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
    /// Bytes of a Docker Engine's export read (sent or not).
    pub bytes_export: u64,
    pub seconds: f64,
    /// The receiver's engine report, when it loads into one.
    pub engine: Option<EngineReport>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadedImage {
    pub id: Digest,
    pub names: Vec<String>,
}

/// Keeps all streams together under `--bwlimit`.
pub(super) struct RateLimit {
    rate: u64,
    state: Mutex<(Instant, u64)>,
}

impl RateLimit {
    /// `--bwlimit`, when given.
    pub(super) fn new(bwlimit: Option<u64>) -> Option<Arc<RateLimit>> {
        bwlimit.map(|rate| {
            Arc::new(RateLimit {
                rate: rate.max(1),
                state: Mutex::new((Instant::now(), 0)),
            })
        })
    }

    pub(super) async fn pace(&self, bytes: usize) {
        let wait = {
            let mut s = self.state.lock().expect("not poisoned");
            s.1 += bytes as u64;
            let due = Duration::from_secs_f64(s.1 as f64 / self.rate as f64);
            due.saturating_sub(s.0.elapsed())
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Everything one blob task needs.
struct BlobJob {
    conn: quinn::Connection,
    path: PathBuf,
    want: WantedBlob,
    /// The stream takes the long window the receiver granted.
    long: bool,
    chooser: Arc<Chooser>,
    limit: Option<Arc<RateLimit>>,
    events: Arc<dyn SendEvents>,
    peer: String,
}

/// Runs a whole push over an established, checked connection.
pub async fn send(
    conn: &quinn::Connection,
    peer: &str,
    store: &Store,
    images: &[Outgoing],
    opts: &SendOptions,
    events: Arc<dyn SendEvents>,
) -> Result<Summary, TransferError> {
    let started = Instant::now();
    let mut ctl = Control::open(conn, peer, opts).await?;

    let mut offered: BTreeMap<Digest, u64> = BTreeMap::new();
    for out in images {
        let m = &out.image.manifest;
        for d in std::iter::once(&m.config).chain(&m.layers) {
            offered.insert(d.digest.clone(), d.size);
        }
    }
    let offer = Message::Offer {
        images: images
            .iter()
            .map(|o| OfferedImage {
                names: o.names.clone(),
                manifest: Some(String::from_utf8_lossy(&o.manifest_bytes).into_owned()),
                deferred: None,
            })
            .collect(),
    };
    ctl.say(&offer).await?;
    let answer = ctl.next().await?;
    let wanted = check_want(&offered, &answer)?;
    let granted = matches!(
        answer,
        Message::Want {
            long_window: true,
            ..
        }
    );

    let mut summary = Summary {
        blobs_total: offered.len(),
        blobs_sent: wanted.len(),
        blobs_skipped: offered.len() - wanted.len(),
        ..Summary::default()
    };
    events.planned(&wanted);
    for (digest, size) in &offered {
        if !wanted.iter().any(|w| &w.digest == digest) {
            events.skipped(digest, *size);
        }
    }

    let streams = opts.streams.clamp(1, 16);
    let chooser = Arc::new(Chooser::for_peer(
        opts.compress,
        conn.remote_address(),
        opts.bwlimit.is_some(),
    ));
    let limit = RateLimit::new(opts.bwlimit);
    // The long window goes to the first blob with enough left to gain from
    // it, if the receiver granted one and the stream may be compressed.
    let long_for = match granted && chooser.may_compress() {
        true => wanted.iter().position(|w| w.left() >= LONG_WINDOW_MIN),
        false => None,
    };
    let mut queue = wanted.into_iter().enumerate();
    let mut tasks = JoinSet::new();
    let mut spawn_next = |tasks: &mut JoinSet<_>| {
        if let Some((i, want)) = queue.next() {
            let job = BlobJob {
                conn: conn.clone(),
                path: store.blob_path(&want.digest),
                want,
                long: long_for == Some(i),
                chooser: chooser.clone(),
                limit: limit.clone(),
                events: events.clone(),
                peer: peer.to_string(),
            };
            tasks.spawn(send_blob(job));
        }
    };
    for _ in 0..streams {
        spawn_next(&mut tasks);
    }

    loop {
        tokio::select! {
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let (raw, wire) = joined.map_err(|e| TransferError::Stream {
                    what: "blob task".into(),
                    reason: e.to_string(),
                })??;
                summary.bytes_raw += raw;
                summary.bytes_wire += wire;
                spawn_next(&mut tasks);
            }
            msg = ctl.next() => if on_message(msg?, &events, &mut summary, peer)? {
                break;
            },
        }
    }

    let _ = ctl.send.finish();
    tracing::debug!(stats = ?conn.stats(), "connection to {peer}");
    conn.close(close::DONE.into(), b"done");
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The sender's control stream, after `hello` and `welcome`. Its messages
/// are read by their own task: a read cancelled half way by `select!`
/// would lose bytes.
pub(super) struct Control<'a> {
    pub send: quinn::SendStream,
    rx: mpsc::Receiver<Result<Message, TransferError>>,
    peer: &'a str,
}

impl<'a> Control<'a> {
    /// Opens the stream and agrees on the version.
    pub async fn open(
        conn: &quinn::Connection,
        peer: &'a str,
        opts: &SendOptions,
    ) -> Result<Control<'a>, TransferError> {
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| TransferError::connection(peer, e))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(read_control(recv, tx, opts.timeout, peer.to_string()));
        let mut ctl = Control { send, rx, peer };
        let hello = Message::Hello {
            version: VERSION,
            token: opts.token.clone(),
        };
        ctl.say(&hello).await?;
        check_welcome(&ctl.next().await?)?;
        Ok(ctl)
    }

    pub async fn say(&mut self, msg: &Message) -> Result<(), TransferError> {
        write_message(&mut self.send, msg, self.peer).await
    }

    pub async fn next(&mut self) -> Result<Message, TransferError> {
        match self.rx.recv().await {
            Some(msg) => msg,
            None => Err(TransferError::Remote {
                peer: self.peer.to_string(),
                message: "the receiver closed the control stream".into(),
            }),
        }
    }
}

/// Handles a receiver's message while a push goes on; true on `done`.
pub(super) fn on_message(
    msg: Message,
    events: &Arc<dyn SendEvents>,
    summary: &mut Summary,
    peer: &str,
) -> Result<bool, TransferError> {
    match msg {
        Message::Stored { digest } => events.stored(&digest),
        Message::Loaded { id, names } => {
            let names: Vec<String> = names.iter().map(|n| printable(n)).collect();
            events.loaded(&id, &names);
            summary.images.push(LoadedImage { id, names });
        }
        Message::Done { .. } => return Ok(true),
        Message::Progress { stage, bytes } if stage == "engine" => {
            events.stage("engine", bytes, None);
        }
        Message::Engine { lines, error } => {
            let report = EngineReport {
                lines: lines.iter().map(|l| printable(l)).collect(),
                error: error.as_deref().map(printable),
            };
            events.engine(&report);
            summary.engine = Some(report);
        }
        Message::Error { message, digest } => {
            let message = match digest {
                Some(d) => format!("{} (blob {d})", printable(&message)),
                None => printable(&message),
            };
            return Err(TransferError::Remote {
                peer: peer.to_string(),
                message,
            });
        }
        other => {
            return Err(super::session::SessionError::Unexpected {
                expected: "stored, loaded, progress, engine or done",
                got: other.kind(),
            }
            .into());
        }
    }
    Ok(false)
}

pub(super) async fn read_control(
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Result<Message, TransferError>>,
    timeout: Duration,
    peer: String,
) {
    loop {
        let msg = match read_message(&mut recv, timeout, &peer).await {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let stop = msg.is_err();
        if tx.send(msg).await.is_err() || stop {
            return;
        }
    }
}

/// Frames read ahead of the stream, per blob (each at most [`CHUNK`]).
const READ_AHEAD: usize = 4;

/// Reads `remaining` bytes of a blob into frames, compressed where the
/// chooser says so, and queues each with its raw length. Stops early when
/// the sending side has gone (its error is reported there).
fn read_frames(
    mut file: std::fs::File,
    mut remaining: u64,
    chooser: &Chooser,
    long: bool,
    frames: mpsc::Sender<(usize, Bytes)>,
) -> std::io::Result<()> {
    let mut encoder = ChunkEncoder::new(chooser, long)?;
    while remaining > 0 {
        let n = (remaining as usize).min(CHUNK);
        // Room for the frame's prefix and kind, then the bytes read straight
        // after them: a raw frame needs no further copy.
        let mut frame = Vec::with_capacity(5 + n);
        frame.extend_from_slice(&((n + 1) as u32).to_be_bytes());
        frame.push(ChunkKind::Raw as u8);
        (&mut file).take(n as u64).read_to_end(&mut frame)?;
        if frame.len() != 5 + n {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the blob file ended {remaining} bytes early"),
            ));
        }
        let frame = encoder.encode(frame)?;
        if frames.blocking_send((n, Bytes::from(frame))).is_err() {
            return Ok(());
        }
        remaining -= n as u64;
    }
    Ok(())
}

/// Sends one blob from the offset the receiver asked for; returns the raw
/// and wire byte counts.
async fn send_blob(job: BlobJob) -> Result<(u64, u64), TransferError> {
    let digest = job.want.digest.clone();
    send_blob_inner(job).await.map_err(|e| TransferError::Blob {
        digest,
        source: Box::new(e),
    })
}

async fn send_blob_inner(job: BlobJob) -> Result<(u64, u64), TransferError> {
    let BlobJob {
        conn,
        path,
        want,
        long,
        chooser,
        limit,
        events,
        peer,
    } = job;
    let io_err = |source| TransferError::Io {
        what: path.display().to_string(),
        source,
    };
    let write_err = |e: quinn::WriteError| match e {
        quinn::WriteError::ConnectionLost(c) => TransferError::connection(&peer, c),
        other => TransferError::Stream {
            what: peer.clone(),
            reason: other.to_string(),
        },
    };

    let mut file = std::fs::File::open(&path).map_err(io_err)?;
    // Read ahead generously: the blob is read once, front to back.
    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
    file.seek(SeekFrom::Start(want.offset)).map_err(io_err)?;
    let mut stream = conn
        .open_uni()
        .await
        .map_err(|e| TransferError::connection(&peer, e))?;
    let header = BlobHeader {
        digest: want.digest.clone(),
        offset: want.offset,
        size: None,
        long_window: long,
    };
    stream
        .write_all(&header.encode())
        .await
        .map_err(write_err)?;
    events.started(&want.digest, want.size, want.offset);

    // A thread reads (and compresses) ahead while this task writes frames,
    // which quinn takes without copying them.
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    let reader = tokio::task::spawn_blocking({
        let chooser = chooser.clone();
        let remaining = want.left();
        move || read_frames(file, remaining, &chooser, long, tx)
    });
    let (mut raw, mut wire) = (0u64, 0u64);
    let mut timer = WireTimer::default();
    while let Some((n, frame)) = rx.recv().await {
        let len = frame.len();
        let t = Instant::now();
        stream.write_chunk(frame).await.map_err(write_err)?;
        if let Some(limit) = &limit {
            limit.pace(len).await;
        }
        // The link as this stream sees it: --bwlimit is part of it.
        timer.sent(&chooser, len, t.elapsed());
        events.progress(&want.digest, n as u64);
        raw += n as u64;
        wire += len as u64;
    }
    reader
        .await
        .map_err(|e| TransferError::Stream {
            what: path.display().to_string(),
            reason: e.to_string(),
        })?
        .map_err(io_err)?;
    stream.finish().map_err(|e| TransferError::Stream {
        what: peer.clone(),
        reason: e.to_string(),
    })?;
    events.sent(&want.digest, raw, wire);
    Ok((raw, wire))
}
