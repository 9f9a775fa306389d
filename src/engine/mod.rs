//! The Docker Engine as a source and a destination, through its API.
//!
//! Images often live in an engine rather than in a store of ours. The
//! Engine API exports an image only whole (`GET /images/NAME/get`, a
//! docker-archive) and loads only whole archives (`POST /images/load`), but
//! its inspect data lists an image's DiffIDs, and its classic store skips
//! any layer whose chain ID it already holds without reading that layer's
//! file from the archive. That is what lets rimg send, and feed an engine,
//! only the layers that are missing.
//!
//! Everything here is synchronous for the caller: the engine client runs on
//! a small tokio runtime owned by [`Engine`], and the export and the load
//! are bridged to `Read`/`Write` through bounded channels, so neither is
//! ever held whole in memory.

use std::collections::HashSet;
use std::io::{self, Read, Write};

use bollard::Docker;
use bollard::errors::Error as ApiError;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::digest::Digest;

pub mod export;
mod feed;
pub mod v1;

pub use feed::Fed;

/// The prefix that names an image in the local engine.
pub const SCHEME: &str = "docker-daemon:";

/// The engine's default socket, used when `DOCKER_HOST` is not set.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Chunks in flight between the engine and the caller: bounds memory to a
/// few MiB whatever the image's size.
const CHANNEL_DEPTH: usize = 16;
const CHUNK: usize = 256 << 10;

/// How long the export and the load may wait for the engine's answer.
/// Both answer late: the export once the engine has written the whole
/// image to a temporary directory, the load once it has read the whole
/// archive. The client's default (two minutes, meant for short calls) is
/// shorter than that takes for a large image, so these two get a day.
const STREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// `docker-daemon:NAME` → `Some("NAME")`.
pub fn parse_source(s: &str) -> Option<&str> {
    s.strip_prefix(SCHEME).filter(|n| !n.is_empty())
}

/// What went wrong talking to the engine. Each carries the engine's own
/// message where it sent one.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Nothing listens on the socket (or it does not exist).
    #[error("cannot reach the Docker Engine at {host}: {reason}")]
    Unreachable { host: String, reason: String },
    /// The socket exists but this user may not open it.
    #[error("permission denied on the Docker Engine socket {host}")]
    PermissionDenied { host: String },
    /// A name that cannot be an image's: it would not reach the engine as
    /// typed.
    #[error("{name:?} is not an image name or ID: {reason}")]
    BadName { name: String, reason: String },
    /// The engine has no image by that name; `message` is what it said,
    /// where that adds anything.
    #[error("the Docker Engine has no image {name:?}{}", colon(message))]
    NoSuchImage { name: String, message: String },
    /// The engine refused an archive we fed it.
    #[error("the Docker Engine refused the load: {message}")]
    LoadRefused { message: String },
    /// Any other answer from the engine.
    #[error("the Docker Engine answered {status}: {message}")]
    Api { status: u16, message: String },
    /// The connection broke, or an answer did not parse.
    #[error("talking to the Docker Engine at {host}: {reason}")]
    Transport { host: String, reason: String },
}

impl EngineError {
    /// What a user can do about it, when we know.
    pub fn hint(&self) -> Option<String> {
        match self {
            EngineError::Unreachable { .. } => Some(
                "is the Docker daemon running? rimg uses $DOCKER_HOST, else unix:///var/run/docker.sock"
                    .into(),
            ),
            EngineError::PermissionDenied { .. } => {
                Some("add this user to the docker group (then log in again), or run as root".into())
            }
            EngineError::NoSuchImage { .. } | EngineError::BadName { .. } => {
                Some("`docker images` lists what the engine has".into())
            }
            _ => None,
        }
    }
}

/// How the engine keeps images, which decides what a load must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineStore {
    /// The classic graph-driver store: layers keyed by chain ID; a load
    /// skips a layer it already holds without reading it.
    Classic { driver: String },
    /// The containerd image store (snapshotters): a load must carry every
    /// layer.
    Containerd { driver: String },
}

impl EngineStore {
    pub fn skips_present_layers(&self) -> bool {
        matches!(self, EngineStore::Classic { .. })
    }
}

impl std::fmt::Display for EngineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineStore::Classic { driver } => write!(f, "classic store ({driver})"),
            EngineStore::Containerd { driver } => write!(f, "containerd image store ({driver})"),
        }
    }
}

/// An image as the engine describes it.
#[derive(Debug, Clone)]
pub struct EngineImage {
    /// The image ID (the config digest).
    pub id: Digest,
    pub repo_tags: Vec<String>,
    /// The layers' DiffIDs, bottom first.
    pub diff_ids: Vec<Digest>,
    pub size: u64,
}

/// A connection to the local engine.
pub struct Engine {
    docker: Docker,
    rt: OwnRuntime,
    host: String,
}

/// The engine client's runtime, shut down in the background when dropped:
/// dropping a runtime the usual way blocks, which panics inside async code,
/// and an engine may end up dropped there (a push that fails before it
/// reads the export drops the engine that would have streamed it).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for OwnRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Engine {
    /// Connects to `$DOCKER_HOST`, else the default socket, and agrees on
    /// an API version (the engine may be older than the client library).
    pub fn connect() -> Result<Engine, EngineError> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.to_string());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| EngineError::Transport {
                host: host.clone(),
                reason: format!("starting the runtime: {e}"),
            })?;
        let rt = OwnRuntime(Some(rt));
        let docker = {
            let _guard = rt.enter();
            Docker::connect_with_host(&host).map_err(|e| classify(&host, e))?
        };
        let docker = rt
            .block_on(docker.negotiate_version())
            .map_err(|e| classify(&host, e))?;
        let engine = Engine { docker, rt, host };
        engine
            .rt
            .block_on(engine.docker.ping())
            .map_err(|e| classify(&engine.host, e))?;
        Ok(engine)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Inspects `name` (a name or an ID).
    pub fn inspect(&self, name: &str) -> Result<EngineImage, EngineError> {
        check_name(name)?;
        let inspect = self
            .rt
            .block_on(self.docker.inspect_image(name))
            .map_err(|e| self.classify_image(name, e))?;
        let bad = |what: &str| EngineError::Transport {
            host: self.host.clone(),
            reason: format!("the engine's inspect data for {name} has {what}"),
        };
        let id = inspect
            .id
            .as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no valid Id"))?;
        let diff_ids = inspect
            .root_fs
            .and_then(|r| r.layers)
            .unwrap_or_default()
            .iter()
            .map(|l| {
                l.parse::<Digest>()
                    .map_err(|_| bad("an invalid layer DiffID"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EngineImage {
            id,
            repo_tags: inspect.repo_tags.unwrap_or_default(),
            diff_ids,
            size: inspect.size.unwrap_or(0).max(0) as u64,
        })
    }

    /// How the engine stores images, from its own `info`.
    pub fn store_kind(&self) -> Result<EngineStore, EngineError> {
        let info = self
            .rt
            .block_on(self.docker.info())
            .map_err(|e| classify(&self.host, e))?;
        let driver = info.driver.unwrap_or_default();
        let containerd = info.driver_status.unwrap_or_default().iter().any(|pair| {
            pair.first().is_some_and(|k| k == "driver-type")
                && pair
                    .get(1)
                    .is_some_and(|v| v.contains("containerd.snapshotter"))
        });
        Ok(if containerd {
            EngineStore::Containerd { driver }
        } else {
            EngineStore::Classic { driver }
        })
    }

    /// How many of `diff_ids`, from the bottom, the engine already holds as
    /// a layer chain (some image of the engine's has the same chain).
    pub fn layers_present(&self, diff_ids: &[Digest]) -> Result<usize, EngineError> {
        use bollard::query_parameters::ListImagesOptionsBuilder;
        let summaries = self
            .rt
            .block_on(
                self.docker
                    .list_images(Some(ListImagesOptionsBuilder::default().all(true).build())),
            )
            .map_err(|e| classify(&self.host, e))?;

        let mut chains = HashSet::new();
        for summary in summaries {
            // An image removed between the list and the inspect is skipped.
            let Ok(image) = self.inspect(&summary.id) else {
                continue;
            };
            chains.extend(chain_ids(&image.diff_ids));
        }
        Ok(chain_ids(diff_ids)
            .iter()
            .take_while(|c| chains.contains(*c))
            .count())
    }

    /// Streams the engine's export of `name` (a docker-archive tar).
    pub fn export(&self, name: &str) -> Result<ExportReader, EngineError> {
        self.export_all(&[name])
    }

    /// Streams one export of several images, shared layers once.
    pub fn export_all(&self, names: &[&str]) -> Result<ExportReader, EngineError> {
        // Inspect first: the export endpoint only reports a missing image
        // once the body is read, with a less helpful message.
        for name in names {
            self.inspect(name)?;
        }
        let (tx, rx) = mpsc::channel::<Result<Bytes, EngineError>>(CHANNEL_DEPTH);
        let docker = self.docker.clone().with_timeout(STREAM_TIMEOUT);
        let mut stream = Box::pin(docker.export_images(names));
        let host = self.host.clone();
        self.rt.spawn(async move {
            while let Some(item) = stream.next().await {
                let item = item.map_err(|e| classify(&host, e));
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(ExportReader {
            rx,
            current: Bytes::new(),
            done: false,
        })
    }

    /// Feeds the engine a docker-archive that `write` produces, as a
    /// stream. Returns the engine's report lines (`Loaded image: ...`).
    pub fn load_with<F>(&self, write: F) -> Result<Vec<String>, anyhow::Error>
    where
        F: FnOnce(&mut dyn Write) -> anyhow::Result<()> + Send + 'static,
    {
        use bollard::query_parameters::ImportImageOptionsBuilder;

        let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(CHANNEL_DEPTH);
        let producer = std::thread::spawn(move || {
            let mut writer = ChannelWriter {
                tx: Some(tx),
                buf: Vec::with_capacity(CHUNK),
            };
            let result = write(&mut writer).and_then(|()| Ok(writer.close()?));
            if let Err(e) = &result
                && let Some(tx) = writer.tx.take()
            {
                // Abort the upload so the engine does not wait for more.
                let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
            }
            result
        });

        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let options = ImportImageOptionsBuilder::default().quiet(true).build();
        let responses = self.rt.block_on(async {
            let mut lines = Vec::new();
            let docker = self.docker.clone().with_timeout(STREAM_TIMEOUT);
            let mut stream = Box::pin(docker.import_image_stream(options, body, None));
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(text) = info.stream.or(info.status) {
                            let text = text.trim();
                            if !text.is_empty() {
                                lines.push(text.to_string());
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(lines)
        });

        let produced = producer
            .join()
            .map_err(|_| anyhow::anyhow!("the archive writer panicked"))?;
        match (responses, produced) {
            (Ok(lines), Ok(())) => Ok(lines),
            // The engine's own word comes first: it usually explains why
            // our side of the pipe broke.
            (Err(e), _) => Err(match e {
                ApiError::DockerStreamError { error } => {
                    EngineError::LoadRefused { message: error }.into()
                }
                ApiError::DockerResponseServerError { message, .. } => {
                    EngineError::LoadRefused { message }.into()
                }
                other => classify(&self.host, other).into(),
            }),
            (Ok(_), Err(e)) => Err(e.context("writing the archive for the Docker Engine")),
        }
    }

    /// Feeds the engine a docker-archive read from `reader`.
    pub fn load<R: Read + Send + 'static>(
        &self,
        mut reader: R,
    ) -> Result<Vec<String>, anyhow::Error> {
        self.load_with(move |w| {
            io::copy(&mut reader, w)?;
            Ok(())
        })
    }

    fn classify_image(&self, name: &str, e: ApiError) -> EngineError {
        match e {
            ApiError::DockerResponseServerError {
                status_code: 404,
                message,
            } => EngineError::NoSuchImage {
                name: name.to_string(),
                // The engine's "No such image: NAME" only repeats the name.
                message: match message.to_ascii_lowercase().contains("no such image") {
                    true => String::new(),
                    false => message,
                },
            },
            other => classify(&self.host, other),
        }
    }
}

/// ": TEXT", or nothing for no text.
fn colon(text: &str) -> String {
    match text.is_empty() {
        true => String::new(),
        false => format!(": {text}"),
    }
}

/// Refuses a name the Engine API would not see as typed: the client puts
/// it into the request's path as it is, so `NAME/json?` would inspect
/// NAME, and `..` would reach another endpoint. What is left (letters,
/// digits, `._-/:@`) the engine judges itself, with its own message.
fn check_name(name: &str) -> Result<(), EngineError> {
    let bad = |reason: String| EngineError::BadName {
        name: name.to_string(),
        reason,
    };
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-/:@".contains(*c)))
    {
        return Err(bad(format!("{c:?} is not allowed in one")));
    }
    if name
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(bad("it has an empty, `.` or `..` path component".into()));
    }
    Ok(())
}

/// Maps a client error to what a user needs to know, keeping the engine's
/// message.
fn classify(host: &str, e: ApiError) -> EngineError {
    if let ApiError::DockerResponseServerError {
        status_code,
        message,
    } = e
    {
        return EngineError::Api {
            status: status_code,
            message,
        };
    }
    if let ApiError::SocketNotFoundError(path) = &e {
        return EngineError::Unreachable {
            host: host.to_string(),
            reason: format!("no socket at {path}"),
        };
    }
    // Connection failures arrive wrapped; their io::Error says which.
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::PermissionDenied => {
                    return EngineError::PermissionDenied {
                        host: host.to_string(),
                    };
                }
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    return EngineError::Unreachable {
                        host: host.to_string(),
                        reason: io.to_string(),
                    };
                }
                _ => {}
            }
        }
        source = err.source();
    }
    EngineError::Transport {
        host: host.to_string(),
        reason: error_chain(&e),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The chain IDs of a layer stack: what the classic store keys layers by.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chains: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match chains.last() {
            None => diff.clone(),
            Some(parent) => Digest::of(format!("{parent} {diff}").as_bytes()),
        };
        chains.push(next);
    }
    chains
}

/// The engine's export, as a `Read`.
pub struct ExportReader {
    rx: mpsc::Receiver<Result<Bytes, EngineError>>,
    current: Bytes,
    done: bool,
}

impl Read for ExportReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => self.done = true,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A `Write` that hands chunks to the engine's upload.
struct ChannelWriter {
    tx: Option<mpsc::Sender<Result<Bytes, io::Error>>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
        tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the Docker Engine stopped reading the archive",
            )
        })
    }

    /// Sends what is buffered and ends the upload.
    fn close(&mut self) -> io::Result<()> {
        self.send_buf()?;
        self.tx = None;
        Ok(())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        assert_eq!(chains[1], Digest::of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn parses_sources() {
        assert_eq!(parse_source("docker-daemon:app:1"), Some("app:1"));
        assert_eq!(parse_source("docker-daemon:"), None);
        assert_eq!(parse_source("app:1"), None);
    }
}
