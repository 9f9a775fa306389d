//! `rimg import`: a rootfs tarball becomes a one-layer image, as
//! `docker import`. Prints the new image ID on stdout.

use anyhow::Result;

use rimg::import::{self, Options, Source};
use rimg::reference::Reference;

use super::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Set the history comment (default: "Imported from SOURCE").
    #[arg(short, long, value_name = "MSG")]
    message: Option<String>,

    /// Apply a Dockerfile instruction to the config: CMD, ENTRYPOINT, ENV,
    /// EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME or WORKDIR.
    /// May be repeated.
    #[arg(short, long = "change", value_name = "CHANGE")]
    change: Vec<String>,

    /// The image's platform, OS/ARCH[/VARIANT] (default: this host's).
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,

    /// The tarball: a file, an http(s) URL, or - for stdin. Plain, gzip,
    /// bzip2, xz or zstd, detected from the bytes.
    #[arg(value_name = "SOURCE")]
    source: String,

    /// Tag the new image REPO[:TAG].
    #[arg(value_name = "REPO[:TAG]")]
    tag: Option<String>,
}

pub fn run(args: Args, ctx: &Context) -> Result<()> {
    let tag = args
        .tag
        .as_deref()
        .map(str::parse::<Reference>)
        .transpose()?;
    let options = Options {
        message: args.message,
        changes: args.change,
        platform: args.platform,
        tag,
    };
    let store = ctx.store()?;
    let source = Source::parse(&args.source);
    let imported = import::import(&store, &source, &options, &ctx.progress())?;
    println!("{}", imported.id);
    Ok(())
}
