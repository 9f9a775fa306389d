//! `--compress auto`: whether zstd on the wire makes a blob arrive sooner.
//!
//! Compressing pays when the link, not the CPU, is what limits us: sending
//! a raw byte costs `1/L` (L: link rate), a compressed one `1/C + r/L` (C:
//! compressor speed, r: ratio), so zstd wins when `L < C * (1 - r)`. Both
//! rates are measured as the transfer runs, from the chunks themselves, so
//! the choice follows the data (already compressed layers stay raw) and the
//! link. Until the first 16 MiB have gone (the flow-control windows take
//! them without waiting, so the link cannot be seen yet), chunks go at
//! zstd level 3, about as fast as a gigabit link. While chunks go raw, every 16th is compressed at level 1 on its
//! own anyway (a probe), to keep the estimate of C and r current; while
//! they are compressed, the chunks themselves keep it current.
//!
//! When the link is much slower than the compressor, a higher zstd level
//! buys a better ratio for CPU that would otherwise wait on the link: the
//! level is the highest whose (typical) speed still leaves the compressor
//! at least twice as fast as the link.

use std::sync::Mutex;
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
    /// Bytes written in all, not faded.
    wire_total: u64,
}

/// Shared by every blob stream of one transfer.
#[derive(Debug)]
pub struct Chooser {
    mode: Compress,
    /// How many compressions can run at once (cores vs. streams).
    parallel: f64,
    stats: Mutex<Stats>,
}

/// Older samples fade so that a change of link or data is followed.
const DECAY: f64 = 0.97;

/// Bytes written before the link's speed is believed: about what QUIC's
/// flow-control windows take without waiting.
const WARM_UP: u64 = 16 << 20;

/// The levels used above 1, each with its speed as a fraction of level 1's
/// (streaming, measured on a tar of /usr: 320, 240, 90 and 68 MB/s).
const LEVELS: [(i32, f64); 3] = [(9, 1.0 / 4.7), (6, 1.0 / 3.5), (3, 1.0 / 1.3)];

impl Chooser {
    pub fn new(mode: Compress, streams: usize) -> Chooser {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Chooser {
            mode,
            parallel: (cores.min(streams.max(1)) as f64) / streams.max(1) as f64,
            stats: Mutex::new(Stats::default()),
        }
    }

    /// What to do with the next chunk: raw, or zstd at a level.
    pub fn choose(&self) -> Choice {
        match self.mode {
            Compress::None => Choice::Raw,
            Compress::Zstd => Choice::Zstd(3),
            Compress::Auto => {
                let mut s = self.stats.lock().expect("not poisoned");
                s.chunks += 1;
                if s.zstd_secs == 0.0 || s.wire_secs == 0.0 {
                    Choice::Probe
                } else if s.wire_total < WARM_UP {
                    // Writes return at once while the windows fill, which
                    // looks like a fast link: compress, cheaply, until the
                    // link can be seen.
                    Choice::Zstd(3)
                } else if Self::zstd_wins(&s, self.parallel) {
                    Choice::Zstd(Self::level(&s, self.parallel))
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
        ratio < 0.95 && link_rate < compress_rate * (1.0 - ratio)
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
        s.wire_total += bytes as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(link_mb_s: f64, compress_mb_s: f64, ratio: f64) -> Vec<Choice> {
        let c = Chooser::new(Compress::Auto, 1);
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
        // The first chunk probes; until 16 MiB have gone, level 3.
        let fast = steady(2000.0, 400.0, 0.5);
        assert_eq!(fast[0], Choice::Probe);
        assert!(fast[1..16].iter().all(|k| *k == Choice::Zstd(3)));
        // Then, loopback at 2 GB/s: raw, except the periodic probe.
        assert!(raw_share(&fast[20..]) >= 36);
        // 100 Mbit/s, a 400 MB/s compressor, 2:1 data: compress.
        assert_eq!(raw_share(&steady(12.0, 400.0, 0.5)), 0);
        // Incompressible data on a slow link: raw.
        assert!(raw_share(&steady(12.0, 400.0, 0.99)[20..]) >= 36);
        let none = Chooser::new(Compress::None, 1);
        assert_eq!(none.choose(), Choice::Raw);
        // Far slower link than compressor: a high level; closer: level 1.
        assert_eq!(steady(12.0, 400.0, 0.5)[30], Choice::Zstd(9));
        assert_eq!(steady(100.0, 400.0, 0.5)[30], Choice::Zstd(3));
        assert_eq!(steady(180.0, 400.0, 0.5)[30], Choice::Zstd(1));
    }
}
