//! `rimg prune`: remove blobs that no image reaches, and what interrupted
//! writes left in the store's temporary area.

use anyhow::Result;

use super::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also delete partly received blobs that a resumed transfer would
    /// continue (kept for 24 hours after their last write otherwise)
    #[arg(long)]
    partial: bool,
}

pub fn run(args: Args, ctx: &Context) -> Result<()> {
    let store = ctx.store()?;
    let report = match store.collect_garbage(false, args.partial)? {
        Some(report) => report,
        None => {
            ctx.status("waiting for writers to the store to finish...");
            store
                .collect_garbage(true, args.partial)?
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
    if report.partial_kept > 0 {
        println!(
            "Kept {} partly received blobs ({}) for a resumed transfer (prune --partial deletes them)",
            report.partial_kept,
            rimg::units::human_size(report.partial_bytes)
        );
    }
    Ok(())
}
