//! rimg: move container images between machines.
//!
//! The library behind the `rimg` binary. Modules are named after what a
//! user knows: the [`store`] on disk, [`archive`]s in and out, [`image`]
//! metadata and [`reference`]s, [`import`] of a rootfs, and the
//! [`compress`]ion every stream may come in, and the [`transfer`] of
//! images between stores.

pub mod archive;
pub mod compress;
pub mod digest;
pub mod engine;
pub mod image;
pub mod import;
pub mod progress;
pub mod reference;
pub mod store;
pub mod transfer;
pub mod units;

/// Data for the unit tests.
#[cfg(test)]
pub(crate) mod testdata {
    /// `len` bytes that zstd cannot shrink and that `seed` repeats
    /// exactly (xorshift64).
    pub fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }
}
