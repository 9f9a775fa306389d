//! Progress reporting: bars on a terminal, plain periodic lines off one,
//! nothing with `-q` or `--no-progress`.
//!
//! Everything here writes to stderr; stdout is for data. Commands that
//! offer `--json` events write those themselves, on stdout.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// indicatif bars on stderr (a terminal).
    Bars,
    /// A plain line per item every few seconds and when it ends.
    Lines,
    /// Nothing.
    Off,
}

impl Mode {
    /// Bars when stderr is a terminal, lines otherwise; `Off` when asked.
    pub fn detect(off: bool) -> Mode {
        if off {
            Mode::Off
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

/// How often a plain-line bar reports.
const LINE_INTERVAL: Duration = Duration::from_secs(2);

/// The owner of every bar of one command.
pub struct Progress {
    mode: Mode,
    multi: Option<MultiProgress>,
}

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        let multi = (mode == Mode::Bars)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Progress { mode, multi }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A bar for `total` bytes (unknown when `None`), labelled `label`.
    pub fn bytes(&self, label: &str, total: Option<u64>) -> Bar {
        let bar = self.multi.as_ref().map(|multi| {
            // Hidden until the multi takes it: a bar's own target would draw
            // it once, outside the multi, when its style and prefix are set,
            // and that copy would stay on the screen.
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden());
            // The bar takes what the terminal's width leaves: a line that
            // wrapped would leave copies of itself on every redraw.
            let template = if total.is_some() {
                "{prefix:>14} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
            } else {
                "{prefix:>14} {spinner} {bytes} {bytes_per_sec}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("the template is valid")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            multi.add(bar)
        });
        Bar {
            mode: self.mode,
            label: label.to_string(),
            total,
            pos: AtomicU64::new(0),
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
            bar,
        }
    }

    /// A line on stdout (a result, such as `Loaded image: ...`): the bars
    /// step aside while it is written, so that their next redraw does not
    /// erase it.
    pub fn stdout_line(&self, line: &str) {
        let write = || {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        };
        match &self.multi {
            Some(multi) => multi.suspend(write),
            None => write(),
        }
    }

    /// A log line on stderr, shown whatever the mode, without tearing
    /// the bars.
    pub fn log(&self, line: &str) {
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// A line that does not tear the bars (stderr).
    pub fn println(&self, line: &str) {
        match (&self.multi, self.mode) {
            (Some(multi), _) => {
                let _ = multi.println(line);
            }
            (None, Mode::Off) => {}
            (None, _) => eprintln!("{line}"),
        }
    }
}

/// One item's progress.
pub struct Bar {
    mode: Mode,
    label: String,
    total: Option<u64>,
    pos: AtomicU64,
    started: Instant,
    last_line: Mutex<Instant>,
    bar: Option<ProgressBar>,
}

impl Bar {
    pub fn inc(&self, n: u64) {
        let pos = self.pos.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            // A total that was an estimate (an engine's image size) grows
            // with what actually came.
            if bar.length().is_some_and(|len| pos > len) {
                bar.set_length(pos);
            }
            bar.set_position(pos);
            return;
        }
        if self.mode == Mode::Lines {
            let mut last = self.last_line.lock().expect("not poisoned");
            if last.elapsed() >= LINE_INTERVAL {
                *last = Instant::now();
                eprintln!("{}: {}", self.label, self.describe(pos));
            }
        }
    }

    pub fn position(&self) -> u64 {
        self.pos.load(Ordering::Relaxed)
    }

    fn describe(&self, pos: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = pos as f64 / secs;
        match self.total.map(|t| t.max(pos)) {
            Some(t) if t > 0 => format!(
                "{} / {} ({:.0}%, {}/s)",
                mib(pos),
                mib(t),
                pos as f64 * 100.0 / t as f64,
                mib(rate as u64)
            ),
            _ => format!("{} ({}/s)", mib(pos), mib(rate as u64)),
        }
    }

    /// Ends the bar with a final word (`done`, `already present`, ...).
    /// The amount shown is what went through the bar, or, for an item that
    /// moved nothing (a blob already present), its size.
    pub fn finish(&self, word: &str) {
        let pos = match self.position() {
            0 => self.total.unwrap_or(0),
            moved => moved,
        };
        match &self.bar {
            Some(bar) => {
                bar.set_style(
                    ProgressStyle::with_template("{prefix:>14} {msg}")
                        .expect("the template is valid"),
                );
                bar.finish_with_message(format!("{word} ({})", mib(pos)));
            }
            None if self.mode == Mode::Lines => {
                let _ = writeln!(std::io::stderr(), "{}: {word} ({})", self.label, mib(pos));
            }
            None => {}
        }
    }
}

/// Wraps a reader so that what is read advances a bar.
pub struct ReadProgress<'a, R> {
    pub inner: R,
    pub bar: &'a Bar,
}

impl<R: std::io::Read> std::io::Read for ReadProgress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn mib(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else if bytes < 1 << 30 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    }
}
