//! Finding the image a container is to run: in the store, else pulled
//! (the built-in busybox image is made on first use).

use crate::image::default::ensure_default_image;
use crate::image::reference::Reference;
use crate::image::registry::{config_credentials, Registry};
use crate::image::store::{Store, StoredImage};

/// The image could not be found or pulled.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The reference does not parse.
    #[error("invalid reference format: {image:?}")]
    Reference {
        /// As given.
        image: String,
        /// Why.
        #[source]
        source: crate::image::reference::ReferenceError,
    },
    /// The built-in image could not be made.
    #[error("cannot make the built-in busybox image")]
    Default(#[source] crate::image::default::DefaultImageError),
    /// Pulling failed.
    #[error(transparent)]
    Pull(#[from] crate::image::registry::RegistryError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::image::store::StoreError),
}

/// The stored image `image` names, pulled when missing (a note goes to
/// stderr unless `quiet`).
pub fn resolve_image(store: &Store, image: &str, quiet: bool) -> Result<StoredImage, ResolveError> {
    let r = Reference::parse(image).map_err(|source| ResolveError::Reference {
        image: image.to_string(),
        source,
    })?;
    if r.familiar() == "busybox:latest" {
        ensure_default_image(store).map_err(ResolveError::Default)?;
    }
    if let Ok(img) = store.image(&r) {
        return Ok(img);
    }
    if !quiet {
        eprintln!("Unable to find image '{}' locally", r.familiar());
    }
    let creds = config_credentials(&r.registry);
    Registry::new(&r, creds, quiet).pull(store, &r)?;
    Ok(store.image(&r)?)
}
