//! Loading images of the store into the Docker Engine, sending only the
//! layers the engine lacks where its store allows it.
//!
//! The classic store keys layers by chain ID and, on load, never opens the
//! file of a layer whose chain it already holds; so an archive may leave
//! those files out. The containerd image store needs every blob, so it gets
//! the whole image. Which store the engine runs is read from the engine
//! (`info`), never assumed.

use std::collections::BTreeSet;

use anyhow::Result;

use super::{Engine, EngineStore};
use crate::archive::{SaveImage, save_leaving_out};
use crate::digest::Digest;
use crate::store::Store;

/// What feeding the engine did.
#[derive(Debug, Clone)]
pub struct Fed {
    pub engine_store: EngineStore,
    pub layers_sent: usize,
    pub layers_skipped: usize,
    /// The engine's own report (`Loaded image: ...`).
    pub lines: Vec<String>,
}

impl Engine {
    /// Streams `images` from `store` into the engine; `progress` takes the
    /// bytes of blobs fed so far.
    pub fn feed(
        &self,
        store: &Store,
        images: Vec<SaveImage>,
        progress: impl Fn(u64) + Send + 'static,
    ) -> Result<Fed> {
        let engine_store = self.store_kind().map_err(anyhow::Error::from)?;
        let leave_out = if engine_store.skips_present_layers() {
            self.layers_to_leave_out(&images)?
        } else {
            BTreeSet::new()
        };
        let all: BTreeSet<&Digest> = images
            .iter()
            .flat_map(|s| s.image.manifest.layers.iter().map(|l| &l.digest))
            .collect();
        let layers_skipped = leave_out.len();
        let layers_sent = all.len() - layers_skipped;

        let store = store.clone();
        let lines = self.load_with(move |out| {
            let mut fed = 0u64;
            save_leaving_out(&store, &images, &leave_out, out, |n| {
                fed += n;
                progress(fed);
            })?;
            Ok(())
        })?;
        Ok(Fed {
            engine_store,
            layers_sent,
            layers_skipped,
            lines,
        })
    }

    /// Layers every image holding them has within the chain prefix the
    /// engine already holds. A layer that some image needs at a position
    /// the engine lacks must travel.
    fn layers_to_leave_out(&self, images: &[SaveImage]) -> Result<BTreeSet<Digest>> {
        let mut present = BTreeSet::new();
        let mut needed = BTreeSet::new();
        for SaveImage { image, .. } in images {
            let diff_ids = &image.config.rootfs.diff_ids;
            let layers: Vec<&Digest> = image.manifest.layers.iter().map(|l| &l.digest).collect();
            // Only an image whose layer blobs are its DiffIDs (uncompressed,
            // as this store keeps them) can be matched by chain.
            let held = if layers.len() == diff_ids.len()
                && layers.iter().zip(diff_ids).all(|(l, d)| *l == d)
            {
                self.layers_present(diff_ids)?
            } else {
                0
            };
            present.extend(layers[..held].iter().map(|d| (*d).clone()));
            needed.extend(layers[held..].iter().map(|d| (*d).clone()));
        }
        Ok(present.difference(&needed).cloned().collect())
    }
}
