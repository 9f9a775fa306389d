//! Reading an engine's export once, front to back, and handing on only the
//! blobs someone wants.
//!
//! The Engine API exports images only whole, so a sender that knows (from
//! the images' inspect data) which blobs its receiver lacks still has to
//! read everything. This module walks the export's tar entries as they
//! stream in, names each one's blob before reading it, passes the wanted
//! ones to a [`BlobSink`] from the offset asked for, and reads the rest
//! into nothing, counting their sizes for the manifests built afterwards.
//!
//! What names a blob before it is read:
//! - Docker 24 and older: a layer directory's `json` entry, which comes
//!   before its `layer.tar` ([`super::v1::identify_layer`]); the config is
//!   `<hex>.json`.
//! - Docker 25 and later: `blobs/sha256/<hex>`, the digest in the path.
//!
//! An engine running the containerd image store exports compressed layers,
//! whose digests are not the DiffIDs the sender offered: those layers are
//! never found, and the export fails with an error naming the layer.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read};

use crate::digest::{Digest, Hasher};

use super::chain_ids;
use super::v1::identify_layer;

/// Bytes handed to the sink at a time.
pub const CHUNK: usize = 1 << 20;

/// Largest legacy `json` entry read to identify a layer directory.
const MAX_LAYER_JSON: u64 = 1 << 20;

/// An image in the export, as its inspect data describes it.
#[derive(Debug, Clone)]
pub struct ExportedImage {
    /// A name for errors (what the user typed).
    pub name: String,
    /// The config digest.
    pub id: Digest,
    pub diff_ids: Vec<Digest>,
}

/// Where wanted blobs go.
pub trait BlobSink {
    /// `read` bytes of the export have been read so far.
    fn progress(&mut self, read: u64) -> io::Result<()>;
    /// The export is read to its end, `read` bytes in all.
    fn read_all(&mut self, read: u64) -> io::Result<()> {
        self.progress(read)
    }
    /// A wanted blob of `size` bytes begins, from byte `offset`.
    fn start(&mut self, digest: &Digest, size: u64, offset: u64) -> io::Result<()>;
    fn chunk(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// The blob begun last is complete.
    fn end(&mut self) -> io::Result<()>;
}

/// Why an export could not be split.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading the Docker Engine's export")]
    Read(#[source] io::Error),
    #[error("sending blob {digest} from the Docker Engine's export")]
    Sink {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    /// A layer is not in the export under its DiffID: the engine stores it
    /// compressed (containerd image store), or wrote a shape we do not know.
    #[error(
        "layer {layer} of {image} is not in the Docker Engine's export as an uncompressed layer{why}"
    )]
    LayerNotFound {
        image: String,
        layer: Digest,
        why: String,
    },
    #[error("the config {id} of {image} is not in the Docker Engine's export")]
    ConfigNotFound { image: String, id: Digest },
}

impl ExportError {
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ExportError::LayerNotFound { .. } => Some(
                "an engine with the containerd image store exports compressed layers, which push-peer cannot send from docker-daemon: yet; `rimg load --from docker-daemon:NAME` and a push from the store work",
            ),
            _ => None,
        }
    }
}

/// What the export held: each blob's size, by digest.
pub type Found = BTreeMap<Digest, u64>;

/// Reads the whole export, giving `sink` each blob of `want` (digest →
/// offset) once. Returns the size of every blob of `images`, read or sent.
pub fn split_export<R: Read>(
    export: R,
    images: &[ExportedImage],
    want: &BTreeMap<Digest, u64>,
    sink: &mut dyn BlobSink,
) -> Result<Found, ExportError> {
    let ids: BTreeSet<&Digest> = images.iter().map(|i| &i.id).collect();
    let layers: BTreeSet<&Digest> = images.iter().flat_map(|i| &i.diff_ids).collect();
    let chains: Vec<(Vec<Digest>, &[Digest])> = images
        .iter()
        .map(|i| (chain_ids(&i.diff_ids), i.diff_ids.as_slice()))
        .collect();

    let read = Cell::new(0u64);
    let mut archive = tar::Archive::new(Counted {
        inner: export,
        read: &read,
    });
    let mut found = Found::new();
    let mut sent = BTreeSet::new();
    let mut dirs: HashMap<String, Digest> = HashMap::new();
    // Layers read without being named first (hashed as read), and entries
    // under blobs/ that are none of the images' blobs (compressed layers).
    let mut unnamed = BTreeSet::new();
    let mut strangers = 0usize;
    let mut buf = vec![0u8; CHUNK];

    let entries = archive.entries().map_err(ExportError::Read)?;
    for entry in entries {
        let mut entry = entry.map_err(ExportError::Read)?;
        let path = entry
            .path()
            .map_err(ExportError::Read)?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let is_file = entry.header().entry_type().is_file();
        let size = entry.size();

        let named = match classify(&path) {
            Entry::LayerJson(dir) if is_file && size <= MAX_LAYER_JSON => {
                let mut json = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut json).map_err(ExportError::Read)?;
                let layer = chains.iter().find_map(|(chains, diff_ids)| {
                    identify_layer(dir, &json, chains).map(|i| diff_ids[i].clone())
                });
                match layer {
                    Some(digest) => {
                        tracing::debug!(dir, %digest, "identified a layer directory");
                        dirs.insert(dir.to_string(), digest);
                    }
                    None => tracing::debug!(dir, "a layer directory not identified"),
                }
                None
            }
            Entry::LayerTar(dir) if is_file => match dirs.get(dir) {
                Some(digest) => Some(digest.clone()),
                None => {
                    let mut hasher = Hasher::new();
                    drain(&mut entry, &mut buf, &read, sink, |b| hasher.update(b))?;
                    let (digest, _) = hasher.finish();
                    if layers.contains(&digest) {
                        found.insert(digest.clone(), size);
                        unnamed.insert(digest);
                    }
                    None
                }
            },
            Entry::Config(hex) if is_file => Digest::from_hex(hex).ok().filter(|d| ids.contains(d)),
            Entry::Blob(hex) if is_file => match Digest::from_hex(hex) {
                Ok(d) if ids.contains(&d) || layers.contains(&d) => Some(d),
                _ => {
                    strangers += 1;
                    None
                }
            },
            _ => None,
        };

        if let Some(digest) = named {
            tracing::trace!(path, %digest, size, wanted = want.contains_key(&digest), "blob");
            found.insert(digest.clone(), size);
            if let Some(&offset) = want.get(&digest)
                && sent.insert(digest.clone())
            {
                send_blob(&mut entry, &digest, size, offset, &mut buf, &read, sink)?;
            }
        }
        drain(&mut entry, &mut buf, &read, sink, |_| {})?;
    }
    // The end-of-archive blocks and any padding after them: the count
    // covers the whole export, and the engine sees it read to the end.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(ExportError::Read)?;
    sink.read_all(read.get()).map_err(ExportError::Read)?;

    check_complete(images, &found, want, &sent, &unnamed, strangers)?;
    Ok(found)
}

/// What an entry of the export is, from its path.
#[derive(Debug, PartialEq, Eq)]
enum Entry<'a> {
    /// `<dir>/json` of a Docker 24-and-older layer directory.
    LayerJson(&'a str),
    /// `<dir>/layer.tar`.
    LayerTar(&'a str),
    /// `<hex>.json`: a config, in a Docker 24-and-older export.
    Config(&'a str),
    /// `blobs/sha256/<hex>`: any blob of a Docker 25+ export.
    Blob(&'a str),
    Other,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn classify(path: &str) -> Entry<'_> {
    if let Some(hex) = path.strip_prefix("blobs/sha256/")
        && is_hex64(hex)
    {
        return Entry::Blob(hex);
    }
    if let Some(hex) = path.strip_suffix(".json")
        && is_hex64(hex)
    {
        return Entry::Config(hex);
    }
    match path.split_once('/') {
        Some((dir, "json")) if is_hex64(dir) => Entry::LayerJson(dir),
        Some((dir, "layer.tar")) if is_hex64(dir) => Entry::LayerTar(dir),
        _ => Entry::Other,
    }
}

/// Reads the rest of an entry, chunk by chunk, reporting progress.
fn drain(
    entry: &mut impl Read,
    buf: &mut [u8],
    read: &Cell<u64>,
    sink: &mut dyn BlobSink,
    mut each: impl FnMut(&[u8]),
) -> Result<(), ExportError> {
    loop {
        let n = entry.read(buf).map_err(ExportError::Read)?;
        if n == 0 {
            return Ok(());
        }
        each(&buf[..n]);
        sink.progress(read.get()).map_err(ExportError::Read)?;
    }
}

/// Hands one wanted blob to the sink from `offset`, in chunks of
/// [`CHUNK`] bytes (the last one shorter).
fn send_blob(
    entry: &mut impl Read,
    digest: &Digest,
    size: u64,
    offset: u64,
    buf: &mut [u8],
    read: &Cell<u64>,
    sink: &mut dyn BlobSink,
) -> Result<(), ExportError> {
    // The receiver asked for a blob of unknown size from its partial file,
    // which turns out longer than the blob: not a prefix of it (a peer
    // left junk there). Start over, which the receiver accepts and which
    // clears that file; failing here would fail every retry alike.
    let offset = if offset > size {
        tracing::debug!(%digest, size, offset, "the receiver holds more than the blob: from 0");
        0
    } else {
        offset
    };
    let sink_err = |source| ExportError::Sink {
        digest: digest.clone(),
        source,
    };
    io::copy(&mut Read::by_ref(entry).take(offset), &mut io::sink()).map_err(ExportError::Read)?;
    sink.start(digest, size, offset).map_err(sink_err)?;
    let mut left = size - offset;
    while left > 0 {
        let n = (left as usize).min(CHUNK).min(buf.len());
        entry.read_exact(&mut buf[..n]).map_err(ExportError::Read)?;
        sink.chunk(&buf[..n]).map_err(sink_err)?;
        sink.progress(read.get()).map_err(ExportError::Read)?;
        left -= n as u64;
    }
    sink.end().map_err(sink_err)
}

/// Every wanted blob was sent, and every blob of every image was seen.
fn check_complete(
    images: &[ExportedImage],
    found: &Found,
    want: &BTreeMap<Digest, u64>,
    sent: &BTreeSet<Digest>,
    unnamed: &BTreeSet<Digest>,
    strangers: usize,
) -> Result<(), ExportError> {
    for image in images {
        if !found.contains_key(&image.id)
            || (want.contains_key(&image.id) && !sent.contains(&image.id))
        {
            return Err(ExportError::ConfigNotFound {
                image: image.name.clone(),
                id: image.id.clone(),
            });
        }
        for layer in &image.diff_ids {
            if found.contains_key(layer) && (!want.contains_key(layer) || sent.contains(layer)) {
                continue;
            }
            let why = if unnamed.contains(layer) {
                ": its directory could not be identified before it was read".to_string()
            } else if strangers > 0 {
                format!(
                    " ({strangers} blob(s) there are not the image's DiffIDs: compressed layers?)"
                )
            } else {
                String::new()
            };
            return Err(ExportError::LayerNotFound {
                image: image.name.clone(),
                layer: layer.clone(),
                why,
            });
        }
    }
    Ok(())
}

/// A reader that counts what passes through it.
struct Counted<'a, R> {
    inner: R,
    read: &'a Cell<u64>,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it is given.
    #[derive(Default)]
    struct Record {
        blobs: Vec<(Digest, u64, u64, Vec<u8>)>,
        read: u64,
    }

    impl BlobSink for Record {
        fn progress(&mut self, read: u64) -> io::Result<()> {
            assert!(read >= self.read, "progress only grows");
            self.read = read;
            Ok(())
        }
        fn start(&mut self, digest: &Digest, size: u64, offset: u64) -> io::Result<()> {
            self.blobs.push((digest.clone(), size, offset, Vec::new()));
            Ok(())
        }
        fn chunk(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.blobs.last_mut().unwrap().3.extend_from_slice(bytes);
            Ok(())
        }
        fn end(&mut self) -> io::Result<()> {
            let (_, size, offset, bytes) = self.blobs.last().unwrap();
            assert_eq!(bytes.len() as u64, size - offset);
            Ok(())
        }
    }

    fn corpus(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/corpus/real")
            .join(name)
    }

    /// Every file of a tar, by path.
    fn files(path: &std::path::Path) -> HashMap<String, Vec<u8>> {
        let mut out = HashMap::new();
        let file = std::fs::File::open(path)
            .unwrap_or_else(|e| panic!("the shared corpus is missing: {}: {e}", path.display()));
        let mut archive = tar::Archive::new(file);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.header().entry_type().is_file() {
                let name = entry.path().unwrap().to_string_lossy().into_owned();
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                out.insert(name, bytes);
            }
        }
        out
    }

    /// A real Docker 20.10 export: the wanted layers and config come out
    /// whole or from their offsets, the rest is only counted.
    #[test]
    fn splits_a_docker_20_export() {
        let path = corpus("d20-edge.tar");
        let all = files(&path);
        let manifest: serde_json::Value = serde_json::from_slice(&all["manifest.json"]).unwrap();
        let config_name = manifest[0]["Config"].as_str().unwrap();
        let config: crate::image::ImageConfig = serde_json::from_slice(&all[config_name]).unwrap();
        let id = Digest::of(&all[config_name]);
        let diff_ids = config.rootfs.diff_ids.clone();
        assert_eq!(diff_ids.len(), 5);
        let layer_bytes = |i: usize| {
            let path = manifest[0]["Layers"][i].as_str().unwrap();
            all[path].clone()
        };

        let images = [ExportedImage {
            name: "edge:1".into(),
            id: id.clone(),
            diff_ids: diff_ids.clone(),
        }];
        let want: BTreeMap<Digest, u64> = [
            (id.clone(), 0),
            (diff_ids[1].clone(), 0),
            (diff_ids[4].clone(), 100),
        ]
        .into();
        let mut sink = Record::default();
        let found = split_export(
            std::fs::File::open(&path).unwrap(),
            &images,
            &want,
            &mut sink,
        )
        .unwrap();

        assert_eq!(sink.read, std::fs::metadata(&path).unwrap().len());
        assert_eq!(found.len(), 6, "the config and five layers");
        let sent: BTreeMap<Digest, (u64, u64, Vec<u8>)> = sink
            .blobs
            .into_iter()
            .map(|(d, size, offset, bytes)| (d, (size, offset, bytes)))
            .collect();
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[&id].2, all[config_name]);
        assert_eq!(Digest::of(&sent[&diff_ids[1]].2), diff_ids[1]);
        assert_eq!(sent[&diff_ids[4]].2, layer_bytes(4)[100..]);
        assert_eq!(found[&diff_ids[4]], layer_bytes(4).len() as u64);
    }

    fn tar_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, bytes) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, &bytes[..]).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// A Docker 25+ export names blobs by digest; a layer stored
    /// compressed (the containerd image store) is refused by name.
    #[test]
    fn docker_25_blobs_by_path_and_compressed_layers_refused() {
        let config = b"{\"rootfs\":{}}".to_vec();
        let layer = b"layer bytes".to_vec();
        let (id, diff) = (Digest::of(&config), Digest::of(&layer));
        let blob = |d: &Digest, b: &[u8]| (format!("blobs/sha256/{}", d.hex()), b.to_vec());
        let images = [ExportedImage {
            name: "x:1".into(),
            id: id.clone(),
            diff_ids: vec![diff.clone()],
        }];
        let want: BTreeMap<Digest, u64> = [(diff.clone(), 6)].into();

        let export = tar_of(&[
            ("oci-layout".into(), b"{}".to_vec()),
            blob(&id, &config),
            blob(&diff, &layer),
        ]);
        let mut sink = Record::default();
        let found = split_export(&export[..], &images, &want, &mut sink).unwrap();
        assert_eq!(found[&diff], layer.len() as u64);
        assert_eq!(sink.blobs.len(), 1);
        assert_eq!(sink.blobs[0].3, b"bytes");

        let gz = b"compressed".to_vec();
        let export = tar_of(&[blob(&id, &config), blob(&Digest::of(&gz), &gz)]);
        let err = split_export(&export[..], &images, &want, &mut Record::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&diff.to_string()) && text.contains("x:1"),
            "{text}"
        );
        assert!(text.contains("compressed"), "{text}");
        assert!(err.hint().unwrap().contains("containerd"));

        let err = split_export(
            &tar_of(&[blob(&diff, &layer)])[..],
            &images,
            &want,
            &mut Record::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ExportError::ConfigNotFound { .. }), "{err}");
    }
}
