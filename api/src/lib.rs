//! husk: the CLI's library — image references, the registry client, the
//! content store, the built-in default image and container networking.

pub mod image;
pub mod net;
