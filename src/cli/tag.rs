//! `rimg tag SOURCE TARGET`: give an image another name, as `docker tag`.

use anyhow::{Context as _, Result};

use rimg::reference::Reference;

use super::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image: a name, an ID or an ID prefix.
    source: String,
    /// The new name, REPO[:TAG].
    target: String,
}

pub fn run(args: Args, ctx: &Context) -> Result<()> {
    let target: Reference = args.target.parse()?;
    let store = ctx.store()?;
    let record = store.resolve_record(&args.source)?;

    let mut index = store.edit_index()?;
    let manifest = rimg::image::Descriptor::new(
        rimg::image::MEDIA_OCI_MANIFEST,
        record.manifest.clone(),
        record.manifest_size,
    );
    index.set_tag(&target, &manifest);
    index
        .commit()
        .with_context(|| format!("tagging {} as {}", args.source, target.familiar()))
}
