//! Subcommands whose logic lives in the library.

pub mod machine;
