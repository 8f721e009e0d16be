//! The image unpacked into a directory for the container rows: the same
//! layers husk's rootfs disk is made of, unpacked by the same verifying
//! unpacker, in a temporary directory of the data directory (removed when
//! the bench ends).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{io_err, BenchError, Result};
use crate::image::store::Store;
use crate::storage::rootfs::unpack_layers;

/// A temporary directory holding `rootfs/` (the image's tree) and whatever
/// the rows add beside it (OCI bundles).
#[derive(Debug)]
pub struct ImageTree {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl ImageTree {
    /// Resolves `image` in the store of `data_dir` (pulling it, or making
    /// the built-in busybox, when missing) and unpacks its layers.
    pub fn unpack(data_dir: &Path, image: &str) -> Result<ImageTree> {
        let bad = |e: &dyn std::error::Error| BenchError::Image {
            image: image.to_string(),
            message: crate::error::chain(e),
        };
        let store = Store::open(&data_dir.join("images")).map_err(|e| bad(&e))?;
        let img = crate::image::resolve::resolve_image(&store, image, true).map_err(|e| bad(&e))?;
        let dir = tempfile::Builder::new()
            .prefix("bench-")
            .tempdir_in(data_dir)
            .map_err(io_err("create a directory in", data_dir))?;
        let root = dir.path().join("rootfs");
        fs::create_dir(&root).map_err(io_err("create", &root))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &root))?;
        unpack_layers(&store, &img.manifest, &root).map_err(|e| bad(&e))?;
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
    fn a_missing_image_is_one_line_naming_it() {
        let data = tempfile::tempdir().unwrap();
        let e = ImageTree::unpack(data.path(), "Bad:Image:Name").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("image Bad:Image:Name: invalid reference format"),
            "{e}"
        );
    }
}
