//! `rimg inspect IMAGE...`: a JSON array of image details with Docker's
//! field names (`Id`, `RepoTags`, `Config`, `RootFS`...). Images that are
//! not found are reported on stderr after the array, with exit status 1.

use anyhow::Result;
use serde_json::{Map, Value, json};

use rimg::store::Image;

use super::{Context, Exit};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Images: names, IDs or ID prefixes.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
}

pub fn run(args: Args, ctx: &Context) -> Result<()> {
    let store = ctx.store()?;
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in &args.images {
        match store.resolve(name) {
            Ok(image) => found.push(describe(&image)),
            Err(e) => missing.push(e),
        }
    }

    let mut text = serde_json::to_string_pretty(&Value::Array(found))?;
    text.push('\n');
    super::print_stdout(&text)?;
    if missing.is_empty() {
        return Ok(());
    }
    for e in &missing {
        eprintln!("error: {e}");
    }
    Err(Exit(1).into())
}

/// The run config in Docker's field order: the fields Docker always
/// prints (with their empty values when the image has none), the optional
/// ones when present, then any field Docker does not know, as it is.
fn run_config(config: Option<&Value>) -> Value {
    // Each field with its empty value as JSON text, or `None` when Docker
    // leaves the field out unless it is set.
    const ORDER: [(&str, Option<&str>); 25] = [
        ("Hostname", Some(r#""""#)),
        ("Domainname", Some(r#""""#)),
        ("User", Some(r#""""#)),
        ("AttachStdin", Some("false")),
        ("AttachStdout", Some("false")),
        ("AttachStderr", Some("false")),
        ("ExposedPorts", None),
        ("Tty", Some("false")),
        ("OpenStdin", Some("false")),
        ("StdinOnce", Some("false")),
        ("Env", Some("null")),
        ("Cmd", Some("null")),
        ("Healthcheck", None),
        ("ArgsEscaped", None),
        ("Image", Some(r#""""#)),
        ("Volumes", Some("null")),
        ("WorkingDir", Some(r#""""#)),
        ("Entrypoint", Some("null")),
        ("NetworkDisabled", None),
        ("MacAddress", None),
        ("OnBuild", Some("null")),
        ("Labels", Some("null")),
        ("StopSignal", None),
        ("StopTimeout", None),
        ("Shell", None),
    ];
    let empty = Map::new();
    let own = match config {
        Some(Value::Object(own)) => own,
        _ => &empty,
    };
    let mut fields = Map::new();
    for (key, default) in ORDER {
        match (own.get(key), default) {
            (Some(value), _) => {
                fields.insert(key.into(), value.clone());
            }
            (None, Some(empty)) => {
                let empty = serde_json::from_str(empty).expect("the empty values are JSON");
                fields.insert(key.into(), empty);
            }
            (None, None) => {}
        }
    }
    for (key, value) in own {
        if !fields.contains_key(key) {
            fields.insert(key.clone(), value.clone());
        }
    }
    Value::Object(fields)
}

fn describe(image: &Image) -> Value {
    // The raw config, so that fields the typed view does not know survive.
    let raw: Value = serde_json::from_slice(&image.config_bytes).unwrap_or(Value::Null);
    let text = |key: &str| raw.get(key).and_then(Value::as_str).unwrap_or_default();

    let mut out = Map::new();
    out.insert("Id".into(), json!(image.id));
    out.insert(
        "RepoTags".into(),
        json!(image.tags.iter().map(|t| t.familiar()).collect::<Vec<_>>()),
    );
    out.insert("RepoDigests".into(), json!([]));
    out.insert("Parent".into(), json!(""));
    out.insert("Comment".into(), json!(comment(image, &raw)));
    out.insert("Created".into(), json!(text("created")));
    out.insert("DockerVersion".into(), json!(text("docker_version")));
    out.insert("Author".into(), json!(text("author")));
    out.insert("Config".into(), run_config(raw.get("config")));
    out.insert("Architecture".into(), json!(image.config.architecture));
    if let Some(variant) = &image.config.variant {
        out.insert("Variant".into(), json!(variant));
    }
    out.insert("Os".into(), json!(image.config.os));
    out.insert("Size".into(), json!(image.size()));
    out.insert(
        "RootFS".into(),
        json!({
            "Type": if image.config.rootfs.kind.is_empty() { "layers" } else { &image.config.rootfs.kind },
            "Layers": image.config.rootfs.diff_ids,
        }),
    );
    out.insert(
        "Descriptor".into(),
        json!({
            "mediaType": image.manifest.media_type.as_deref().unwrap_or(rimg::image::MEDIA_OCI_MANIFEST),
            "digest": image.manifest_digest,
            "size": image.manifest.to_bytes().len(),
        }),
    );
    Value::Object(out)
}

/// Docker's `Comment`: the config's top-level comment (which `docker
/// import` writes), else the last history entry's.
fn comment(image: &Image, raw: &Value) -> String {
    raw.get("comment")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| image.config.comment())
}
