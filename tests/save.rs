//! `rimg save`: the archive has the Docker 25+ shape, shares layers, loads
//! back into rimg, into the Docker Engine (and runs there), and reads in
//! skopeo as both `docker-archive:` and `oci-archive:`. A failed save
//! leaves no file under the target name.

mod archives;
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use archives::{BB_ID, EDGE_DIFF_IDS, EDGE_ID, find, json, sha256};
use common::{Env, corpus, need_docker, need_skopeo};
use serde_json::{Value, json};

/// A store holding bb:1 and edge:1 from the corpus.
fn with_images() -> Env {
    let env = Env::new();
    env.ok(&["load", "-i", corpus("d20-two-images.tar").to_str().unwrap()]);
    env
}

fn save_to(env: &Env, name: &str, args: &[&str]) -> std::path::PathBuf {
    let path = env.path(name);
    let mut all = vec!["save", "-o", path.to_str().unwrap()];
    all.extend(args);
    env.ok(&all);
    path
}

/// The config digest and layers of the image `name` in a store's index.
fn stored(env: &Env, name: &str) -> (String, Vec<String>) {
    let digest = archives::tagged_manifest(env, name);
    let manifest: Value = serde_json::from_slice(&archives::store_blob(env, &digest)).unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    (
        manifest["config"]["digest"].as_str().unwrap().to_string(),
        layers,
    )
}

#[test]
fn save_writes_the_docker_25_shape_with_shared_layers_once() {
    let env = with_images();
    let path = save_to(&env, "out.tar", &["bb:1", "edge:1"]);
    let items = archives::read(&path);

    let names: Vec<&str> = items.iter().map(|i| i.path.as_str()).collect();
    for expected in ["oci-layout", "index.json", "manifest.json", "repositories"] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    // Every blob is named by its digest, is uncompressed, and is there once.
    let blobs: Vec<_> = items
        .iter()
        .filter(|i| i.path.starts_with("blobs/sha256/") && i.kind == archives::Kind::File)
        .collect();
    for blob in &blobs {
        assert_eq!(
            format!("blobs/sha256/{}", &sha256(&blob.data)[7..]),
            blob.path
        );
    }
    assert_eq!(blobs.len(), 9, "5 layers, 2 configs, 2 manifests");
    let base = format!("blobs/sha256/{}", &EDGE_DIFF_IDS[0][7..]);
    assert_eq!(names.iter().filter(|n| **n == base).count(), 1);
    assert_eq!(
        archives::parse(&find(&items, &base).data)[0].path,
        "./",
        "an uncompressed tar"
    );

    let index = json(&items, "index.json");
    let annotations: Vec<&Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["annotations"])
        .collect();
    assert_eq!(
        annotations,
        [
            &json!({"io.containerd.image.name": "docker.io/library/bb:1",
                    "org.opencontainers.image.ref.name": "bb:1"}),
            &json!({"io.containerd.image.name": "docker.io/library/edge:1",
                    "org.opencontainers.image.ref.name": "edge:1"}),
        ]
    );

    let manifest = json(&items, "manifest.json");
    assert_eq!(
        manifest[0]["Config"],
        format!("blobs/sha256/{}", &BB_ID[7..])
    );
    assert_eq!(manifest[0]["RepoTags"], json!(["bb:1"]));
    assert_eq!(manifest[1]["RepoTags"], json!(["edge:1"]));
    let layers: Vec<String> = EDGE_DIFF_IDS
        .iter()
        .map(|d| format!("blobs/sha256/{}", &d[7..]))
        .collect();
    assert_eq!(manifest[1]["Layers"], json!(layers));
    assert_eq!(
        json(&items, "repositories"),
        json!({"bb": {"1": &EDGE_DIFF_IDS[0][7..]}, "edge": {"1": &EDGE_DIFF_IDS[4][7..]}})
    );
}

#[test]
fn save_then_load_gives_the_same_images() {
    let env = with_images();
    let path = save_to(&env, "out.tar", &["edge:1", "bb:1"]);
    let other = Env::new();
    let out = other.ok(&["load", "-i", path.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: edge:1\nLoaded image: bb:1\n");
    assert_eq!(stored(&other, "edge:1"), stored(&env, "edge:1"));
    assert_eq!(stored(&other, "bb:1"), stored(&env, "bb:1"));
    assert_eq!(other.snapshot().blobs, env.snapshot().blobs);
    other.assert_consistent();
}

#[test]
fn stdout_and_file_get_the_same_bytes() {
    let env = with_images();
    let path = save_to(&env, "out.tar", &["edge:1"]);
    let piped = env.cmd(&["save", "edge:1"]).output().unwrap();
    assert!(piped.status.success());
    assert_eq!(piped.stdout, std::fs::read(path).unwrap());
}

#[test]
fn an_image_named_by_id_is_saved_untagged() {
    let env = with_images();
    let path = save_to(&env, "out.tar", &[&BB_ID[7..19], "edge:1", EDGE_ID]);
    let items = archives::read(&path);
    let index = json(&items, "index.json");
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    assert!(entries[0].get("annotations").is_none());
    let manifest = json(&items, "manifest.json");
    assert_eq!(manifest[0]["RepoTags"], json!([]));
    assert_eq!(manifest[1]["RepoTags"], json!(["edge:1"]));

    let other = Env::new();
    let out = other.ok(&["load", "-i", path.to_str().unwrap()]);
    assert_eq!(
        out,
        format!("Loaded image ID: {BB_ID}\nLoaded image: edge:1\n")
    );
}

#[test]
fn compressed_saves_load_back() {
    let env = with_images();
    let magics: [(&str, &[u8]); 4] = [
        ("gzip", &[0x1f, 0x8b]),
        ("zstd", &[0x28, 0xb5, 0x2f, 0xfd]),
        ("bzip2", b"BZh"),
        ("xz", &[0xfd, b'7', b'z', b'X', b'Z']),
    ];
    for (alg, magic) in magics {
        let path = save_to(&env, &format!("out.{alg}"), &["--compress", alg, "edge:1"]);
        assert!(std::fs::read(&path).unwrap().starts_with(magic), "{alg}");
        let other = Env::new();
        assert_eq!(
            other.ok(&["load", "-i", path.to_str().unwrap()]),
            "Loaded image: edge:1\n"
        );
        assert_eq!(stored(&other, "edge:1"), stored(&env, "edge:1"));
    }
    let err = env.fails(&["save", "--compress", "lz4", "edge:1"]);
    assert!(err.contains("unknown compression"), "{err}");
}

#[test]
fn refuses_to_write_to_a_terminal() {
    if !common::need("script (util-linux)", &["script", "--version"]) {
        return;
    }
    let env = with_images();
    let rimg = env!("CARGO_BIN_EXE_rimg");
    let line = format!("{rimg} --root {} save bb:1", env.root().display());
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("refusing to write an archive to a terminal"),
        "{text}"
    );
    assert!(text.len() < 1000, "no archive went to the terminal");
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".rimg-save"))
        .collect()
}

#[test]
fn a_failed_save_leaves_no_file_under_the_target_name() {
    let env = with_images();
    let target = env.path("out.tar");

    let err = env.fails(&["save", "-o", target.to_str().unwrap(), "edge:1", "nope:1"]);
    assert!(err.contains("No such image: nope:1"), "{err}");
    assert!(!target.exists());

    // A damaged store: the top layer is shorter than its manifest says, so
    // the save fails midway, after much has been written.
    std::fs::write(&target, "the old archive").unwrap();
    let top = env.root().join("blobs/sha256").join(&EDGE_DIFF_IDS[4][7..]);
    let data = std::fs::read(&top).unwrap();
    std::fs::write(&top, &data[..1000]).unwrap();
    let err = env.fails(&["save", "-o", target.to_str().unwrap(), "edge:1"]);
    assert!(
        err.contains(&format!(
            "blob {} is 1000 bytes in the store",
            EDGE_DIFF_IDS[4]
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"the old archive");
    assert!(leftovers(env.dir.path()).is_empty());

    // A directory that does not exist.
    let err = env.fails(&["save", "-o", "/nonexistent/dir/out.tar", "bb:1"]);
    assert!(err.contains("/nonexistent/dir"), "{err}");
}

// ---------------------------------------------------------------------
// The Docker Engine on this machine.

/// A name no other test (or helper) uses, removed from Docker on drop.
struct DockerName(String);

impl DockerName {
    fn new(what: &str) -> DockerName {
        DockerName(format!("rimg-archive-test-{}/{what}", std::process::id()))
    }
}

impl Drop for DockerName {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "--force", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs an outside tool, asserts it succeeded, returns its stdout.
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn docker(args: &[&str]) -> String {
    tool("docker", args)
}

/// Docker's image ID and DiffIDs for `name`.
fn docker_image(name: &str) -> (String, Vec<String>) {
    let out = docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}} {{json .RootFS.Layers}}",
        name,
    ]);
    let (id, layers) = out.trim().split_once(' ').unwrap();
    (id.to_string(), serde_json::from_str(layers).unwrap())
}

#[test]
fn rimg_save_loads_into_docker_runs_and_round_trips() {
    if !need_docker() {
        return;
    }
    let env = with_images();
    let name = DockerName::new("edge:1");
    env.ok(&["tag", "edge:1", &name.0]);

    // rimg save | docker load
    let mut save = env
        .cmd(&["save", &name.0])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Command::new("docker")
        .arg("load")
        .stdin(save.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(save.wait().unwrap().success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("Loaded image: {}", name.0)),
        "{stdout}"
    );
    assert_eq!(
        docker_image(&name.0),
        (
            EDGE_ID.to_string(),
            EDGE_DIFF_IDS.map(String::from).to_vec()
        )
    );

    // The container runs and prints what edge's CMD prints.
    let run = docker(&["run", "--rm", &name.0]);
    let lines: Vec<&str> = run.lines().collect();
    assert_eq!(
        lines[..4],
        ["hello from edge", "one", "four", "d.txt"],
        "{run}"
    );

    // docker save | rimg load: the same ID and DiffIDs come back.
    let back = env.path("back.tar");
    docker(&["save", "-o", back.to_str().unwrap(), &name.0]);
    let other = Env::new();
    let out = other.ok(&["load", "-i", back.to_str().unwrap()]);
    assert!(out.contains(&name.0), "{out}");
    let (id, layers) = stored(&other, &name.0);
    assert_eq!(id, EDGE_ID);
    assert_eq!(layers, EDGE_DIFF_IDS);
    other.assert_consistent();
}

#[test]
fn docker_loads_the_corpus_and_its_saves_load_into_rimg() {
    if !need_docker() {
        return;
    }
    let bb = DockerName::new("bb:1");
    let edge = DockerName::new("edge:1");
    let env = Env::new();

    // The corpus archive, under names of our own, into Docker.
    let mut items = archives::read(&corpus("d20-two-images.tar"));
    let mut manifest = json(&items, "manifest.json");
    manifest[0]["RepoTags"] = json!([&bb.0]);
    manifest[1]["RepoTags"] = json!([&edge.0]);
    archives::set_json(&mut items, "manifest.json", &manifest);
    items.retain(|i| i.path != "repositories");
    let input = env.path("two.tar");
    std::fs::write(&input, archives::write(&items)).unwrap();
    docker(&["load", "-i", input.to_str().unwrap()]);
    assert_eq!(docker_image(&bb.0).0, BB_ID);

    // docker save of both, into rimg.
    let saved = env.path("saved.tar");
    docker(&["save", "-o", saved.to_str().unwrap(), &bb.0, &edge.0]);
    let out = env.ok(&["load", "-i", saved.to_str().unwrap()]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(
        stored(&env, &bb.0),
        (BB_ID.to_string(), vec![EDGE_DIFF_IDS[0].to_string()])
    );
    assert_eq!(stored(&env, &edge.0).1, EDGE_DIFF_IDS);

    // An image imported into Docker (not from any archive) loads too.
    let imported = DockerName::new("imported:1");
    let rootfs =
        std::fs::read(env.root().join("blobs/sha256").join(&EDGE_DIFF_IDS[1][7..])).unwrap();
    let rootfs_path = env.path("rootfs.tar");
    std::fs::write(&rootfs_path, &rootfs).unwrap();
    docker(&[
        "import",
        "-m",
        "from a test",
        rootfs_path.to_str().unwrap(),
        &imported.0,
    ]);
    let (docker_id, docker_layers) = docker_image(&imported.0);
    let saved = env.path("imported.tar");
    docker(&["save", "-o", saved.to_str().unwrap(), &imported.0]);
    env.ok(&["load", "-i", saved.to_str().unwrap()]);
    let (id, layers) = stored(&env, &imported.0);
    assert_eq!(id, docker_id);
    assert_eq!(layers, docker_layers);
    env.assert_consistent();
}

// ---------------------------------------------------------------------
// skopeo reads what rimg saves, as a docker-archive and as an oci-archive.

fn skopeo(args: &[&str]) -> String {
    tool("skopeo", args)
}

#[test]
fn skopeo_inspects_and_copies_rimg_save_output() {
    if !need_skopeo() {
        return;
    }
    let env = with_images();
    let path = save_to(&env, "out.tar", &["bb:1", "edge:1"]);
    let archive = path.to_str().unwrap();

    for source in [
        format!("docker-archive:{archive}:edge:1"),
        format!("oci-archive:{archive}:edge:1"),
    ] {
        let inspect: Value = serde_json::from_str(&skopeo(&["inspect", &source])).unwrap();
        assert_eq!(inspect["Layers"], json!(EDGE_DIFF_IDS), "{source}");
        assert_eq!(
            inspect["Env"],
            json!(["PATH=/bin", "GREETING=hello"]),
            "{source}"
        );
        let config: Value =
            serde_json::from_str(&skopeo(&["inspect", "--config", &source])).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"],
            json!(EDGE_DIFF_IDS),
            "{source}"
        );
    }

    // Copies: docker-archive to an OCI layout; oci-archive to a dir, which
    // keeps the config byte for byte.
    let layout = env.path("layout");
    skopeo(&[
        "copy",
        &format!("docker-archive:{archive}:bb:1"),
        &format!("oci:{}:bb:1", layout.display()),
    ]);
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);

    let dir = env.path("dir");
    skopeo(&[
        "copy",
        &format!("oci-archive:{archive}:edge:1"),
        &format!("dir:{}", dir.display()),
    ]);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["config"]["digest"], EDGE_ID);
    let digests: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests, EDGE_DIFF_IDS);
    let sizes: BTreeMap<&str, u64> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["digest"].as_str().unwrap(), l["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(sizes[EDGE_DIFF_IDS[0]], 1996800);
}
