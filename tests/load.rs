//! `rimg load`: every archive shape real tools write, in every outer
//! compression, loads with the IDs, DiffIDs, config and tags its maker
//! gave it; every broken or hostile archive fails with a message naming
//! the entry and leaves the store exactly as it was.

mod archives;
mod common;

use std::io::Write;
use std::process::{Output, Stdio};

use archives::{
    BB_ID, EDGE_DIFF_IDS, EDGE_ID, EDGE_OCI_ID, Item, find, find_mut, json, set_json, sha256,
    store_blob as blob,
};
use common::{Env, corpus};
use serde_json::{Value, json};

/// An image as the store's `index.json` and blobs describe it.
#[derive(Debug)]
struct Stored {
    id: String,
    layers: Vec<String>,
    config: Value,
}

/// The image the store's index tags `name` (familiar `name:tag`).
fn stored(env: &Env, name: &str) -> Stored {
    stored_manifest(env, &archives::tagged_manifest(env, name))
}

fn stored_manifest(env: &Env, digest: &str) -> Stored {
    let manifest: Value = serde_json::from_slice(&blob(env, digest)).unwrap();
    let id = manifest["config"]["digest"].as_str().unwrap().to_string();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(l["mediaType"], "application/vnd.oci.image.layer.v1.tar");
            l["digest"].as_str().unwrap().to_string()
        })
        .collect();
    let config = serde_json::from_slice(&blob(env, &id)).unwrap();
    Stored { id, layers, config }
}

/// Every manifest the store's index lists, tagged or not.
fn manifests(env: &Env) -> Vec<Value> {
    let index: Value = serde_json::from_slice(&env.snapshot().index).unwrap();
    index["manifests"].as_array().unwrap().clone()
}

fn load_bytes(env: &Env, bytes: &[u8]) -> Output {
    let path = env.path("input.tar");
    std::fs::write(&path, bytes).unwrap();
    env.run(&["load", "-i", path.to_str().unwrap()])
}

fn load_stdin(env: &Env, bytes: &[u8]) -> Output {
    let mut child = env
        .cmd(&["load"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&bytes);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "load failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn check_edge(env: &Env, id: &str) {
    let edge = stored(env, "edge:1");
    assert_eq!(edge.id, id);
    assert_eq!(edge.layers, EDGE_DIFF_IDS);
    assert_eq!(edge.config["rootfs"]["diff_ids"], json!(EDGE_DIFF_IDS));
    let run = &edge.config["config"];
    assert_eq!(run["Env"], json!(["PATH=/bin", "GREETING=hello"]));
    assert_eq!(run["WorkingDir"], "/data");
    assert_eq!(run["Labels"]["org.example.purpose"], "edge cases");
    let history = edge.config["history"].as_array().unwrap();
    assert_eq!(history.len(), 9);
    let empty = history.iter().filter(|h| h["empty_layer"] == true).count();
    assert_eq!(empty, 4);

    // The layers hold the files the corpus README lists.
    let names = |digest: &str| -> Vec<String> {
        archives::parse(&blob(env, digest))
            .into_iter()
            .map(|i| i.path)
            .collect()
    };
    let second = names(EDGE_DIFF_IDS[1]);
    for file in ["data/keep/a.txt", "data/gone/b.txt", "opt/dir/c.txt"] {
        assert!(second.iter().any(|n| n == file), "{file} in {second:?}");
    }
    let third = names(EDGE_DIFF_IDS[2]);
    assert!(third.iter().any(|n| n == "data/.wh.gone"), "{third:?}");
}

fn check_bb(env: &Env) {
    let bb = stored(env, "bb:1");
    assert_eq!(bb.id, BB_ID);
    assert_eq!(bb.layers, [EDGE_DIFF_IDS[0]]);
    assert_eq!(bb.config["config"]["Cmd"], json!(["/bin/sh"]));
    assert_eq!(bb.config["history"][0]["comment"], "test");
}

#[test]
fn docker_20_archives_load_with_their_ids() {
    let env = Env::new();
    let out = env.ok(&["load", "-i", corpus("d20-busybox.tar").to_str().unwrap()]);
    assert_eq!(out, "Loaded image: bb:1\n");
    check_bb(&env);
    env.assert_consistent();

    let env = Env::new();
    let out = env.ok(&["load", "-i", corpus("d20-edge.tar").to_str().unwrap()]);
    assert_eq!(out, "Loaded image: edge:1\n");
    check_edge(&env, EDGE_ID);
    env.assert_consistent();
}

#[test]
fn two_images_in_one_docker_archive_with_a_symlinked_layer() {
    let env = Env::new();
    let out = env.ok(&["load", "-i", corpus("d20-two-images.tar").to_str().unwrap()]);
    assert_eq!(out, "Loaded image: bb:1\nLoaded image: edge:1\n");
    check_bb(&env);
    check_edge(&env, EDGE_ID);
    // 5 layers, 2 configs, 2 manifests: the shared base layer once.
    assert_eq!(env.snapshot().blobs.len(), 9);
    env.assert_consistent();
}

#[test]
fn skopeo_archives_load_with_their_ids() {
    let env = Env::new();
    let out = env.ok(&[
        "load",
        "-i",
        corpus("skopeo-edge-docker.tar").to_str().unwrap(),
    ]);
    assert_eq!(out, "Loaded image: edge:1\n");
    check_edge(&env, EDGE_ID);
    let entry = &manifests(&env)[0];
    assert_eq!(
        entry["annotations"]["io.containerd.image.name"],
        "docker.io/library/edge:1"
    );
    env.assert_consistent();

    for name in ["skopeo-edge-oci.tar", "skopeo-edge-oci-zstd.tar"] {
        let env = Env::new();
        let out = env.ok(&["load", "-i", corpus(name).to_str().unwrap()]);
        assert_eq!(out, "Loaded image: edge:1\n", "{name}");
        check_edge(&env, EDGE_OCI_ID);
        env.assert_consistent();
    }
}

#[test]
fn loading_two_archives_keeps_one_copy_of_each_layer() {
    let env = Env::new();
    env.ok(&["load", "-i", corpus("d20-busybox.tar").to_str().unwrap()]);
    env.ok(&[
        "load",
        "-i",
        corpus("skopeo-edge-oci-zstd.tar").to_str().unwrap(),
    ]);
    env.ok(&["load", "-i", corpus("d20-edge.tar").to_str().unwrap()]);
    // 5 layers; bb's, edge's and skopeo-edge's configs and manifests.
    let blobs = env.snapshot().blobs;
    assert_eq!(blobs.len(), 11, "{blobs:?}");
    check_bb(&env);
    check_edge(&env, EDGE_ID);
    // edge:1 moved from the skopeo config to Docker's; the first stays untagged.
    assert_eq!(manifests(&env).len(), 3);
    env.assert_consistent();
}

#[test]
fn loading_the_same_archive_twice_changes_nothing() {
    let env = Env::new();
    let path = corpus("d20-two-images.tar");
    env.ok(&["load", "-i", path.to_str().unwrap()]);
    let before = env.snapshot();
    let out = env.ok(&["load", "-i", path.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: bb:1\nLoaded image: edge:1\n");
    assert_eq!(env.snapshot(), before);
}

#[test]
fn every_outer_compression_loads_from_file_and_stdin() {
    let plain = std::fs::read(corpus("d20-edge.tar")).unwrap();
    // A zstd skippable frame (magic 0x184D2A5E, 4 bytes of payload) first.
    let mut skippable = vec![0x5e, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
    skippable.extend(archives::zstd(&plain));
    let variants = [
        ("plain", plain.clone()),
        ("gzip", archives::gzip(&plain)),
        ("bzip2", archives::bzip2(&plain)),
        ("xz", archives::xz(&plain)),
        ("zstd", archives::zstd(&plain)),
        ("zstd with a skippable frame", skippable),
    ];
    for (name, bytes) in variants {
        let env = Env::new();
        assert_eq!(
            stdout(&load_bytes(&env, &bytes)),
            "Loaded image: edge:1\n",
            "{name}"
        );
        check_edge(&env, EDGE_ID);
        let env = Env::new();
        assert_eq!(
            stdout(&load_stdin(&env, &bytes)),
            "Loaded image: edge:1\n",
            "{name} on stdin"
        );
        check_edge(&env, EDGE_ID);
        env.assert_consistent();
    }
}

#[test]
fn trailing_bytes_after_the_tar_are_ignored() {
    let mut bytes = std::fs::read(corpus("d20-busybox.tar")).unwrap();
    bytes.extend((0..5000u32).map(|i| (i * 7 + 3) as u8));
    let env = Env::new();
    assert_eq!(stdout(&load_bytes(&env, &bytes)), "Loaded image: bb:1\n");
    check_bb(&env);
}

/// The corpus edge image rebuilt in the shape Docker 25+ writes: an OCI
/// layout whose config has Docker's media type, plus `manifest.json`
/// pointing into `blobs/`, and `repositories`.
fn docker25_edge() -> Vec<Item> {
    let items = archives::read(&corpus("d20-edge.tar"));
    let manifest = json(&items, "manifest.json");
    let config = find(&items, manifest[0]["Config"].as_str().unwrap())
        .data
        .clone();
    let layers: Vec<Vec<u8>> = manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| find(&items, p.as_str().unwrap()).data.clone())
        .collect();
    let layer_refs: Vec<(&str, &[u8])> = layers
        .iter()
        .map(|l| (archives::OCI_LAYER, l.as_slice()))
        .collect();
    let oci_manifest = archives::oci_manifest(
        &config,
        "application/vnd.docker.container.image.v1+json",
        &layer_refs,
    );
    let index = json!({
        "schemaVersion": 2,
        "mediaType": archives::OCI_INDEX,
        "manifests": [{
            "mediaType": archives::OCI_MANIFEST,
            "digest": sha256(&oci_manifest),
            "size": oci_manifest.len(),
            "annotations": {
                "io.containerd.image.name": "docker.io/library/edge:1",
                "org.opencontainers.image.ref.name": "1"
            }
        }]
    });
    let docker = json!([{
        "Config": archives::blob_path(&config),
        "RepoTags": ["edge:1"],
        "Layers": layers.iter().map(|l| archives::blob_path(l)).collect::<Vec<_>>(),
    }]);
    let mut out = vec![Item {
        path: "blobs/".into(),
        kind: archives::Kind::Dir,
        data: vec![],
    }];
    let mut seen = Vec::new();
    for blob in layers.iter().chain([&config, &oci_manifest]) {
        let path = archives::blob_path(blob);
        if !seen.contains(&path) {
            seen.push(path.clone());
            out.push(Item::file(&path, blob.clone()));
        }
    }
    out.push(Item::file(
        "index.json",
        serde_json::to_vec(&index).unwrap(),
    ));
    out.push(Item::file(
        "manifest.json",
        serde_json::to_vec(&docker).unwrap(),
    ));
    out.push(Item::file(
        "oci-layout",
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    ));
    out.push(Item::file("repositories", r#"{"edge":{"1":"x"}}"#));
    out
}

#[test]
fn docker_25_shape_loads() {
    let env = Env::new();
    let out = load_bytes(&env, &archives::write(&docker25_edge()));
    assert_eq!(stdout(&out), "Loaded image: edge:1\n");
    check_edge(&env, EDGE_ID);
    env.assert_consistent();

    // Without manifest.json the OCI index alone names it, by the full name.
    let mut items = docker25_edge();
    items.retain(|i| i.path != "manifest.json");
    let env = Env::new();
    assert_eq!(
        stdout(&load_bytes(&env, &archives::write(&items))),
        "Loaded image: edge:1\n"
    );
    check_edge(&env, EDGE_ID);
}

/// bb:1 and edge:1 as one OCI archive: bb's layer plain, edge's layers
/// gzip and zstd, edge behind a nested index with a platform; plus an
/// untagged third entry and an attestation-like manifest to skip.
fn oci_two_images() -> Vec<u8> {
    let items = archives::read(&corpus("d20-two-images.tar"));
    let manifest = json(&items, "manifest.json");
    let image = |n: usize| -> (Vec<u8>, Vec<Vec<u8>>) {
        let config = find(&items, manifest[n]["Config"].as_str().unwrap())
            .data
            .clone();
        let layers = manifest[n]["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                // Layers may be symlinks in this archive: follow them.
                let item = find(&items, p.as_str().unwrap());
                match &item.kind {
                    archives::Kind::Symlink(t) => {
                        let dir = p.as_str().unwrap().rsplit_once('/').unwrap().0;
                        let target = t.strip_prefix("../").unwrap();
                        assert!(!dir.is_empty());
                        find(&items, target).data.clone()
                    }
                    _ => item.data.clone(),
                }
            })
            .collect();
        (config, layers)
    };
    let (bb_config, bb_layers) = image(0);
    let (edge_config, edge_layers) = image(1);

    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let bb_manifest = archives::oci_manifest(
        &bb_config,
        archives::OCI_CONFIG,
        &[(archives::OCI_LAYER, &bb_layers[0])],
    );
    let compressed: Vec<(&str, Vec<u8>)> = edge_layers
        .iter()
        .enumerate()
        .map(|(i, l)| match i % 3 {
            0 => (archives::OCI_LAYER_GZIP, archives::gzip(l)),
            1 => (archives::OCI_LAYER_ZSTD, archives::zstd(l)),
            _ => (archives::OCI_LAYER, l.clone()),
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = compressed.iter().map(|(t, b)| (*t, b.as_slice())).collect();
    let edge_manifest = archives::oci_manifest(&edge_config, archives::OCI_CONFIG, &refs);
    let attestation = archives::oci_manifest(b"{}", "application/vnd.in-toto+json", &[]);
    let (os, arch) = ("linux", "amd64");
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": archives::OCI_INDEX,
        "manifests": [
            {"mediaType": archives::OCI_MANIFEST, "digest": sha256(&edge_manifest),
             "size": edge_manifest.len(), "platform": {"os": os, "architecture": arch}},
            {"mediaType": archives::OCI_MANIFEST, "digest": sha256(&attestation),
             "size": attestation.len(), "platform": {"os": "unknown", "architecture": "unknown"}},
        ]
    }))
    .unwrap();
    let mut bb_entry = archives::descriptor(archives::OCI_MANIFEST, &bb_manifest);
    bb_entry["annotations"] = json!({"org.opencontainers.image.ref.name": "bb:1"});
    let mut edge_entry = archives::descriptor(archives::OCI_INDEX, &nested);
    edge_entry["annotations"] = json!({"io.containerd.image.name": "docker.io/library/edge:1"});
    let index = json!({"schemaVersion": 2, "manifests": [bb_entry, edge_entry]});

    blobs.push(bb_config);
    blobs.extend(bb_layers);
    blobs.push(edge_config);
    blobs.extend(compressed.into_iter().map(|(_, b)| b));
    blobs.extend([bb_manifest, edge_manifest, nested]);
    let mut out: Vec<Item> = blobs
        .iter()
        .map(|b| Item::file(&archives::blob_path(b), b.clone()))
        .collect();
    out.push(Item::file(
        "oci-layout",
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    ));
    out.push(Item::file(
        "index.json",
        serde_json::to_vec(&index).unwrap(),
    ));
    archives::write(&out)
}

#[test]
fn oci_archive_with_two_images_nested_index_and_mixed_layer_compression() {
    let env = Env::new();
    let out = load_bytes(&env, &oci_two_images());
    assert_eq!(stdout(&out), "Loaded image: bb:1\nLoaded image: edge:1\n");
    check_bb(&env);
    check_edge(&env, EDGE_ID);
    assert_eq!(env.snapshot().blobs.len(), 9);
    env.assert_consistent();
}

/// An image with a zero-byte layer file, the same layer twice (once by
/// path, once through a symlink), and a gzip-compressed `layer.tar`.
#[test]
fn zero_byte_repeated_and_compressed_layers_in_a_docker_archive() {
    let a = archives::layer(&[("a.txt", b"a")]);
    let b = archives::layer(&[("b.txt", b"b")]);
    let empty: &[u8] = b"";
    let config = archives::config_for(&[&a, empty, &a, &b, &a]);
    let id = sha256(&config);
    let manifest = json!([{
        "Config": format!("{}.json", &id[7..]),
        "RepoTags": ["odd:1"],
        "Layers": ["1/layer.tar", "2/layer.tar", "1/layer.tar", "3/layer.tar", "4/layer.tar"],
    }]);
    let items = vec![
        Item::file("1/layer.tar", a.clone()),
        Item::file("2/layer.tar", empty),
        Item::file("3/layer.tar", archives::gzip(&b)),
        Item::symlink("4/layer.tar", "../1/layer.tar"),
        Item::file(&format!("{}.json", &id[7..]), config.clone()),
        Item::file("manifest.json", serde_json::to_vec(&manifest).unwrap()),
    ];
    let env = Env::new();
    assert_eq!(
        stdout(&load_bytes(&env, &archives::write(&items))),
        "Loaded image: odd:1\n"
    );
    let odd = stored(&env, "odd:1");
    assert_eq!(odd.id, id);
    let (sa, sb, se) = (sha256(&a), sha256(&b), sha256(empty));
    assert_eq!(odd.layers, [&sa, &se, &sa, &sb, &sa].map(|s| s.clone()));
    // The compressed layer is kept uncompressed: its blob is the tar.
    assert_eq!(blob(&env, &sb), b);
    assert_eq!(blob(&env, &se), empty);
    env.assert_consistent();
}

#[test]
fn an_image_without_tags_is_loaded_by_id() {
    let mut items = archives::read(&corpus("d20-busybox.tar"));
    let mut manifest = json(&items, "manifest.json");
    manifest[0]["RepoTags"] = Value::Null;
    set_json(&mut items, "manifest.json", &manifest);
    let env = Env::new();
    let out = load_bytes(&env, &archives::write(&items));
    assert_eq!(stdout(&out), format!("Loaded image ID: {BB_ID}\n"));
    let entries = manifests(&env);
    assert_eq!(entries.len(), 1);
    assert!(entries[0].get("annotations").is_none());
    env.assert_consistent();
}

// ---------------------------------------------------------------------
// Broken and hostile archives: each fails, names the entry, and leaves the
// store exactly as it was.

/// A store that already holds bb:1, so "unchanged" means something.
fn populated() -> Env {
    let env = Env::new();
    env.ok(&["load", "-i", corpus("d20-busybox.tar").to_str().unwrap()]);
    env
}

fn assert_rejected(env: &Env, bytes: &[u8], expected: &[&str]) -> String {
    let before = env.snapshot();
    let out = load_bytes(env, bytes);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("error: loading"), "{stderr}");
    for part in expected {
        assert!(stderr.contains(part), "expected {part:?} in:\n{stderr}");
    }
    assert_eq!(
        env.snapshot(),
        before,
        "the store changed; stderr: {stderr}"
    );
    let tmp = std::fs::read_dir(env.root().join(".rimg/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "temporary files left behind");
    env.assert_consistent();
    stderr
}

fn edge_items() -> Vec<Item> {
    archives::read(&corpus("d20-edge.tar"))
}

fn edit_manifest(items: &mut [Item], edit: impl FnOnce(&mut Value)) {
    let mut manifest = json(items, "manifest.json");
    edit(&mut manifest);
    set_json(items, "manifest.json", &manifest);
}

const EDGE_TOP: &str = "4aacf9d6c7fb9927dcfeec3cd165751c2a5198152491a630b360965ca734a84b/layer.tar";

#[test]
fn rejects_absolute_paths_in_manifest_json() {
    let env = populated();
    let mut items = edge_items();
    edit_manifest(&mut items, |m| m[0]["Layers"][4] = json!("/etc/passwd"));
    assert_rejected(
        &env,
        &archives::write(&items),
        &["manifest.json: path \"/etc/passwd\" is absolute"],
    );

    let mut items = edge_items();
    edit_manifest(&mut items, |m| m[0]["Config"] = json!("/tmp/config.json"));
    assert_rejected(
        &env,
        &archives::write(&items),
        &["\"/tmp/config.json\" is absolute"],
    );
}

#[test]
fn rejects_paths_that_climb_with_dot_dot() {
    let env = populated();
    let mut items = edge_items();
    let climbing = format!("../{EDGE_TOP}");
    edit_manifest(&mut items, |m| m[0]["Layers"][4] = json!(climbing));
    assert_rejected(
        &env,
        &archives::write(&items),
        &["manifest.json: path", "climbs out with \"..\""],
    );

    let mut items = edge_items();
    edit_manifest(&mut items, |m| {
        m[0]["Layers"][0] = json!("x/../../etc/passwd")
    });
    assert_rejected(&env, &archives::write(&items), &["climbs out with \"..\""]);
}

#[test]
fn rejects_symlinks_that_leave_the_archive() {
    let env = populated();
    for target in [
        "../../etc/passwd",
        "/etc/passwd",
        "../../../../../../etc/shadow",
    ] {
        let mut items = edge_items();
        let layer = find_mut(&mut items, EDGE_TOP);
        *layer = Item::symlink(EDGE_TOP, target);
        let stderr = assert_rejected(
            &env,
            &archives::write(&items),
            &["leads outside the archive through the symlink", target],
        );
        assert!(stderr.contains(EDGE_TOP), "{stderr}");
    }

    // Through a directory symlink, and in an OCI archive.
    let mut items = edge_items();
    items.push(Item::symlink("up", ".."));
    edit_manifest(&mut items, |m| m[0]["Layers"][4] = json!("up/etc/passwd"));
    assert_rejected(&env, &archives::write(&items), &["symlink up -> .."]);

    let mut items = archives::read(&corpus("skopeo-edge-oci.tar"));
    let victim = "blobs/sha256/290daa4eaf8af57b1676ecd8283ba6f1555be5c0bb06f1502d60d8ebdda31847";
    *find_mut(&mut items, victim) = Item::symlink(victim, "../../../etc/passwd");
    assert_rejected(
        &env,
        &archives::write(&items),
        &["leads outside the archive", victim],
    );
}

#[test]
fn rejects_a_tar_entry_with_an_unsafe_name() {
    let env = populated();
    for name in ["../evil", "/abs/evil", "a/../../evil"] {
        let mut items = edge_items();
        items.insert(0, Item::file(name, "x"));
        assert_rejected(&env, &archives::write(&items), &[name]);
    }
}

#[test]
fn rejects_a_layer_whose_bytes_do_not_match_its_diff_id() {
    let env = populated();
    let mut items = edge_items();
    let layer = find_mut(&mut items, EDGE_TOP);
    let bad = sha256(&{
        let mut d = layer.data.clone();
        d[1000] ^= 0x01;
        d
    });
    layer.data[1000] ^= 0x01;
    assert_rejected(
        &env,
        &archives::write(&items),
        &[EDGE_TOP, "digest mismatch", EDGE_DIFF_IDS[4], &bad],
    );
}

#[test]
fn rejects_an_oci_blob_whose_bytes_do_not_match_its_digest() {
    let env = populated();
    for victim in [
        // a gzip layer, the config, the manifest
        "290daa4eaf8af57b1676ecd8283ba6f1555be5c0bb06f1502d60d8ebdda31847",
        "2898ea010624498f7f68eb8f1660a3036967005f803de6060379d2e5aa09e1a6",
        "d2b4268ef2e94af4b4f440df684b960e364f4fe69e5b60e55dabeec99f1d2c9b",
    ] {
        let mut items = archives::read(&corpus("skopeo-edge-oci.tar"));
        let path = format!("blobs/sha256/{victim}");
        let blob = find_mut(&mut items, &path);
        let at = blob.data.len() / 2;
        blob.data[at] ^= 0x20;
        let actual = sha256(&blob.data);
        assert_rejected(
            &env,
            &archives::write(&items),
            &[
                &path,
                "digest mismatch",
                &format!("sha256:{victim}"),
                &actual,
            ],
        );
    }
}

#[test]
fn rejects_a_layer_count_that_differs_from_diff_ids() {
    let env = populated();
    let mut items = edge_items();
    edit_manifest(&mut items, |m| {
        m[0]["Layers"].as_array_mut().unwrap().pop();
    });
    assert_rejected(
        &env,
        &archives::write(&items),
        &[
            "84d1d852ada3a56dfd2f5beefb016fdc2bd984ed48b6684afc6d47d2937ffd4c.json",
            "4 layer(s) but its config lists 5 diff_ids",
        ],
    );
}

#[test]
fn rejects_malformed_json() {
    let env = populated();
    let mut items = edge_items();
    find_mut(&mut items, "manifest.json").data = b"[{\"Config\": ".to_vec();
    assert_rejected(
        &env,
        &archives::write(&items),
        &["manifest.json is not valid JSON"],
    );

    let mut items = edge_items();
    find_mut(&mut items, "manifest.json").data = br#"{"Config": "x"}"#.to_vec();
    assert_rejected(
        &env,
        &archives::write(&items),
        &["manifest.json is not valid JSON"],
    );

    let mut items = edge_items();
    let config = "84d1d852ada3a56dfd2f5beefb016fdc2bd984ed48b6684afc6d47d2937ffd4c.json";
    find_mut(&mut items, config).data = b"{\"rootfs\": 7}".to_vec();
    assert_rejected(&env, &archives::write(&items), &[config, "not valid JSON"]);

    let mut items = archives::read(&corpus("skopeo-edge-oci.tar"));
    find_mut(&mut items, "index.json").data = b"{\"manifests\": [1]".to_vec();
    assert_rejected(
        &env,
        &archives::write(&items),
        &["index.json is not valid JSON"],
    );
}

#[test]
fn rejects_a_json_entry_larger_than_the_limit() {
    let env = populated();
    let mut items = edge_items();
    let mut big = b"[".to_vec();
    big.extend(std::iter::repeat_n(b' ', 9 << 20));
    big.extend(b"]");
    find_mut(&mut items, "manifest.json").data = big;
    assert_rejected(
        &env,
        &archives::write(&items),
        &["manifest.json is", "allowed for a JSON document"],
    );
}

#[test]
fn rejects_a_missing_blob() {
    let env = populated();
    let mut items = edge_items();
    items.retain(|i| i.path != EDGE_TOP);
    assert_rejected(
        &env,
        &archives::write(&items),
        &[&format!(
            "manifest.json names {EDGE_TOP}, which is not in the archive"
        )],
    );

    let mut items = archives::read(&corpus("skopeo-edge-oci-zstd.tar"));
    let gone = "blobs/sha256/2bacac103e0489bd10c25dee316fba44f651f58998724fe8ba338fb74dcc98bf";
    items.retain(|i| i.path != gone);
    assert_rejected(
        &env,
        &archives::write(&items),
        &[gone, "which is not in the archive"],
    );

    let mut items = edge_items();
    items.retain(|i| i.path != "manifest.json");
    items.retain(|i| i.path != "repositories");
    assert_rejected(
        &env,
        &archives::write(&items),
        &["neither manifest.json nor index.json"],
    );
}

#[test]
fn rejects_an_invalid_tag_before_anything_is_committed() {
    let env = populated();
    for tag in ["Edge:1", "edge:-bad", "edge@sha256:abc", "edge:1 2"] {
        let mut items = archives::read(&corpus("d20-two-images.tar"));
        // bb:1 stays valid; only edge's tag is bad: nothing at all loads.
        edit_manifest(&mut items, |m| m[1]["RepoTags"] = json!(["edge:2", tag]));
        assert_rejected(
            &env,
            &archives::write(&items),
            &["manifest.json: invalid tag", tag],
        );
    }

    let mut items = archives::read(&corpus("skopeo-edge-oci.tar"));
    let mut index = json(&items, "index.json");
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = json!("EDGE:1");
    set_json(&mut items, "index.json", &index);
    assert_rejected(
        &env,
        &archives::write(&items),
        &["index.json: invalid tag \"EDGE:1\""],
    );
}

#[test]
fn rejects_a_truncated_stream() {
    let env = populated();
    let full = std::fs::read(corpus("d20-edge.tar")).unwrap();
    // Inside a layer, inside a header, and just before manifest.json's data.
    let manifest_at = full
        .windows(13)
        .position(|w| w == b"manifest.json")
        .unwrap();
    for cut in [
        1_000_000,
        2_000_000 + 100,
        manifest_at + 512 + 20,
        3_000_000,
    ] {
        let stderr = assert_rejected(&env, &full[..cut], &[]);
        assert!(stderr.contains("truncated"), "cut at {cut}: {stderr}");
    }
    let stderr = assert_rejected(&env, &full[..1_000_000], &["entry"]);
    assert!(stderr.contains("layer.tar"), "{stderr}");

    // A compressed stream cut short.
    let gz = archives::gzip(&full);
    assert_rejected(
        &env,
        &gz[..gz.len() / 2],
        &["reading the archive failed at", "truncated"],
    );
    let zst = archives::zstd(&full);
    assert_rejected(
        &env,
        &zst[..zst.len() - 100],
        &["reading the archive failed at", "truncated"],
    );
}

#[test]
fn rejects_input_that_is_not_an_archive() {
    let env = populated();
    assert_rejected(&env, b"", &["the input is empty"]);
    assert_rejected(&env, &[b'x'; 4096], &["not a tar archive"]);
    assert_rejected(
        &env,
        &archives::gzip(b"hello world"),
        &["does not decompress to a tar"],
    );
}

#[test]
fn rejects_a_corrupt_compressed_layer() {
    let env = populated();
    let mut items = archives::read(&corpus("skopeo-edge-oci-zstd.tar"));
    // Keep the archive's digest right, so only decompression can notice:
    // rewrite the layer, its descriptor and the manifest's digest.
    let manifest_path =
        "blobs/sha256/52b400b9c83d39fe9ecec990bca35d48e5d049edbe73f0acae3bff8f6403faa8";
    let mut manifest = json(&items, manifest_path);
    let old = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut layer = find(&items, &format!("blobs/sha256/{}", &old[7..]))
        .data
        .clone();
    let at = layer.len() / 2;
    layer[at..at + 64].fill(0xff);
    let new_path = archives::blob_path(&layer);
    manifest["layers"][0]["digest"] = json!(sha256(&layer));
    items.retain(|i| !i.path.ends_with(&old[7..]) && i.path != manifest_path);
    items.push(Item::file(&new_path, layer));
    let manifest = serde_json::to_vec(&manifest).unwrap();
    items.push(Item::file(
        &archives::blob_path(&manifest),
        manifest.clone(),
    ));
    let mut index = json(&items, "index.json");
    index["manifests"][0]["digest"] = json!(sha256(&manifest));
    index["manifests"][0]["size"] = json!(manifest.len());
    set_json(&mut items, "index.json", &index);
    assert_rejected(
        &env,
        &archives::write(&items),
        &[&new_path, "zstd stream is corrupt"],
    );
}

#[test]
fn rejects_a_huge_tar_metadata_entry_before_reading_it() {
    let env = populated();
    // A GNU long-name header declaring 5 GiB: the tar crate would read it
    // whole into memory; the load must fail at the header instead.
    let mut bytes = archives::write(&edge_items()[..3]);
    bytes.truncate(bytes.len() - 1024);
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    header.set_entry_type(tar::EntryType::GNULongName);
    header.set_size(5 << 30);
    header.set_cksum();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[b'a'; 4096]);
    assert_rejected(
        &env,
        &bytes,
        &[
            "truncated or damaged after entry",
            "more than the 1048576 allowed",
        ],
    );
}

#[test]
fn blobs_already_in_the_store_are_checked_not_rewritten() {
    let env = populated();
    let saved = env.path("bb.tar");
    env.ok(&["save", "-o", saved.to_str().unwrap(), "bb:1"]);
    let bytes = std::fs::read(&saved).unwrap();
    let before = env.snapshot();
    assert_eq!(stdout(&load_bytes(&env, &bytes)), "Loaded image: bb:1\n");
    assert_eq!(env.snapshot(), before);

    // Bytes that differ from the name of a blob the store has.
    let mut items = archives::parse(&bytes);
    let path = format!("blobs/sha256/{}", &EDGE_DIFF_IDS[0][7..]);
    let layer = find_mut(&mut items, &path);
    layer.data[5000] ^= 1;
    let actual = sha256(&layer.data);
    assert_rejected(
        &env,
        &archives::write(&items),
        &[
            &path,
            &actual,
            &format!("its name says {}", EDGE_DIFF_IDS[0]),
        ],
    );
}
