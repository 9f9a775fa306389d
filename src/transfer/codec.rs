//! The chunks of one blob stream: what the sender makes of each chunk it
//! reads, and how the receiver turns them back into the blob's bytes.
//!
//! A chunk goes raw, as a probe compressed on its own (kind 1, to learn
//! what zstd would gain), or, from version 3, as the next piece of a zstd
//! stream that runs across the blob (kind 2): each piece is flushed so that
//! it decodes completely, and later pieces may refer back to earlier ones,
//! which compresses a layer about a tenth better than chunks compressed on
//! their own. The window is bounded ([`STREAM_WINDOW_LOG`]) so that each
//! end holds a known amount per stream.

use std::io;
use std::time::Instant;

use bytes::Bytes;
use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective;
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};

use super::auto::{Choice, Chooser, LONG_WINDOW_LEVEL};
use super::wire::{CHUNK, ChunkKind, WireError, decode_chunk_pieces, encode_chunk};

/// The largest zstd window of a chunk stream: 4 MiB. A receiver refuses a
/// stream that needs more.
pub const STREAM_WINDOW_LOG: u32 = 22;

/// The window of the one stream per connection a receiver may grant a
/// long window (version 4): 128 MiB, with zstd's long-distance matching.
/// Layers repeat themselves at distances far beyond 4 MiB (the same
/// library in two places, a file and its backup): on a 1 GB tar of
/// /usr, `zstd -9` gave 348.8 MB with a 4 MiB window and 308.1 MB with
/// `--long=27`, at the same speed. It costs ~130 MiB more on each end, so
/// it is used only where the link is slow enough for the high levels.
pub const LONG_WINDOW_LOG: u32 = 27;

/// A receiver grants the long window only to a connection that wants a
/// blob with this much left to send, and a sender gives it only to such a
/// blob: below it the window would hold most of the blob, and the gain is
/// in what repeats further apart.
pub const LONG_WINDOW_MIN: u64 = 256 << 20;

/// [`LEVEL_HOLD`] for a stream with the long window in use: a new frame
/// loses up to 128 MiB of history, so it takes longer to give up.
const LONG_LEVEL_HOLD: u32 = 32;

/// A stream's level changes (with a new frame, which starts without
/// history) only after this many chunks in a row were wanted at another
/// level, so that a wavering estimate does not keep throwing the history
/// away.
const LEVEL_HOLD: u32 = 8;

/// Kind (1) and raw length (4) before a stream piece's bytes.
const STREAM_HEAD: usize = 5;

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
}

/// A zstd error in what the peer sent.
fn wire_error(code: usize) -> WireError {
    WireError::Zstd(zstd::zstd_safe::get_error_name(code).into())
}

/// The zstd frame running across a blob stream, sender side.
struct Stream {
    cctx: CCtx<'static>,
    level: i32,
    /// The stream may use [`LONG_WINDOW_LOG`].
    long: bool,
    /// Chunks in a row wanted at another level.
    disagree: u32,
}

impl Stream {
    fn configure(cctx: &mut CCtx<'static>, level: i32, long: bool) -> io::Result<()> {
        cctx.set_parameter(CParameter::CompressionLevel(level))
            .map_err(zstd_error)?;
        if long && level >= LONG_WINDOW_LEVEL {
            cctx.set_parameter(CParameter::WindowLog(LONG_WINDOW_LOG))
                .map_err(zstd_error)?;
            cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
                .map_err(zstd_error)?;
        } else {
            cctx.set_parameter(CParameter::WindowLog(STREAM_WINDOW_LOG))
                .map_err(zstd_error)?;
        }
        if level >= 9 {
            // Level 9's own tables take 12 MiB; these take 8 and lose
            // under 1% of the ratio.
            cctx.set_parameter(CParameter::HashLog(20))
                .map_err(zstd_error)?;
            cctx.set_parameter(CParameter::ChainLog(20))
                .map_err(zstd_error)?;
        }
        Ok(())
    }

    fn new(level: i32, long: bool) -> io::Result<Stream> {
        let mut cctx = CCtx::try_create()
            .ok_or_else(|| io::Error::other("zstd: cannot allocate a compression context"))?;
        Self::configure(&mut cctx, level, long)?;
        Ok(Stream {
            cctx,
            level,
            long,
            disagree: 0,
        })
    }

    /// Ends the current frame into `out` and starts the next at `level`.
    fn restart(&mut self, level: i32, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            out.reserve(64);
            let pos = out.len();
            let left = self
                .cctx
                .end_stream(&mut OutBuffer::around_pos(out, pos))
                .map_err(zstd_error)?;
            if left == 0 {
                break;
            }
        }
        self.cctx
            .reset(ResetDirective::SessionAndParameters)
            .map_err(zstd_error)?;
        Self::configure(&mut self.cctx, level, self.long)?;
        self.level = level;
        self.disagree = 0;
        Ok(())
    }

    /// Appends `data`, compressed and flushed, to `out`.
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let mut input = InBuffer::around(data);
        out.reserve(zstd::zstd_safe::compress_bound(data.len()) + 64);
        loop {
            out.reserve(1024);
            let pos = out.len();
            let left = self
                .cctx
                .compress_stream2(
                    &mut OutBuffer::around_pos(out, pos),
                    &mut input,
                    ZSTD_EndDirective::ZSTD_e_flush,
                )
                .map_err(zstd_error)?;
            if left == 0 && input.pos() == data.len() {
                break;
            }
        }
        Ok(())
    }
}

/// Makes the frames of one blob stream, as the transfer's chooser says.
pub struct ChunkEncoder<'c> {
    chooser: &'c Chooser,
    /// The receiver granted this stream the long window.
    long: bool,
    /// For probes.
    single: zstd::bulk::Compressor<'static>,
    stream: Option<Stream>,
    /// Chunks sent raw, as probes, as stream pieces; and the stream's
    /// levels, for the debug log.
    tally: [u32; 3],
    levels: Vec<i32>,
}

impl Drop for ChunkEncoder<'_> {
    fn drop(&mut self) {
        self.chooser.stream_ended();
        tracing::debug!(
            raw = self.tally[0],
            probes = self.tally[1],
            stream = self.tally[2],
            levels = ?self.levels,
            "chunks of one blob stream"
        );
    }
}

impl<'c> ChunkEncoder<'c> {
    /// `long` when the receiver granted this stream the long window.
    pub fn new(chooser: &'c Chooser, long: bool) -> io::Result<ChunkEncoder<'c>> {
        let single = zstd::bulk::Compressor::new(1)?;
        chooser.stream_started();
        Ok(ChunkEncoder {
            chooser,
            long,
            single,
            stream: None,
            tally: [0; 3],
            levels: Vec::new(),
        })
    }

    /// Takes a raw chunk frame (prefix, kind 0, the bytes) and returns the
    /// frame to send for it.
    pub fn encode(&mut self, raw: Vec<u8>) -> io::Result<Vec<u8>> {
        let data = &raw[5..];
        match self
            .chooser
            .choose(self.stream.as_ref().map(|s| s.level), self.long)
        {
            Choice::Raw => {
                self.tally[0] += 1;
                return Ok(raw);
            }
            Choice::Zstd(level) => {
                self.tally[2] += 1;
                return self.stream_piece(level, data);
            }
            Choice::Probe => self.tally[1] += 1,
        }
        let t = Instant::now();
        let packed = self.single.compress(data)?;
        self.chooser
            .record_zstd(1, false, data.len(), packed.len(), t.elapsed());
        Ok(if packed.len() < data.len() {
            encode_chunk(ChunkKind::Zstd, &packed)
        } else {
            raw
        })
    }

    fn stream_piece(&mut self, level: i32, data: &[u8]) -> io::Result<Vec<u8>> {
        let t = Instant::now();
        let mut out = Vec::with_capacity(4 + STREAM_HEAD + data.len() / 2);
        out.extend_from_slice(&[0; 4]);
        out.push(ChunkKind::ZstdStream as u8);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let stream = match &mut self.stream {
            Some(s) => {
                s.disagree = if s.level == level { 0 } else { s.disagree + 1 };
                let hold = match s.long && s.level >= LONG_WINDOW_LEVEL {
                    true => LONG_LEVEL_HOLD,
                    false => LEVEL_HOLD,
                };
                if s.disagree >= hold {
                    let (compress, ratio, link) = self.chooser.estimates();
                    tracing::debug!(
                        from = s.level,
                        to = level,
                        compress_mb_s = compress / 1e6,
                        ratio,
                        link_mb_s = link / 1e6,
                        "zstd level"
                    );
                    s.restart(level, &mut out)?;
                }
                s
            }
            None => self.stream.insert(Stream::new(level, self.long)?),
        };
        if self.levels.last() != Some(&stream.level) {
            self.levels.push(stream.level);
        }
        stream.push(data, &mut out)?;
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        self.chooser.record_zstd(
            stream.level,
            stream.long,
            data.len(),
            out.len() - 4 - STREAM_HEAD,
            t.elapsed(),
        );
        Ok(out)
    }
}

/// Turns the frames of one blob stream back into bytes, holding the zstd
/// stream that kind 2 chunks continue.
pub struct ChunkDecoder {
    /// The peer may send stream pieces (version 3).
    streaming: bool,
    /// The largest window the stream may use.
    window_log: u32,
    dctx: Option<DCtx<'static>>,
}

impl ChunkDecoder {
    /// `long` when this stream took the long window the receiver granted.
    pub fn new(streaming: bool, long: bool) -> ChunkDecoder {
        ChunkDecoder {
            streaming,
            window_log: if long {
                LONG_WINDOW_LOG
            } else {
                STREAM_WINDOW_LOG
            },
            dctx: None,
        }
    }

    /// Decodes one chunk frame body (after its length prefix), arrived in
    /// pieces, into at most `limit` bytes (at most [`CHUNK`]).
    pub fn decode(&mut self, pieces: Vec<Bytes>, limit: usize) -> Result<Vec<Bytes>, WireError> {
        let kind = pieces.iter().find(|p| !p.is_empty()).map(|p| p[0]);
        if kind != Some(ChunkKind::ZstdStream as u8) {
            return decode_chunk_pieces(pieces, limit);
        }
        if !self.streaming {
            return Err(WireError::UnknownChunkKind(ChunkKind::ZstdStream as u8));
        }
        let body: Vec<u8> = pieces.concat();
        let Some((head, packed)) = body.split_at_checked(STREAM_HEAD) else {
            return Err(WireError::Malformed(
                "a stream chunk without its length".into(),
            ));
        };
        let announced = u32::from_be_bytes(head[1..].try_into().expect("4 bytes")) as usize;
        let limit = limit.min(CHUNK);
        if announced > limit {
            return Err(WireError::ChunkTooLarge(limit));
        }
        let dctx = match &mut self.dctx {
            Some(d) => d,
            None => {
                let mut d = DCtx::try_create().ok_or_else(|| {
                    WireError::Zstd("cannot allocate a decompression context".into())
                })?;
                d.set_parameter(DParameter::WindowLogMax(self.window_log))
                    .map_err(wire_error)?;
                self.dctx.insert(d)
            }
        };
        // One byte of room beyond what it announces shows a piece that
        // decodes to more.
        let mut out = vec![0u8; announced + 1];
        let mut input = InBuffer::around(packed);
        let mut output = OutBuffer::around(&mut out[..]);
        let window_log = self.window_log;
        let window_error = |code: usize| match zstd::zstd_safe::get_error_name(code) {
            // zstd's name for ZSTD_error_frameParameter_windowTooLarge.
            "Frame requires too much memory for decoding" => WireError::Zstd(format!(
                "the stream needs a zstd window over the {} MiB this blob stream may use \
                 (4 MiB, or 128 MiB in the one stream that took a granted long window)",
                1u32 << (window_log - 20)
            )),
            _ => wire_error(code),
        };
        loop {
            let before = (input.pos(), output.pos());
            dctx.decompress_stream(&mut output, &mut input)
                .map_err(window_error)?;
            if output.pos() > announced {
                return Err(WireError::ChunkLength { announced });
            }
            if (input.pos(), output.pos()) == before {
                break;
            }
        }
        if input.pos() != packed.len() || output.pos() != announced {
            return Err(WireError::ChunkLength { announced });
        }
        out.truncate(announced);
        Ok(vec![out.into()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::auto::Compress;

    /// Text-like data that compresses, different in every chunk but
    /// repeating across chunks, as files in a layer do.
    fn sample(chunks: usize) -> Vec<Vec<u8>> {
        let line = |i: usize| format!("line {} of a file that repeats {}\n", i % 5000, i % 7);
        let text: String = (0..chunks * 40_000).map(line).collect();
        text.into_bytes()
            .chunks(CHUNK)
            .take(chunks)
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn frame(data: &[u8]) -> Vec<u8> {
        encode_chunk(ChunkKind::Raw, data)
    }

    fn decode_all(frames: &[Vec<u8>], streaming: bool) -> Result<Vec<u8>, WireError> {
        decode_with(frames, ChunkDecoder::new(streaming, false))
    }

    fn decode_with(frames: &[Vec<u8>], mut decoder: ChunkDecoder) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        for f in frames {
            let body = Bytes::copy_from_slice(&f[4..]);
            assert_eq!(
                u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
                body.len()
            );
            for piece in decoder.decode(vec![body], CHUNK)? {
                out.extend_from_slice(&piece);
            }
        }
        Ok(out)
    }

    /// A stream that took the long window finds what repeats 5 MiB back,
    /// beyond the 4 MiB window; a receiver that did not grant it refuses
    /// the frames, and one that did decodes them to the same bytes.
    #[test]
    fn the_long_window_reaches_past_4_mib_and_only_where_granted() {
        let noise = crate::testdata::noise(5 << 20, 0x2545_f491_4f6c_dd1d);
        let data = [noise.clone(), noise].concat();
        let chooser = Chooser::new(Compress::Zstd);
        let encode = |long: bool| -> Vec<Vec<u8>> {
            let mut encoder = ChunkEncoder::new(&chooser, long).unwrap();
            data.chunks(CHUNK)
                .map(|c| encoder.stream_piece(LONG_WINDOW_LEVEL, c).unwrap())
                .collect()
        };
        let size = |frames: &[Vec<u8>]| frames.iter().map(Vec::len).sum::<usize>();
        let (long, short) = (encode(true), encode(false));
        assert!(
            size(&long) < data.len() * 6 / 10 && size(&short) > data.len(),
            "long {} short {} of {}",
            size(&long),
            size(&short),
            data.len()
        );
        assert_eq!(
            decode_with(&short, ChunkDecoder::new(true, false)).unwrap(),
            data
        );
        assert_eq!(
            decode_with(&long, ChunkDecoder::new(true, true)).unwrap(),
            data
        );
        match decode_with(&long, ChunkDecoder::new(true, false)) {
            Err(WireError::Zstd(e)) => assert!(e.contains("window over the 4 MiB"), "{e}"),
            other => panic!("a 128 MiB window decoded with 4 MiB: {other:?}"),
        }
    }

    #[test]
    fn a_stream_round_trips_across_chunks_and_level_changes() {
        let chunks = sample(40);
        let chooser = Chooser::new(Compress::Zstd);
        let mut encoder = ChunkEncoder::new(&chooser, false).unwrap();
        let mut frames = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            // Force a level change (and so a new frame) half-way.
            if i == 20 {
                let s = encoder.stream.as_mut().unwrap();
                s.disagree = LEVEL_HOLD;
                s.level = 9;
            }
            frames.push(encoder.encode(frame(c)).unwrap());
        }
        assert!(frames.iter().all(|f| f[4] == ChunkKind::ZstdStream as u8));
        assert_eq!(decode_all(&frames, true).unwrap(), chunks.concat());
        // Later chunks refer back to earlier ones: far smaller than the
        // same chunks compressed alone.
        let streamed: usize = frames.iter().map(Vec::len).sum();
        let alone: usize = chunks
            .iter()
            .map(|c| zstd::bulk::compress(c, 3).unwrap().len())
            .sum();
        assert!(streamed < alone, "{streamed} vs {alone}");
    }

    /// The stream chunk in proto/PROTOCOL.md decodes as it says. (The
    /// bytes a compressor makes may differ between zstd versions; what
    /// they decode to may not.)
    #[test]
    fn the_protocol_documents_stream_chunk_decodes() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/PROTOCOL.md"))
                .unwrap();
        let line = doc
            .lines()
            .find_map(|l| l.trim().strip_prefix("stream-chunk: "))
            .expect("PROTOCOL.md has a stream-chunk vector");
        let f = hex::decode(line).unwrap();
        assert_eq!(decode_all(&[f], true).unwrap(), b"hihihihi");
    }

    /// Under `--compress auto` a blob's chunks mix raw ones, probes and
    /// stream pieces as the link changes; the stream goes on across the
    /// others.
    #[test]
    fn stream_pieces_continue_across_raw_chunks_and_probes() {
        let chunks = sample(48);
        let chooser = Chooser::new(Compress::Auto);
        let mut encoder = ChunkEncoder::new(&chooser, false).unwrap();
        let mut frames = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            // A slow link, then a fast one, then a slow one again.
            let secs = if (16..32).contains(&i) { 1e-4 } else { 1.0 };
            for _ in 0..50 {
                let t = std::time::Duration::from_secs_f64(secs);
                chooser.record_wire(CHUNK, t, t, false);
            }
            frames.push(encoder.encode(frame(c)).unwrap());
        }
        let kinds: Vec<u8> = frames.iter().map(|f| f[4]).collect();
        assert_eq!(kinds[0], ChunkKind::Zstd as u8, "the first chunk probes");
        assert!(
            kinds[1..16]
                .iter()
                .all(|k| *k == ChunkKind::ZstdStream as u8)
        );
        assert!(kinds[17..32].contains(&(ChunkKind::Raw as u8)));
        assert!(
            kinds[33..]
                .iter()
                .all(|k| *k == ChunkKind::ZstdStream as u8)
        );
        assert_eq!(decode_all(&frames, true).unwrap(), chunks.concat());
    }

    #[test]
    fn hostile_stream_pieces_are_errors() {
        let chunks = sample(2);
        let chooser = Chooser::new(Compress::Zstd);
        let mut encoder = ChunkEncoder::new(&chooser, false).unwrap();
        let good = encoder.encode(frame(&chunks[0])).unwrap();
        let second = encoder.encode(frame(&chunks[1])).unwrap();
        let with_length = |f: &[u8], n: u32| {
            let mut f = f.to_vec();
            f[5..9].copy_from_slice(&n.to_be_bytes());
            f
        };
        let n = chunks[0].len() as u32;
        // Not allowed before version 3.
        assert_eq!(
            decode_all(std::slice::from_ref(&good), false),
            Err(WireError::UnknownChunkKind(2))
        );
        // Announcing fewer or more bytes than it decodes to.
        assert!(matches!(
            decode_all(&[with_length(&good, n - 1)], true),
            Err(WireError::ChunkLength { .. })
        ));
        let short = ChunkEncoder::new(&chooser, false)
            .unwrap()
            .encode(frame(&chunks[0][..1000]))
            .unwrap();
        assert!(matches!(
            decode_all(&[with_length(&short, 1001)], true),
            Err(WireError::ChunkLength { .. })
        ));
        // More than the limit, before anything is decoded.
        assert!(matches!(
            decode_all(&[with_length(&good, CHUNK as u32 + 1)], true),
            Err(WireError::ChunkTooLarge(_))
        ));
        // Truncated, or cut before its length.
        assert!(decode_all(&[frame_body(&good[..good.len() - 10])], true).is_err());
        assert!(matches!(
            decode_all(&[frame_body(&good[..7])], true),
            Err(WireError::Malformed(_))
        ));
        // A later piece without the earlier one it refers to.
        assert!(decode_all(std::slice::from_ref(&second), true).is_err());
        // Garbage.
        let mut junk = good.clone();
        for b in &mut junk[9..] {
            *b ^= 0x5a;
        }
        assert!(decode_all(&[junk], true).is_err());
        // A window larger than the limit.
        let mut big = CCtx::create();
        big.set_parameter(CParameter::WindowLog(STREAM_WINDOW_LOG + 2))
            .unwrap();
        let data = vec![1u8; 1000];
        let mut packed = Vec::with_capacity(2000);
        let left = big
            .compress_stream2(
                &mut OutBuffer::around(&mut packed),
                &mut InBuffer::around(&data),
                ZSTD_EndDirective::ZSTD_e_flush,
            )
            .unwrap();
        assert_eq!(left, 0);
        let mut f = vec![0, 0, 0, 0, ChunkKind::ZstdStream as u8];
        f.extend_from_slice(&1000u32.to_be_bytes());
        f.extend_from_slice(&packed);
        assert!(matches!(
            decode_all(&[frame_body(&f)], true),
            Err(WireError::Zstd(_))
        ));
    }

    /// A frame whose length prefix fits its (cut) body.
    fn frame_body(cut: &[u8]) -> Vec<u8> {
        let mut f = cut.to_vec();
        let len = (f.len() - 4) as u32;
        f[..4].copy_from_slice(&len.to_be_bytes());
        f
    }
}
