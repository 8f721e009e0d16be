//! husk: the CLI's library — image references, the registry client, the
//! content store and the built-in default image; the image rootfs disk
//! cache and named volumes; container networks; containers and their
//! supervisors; the helper VM for hosts without hardware virtualization;
//! where the microVM's files are found.

pub mod assets;
pub mod cli;
pub mod container;
pub mod error;
pub mod ext4;
pub mod image;
pub mod lockfile;
pub mod machine;
pub mod net;
pub mod rootfs;
pub mod volume;
