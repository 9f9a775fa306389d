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
