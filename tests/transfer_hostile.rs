//! A hostile sender against a real `rimg listen`: each misbehaviour ends
//! that transfer with an error that says what was wrong, on both ends, and
//! leaves the receiver's store as it was. And a hostile receiver against a
//! real `push-peer`, which must neither trust nor print raw what it says.
//!
//! The hostile peers are written here with the library's own wire code, so
//! that they can send what `push-peer` and `listen` never would.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Env;
use common::peers::{Listener, trust};
use common::seed::seed_generated;
use rimg::digest::Digest;
use rimg::image::{Descriptor, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, Manifest};
use rimg::transfer::identity::Identity;
use rimg::transfer::wire::{
    BlobHeader, ChunkKind, DeferredImage, Message, OfferedImage, VERSION, encode_chunk,
};
use rimg::transfer::{read_message, tls, write_message};

struct Hostile {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    endpoint: quinn::Endpoint,
}

/// A connection as `sender`, with no stream open yet.
async fn dial(sender: &Env, addr: &str) -> (quinn::Endpoint, quinn::Connection) {
    let identity = Identity::load_or_create(&sender.config()).unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    let endpoint = tls::client(&identity, addr).unwrap();
    let conn = endpoint.connect(addr, "rimg").unwrap().await.unwrap();
    (endpoint, conn)
}

async fn connect(sender: &Env, addr: &str) -> Hostile {
    let (endpoint, conn) = dial(sender, addr).await;
    let (send, recv) = conn.open_bi().await.unwrap();
    Hostile {
        conn,
        send,
        recv,
        endpoint,
    }
}

impl Hostile {
    async fn say(&mut self, msg: &Message) {
        write_message(&mut self.send, msg, "listener")
            .await
            .unwrap();
    }

    async fn hear(&mut self) -> Message {
        read_message(&mut self.recv, Duration::from_secs(20), "listener")
            .await
            .unwrap()
            .unwrap()
    }

    /// Hello, and the listener's welcome.
    async fn greet(&mut self) {
        self.say(&Message::Hello {
            version: VERSION,
            token: None,
        })
        .await;
        assert_eq!(self.hear().await, Message::Welcome { version: VERSION });
    }

    /// Offer one image, `evil:1`, with this manifest text.
    async fn offer_manifest(&mut self, manifest: String) {
        self.say(&Message::Offer {
            images: vec![OfferedImage {
                names: vec!["evil:1".into()],
                manifest: Some(manifest),
                deferred: None,
            }],
        })
        .await;
    }

    /// Hello, then an offer of one image with `layer` (digest, size).
    async fn offer(&mut self, layer: &Digest, size: u64) {
        self.greet().await;
        let manifest = Manifest::new(
            Descriptor::new(MEDIA_OCI_CONFIG, Digest::of(b"{}"), 2),
            vec![Descriptor::new(MEDIA_OCI_LAYER, layer.clone(), size)],
        );
        self.offer_manifest(String::from_utf8(manifest.to_bytes()).unwrap())
            .await;
    }

    /// Hello, then an offer of one deferred image (as from an engine).
    async fn offer_deferred(&mut self, id: &Digest, diff_ids: &[Digest]) {
        self.greet().await;
        self.say(&Message::Offer {
            images: vec![OfferedImage {
                names: vec!["evil:2".into()],
                manifest: None,
                deferred: Some(DeferredImage {
                    id: id.clone(),
                    diff_ids: diff_ids.to_vec(),
                    size_hint: 100,
                }),
            }],
        })
        .await;
    }

    /// Export progress every 300 ms, growing by `step` each time, until
    /// the listener closes the connection (at most 20 s).
    async fn progress_until_closed(&mut self, step: u64) {
        let mut bytes = 10;
        let feed = async {
            loop {
                let msg = Message::Progress {
                    stage: "export".into(),
                    bytes,
                };
                if write_message(&mut self.send, &msg, "listener")
                    .await
                    .is_err()
                {
                    break;
                }
                bytes += step;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(20), feed).await;
    }

    /// The reason the listener closed the connection with.
    async fn closed_reason(&self) -> String {
        match tokio::time::timeout(Duration::from_secs(30), self.conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
                String::from_utf8_lossy(&c.reason).into_owned()
            }
            other => panic!("expected an application close, got {other:?}"),
        }
    }
}

async fn send_blob(
    conn: &quinn::Connection,
    digest: &Digest,
    chunks: &[Vec<u8>],
    finish: bool,
) -> quinn::SendStream {
    let header = BlobHeader {
        digest: digest.clone(),
        offset: 0,
        size: None,
        long_window: false,
    };
    send_with_header(conn, header, chunks, finish).await
}

async fn send_with_header(
    conn: &quinn::Connection,
    header: BlobHeader,
    chunks: &[Vec<u8>],
    finish: bool,
) -> quinn::SendStream {
    let mut stream = conn.open_uni().await.unwrap();
    // The receiver may stop the stream or close the connection as soon as
    // it has seen enough to refuse; what it says then is the test, so a
    // refused write ends the sending here.
    let mut refused = stream.write_all(&header.encode()).await.is_err();
    for chunk in chunks {
        if refused {
            break;
        }
        refused = stream
            .write_all(&encode_chunk(ChunkKind::Raw, chunk))
            .await
            .is_err();
    }
    if finish && !refused {
        let _ = stream.finish();
    }
    stream
}

fn setup(extra: &[&str]) -> (Env, Env, Listener) {
    let (sender, receiver) = (Env::new(), Env::new());
    trust(&receiver, &sender);
    let listener = Listener::start(&receiver, extra);
    (sender, receiver, listener)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn partial_files(env: &Env) -> Vec<u64> {
    std::fs::read_dir(env.root().join(".rimg/partial"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect()
}

#[test]
fn a_blob_whose_bytes_do_not_match_its_digest_is_refused() {
    let (sender, receiver, listener) = setup(&[]);
    let before = receiver.snapshot();
    let claimed = Digest::of(b"the real layer");
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.offer(&claimed, 14).await;
        assert!(matches!(h.hear().await, Message::Want { .. }));
        let _s = send_blob(&h.conn, &claimed, &[b"a forged layer".to_vec()], true).await;
        let reason = h.closed_reason().await;
        assert!(reason.contains("digest mismatch"), "{reason}");
        assert!(
            reason.contains(&claimed.to_string()),
            "the error names the digest: {reason}"
        );
    });
    listener.wait_log("digest mismatch");
    assert_eq!(receiver.snapshot(), before);
    assert!(
        partial_files(&receiver).is_empty(),
        "wrong bytes are not kept"
    );
    receiver.assert_consistent();
}

/// The long zstd window (128 MiB to decode) goes to one connection at a
/// time, and only to one that wants a blob of at least 256 MiB: a second
/// connection is not granted it while the first holds it, a stream taking
/// it where it was not granted is refused, and it is free again once the
/// holder is gone.
#[test]
fn a_long_window_is_granted_once_and_taken_only_where_granted() {
    let (sender, receiver, listener) = setup(&[]);
    let before = receiver.snapshot();
    let small = Digest::of(b"a layer");
    let big = Digest::of(b"a layer of 300 MiB");
    let granted = |m: Message| match m {
        Message::Want { long_window, .. } => long_window,
        other => panic!("no want: {other:?}"),
    };
    rt().block_on(async {
        let mut tiny = connect(&sender, &listener.addr).await;
        tiny.offer(&small, 7).await;
        assert!(!granted(tiny.hear().await), "not for a 7-byte layer");
        tiny.conn.close(0u32.into(), b"done");

        let mut first = connect(&sender, &listener.addr).await;
        first.offer(&big, 300 << 20).await;
        assert!(granted(first.hear().await), "the first big offer gets it");

        let mut second = connect(&sender, &listener.addr).await;
        second.offer(&big, 300 << 20).await;
        assert!(!granted(second.hear().await), "one connection at a time");
        let header = BlobHeader {
            digest: big.clone(),
            offset: 0,
            size: None,
            long_window: true,
        };
        let _s = send_with_header(&second.conn, header, &[b"a layer".to_vec()], true).await;
        let reason = second.closed_reason().await;
        assert!(reason.contains("long zstd window"), "{reason}");
        assert!(reason.contains(&big.to_string()), "{reason}");

        first.conn.close(0u32.into(), b"gone");
        // The listener notices the close within moments.
        let mut free = false;
        for _ in 0..50 {
            let mut again = connect(&sender, &listener.addr).await;
            again.offer(&big, 300 << 20).await;
            free = granted(again.hear().await);
            again.conn.close(0u32.into(), b"done");
            if free {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(free, "the window is granted again once its holder is gone");
    });
    listener.wait_log("long zstd window");
    assert_eq!(receiver.snapshot(), before);
    receiver.assert_consistent();
}

#[test]
fn a_blob_larger_than_offered_is_refused() {
    let (sender, receiver, listener) = setup(&[]);
    let before = receiver.snapshot();
    let claimed = Digest::of(b"0123456789");
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.offer(&claimed, 10).await;
        assert!(matches!(h.hear().await, Message::Want { .. }));
        let _s = send_blob(
            &h.conn,
            &claimed,
            &[b"01234".to_vec(), b"56789 and more".to_vec()],
            true,
        )
        .await;
        let reason = h.closed_reason().await;
        assert!(
            reason.contains("larger than the 10 bytes offered"),
            "{reason}"
        );
    });
    assert_eq!(receiver.snapshot(), before);
    assert!(partial_files(&receiver).is_empty());
}

#[test]
fn a_stalled_stream_is_dropped_and_its_bytes_kept_for_a_resume() {
    let (sender, receiver, listener) = setup(&["--stall-timeout", "2"]);
    let before = receiver.snapshot();
    let claimed = Digest::of(&[5u8; 2000]);
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.offer(&claimed, 2000).await;
        assert!(matches!(h.hear().await, Message::Want { .. }));
        let _s = send_blob(&h.conn, &claimed, &[vec![5u8; 700]], false).await;
        let reason = h.closed_reason().await;
        assert!(reason.contains("nothing received for 2 s"), "{reason}");
    });
    assert_eq!(receiver.snapshot(), before);
    assert_eq!(partial_files(&receiver), vec![700]);
}

/// Export progress that does not grow keeps nothing alive: a sender that
/// repeats it, and sends no blob, is dropped at the stall timeout, and
/// one whose export runs past its size hint is refused.
#[test]
fn repeated_export_progress_does_not_hold_a_slot() {
    let (sender, receiver, listener) = setup(&["--stall-timeout", "2"]);
    let before = receiver.snapshot();
    let (id, diff) = (Digest::of(b"{}"), Digest::of(b"layer"));
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.offer_deferred(&id, std::slice::from_ref(&diff)).await;
        assert!(matches!(h.hear().await, Message::Want { .. }));
        let started = std::time::Instant::now();
        h.progress_until_closed(0).await;
        let reason = h.closed_reason().await;
        assert!(reason.contains("nothing received for 2 s"), "{reason}");
        assert!(started.elapsed() < Duration::from_secs(10));

        // Progress far beyond the size offered (100 bytes).
        let mut h = connect(&sender, &listener.addr).await;
        h.offer_deferred(&id, std::slice::from_ref(&diff)).await;
        assert!(matches!(h.hear().await, Message::Want { .. }));
        h.say(&Message::Progress {
            stage: "export".into(),
            bytes: 1 << 40,
        })
        .await;
        let reason = h.closed_reason().await;
        assert!(reason.contains("past twice the size offered"), "{reason}");

        // Growing progress for an offer with nothing to export.
        let claimed = Digest::of(b"never sent");
        let mut h = connect(&sender, &listener.addr).await;
        h.offer(&claimed, 10).await;
        assert!(matches!(h.hear().await, Message::Want { .. }));
        h.progress_until_closed(8 << 20).await;
        let reason = h.closed_reason().await;
        assert!(reason.contains("nothing received for 2 s"), "{reason}");
    });
    assert_eq!(receiver.snapshot(), before);
    receiver.assert_consistent();
}

#[test]
fn offers_beyond_the_limits_are_refused_before_any_byte() {
    let (sender, receiver, listener) = setup(&["--max-blob-size", "1000000"]);
    let before = receiver.snapshot();
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.offer(&Digest::of(b"x"), 1_000_001).await;
        let reason = h.closed_reason().await;
        assert!(reason.contains("accepts at most 1000000"), "{reason}");
    });
    drop(listener);

    // More than the disk holds.
    let listener = Listener::start(&receiver, &["--max-blob-size", "1152921504606846976"]);
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.offer(&Digest::of(b"x"), 1 << 50).await;
        let reason = h.closed_reason().await;
        assert!(reason.contains("not enough free disk space"), "{reason}");
    });

    // A frame longer than any message may be.
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.send.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
        let reason = h.closed_reason().await;
        assert!(reason.contains("exceeds the limit"), "{reason}");
    });

    // A blob nobody asked for.
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.offer(&Digest::of(b"y"), 1).await;
        assert!(matches!(h.hear().await, Message::Want { .. }));
        let other = Digest::of(b"z");
        let _s = send_blob(&h.conn, &other, &[b"z".to_vec()], true).await;
        let reason = h.closed_reason().await;
        assert!(
            reason.contains(&format!("blob {other} was not asked for")),
            "{reason}"
        );
    });
    assert_eq!(receiver.snapshot(), before);
    receiver.assert_consistent();
}

#[test]
fn transfers_beyond_max_transfers_are_refused_as_busy() {
    let (sender, _receiver, listener) = setup(&["--max-transfers", "1"]);
    rt().block_on(async {
        let mut first = connect(&sender, &listener.addr).await;
        first
            .say(&Message::Hello {
                version: VERSION,
                token: None,
            })
            .await;
        assert!(matches!(first.hear().await, Message::Welcome { .. }));
        let (_endpoint, second) = dial(&sender, &listener.addr).await;
        let reason = match second.closed().await {
            quinn::ConnectionError::ApplicationClosed(c) => {
                String::from_utf8_lossy(&c.reason).into_owned()
            }
            other => panic!("expected an application close, got {other:?}"),
        };
        assert!(reason.contains("busy"), "{reason}");
    });
    listener.wait_log("transfers already in progress");
}

/// A blob stream for a blob wanted without a size: the header says it.
async fn send_sized_blob(conn: &quinn::Connection, digest: &Digest, bytes: &[u8], size: u64) {
    let mut stream = conn.open_uni().await.unwrap();
    let header = BlobHeader {
        digest: digest.clone(),
        offset: 0,
        size: Some(size),
        long_window: false,
    };
    // As in send_blob: a receiver that refuses may stop the stream at once.
    if stream.write_all(&header.encode()).await.is_ok()
        && stream
            .write_all(&encode_chunk(ChunkKind::Raw, bytes))
            .await
            .is_ok()
    {
        let _ = stream.finish();
    }
}

fn manifest_text(config: (&Digest, u64), layers: &[(&Digest, u64)]) -> String {
    let manifest = Manifest::new(
        Descriptor::new(MEDIA_OCI_CONFIG, config.0.clone(), config.1),
        layers
            .iter()
            .map(|(d, size)| Descriptor::new(MEDIA_OCI_LAYER, (*d).clone(), *size))
            .collect(),
    );
    String::from_utf8(manifest.to_bytes()).unwrap()
}

/// A deferred offer whose manifest names other layers than the DiffIDs
/// offered is refused when it arrives, and nothing is stored or tagged.
#[test]
fn a_deferred_manifest_that_disagrees_with_the_offer_is_refused() {
    let (sender, receiver, listener) = setup(&[]);
    let before = receiver.snapshot();
    let (config, layer, other) = (b"{}".to_vec(), b"layer".to_vec(), b"other".to_vec());
    let (id, diff, forged) = (Digest::of(&config), Digest::of(&layer), Digest::of(&other));
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.offer_deferred(&id, std::slice::from_ref(&diff)).await;
        let Message::Want {
            blobs, deferred, ..
        } = h.hear().await
        else {
            panic!("expected a want");
        };
        assert!(blobs.is_empty());
        assert_eq!(deferred.len(), 2, "config and layer, sizes unknown");
        h.say(&Message::Manifests {
            manifests: vec![manifest_text((&id, 2), &[(&forged, 5)])],
        })
        .await;
        let reason = h.closed_reason().await;
        assert!(
            reason.contains("does not match what was offered")
                && reason.contains("not the offered DiffIDs"),
            "{reason}"
        );
    });
    listener.wait_log("transfer failed");
    assert_eq!(receiver.snapshot(), before);
    receiver.assert_consistent();

    // Sizes that disagree with the blobs as they arrived: the blobs are
    // verified and kept (garbage for prune), but nothing is tagged.
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.offer_deferred(&id, std::slice::from_ref(&diff)).await;
        assert!(matches!(h.hear().await, Message::Want { .. }));
        send_sized_blob(&h.conn, &id, &config, 2).await;
        send_sized_blob(&h.conn, &diff, &layer, 5).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.say(&Message::Manifests {
            manifests: vec![manifest_text((&id, 2), &[(&diff, 6)])],
        })
        .await;
        let reason = h.closed_reason().await;
        assert!(
            reason.contains("does not match what was offered") || reason.contains("with sizes"),
            "{reason}"
        );
    });
    assert_eq!(receiver.snapshot().index, before.index, "nothing tagged");
    receiver.assert_consistent();
}

/// A blob of a deferred image is bounded by --max-blob-size as soon as its
/// stream announces its size, before a byte is written.
#[test]
fn a_deferred_blob_over_the_size_limit_is_refused() {
    let (sender, receiver, listener) = setup(&["--max-blob-size", "1000"]);
    let before = receiver.snapshot();
    let layer = vec![7u8; 2000];
    let (id, diff) = (Digest::of(b"{}"), Digest::of(&layer));
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.offer_deferred(&id, std::slice::from_ref(&diff)).await;
        assert!(matches!(h.hear().await, Message::Want { .. }));
        send_sized_blob(&h.conn, &diff, &layer[..1000], 2000).await;
        let reason = h.closed_reason().await;
        assert!(reason.contains("accepts at most 1000"), "{reason}");
    });
    assert_eq!(receiver.snapshot(), before);
    assert!(
        std::fs::read_dir(receiver.root().join(".rimg/partial"))
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "no partial file"
    );
    receiver.assert_consistent();
}

/// An image whose manifest names a layer as its config would be tagged,
/// and then every command that lists the store would fail on it: the
/// commit refuses it, naming the config.
#[test]
fn a_config_that_is_not_an_image_config_is_not_tagged() {
    let (sender, receiver, listener) = setup(&[]);
    seed_generated(&receiver.root(), "kept:1", &[b"kept layer".to_vec()]);
    let before = receiver.snapshot();
    let layer = b"a layer, not a config".to_vec();
    let digest = Digest::of(&layer);
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.greet().await;
        let size = layer.len() as u64;
        let manifest = manifest_text((&digest, size), &[(&digest, size)]);
        h.offer_manifest(manifest).await;
        assert!(matches!(h.hear().await, Message::Want { .. }));
        let _s = send_blob(&h.conn, &digest, std::slice::from_ref(&layer), true).await;
        let reason = h.closed_reason().await;
        assert!(
            reason.contains(&format!("config {digest} is not valid")),
            "{reason}"
        );
    });
    assert_eq!(receiver.snapshot().index, before.index, "nothing tagged");
    assert!(receiver.ok(&["images"]).contains("kept"));
    receiver.assert_consistent();
}

/// A deferred offer whose DiffIDs are not the ones its config lists: each
/// blob matches its digest, and the manifest matches the offer, but the
/// image would be one no engine loads (this store's layers are their
/// DiffIDs). It is not tagged, and the error names the config.
#[test]
fn a_deferred_image_whose_config_lists_other_diff_ids_is_not_tagged() {
    let (sender, receiver, listener) = setup(&[]);
    seed_generated(&receiver.root(), "kept:1", &[b"kept layer".to_vec()]);
    let before = receiver.snapshot();
    let (layer, claimed) = (b"the layer sent".to_vec(), b"the layer claimed".to_vec());
    let diff = Digest::of(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&claimed).to_string()]},
    }))
    .unwrap();
    let id = Digest::of(&config);
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.offer_deferred(&id, std::slice::from_ref(&diff)).await;
        assert!(matches!(h.hear().await, Message::Want { .. }));
        send_sized_blob(&h.conn, &id, &config, config.len() as u64).await;
        send_sized_blob(&h.conn, &diff, &layer, layer.len() as u64).await;
        h.say(&Message::Manifests {
            manifests: vec![manifest_text(
                (&id, config.len() as u64),
                &[(&diff, layer.len() as u64)],
            )],
        })
        .await;
        let reason = h.closed_reason().await;
        assert!(
            reason.contains(&format!("config {id} is not valid"))
                && reason.contains("not the manifest's 1 layer(s)"),
            "{reason}"
        );
    });
    listener.wait_log("transfer failed");
    assert_eq!(receiver.snapshot().index, before.index, "nothing tagged");
    assert!(!receiver.ok(&["images"]).contains("evil"));
    receiver.assert_consistent();
}

/// The corpus's bb:1 in the local engine as `name` (without the archive's
/// own tag), removed again when dropped.
struct EngineBusybox(String);

impl EngineBusybox {
    fn load(name: &str) -> EngineBusybox {
        let docker = |args: &[&str]| {
            std::process::Command::new("docker")
                .args(args)
                .output()
                .expect("docker runs")
        };
        let path = common::corpus("d20-busybox.tar");
        assert!(
            docker(&["load", "-q", "-i", path.to_str().unwrap()])
                .status
                .success()
        );
        assert!(docker(&["tag", BB_ID, name]).status.success());
        let _ = docker(&["rmi", "bb:1"]);
        EngineBusybox(name.to_string())
    }
}

impl Drop for EngineBusybox {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", &self.0])
            .output();
    }
}

const BB_ID: &str = "sha256:f36dafd20b57aa6dacb2ef53dac24fdd237eedd1cf22f3cf94b48611cf34a5ce";
const BB_LAYER: &str = "sha256:f03a735d7d1d0ca5da199ad97350a5bdfeb3a1014200b55f08fba92c5ec24c68";
const BB_LAYER_SIZE: u64 = 1_996_800;

/// A sender that drops its connection leaves its bytes in `partial/` for a
/// resume. A hostile one can leave more bytes under a layer's digest than
/// the layer has; a push from an engine (which learns the layer's size only
/// from its export) then met an offset past the layer's end and failed, and
/// so did every retry. The partial file is shown wrong then: the layer is
/// sent again from its start.
#[test]
fn a_partial_longer_than_its_blob_does_not_block_a_push_from_the_engine() {
    if !common::need_docker() {
        return;
    }
    let (sender, receiver, listener) = setup(&[]);
    let layer: Digest = BB_LAYER.parse().unwrap();
    let junk = vec![0x5au8; 1 << 20];
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.offer_deferred(&Digest::of(b"{}"), std::slice::from_ref(&layer))
            .await;
        assert!(matches!(h.hear().await, Message::Want { .. }));
        let mut stream = h.conn.open_uni().await.unwrap();
        let header = BlobHeader {
            digest: layer.clone(),
            offset: 0,
            size: Some(3 * BB_LAYER_SIZE),
            long_window: false,
        };
        stream.write_all(&header.encode()).await.unwrap();
        for _ in 0..3 {
            let frame = encode_chunk(ChunkKind::Raw, &junk);
            stream.write_all(&frame).await.unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while partial_files(&receiver).iter().sum::<u64>() < 3 << 20 {
            assert!(std::time::Instant::now() < deadline, "no partial file");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h.conn.close(0u32.into(), b"gone");
        // Until the close has gone out: a runtime dropped first takes the
        // packet with it, and the listener learns of the end only at its
        // idle timeout.
        h.endpoint.wait_idle().await;
    });
    listener.wait_log("transfer failed");
    assert!(partial_files(&receiver).iter().sum::<u64>() > BB_LAYER_SIZE);

    let image = EngineBusybox::load("rimg-hostile3-partial:1");
    let source = format!("docker-daemon:{}", image.0);
    let out = sender.ok(&["push-peer", "--accept-new", &source, &listener.addr]);
    assert!(
        out.contains("Loaded image: rimg-hostile3-partial:1 on"),
        "{out}"
    );
    let ids = receiver.ok(&["images", "-q", "--no-trunc"]);
    assert_eq!(ids.trim(), BB_ID);
    assert!(partial_files(&receiver).is_empty());
    receiver.assert_consistent();
}

/// The manifest's media type becomes the store index's descriptor: an
/// index or anything else there would break OCI tools reading the store.
#[test]
fn a_manifest_with_another_media_type_is_refused() {
    let (sender, receiver, listener) = setup(&[]);
    let before = receiver.snapshot();
    rt().block_on(async {
        let mut h = connect(&sender, &listener.addr).await;
        h.greet().await;
        let layer = Digest::of(b"l");
        let manifest = manifest_text((&Digest::of(b"{}"), 2), &[(&layer, 1)]).replace(
            rimg::image::MEDIA_OCI_MANIFEST,
            rimg::image::MEDIA_OCI_INDEX,
        );
        h.offer_manifest(manifest).await;
        let reason = h.closed_reason().await;
        assert!(
            reason.contains("image 0 in the offer") && reason.contains("is not an image manifest"),
            "{reason}"
        );
    });
    assert_eq!(receiver.snapshot(), before);
}

/// A receiver that `push-peer` dials: a QUIC server with the identity of
/// `env`, on a free loopback port.
fn hostile_receiver(env: &Env) -> (quinn::Endpoint, String) {
    let identity = Identity::load_or_create(&env.config()).unwrap();
    let endpoint = tls::server(&identity, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap().to_string();
    (endpoint, addr)
}

/// Accepts push-peer's connection and reads its hello and offer.
async fn accept_push(
    endpoint: &quinn::Endpoint,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let conn = endpoint.accept().await.unwrap().await.unwrap();
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let hear = async |recv: &mut quinn::RecvStream| {
        read_message(recv, Duration::from_secs(20), "sender")
            .await
            .unwrap()
            .unwrap()
    };
    assert!(matches!(hear(&mut recv).await, Message::Hello { .. }));
    let welcome = Message::Welcome { version: VERSION };
    write_message(&mut send, &welcome, "sender").await.unwrap();
    assert!(matches!(hear(&mut recv).await, Message::Offer { .. }));
    (conn, send, recv)
}

/// A push to a hostile receiver, run in the background.
fn spawn_push(sender: &Env, addr: &str) -> std::process::Child {
    sender
        .cmd(&["--no-progress", "push-peer", "--accept-new", "x:1", addr])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// What a receiver says is printed on the sender's terminal: its escape
/// sequences must arrive there escaped, never as commands to the terminal.
#[test]
fn a_receivers_escape_sequences_are_not_printed_raw() {
    let (sender, receiver) = (Env::new(), Env::new());
    let id = seed_generated(&sender.root(), "x:1", &[b"layer".to_vec()]);
    let id: Digest = id.parse().unwrap();
    let rt = rt();
    let (endpoint, addr) = rt.block_on(async { hostile_receiver(&receiver) });

    let push = spawn_push(&sender, &addr);
    rt.block_on(async {
        let (conn, mut send, _recv) = accept_push(&endpoint).await;
        let say = [
            Message::Want {
                blobs: vec![],
                deferred: vec![],
                long_window: false,
            },
            Message::Loaded {
                id: id.clone(),
                names: vec!["x:1\x1b]0;owned\x07".into()],
            },
            Message::Engine {
                lines: vec![
                    "Loaded image: x:1\x1b[2J".into(),
                    "\x1b[31mred\u{202e}txt".into(),
                ],
                error: Some("\x1b[1Aup".into()),
            },
            Message::Done { images: 1 },
        ];
        for msg in &say {
            write_message(&mut send, msg, "sender").await.unwrap();
        }
        conn.closed().await;
    });
    let out = push.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains('\x1b') && !text.contains('\u{202e}'),
            "{text:?}"
        );
    }
    assert!(stdout.contains("x:1\\u{1b}[2J"), "{stdout:?}");
    assert!(
        !out.status.success() && stderr.contains("did not load them: \\u{1b}[1Aup"),
        "the engine's error fails the push: {stderr:?}"
    );

    // A close reason is the receiver's text too.
    let push = spawn_push(&sender, &addr);
    rt.block_on(async {
        let (conn, _send, _recv) = accept_push(&endpoint).await;
        conn.close(1u32.into(), b"\x1b[2Jrefused");
        let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
    });
    let out = push.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("\\u{1b}[2Jrefused") && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
}
