//! The image store: an OCI image layout on disk.
//!
//! ```text
//! ROOT/oci-layout           {"imageLayoutVersion":"1.0.0"}
//! ROOT/index.json           one entry per tag, plus one per untagged image
//! ROOT/blobs/sha256/HEX     manifests, configs, uncompressed layers
//! ROOT/.rimg/tmp/           blobs being written (never read by OCI tools)
//! ROOT/.rimg/partial/       partly received blobs kept for a resumed transfer
//! ROOT/.rimg/index.lock     held exclusively while index.json changes
//! ROOT/.rimg/gc.lock        shared by writers, exclusive for garbage collection
//! ```
//!
//! Invariants, and how they are kept:
//! - A file under `blobs/` always matches its name: bytes are written to
//!   `tmp/` while hashed, synced, checked, and only then renamed.
//! - `index.json` is replaced whole (write, sync, rename) under the index
//!   lock, so a crash leaves the old index or the new one.
//! - An image is tagged only after every blob it names is under `blobs/`.
//! - Garbage collection never races a writer: writers hold `gc.lock` shared
//!   from their first blob to their commit; collection takes it exclusively.

mod index;
pub use index::IndexLock;
pub(crate) use index::tagged_entry;
mod partial;
mod staging;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use index::ImageRecord;
pub use partial::{PartialBlob, PartialError, VerifiedPartial};
pub use staging::{BlobWriter, Committed, NewImage, StagedBlob, Staging};

use crate::digest::{Digest, Hasher};
use crate::image::{ImageConfig, MAX_JSON_SIZE, Manifest};
use crate::reference::Reference;

/// What went wrong in the store. Each variant names the file or digest.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation on a store path failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Bytes written for a blob hash to something other than promised.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    /// A blob that should be in the store is not.
    #[error("blob {0} is missing from the store")]
    MissingBlob(Digest),
    /// A manifest, config or index in the store does not parse.
    #[error("{what} is not valid: {reason}")]
    Corrupt { what: String, reason: String },
    /// A change would make `index.json` larger than a store reads back.
    #[error(
        "the change would make index.json larger than the {limit} bytes a store can hold; nothing was tagged"
    )]
    IndexTooLarge { limit: u64 },
    /// No image matches what the user typed.
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// An ID prefix matches more than one image.
    #[error("ambiguous image ID prefix {prefix:?}: matches {count} images")]
    Ambiguous { prefix: String, count: usize },
    /// The path given as the root exists and is not a store.
    #[error("{0} is not an OCI image layout (it has no oci-layout file) and is not empty")]
    NotAStore(PathBuf),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An open store. Cheap to clone; holds no file open.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A fully resolved image: its manifest and parsed config.
#[derive(Debug, Clone)]
pub struct Image {
    /// The config digest, which is the image ID.
    pub id: Digest,
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
    /// Tags pointing at this image, sorted.
    pub tags: Vec<Reference>,
}

impl Image {
    /// Sum of the layer sizes: what Docker shows as SIZE.
    pub fn size(&self) -> u64 {
        self.manifest.layers.iter().map(|l| l.size).sum()
    }
}

/// The root to use when none is given: `RIMG_ROOT` is handled by the CLI;
/// this is the XDG data directory, or `/var/lib/rimg` for root.
pub fn default_root() -> PathBuf {
    if is_root_user() {
        return PathBuf::from("/var/lib/rimg");
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("rimg");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/rimg")
}

fn is_root_user() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

impl Store {
    /// Opens the store at `root`, creating it if the directory is missing or
    /// empty.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        let store = Store { root };
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            store.create()?;
        }
        for dir in [store.blobs_dir(), store.tmp_dir(), store.partial_dir()] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(store)
    }

    fn create(&self) -> Result<()> {
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        // Another rimg may be creating this store at the same moment, so
        // only what that one writes is tolerated here (our layout's names
        // and the temporary files it renames into place); anything else
        // means the directory belongs to someone else.
        let foreign = fs::read_dir(&self.root)
            .map_err(io_err(&self.root))?
            .filter_map(|e| e.ok())
            .any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !matches!(
                    name.as_ref(),
                    "oci-layout" | "index.json" | "blobs" | ".rimg"
                ) && !name.starts_with(".tmp")
            });
        if foreign {
            return Err(StoreError::NotAStore(self.root.clone()));
        }
        for dir in [self.blobs_dir(), self.tmp_dir(), self.partial_dir()] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let _lock = self.lock_index()?;
        if self.root.join("oci-layout").exists() {
            return Ok(());
        }
        let index_path = self.root.join("index.json");
        if !index_path.exists() {
            self.write_index(&crate::image::Index::default())?;
        }
        self.write_file_atomic(&self.root.join("oci-layout"), OCI_LAYOUT.as_bytes())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.root.join(".rimg")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.state_dir().join("tmp")
    }

    /// Where partly received blobs wait for a resumed transfer.
    pub fn partial_dir(&self) -> PathBuf {
        self.state_dir().join("partial")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Size of a stored blob, if present.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(digest)).ok().map(|m| m.len())
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob(digest.clone()),
            _ => StoreError::Io { path, source: e },
        })
    }

    /// Reads a small blob (a manifest or config) whole, refusing anything
    /// larger than [`MAX_JSON_SIZE`].
    pub fn read_json_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let file = self.open_blob(digest)?;
        let mut bytes = Vec::new();
        file.take(MAX_JSON_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err(&path))?;
        if bytes.len() as u64 > MAX_JSON_SIZE {
            return Err(StoreError::Corrupt {
                what: format!("blob {digest}"),
                reason: format!("larger than {MAX_JSON_SIZE} bytes"),
            });
        }
        Ok(bytes)
    }

    /// Starts a set of blob writes that will be committed together.
    pub fn stage(&self) -> Result<Staging> {
        Staging::new(self)
    }

    /// Loads an image by manifest digest.
    pub fn load_image(&self, manifest_digest: &Digest, tags: Vec<Reference>) -> Result<Image> {
        let manifest_bytes = self.read_json_blob(manifest_digest)?;
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| StoreError::Corrupt {
                what: format!("manifest {manifest_digest}"),
                reason: e.to_string(),
            })?;
        let id = manifest.config.digest.clone();
        let config_bytes = self.read_json_blob(&id)?;
        let config = ImageConfig::parse(&config_bytes).map_err(|e| StoreError::Corrupt {
            what: format!("config {id}"),
            reason: e.to_string(),
        })?;
        Ok(Image {
            id,
            manifest_digest: manifest_digest.clone(),
            manifest,
            config_bytes,
            config,
            tags,
        })
    }

    /// Every image in the store, newest first.
    pub fn images(&self) -> Result<Vec<Image>> {
        let mut images = Vec::new();
        for record in self.records()? {
            images.push(self.load_image(&record.manifest, record.tags)?);
        }
        images.sort_by(|a, b| {
            b.config
                .created_time()
                .cmp(&a.config.created_time())
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(images)
    }

    /// Finds the image a user means by `name`: a tag, a full ID, or a
    /// unique ID prefix, as Docker resolves them.
    pub fn resolve(&self, name: &str) -> Result<Image> {
        let record = self.resolve_record(name)?;
        self.load_image(&record.manifest, record.tags)
    }

    pub fn resolve_record(&self, name: &str) -> Result<ImageRecord> {
        let records = self.records()?;
        let bare = name.strip_prefix("sha256:").unwrap_or(name);
        let is_hex = !bare.is_empty()
            && bare.len() <= 64
            && bare.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));

        if bare.len() == 64 && is_hex {
            return records
                .into_iter()
                .find(|r| r.id.hex() == bare)
                .ok_or_else(|| StoreError::NoSuchImage(name.to_string()));
        }
        if !name.starts_with("sha256:")
            && let Ok(reference) = name.parse::<Reference>()
            && let Some(r) = records.iter().find(|r| r.tags.contains(&reference))
        {
            return Ok(r.clone());
        }
        if is_hex {
            let matches: Vec<_> = records
                .into_iter()
                .filter(|r| r.id.hex().starts_with(bare))
                .collect();
            return match matches.len() {
                0 => Err(StoreError::NoSuchImage(name.to_string())),
                1 => Ok(matches.into_iter().next().expect("one match")),
                count => Err(StoreError::Ambiguous {
                    prefix: name.to_string(),
                    count,
                }),
            };
        }
        Err(StoreError::NoSuchImage(name.to_string()))
    }

    /// Every blob reachable from the index: manifests, configs, layers.
    pub fn reachable_blobs(&self) -> Result<BTreeSet<Digest>> {
        let mut reachable = BTreeSet::new();
        for record in self.records()? {
            reachable.insert(record.manifest.clone());
            if let Ok(bytes) = self.read_json_blob(&record.manifest)
                && let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes)
            {
                reachable.insert(manifest.config.digest);
                reachable.extend(manifest.layers.into_iter().map(|l| l.digest));
            }
        }
        Ok(reachable)
    }

    /// Removes blobs nothing reaches, and leftovers of interrupted writes.
    /// Partly received blobs are kept for a resumed transfer while younger
    /// than [`PARTIAL_KEEP`], unless `partial` is set. Returns `None` when
    /// a writer is active (nothing is removed then), unless `wait` is set,
    /// in which case it waits for the writers.
    pub fn collect_garbage(&self, wait: bool, partial: bool) -> Result<Option<GcReport>> {
        let Some(_gc) = self.lock_gc_exclusive(wait)? else {
            return Ok(None);
        };
        let reachable = self.reachable_blobs()?;
        let mut report = GcReport::default();

        let blobs = self.blobs_dir();
        for entry in fs::read_dir(&blobs).map_err(io_err(&blobs))? {
            let entry = entry.map_err(io_err(&blobs))?;
            let name = entry.file_name();
            let keep = name
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
                .is_some_and(|d| reachable.contains(&d));
            if keep {
                continue;
            }
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err(&path))?;
            report.blobs += 1;
            report.bytes += len;
        }

        let now = std::time::SystemTime::now();
        let partial_dir = self.partial_dir();
        for dir in [self.tmp_dir(), partial_dir.clone()] {
            for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let entry = entry.map_err(io_err(&dir))?;
                let meta = entry.metadata().ok();
                let len = meta.as_ref().map_or(0, |m| m.len());
                let age = meta
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| now.duration_since(t).ok())
                    .unwrap_or_default();
                if dir == partial_dir && !partial && age < PARTIAL_KEEP {
                    report.partial_kept += 1;
                    report.partial_bytes += len;
                    continue;
                }
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err(&path))?;
                report.leftovers += 1;
                report.bytes += len;
            }
        }
        Ok(Some(report))
    }

    /// Re-hashes every blob and follows every reference from the index.
    pub fn check(&self) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        let mut sizes = BTreeMap::new();
        // A damaged blob is reported once, as damaged, not again as missing
        // by every image that needs it.
        let mut damaged = BTreeSet::new();

        let blobs = self.blobs_dir();
        for entry in fs::read_dir(&blobs).map_err(io_err(&blobs))? {
            let entry = entry.map_err(io_err(&blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(expected) = Digest::from_hex(&name) else {
                problems.push(Problem::StrayFile(entry.path()));
                continue;
            };
            let path = entry.path();
            let mut hasher = Hasher::new();
            let mut file = File::open(&path).map_err(io_err(&path))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).map_err(io_err(&path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            let (actual, len) = hasher.finish();
            if actual != expected {
                damaged.insert(expected.clone());
                problems.push(Problem::Damaged { expected, actual });
            } else {
                sizes.insert(expected, len);
            }
        }

        for record in self.records()? {
            let Some(_) = sizes.get(&record.manifest) else {
                if damaged.contains(&record.manifest) {
                    continue;
                }
                problems.push(Problem::Missing {
                    digest: record.manifest.clone(),
                    needed_by: record.describe(),
                });
                continue;
            };
            let manifest = match self
                .read_json_blob(&record.manifest)
                .ok()
                .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
            {
                Some(m) => m,
                None => {
                    problems.push(Problem::BadManifest(record.manifest.clone()));
                    continue;
                }
            };
            let wanted = std::iter::once(&manifest.config).chain(&manifest.layers);
            for desc in wanted {
                match sizes.get(&desc.digest) {
                    None if damaged.contains(&desc.digest) => {}
                    None => problems.push(Problem::Missing {
                        digest: desc.digest.clone(),
                        needed_by: record.describe(),
                    }),
                    Some(&len) if len != desc.size => problems.push(Problem::WrongSize {
                        digest: desc.digest.clone(),
                        expected: desc.size,
                        actual: len,
                    }),
                    Some(_) => {}
                }
            }
        }
        problems.dedup_by(|a, b| a.to_string() == b.to_string());
        Ok(problems)
    }

    /// Writes `bytes` to `path` through a synced temporary file and a rename.
    pub(crate) fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let dir = path.parent().unwrap_or(&self.root);
        let mut tmp = readable_temp(dir, ".tmp-")?;
        tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_err(path))?;
        tmp.persist(path).map_err(|e| StoreError::Io {
            path: path.to_path_buf(),
            source: e.error,
        })?;
        sync_dir(dir)
    }

    fn lock_file(&self, name: &str) -> Result<File> {
        let path = self.state_dir().join(name);
        fs::create_dir_all(self.state_dir()).map_err(io_err(&self.state_dir()))?;
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))
    }

    /// Holds `gc.lock` shared: writers take this while they stage blobs.
    pub(crate) fn lock_gc_shared(&self) -> Result<File> {
        let file = self.lock_file("gc.lock")?;
        file.lock_shared()
            .map_err(io_err(&self.state_dir().join("gc.lock")))?;
        Ok(file)
    }

    fn lock_gc_exclusive(&self, wait: bool) -> Result<Option<File>> {
        let file = self.lock_file("gc.lock")?;
        if wait {
            file.lock()
                .map_err(io_err(&self.state_dir().join("gc.lock")))?;
            return Ok(Some(file));
        }
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(StoreError::Io {
                path: self.state_dir().join("gc.lock"),
                source: e,
            }),
        }
    }
}

/// A temporary file for the store, readable by all like any file the
/// store's owner creates (tempfile's default is 0600), so that OCI tools
/// run by other users can read the layout.
pub(crate) fn readable_temp(dir: &Path, prefix: &str) -> Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(io_err(dir))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// What garbage collection removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct GcReport {
    pub blobs: u64,
    pub leftovers: u64,
    pub bytes: u64,
    /// Partly received blobs kept for a resumed transfer, and their bytes.
    pub partial_kept: u64,
    pub partial_bytes: u64,
}

/// How long a partly received blob is kept for the transfer to resume,
/// counted from its last write: a push cut off today resumes tomorrow,
/// and one given up for good stops holding disk space.
pub const PARTIAL_KEEP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// One thing `check` found wrong.
#[derive(Debug, Clone)]
pub enum Problem {
    Damaged {
        expected: Digest,
        actual: Digest,
    },
    Missing {
        digest: Digest,
        needed_by: String,
    },
    WrongSize {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    BadManifest(Digest),
    StrayFile(PathBuf),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Damaged { expected, actual } => {
                write!(f, "damaged blob {expected}: content hashes to {actual}")
            }
            Problem::Missing { digest, needed_by } => {
                write!(f, "missing blob {digest} (needed by {needed_by})")
            }
            Problem::WrongSize {
                digest,
                expected,
                actual,
            } => write!(
                f,
                "blob {digest} is {actual} bytes, its manifest says {expected}"
            ),
            Problem::BadManifest(d) => write!(f, "manifest {d} does not parse"),
            Problem::StrayFile(p) => write!(f, "stray file {}", p.display()),
        }
    }
}
