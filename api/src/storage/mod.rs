//! Host disk images, all ext4 files husk keeps for its microVMs:
//!
//! - [`rootfs`]: the read-only rootfs disk cache, one disk per image layer
//!   chain, shared by every container of the image, built in a builder
//!   microVM from a [`blobdisk`];
//! - [`scratch`]: each container's writable-layer disk (a sparse copy of an
//!   empty template);
//! - [`volume`]: named volumes;
//! - [`ext4`]: making and checking ext4 images;
//! - [`private`]: the data directory above them all is its owner's alone.

pub mod blobdisk;
pub mod ext4;
pub mod private;
pub mod rootfs;
pub mod scratch;
pub mod volume;
