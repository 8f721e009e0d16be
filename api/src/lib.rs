//! husk: the CLI's library — image references, the registry client, the
//! content store and the built-in default image.

pub mod image;
