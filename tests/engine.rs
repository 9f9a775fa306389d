//! The Docker Engine as a source: `rimg load --from docker-daemon:NAME`
//! and `rimg save docker-daemon:NAME`, against the engine on this machine,
//! and the engine failures a user meets (no engine, no permission, no such
//! image), each with the engine's message, a hint, and the store as it was.

mod common;

use std::process::Command;

use common::peers::{Listener, trust};
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

/// `rimg listen --into docker-daemon`: what a sender pushes also lands in
/// the receiver's engine, which gets only the layers it lacks (the engine
/// here runs the classic store, which the listener reads from the engine)
/// and runs the image.
#[test]
fn a_listener_into_the_engine_sends_it_only_the_layers_it_lacks() {
    if !need_docker() {
        return;
    }
    // The engine holds busybox (edge:1's bottom layer) under another name.
    let _base = EngineImage::busybox("rimg-test-engine/into-base:1");
    let pushed = EngineName("rimg-test-engine/into-edge:1".into());

    let (sender, receiver) = (Env::new(), Env::new());
    sender.ok(&["load", "-i", corpus("d20-edge.tar").to_str().unwrap()]);
    sender.ok(&["tag", "edge:1", &pushed.0]);
    trust(&receiver, &sender);
    let listener = Listener::start(&receiver, &["--into", "docker-daemon"]);

    let out = sender.ok(&["push-peer", "--accept-new", &pushed.0, &listener.addr]);
    assert!(
        out.contains(&format!("Loaded image: {} on", pushed.0)),
        "{out}"
    );
    listener.wait_log(&format!("Loaded image: {}", pushed.0));
    let log = listener.log();
    assert!(
        log.contains("classic store")
            && log.contains("sent 4 layer(s), left out 1 it already holds"),
        "{log}"
    );

    let run = Command::new("docker")
        .args(["run", "--rm", &pushed.0])
        .output()
        .expect("docker runs");
    assert!(run.status.success(), "{run:?}");
    assert!(String::from_utf8_lossy(&run.stdout).starts_with("hello from edge\n"));
}

/// An image the engine refuses (a Windows image on a Linux engine): the
/// listener logs the engine's own message, keeps serving, and its store
/// keeps the image, consistent.
#[test]
fn a_load_the_engine_refuses_is_logged_with_its_message() {
    if !need_docker() {
        return;
    }
    let (sender, receiver) = (Env::new(), Env::new());
    let rootfs = sender.path("rootfs.tar");
    std::fs::write(sender.path("hello.txt"), "hi\n").unwrap();
    let status = Command::new("tar")
        .arg("-C")
        .arg(sender.dir.path())
        .arg("-cf")
        .arg(&rootfs)
        .arg("hello.txt")
        .status()
        .unwrap();
    assert!(status.success());
    let name = "rimg-test-engine/windows:1";
    sender.ok(&[
        "import",
        "--platform",
        "windows/amd64",
        rootfs.to_str().unwrap(),
        name,
    ]);
    trust(&receiver, &sender);
    let listener = Listener::start(&receiver, &["--into", "docker-daemon"]);

    sender.ok(&["push-peer", "--accept-new", name, &listener.addr]);
    listener.wait_log("loading into the Docker Engine failed");
    let log = listener.log();
    assert!(log.contains("the Docker Engine refused the load"), "{log}");
    assert!(
        log.to_lowercase().contains("windows"),
        "the engine's message: {log}"
    );
    receiver.assert_consistent();
    assert!(receiver.ok(&["images", "-q"]).lines().count() == 1);

    // Still serving.
    sender.ok(&["push-peer", name, &listener.addr]);
}

#[test]
fn into_is_for_ssh_destinations() {
    let env = Env::new();
    env.ok(&["load", "-i", corpus("d20-busybox.tar").to_str().unwrap()]);
    let err = env.fails(&[
        "push-peer",
        "--into",
        "docker-daemon",
        "bb:1",
        "127.0.0.1:9",
    ]);
    assert!(err.contains("rimg listen --into docker-daemon"), "{err}");
}

/// An engine image name removed when dropped.
struct EngineName(String);

impl Drop for EngineName {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", &self.0]).output();
    }
}
