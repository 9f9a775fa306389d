//! Rootfs tarballs for the import tests, made with the system's GNU tar
//! and compressors (outside tools, so the bytes are not rimg's own idea
//! of a tar).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Env, corpus};

/// Runs a command and asserts it succeeded.
pub fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small root filesystem: a few files, a directory, a symlink.
pub fn rootfs(dir: &Path) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::create_dir_all(dir.join("var/empty")).unwrap();
    fs::write(dir.join("bin/tool"), vec![0x7fu8; 70_000]).unwrap();
    fs::write(dir.join("etc/hostname"), "rootfs\n").unwrap();
    std::os::unix::fs::symlink("tool", dir.join("bin/alias")).unwrap();
}

/// `tar -C dir -cf out ARGS... .` with fixed owner and times, so the same
/// tree gives the same bytes.
pub fn tar_dir(dir: &Path, out: &Path, args: &[&str]) {
    sh(Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args([
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@1700000000",
        ])
        .arg("-cf")
        .arg(out)
        .args(args)
        .arg("."));
}

/// Compresses `input` with a system tool (`gzip`, `bzip2`, `xz`, `zstd`)
/// into `input.EXT`.
pub fn compress(input: &Path, tool: &str, ext: &str) -> PathBuf {
    let out = PathBuf::from(format!("{}.{ext}", input.display()));
    let file = fs::File::create(&out).unwrap();
    sh(Command::new(tool).arg("-c").arg(input).stdout(file));
    out
}

/// The busybox rootfs from the corpus: the one layer of `d20-busybox.tar`.
pub const BUSYBOX_DIFF_ID: &str =
    "sha256:f03a735d7d1d0ca5da199ad97350a5bdfeb3a1014200b55f08fba92c5ec24c68";

pub fn busybox_rootfs(out: &Path) -> PathBuf {
    let file = fs::File::create(out).unwrap();
    sh(Command::new("tar")
        .arg("-xOf")
        .arg(corpus("d20-busybox.tar"))
        .arg("1b1e2bbc0d23423361ed9cb722b03d4b7cf8a9654731611b0aa9908636821f0c/layer.tar")
        .stdout(file));
    out.to_path_buf()
}

impl Env {
    /// Files left in the store's temporary area.
    pub fn tmp_files(&self) -> Vec<String> {
        fs::read_dir(self.root().join(".rimg/tmp"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The bytes of a blob in the store.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        fs::read(self.root().join("blobs/sha256").join(hex)).expect("the blob is in the store")
    }

    /// `rimg inspect NAME`, parsed: the one object of the array.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out = self.ok(&["inspect", name]);
        let mut array: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(array.len(), 1);
        array.remove(0)
    }

    /// The DiffID of an image's one layer.
    pub fn diff_id(&self, name: &str) -> String {
        let info = self.inspect(name);
        let layers = info["RootFS"]["Layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{info}");
        layers[0].as_str().unwrap().to_string()
    }
}
