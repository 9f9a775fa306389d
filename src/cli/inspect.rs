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

/// The run config with every field Docker always prints, then whatever the
/// image's config holds (unknown fields included).
fn run_config(config: Option<&Value>) -> Value {
    let mut fields = Map::new();
    for (key, value) in [
        ("Hostname", json!("")),
        ("Domainname", json!("")),
        ("User", json!("")),
        ("AttachStdin", json!(false)),
        ("AttachStdout", json!(false)),
        ("AttachStderr", json!(false)),
        ("Tty", json!(false)),
        ("OpenStdin", json!(false)),
        ("StdinOnce", json!(false)),
        ("Env", Value::Null),
        ("Cmd", Value::Null),
        ("Image", json!("")),
        ("Volumes", Value::Null),
        ("WorkingDir", json!("")),
        ("Entrypoint", Value::Null),
        ("OnBuild", Value::Null),
        ("Labels", Value::Null),
    ] {
        fields.insert(key.into(), value);
    }
    if let Some(Value::Object(own)) = config {
        for (key, value) in own {
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
