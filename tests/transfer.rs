//! push-peer and listen between two stores on this machine (separate
//! `--root` and `--config`), over 127.0.0.1: dedupe, trust, pinning.

mod common;
use common::peers::{Listener, done_event, image_in, trust};
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
    // One argument is the destination: the images are missing.
    let err = sender.fails(&["push-peer", "x"]);
    assert!(err.contains("<IMAGE>..."), "{err}");
    assert!(err.contains("<IMAGE>... <DEST>"), "{err}");
}

/// `--config` goes before or after the command, as `--root` does.
#[test]
fn config_is_taken_anywhere_on_the_line() {
    let env = Env::new();
    let dir = env.path("elsewhere");
    let dir = dir.to_str().unwrap();
    let before = env.ok(&["--config", dir, "id"]);
    let after = env.ok(&["id", "--config", dir]);
    assert_eq!(before, after);
    assert_ne!(before, env.ok(&["id"]), "RIMG_CONFIG is another directory");
    let fp = before.trim();
    env.ok(&["trust", "add", "--config", dir, "--name", "me", fp]);
    assert!(env.ok(&["trust", "ls", "--config", dir]).contains("me"));
    assert!(env.ok(&["--config", dir, "trust", "ls"]).contains(fp));
    assert!(!env.ok(&["trust", "ls"]).contains(fp));
}
