//! A push killed mid-blob, first on the sending end and then on the
//! receiving end, resumes: the next push completes and sends less than the
//! whole blob again, and the receiver's store is consistent throughout.

mod common;

use std::path::Path;

use common::Env;
use common::peers::{Listener, done_event, image_in, partial_len, slow_push, trust, wait_partial};
use common::seed::{random_layer, seed_generated};

const LAYER: usize = 48 << 20;

fn no_tag(root: &Path) -> bool {
    let index = std::fs::read_to_string(root.join("index.json")).unwrap_or_default();
    !index.contains("big:1")
}

/// Pushes big:1 at full speed, uncompressed; its output and `done` event.
fn push_again(sender: &Env, addr: &str) -> (String, serde_json::Value) {
    let out = sender.ok(&["push-peer", "--json", "--compress", "none", "big:1", addr]);
    let done = done_event(&out);
    (out, done)
}

#[test]
fn killed_sender_then_killed_receiver_resume_where_they_stopped() {
    let (sender, receiver) = (Env::new(), Env::new());
    let small = random_layer("small", 1000, 7);
    let big = random_layer("big", LAYER, 9);
    let big_len = big.len() as u64;
    let id = seed_generated(&sender.root(), "big:1", &[small, big]);
    trust(&receiver, &sender);
    let mut listener = Listener::start(&receiver, &["--stall-timeout", "3"]);
    let port: u16 = listener.addr.rsplit_once(':').unwrap().1.parse().unwrap();

    // 1. Kill the sender mid-blob.
    let mut push = slow_push(&sender, "big:1", &listener.addr);
    let first = wait_partial(&receiver, 8 << 20);
    push.kill().unwrap();
    push.wait().unwrap();
    assert!(no_tag(&receiver.root()), "no half image is tagged");
    receiver.assert_consistent();

    // 2. Resume, then kill the receiver mid-blob.
    let mut push = slow_push(&sender, "big:1", &listener.addr);
    let second = wait_partial(&receiver, first + (8 << 20));
    listener.kill();
    push.kill().unwrap();
    push.wait().unwrap();
    assert!(second > first, "the second push continued the partial blob");
    assert!(no_tag(&receiver.root()));
    receiver.assert_consistent();

    // 3. A new receiver on the same store: the push completes, sending
    //    only what was missing.
    let _listener = Listener::start_on(&receiver, port, &["--stall-timeout", "3"]);
    let held = partial_len(&receiver);
    let (out, done) = push_again(&sender, &_listener.addr);
    let raw = done["bytes_raw"].as_u64().unwrap();
    assert!(
        raw < LAYER as u64,
        "resumed push sent {raw} bytes, not less than the whole: {out}"
    );
    // The config and the small layer were stored by the first push.
    assert_eq!(raw, big_len - held, "only the missing tail was sent: {out}");
    assert_eq!(done["blobs_sent"], 1, "{out}");
    let resumed = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "blob" && v["offset"].as_u64().unwrap() > 0)
        .expect("a blob event with a non-zero offset");
    assert_eq!(resumed["offset"].as_u64().unwrap(), held);
    assert_eq!(image_in(&receiver, "docker.io/library/big:1").0, id);
    receiver.assert_consistent();
    assert_eq!(
        partial_len(&receiver),
        0,
        "the partial file became the blob"
    );
}

/// A sender stopped with SIGTERM or Ctrl-C (SIGINT) closes its connection
/// with that reason: the receiver lets go of the partial blob at once, not
/// after its idle timeout, and the same push run again continues it.
#[test]
fn an_interrupted_sender_says_so_and_the_push_continues() {
    let (sender, receiver) = (Env::new(), Env::new());
    let big = random_layer("big", LAYER, 11);
    let big_len = big.len() as u64;
    let id = seed_generated(&sender.root(), "big:1", &[big]);
    trust(&receiver, &sender);
    let listener = Listener::start(&receiver, &[]);

    let mut held = 0;
    for (signal, said) in [("-TERM", "terminated"), ("-INT", "interrupted")] {
        let push = slow_push(&sender, "big:1", &listener.addr);
        held = wait_partial(&receiver, held + (4 << 20));
        let pid = push.id().to_string();
        let killed = std::process::Command::new("kill")
            .args([signal, &pid])
            .status();
        assert!(killed.unwrap().success());
        let out = push.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains(&format!("{said}: the receiver keeps what it got")),
            "{err}"
        );
        // The reason reached the receiver, which let go of the blob.
        listener.wait_log(said);
        assert!(no_tag(&receiver.root()));
        receiver.assert_consistent();
    }

    let (out, done) = push_again(&sender, &listener.addr);
    let raw = done["bytes_raw"].as_u64().unwrap();
    assert!(
        raw < big_len - held + 4096,
        "sent {raw} of {big_len}: {out}"
    );
    assert_eq!(image_in(&receiver, "docker.io/library/big:1").0, id);
    receiver.assert_consistent();
}
