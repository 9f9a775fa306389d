//! Building archives in tests: read a corpus archive into entries, change
//! them (rewrite a JSON file, flip a byte, add a hostile symlink), and
//! write a tar again. Headers are written byte by byte where needed, so a
//! test can make names the `tar` crate would refuse to write (absolute
//! paths, `..`), as a hostile archive would have them.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::common::Env;

pub const BB_ID: &str = "sha256:f36dafd20b57aa6dacb2ef53dac24fdd237eedd1cf22f3cf94b48611cf34a5ce";
pub const EDGE_ID: &str = "sha256:84d1d852ada3a56dfd2f5beefb016fdc2bd984ed48b6684afc6d47d2937ffd4c";
pub const EDGE_OCI_ID: &str =
    "sha256:2898ea010624498f7f68eb8f1660a3036967005f803de6060379d2e5aa09e1a6";
pub const EDGE_DIFF_IDS: [&str; 5] = [
    "sha256:f03a735d7d1d0ca5da199ad97350a5bdfeb3a1014200b55f08fba92c5ec24c68",
    "sha256:dceedc553d91900c1aed29d17aece37da669c0baa53f3309830ce636a5a397a7",
    "sha256:12a4e0c20cf73dbb5cccb703009a8bd93a5c45684e73961d3cf8ffaec70493f6",
    "sha256:a641bab02a6f7f93573343717f1f8b42fbe3541e4aea917b7bfb867c8ba79f2f",
    "sha256:72682b70aeff94376e11f5cdcd505c47302d3f36d43b1ebd37573386635ba1fa",
];

/// A blob of the test store, by `sha256:` digest.
pub fn store_blob(env: &Env, digest: &str) -> Vec<u8> {
    let path = env.root().join("blobs/sha256").join(&digest[7..]);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The manifest digest the store's `index.json` tags `name` (familiar
/// `name:tag`, from the `org.opencontainers.image.ref.name` annotation).
pub fn tagged_manifest(env: &Env, name: &str) -> String {
    let index: Value = serde_json::from_slice(&env.snapshot().index).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {index}"));
    entry["digest"].as_str().unwrap().to_string()
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    File,
    Dir,
    Symlink(String),
    Hardlink(String),
}

#[derive(Debug, Clone)]
pub struct Item {
    pub path: String,
    pub kind: Kind,
    pub data: Vec<u8>,
}

impl Item {
    pub fn file(path: &str, data: impl Into<Vec<u8>>) -> Item {
        Item {
            path: path.to_string(),
            kind: Kind::File,
            data: data.into(),
        }
    }

    pub fn symlink(path: &str, target: &str) -> Item {
        Item {
            path: path.to_string(),
            kind: Kind::Symlink(target.to_string()),
            data: Vec::new(),
        }
    }
}

/// The entries of a tar archive.
pub fn read(path: &Path) -> Vec<Item> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse(&bytes)
}

pub fn parse(bytes: &[u8]) -> Vec<Item> {
    let mut archive = tar::Archive::new(bytes);
    let mut items = Vec::new();
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("an entry");
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        let link =
            || String::from_utf8_lossy(&entry.link_name_bytes().expect("a link name")).into_owned();
        let kind = if kind.is_dir() {
            Kind::Dir
        } else if kind.is_symlink() {
            Kind::Symlink(link())
        } else if kind.is_hard_link() {
            Kind::Hardlink(link())
        } else {
            Kind::File
        };
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("entry data");
        items.push(Item { path, kind, data });
    }
    items
}

/// A tar of `items`, in order, ending with the two zero blocks.
pub fn write(items: &[Item]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        let mut header = tar::Header::new_gnu();
        set_bytes(&mut header.as_old_mut().name, &item.path);
        let (kind, size) = match &item.kind {
            Kind::File => (tar::EntryType::Regular, item.data.len()),
            Kind::Dir => (tar::EntryType::Directory, 0),
            Kind::Symlink(t) => {
                set_bytes(&mut header.as_old_mut().linkname, t);
                (tar::EntryType::Symlink, 0)
            }
            Kind::Hardlink(t) => {
                set_bytes(&mut header.as_old_mut().linkname, t);
                (tar::EntryType::Link, 0)
            }
        };
        header.set_entry_type(kind);
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        if size > 0 {
            out.extend_from_slice(&item.data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn set_bytes(field: &mut [u8], value: &str) {
    assert!(
        value.len() <= field.len(),
        "{value} is too long for a header"
    );
    field.fill(0);
    field[..value.len()].copy_from_slice(value.as_bytes());
}

pub fn find<'a>(items: &'a [Item], path: &str) -> &'a Item {
    items
        .iter()
        .find(|i| i.path == path)
        .unwrap_or_else(|| panic!("no {path} in the archive"))
}

pub fn find_mut<'a>(items: &'a mut [Item], path: &str) -> &'a mut Item {
    items
        .iter_mut()
        .find(|i| i.path == path)
        .unwrap_or_else(|| panic!("no {path} in the archive"))
}

pub fn json(items: &[Item], path: &str) -> Value {
    serde_json::from_slice(&find(items, path).data).expect("JSON")
}

pub fn set_json(items: &mut [Item], path: &str, value: &Value) {
    find_mut(items, path).data = serde_json::to_vec(value).expect("JSON");
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

pub fn bzip2(bytes: &[u8]) -> Vec<u8> {
    let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

pub fn xz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A single-file layer tar.
pub fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let items: Vec<Item> = files.iter().map(|(p, d)| Item::file(p, *d)).collect();
    write(&items)
}

/// A minimal image config for `layers` (uncompressed).
pub fn config_for(layers: &[&[u8]]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// The blob path of an OCI layout for `bytes`.
pub fn blob_path(bytes: &[u8]) -> String {
    format!("blobs/sha256/{}", &sha256(bytes)[7..])
}

/// An OCI descriptor for `bytes`.
pub fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    serde_json::json!({"mediaType": media_type, "digest": sha256(bytes), "size": bytes.len()})
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// An OCI image manifest for a config and (possibly compressed) layers.
pub fn oci_manifest(config: &[u8], config_type: &str, layers: &[(&str, &[u8])]) -> Vec<u8> {
    let layers: Vec<Value> = layers.iter().map(|(t, b)| descriptor(t, b)).collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config_type, config),
        "layers": layers,
    }))
    .unwrap()
}
