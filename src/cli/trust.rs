//! `rimg trust add|ls|rm`: the senders a listener admits
//! (`authorized_peers` in the config directory).

use anyhow::{Result, bail};

use rimg::digest::Digest;
use rimg::transfer::identity::{TrustEntry, TrustFile};

use super::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Admit a sender: its fingerprint is what `rimg id` prints there.
    Add {
        /// A name to remember it by (default: the fingerprint's first 12
        /// hex digits).
        #[arg(long)]
        name: Option<String>,
        fingerprint: String,
    },
    /// List admitted senders: FINGERPRINT NAME per line.
    Ls,
    /// Stop admitting a sender, by name or fingerprint.
    Rm { what: String },
}

pub fn run(args: Args, ctx: &Context) -> Result<()> {
    let file = TrustFile::authorized(&ctx.config_dir());
    match args.action {
        Action::Add { name, fingerprint } => {
            let fingerprint: Digest = fingerprint.parse()?;
            let label = name.unwrap_or_else(|| fingerprint.short().to_string());
            if label.chars().any(char::is_whitespace) || label.is_empty() {
                bail!("invalid name {label:?}: it must be one word");
            }
            let added = file.add(&TrustEntry {
                fingerprint,
                label: label.clone(),
            })?;
            ctx.status(&if added {
                format!("trusting {label} ({})", file.path().display())
            } else {
                format!("{label} is already trusted")
            });
        }
        Action::Ls => {
            for e in file.entries()? {
                println!("{} {}", e.fingerprint, e.label);
            }
        }
        Action::Rm { what } => {
            let gone = file.remove(&what)?;
            if gone.is_empty() {
                bail!(
                    "no trusted sender named {what:?} in {}",
                    file.path().display()
                );
            }
            for e in gone {
                ctx.status(&format!(
                    "no longer trusting {} ({})",
                    e.label, e.fingerprint
                ));
            }
        }
    }
    Ok(())
}
