//! The commands that read and edit the store's image list, through the
//! real binary: `images`/`image ls`, `history`, `inspect`, `tag`, `rmi`,
//! `prune`, and the `image` group.

mod common;

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use common::tarballs::{BUSYBOX_DIFF_ID, busybox_rootfs, rootfs, tar_dir};

/// Splits a Docker table line into cells (columns are 3+ spaces apart;
/// cells themselves hold single spaces at most, e.g. "5 minutes ago").
fn cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// An env with the busybox rootfs imported as `bb:1`; returns its ID.
fn with_busybox() -> (Env, String) {
    let env = Env::new();
    let layer = busybox_rootfs(&env.path("busybox.tar"));
    let id = env
        .ok(&["import", layer.to_str().unwrap(), "bb:1"])
        .trim()
        .to_string();
    (env, id)
}

#[test]
fn images_table_filters_and_formats() {
    let (env, id) = with_busybox();
    let short = &id["sha256:".len()..][..12];
    env.ok(&["tag", "bb:1", "docker.io/library/other:latest"]);
    env.ok(&["image", "tag", short, "me/app:2"]);

    let out = env.ok(&["images"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        cells(lines[0]),
        ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
        "{out}"
    );
    // Docker's tabwriter: a column is its widest cell plus three spaces.
    assert!(
        lines[0].starts_with("REPOSITORY   TAG       IMAGE ID       CREATED"),
        "{out}"
    );
    let rows: Vec<Vec<String>> = lines[1..].iter().map(|l| cells(l)).collect();
    assert_eq!(rows.len(), 3, "{out}");
    let names: Vec<(String, String)> = rows.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    for expected in [("bb", "1"), ("other", "latest"), ("me/app", "2")] {
        assert!(
            names.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} in {out}"
        );
    }
    for row in &rows {
        assert_eq!(row[2], short);
        assert!(row[3].ends_with(" ago"), "{row:?}");
        assert_eq!(row[4], "2MB", "1996800 bytes as Docker shows them");
    }

    // image ls is the same command; -q lists one ID per row.
    let quiet = env.ok(&["image", "ls", "-q"]);
    assert_eq!(quiet, format!("{short}\n{short}\n{short}\n"));
    assert_eq!(env.ok(&["images", "-q", "-a"]), quiet);
    assert_eq!(
        env.ok(&["image", "list", "-q", "--no-trunc", "bb"]),
        format!("{id}\n")
    );
    let wide = env.ok(&["images", "--no-trunc"]);
    assert!(wide.contains(&id), "{wide}");

    // Filters: a repository, a full name, a tag, a glob.
    let rows_for = |filter: &str| {
        let out = env.ok(&["images", filter]);
        out.lines().skip(1).map(cells).collect::<Vec<_>>()
    };
    assert_eq!(rows_for("bb").len(), 1);
    assert_eq!(rows_for("docker.io/library/bb:1").len(), 1);
    assert_eq!(rows_for("bb:2").len(), 0);
    assert_eq!(rows_for("me/*").len(), 1);
    assert_eq!(rows_for("*").len(), 2, "* does not cross a /");

    // --format json: one object per line with Docker's keys.
    let json = env.ok(&["images", "--format", "json"]);
    let objects: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 3);
    for o in &objects {
        assert_eq!(o["ID"], short);
        assert_eq!(o["Size"], "2MB");
        assert!(o["CreatedSince"].as_str().unwrap().ends_with(" ago"));
        assert!(o["CreatedAt"].as_str().unwrap().ends_with("+0000 UTC"));
        assert!(o["Repository"].is_string() && o["Tag"].is_string());
    }
    let err = env.fails(&["images", "--format", "{{.ID}}"]);
    assert!(err.contains("unsupported --format"), "{err}");

    // A bad filter is an error, not an empty list.
    let err = env.fails(&["images", "Bad Name"]);
    assert!(err.contains("invalid reference"), "{err}");
}

#[test]
fn untagged_images_show_as_none() {
    let (env, id) = with_busybox();
    let dir = env.path("rootfs");
    rootfs(&dir);
    let tar = env.path("rootfs.tar");
    tar_dir(&dir, &tar, &[]);
    // Moving bb:1 to another image leaves the first one dangling.
    env.ok(&["import", tar.to_str().unwrap(), "bb:1"]);
    let out = env.ok(&["images"]);
    let dangling: Vec<_> = out.lines().filter(|l| l.starts_with("<none>")).collect();
    assert_eq!(dangling.len(), 1, "{out}");
    assert_eq!(cells(dangling[0])[..3], ["<none>", "<none>", &id[7..19]]);
    // A filter shows only named images.
    assert!(!env.ok(&["images", "bb"]).contains("<none>"));
    env.assert_consistent();
}

#[test]
fn history_of_an_imported_image() {
    let (env, id) = with_busybox();
    let out = env.ok(&["history", "bb:1"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        cells(lines[0]),
        ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        "{out}"
    );
    assert_eq!(lines.len(), 2, "{out}");
    let row = cells(lines[1]);
    assert_eq!(row[0], &id[7..19]);
    assert!(row[1].ends_with(" ago"));
    assert_eq!(row[2], "2MB", "CREATED BY is empty for an import: {row:?}");
    assert!(row[3].starts_with("Imported from "), "{row:?}");

    assert_eq!(
        env.ok(&["history", "-q", "bb:1"]),
        format!("{}\n", &id[7..19])
    );
    assert_eq!(
        env.ok(&["image", "history", "-q", "--no-trunc", &id[7..20]]),
        format!("{id}\n")
    );
    let json = env.ok(&["history", "--format", "json", "bb:1"]);
    let entry: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(entry["Size"], "2MB");
    assert_eq!(entry["CreatedBy"], "");

    let err = env.fails(&["history", "nope"]);
    assert!(err.contains("No such image: nope"), "{err}");
}

/// Copies the corpus's edge:1 (9 history entries, 4 of them empty) into the
/// store with skopeo, which also proves the store is a layout OCI tools
/// write to as well as read.
#[test]
fn history_with_missing_rows_and_empty_layers() {
    if !common::need_skopeo() {
        return;
    }
    let env = Env::new();
    env.ok(&["images"]);
    let root = env.root();
    common::tarballs::sh(Command::new("skopeo").args([
        "copy",
        "-q",
        &format!(
            "docker-archive:{}",
            common::corpus("d20-edge.tar").display()
        ),
        &format!("oci:{}:edge:1", root.display()),
    ]));

    let out = env.ok(&["history", "edge:1"]);
    let rows: Vec<Vec<String>> = out.lines().skip(1).map(cells).collect();
    assert_eq!(rows.len(), 9, "{out}");
    assert!(rows[0][0].len() == 12, "the top row has the ID: {out}");
    assert!(rows[1..].iter().all(|r| r[0] == "<missing>"), "{out}");
    let empty = rows
        .iter()
        .filter(|r| r.contains(&"0B".to_string()))
        .count();
    assert_eq!(empty, 4, "{out}");
    // Long CREATED BY texts are cut to 45 characters unless --no-trunc.
    assert!(out.contains('…'), "{out}");
    let full = env.ok(&["history", "--no-trunc", "edge:1"]);
    assert!(!full.contains('…'), "{full}");
    let inspect = env.inspect("edge:1");
    assert_eq!(inspect["RootFS"]["Layers"][0], BUSYBOX_DIFF_ID);
    assert_eq!(inspect["Config"]["WorkingDir"], "/data");
    assert_eq!(
        inspect["Config"]["Labels"]["org.example.purpose"],
        "edge cases"
    );
    env.assert_consistent();
}

#[test]
fn inspect_by_name_id_and_prefix() {
    let (env, id) = with_busybox();
    for name in [
        "bb:1",
        "docker.io/library/bb:1",
        &id,
        &id[7..],
        &id[7..19],
        &id[..15],
    ] {
        let info = env.inspect(name);
        assert_eq!(info["Id"], id, "{name}");
        assert_eq!(info["RepoTags"], serde_json::json!(["bb:1"]));
        assert_eq!(info["RootFS"]["Type"], "layers");
        assert_eq!(
            info["RootFS"]["Layers"],
            serde_json::json!([BUSYBOX_DIFF_ID])
        );
        assert_eq!(info["Size"], 1996800);
        assert_eq!(info["Os"], "linux");
        assert!(info["Created"].as_str().unwrap().ends_with('Z'));
        assert!(info["Config"].as_object().unwrap().contains_key("Cmd"));
    }

    // Several at once; a missing one is reported after the others.
    let out = env.run(&["image", "inspect", "bb:1", "nope:1", &id[7..19]]);
    assert_eq!(out.status.code(), Some(1));
    let found: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found.len(), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No such image: nope:1"), "{stderr}");

    let out = env.run(&["inspect", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

#[test]
fn rmi_untags_then_deletes() {
    let (env, id) = with_busybox();
    env.ok(&["tag", "bb:1", "copy:1"]);
    let before = env.snapshot();

    // By ID while two names refer to it: refused without -f.
    let err = env.fails(&["rmi", &id[7..19]]);
    assert!(
        err.contains("must be forced") && err.contains("multiple repositories"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    assert_eq!(env.snapshot(), before);

    // By name: only that name goes.
    assert_eq!(env.ok(&["rmi", "copy:1"]), "Untagged: copy:1\n");
    assert!(env.inspect("bb:1")["Id"] == id);

    // By ID with one name left: allowed, and the image and its blobs go.
    let out = env.ok(&["rmi", &id[7..19]]);
    assert_eq!(
        out,
        format!("Untagged: bb:1\nDeleted: {id}\nDeleted: {BUSYBOX_DIFF_ID}\n"),
        "{out}"
    );
    assert!(env.snapshot().blobs.is_empty());
    env.assert_consistent();
}

#[test]
fn rmi_by_name_resolves_like_docker() {
    let (env, id) = with_busybox();
    env.ok(&["tag", "bb:1", "box:1"]);
    env.ok(&["rmi", "bb:1"]);
    // `box` means box:latest, which does not exist: nothing happens. (Not
    // `bb`: a name made of hex digits is also an ID prefix, as in Docker,
    // and 1 in 256 image IDs starts with bb.)
    let before = env.snapshot();
    let err = env.fails(&["rmi", "box"]);
    assert!(err.contains("No such image: box"), "{err}");
    assert_eq!(env.snapshot(), before);

    let out = env.ok(&["rmi", "box:1"]);
    assert_eq!(
        out,
        format!("Untagged: box:1\nDeleted: {id}\nDeleted: {BUSYBOX_DIFF_ID}\n")
    );
    let blobs = env.snapshot().blobs;
    assert!(blobs.is_empty(), "every blob is gone: {blobs:?}");
    env.assert_consistent();
}

#[test]
fn rmi_force_by_id_and_shared_layers() {
    let (env, id) = with_busybox();
    env.ok(&["tag", "bb:1", "copy:1"]);
    // A second image with the same layer (another message: another config).
    let layer = env.path("busybox.tar");
    let other = env.ok(&[
        "import",
        "-m",
        "second",
        layer.to_str().unwrap(),
        "second:1",
    ]);
    let other = other.trim();

    let out = env.ok(&["image", "rm", "-f", &id]);
    assert_eq!(
        out,
        format!("Untagged: bb:1\nUntagged: copy:1\nDeleted: {id}\n"),
        "{out}"
    );
    // The layer is still used by second:1.
    assert_eq!(env.blob(BUSYBOX_DIFF_ID).len(), 1996800);
    assert_eq!(env.inspect("second:1")["Id"], other);
    env.assert_consistent();

    // Several arguments: the missing one fails, the rest are removed.
    let out = env.run(&["rmi", "nope", "second:1"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("Deleted: {other}")), "{stdout}");
    assert!(
        stdout.contains(&format!("Deleted: {BUSYBOX_DIFF_ID}")),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such image: nope"));
    assert!(env.snapshot().blobs.is_empty());
    env.assert_consistent();
}

#[test]
fn rmi_leaves_blobs_to_prune_while_an_import_runs() {
    let (env, id) = with_busybox();
    // An import that holds the store's writer lock until its stdin ends.
    let mut writer = env
        .cmd(&["import", "-", "slow:1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    stdin
        .write_all(&fs::read(env.path("busybox.tar")).unwrap()[..4096])
        .unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.tmp_files().is_empty() {
        assert!(Instant::now() < deadline, "the import never started");
        std::thread::sleep(Duration::from_millis(20));
    }

    let out = env.cmd(&["rmi", "bb:1"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("Untagged: bb:1\nDeleted: {id}\n"),
        "no blob is deleted while a writer is active"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("rimg prune"));
    assert_eq!(env.blob(BUSYBOX_DIFF_ID).len(), 1996800);

    writer.kill().unwrap();
    writer.wait().unwrap();
    drop(stdin);
    env.assert_consistent();
    let out = env.ok(&["prune"]);
    assert!(out.contains("Deleted 3 blobs and 1 leftovers"), "{out}");
    assert!(env.snapshot().blobs.is_empty());
}

#[test]
fn tag_and_prune_through_the_image_group() {
    let (env, id) = with_busybox();
    env.ok(&["image", "tag", "bb:1", "localhost:5000/team/bb:v2"]);
    assert_eq!(
        env.inspect("localhost:5000/team/bb:v2")["RepoTags"],
        serde_json::json!(["bb:1", "localhost:5000/team/bb:v2"])
    );
    let err = env.fails(&["tag", "nope", "x:1"]);
    assert!(err.contains("No such image"), "{err}");
    let err = env.fails(&["tag", "bb:1", "UPPER:1"]);
    assert!(err.contains("invalid reference"), "{err}");

    // import is in the group too.
    let layer = env.path("busybox.tar");
    let again = env.ok(&[
        "image",
        "import",
        "-m",
        "again",
        layer.to_str().unwrap(),
        "g:1",
    ]);
    assert_eq!(env.inspect("g:1")["Id"], again.trim());

    // Nothing to prune in a consistent store.
    let out = env.ok(&["image", "prune"]);
    assert!(out.contains("Deleted 0 blobs and 0 leftovers"), "{out}");
    assert_eq!(env.inspect(&id)["Id"], id);
}
