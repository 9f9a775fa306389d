//! `rimg id`: print this node's identity fingerprint (creating the
//! identity on first use), for `rimg trust add` on the other end.

use std::path::PathBuf;

use anyhow::Result;

use rimg::transfer::identity::{Identity, default_config_dir};

use super::Context;

/// `--config DIR`, shared by every command that uses identity or trust.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// Identity and trust directory. Default: $RIMG_CONFIG, else
    /// ~/.config/rimg (/etc/rimg as root).
    #[arg(long, value_name = "DIR", env = "RIMG_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn dir(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(default_config_dir)
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

pub fn run(args: Args, _ctx: &Context) -> Result<()> {
    let identity = Identity::load_or_create(&args.config.dir())?;
    println!("{}", identity.fingerprint());
    Ok(())
}
