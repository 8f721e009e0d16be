//! Images: references, OCI types, the content store, the registry client,
//! OCI layout import/export and the built-in default image.

pub mod default;
pub mod layout;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod resolve;
pub mod store;
