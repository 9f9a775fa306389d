//! Fuzz the decoding of everything a peer sends: control messages, blob
//! headers, chunk frames (alone and as a blob stream's sequence, where
//! zstd stream pieces continue each other), and the receiver's decisions
//! on a decoded offer. None of it may panic or allocate beyond the frame
//! limits.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rimg::digest::Digest;
use rimg::transfer::codec::ChunkDecoder;
use rimg::transfer::session::{BlobLookup, Limits, ReceiverSession};
use rimg::transfer::wire::{
    BlobHeader, CHUNK, MAX_MESSAGE, Message, VERSION, decode_chunk, frame_len,
};

struct Empty;

impl BlobLookup for Empty {
    fn has(&self, _: &Digest) -> bool {
        false
    }
    fn partial(&self, _: &Digest, _: u64) -> u64 {
        0
    }
    fn size(&self, _: &Digest) -> Option<u64> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = frame_len(data[..4].try_into().unwrap(), MAX_MESSAGE);
    }
    let _ = BlobHeader::decode(data);
    if let Ok(out) = decode_chunk(data, CHUNK) {
        assert!(out.len() <= CHUNK);
    }
    // The input as a blob stream's chunk bodies, each prefixed by a
    // 2-byte length here: a decoder must stay within each chunk's limit.
    let mut decoder = ChunkDecoder::new(true, false);
    let mut rest = data;
    while rest.len() >= 2 {
        let len = (u16::from_be_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let body = Bytes::copy_from_slice(&rest[2..2 + len]);
        rest = &rest[2 + len..];
        match decoder.decode(vec![body], CHUNK) {
            Ok(pieces) => assert!(pieces.iter().map(|p| p.len()).sum::<usize>() <= CHUNK),
            Err(_) => break,
        }
    }
    if let Ok(msg) = Message::decode(data) {
        // Round trip: what we decode, we encode the same way.
        let again = Message::decode(&msg.encode()[4..]).expect("re-decodes");
        assert_eq!(again, msg);

        let mut session = ReceiverSession::new(None, Limits::default());
        let _ = session.on_hello(&Message::Hello {
            version: VERSION,
            token: None,
        });
        if let Ok(plan) = session.on_offer(&msg, &Empty) {
            for w in &plan.want {
                let _ = session.start_blob(&w.digest, w.offset, None);
                let _ = session.blob_stored(&w.digest);
            }
        }
    }
});
