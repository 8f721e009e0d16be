//! husk: the CLI's library — image references, the registry client, the
//! content store and the built-in default image; host disk images (the
//! rootfs disk cache, writable layers, named volumes: `storage`); container networks; containers and their
//! supervisors; the helper VM for hosts without hardware virtualization;
//! where the microVM's files are found.

pub mod assets;
pub mod bench;
pub mod cli;
pub mod container;
pub mod error;
pub mod image;
pub mod lockfile;
pub mod machine;
pub mod net;
pub mod serve;
pub mod storage;
pub mod time;
