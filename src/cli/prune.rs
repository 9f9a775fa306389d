//! `rimg prune`: remove blobs that no image reaches, and what interrupted
//! writes left in the store's temporary area.

use anyhow::Result;

use super::Context;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args, ctx: &Context) -> Result<()> {
    let store = ctx.store()?;
    let report = match store.collect_garbage(false)? {
        Some(report) => report,
        None => {
            ctx.status("waiting for writers to the store to finish...");
            store
                .collect_garbage(true)?
                .expect("a collection that waits always runs")
        }
    };
    println!(
        "Deleted {} blobs and {} leftovers of interrupted writes",
        report.blobs, report.leftovers
    );
    println!(
        "Total reclaimed space: {}",
        rimg::units::human_size(report.bytes)
    );
    Ok(())
}
