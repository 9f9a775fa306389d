//! `rimg check`: re-hash every blob and follow every reference from the
//! index. Prints each problem on stdout and exits 1 when there is one.

use anyhow::Result;

use super::{Context, Exit};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args, ctx: &Context) -> Result<()> {
    let store = ctx.store()?;
    let problems = store.check()?;
    if problems.is_empty() {
        ctx.status("store is consistent");
        return Ok(());
    }
    for problem in &problems {
        println!("{problem}");
    }
    eprintln!(
        "error: {} problem(s) found in {}",
        problems.len(),
        store.root().display()
    );
    Err(Exit(1).into())
}
