//! Which layer a directory of a Docker 24-and-older export holds, without
//! reading the layer.
//!
//! Those engines write each layer as `<v1id>/layer.tar`, where `v1id` is
//! not the layer's digest but a hash over a legacy JSON description of the
//! layer and its chain ID. The directory's `json` file (which comes before
//! `layer.tar` in the export) is that description, so for each candidate
//! chain ID of the image we rebuild the hashed document and compare: a
//! match identifies the layer exactly, before a byte of it is read. That is
//! what lets a sender skip, unread and unsent, the layers a receiver
//! already has. When nothing matches (an engine that hashes differently),
//! the caller falls back to hashing the layer as it streams.
//!
//! The rebuilt document follows moby's legacy ID scheme: the layer's
//! description without `id` and `parent`, plus `layer_id` (the chain ID)
//! and `parent` (`sha256:` + the parent's v1 ID), keys sorted, values as
//! the engine wrote them. Below the top layer the engine adds `os` only
//! after hashing, so it is tried without it too.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::digest::Digest;

/// The index in `chains` of the layer that directory `dir` holds, given
/// the bytes of its `json` file.
pub fn identify_layer(dir: &str, json: &[u8], chains: &[Digest]) -> Option<usize> {
    let mut fields: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(json).ok()?;
    fields.remove("id");
    let parent: Option<String> = fields
        .remove("parent")
        .and_then(|raw| serde_json::from_str(raw.get()).ok());

    let mut variants = vec![fields.clone()];
    if fields.remove("os").is_some() {
        variants.push(fields);
    }
    for mut doc in variants {
        if let Some(parent) = &parent {
            doc.insert("parent".into(), raw_string(&format!("sha256:{parent}")));
        }
        for (i, chain) in chains.iter().enumerate() {
            doc.insert("layer_id".into(), raw_string(&chain.to_string()));
            if Digest::of(&render(&doc)).hex() == dir {
                return Some(i);
            }
        }
    }
    None
}

fn raw_string(s: &str) -> Box<RawValue> {
    RawValue::from_string(serde_json::to_string(s).expect("a string serialises"))
        .expect("a JSON string is valid JSON")
}

/// `{"k":v,...}` with the values as they are: Go's encoding of a map of raw
/// messages.
fn render(doc: &BTreeMap<String, Box<RawValue>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.push(b'{');
    for (i, (key, value)) in doc.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend(
            serde_json::to_string(key)
                .expect("a key serialises")
                .bytes(),
        );
        out.push(b':');
        out.extend(value.get().bytes());
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Read;

    use super::*;
    use crate::engine::chain_ids;

    /// Every layer directory of a real Docker 20.10 export is identified,
    /// in the order its manifest.json lists them.
    #[test]
    fn identifies_every_layer_of_a_docker_20_export() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/corpus/real/d20-edge.tar"
        );
        let Ok(file) = std::fs::File::open(path) else {
            panic!("the shared corpus is missing: {path}");
        };
        let mut files: HashMap<String, Vec<u8>> = HashMap::new();
        let mut archive = tar::Archive::new(file);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            if name.ends_with("json") {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                files.insert(name, bytes);
            }
        }
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let config: crate::image::ImageConfig =
            serde_json::from_slice(&files[manifest[0]["Config"].as_str().unwrap()]).unwrap();
        let chains = chain_ids(&config.rootfs.diff_ids);

        let layers = manifest[0]["Layers"].as_array().unwrap();
        assert_eq!(layers.len(), 5);
        for (i, layer) in layers.iter().enumerate() {
            let dir = layer.as_str().unwrap().strip_suffix("/layer.tar").unwrap();
            let json = &files[&format!("{dir}/json")];
            assert_eq!(
                identify_layer(dir, json, &chains),
                Some(i),
                "layer {i} ({dir})"
            );
        }

        // A wrong chain never matches.
        let dir = layers[0]
            .as_str()
            .unwrap()
            .strip_suffix("/layer.tar")
            .unwrap();
        let json = &files[&format!("{dir}/json")];
        assert_eq!(identify_layer(dir, json, &chains[1..]), None);
    }
}
