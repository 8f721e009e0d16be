//! husk: the CLI's library — image references, the registry client, the
//! content store, the built-in default image, the image rootfs disk cache
//! and named volumes.

pub mod cli;
pub mod ext4;
pub mod image;
pub mod lockfile;
pub mod rootfs;
pub mod volume;
