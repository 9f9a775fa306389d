//! `rimg import` through the real binary: every source kind, every
//! compression, the tar corners GNU tar produces, and every way the input
//! can be bad (each must leave the store exactly as it was).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use common::tarballs::{BUSYBOX_DIFF_ID, busybox_rootfs, compress, rootfs, sh, tar_dir};

/// A plain rootfs tarball in the env's directory.
fn plain_tarball(env: &Env) -> std::path::PathBuf {
    let dir = env.path("rootfs");
    rootfs(&dir);
    let tar = env.path("rootfs.tar");
    tar_dir(&dir, &tar, &[]);
    tar
}

fn sha256(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

#[test]
fn every_compression_gives_the_same_diff_id() {
    let env = Env::new();
    let tar = plain_tarball(&env);
    let expected = sha256(&fs::read(&tar).unwrap());

    let mut sources = vec![("plain", tar.clone())];
    for (tool, ext) in [
        ("gzip", "gz"),
        ("bzip2", "bz2"),
        ("xz", "xz"),
        ("zstd", "zst"),
    ] {
        sources.push((tool, compress(&tar, tool, ext)));
    }
    // The name says nothing: a gzip'd tarball called .tar is still gzip.
    let misnamed = env.path("really-gzip.tar");
    fs::copy(&sources[1].1, &misnamed).unwrap();
    sources.push(("misnamed", misnamed));

    for (label, path) in &sources {
        let tag = format!("rootfs:{label}");
        let id = env.ok(&["import", path.to_str().unwrap(), &tag]);
        assert!(
            id.trim().starts_with("sha256:") && id.trim().len() == 71,
            "{id}"
        );
        assert_eq!(env.diff_id(&tag), expected, "{label}");
    }
    // The stored layer is the decompressed tarball, byte for byte.
    assert_eq!(env.blob(&expected), fs::read(&tar).unwrap());
    env.assert_consistent();
}

#[test]
fn stdin_import_with_message_changes_and_platform() {
    let env = Env::new();
    let tar = compress(&plain_tarball(&env), "zstd", "zst");
    let out = env
        .cmd(&[
            "import",
            "-c",
            r#"CMD ["/bin/tool", "--serve"]"#,
            "--change",
            "ENV PATH=/bin GREETING=\"hello world\"",
            "-c",
            "ENV MSG=$GREETING!",
            "-c",
            "WORKDIR /srv",
            "-c",
            "EXPOSE 80 53/udp",
            "-c",
            "LABEL org.example.purpose=test",
            "-c",
            "USER 1000:1000",
            "-c",
            "VOLUME /data",
            "-c",
            "STOPSIGNAL SIGINT",
            "-c",
            "ENTRYPOINT /bin/tool",
            "-c",
            "ONBUILD RUN echo hi",
            "--platform",
            "linux/arm64/v8",
            "-",
            "me/app:2",
        ])
        .stdin(fs::File::open(&tar).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap();

    let info = env.inspect("me/app:2");
    assert_eq!(info["Id"], id.trim());
    assert_eq!(info["RepoTags"], serde_json::json!(["me/app:2"]));
    assert_eq!(info["Comment"], "Imported from -");
    assert_eq!(info["Architecture"], "arm64");
    assert_eq!(info["Variant"], "v8");
    assert_eq!(info["Os"], "linux");
    let config = &info["Config"];
    assert_eq!(config["Cmd"], serde_json::json!(["/bin/tool", "--serve"]));
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/bin/sh", "-c", "/bin/tool"])
    );
    assert_eq!(
        config["Env"],
        serde_json::json!(["PATH=/bin", "GREETING=hello world", "MSG=hello world!"])
    );
    assert_eq!(config["WorkingDir"], "/srv");
    assert_eq!(config["User"], "1000:1000");
    assert_eq!(config["StopSignal"], "SIGINT");
    assert_eq!(config["Labels"]["org.example.purpose"], "test");
    assert_eq!(
        config["ExposedPorts"],
        serde_json::json!({"53/udp": {}, "80/tcp": {}})
    );
    assert_eq!(config["Volumes"], serde_json::json!({"/data": {}}));
    assert_eq!(config["OnBuild"], serde_json::json!(["RUN echo hi"]));

    // -m replaces the comment; a file's comment names the file.
    let plain = env.path("rootfs.tar");
    env.ok(&["import", "-m", "my message", plain.to_str().unwrap(), "m:1"]);
    assert_eq!(env.inspect("m:1")["Comment"], "my message");
    let history = env.ok(&["history", "--format", "json", "m:1"]);
    assert!(history.contains("\"Comment\":\"my message\""), "{history}");
    env.ok(&["import", plain.to_str().unwrap(), "f:1"]);
    assert_eq!(
        env.inspect("f:1")["Comment"],
        format!("Imported from {}", plain.display())
    );
    // No tag: the image is listed as <none>.
    let id = env.ok(&["import", plain.to_str().unwrap()]);
    let listing = env.ok(&["images"]);
    let short = &id.trim()["sha256:".len()..][..12];
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("<none>") && l.contains(short)),
        "{listing}"
    );
    env.assert_consistent();
}

/// Asserts a failed import printed one `error:` line, changed nothing and
/// left nothing in the temporary area. Returns the error line.
fn assert_refused(env: &Env, mut cmd: Command) -> String {
    let before = env.snapshot();
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("import:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(errors[0].starts_with("error: "), "{stderr}");
    assert_eq!(env.snapshot(), before, "the store changed: {stderr}");
    assert!(
        env.tmp_files().is_empty(),
        "left in tmp: {:?}",
        env.tmp_files()
    );
    errors[0].to_string()
}

fn import_file(env: &Env, path: &Path) -> String {
    assert_refused(env, env.cmd(&["import", path.to_str().unwrap(), "bad:1"]))
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let env = Env::new();
    let tar = plain_tarball(&env);
    env.ok(&["import", tar.to_str().unwrap(), "good:1"]);
    let bytes = fs::read(&tar).unwrap();

    let write = |name: &str, data: &[u8]| {
        let path = env.path(name);
        fs::write(&path, data).unwrap();
        path
    };
    let random: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();

    let err = import_file(&env, &write("random.bin", &random));
    assert!(
        err.contains("not a tar archive or a known compression"),
        "{err}"
    );
    assert!(err.contains("random.bin"), "{err}");

    let err = import_file(&env, &write("empty.tar", b""));
    assert!(err.contains("empty"), "{err}");

    let mut lz4 = vec![0x04, 0x22, 0x4d, 0x18];
    lz4.extend_from_slice(&random[..600]);
    let err = import_file(&env, &write("rootfs.tar.lz4", &lz4));
    assert!(err.contains("it starts with 04 22 4d 18"), "{err}");

    let mut zip = b"PK\x03\x04".to_vec();
    zip.extend_from_slice(&random[..600]);
    let err = import_file(&env, &write("rootfs.zip", &zip));
    assert!(err.contains("not a tar archive"), "{err}");

    // Cut inside a file's data, inside a header, and just before the end.
    let err = import_file(&env, &write("cut-data.tar", &bytes[..3000]));
    assert!(err.contains("truncated"), "{err}");
    let err = import_file(&env, &write("cut-header.tar", &bytes[..512 * 3 + 100]));
    assert!(err.contains("truncated"), "{err}");
    let without_end = trim_end_blocks(&bytes);
    let err = import_file(&env, &write("no-end.tar", &without_end));
    assert!(err.contains("end-of-archive"), "{err}");

    // A damaged header checksum names the entry and the offset.
    let mut damaged = bytes.clone();
    damaged[512 * 2 + 10] ^= 0x01;
    let err = import_file(&env, &write("damaged.tar", &damaged));
    assert!(
        err.contains("checksum") && err.contains("at byte 1024"),
        "{err}"
    );

    // Compressed garbage, and a compressed tar cut short.
    let gz_random = compress(&write("random2.bin", &random), "gzip", "gz");
    let err = import_file(&env, &gz_random);
    assert!(
        err.contains("gzip stream does not decompress to a tar"),
        "{err}"
    );
    let gz = compress(&tar, "gzip", "gz");
    let gz_bytes = fs::read(&gz).unwrap();
    let err = import_file(
        &env,
        &write("cut.tar.gz", &gz_bytes[..gz_bytes.len() * 2 / 3]),
    );
    assert!(err.contains("gzip"), "{err}");
    let zst = compress(&tar, "zstd", "zst");
    let zst_bytes = fs::read(&zst).unwrap();
    let err = import_file(
        &env,
        &write("cut.tar.zst", &zst_bytes[..zst_bytes.len() - 7]),
    );
    assert!(err.contains("zstd"), "{err}");

    // Not a file at all.
    let err = import_file(&env, &env.path("does-not-exist.tar"));
    assert!(err.contains("does-not-exist.tar"), "{err}");
    let err = import_file(&env, &env.path("rootfs"));
    assert!(err.contains("directory"), "{err}");

    // Bad options fail before anything is read.
    let src = tar.to_str().unwrap();
    let err = assert_refused(&env, env.cmd(&["import", "-c", "RUN make", src, "x:1"]));
    assert!(err.contains("RUN is not a valid change command"), "{err}");
    let err = assert_refused(&env, env.cmd(&["import", "-c", "EXPOSE 99999", src]));
    assert!(err.contains("invalid port"), "{err}");
    let err = assert_refused(&env, env.cmd(&["import", "--platform", "linux", src]));
    assert!(err.contains("invalid platform"), "{err}");
    let err = assert_refused(&env, env.cmd(&["import", src, "Bad:Name:1"]));
    assert!(err.contains("invalid reference"), "{err}");

    // Stdin with nothing on it.
    let err = assert_refused(&env, env.cmd(&["import", "-", "x:1"]));
    assert!(err.contains("empty"), "{err}");

    env.assert_consistent();
}

/// Drops the zero blocks at the end of a tar.
fn trim_end_blocks(bytes: &[u8]) -> Vec<u8> {
    let mut end = bytes.len();
    while end >= 512 && bytes[end - 512..end].iter().all(|&b| b == 0) {
        end -= 512;
    }
    bytes[..end].to_vec()
}

#[test]
fn gnu_tar_corner_cases_import_byte_for_byte() {
    let env = Env::new();
    let dir = env.path("corners");
    fs::create_dir_all(&dir).unwrap();

    // A sparse file with more holes than an old GNU header holds (so its
    // sparse map continues in extension blocks).
    let sparse = fs::File::create(dir.join("sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    for i in 0..12u64 {
        let mut f = &sparse;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(i * (5 << 20))).unwrap();
        f.write_all(&[i as u8 + 1; 4096]).unwrap();
    }
    drop(sparse);

    // A hard link to a symlink.
    std::os::unix::fs::symlink("target-that-need-not-exist", dir.join("sym")).unwrap();
    sh(Command::new("ln")
        .arg("-P")
        .arg(dir.join("sym"))
        .arg(dir.join("hard-to-sym")));

    // A path longer than any header field.
    let long = dir
        .join("a".repeat(90))
        .join("b".repeat(90))
        .join("c".repeat(90));
    fs::create_dir_all(&long).unwrap();
    fs::write(long.join("d".repeat(120)), "deep\n").unwrap();

    // A name that is not UTF-8.
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9-latin1");
    fs::write(dir.join(name), "bytes\n").unwrap();

    for (label, args) in [
        ("gnu", vec!["--format=gnu", "--sparse"]),
        ("pax", vec!["--format=posix", "--sparse"]),
        (
            "pax-1.0-sparse",
            vec!["--format=posix", "--sparse", "--sparse-version=1.0"],
        ),
    ] {
        let tar = env.path(&format!("corners-{label}.tar"));
        tar_dir(&dir, &tar, &args);
        let bytes = fs::read(&tar).unwrap();
        let tag = format!("corners:{label}");
        env.ok(&["import", tar.to_str().unwrap(), &tag]);
        let diff_id = env.diff_id(&tag);
        assert_eq!(diff_id, sha256(&bytes), "{label}");
        assert_eq!(env.blob(&diff_id), bytes, "{label}: the layer is the input");
    }
    // The GNU archive really has sparse and long-name entries.
    let listing = Command::new("tar")
        .args(["-tvf"])
        .arg(env.path("corners-gnu.tar"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("link to ./sym"), "{listing}");
    env.assert_consistent();
}

/// A one-shot HTTP/1.1 server on loopback. Routes: `/ok` serves `body`,
/// `/short` promises `body` but sends half and hangs up, anything else 404.
fn serve(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || respond(stream, &body));
        }
    });
    format!("http://{addr}")
}

fn respond(mut stream: TcpStream, body: &[u8]) {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        request.push(byte[0]);
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let head = |status: &str, len: usize| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
        )
    };
    let _ = match path {
        "/ok/rootfs.tar.gz" => stream
            .write_all(head("200 OK", body.len()).as_bytes())
            .and_then(|_| stream.write_all(body)),
        "/short/rootfs.tar.gz" => stream
            .write_all(head("200 OK", body.len()).as_bytes())
            .and_then(|_| stream.write_all(&body[..body.len() / 2])),
        _ => stream
            .write_all(head("404 Not Found", 9).as_bytes())
            .and_then(|_| stream.write_all(b"not found")),
    };
}

#[test]
fn url_import_from_a_loopback_server() {
    let env = Env::new();
    let tar = plain_tarball(&env);
    // Large enough that the short body cuts through file data.
    let big = env.path("big");
    fs::create_dir_all(&big).unwrap();
    let noise: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    fs::write(big.join("noise"), &noise).unwrap();
    let big_tar = env.path("big.tar");
    tar_dir(&big, &big_tar, &[]);
    let body = fs::read(compress(&big_tar, "gzip", "gz")).unwrap();
    let base = serve(body);

    let url = format!("{base}/ok/rootfs.tar.gz");
    let out = env.run(&["import", &url, "web:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.diff_id("web:1"), sha256(&fs::read(&big_tar).unwrap()));
    assert_eq!(
        env.inspect("web:1")["Comment"],
        format!("Imported from {url}")
    );
    // Off a terminal, the download's progress is a plain line on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("import: done"), "{stderr}");

    let err = assert_refused(
        &env,
        env.cmd(&["import", &format!("{base}/nope.tar"), "x:1"]),
    );
    assert!(err.contains("404") && err.contains("/nope.tar"), "{err}");

    let err = assert_refused(
        &env,
        env.cmd(&["import", &format!("{base}/short/rootfs.tar.gz"), "x:1"]),
    );
    assert!(err.contains("/short/rootfs.tar.gz"), "{err}");
    assert!(err.contains("the download broke off"), "{err}");

    // Nothing listens on this port once the listener is dropped.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = assert_refused(
        &env,
        env.cmd(&["import", &format!("http://{closed}/x.tar"), "x:1"]),
    );
    assert!(err.contains("cannot download"), "{err}");
    drop(tar);
    env.assert_consistent();
}

#[test]
fn a_killed_import_leaves_check_clean() {
    let env = Env::new();
    let plain = plain_tarball(&env);
    env.ok(&["import", plain.to_str().unwrap(), "before:1"]);
    let before = env.snapshot();

    let dir = env.path("large");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("blob"), vec![5u8; 6 << 20]).unwrap();
    let tar = env.path("large.tar");
    tar_dir(&dir, &tar, &[]);
    let bytes = fs::read(&tar).unwrap();

    let mut child = env
        .cmd(&["import", "-", "killed:1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&bytes[..3 << 20]).unwrap();
    stdin.flush().unwrap();

    // Wait until part of the layer is on disk, then kill it mid-write.
    let deadline = Instant::now() + Duration::from_secs(20);
    let written = || {
        fs::read_dir(env.root().join(".rimg/tmp"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.metadata().map_or(0, |m| m.len()))
                    .sum::<u64>()
            })
            .unwrap_or(0)
    };
    while written() < 1 << 20 {
        assert!(
            Instant::now() < deadline,
            "the import never started writing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);

    assert_eq!(
        env.snapshot(),
        before,
        "a killed import tagged or committed something"
    );
    env.assert_consistent();
    assert!(
        !env.tmp_files().is_empty(),
        "the leftover is there for prune"
    );
    let pruned = env.ok(&["prune"]);
    assert!(pruned.contains("1 leftovers"), "{pruned}");
    assert!(env.tmp_files().is_empty());
    assert_eq!(env.snapshot(), before);
}

#[test]
fn concurrent_imports_lose_no_tag() {
    let env = Env::new();
    let tar = plain_tarball(&env);
    let children: Vec<_> = (0..8)
        .map(|i| {
            // Half of them import the same bytes: same blobs, racing renames.
            let source = if i % 2 == 0 {
                tar.clone()
            } else {
                let dir = env.path(&format!("rootfs-{i}"));
                rootfs(&dir);
                fs::write(dir.join("etc/id"), i.to_string()).unwrap();
                let own = env.path(&format!("rootfs-{i}.tar"));
                tar_dir(&dir, &own, &[]);
                own
            };
            env.cmd(&["import", source.to_str().unwrap(), &format!("race:{i}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listing = env.ok(&["images", "race"]);
    for i in 0..8 {
        assert!(
            listing
                .lines()
                .any(|l| l.split_whitespace().take(2).eq(["race", &i.to_string()])),
            "race:{i} lost:\n{listing}"
        );
    }
    env.assert_consistent();
}

#[test]
fn busybox_rootfs_reads_back_through_umoci_and_skopeo() {
    let env = Env::new();
    let layer = busybox_rootfs(&env.path("busybox.tar"));
    let xz = compress(&layer, "xz", "xz");
    env.ok(&[
        "import",
        "-c",
        "CMD [\"/bin/sh\"]",
        xz.to_str().unwrap(),
        "busybox:1.36",
    ]);
    assert_eq!(env.diff_id("busybox:1.36"), BUSYBOX_DIFF_ID);
    // A name with a registry and a path, as OCI tools must address it too.
    env.ok(&[
        "tag",
        "busybox:1.36",
        "registry.example.com:5000/team/bb:v1",
    ]);

    let root = env.root();
    let root = root.to_str().unwrap();
    if common::need_skopeo() {
        for name in ["busybox:1.36", "registry.example.com:5000/team/bb:v1"] {
            let out = Command::new("skopeo")
                .args(["inspect", &format!("oci:{root}:{name}")])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "skopeo: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(
                info["Layers"],
                serde_json::json!([BUSYBOX_DIFF_ID]),
                "{info}"
            );
            assert_eq!(info["Architecture"], "amd64");
        }
        let out = Command::new("skopeo")
            .args(["inspect", "--config", &format!("oci:{root}:busybox:1.36")])
            .output()
            .unwrap();
        let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!([BUSYBOX_DIFF_ID])
        );
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/sh"]));
    }
    if common::need_umoci() {
        let bundle = env.path("bundle");
        let mut umoci = Command::new("umoci");
        umoci.args(["unpack", "--image", &format!("{root}:busybox:1.36")]);
        if !is_root() {
            umoci.arg("--rootless");
        }
        sh(umoci.arg(&bundle));
        let rootfs = bundle.join("rootfs");
        // Every entry of the tarball is in the unpacked tree, and the
        // busybox binary has the same bytes.
        let listing = Command::new("tar").arg("-tf").arg(&layer).output().unwrap();
        let listing = String::from_utf8(listing.stdout).unwrap();
        let mut count = 0;
        for entry in listing.lines() {
            let path = rootfs.join(entry.trim_start_matches("./"));
            assert!(
                path.symlink_metadata().is_ok(),
                "{entry} is missing after umoci unpack"
            );
            count += 1;
        }
        assert!(count > 3, "{listing}");
        let extracted = Command::new("tar")
            .args(["-xOf"])
            .arg(&layer)
            .arg("./bin/busybox")
            .output()
            .unwrap();
        assert_eq!(
            fs::read(rootfs.join("bin/busybox")).unwrap(),
            extracted.stdout
        );
        let config: serde_json::Value =
            serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["process"]["args"], serde_json::json!(["/bin/sh"]));

        let other = env.path("bundle2");
        let mut umoci = Command::new("umoci");
        umoci.args([
            "unpack",
            "--image",
            &format!("{root}:registry.example.com:5000/team/bb:v1"),
        ]);
        if !is_root() {
            umoci.arg("--rootless");
        }
        sh(umoci.arg(&other));
        assert!(other.join("rootfs/bin/busybox").is_file());
    }
    env.assert_consistent();
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
