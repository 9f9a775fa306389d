//! `rimg save [-o FILE] [--compress ALG] IMAGE...`: write images to one
//! archive, as `docker save`, in the shape Docker 25+ writes.
//!
//! An image named by a tag is saved under that tag; one named by its ID
//! (or an ID prefix) is saved untagged, as Docker does. Without `-o` the
//! archive goes to stdout, which must not be a terminal. With `-o` it is
//! written to a temporary file next to FILE and renamed over it only once
//! complete, so a failed save never leaves a half archive under that name.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use rimg::archive::SaveImage;
use rimg::compress::{Compression, Encoder};
use rimg::store::Store;

use super::{Context, Hinted};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Compress the whole archive: gzip, zstd, bzip2 or xz.
    #[arg(long, value_name = "ALG")]
    compress: Option<Compression>,

    /// Images to save: names, IDs or ID prefixes.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
}

pub fn run(args: Args, ctx: &Context) -> Result<()> {
    let compression = args.compress.unwrap_or(Compression::None);
    if args
        .images
        .iter()
        .any(|i| rimg::engine::parse_source(i).is_some())
    {
        return from_engine(&args, compression, ctx);
    }
    let store = ctx.store()?;
    let images = select(&store, &args.images)?;
    emit(args.output.as_deref(), |out| {
        write(&store, &images, compression, out, ctx)?;
        Ok(())
    })
}

/// `rimg save docker-daemon:NAME...`: the engine's own export, streamed
/// through (and compressed when asked). The engine writes an archive every
/// reader of ours and Docker's loads.
fn from_engine(args: &Args, compression: Compression, ctx: &Context) -> Result<()> {
    let names = args
        .images
        .iter()
        .map(|i| {
            rimg::engine::parse_source(i).ok_or_else(|| {
                anyhow::Error::from(Hinted {
                    message: format!("cannot save {i:?} together with images of the Docker Engine"),
                    hint: "save images of the store and of the engine in two archives".into(),
                })
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let engine = super::connect_engine()?;
    let mut export = engine.export_all(&names).map_err(super::engine_error)?;

    let progress = ctx.progress();
    let bar = progress.bytes("reading export", None);
    emit(args.output.as_deref(), |out| {
        let mut encoder = Encoder::new(BufWriter::with_capacity(1 << 20, out), compression)?;
        let mut reader = rimg::progress::ReadProgress {
            inner: &mut export,
            bar: &bar,
        };
        io::copy(&mut reader, &mut encoder).context("copying the Docker Engine's export")?;
        encoder.finish()?.flush().context("finishing the archive")?;
        Ok(())
    })?;
    bar.finish("done");
    Ok(())
}

/// A temporary file next to `path`, to rename over it once complete.
fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    tempfile::Builder::new()
        .prefix(".rimg-save-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))
}

/// Resolves the names the user gave, folding names of the same image.
fn select(store: &Store, names: &[String]) -> Result<Vec<SaveImage>> {
    let mut selected: Vec<SaveImage> = Vec::new();
    for name in names {
        let image = store.resolve(name)?;
        let tag = image
            .tags
            .iter()
            .find(|t| name.parse().ok().as_ref() == Some(*t))
            .cloned();
        match selected
            .iter_mut()
            .find(|s| s.image.id == image.id && s.image.manifest_digest == image.manifest_digest)
        {
            Some(existing) => existing
                .tags
                .extend(tag.filter(|t| !existing.tags.contains(t))),
            None => selected.push(SaveImage {
                tags: tag.into_iter().collect(),
                image,
            }),
        }
    }
    Ok(selected)
}

fn write<W: Write>(
    store: &Store,
    images: &[SaveImage],
    compression: Compression,
    out: W,
    ctx: &Context,
) -> Result<W> {
    let total = images
        .iter()
        .map(|s| s.image.size() + s.image.manifest.config.size)
        .sum();
    let progress = ctx.progress();
    let bar = progress.bytes("saving", Some(total));
    let out = BufWriter::with_capacity(1 << 20, out);
    // Uncompressed, the writer stays a plain BufWriter over a file or a
    // pipe, which lets std::io::copy hand blob copies to the kernel.
    let out = if compression == Compression::None {
        rimg::archive::save(store, images, out, |n| bar.inc(n))?
    } else {
        let encoder = Encoder::new(out, compression)?;
        rimg::archive::save(store, images, encoder, |n| bar.inc(n))?
            .finish()
            .context("finishing the compressed stream")?
    };
    let out = out
        .into_inner()
        .map_err(|e| e.into_error())
        .context("finishing the archive")?;
    bar.finish("done");
    Ok(out)
}

/// Sends what `write` produces to FILE, through a temporary file renamed
/// over it only once complete, or to stdout, which must not be a terminal.
fn emit(output: Option<&Path>, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let Some(path) = output else {
        let stdout = io::stdout();
        if stdout.is_terminal() {
            return Err(Hinted {
                message: "refusing to write an archive to a terminal".into(),
                hint: "use -o FILE or redirect stdout".into(),
            }
            .into());
        }
        return write(&mut stdout.lock());
    };
    let (mut file, temp_path) = temp_beside(path)?.into_parts();
    write(&mut file)?;
    file.sync_all()
        .with_context(|| format!("syncing {}", temp_path.display()))?;
    temp_path
        .persist(path)
        .with_context(|| format!("renaming the archive to {}", path.display()))?;
    Ok(())
}
