//! virtio-blk (virtio 1.2, section 5.2): a raw image file, read-only or
//! read-write, with flush and GET_ID.

pub mod backend;
pub mod device;
pub mod handler;
pub mod persist;
pub mod request;

pub use device::{Block, BlockConfig, BlockError};
pub use handler::BlockHandler;
