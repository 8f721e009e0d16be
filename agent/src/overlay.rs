//! The container's root filesystem: the pristine unpacked image as the
//! overlay's lower directory, the container's writes in an upper directory
//! (on tmpfs or a scratch disk), merged at `rootfs`.
//!
//! Because the lower directory is never written, it can be shared by every
//! container of the same image, or be the host's cached, read-only ext4
//! image of the unpacked layers (see `PROTOCOL.md`).

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::container::sys::{cstring, Sys};

/// Overlay errors.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// Creating a directory failed.
    #[error("cannot create {path:?}")]
    Mkdir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A path holds a character overlayfs options cannot carry.
    #[error("path {path:?} cannot be used in overlay options")]
    BadPath {
        /// The path.
        path: PathBuf,
    },
    /// mount(2) failed.
    #[error("cannot mount the overlay at {target:?}")]
    Mount {
        /// Mount point.
        target: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, OverlayError>;

/// Where the overlay's parts live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayLayout {
    /// Read-only lower directories, topmost first.
    pub lowers: Vec<PathBuf>,
    /// Writable upper directory.
    pub upper: PathBuf,
    /// overlayfs work directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Mount point.
    pub merged: PathBuf,
}

impl OverlayLayout {
    /// The layout for one lower directory, with `upper`, `work` and `rootfs`
    /// under `dir`.
    pub fn under(dir: &Path, lower: &Path) -> Self {
        Self {
            lowers: vec![lower.to_path_buf()],
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("rootfs"),
        }
    }

    /// The overlayfs mount data.
    pub fn options(&self) -> Result<String> {
        let check = |p: &Path| -> Result<String> {
            let s = p.to_string_lossy();
            if s.contains([',', ':', '\\']) || s.contains('\0') {
                return Err(OverlayError::BadPath {
                    path: p.to_path_buf(),
                });
            }
            Ok(s.into_owned())
        };
        let lowers = self
            .lowers
            .iter()
            .map(|l| check(l))
            .collect::<Result<Vec<_>>>()?
            .join(":");
        Ok(format!(
            "lowerdir={lowers},upperdir={},workdir={}",
            check(&self.upper)?,
            check(&self.work)?
        ))
    }

    /// Creates upper, work and merged, and mounts the overlay.
    pub fn mount(&self, sys: &dyn Sys) -> Result<()> {
        for d in [&self.upper, &self.work, &self.merged] {
            fs::create_dir_all(d).map_err(|source| OverlayError::Mkdir {
                path: d.clone(),
                source,
            })?;
        }
        let data = CString::new(self.options()?).map_err(|_| OverlayError::BadPath {
            path: self.upper.clone(),
        })?;
        sys.mount(
            Some(c"overlay"),
            &cstring(&self.merged),
            Some(c"overlay"),
            MsFlags::empty(),
            Some(&data),
        )
        .map_err(|source| OverlayError::Mount {
            target: self.merged.clone(),
            source,
        })
    }

    /// Detaches the overlay (best effort).
    pub fn unmount(&self) {
        let _ = nix::mount::umount2(&self.merged, MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::sys::RecordingSys;

    #[test]
    fn options_and_recorded_mount() {
        let d = tempfile::tempdir().unwrap();
        let l = OverlayLayout::under(d.path(), Path::new("/images/abc"));
        let sys = RecordingSys::default();
        l.mount(&sys).unwrap();
        let r = d.path().display();
        assert_eq!(
            sys.calls(),
            vec![format!(
                "mount overlay {r}/rootfs overlay 0 lowerdir=/images/abc,upperdir={r}/upper,workdir={r}/work"
            )]
        );
        assert!(d.path().join("work").is_dir());
    }

    #[test]
    fn bad_paths_refused() {
        let l = OverlayLayout::under(Path::new("/run"), Path::new("/a,b"));
        assert!(matches!(l.options(), Err(OverlayError::BadPath { .. })));
    }
}
