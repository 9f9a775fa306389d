//! `seed_store ROOT NAME:TAG LAYER.tar...`: commits uncompressed layer tars
//! as one image with a minimal config, streaming each through the store's
//! staging. The transfer benchmark uses it to build its test image from
//! real files; it needs nothing but the store library.

use std::io::Write;

use rimg::image::{Descriptor, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, Manifest};
use rimg::store::{NewImage, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, tag, layers @ ..] = &args[..] else {
        return Err("usage: seed_store ROOT NAME:TAG LAYER.tar...".into());
    };
    let store = Store::open(root)?;
    let mut staging = store.stage()?;
    let mut descs = Vec::new();
    for path in layers {
        let mut writer = staging.writer()?;
        std::io::copy(&mut std::fs::File::open(path)?, &mut writer)?;
        writer.flush()?;
        let blob = staging.add(writer.finish(path, None)?);
        descs.push(Descriptor::new(MEDIA_OCI_LAYER, blob.0, blob.1));
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": descs.iter().map(|d| d.digest.to_string()).collect::<Vec<_>>()},
    });
    let (digest, size) = staging.put_bytes(&serde_json::to_vec(&config)?)?;
    let manifest = Manifest::new(
        Descriptor::new(MEDIA_OCI_CONFIG, digest.clone(), size),
        descs,
    );
    let desc = staging.put_manifest(&manifest)?;
    staging.commit(vec![NewImage {
        manifest: desc,
        tags: vec![tag.parse()?],
    }])?;
    println!("{digest}");
    Ok(())
}
