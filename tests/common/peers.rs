//! Two ends of a transfer on one machine: a `rimg listen` child on a free
//! loopback port, trust between two test environments, and readers for
//! what a push produced.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::Env;

/// A `rimg listen` on a free loopback port, killed when dropped.
pub struct Listener {
    child: Child,
    pub addr: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Listener {
    pub fn start(env: &Env, extra: &[&str]) -> Listener {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(env, port, extra)
    }

    pub fn start_on(env: &Env, port: u16, extra: &[&str]) -> Listener {
        Self::start_with(env, port, extra, &[])
    }

    /// A listener on a free port with extra environment (`DOCKER_HOST`).
    pub fn start_env(env: &Env, extra: &[&str], vars: &[(&str, &str)]) -> Listener {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_with(env, port, extra, vars)
    }

    fn start_with(env: &Env, port: u16, extra: &[&str], vars: &[(&str, &str)]) -> Listener {
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["--no-progress", "listen", "--addr", &addr];
        args.extend_from_slice(extra);
        let mut cmd = env.cmd(&args);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("listen starts");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let listener = Listener { child, addr, log };
        listener.wait_log("listening on");
        listener
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_log(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log().contains(what) {
            assert!(
                Instant::now() < deadline,
                "listener never logged {what:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes `receiver` trust `sender`.
pub fn trust(receiver: &Env, sender: &Env) {
    let fp = sender.ok(&["id"]);
    receiver.ok(&["trust", "add", "--name", "sender", fp.trim()]);
}

/// The `done` event of a `push-peer --json` run.
pub fn done_event(stdout: &str) -> serde_json::Value {
    let last = stdout.lines().last().expect("some output");
    let v: serde_json::Value = serde_json::from_str(last).expect("JSON lines");
    assert_eq!(v["event"], "done", "{stdout}");
    for line in stdout.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is JSON");
    }
    v
}

/// The image a tag names in a store: (config digest, diff_ids).
pub fn image_in(env: &Env, tag: &str) -> (String, Vec<String>) {
    let root = env.root();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["io.containerd.image.name"] == tag)
        .unwrap_or_else(|| panic!("{tag} not in {index}"));
    let blob = |d: &str| std::fs::read(root.join("blobs/sha256").join(&d[7..])).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(entry["digest"].as_str().unwrap())).unwrap();
    let id = manifest["config"]["digest"].as_str().unwrap().to_string();
    let config: serde_json::Value = serde_json::from_slice(&blob(&id)).unwrap();
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    (id, diff_ids)
}

/// The largest partial blob in a store.
pub fn partial_len(env: &Env) -> u64 {
    std::fs::read_dir(env.root().join(".rimg/partial"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Starts a rate-limited push in the background (its stderr piped).
pub fn slow_push(sender: &Env, image: &str, addr: &str) -> Child {
    sender
        .cmd(&[
            "--no-progress",
            "push-peer",
            "--bwlimit",
            "4M",
            "--compress",
            "none",
            "--accept-new",
            image,
            addr,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("push starts")
}

/// Waits until a partial blob holds `at_least` bytes.
pub fn wait_partial(env: &Env, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let len = partial_len(env);
        if len >= at_least {
            return len;
        }
        assert!(
            Instant::now() < deadline,
            "partial blob stuck at {len} bytes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
