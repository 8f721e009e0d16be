//! How husk prints an error: the error and its causes on one line,
//! `a: b: c` — the one printer all husk binaries share.

pub use husk_proto::error::chain;
