//! `--into docker-daemon`: a receiver also loads what it received into the
//! Docker Engine on its machine, sending the engine only the layers it
//! lacks where the engine's store allows that.

use anyhow::{Context as _, Result};

use rimg::archive::SaveImage;
use rimg::digest::Digest;
use rimg::store::Store;

/// Where a receiver delivers images besides its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Into {
    /// The local Docker Engine ($DOCKER_HOST, else its default socket).
    #[value(name = "docker-daemon")]
    DockerDaemon,
}

/// Loads the images a transfer committed into the engine. Returns the lines
/// to log: how the engine store was fed, then the engine's own report.
pub fn feed_engine(store: &Store, images: &[(Digest, Vec<String>)]) -> Result<Vec<String>> {
    let mut selected = Vec::new();
    for (id, names) in images {
        let image = store.resolve(&id.to_string())?;
        let tags = names
            .iter()
            .map(|n| n.parse())
            .collect::<Result<Vec<_>, _>>()?;
        selected.push(SaveImage { image, tags });
    }
    let engine = super::connect_engine()?;
    let fed = engine
        .feed(store, selected)
        .context("loading into the Docker Engine")?;

    let how = if fed.engine_store.skips_present_layers() {
        format!(
            "Docker Engine ({}): sent {} layer(s), left out {} it already holds",
            fed.engine_store, fed.layers_sent, fed.layers_skipped
        )
    } else {
        format!(
            "Docker Engine ({}): it needs whole images, sent all {} layer(s)",
            fed.engine_store, fed.layers_sent
        )
    };
    Ok(std::iter::once(how).chain(fed.lines).collect())
}
