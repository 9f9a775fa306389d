//! `--compress auto`: whether zstd on the wire makes a blob arrive sooner.
//!
//! Each blob's chunks are read and compressed by a thread of their own
//! while the stream writes the previous ones, so compressing and sending
//! overlap: a compressed byte costs `max(1/C, r/L)` (C: the compressor's
//! speed, its share of the cores counted; r: the ratio; L: the link's rate
//! as this stream sees it) against `1/L` raw. zstd pays when the
//! compressor outruns the link, with a margin for the CPU the rest of the
//! transfer needs: `C >= 1.25 L`, and `r < 0.95`. Both rates are measured
//! as the transfer runs, from the chunks themselves, so the choice follows
//! the data (already compressed layers stay raw) and the link. While chunks
//! go raw, every 16th is compressed at level 1 on its own anyway (a
//! probe), to keep the estimate of C and r current; while they are
//! compressed, the chunks themselves keep it current.
//!
//! When the link is much slower than the compressor, a higher zstd level
//! buys a better ratio for CPU that would otherwise wait on the link: the
//! level is the highest whose (typical) speed still leaves the compressor
//! at least twice as fast as the link.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
        Chooser {
            mode,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
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

    /// What to do with the next chunk: raw, or zstd at a level.
    pub fn choose(&self) -> Choice {
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
                    Choice::Zstd(Self::level(&s, parallel))
                } else if s.chunks.is_multiple_of(16) {
                    Choice::Probe
                } else {
                    Choice::Raw
                }
            }
        }
    }

    /// The highest level whose speed, relative to level 1's, keeps the
    /// compressor at least twice as fast as the link.
    fn level(s: &Stats, parallel: f64) -> i32 {
        let headroom = s.raw_in / s.zstd_secs * parallel / (s.wire_bytes / s.wire_secs);
        LEVELS
            .into_iter()
            .find(|(_, speed)| headroom * speed >= 2.0)
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
        ratio < 0.95 && compress_rate >= 1.25 * link_rate
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

    /// `bytes` went onto the wire in `took`.
    pub fn record_wire(&self, bytes: usize, took: Duration) {
        let mut s = self.stats.lock().expect("not poisoned");
        s.wire_bytes = s.wire_bytes * DECAY + bytes as f64;
        s.wire_secs = s.wire_secs * DECAY + took.as_secs_f64().max(1e-6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(link_mb_s: f64, compress_mb_s: f64, ratio: f64) -> Vec<Choice> {
        let c = Chooser::new(Compress::Auto);
        let mb: usize = 1 << 20;
        (0..60)
            .map(|_| {
                let kind = c.choose();
                c.record_zstd(
                    1,
                    mb,
                    (mb as f64 * ratio) as usize,
                    Duration::from_secs_f64(1.0 / compress_mb_s),
                );
                c.record_wire(mb, Duration::from_secs_f64(1.0 / link_mb_s));
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
        assert_eq!(none.choose(), Choice::Raw);
        // Far slower link than compressor: a high level; closer: level 1.
        assert_eq!(steady(12.0, 400.0, 0.5)[30], Choice::Zstd(9));
        assert_eq!(steady(100.0, 400.0, 0.5)[30], Choice::Zstd(3));
        assert_eq!(steady(180.0, 400.0, 0.5)[30], Choice::Zstd(1));
    }
}
