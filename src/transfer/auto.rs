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

/// The levels, each with its typical speed and compressed size as
/// fractions of level 1's (streaming with a 4 MiB window, a 1 GB tar of
/// /usr: speeds 1, 1/1.3 to 1/1.8, 1/3.5 to 1/4.6 and 1/4.7 to 1/8.2 on
/// two machines; sizes 1, 0.90, 0.85 and 0.81).
const LEVELS: [(i32, f64, f64); 4] = [
    (1, 1.0, 1.0),
    (3, 1.0 / 1.5, 0.90),
    (6, 1.0 / 4.0, 0.85),
    (9, 1.0 / 6.0, 0.81),
];

/// What the long window (see `codec`) takes off the size at the levels
/// that use it: 318.2 MB instead of 362.6 at level 6 on that tar.
const LONG_WINDOW_SIZE: f64 = 0.875;

/// The level at which a stream with the long window starts using it.
pub const LONG_WINDOW_LEVEL: i32 = 6;

/// How much more a level must deliver than the stream's current one to
/// be switched to: a switch starts a new zstd frame, without history.
const SWITCH_MARGIN: f64 = 1.1;

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

    /// The estimates behind the choice, for the debug log: the
    /// compressor's speed (level 1, its share of the cores counted), the
    /// ratio and the link, in bytes per second.
    pub fn estimates(&self) -> (f64, f64, f64) {
        let parallel = self.parallel();
        let s = self.stats.lock().expect("not poisoned");
        (
            s.raw_in / s.zstd_secs * parallel,
            s.zstd_out / s.raw_in,
            s.wire_bytes / s.wire_secs,
        )
    }

    /// Whether any chunk may go compressed.
    pub fn may_compress(&self) -> bool {
        self.mode != Compress::None
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
    /// `current` (if any), `long` if it has the long window: raw, or zstd
    /// at a level.
    pub fn choose(&self, current: Option<i32>, long: bool) -> Choice {
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
                    Choice::Zstd(Self::level(&s, parallel, current, long))
                } else if s.chunks.is_multiple_of(16) {
                    Choice::Probe
                } else {
                    Choice::Raw
                }
            }
        }
    }

    /// The level that delivers the most: a level's rate is its speed, or
    /// what the link carries divided by its compressed size, whichever is
    /// lower. While the link is the slower, a higher level delivers more
    /// (it sends fewer bytes for the same data) as long as it keeps up;
    /// once it cannot, a lower level does. The stream stays at `current`
    /// unless another delivers [`SWITCH_MARGIN`] times more.
    fn level(s: &Stats, parallel: f64, current: Option<i32>, long: bool) -> i32 {
        let speed = s.raw_in / s.zstd_secs * parallel;
        let ratio = s.zstd_out / s.raw_in;
        let link = s.wire_bytes / s.wire_secs;
        let delivers = |level: i32| {
            let (speed_of, size_of) = Self::relative(level, long);
            (speed * speed_of).min(link / (ratio * size_of))
        };
        let best = LEVELS
            .into_iter()
            .map(|(level, _, _)| level)
            .max_by(|a, b| delivers(*a).total_cmp(&delivers(*b)))
            .unwrap_or(1);
        match current {
            Some(c) if delivers(best) < SWITCH_MARGIN * delivers(c) => c,
            _ => best,
        }
    }

    /// A level's typical speed and size as fractions of level 1's.
    fn relative(level: i32, long: bool) -> (f64, f64) {
        let (_, speed, size) = LEVELS
            .into_iter()
            .rev()
            .find(|(l, _, _)| *l <= level)
            .unwrap_or(LEVELS[0]);
        match long && level >= LONG_WINDOW_LEVEL {
            true => (speed, size * LONG_WINDOW_SIZE),
            false => (speed, size),
        }
    }

    fn zstd_wins(s: &Stats, parallel: f64) -> bool {
        let compress_rate = s.raw_in / s.zstd_secs * parallel;
        let ratio = s.zstd_out / s.raw_in;
        let link_rate = s.wire_bytes / s.wire_secs;
        ratio < 0.95 && compress_rate >= 1.5 * link_rate
    }

    /// One chunk of `raw` bytes compressed at `level` (with the long
    /// window if `long`) to `out` in `took`. The time and the size are
    /// counted as what level 1 would have taken and made, so that levels
    /// compare.
    pub fn record_zstd(&self, level: i32, long: bool, raw: usize, out: usize, took: Duration) {
        let (speed, size) = Self::relative(level, long);
        let mut s = self.stats.lock().expect("not poisoned");
        let secs = took.as_secs_f64().max(1e-6) * speed;
        s.raw_in = s.raw_in * DECAY + raw as f64;
        s.zstd_out = s.zstd_out * DECAY + out as f64 / size;
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
                let kind = c.choose(None, false);
                c.record_zstd(
                    1,
                    false,
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
        assert_eq!(none.choose(None, false), Choice::Raw);
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

    /// Level 1 at 235 MB/s, ratio 0.32, a 14.5 MB/s link: level 6 (58.8
    /// MB/s) keeps up and sends 0.27 of the data (53.3 MB/s delivered),
    /// level 9 (39.2 MB/s) does not keep up, level 3 sends 0.29 (50.3).
    fn near_a_boundary() -> Chooser {
        let c = Chooser::new(Compress::Auto);
        let mb: usize = 1 << 20;
        for _ in 0..100 {
            let took = Duration::from_secs_f64(1.0 / 235.0);
            c.record_zstd(1, false, mb, mb * 32 / 100, took);
            let t = Duration::from_secs_f64(1.0 / 14.5);
            c.record_wire(mb, t, t, false);
        }
        c
    }

    #[test]
    fn the_level_that_delivers_most_is_chosen_and_kept_near_a_boundary() {
        let c = near_a_boundary();
        assert_eq!(c.choose(None, false), Choice::Zstd(6));
        assert_eq!(c.choose(Some(6), false), Choice::Zstd(6));
        assert_eq!(
            c.choose(Some(3), false),
            Choice::Zstd(3),
            "6 is not 10% better"
        );
        assert_eq!(
            c.choose(Some(9), false),
            Choice::Zstd(6),
            "9 leaves the link idle"
        );
    }

    /// A stream with the long window counts the smaller size it gets at
    /// level 6: there the same figures make level 3 not worth a switch.
    #[test]
    fn the_long_window_counts_for_its_levels() {
        let c = near_a_boundary();
        let mb: usize = 1 << 20;
        // What a long-window stream measured at level 6 feeds back is
        // taken as what level 1 would have made: the ratio estimate drops.
        let before = c.estimates().1;
        c.record_zstd(6, true, mb, mb / 5, Duration::from_secs_f64(1.0 / 58.8));
        assert!(c.estimates().1 < before);
        assert_eq!(c.choose(Some(6), true), Choice::Zstd(6));
        assert_eq!(Chooser::relative(6, true).1, 0.85 * LONG_WINDOW_SIZE);
        assert_eq!(Chooser::relative(3, true).1, 0.90);
    }

    #[test]
    fn auto_sends_raw_to_a_receiver_on_this_machine_unless_rate_limited() {
        let near = Chooser::for_peer(Compress::Auto, "127.0.0.1:7423".parse().unwrap(), false);
        let v6 = Chooser::for_peer(Compress::Auto, "[::1]:7423".parse().unwrap(), false);
        let far = Chooser::for_peer(Compress::Auto, "192.0.2.1:7423".parse().unwrap(), false);
        let paced = Chooser::for_peer(Compress::Auto, "127.0.0.1:7423".parse().unwrap(), true);
        let forced = Chooser::for_peer(Compress::Zstd, "127.0.0.1:7423".parse().unwrap(), false);
        assert_eq!(near.choose(None, false), Choice::Raw);
        assert_eq!(v6.choose(None, false), Choice::Raw);
        assert_eq!(
            far.choose(None, false),
            Choice::Probe,
            "auto measures first"
        );
        assert_eq!(paced.choose(None, false), Choice::Probe);
        assert_eq!(forced.choose(None, false), Choice::Zstd(3));
    }

    #[test]
    fn a_small_frame_does_not_measure_the_link() {
        let c = Chooser::new(Compress::Auto);
        let ms = Duration::from_millis(1);
        c.record_wire(1024, ms, ms, false);
        assert_eq!(c.choose(None, false), Choice::Probe, "nothing known yet");
        assert_eq!(c.stats.lock().unwrap().wire_secs, 0.0);
    }
}
