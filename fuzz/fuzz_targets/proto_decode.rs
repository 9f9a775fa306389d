//! Fuzz the decoding of everything a peer sends: control messages, blob
//! headers, chunk frames, and the receiver's decisions on a decoded offer.
//! None of it may panic or allocate beyond the frame limits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rimg::digest::Digest;
use rimg::transfer::session::{BlobLookup, Limits, ReceiverSession};
use rimg::transfer::wire::{BlobHeader, CHUNK, MAX_MESSAGE, Message, decode_chunk, frame_len};

struct Empty;

impl BlobLookup for Empty {
    fn has(&self, _: &Digest) -> bool {
        false
    }
    fn partial(&self, _: &Digest, _: u64) -> u64 {
        0
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = frame_len(data[..4].try_into().unwrap(), MAX_MESSAGE);
    }
    let _ = BlobHeader::decode(data);
    if let Some(out) = decode_chunk(data, CHUNK).ok() {
        assert!(out.len() <= CHUNK);
    }
    if let Ok(msg) = Message::decode(data) {
        // Round trip: what we decode, we encode the same way.
        let again = Message::decode(&msg.encode()[4..]).expect("re-decodes");
        assert_eq!(again, msg);

        let mut session = ReceiverSession::new(None, Limits::default());
        let _ = session.on_hello(&Message::Hello { version: 1, token: None });
        if let Ok(plan) = session.on_offer(&msg, &Empty) {
            for w in &plan.want {
                let _ = session.start_blob(&w.digest, w.offset);
                let _ = session.blob_stored(&w.digest);
            }
        }
    }
});
