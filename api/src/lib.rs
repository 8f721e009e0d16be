//! husk: the CLI's library — image references, the registry client, the
//! content store, the built-in default image, and where the microVM's files
//! are found.

pub mod assets;
pub mod cli;
pub mod image;
pub mod machine;
