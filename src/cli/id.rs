//! `rimg id`: print this node's identity fingerprint (creating the
//! identity on first use), for `rimg trust add` on the other end.

use anyhow::Result;

use rimg::transfer::identity::Identity;

use super::Context;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args, ctx: &Context) -> Result<()> {
    let identity = Identity::load_or_create(&ctx.config_dir())?;
    println!("{}", identity.fingerprint());
    Ok(())
}
