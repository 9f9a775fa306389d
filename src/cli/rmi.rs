//! `rimg rmi IMAGE...` (also `rimg image rm`): untag images, and delete an
//! image once no tag names it, as `docker rmi`. Blobs that nothing reaches
//! any more are removed afterwards, unless another rimg is writing to the
//! store at that moment (then the next `prune` removes them).
//!
//! Prints `Untagged: NAME` and `Deleted: ID` lines on stdout, like Docker.

use anyhow::{Result, anyhow};

use rimg::digest::Digest;
use rimg::reference::Reference;
use rimg::store::{Store, StoreError};

use super::{Context, Exit, Hinted};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Images: names, IDs or ID prefixes.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,

    /// Remove an image by ID even when several names refer to it.
    #[arg(short, long)]
    force: bool,
}

pub fn run(args: Args, ctx: &Context) -> Result<()> {
    let store = ctx.store()?;
    let mut out = String::new();
    let mut deleted_layers = Vec::new();
    let mut failed = 0;
    for name in &args.images {
        match remove(&store, name, args.force, &mut out) {
            Ok(layers) => deleted_layers.extend(layers),
            Err(e) => {
                super::print_stdout(&std::mem::take(&mut out))?;
                super::report_error(&e);
                failed += 1;
            }
        }
    }

    if !deleted_layers.is_empty() {
        match store.collect_garbage(false, false)? {
            Some(_) => {
                deleted_layers.sort();
                deleted_layers.dedup();
                for layer in deleted_layers.iter().filter(|l| !store.has_blob(l)) {
                    out.push_str(&format!("Deleted: {layer}\n"));
                }
            }
            None => ctx.status(
                "another rimg is writing to the store: unreferenced blobs are left for `rimg prune`",
            ),
        }
    }
    super::print_stdout(&out)?;
    if failed > 0 {
        return Err(Exit(1).into());
    }
    Ok(())
}

/// Removes one name or image under the index lock. Returns the layers of
/// a deleted image, to report those that garbage collection removes.
fn remove(store: &Store, name: &str, force: bool, out: &mut String) -> Result<Vec<Digest>> {
    let mut index = store.edit_index()?;
    let record = store.resolve_record(name)?;
    let by_name = (!name.starts_with("sha256:"))
        .then(|| name.parse::<Reference>().ok())
        .flatten()
        .filter(|r| record.tags.contains(r));

    let untag: Vec<Reference> = match by_name {
        Some(reference) => vec![reference],
        None if record.tags.len() > 1 && !force => {
            return Err(Hinted {
                message: format!(
                    "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    record.id.short()
                ),
                hint: "remove it by name, or use -f to remove every name".into(),
            }
            .into());
        }
        None => record.tags.clone(),
    };
    for reference in &untag {
        index.untag(reference);
        out.push_str(&format!("Untagged: {}\n", reference.familiar()));
    }

    let still_named = record.tags.iter().any(|t| !untag.contains(t));
    if still_named {
        index.commit()?;
        return Ok(Vec::new());
    }
    index.remove_image(&record.manifest);
    index.commit()?;
    out.push_str(&format!("Deleted: {}\n", record.id));

    let layers = match store.load_image(&record.manifest, Vec::new()) {
        Ok(image) => image
            .manifest
            .layers
            .into_iter()
            .map(|l| l.digest)
            .collect(),
        Err(StoreError::MissingBlob(_)) => Vec::new(),
        Err(e) => return Err(anyhow!(e)),
    };
    Ok(layers)
}
