//! The Docker Engine as a source: `rimg load --from docker-daemon:NAME`
//! and `rimg save docker-daemon:NAME`, against the engine on this machine,
//! and the engine failures a user meets (no engine, no permission, no such
//! image), each with the engine's message, a hint, and the store as it was.

mod common;

use std::process::Command;

use common::peers::{Listener, done_event, image_in, partial_len, slow_push, trust, wait_partial};
use common::{Env, corpus, in_ci, need, need_docker};

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
    // The engine's 404, said once: its own text only repeated the name.
    assert!(
        err.contains(r#"the Docker Engine has no image "rimg-test-engine/absent:9""#),
        "{err}"
    );
    assert!(!err.to_lowercase().contains("no such image"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert_eq!(env.snapshot(), before);

    let err = env.fails(&["save", "docker-daemon:rimg-test-engine/absent:9"]);
    assert!(
        err.contains(r#"the Docker Engine has no image "rimg-test-engine/absent:9""#),
        "{err}"
    );
    env.assert_consistent();
}

#[test]
fn no_engine_at_docker_host_says_so_with_a_hint() {
    let env = Env::new();
    let socket = env.path("no-engine.sock");
    for args in [
        &["load", "--from", "docker-daemon:busybox"][..],
        &["push-peer", "docker-daemon:busybox", "127.0.0.1:9"],
    ] {
        let out = env
            .cmd(args)
            .env("DOCKER_HOST", format!("unix://{}", socket.display()))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot reach the Docker Engine"), "{err}");
        assert!(err.contains("hint: is the Docker daemon running?"), "{err}");
    }

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
    assert!(
        out.contains(&format!(
            "Loaded image: {} into the Docker Engine on {}",
            pushed.0, listener.addr
        )),
        "the sender reports the receiving engine's result: {out}"
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
/// keeps the image, consistent; the sender hears the engine's message and
/// fails, as the image did not reach the engine.
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

    let err = sender.fails(&["push-peer", "--accept-new", name, &listener.addr]);
    assert!(
        err.contains("in the receiver's store, but its Docker Engine did not load them")
            && err.to_lowercase().contains("windows"),
        "{err}"
    );
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
    let err = sender.fails(&["push-peer", name, &listener.addr]);
    assert!(err.contains("did not load them"), "{err}");
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

/// A second Docker Engine, private to one test, so that the receiving
/// engine does not already hold the sender's layers. It runs as root only
/// (its own data root, exec root and socket under a short path, as a unix
/// socket path is limited); stopped with SIGTERM and waited for on drop.
///
/// It gets a bridge of its own: `dockerd --bridge=none` deletes the
/// machine's `docker0` at start (moby's removeDefaultBridgeInterface),
/// which breaks `docker run` on the first engine.
struct SecondEngine {
    dir: std::path::PathBuf,
    bridge: String,
    child: std::process::Child,
}

impl SecondEngine {
    /// `None` (skip) without root or dockerd; a failure under CI=true.
    fn start() -> Option<SecondEngine> {
        let is_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        if !is_root {
            assert!(!in_ci(), "a second Docker Engine needs root under CI=true");
            eprintln!("skipping: starting a second Docker Engine needs root");
            return None;
        }
        if !need("dockerd", &["dockerd", "--version"]) {
            return None;
        }
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::path::PathBuf::from(format!("/var/tmp/rimg-de-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The machine's daemon.json sets a data root: read none.
        std::fs::write(dir.join("cfg.json"), "{}").unwrap();
        let bridge = format!(
            "rimgbr{}",
            (std::process::id() % 10000) * 10 + n as u32 % 10
        );
        let subnet = format!("10.231.{}.1/24", (std::process::id() as usize + n) % 250);
        let ip = |args: &[&str]| Command::new("ip").args(args).status().unwrap().success();
        assert!(
            ip(&["link", "add", &bridge, "type", "bridge"])
                && ip(&["addr", "add", &subnet, "dev", &bridge])
                && ip(&["link", "set", &bridge, "up"]),
            "making bridge {bridge}"
        );
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(dir.join("cfg.json"))
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}/sock", dir.display()))
            .arg(format!("--bridge={bridge}"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--storage-driver",
                "fuse-overlayfs",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd starts");
        let engine = SecondEngine { dir, bridge, child };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !engine.docker(&["info"]).status.success() {
            assert!(
                std::time::Instant::now() < deadline,
                "the second engine did not start: {}",
                std::fs::read_to_string(engine.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Some(engine)
    }

    fn host(&self) -> String {
        format!("unix://{}/sock", self.dir.display())
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .output()
            .expect("docker runs")
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Builds `tag` in the local engine from a Dockerfile and files; removed
/// when dropped.
fn build(tag: &str, dockerfile: &str, files: &[(&str, &[u8])]) -> EngineName {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let out = Command::new("docker")
        .args(["build", "-q", "--network", "none", "-t", tag])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker runs");
    assert!(out.status.success(), "docker build: {out:?}");
    EngineName(tag.to_string())
}

/// The manifest digest the store tags `name` with.
fn manifest_digest(env: &Env, name: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.root().join("index.json")).unwrap()).unwrap();
    let full = format!("docker.io/{name}");
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["io.containerd.image.name"] == full.as_str())
        .unwrap_or_else(|| panic!("{name} not in {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn blob_size(env: &Env, digest: &str) -> u64 {
    std::fs::metadata(env.root().join("blobs/sha256").join(&digest[7..]))
        .unwrap()
        .len()
}

/// Issue 5: `push-peer docker-daemon:NAME` to a listener that loads into
/// another engine. The image runs there; a second image on the same base
/// sends only its own layers; the sender prints the engine's result; and
/// the manifest is the one `load --from docker-daemon:` makes.
#[test]
fn push_peer_from_the_engine_into_a_second_engine() {
    if !need_docker() {
        return;
    }
    let Some(second) = SecondEngine::start() else {
        return;
    };
    let _base = EngineImage::busybox("rimg-test-engine/peer-base:1");
    let app1 = build(
        "rimg-test-engine/peer-app1:1",
        "FROM rimg-test-engine/peer-base:1\nRUN echo one > /one\nCOPY hello.txt /hello.txt\nCMD [\"cat\", \"/one\", \"/hello.txt\"]\n",
        &[("hello.txt", b"hello from app1\n")],
    );
    let app2 = build(
        "rimg-test-engine/peer-app2:1",
        "FROM rimg-test-engine/peer-base:1\nCOPY two.txt /two.txt\nCMD [\"cat\", \"/two.txt\"]\n",
        &[("two.txt", b"two\n")],
    );

    let (sender, receiver) = (Env::new(), Env::new());
    trust(&receiver, &sender);
    let host = second.host();
    let listener = Listener::start_env(
        &receiver,
        &["--into", "docker-daemon"],
        &[("DOCKER_HOST", &host)],
    );

    // Everything travels: the receiver has nothing yet.
    let source1 = format!("docker-daemon:{}", app1.0);
    let out = sender.ok(&["push-peer", "--accept-new", &source1, &listener.addr]);
    assert!(
        out.contains(&format!("Loaded image: {} on {}", app1.0, listener.addr)),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Loaded image: {} into the Docker Engine on {}",
            app1.0, listener.addr
        )),
        "the engine's result: {out}"
    );
    let run = second.docker(&["run", "--rm", "--network", "none", &app1.0]);
    assert!(run.status.success(), "{run:?}");
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "one\nhello from app1\n"
    );

    let loaded = Env::new();
    loaded.ok(&["load", "--from", &source1]);
    assert_eq!(
        manifest_digest(&receiver, &app1.0),
        manifest_digest(&loaded, &app1.0),
        "push-peer docker-daemon: and load --from docker-daemon: agree"
    );

    // The same base: only app2's config and its own layer travel.
    let source2 = format!("docker-daemon:{}", app2.0);
    let out = sender.ok(&["push-peer", "--json", &source2, &listener.addr]);
    let done = done_event(&out);
    assert_eq!(done["blobs_total"], 3, "{done}");
    assert_eq!(done["blobs_skipped"], 1, "{done}");
    assert_eq!(done["blobs_sent"], 2, "{done}");
    let (id2, diff_ids2) = image_in(&receiver, &format!("docker.io/{}", app2.0));
    let own = blob_size(&receiver, &id2) + blob_size(&receiver, &diff_ids2[1]);
    assert_eq!(done["bytes_raw"], own, "{done}");
    assert!(done["bytes_export"].as_u64().unwrap() > own, "{done}");
    let engine = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "engine")
        .unwrap_or_else(|| panic!("no engine event: {out}"));
    let lines = engine["lines"].to_string();
    assert!(
        lines.contains("left out 1 it already holds")
            && lines.contains(&format!("Loaded image: {}", app2.0)),
        "{engine}"
    );
    let run = second.docker(&["run", "--rm", "--network", "none", &app2.0]);
    assert!(run.status.success(), "{run:?}");
    assert_eq!(String::from_utf8_lossy(&run.stdout), "two\n");
    receiver.assert_consistent();
}

/// An engine image that does not exist: the engine's word and a hint,
/// before any connection.
#[test]
fn push_peer_of_a_missing_engine_image_is_the_engines_word() {
    if !need_docker() {
        return;
    }
    let env = Env::new();
    let err = env.fails(&[
        "push-peer",
        "docker-daemon:rimg-test-engine/absent:9",
        "127.0.0.1:9",
    ]);
    assert!(
        err.contains(r#"the Docker Engine has no image "rimg-test-engine/absent:9""#),
        "{err}"
    );
    assert!(!err.to_lowercase().contains("no such image"), "{err}");
    assert!(err.contains("hint:"), "{err}");

    let err = env.fails(&["push-peer", "docker-daemon:busybox", "bb:1", "127.0.0.1:9"]);
    assert!(err.contains("not both"), "{err}");
}

/// A push from the engine that fails before it reads the export (here the
/// listener does not trust the sender) used to panic while dropping the
/// engine client inside async code, exiting 101 without the listener's
/// reason. It is an error like any other, and the receiver's store is as
/// it was.
#[test]
fn a_refused_push_from_the_engine_is_an_error_not_a_panic() {
    if !need_docker() {
        return;
    }
    let image = EngineImage::busybox("rimg-hostile3-refused:1");
    let (sender, receiver) = (Env::new(), Env::new());
    let listener = Listener::start(&receiver, &[]);
    let before = receiver.snapshot();

    let out = sender
        .cmd(&[
            "push-peer",
            "--accept-new",
            &format!("docker-daemon:{}", image.0),
            &listener.addr,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("is not authorized by this listener"), "{err}");
    assert_eq!(receiver.snapshot(), before);
    receiver.assert_consistent();
}

/// The name goes into the Engine API's request path: `NAME/json?` used to
/// inspect NAME (a push then offered that image, and only the export
/// failed), `..` reached other endpoints. Such names are refused before
/// the engine is asked, naming the name; the store is as it was.
#[test]
fn a_name_the_engine_would_not_see_as_typed_is_refused() {
    if !need_docker() {
        return;
    }
    let image = EngineImage::busybox("rimg-hostile3-names:1");
    let env = Env::new();
    env.ok(&["load", "-i", corpus("d20-edge.tar").to_str().unwrap()]);
    let before = env.snapshot();
    for name in [
        format!("{}/json?", image.0),
        format!("{}#x", image.0),
        format!("x/../{}", image.0),
    ] {
        let source = format!("docker-daemon:{name}");
        for args in [
            &["load", "--from", &source][..],
            &["save", "-o", "/dev/null", &source],
            &["push-peer", &source, "127.0.0.1:9"],
        ] {
            let err = env.fails(args);
            assert!(
                err.contains(&format!("{name:?} is not an image name or ID")),
                "{args:?}: {err}"
            );
            assert!(err.contains("hint:"), "{err}");
        }
    }
    assert_eq!(env.snapshot(), before);
}

/// A push from the engine killed in the middle of a layer resumes: the
/// export is read again from its start, but the bytes the receiver holds
/// are skipped, not sent again.
#[test]
fn a_killed_push_from_the_engine_resumes_where_it_stopped() {
    if !need_docker() {
        return;
    }
    let _base = EngineImage::busybox("rimg-test-engine/resume-base:1");
    let app = build(
        "rimg-test-engine/resume:1",
        "FROM rimg-test-engine/resume-base:1\nCOPY big.bin /big.bin\n",
        &[("big.bin", &common::seed::noise(24 << 20, 5))],
    );
    let (sender, receiver) = (Env::new(), Env::new());
    trust(&receiver, &sender);
    let listener = Listener::start(&receiver, &["--stall-timeout", "3"]);
    let source = format!("docker-daemon:{}", app.0);

    let mut push = slow_push(&sender, &source, &listener.addr);
    wait_partial(&receiver, 6 << 20);
    push.kill().unwrap();
    push.wait().unwrap();
    let held = partial_len(&receiver);
    listener.wait_log("transfer failed");

    let out = sender.ok(&["push-peer", "--json", &source, &listener.addr]);
    let done = done_event(&out);
    let (id, diff_ids) = image_in(&receiver, &format!("docker.io/{}", app.0));
    let all: u64 = std::iter::once(&id)
        .chain(&diff_ids)
        .map(|d| blob_size(&receiver, d))
        .sum();
    let sent = done["bytes_raw"].as_u64().unwrap();
    assert!(
        sent + held <= all,
        "sent {sent} of {all} bytes again, though {held} were held: {done}"
    );
    let inspect = Command::new("docker")
        .args(["inspect", "--format", "{{.Id}}", &app.0])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&inspect.stdout).trim(), id);
    receiver.assert_consistent();
}

/// A stand-in for the Engine API on a unix socket: it answers `/version`,
/// `/_ping` and an image's inspect like an engine holding the corpus's
/// bb:1, and answers the export (`/images/get`) with `export` after
/// `delay`, as an engine that first writes a large image to a temporary
/// directory does.
fn fake_engine(socket: &std::path::Path, delay: std::time::Duration, export: Vec<u8>) {
    use std::io::{Read, Write};
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    let export = std::sync::Arc::new(export);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let (mut conn, export) = (conn.unwrap(), export.clone());
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    buf.clear();
                    while !buf.ends_with(b"\r\n\r\n") {
                        if conn.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        buf.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let (kind, body) = if path.contains("/images/get") {
                        std::thread::sleep(delay);
                        ("application/x-tar", export.to_vec())
                    } else if path.ends_with("/json") {
                        let inspect = serde_json::json!({
                            "Id": BB_ID,
                            "RepoTags": ["bb:1"],
                            "RootFS": {"Type": "layers", "Layers": [BB_LAYER]},
                            "Size": export.len(),
                        });
                        ("application/json", inspect.to_string().into_bytes())
                    } else if path.ends_with("/version") {
                        let version = r#"{"ApiVersion":"1.41","Version":"20.10.24"}"#;
                        ("application/json", version.as_bytes().to_vec())
                    } else {
                        ("text/plain", b"OK".to_vec())
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if conn.write_all(head.as_bytes()).is_err() || conn.write_all(&body).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// The engine answers an export only once it has written the whole image
/// to a temporary directory, and a load only once it has read the whole
/// archive: for a large image that is minutes. The client library's
/// two-minute request timeout used to end both. Here an engine that takes
/// a little over two minutes to answer its export (no Docker needed).
#[test]
fn an_export_the_engine_answers_after_two_minutes_is_read() {
    let env = Env::new();
    let socket = env.path("slow-engine.sock");
    let export = std::fs::read(corpus("d20-busybox.tar")).unwrap();
    fake_engine(&socket, std::time::Duration::from_secs(125), export);

    let out = env
        .cmd(&["load", "--from", "docker-daemon:bb:1"])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Loaded image: bb:1"
    );
    assert_eq!(env.ok(&["images", "-q", "--no-trunc"]).trim(), BB_ID);
    env.assert_consistent();
}
