//! The Docker Engine as a source: `rimg load --from docker-daemon:NAME`
//! and `rimg save docker-daemon:NAME`, against the engine on this machine,
//! and the engine failures a user meets (no engine, no permission, no such
//! image), each with the engine's message, a hint, and the store as it was.

mod common;

use std::process::Command;

use common::{Env, corpus, need_docker};

/// A name no other test uses, removed from the engine when dropped.
struct EngineImage(String);

impl EngineImage {
    /// Loads the corpus's bb:1 into the engine as `name` only (the `bb:1`
    /// tag the archive carries is removed again, under a lock, so that
    /// tests running at once never untag each other's image).
    fn busybox(name: &str) -> EngineImage {
        static ENGINE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _serial = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
        let out = Command::new("docker")
            .args(["load", "-q", "-i"])
            .arg(corpus("d20-busybox.tar"))
            .output()
            .expect("docker runs");
        assert!(out.status.success(), "docker load: {out:?}");
        let status = Command::new("docker")
            .args([
                "tag",
                "sha256:f36dafd20b57aa6dacb2ef53dac24fdd237eedd1cf22f3cf94b48611cf34a5ce",
                name,
            ])
            .status()
            .expect("docker runs");
        assert!(status.success());
        let _ = Command::new("docker").args(["rmi", "bb:1"]).output();
        EngineImage(name.to_string())
    }
}

impl Drop for EngineImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", &self.0]).output();
    }
}

const BB_ID: &str = "sha256:f36dafd20b57aa6dacb2ef53dac24fdd237eedd1cf22f3cf94b48611cf34a5ce";
const BB_LAYER: &str = "sha256:f03a735d7d1d0ca5da199ad97350a5bdfeb3a1014200b55f08fba92c5ec24c68";

#[test]
fn load_from_the_engine_keeps_id_and_diff_ids() {
    if !need_docker() {
        return;
    }
    let image = EngineImage::busybox("rimg-test-engine/load:1");
    let env = Env::new();

    let out = env.ok(&["load", "--from", &format!("docker-daemon:{}", image.0)]);
    assert_eq!(out.trim(), "Loaded image: rimg-test-engine/load:1");

    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "rimg-test-engine/load:1"])).unwrap();
    assert_eq!(inspect[0]["Id"], BB_ID);
    assert_eq!(
        inspect[0]["RootFS"]["Layers"],
        serde_json::json!([BB_LAYER])
    );
    env.assert_consistent();
}

#[test]
fn save_from_the_engine_streams_its_export() {
    if !need_docker() {
        return;
    }
    let image = EngineImage::busybox("rimg-test-engine/save:1");
    let env = Env::new();
    let archive = env.path("bb.tar.zst");

    env.ok(&[
        "save",
        "--compress",
        "zstd",
        "-o",
        archive.to_str().unwrap(),
        &format!("docker-daemon:{}", image.0),
    ]);
    let head = std::fs::read(&archive).unwrap();
    assert_eq!(&head[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd stream");

    let out = env.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: rimg-test-engine/save:1");
    let ids = env.ok(&["images", "-q", "--no-trunc"]);
    assert_eq!(ids.trim(), BB_ID);
}

#[test]
fn a_missing_image_is_the_engines_word_and_changes_nothing() {
    if !need_docker() {
        return;
    }
    let env = Env::new();
    env.ok(&["load", "-i", corpus("d20-busybox.tar").to_str().unwrap()]);
    let before = env.snapshot();

    let err = env.fails(&["load", "--from", "docker-daemon:rimg-test-engine/absent:9"]);
    assert!(err.contains("the Docker Engine has no image"), "{err}");
    assert!(
        err.contains("No such image"),
        "the engine's own message: {err}"
    );
    assert!(err.contains("hint:"), "{err}");
    assert_eq!(env.snapshot(), before);

    let err = env.fails(&["save", "docker-daemon:rimg-test-engine/absent:9"]);
    assert!(err.contains("No such image"), "{err}");
    env.assert_consistent();
}

#[test]
fn no_engine_at_docker_host_says_so_with_a_hint() {
    let env = Env::new();
    let socket = env.path("no-engine.sock");
    let out = env
        .cmd(&["load", "--from", "docker-daemon:busybox"])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the Docker Engine"), "{err}");
    assert!(err.contains("hint: is the Docker daemon running?"), "{err}");

    // A socket that refuses connections (nothing listens on it).
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(listener);
    let out = env
        .cmd(&["save", "docker-daemon:busybox"])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the Docker Engine"), "{err}");
}

#[test]
fn no_permission_on_the_socket_says_so_with_a_hint() {
    if !need_docker() {
        return;
    }
    // Root may open any socket: run rimg as `nobody` to meet the error a
    // user outside the docker group meets.
    let is_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    if !is_root {
        let env = Env::new();
        let err = env.fails(&["load", "--from", "docker-daemon:busybox"]);
        assert!(
            err.contains("permission denied") || err.contains("no image"),
            "{err}"
        );
        return;
    }
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_rimg"))
        .arg("--root")
        .arg(dir.path().join("store"))
        .args(["load", "--from", "docker-daemon:busybox"])
        .env("DOCKER_HOST", "unix:///var/run/docker.sock")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied on the Docker Engine socket"),
        "{err}"
    );
    assert!(
        err.contains("hint: add this user to the docker group"),
        "{err}"
    );
}
