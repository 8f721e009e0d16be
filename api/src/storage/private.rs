//! The data directory is private to its owner (mode 0700, as Docker keeps
//! /var/lib/docker 0710 with no group): every image, volume, disk and
//! container file below it is out of other local users' reach, whatever
//! mode the file itself has.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The data directory could not be made private.
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    /// Creating or restricting it failed.
    #[error("cannot {what} the data directory {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Someone else owns it: husk will not use it.
    #[error("the data directory {path} belongs to uid {owner}, not to uid {me}")]
    NotOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's uid.
        me: u32,
    },
}

/// Creates `dir` (0700) when missing; makes an existing one 0700 when
/// others may enter it. Refuses a directory owned by another user.
pub fn ensure_private_dir(dir: &Path) -> Result<(), PrivateDirError> {
    let err = |what, source| PrivateDirError::Io {
        what,
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| err("create the parent of", e))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(err("create", e)),
            _ => {}
        }
    }
    let meta = fs::metadata(dir).map_err(|e| err("read", e))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(PrivateDirError::NotOwner {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| err("restrict", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn made_or_restricted_to_0700() {
        let t = tempfile::tempdir().unwrap();
        let fresh = t.path().join("a/b/data");
        ensure_private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let open = t.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
        let file = t.path().join("f");
        fs::write(&file, "").unwrap();
        let e = ensure_private_dir(&file.join("x")).unwrap_err();
        assert!(crate::error::chain(&e).starts_with("cannot create"), "{e}");
    }

    #[test]
    fn another_users_directory_is_refused() {
        // /proc/1 belongs to root; the test runs as root on the build
        // machines, so use a directory root does not own when there is one.
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("theirs");
        fs::create_dir(&d).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
            let e = ensure_private_dir(&d).unwrap_err();
            assert!(
                matches!(e, PrivateDirError::NotOwner { owner: 65534, .. }),
                "{e}"
            );
        }
    }
}
