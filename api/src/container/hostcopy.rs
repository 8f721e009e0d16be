//! The host's side of `husk cp`: a tar of a host path to send into a
//! container, and the extraction of a container's tar on the host.
//!
//! A container's tar is hostile input: only regular files, directories and
//! symbolic links are made (no device nodes, fifos or hard links to
//! outside), nothing lands outside the extraction directory (the `tar`
//! crate's `unpack_in` refuses `..` and paths through links), set-user and
//! set-group-id bits are dropped and ownership is not restored.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Host copy errors.
#[derive(Debug, thiserror::Error)]
pub enum HostCopyError {
    /// Reading or writing a host file failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The container's archive is not a valid tar.
    #[error("the container's archive is malformed")]
    Malformed(#[source] io::Error),
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, HostCopyError>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> HostCopyError + 'a {
    move |source| HostCopyError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a tar of the host path `src` to `out`, its top entry named
/// `name` (`.` puts a directory's content at the top). Symbolic links are
/// archived as links, not followed.
pub fn pack(src: &Path, name: &str, out: impl Write) -> Result<()> {
    let meta = fs::symlink_metadata(src).map_err(io_err("cannot read", src))?;
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    if meta.is_dir() {
        b.append_dir_all(name, src)
            .map_err(io_err("cannot archive", src))?;
    } else {
        b.append_path_with_name(src, name)
            .map_err(io_err("cannot archive", src))?;
    }
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io_err("cannot send", src))
}

/// What an extraction made and left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries made.
    pub made: u64,
    /// Entries of other kinds (devices, fifos, hard links) skipped.
    pub skipped: u64,
}

/// Extracts the tar read from `input` into the directory `dir`.
pub fn unpack(input: impl Read, dir: &Path) -> Result<Unpacked> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut done = Unpacked::default();
    for entry in archive.entries().map_err(HostCopyError::Malformed)? {
        let mut entry = entry.map_err(HostCopyError::Malformed)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            done.skipped += 1;
            continue;
        }
        let made = entry
            .unpack_in(dir)
            .map_err(io_err("cannot extract into", dir))?;
        if !made {
            done.skipped += 1;
            continue;
        }
        done.made += 1;
        if kind.is_file() || kind.is_dir() {
            drop_special_bits(dir, &entry)?;
        }
    }
    Ok(done)
}

/// Clears set-user-id, set-group-id and sticky bits the archive asked for.
fn drop_special_bits<R: Read>(dir: &Path, entry: &tar::Entry<'_, R>) -> Result<()> {
    let mode = entry.header().mode().unwrap_or(0o644);
    if mode & 0o7000 == 0 {
        return Ok(());
    }
    let Ok(rel) = entry.path() else {
        return Ok(());
    };
    let path = dir.join(rel);
    fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o777))
        .map_err(io_err("cannot set the mode of", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        b: &mut tar::Builder<Vec<u8>>,
        path: &str,
        kind: tar::EntryType,
        mode: u32,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_path(path).unwrap();
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn pack_then_unpack_round_trips_a_tree() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("d")).unwrap();
        fs::write(src.path().join("d/f"), b"hello").unwrap();
        std::os::unix::fs::symlink("f", src.path().join("d/l")).unwrap();
        let mut tar = Vec::new();
        pack(&src.path().join("d"), "copy", &mut tar).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let got = unpack(tar.as_slice(), dst.path()).unwrap();
        assert_eq!(got.skipped, 0);
        assert_eq!(fs::read(dst.path().join("copy/f")).unwrap(), b"hello");
        assert_eq!(
            fs::read_link(dst.path().join("copy/l")).unwrap(),
            PathBuf::from("f")
        );
    }

    #[test]
    fn hostile_entries_are_refused_or_defused() {
        let mut b = tar::Builder::new(Vec::new());
        entry(&mut b, "suid", tar::EntryType::Regular, 0o4755, b"x");
        entry(&mut b, "dev", tar::EntryType::Char, 0o666, b"");
        entry(&mut b, "fifo", tar::EntryType::Fifo, 0o666, b"");
        let tar = b.into_inner().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let got = unpack(tar.as_slice(), dst.path()).unwrap();
        assert_eq!(
            got,
            Unpacked {
                made: 1,
                skipped: 2
            }
        );
        let mode = fs::metadata(dst.path().join("suid"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert!(!dst.path().join("dev").exists() && !dst.path().join("fifo").exists());

        // A path out of the directory is refused, and nothing lands there.
        let outside = tempfile::tempdir().unwrap();
        let mut raw = tar::Header::new_gnu();
        raw.set_entry_type(tar::EntryType::Regular);
        raw.set_size(1);
        raw.set_mode(0o644);
        let name = b"../escaped";
        raw.as_old_mut().name[..name.len()].copy_from_slice(name);
        raw.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&raw, &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let inner = outside.path().join("in");
        fs::create_dir(&inner).unwrap();
        assert!(
            unpack(tar.as_slice(), &inner).is_err() || !outside.path().join("escaped").exists()
        );
        assert!(!outside.path().join("escaped").exists());

        // A link to outside, then a file through it.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_path("out").unwrap();
        h.set_link_name(outside.path()).unwrap();
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
        entry(&mut b, "out/through", tar::EntryType::Regular, 0o644, b"x");
        let tar = b.into_inner().unwrap();
        let _ = unpack(tar.as_slice(), &inner);
        assert!(!outside.path().join("through").exists());
    }
}
