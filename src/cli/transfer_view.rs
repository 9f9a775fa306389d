//! What both ends of a transfer show: a bar per blob in flight and one for
//! the whole, blobs the receiver already had shown as such, and with
//! `--json` one event per line on stdout.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use rimg::digest::Digest;
use rimg::progress::{Bar, Progress};
use rimg::transfer::receive::ReceiveEvents;
use rimg::transfer::send::{EngineReport, SendEvents};
use rimg::transfer::wire::WantedBlob;

pub struct View {
    progress: Progress,
    json: bool,
    /// Where images went, for `Loaded image: NAME on DEST` (sender only).
    dest: Option<String>,
    bars: Mutex<HashMap<Digest, Bar>>,
    total: Mutex<Option<Bar>>,
    /// Long stages: reading an engine's export, feeding an engine.
    stages: Mutex<HashMap<String, Bar>>,
}

impl View {
    pub fn new(progress: Progress, json: bool, dest: Option<String>) -> View {
        View {
            progress,
            json,
            dest,
            bars: Mutex::new(HashMap::new()),
            total: Mutex::new(None),
            stages: Mutex::new(HashMap::new()),
        }
    }

    /// One JSON event on stdout.
    pub fn event(&self, value: serde_json::Value) {
        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{value}");
            let _ = out.flush();
        }
    }

    pub fn println(&self, line: &str) {
        self.progress.println(line);
    }

    /// A listener's log line: shown even with `--no-progress`.
    pub fn log(&self, line: &str) {
        self.progress.log(line);
    }

    fn label(digest: &Digest) -> String {
        digest.short().to_string()
    }

    fn planned(&self, wanted: &[WantedBlob]) {
        let bytes: u64 = wanted.iter().map(|w| w.size - w.offset).sum();
        if !wanted.is_empty() {
            *self.total.lock().expect("not poisoned") =
                Some(self.progress.bytes("total", Some(bytes)));
        }
    }

    fn skipped(&self, digest: &Digest, size: u64) {
        let bar = self.progress.bytes(&Self::label(digest), Some(size));
        bar.inc(size);
        bar.finish("already present");
        self.event(serde_json::json!({"event": "skipped", "digest": digest, "size": size}));
    }

    fn started(&self, digest: &Digest, size: u64, offset: u64) {
        let bar = self.progress.bytes(&Self::label(digest), Some(size));
        bar.inc(offset);
        self.bars
            .lock()
            .expect("not poisoned")
            .insert(digest.clone(), bar);
        self.event(
            serde_json::json!({"event": "blob", "digest": digest, "size": size, "offset": offset}),
        );
    }

    fn progress(&self, digest: &Digest, n: u64) {
        if let Some(bar) = self.bars.lock().expect("not poisoned").get(digest) {
            bar.inc(n);
        }
        if let Some(total) = &*self.total.lock().expect("not poisoned") {
            total.inc(n);
        }
    }

    fn finish_bar(&self, digest: &Digest, word: &str) {
        if let Some(bar) = self.bars.lock().expect("not poisoned").remove(digest) {
            bar.finish(word);
        }
    }

    /// Ends the whole-transfer bar.
    pub fn finish(&self) {
        if let Some(total) = self.total.lock().expect("not poisoned").take() {
            total.finish("done");
        }
        for (_, bar) in self.stages.lock().expect("not poisoned").drain() {
            bar.finish("done");
        }
    }

    /// A bar for a long stage, moved to `bytes`.
    fn stage(&self, stage: &str, bytes: u64, total: Option<u64>) {
        let label = match stage {
            "export" => "engine export",
            "engine" => "engine load",
            _ => return,
        };
        let mut stages = self.stages.lock().expect("not poisoned");
        let bar = stages
            .entry(stage.to_string())
            .or_insert_with(|| self.progress.bytes(label, total));
        let at = bar.position();
        if bytes > at {
            bar.inc(bytes - at);
        }
    }

    fn loaded(&self, id: &Digest, names: &[String]) {
        self.event(serde_json::json!({"event": "loaded", "id": id, "names": names}));
        let Some(dest) = &self.dest else {
            return;
        };
        if self.json {
            return;
        }
        if names.is_empty() {
            self.progress
                .stdout_line(&format!("Loaded image ID: {id} on {dest}"));
        }
        for name in names {
            self.progress
                .stdout_line(&format!("Loaded image: {name} on {dest}"));
        }
    }
}

impl SendEvents for View {
    fn planned(&self, wanted: &[WantedBlob]) {
        View::planned(self, wanted);
    }
    fn skipped(&self, digest: &Digest, size: u64) {
        View::skipped(self, digest, size);
    }
    fn started(&self, digest: &Digest, size: u64, offset: u64) {
        View::started(self, digest, size, offset);
    }
    fn progress(&self, digest: &Digest, raw: u64) {
        View::progress(self, digest, raw);
    }
    fn sent(&self, digest: &Digest, raw: u64, wire: u64) {
        self.finish_bar(digest, "sent");
        self.event(serde_json::json!({"event": "sent", "digest": digest, "bytes_raw": raw, "bytes_wire": wire}));
    }
    fn stored(&self, digest: &Digest) {
        self.event(serde_json::json!({"event": "stored", "digest": digest}));
    }
    fn loaded(&self, id: &Digest, names: &[String]) {
        View::loaded(self, id, names);
    }
    fn stage(&self, stage: &str, bytes: u64, total: Option<u64>) {
        View::stage(self, stage, bytes, total);
    }
    /// The receiver's engine report: its `Loaded image:` lines on stdout,
    /// as this end's own, the rest on stderr.
    fn engine(&self, report: &EngineReport) {
        self.event(
            serde_json::json!({"event": "engine", "lines": report.lines, "error": report.error}),
        );
        if self.json {
            return;
        }
        let dest = self.dest.as_deref().unwrap_or("the receiver");
        for line in &report.lines {
            if line.starts_with("Loaded image") {
                self.progress
                    .stdout_line(&format!("{line} into the Docker Engine on {dest}"));
            } else {
                self.println(&format!("{dest}: {line}"));
            }
        }
    }
}

impl ReceiveEvents for View {
    fn planned(&self, wanted: &[WantedBlob]) {
        View::planned(self, wanted);
    }
    fn skipped(&self, digest: &Digest, size: u64) {
        View::skipped(self, digest, size);
    }
    fn started(&self, digest: &Digest, size: u64, offset: u64) {
        View::started(self, digest, size, offset);
    }
    fn progress(&self, digest: &Digest, bytes: u64) {
        View::progress(self, digest, bytes);
    }
    fn stored(&self, digest: &Digest) {
        self.finish_bar(digest, "stored");
    }
    fn failed(&self, digest: &Digest) {
        self.finish_bar(digest, "failed");
    }
    fn stage(&self, stage: &str, bytes: u64, total: Option<u64>) {
        View::stage(self, stage, bytes, total);
    }
    fn loaded(&self, id: &Digest, names: &[String]) {
        View::loaded(self, id, names);
        if self.dest.is_none() {
            for name in names {
                self.println(&format!("Loaded image: {name}"));
            }
        }
    }
}

/// The async runtime of the transfer commands (and only of them).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)))
        .enable_all()
        .build()?)
}

/// Parses `--bwlimit`: bytes per second with an optional K, M or G suffix
/// (powers of 1024), as rsync takes it.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown unit in {s:?} (use K, M or G)")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid rate {s:?}"))?;
    if !n.is_finite() || n <= 0.0 {
        return Err(format!("invalid rate {s:?}"));
    }
    Ok((n * mult as f64) as u64)
}
