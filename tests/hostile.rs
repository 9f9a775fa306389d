//! Hostile input found by review: each test is a defect that once got
//! through, run against the real binary.

mod archives;
mod common;

use std::time::{Duration, Instant};

use archives::{Item, config_for, layer, sha256};
use common::{Env, corpus};
use serde_json::json;

/// A Docker archive of one small image whose manifest.json gives it `tags`.
fn archive_with_tags(tags: &[String]) -> Vec<u8> {
    let layer = layer(&[("hello.txt", b"hi\n")]);
    let config = config_for(&[&layer]);
    let config_name = format!("{}.json", &sha256(&config)[7..]);
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": tags,
        "Layers": ["l0/layer.tar"],
    }]);
    archives::write(&[
        Item::file(&config_name, config),
        Item::file("l0/layer.tar", layer),
        Item::file("manifest.json", serde_json::to_vec(&manifest).unwrap()),
    ])
}

/// Tagging was quadratic (every tag re-parsed every index entry), so a
/// 100 KB archive with 5000 tags held the index lock for minutes.
#[test]
fn load_with_thousands_of_tags_is_fast() {
    let env = Env::new();
    let tags: Vec<String> = (0..5000).map(|i| format!("many:{i}")).collect();
    let path = env.path("tags.tar");
    std::fs::write(&path, archive_with_tags(&tags)).unwrap();
    let started = Instant::now();
    env.ok(&["load", "-i", path.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "loading 5000 tags took {took:?}"
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.root().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 5000);
    env.assert_consistent();
}

/// A manifest.json under the 8 MiB JSON limit with 300 000 tags made an
/// index.json of 120 MB, which the store then refused to read: every
/// later command failed. The load must fail and leave the store as it was.
#[test]
fn load_that_would_overflow_the_index_is_refused_and_changes_nothing() {
    let env = Env::new();
    env.ok(&["load", "-i", corpus("d20-busybox.tar").to_str().unwrap()]);
    let before = env.snapshot();
    let tags: Vec<String> = (0..300_000).map(|i| format!("t:{i}")).collect();
    let path = env.path("tags.tar");
    std::fs::write(&path, archive_with_tags(&tags)).unwrap();
    let err = env.fails(&["load", "-i", path.to_str().unwrap()]);
    assert!(err.contains("index.json"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(env.snapshot(), before);
    env.assert_consistent();
    env.ok(&["images"]);
}
