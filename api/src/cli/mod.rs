//! `husk` subcommands implemented in the library.

pub mod volume;
