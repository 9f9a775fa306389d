//! Putting images into a store without `rimg load`: the layer tars and
//! config of a Docker archive, or generated layers, committed through the
//! library's staging API. Transfer tests use this to get a sender's store.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use rimg::image::{Descriptor, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, Manifest};
use rimg::store::{NewImage, Store};

/// Loads every image of a legacy `docker save` archive into the store at
/// `root`, tagged as the archive says. Returns the config digests.
pub fn seed_archive(root: &Path, archive: &Path) -> Vec<String> {
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tar = tar::Archive::new(std::fs::File::open(archive).expect("archive opens"));
    for entry in tar.entries().expect("a tar") {
        let mut entry = entry.expect("an entry");
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().expect("a path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("entry reads");
        files.insert(path, bytes);
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&files["manifest.json"]).expect("manifest.json parses");

    let store = Store::open(root).expect("store opens");
    let mut ids = Vec::new();
    for item in manifest.as_array().expect("a list") {
        let config = &files[item["Config"].as_str().unwrap()];
        let layers: Vec<&Vec<u8>> = item["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &files[l.as_str().unwrap()])
            .collect();
        let tags: Vec<String> = item["RepoTags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        ids.push(commit(&store, config, &layers, &tags));
    }
    ids
}

/// Commits an image made of `layers` (uncompressed tars) with a minimal
/// config, tagged `tag`. Returns the image ID.
pub fn seed_generated(root: &Path, tag: &str, layers: &[Vec<u8>]) -> String {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| rimg::digest::Digest::of(l).to_string())
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "test"})).collect::<Vec<_>>(),
    });
    let store = Store::open(root).expect("store opens");
    let refs: Vec<&Vec<u8>> = layers.iter().collect();
    commit(
        &store,
        &serde_json::to_vec(&config).unwrap(),
        &refs,
        &[tag.to_string()],
    )
}

fn commit(store: &Store, config: &[u8], layers: &[&Vec<u8>], tags: &[String]) -> String {
    let mut staging = store.stage().expect("staging");
    let (config_digest, config_size) = staging.put_bytes(config).expect("config");
    let mut descs = Vec::new();
    for layer in layers {
        let (d, s) = staging.put_bytes(layer).expect("layer");
        descs.push(Descriptor::new(MEDIA_OCI_LAYER, d, s));
    }
    let manifest = Manifest::new(
        Descriptor::new(MEDIA_OCI_CONFIG, config_digest.clone(), config_size),
        descs,
    );
    let desc = staging.put_manifest(&manifest).expect("manifest");
    staging
        .commit(vec![NewImage {
            manifest: desc,
            tags: tags.iter().map(|t| t.parse().expect("a tag")).collect(),
        }])
        .expect("commit");
    config_digest.to_string()
}

/// `len` bytes no compressor shrinks (xorshift64), the same for the same
/// `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    data
}

/// A tar holding one file of `size` pseudo-random (incompressible) bytes.
pub fn random_layer(name: &str, size: usize, seed: u64) -> Vec<u8> {
    let data = noise(size, seed);
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    builder
        .append_data(&mut header, name, &data[..])
        .expect("tar builds");
    builder.into_inner().expect("tar finishes")
}
