//! `rimg load [-i FILE]`: load the images of an archive, as `docker load`.
//!
//! Prints `Loaded image: NAME:TAG` for each tag and `Loaded image ID:
//! sha256:...` for an image without one, on stdout as Docker does. The
//! archive comes from a file or stdin, in any of the shapes and
//! compressions `rimg::archive` reads.

use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use rimg::progress::ReadProgress;

use super::{Context, Hinted};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read the archive from FILE instead of stdin.
    #[arg(short, long, value_name = "FILE", conflicts_with = "from")]
    input: Option<PathBuf>,

    /// Load an image from the local Docker Engine instead:
    /// `docker-daemon:NAME[:TAG]` or `docker-daemon:ID`.
    #[arg(long, value_name = "SOURCE")]
    from: Option<String>,
}

pub fn run(args: Args, ctx: &Context) -> Result<()> {
    let store = ctx.store()?;
    if let Some(source) = &args.from {
        return from_engine(&store, source, ctx);
    }
    let (input, total, label): (Box<dyn Read + Send>, _, _) = match &args.input {
        Some(path) => {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let len = file.metadata().ok().map(|m| m.len());
            (Box::new(file), len, path.display().to_string())
        }
        None => {
            if io::stdin().is_terminal() {
                return Err(Hinted {
                    message: "no archive to load: stdin is a terminal".into(),
                    hint: "give the archive with -i FILE or pipe it in".into(),
                }
                .into());
            }
            (Box::new(io::stdin()), None, "stdin".to_string())
        }
    };

    let progress = ctx.progress();
    let bar = progress.bytes("loading", total);
    let reader = ReadProgress {
        inner: BufReader::with_capacity(1 << 20, input),
        bar: &bar,
    };
    let loaded = rimg::archive::load(&store, reader).with_context(|| format!("loading {label}"))?;
    bar.finish("done");
    report(&loaded, ctx);
    Ok(())
}

/// `--from docker-daemon:NAME`: the engine's export, streamed through the
/// same reader as a file.
fn from_engine(store: &rimg::store::Store, source: &str, ctx: &Context) -> Result<()> {
    let Some(name) = rimg::engine::parse_source(source) else {
        return Err(Hinted {
            message: format!("unknown image source {source:?}"),
            hint: "name an image in the local Docker Engine as docker-daemon:NAME[:TAG]".into(),
        }
        .into());
    };
    let engine = super::connect_engine()?;
    let image = engine.inspect(name).map_err(super::engine_error)?;
    let export = engine.export(name).map_err(super::engine_error)?;

    let progress = ctx.progress();
    // The export is a little larger than the layers (tar headers, JSON).
    let bar = progress.bytes("reading export", Some(image.size));
    let reader = ReadProgress {
        inner: BufReader::with_capacity(1 << 20, export),
        bar: &bar,
    };
    let loaded = rimg::archive::load(store, reader)
        .with_context(|| format!("loading {name} from the Docker Engine"))?;
    bar.finish("done");
    report(&loaded, ctx);
    Ok(())
}

fn report(loaded: &[rimg::archive::Loaded], ctx: &Context) {
    for image in loaded {
        for (tag, old) in &image.moved {
            ctx.status(&format!(
                "The image {} already exists, renaming the old one with ID {old} to empty string",
                tag.familiar()
            ));
        }
        if image.tags.is_empty() {
            println!("Loaded image ID: {}", image.id);
        }
        for tag in &image.tags {
            println!("Loaded image: {}", tag.familiar());
        }
    }
}
