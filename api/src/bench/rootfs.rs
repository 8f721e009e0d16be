//! The image's tree in a directory for the container rows, in a temporary
//! directory of the data directory (removed when the bench ends). husk
//! never unpacks an image's layers on the host (they are unpacked in a
//! builder microVM), so only the built-in busybox image has a tree here:
//! it is made from the layer husk itself builds out of this host's own
//! busybox (`image::default`), not from any registry's or user's layer.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{io_err, BenchError, Result};
use crate::image::default::{busybox_layer, BUSYBOX};

/// A temporary directory holding `rootfs/` (the image's tree) and whatever
/// the rows add beside it (OCI bundles).
#[derive(Debug)]
pub struct ImageTree {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl ImageTree {
    /// The tree of `image`, which must be the built-in busybox image (see
    /// the module docs); any other image is refused with one line.
    pub fn unpack(data_dir: &Path, image: &str) -> Result<ImageTree> {
        let bad = |message: String| BenchError::Image {
            image: image.to_string(),
            message,
        };
        if !matches!(
            image,
            "busybox" | "busybox:latest" | "docker.io/library/busybox:latest"
        ) {
            return Err(bad(
                "the container rows run only the built-in busybox image: husk does not unpack an image's layers on this host".into(),
            ));
        }
        let layer = busybox_layer(Path::new(BUSYBOX)).map_err(|e| bad(crate::error::chain(&e)))?;
        let dir = tempfile::Builder::new()
            .prefix("bench-")
            .tempdir_in(data_dir)
            .map_err(io_err("create a directory in", data_dir))?;
        let root = dir.path().join("rootfs");
        fs::create_dir(&root).map_err(io_err("create", &root))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &root))?;
        tar::Archive::new(layer.as_slice())
            .unpack(&root)
            .map_err(io_err("unpack busybox into", &root))?;
        Ok(ImageTree { dir, root })
    }

    /// The image's root file system.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A directory beside the tree for `name` (created).
    pub fn side_dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.dir.path().join(name);
        fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacks_the_built_in_busybox_image() {
        let data = tempfile::tempdir().unwrap();
        let t = ImageTree::unpack(data.path(), "busybox").unwrap();
        assert!(t.root().join("bin/busybox").is_file());
        assert!(fs::symlink_metadata(t.root().join("bin/true")).is_ok());
        let side = t.side_dir("crun").unwrap();
        assert!(side.is_dir() && side.parent() == t.root().parent());
        let top = t.root().parent().unwrap().to_path_buf();
        drop(t);
        assert!(!top.exists());
    }

    #[test]
    fn other_images_are_refused_in_one_line() {
        let data = tempfile::tempdir().unwrap();
        let e = ImageTree::unpack(data.path(), "nginx:latest").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("image nginx:latest: the container rows run only"),
            "{e}"
        );
    }
}
