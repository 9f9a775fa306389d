//! `--into docker-daemon`: a receiver also loads what it received into the
//! Docker Engine on its machine, sending the engine only the layers it
//! lacks where the engine's store allows that.

use anyhow::{Context as _, Result};

use rimg::archive::SaveImage;
use rimg::digest::Digest;
use rimg::store::Store;
use rimg::transfer::receive::Deliver;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a receiver delivers images besides its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Into {
    /// The local Docker Engine ($DOCKER_HOST, else its default socket).
    #[value(name = "docker-daemon")]
    DockerDaemon,
}

/// The receiver's delivery into the local engine, run before it sends
/// `done` so that the sender hears the engine's report.
#[derive(Debug)]
pub struct EngineDelivery;

impl Deliver for EngineDelivery {
    fn deliver(
        &self,
        store: &Store,
        images: &[(Digest, Vec<String>)],
        progress: &(dyn Fn(u64) + Sync),
    ) -> std::result::Result<Vec<String>, String> {
        let fed = Arc::new(AtomicU64::new(0));
        let counter = fed.clone();
        let (store, images) = (store.clone(), images.to_vec());
        // The engine feed runs on its own thread; report its count here.
        let job = std::thread::spawn(move || {
            feed_engine(&store, &images, move |n| {
                counter.store(n, Ordering::Relaxed)
            })
        });
        while !job.is_finished() {
            progress(fed.load(Ordering::Relaxed));
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        progress(fed.load(Ordering::Relaxed));
        match job.join() {
            Ok(result) => result.map_err(|e| match e.downcast_ref::<super::Hinted>() {
                Some(h) => format!("{} (hint: {})", h.message, h.hint),
                None => format!("{e:#}"),
            }),
            Err(_) => Err("loading into the Docker Engine panicked".into()),
        }
    }
}

/// Loads the images a transfer committed into the engine. Returns the lines
/// to log: how the engine store was fed, then the engine's own report.
pub fn feed_engine(
    store: &Store,
    images: &[(Digest, Vec<String>)],
    progress: impl Fn(u64) + Send + 'static,
) -> Result<Vec<String>> {
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
        .feed(store, selected, progress)
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
