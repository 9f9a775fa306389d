//! Shared by the integration tests: a temporary store, the real `rimg`
//! binary run against it, and the rule for outside tools (skip when
//! missing, fail under `CI=true`).

#![allow(dead_code)]

pub mod peers;
pub mod seed;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub mod tarballs;

/// A temporary store and config directory, removed when dropped.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `rimg --root ROOT ARGS...`, ready to run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rimg"));
        cmd.arg("--root")
            .arg(self.root())
            .args(args)
            .env("RIMG_CONFIG", self.config())
            .env_remove("RIMG_ROOT")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("rimg runs")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "rimg {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "rimg {args:?} should have failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).expect("stderr is UTF-8")
    }

    /// The store as files and bytes: what must not change after a failure.
    pub fn snapshot(&self) -> Snapshot {
        let root = self.root();
        let index = std::fs::read(root.join("index.json")).unwrap_or_default();
        let mut blobs: Vec<String> = std::fs::read_dir(root.join("blobs/sha256"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        blobs.sort();
        Snapshot { index, blobs }
    }

    /// Asserts `rimg check` is clean.
    pub fn assert_consistent(&self) {
        self.ok(&["check"]);
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub index: Vec<u8>,
    pub blobs: Vec<String>,
}

/// The shared corpus of real archives (`../shared/corpus/real`).
pub fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus/real")
        .join(name)
}

/// True when running under CI, where a missing tool is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Checks that an outside tool works (`probe` exits 0). When it does not,
/// the test is skipped with a message, or fails under `CI=true`.
/// Returns whether the test should go on.
pub fn need(tool: &str, probe: &[&str]) -> bool {
    let ok = Command::new(probe[0])
        .args(&probe[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    if in_ci() {
        panic!(
            "{tool} is required under CI=true but `{}` failed",
            probe.join(" ")
        );
    }
    eprintln!(
        "skipping: {tool} is not available (`{}` failed)",
        probe.join(" ")
    );
    false
}

pub fn need_docker() -> bool {
    need("the Docker Engine", &["docker", "info"])
}

pub fn need_skopeo() -> bool {
    need("skopeo", &["skopeo", "--version"])
}

pub fn need_umoci() -> bool {
    need("umoci", &["umoci", "--version"])
}
