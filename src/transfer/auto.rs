//! `--compress auto`: whether zstd on the wire makes a blob arrive sooner.
//!
//! Each blob's chunks are read and compressed by a thread of their own
//! while the stream writes the previous ones, so compressing and sending
//! overlap: a compressed byte costs `max(1/C, r/L)` (C: the compressor's
//! speed, its share of the cores counted; r: the ratio; L: the link's rate
//! as this stream sees it) against `1/L` raw. zstd pays when the
//! compressor outruns the link, with a margin for the CPU the rest of the
//! transfer needs (the sender's own packets, a receiver on the same
//! machine): `C >= 1.5 L`, and `r < 0.95`. Both rates are measured
//! as the transfer runs, from the chunks themselves, so the choice follows
//! the data (already compressed layers stay raw) and the link. While chunks
//! go raw, every 16th is compressed at level 1 on its own anyway (a
//! probe), to keep the estimate of C and r current; while they are
//! compressed, the chunks themselves keep it current.
//!
//! When the link is much slower than the compressor, a higher zstd level
//! buys a better ratio for CPU that would otherwise wait on the link: the
//! level is the highest whose (typical) speed still has the compressor's
//! output outrun the link by a quarter.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What to send a chunk as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Raw,
    /// Compressed at level 1 on its own, to measure what zstd would gain.
    Probe,
    /// The next piece of the blob's zstd stream, at a level.
    Zstd(i32),
}

/// `--compress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compress {
    Auto,
    Zstd,
    None,
}

#[derive(Debug, Default)]
struct Stats {
    chunks: u64,
    raw_in: f64,
    zstd_out: f64,
    /// What compressing `raw_in` would have taken at level 1.
    zstd_secs: f64,
    wire_bytes: f64,
    wire_secs: f64,
}

/// Shared by every blob stream of one transfer.
#[derive(Debug)]
pub struct Chooser {
    mode: Compress,
    cores: usize,
    /// Blob streams encoding at the moment: they share the cores.
    active: AtomicUsize,
    stats: Mutex<Stats>,
}

/// Older samples fade so that a change of link or data is followed.
const DECAY: f64 = 0.97;

/// The levels used above 1, each with its speed as a fraction of level 1's
/// (streaming, measured on a tar of /usr: 320, 240, 90 and 68 MB/s).
const LEVELS: [(i32, f64); 3] = [(9, 1.0 / 4.7), (6, 1.0 / 3.5), (3, 1.0 / 1.3)];

impl Chooser {
    pub fn new(mode: Compress) -> Chooser {
        Self::with_cores(
            mode,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        )
    }

    /// For a transfer to `peer`, `limited` when `--bwlimit` paces it.
    ///
    /// A peer on a loopback address has no link to save bytes on: the
    /// "wire" is a copy in memory, cheaper per byte than zstd's fastest
    /// level, and the receiver that decompresses shares this machine's
    /// cores. There `auto` sends raw, unless a rate limit makes a link of
    /// it. (Measured on 2 cores, a warm push of a 66 MB layer: 0.24-0.37 s
    /// raw, 0.44 s with `auto` compressing it to 30 MB.)
    pub fn for_peer(mode: Compress, peer: std::net::SocketAddr, limited: bool) -> Chooser {
        let mode = match mode {
            Compress::Auto if peer.ip().is_loopback() && !limited => Compress::None,
            mode => mode,
        };
        Self::new(mode)
    }

    fn with_cores(mode: Compress, cores: usize) -> Chooser {
        Chooser {
            mode,
            cores,
            active: AtomicUsize::new(0),
            stats: Mutex::new(Stats::default()),
        }
    }

    /// A blob stream starts encoding (see [`Chooser::stream_ended`]).
    pub fn stream_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_ended(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// The share of a core each encoding stream has.
    fn parallel(&self) -> f64 {
        let active = self.active.load(Ordering::Relaxed).max(1);
        self.cores.min(active) as f64 / active as f64
    }

    /// What to do with the next chunk of a stream whose zstd frame runs at
    /// `current` (if any): raw, or zstd at a level.
    pub fn choose(&self, current: Option<i32>) -> Choice {
        match self.mode {
            Compress::None => Choice::Raw,
            Compress::Zstd => Choice::Zstd(3),
            Compress::Auto => {
                let parallel = self.parallel();
                let mut s = self.stats.lock().expect("not poisoned");
                s.chunks += 1;
                if s.zstd_secs == 0.0 || s.wire_secs == 0.0 {
                    Choice::Probe
                } else if Self::zstd_wins(&s, parallel) {
                    Choice::Zstd(Self::level(&s, parallel, current))
                } else if s.chunks.is_multiple_of(16) {
                    Choice::Probe
                } else {
                    Choice::Raw
                }
            }
        }
    }

    /// The highest level whose output still outruns the link: its
    /// compressed bytes per second (its speed relative to level 1's, times
    /// the ratio) at least what the link carries. A level any slower keeps
    /// the link waiting on the compressor. Rising above the stream's
    /// `current` level takes a margin of a quarter, so that an estimate
    /// near a boundary does not swing the level (each change restarts the
    /// stream's zstd frame, without its history).
    fn level(s: &Stats, parallel: f64, current: Option<i32>) -> i32 {
        let output = s.raw_in / s.zstd_secs * parallel * (s.zstd_out / s.raw_in);
        let link = s.wire_bytes / s.wire_secs;
        let margin = |level: i32| match current {
            Some(c) if level <= c => 1.0,
            _ => 1.25,
        };
        LEVELS
            .into_iter()
            .find(|(level, speed)| output * speed >= margin(*level) * link)
            .map_or(1, |(level, _)| level)
    }

    /// A level's typical speed as a fraction of level 1's.
    fn relative_speed(level: i32) -> f64 {
        LEVELS
            .into_iter()
            .find(|(l, _)| *l <= level)
            .map_or(1.0, |(_, speed)| speed)
    }

    fn zstd_wins(s: &Stats, parallel: f64) -> bool {
        let compress_rate = s.raw_in / s.zstd_secs * parallel;
        let ratio = s.zstd_out / s.raw_in;
        let link_rate = s.wire_bytes / s.wire_secs;
        ratio < 0.95 && compress_rate >= 1.5 * link_rate
    }

    /// One chunk of `raw` bytes compressed at `level` to `out` in `took`.
    /// The time is counted as what level 1 would have taken, so that
    /// levels compare.
    pub fn record_zstd(&self, level: i32, raw: usize, out: usize, took: Duration) {
        let mut s = self.stats.lock().expect("not poisoned");
        let secs = took.as_secs_f64().max(1e-6) * Self::relative_speed(level);
        s.raw_in = s.raw_in * DECAY + raw as f64;
        s.zstd_out = s.zstd_out * DECAY + out as f64;
        s.zstd_secs = s.zstd_secs * DECAY + secs;
    }

    /// A frame of `bytes` was written in `wrote`, `since` after the
    /// stream's previous frame was.
    ///
    /// A write that waited ([`BLOCKED`] or longer) found the send buffer
    /// full and measures the link: `bytes` in `wrote`. One that did not
    /// says only that the link took the frames as fast as this end made
    /// them, `bytes` per `since`: a lower bound, counted when it raises the
    /// estimate, never to lower it. While the stream is `early` (its first
    /// frames), a wait measures the connection's windows opening, not the
    /// link, and is not counted either: counted, it had a loopback push
    /// compress its first hundreds of MiB for a link taken to carry 12
    /// MB/s. Counting every write as a measure had a compressor slower
    /// than the link make the link look as fast as a write into a buffer
    /// with room, and the level swing between 9 and 3, each swing
    /// restarting the stream's zstd frame.
    pub fn record_wire(&self, bytes: usize, wrote: Duration, since: Duration, early: bool) {
        // A small frame (a config, the end of a blob, a chunk of zeros)
        // measures the time to open a stream or wake a task, not the link:
        // a 1 KiB config in a millisecond had the next layer compressed at
        // level 9 for a link taken to carry 1 MB/s.
        if bytes < MIN_SAMPLE {
            return;
        }
        let mut s = self.stats.lock().expect("not poisoned");
        let (secs, blocked) = if wrote >= BLOCKED && !early {
            (wrote.as_secs_f64(), true)
        } else {
            (since.as_secs_f64().max(1e-6), false)
        };
        let known = s.wire_secs > 0.0;
        if blocked || !known || bytes as f64 / secs > s.wire_bytes / s.wire_secs {
            s.wire_bytes = s.wire_bytes * DECAY + bytes as f64;
            s.wire_secs = s.wire_secs * DECAY + secs;
        }
    }
}

/// Times the frames of one blob stream for [`Chooser::record_wire`].
#[derive(Debug)]
pub struct WireTimer {
    /// When the previous frame had gone out.
    last: Instant,
    frames: u32,
}

impl Default for WireTimer {
    fn default() -> WireTimer {
        WireTimer {
            last: Instant::now(),
            frames: 0,
        }
    }
}

impl WireTimer {
    /// A frame of `bytes` went out; its write (and pacing) took `wrote`.
    pub fn sent(&mut self, chooser: &Chooser, bytes: usize, wrote: Duration) {
        let early = self.frames < EARLY_FRAMES;
        chooser.record_wire(bytes, wrote, self.last.elapsed(), early);
        self.frames += 1;
        self.last = Instant::now();
    }
}

/// A blob stream's first frames, whose writes wait on the connection's
/// windows opening rather than on the link.
const EARLY_FRAMES: u32 = 8;

/// The smallest frame that measures the link.
const MIN_SAMPLE: usize = 64 << 10;

/// A frame's write that took this long waited for the link: a write into a
/// send buffer with room takes microseconds.
const BLOCKED: Duration = Duration::from_micros(200);

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(link_mb_s: f64, compress_mb_s: f64, ratio: f64) -> Vec<Choice> {
        let c = Chooser::new(Compress::Auto);
        let mb: usize = 1 << 20;
        (0..60)
            .map(|_| {
                let kind = c.choose(None);
                c.record_zstd(
                    1,
                    mb,
                    (mb as f64 * ratio) as usize,
                    Duration::from_secs_f64(1.0 / compress_mb_s),
                );
                let t = Duration::from_secs_f64(1.0 / link_mb_s);
                c.record_wire(mb, t, t, false);
                kind
            })
            .collect()
    }

    fn raw_share(kinds: &[Choice]) -> usize {
        kinds.iter().filter(|k| **k == Choice::Raw).count()
    }

    #[test]
    fn compresses_on_a_slow_link_and_not_on_a_fast_one() {
        // The first chunk probes; then, loopback at 2 GB/s: raw, except
        // the periodic probe.
        let fast = steady(2000.0, 400.0, 0.5);
        assert_eq!(fast[0], Choice::Probe);
        assert!(raw_share(&fast) >= 55);
        // A gigabit link and a compressor twice as fast: level 1 pays,
        // since compressing overlaps sending.
        assert_eq!(steady(120.0, 270.0, 0.45)[30], Choice::Zstd(1));
        // 100 Mbit/s, a 400 MB/s compressor, 2:1 data: compress.
        assert_eq!(raw_share(&steady(12.0, 400.0, 0.5)), 0);
        // Incompressible data on a slow link: raw.
        assert!(raw_share(&steady(12.0, 400.0, 0.99)[20..]) >= 36);
        let none = Chooser::new(Compress::None);
        assert_eq!(none.choose(None), Choice::Raw);
        // Far slower link than compressor: a high level; closer: level 1.
        assert_eq!(steady(12.0, 400.0, 0.5)[30], Choice::Zstd(9));
        assert_eq!(steady(100.0, 400.0, 0.5)[30], Choice::Zstd(3));
        assert_eq!(steady(180.0, 400.0, 0.5)[30], Choice::Zstd(1));
    }

    fn link(c: &Chooser) -> f64 {
        let s = c.stats.lock().unwrap();
        s.wire_bytes / s.wire_secs / 1e6
    }

    #[test]
    fn a_compressor_slower_than_the_link_does_not_change_its_estimate() {
        let c = Chooser::new(Compress::Auto);
        let frame = 400_000;
        let at = |rate: f64| Duration::from_secs_f64(frame as f64 / rate);
        for _ in 0..50 {
            c.record_wire(frame, at(12e6), at(12e6), false);
        }
        assert!((link(&c) - 12.0).abs() < 0.1, "{}", link(&c));
        // Frames come slower than the link takes them: their writes do not
        // wait, and say nothing about the link.
        let instant = Duration::from_micros(20);
        for _ in 0..50 {
            c.record_wire(frame, instant, at(5e6), false);
        }
        assert!((link(&c) - 12.0).abs() < 0.1, "{}", link(&c));
        // Frames that go out faster than the estimate, even unblocked,
        // show the link is at least that fast.
        for _ in 0..200 {
            c.record_wire(frame, instant, at(100e6), false);
        }
        assert!(link(&c) > 90.0, "{}", link(&c));
    }

    #[test]
    fn a_level_near_its_boundary_is_kept() {
        let c = Chooser::new(Compress::Auto);
        let mb: usize = 1 << 20;
        // Level 1 at 235 MB/s, ratio 0.32: level 9 puts out 16 MB/s, 1.1
        // times a 14.5 MB/s link; level 6, 21.5 MB/s.
        for _ in 0..100 {
            c.record_zstd(1, mb, mb * 32 / 100, Duration::from_secs_f64(1.0 / 235.0));
            let t = Duration::from_secs_f64(1.0 / 14.5);
            c.record_wire(mb, t, t, false);
        }
        assert_eq!(c.choose(None), Choice::Zstd(6), "rising needs a margin");
        assert_eq!(c.choose(Some(6)), Choice::Zstd(6));
        assert_eq!(c.choose(Some(9)), Choice::Zstd(9), "staying does not");
    }

    #[test]
    fn auto_sends_raw_to_a_receiver_on_this_machine_unless_rate_limited() {
        let near = Chooser::for_peer(Compress::Auto, "127.0.0.1:7423".parse().unwrap(), false);
        let v6 = Chooser::for_peer(Compress::Auto, "[::1]:7423".parse().unwrap(), false);
        let far = Chooser::for_peer(Compress::Auto, "192.0.2.1:7423".parse().unwrap(), false);
        let paced = Chooser::for_peer(Compress::Auto, "127.0.0.1:7423".parse().unwrap(), true);
        let forced = Chooser::for_peer(Compress::Zstd, "127.0.0.1:7423".parse().unwrap(), false);
        assert_eq!(near.choose(None), Choice::Raw);
        assert_eq!(v6.choose(None), Choice::Raw);
        assert_eq!(far.choose(None), Choice::Probe, "auto measures first");
        assert_eq!(paced.choose(None), Choice::Probe);
        assert_eq!(forced.choose(None), Choice::Zstd(3));
    }

    #[test]
    fn a_small_frame_does_not_measure_the_link() {
        let c = Chooser::new(Compress::Auto);
        let ms = Duration::from_millis(1);
        c.record_wire(1024, ms, ms, false);
        assert_eq!(c.choose(None), Choice::Probe, "nothing known yet");
        assert_eq!(c.stats.lock().unwrap().wire_secs, 0.0);
    }
}
