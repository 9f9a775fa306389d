//! push-peer and listen between two stores on this machine (separate
//! `--root` and `--config`), over 127.0.0.1: dedupe, trust, pinning.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::seed::{seed_archive, seed_generated};
use common::{Env, corpus};

const EDGE_ID: &str = "sha256:84d1d852ada3a56dfd2f5beefb016fdc2bd984ed48b6684afc6d47d2937ffd4c";
const BB_ID: &str = "sha256:f36dafd20b57aa6dacb2ef53dac24fdd237eedd1cf22f3cf94b48611cf34a5ce";
const EDGE_DIFF_IDS: [&str; 5] = [
    "sha256:f03a735d7d1d0ca5da199ad97350a5bdfeb3a1014200b55f08fba92c5ec24c68",
    "sha256:dceedc553d91900c1aed29d17aece37da669c0baa53f3309830ce636a5a397a7",
    "sha256:12a4e0c20cf73dbb5cccb703009a8bd93a5c45684e73961d3cf8ffaec70493f6",
    "sha256:a641bab02a6f7f93573343717f1f8b42fbe3541e4aea917b7bfb867c8ba79f2f",
    "sha256:72682b70aeff94376e11f5cdcd505c47302d3f36d43b1ebd37573386635ba1fa",
];

/// A `rimg listen` on a free loopback port, killed when dropped.
pub struct Listener {
    child: Child,
    pub addr: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Listener {
    pub fn start(env: &Env, extra: &[&str]) -> Listener {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(env, port, extra)
    }

    pub fn start_on(env: &Env, port: u16, extra: &[&str]) -> Listener {
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["--no-progress", "listen", "--addr", &addr];
        args.extend_from_slice(extra);
        let mut child = env
            .cmd(&args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("listen starts");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let listener = Listener { child, addr, log };
        listener.wait_log("listening on");
        listener
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_log(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log().contains(what) {
            assert!(
                Instant::now() < deadline,
                "listener never logged {what:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes `receiver` trust `sender`.
pub fn trust(receiver: &Env, sender: &Env) {
    let fp = sender.ok(&["id"]);
    receiver.ok(&["trust", "add", "--name", "sender", fp.trim()]);
}

/// The `done` event of a `push-peer --json` run.
pub fn done_event(stdout: &str) -> serde_json::Value {
    let last = stdout.lines().last().expect("some output");
    let v: serde_json::Value = serde_json::from_str(last).expect("JSON lines");
    assert_eq!(v["event"], "done", "{stdout}");
    for line in stdout.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is JSON");
    }
    v
}

/// The image a tag names in a store: (config digest, diff_ids).
pub fn image_in(env: &Env, tag: &str) -> (String, Vec<String>) {
    let root = env.root();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["io.containerd.image.name"] == tag)
        .unwrap_or_else(|| panic!("{tag} not in {index}"));
    let blob = |d: &str| std::fs::read(root.join("blobs/sha256").join(&d[7..])).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(entry["digest"].as_str().unwrap())).unwrap();
    let id = manifest["config"]["digest"].as_str().unwrap().to_string();
    let config: serde_json::Value = serde_json::from_slice(&blob(&id)).unwrap();
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    (id, diff_ids)
}

#[test]
fn push_gives_the_same_image_and_sends_each_blob_once() {
    let (sender, receiver) = (Env::new(), Env::new());
    seed_archive(&sender.root(), &corpus("d20-edge.tar"));
    seed_archive(&sender.root(), &corpus("d20-busybox.tar"));
    trust(&receiver, &sender);
    let listener = Listener::start(&receiver, &[]);

    // First push: everything goes.
    let out = sender.ok(&[
        "push-peer",
        "--json",
        "--accept-new",
        "edge:1",
        &listener.addr,
    ]);
    let done = done_event(&out);
    assert_eq!(done["blobs_total"], 6, "{out}");
    assert_eq!(done["blobs_sent"], 6);
    assert_eq!(done["blobs_skipped"], 0);
    assert!(done["bytes_raw"].as_u64().unwrap() > 1_000_000);
    assert!(done["bytes_wire"].as_u64().unwrap() > 0);
    assert!(done["seconds"].as_f64().is_some());
    assert_eq!(done["images"][0]["id"], EDGE_ID);
    let (id, diff_ids) = image_in(&receiver, "docker.io/library/edge:1");
    assert_eq!(id, EDGE_ID);
    assert_eq!(diff_ids, EDGE_DIFF_IDS);
    receiver.assert_consistent();

    // Second push: nothing to send.
    let out = sender.ok(&["push-peer", "--json", "edge:1", &listener.addr]);
    let done = done_event(&out);
    assert_eq!(done["blobs_sent"], 0, "{out}");
    assert_eq!(done["blobs_skipped"], 6);
    assert_eq!(done["bytes_raw"], 0);
    assert_eq!(done["images"][0]["names"][0], "edge:1");

    // bb:1 shares edge's base layer: only its config travels.
    let out = sender.ok(&["push-peer", "--json", "bb:1", &listener.addr]);
    let done = done_event(&out);
    assert_eq!(done["blobs_total"], 2, "{out}");
    assert_eq!(done["blobs_skipped"], 1);
    assert_eq!(done["blobs_sent"], 1);
    assert!(
        out.contains(&format!(
            "\"event\":\"skipped\",\"digest\":\"{}\"",
            EDGE_DIFF_IDS[0]
        )) || out.contains(EDGE_DIFF_IDS[0])
    );
    let (id, _) = image_in(&receiver, "docker.io/library/bb:1");
    assert_eq!(id, BB_ID);
    receiver.assert_consistent();

    // Plain output names each image and where it went.
    let out = sender.ok(&["push-peer", "edge:1", "bb:1", &listener.addr]);
    assert_eq!(
        out,
        format!(
            "Loaded image: edge:1 on {0}\nLoaded image: bb:1 on {0}\n",
            listener.addr
        )
    );
    listener.wait_log("loaded edge:1, bb:1");
}

#[test]
fn an_untrusted_sender_is_refused_and_the_store_is_unchanged() {
    let (sender, receiver, stranger) = (Env::new(), Env::new(), Env::new());
    seed_archive(&stranger.root(), &corpus("d20-busybox.tar"));
    seed_archive(&receiver.root(), &corpus("d20-edge.tar"));
    trust(&receiver, &sender);
    let listener = Listener::start(&receiver, &[]);
    let before = receiver.snapshot();

    let err = stranger.fails(&["push-peer", "--accept-new", "bb:1", &listener.addr]);
    let fp = stranger.ok(&["id"]);
    assert!(err.contains("not authorized"), "{err}");
    assert!(
        err.contains(fp.trim()),
        "the error names the sender's fingerprint: {err}"
    );
    assert_eq!(receiver.snapshot(), before);
    listener.wait_log("refused sender");

    // Trusting it afterwards needs no restart.
    receiver.ok(&["trust", "add", "--name", "stranger", fp.trim()]);
    assert!(receiver.ok(&["trust", "ls"]).contains("stranger"));
    stranger.ok(&["push-peer", "bb:1", &listener.addr]);
    receiver.ok(&["trust", "rm", "stranger"]);
    let err = stranger.fails(&["push-peer", "bb:1", &listener.addr]);
    assert!(err.contains("not authorized"), "{err}");
}

#[test]
fn an_unknown_or_changed_listener_fingerprint_is_refused() {
    let (sender, receiver, impostor) = (Env::new(), Env::new(), Env::new());
    seed_archive(&sender.root(), &corpus("d20-busybox.tar"));
    trust(&receiver, &sender);
    trust(&impostor, &sender);

    let mut listener = Listener::start(&receiver, &[]);
    let err = sender.fails(&["push-peer", "bb:1", &listener.addr]);
    assert!(err.contains("is not known"), "{err}");
    assert!(err.contains("--accept-new"), "{err}");
    let port: u16 = listener.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    sender.ok(&["push-peer", "--accept-new", "bb:1", &listener.addr]);
    listener.kill();

    // Another identity on the same address.
    let other = Listener::start_on(&impostor, port, &[]);
    let before = impostor.snapshot();
    let err = sender.fails(&["push-peer", "--accept-new", "bb:1", &other.addr]);
    assert!(err.contains("has changed"), "{err}");
    assert!(
        err.contains("known_peers"),
        "the hint names the file: {err}"
    );
    assert_eq!(impostor.snapshot(), before, "nothing was sent");
}

#[test]
fn a_generated_multi_blob_image_arrives_whole_with_zstd_and_raw() {
    let (sender, receiver) = (Env::new(), Env::new());
    let compressible = {
        let mut b = tar::Builder::new(Vec::new());
        let data = b"hello rimg ".repeat(300_000);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "text", &data[..]).unwrap();
        b.into_inner().unwrap()
    };
    let layers = vec![
        common::seed::random_layer("a", 3 << 20, 1),
        compressible,
        common::seed::random_layer("c", 100, 3),
    ];
    let id = seed_generated(&sender.root(), "gen:1", &layers);
    trust(&receiver, &sender);
    let listener = Listener::start(&receiver, &[]);

    let out = sender.ok(&[
        "push-peer",
        "--json",
        "--compress",
        "zstd",
        "--accept-new",
        "gen:1",
        &listener.addr,
    ]);
    let done = done_event(&out);
    assert!(
        done["bytes_wire"].as_u64().unwrap() < done["bytes_raw"].as_u64().unwrap(),
        "zstd shrinks the text layer: {done}"
    );
    assert_eq!(image_in(&receiver, "docker.io/library/gen:1").0, id);
    receiver.assert_consistent();

    let again = Env::new();
    trust(&again, &sender);
    let l2 = Listener::start(&again, &[]);
    let out = sender.ok(&[
        "push-peer",
        "--json",
        "--compress",
        "none",
        "--accept-new",
        "gen:1",
        &l2.addr,
    ]);
    let done = done_event(&out);
    assert!(done["bytes_wire"].as_u64().unwrap() > done["bytes_raw"].as_u64().unwrap());
    assert_eq!(image_in(&again, "docker.io/library/gen:1").0, id);
    again.assert_consistent();
}

#[test]
fn push_peer_refuses_bad_arguments_clearly() {
    let sender = Env::new();
    let err = sender.fails(&["push-peer", "nope:1", "127.0.0.1:1"]);
    assert!(err.contains("No such image: nope:1"), "{err}");
    let err = sender.fails(&["push-peer", "x"]);
    assert!(err.contains("IMAGE... DEST"), "{err}");
    let _ = Command::new("true").status();
}
