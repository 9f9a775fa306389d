//! `import`: a rootfs tarball becomes a one-layer image, as `docker import`.
//!
//! The tarball (a file, an `http(s)` URL or stdin; plain, gzip, bzip2, xz
//! or zstd, told apart by its bytes) is stored as it is once decompressed:
//! that tar is the layer, so its digest is the DiffID whatever compression
//! it came in. Nothing is unpacked; the bytes are checked to be a tar (every
//! header, see [`walk`]) while they are hashed and written.
//!
//! Two threads share the work, so a large import runs at the speed of the
//! slower of them rather than the sum: one reads the source and
//! decompresses it into 1 MiB chunks; the other hashes and writes each chunk
//! to the store's temporary area and walks the tar headers in it. A bounded
//! channel between them keeps memory flat (a few chunks in flight) whatever
//! the size of the tarball.
//!
//! Failure at any point drops the [`Staging`](crate::store::Staging), which
//! deletes the partial blob: the store is left exactly as it was.

mod changes;
pub mod walk;

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::time::Duration;

pub use changes::ChangeError;
use walk::{Feed, WalkError};

use crate::compress::{self, Compression, OpenError};
use crate::digest::Digest;
use crate::image::{
    Descriptor, History, ImageConfig, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, Manifest, Platform,
    RootFs, RunConfig,
};
use crate::progress::{Progress, ReadProgress};
use crate::reference::Reference;
use crate::store::{BlobWriter, NewImage, Store, StoreError};

/// Size of the chunks passed between the reading and the writing thread.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between them: bounds memory at about `CHUNK * (DEPTH+2)`.
const DEPTH: usize = 4;
/// How much is written between two background syncs of the layer file.
/// Without them the final sync would write the whole layer to disk at the
/// end, after everything else is done; with them, the disk works while
/// the tarball is still being read.
const SYNC_EVERY: u64 = 64 << 20;

/// What went wrong in an import. Each variant names the source.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be opened or read.
    #[error("cannot read {source_name}: {error}")]
    Read {
        source_name: String,
        error: io::Error,
    },
    /// The URL could not be fetched (connection, TLS, HTTP status).
    #[error("cannot download {url}: {reason}")]
    Download { url: String, reason: String },
    /// The bytes are not a tar, compressed or not.
    #[error("cannot import {source_name}: {error}")]
    NotATar {
        source_name: String,
        error: OpenError,
    },
    /// The decompressor (or the plain read) failed partway.
    #[error(
        "cannot import {source_name}: reading the {compression} stream failed after {offset} bytes of tar: {error}"
    )]
    Stream {
        source_name: String,
        compression: Compression,
        offset: u64,
        error: io::Error,
    },
    /// A header in the tar is bad, or the tar is cut short.
    #[error("cannot import {source_name}: not a valid tar: {error}")]
    BadTar {
        source_name: String,
        error: walk::TarError,
    },
    /// The layer could not be written to the store's temporary area.
    #[error("cannot import {source_name}: writing the layer to the store failed: {error}")]
    Write {
        source_name: String,
        error: io::Error,
    },
    /// Stdin is a terminal: there is no tarball to read.
    #[error("refusing to read a tarball from a terminal (SOURCE is -)")]
    StdinIsTerminal,
    #[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT], such as linux/amd64")]
    Platform(String),
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the tarball comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Url(String),
    Stdin,
}

impl Source {
    /// `-` is stdin, `http://` and `https://` are URLs, anything else a path.
    pub fn parse(arg: &str) -> Source {
        let lower = arg.to_ascii_lowercase();
        if arg == "-" {
            Source::Stdin
        } else if lower.starts_with("http://") || lower.starts_with("https://") {
            Source::Url(arg.to_string())
        } else {
            Source::File(PathBuf::from(arg))
        }
    }

    /// The source as the user named it, for messages and the history.
    pub fn name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Url(u) => u.clone(),
            Source::Stdin => "-".to_string(),
        }
    }
}

/// The options of `rimg import`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// History comment; `Imported from SOURCE` when `None`.
    pub message: Option<String>,
    /// Dockerfile instructions for the config.
    pub changes: Vec<String>,
    /// `OS/ARCH[/VARIANT]`; the host's when `None`.
    pub platform: Option<String>,
    pub tag: Option<Reference>,
}

/// The image an import made.
#[derive(Debug, Clone)]
pub struct Imported {
    pub id: Digest,
    pub manifest: Digest,
    pub diff_id: Digest,
    pub layer_size: u64,
    pub compression: Compression,
}

/// Imports `source` into `store` as a one-layer image.
pub fn import(
    store: &Store,
    source: &Source,
    options: &Options,
    progress: &Progress,
) -> Result<Imported, ImportError> {
    let platform = parse_platform(options.platform.as_deref())?;
    let run_config = changes::apply(&options.changes, &platform.os)?;
    let (reader, total) = open_source(source)?;
    let name = source.name();

    let mut staging = store.stage()?;
    let bar = progress.bytes("import", total);
    let (layer, compression) = {
        let reader = ReadProgress {
            inner: reader,
            bar: &bar,
        };
        store_layer(reader, staging.writer()?, &name)?
    };
    bar.finish("done");
    tracing::debug!(source = %name, %compression, diff_id = %layer.digest, size = layer.size, "layer written");

    let diff_id = layer.digest.clone();
    let layer_size = layer.size;
    staging.add(layer);

    let comment = options
        .message
        .clone()
        .unwrap_or_else(|| format!("Imported from {name}"));
    let config_bytes = new_config(&platform, run_config, &diff_id, comment);

    let (config_digest, config_size) = staging.put_bytes(&config_bytes)?;
    let manifest = Manifest::new(
        Descriptor::new(MEDIA_OCI_CONFIG, config_digest.clone(), config_size),
        vec![Descriptor::new(
            MEDIA_OCI_LAYER,
            diff_id.clone(),
            layer_size,
        )],
    );
    let mut manifest_desc = staging.put_manifest(&manifest)?;
    manifest_desc.platform = Some(platform);
    let manifest_digest = manifest_desc.digest.clone();
    staging.commit(vec![NewImage {
        manifest: manifest_desc,
        tags: options.tag.iter().cloned().collect(),
    }])?;

    Ok(Imported {
        id: config_digest,
        manifest: manifest_digest,
        diff_id,
        layer_size,
        compression,
    })
}

/// The config of a freshly imported image, as bytes (its digest is the ID).
fn new_config(
    platform: &Platform,
    run_config: RunConfig,
    diff_id: &Digest,
    comment: String,
) -> Vec<u8> {
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut config = ImageConfig {
        created: Some(created.clone()),
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        config: (run_config != RunConfig::default()).then_some(run_config),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id.clone()],
        },
        history: vec![History {
            created: Some(created),
            comment: Some(comment.clone()),
            ..Default::default()
        }],
        ..Default::default()
    };
    // Docker keeps the import message at the top level too; `inspect` shows
    // it as `Comment`.
    config.extra.insert("comment".into(), comment.into());
    serde_json::to_vec(&config).expect("a config always serialises")
}

/// `OS/ARCH[/VARIANT]`, with the usual aliases normalised as Docker does.
fn parse_platform(spec: Option<&str>) -> Result<Platform, ImportError> {
    let Some(spec) = spec else {
        let (os, architecture) = crate::image::host_platform();
        return Ok(Platform {
            architecture,
            os,
            variant: None,
        });
    };
    let bad = || ImportError::Platform(spec.to_string());
    let parts: Vec<&str> = spec.split('/').collect();
    if !(2..=3).contains(&parts.len())
        || parts.iter().any(|p| {
            p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
    {
        return Err(bad());
    }
    let os = parts[0].to_ascii_lowercase();
    let (architecture, variant) = match parts[1].to_ascii_lowercase().as_str() {
        "x86_64" | "x86-64" | "amd64" => ("amd64".to_string(), None),
        "aarch64" | "arm64" => ("arm64".to_string(), None),
        "i386" | "i686" | "386" => ("386".to_string(), None),
        "armhf" => ("arm".to_string(), Some("v7".to_string())),
        "armel" => ("arm".to_string(), Some("v6".to_string())),
        other => (other.to_string(), None),
    };
    let variant = parts.get(2).map(|v| v.to_ascii_lowercase()).or(variant);
    Ok(Platform {
        architecture,
        os,
        variant,
    })
}

type SourceReader = Box<dyn Read + Send>;

/// Opens the source; returns its reader and its length when known.
fn open_source(source: &Source) -> Result<(SourceReader, Option<u64>), ImportError> {
    match source {
        Source::File(path) => {
            let read_err = |error| ImportError::Read {
                source_name: source.name(),
                error,
            };
            let file = File::open(path).map_err(read_err)?;
            let meta = file.metadata().map_err(read_err)?;
            if meta.is_dir() {
                return Err(read_err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "it is a directory, not a tarball",
                )));
            }
            let len = meta.is_file().then_some(meta.len());
            Ok((Box::new(file), len))
        }
        Source::Stdin => {
            let stdin = io::stdin();
            if stdin.is_terminal() {
                return Err(ImportError::StdinIsTerminal);
            }
            Ok((Box::new(stdin), None))
        }
        Source::Url(url) => download(url),
    }
}

/// Starts a download; the body is read as it is imported.
fn download(url: &str) -> Result<(SourceReader, Option<u64>), ImportError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("rimg/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| ImportError::Download {
        url: url.to_string(),
        reason: match e {
            ureq::Error::StatusCode(code) => format!("the server answered HTTP {code}"),
            other => other.to_string(),
        },
    })?;
    let body = response.into_body();
    let len = body.content_length();
    let reader = UrlReader {
        inner: body.into_reader(),
    };
    Ok((Box::new(reader), len))
}

/// A download body whose errors say it was the download that broke (the
/// error around it names the URL).
struct UrlReader {
    inner: ureq::BodyReader<'static>,
}

impl Read for UrlReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), format!("the download broke off: {e}")))
    }
}

/// What the reading thread sends.
enum Msg {
    Chunk(Vec<u8>),
    Failed(ImportError),
}

/// Decompresses `reader` on a second thread while this one hashes, writes
/// and walks the tar. Returns the staged layer.
fn store_layer<R: Read + Send>(
    reader: R,
    writer: BlobWriter,
    name: &str,
) -> Result<(crate::store::StagedBlob, Compression), ImportError> {
    let (tar, compression) = compress::open_tar(reader).map_err(|error| match error {
        OpenError::Io(error) => ImportError::Read {
            source_name: name.to_string(),
            error,
        },
        error => ImportError::NotATar {
            source_name: name.to_string(),
            error,
        },
    })?;

    let (chunks_tx, chunks_rx) = sync_channel(DEPTH);
    let (spare_tx, spare_rx) = channel();
    let (sync_tx, sync_rx) = sync_channel::<()>(1);
    let sync_file = writer.sync_handle().map_err(|error| ImportError::Write {
        source_name: name.to_string(),
        error,
    })?;
    std::thread::scope(|scope| {
        scope.spawn(move || produce(tar, compression, name, chunks_tx, spare_rx));
        scope.spawn(move || {
            // Errors are left for the final sync, which reports them.
            for () in sync_rx {
                let _ = sync_file.sync_data();
            }
        });
        let mut feed = ChunkFeed {
            chunks: chunks_rx,
            spare: spare_tx,
            chunk: Vec::new(),
            pos: 0,
            offset: 0,
            writer,
            name,
            sync: sync_tx,
            unsynced: 0,
        };
        let outcome = walk::walk(&mut feed);
        // Dropping the receiver stops the reading thread if it is still
        // going (an error here), dropping the sender ends the syncing
        // thread; the scope then joins both.
        let ChunkFeed {
            writer,
            chunks,
            sync,
            ..
        } = feed;
        drop(chunks);
        drop(sync);
        match outcome {
            Ok(summary) => {
                tracing::debug!(members = summary.members, "tar checked");
                let blob = writer.finish("layer", None)?;
                Ok((blob, compression))
            }
            Err(WalkError::Input(e)) => Err(e),
            Err(WalkError::Tar(error)) => Err(ImportError::BadTar {
                source_name: name.to_string(),
                error,
            }),
        }
    })
}

/// The reading thread: fills chunks from the decompressed stream.
fn produce(
    mut tar: compress::Decompressed<'_>,
    compression: Compression,
    name: &str,
    chunks: SyncSender<Msg>,
    spare: Receiver<Vec<u8>>,
) {
    let mut offset = 0u64;
    loop {
        let mut chunk = spare.try_recv().unwrap_or_default();
        chunk.resize(CHUNK, 0);
        let mut filled = 0;
        while filled < CHUNK {
            match tar.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    let _ = chunks.send(Msg::Failed(ImportError::Stream {
                        source_name: name.to_string(),
                        compression,
                        offset: offset + filled as u64,
                        error,
                    }));
                    return;
                }
            }
        }
        if filled == 0 {
            return;
        }
        offset += filled as u64;
        chunk.truncate(filled);
        if chunks.send(Msg::Chunk(chunk)).is_err() {
            return;
        }
    }
}

/// The writing side: every chunk is hashed and written as it arrives, then
/// handed to the walker piece by piece.
struct ChunkFeed<'a> {
    chunks: Receiver<Msg>,
    spare: Sender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    offset: u64,
    writer: BlobWriter,
    name: &'a str,
    /// Asks the syncing thread to sync what is written so far.
    sync: SyncSender<()>,
    unsynced: u64,
}

impl ChunkFeed<'_> {
    /// Makes sure unread bytes are at hand; false at the end of the stream.
    fn fill(&mut self) -> Result<bool, ImportError> {
        if self.pos < self.chunk.len() {
            return Ok(true);
        }
        let next = match self.chunks.recv() {
            Ok(Msg::Chunk(c)) => c,
            Ok(Msg::Failed(e)) => return Err(e),
            Err(_) => return Ok(false),
        };
        let write_err = |error| ImportError::Write {
            source_name: self.name.to_string(),
            error,
        };
        self.writer.write_all(&next).map_err(write_err)?;
        self.unsynced += next.len() as u64;
        if self.unsynced >= SYNC_EVERY {
            // A sync already under way is enough; this one is skipped then.
            self.writer.flush().map_err(write_err)?;
            let _ = self.sync.try_send(());
            self.unsynced = 0;
        }
        let done = std::mem::replace(&mut self.chunk, next);
        let _ = self.spare.send(done);
        self.pos = 0;
        Ok(true)
    }

    fn take(&mut self, max: u64) -> Result<&[u8], ImportError> {
        if !self.fill()? {
            return Ok(&[]);
        }
        let n = (self.chunk.len() - self.pos).min(max.min(usize::MAX as u64) as usize);
        let start = self.pos;
        self.pos += n;
        self.offset += n as u64;
        Ok(&self.chunk[start..start + n])
    }
}

impl Feed for ChunkFeed<'_> {
    type Error = ImportError;

    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, ImportError> {
        let mut done = 0;
        while done < buf.len() {
            let piece = self.take((buf.len() - done) as u64)?;
            if piece.is_empty() {
                break;
            }
            buf[done..done + piece.len()].copy_from_slice(piece);
            done += piece.len();
        }
        Ok(done)
    }

    fn skip(&mut self, n: u64) -> Result<u64, ImportError> {
        let mut done = 0;
        while done < n {
            let got = self.take(n - done)?.len() as u64;
            if got == 0 {
                break;
            }
            done += got;
        }
        Ok(done)
    }

    fn drain(&mut self) -> Result<(), ImportError> {
        self.skip(u64::MAX).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_by_their_look() {
        assert_eq!(Source::parse("-"), Source::Stdin);
        assert_eq!(
            Source::parse("HTTPS://example.com/r.tar"),
            Source::Url("HTTPS://example.com/r.tar".into())
        );
        assert_eq!(
            Source::parse("./http:x.tar"),
            Source::File("./http:x.tar".into())
        );
    }

    #[test]
    fn platforms_normalise_like_docker() {
        let p = parse_platform(Some("linux/x86_64")).unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "amd64"));
        let p = parse_platform(Some("linux/armhf")).unwrap();
        assert_eq!(
            (p.architecture.as_str(), p.variant.as_deref()),
            ("arm", Some("v7"))
        );
        let p = parse_platform(Some("windows/amd64")).unwrap();
        assert_eq!(p.os, "windows");
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/am d64",
        ] {
            assert!(parse_platform(Some(bad)).is_err(), "{bad}");
        }
        assert!(parse_platform(None).is_ok());
    }
}
