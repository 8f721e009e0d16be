//! Handing a fork's memory layers to root before the fork maps them.
//!
//! `snapshot-diff` makes husk-vmm (jailed, as the jail's uid) write the
//! pages its guest changed into layer files in its staging directory's
//! `layers/`; each fork maps them `MAP_PRIVATE`, so a page the fork has not
//! written yet is read from the file. Were the parent's husk-vmm able to
//! write them later (a guest that took it over), it would write into
//! every fork's memory. So before a fork starts, the supervisor makes each
//! layer root's and read-only, and refuses the fork when husk-vmm still
//! holds one open for writing or mapped shared and writable (it opens
//! them read-only after writing; no new writable descriptor can be had
//! once the file is root's, and husk-vmm cannot start processes).

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of a sealed layer.
const SEALED_MODE: u32 = 0o444;

/// Layer errors.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A file operation failed.
    #[error("cannot {what} {path}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something other than a plain file is among the layers.
    #[error("{path} is not a memory layer (a link or not a regular file)")]
    NotALayer {
        /// The entry.
        path: PathBuf,
    },
    /// husk-vmm can still write a layer.
    #[error("husk-vmm (pid {pid}) holds memory layer {path} open for writing")]
    Writable {
        /// husk-vmm's pid.
        pid: i32,
        /// The layer.
        path: PathBuf,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LayerError + 'a {
    move |source| LayerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes every layer in `dir` root's and read-only, then checks that
/// process `vmm_pid` cannot write any of them.
pub fn seal(dir: &Path, vmm_pid: i32) -> Result<(), LayerError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("read", dir)(e)),
    };
    let mut layers = HashMap::new();
    for entry in entries {
        let path = entry.map_err(io("read", dir))?.path();
        layers.insert(seal_one(&path)?, path);
    }
    check_not_writable(vmm_pid, &layers)
}

/// Seals one layer (opened without following links); returns its inode.
fn seal_one(path: &Path) -> Result<u64, LayerError> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => LayerError::NotALayer {
                path: path.to_path_buf(),
            },
            _ => io("open", path)(e),
        })?;
    let meta = file.metadata().map_err(io("stat", path))?;
    if !meta.file_type().is_file() || meta.nlink() != 1 {
        return Err(LayerError::NotALayer {
            path: path.to_path_buf(),
        });
    }
    if meta.uid() != 0 || meta.gid() != 0 {
        std::os::unix::fs::fchown(&file, Some(0), Some(0)).map_err(io("give to root", path))?;
    }
    if meta.mode() & 0o7777 != SEALED_MODE {
        file.set_permissions(fs::Permissions::from_mode(SEALED_MODE))
            .map_err(io("make read-only", path))?;
    }
    Ok(meta.ino())
}

/// Refuses when `pid` has a descriptor of one of `layers` (by inode) open
/// for writing or maps one shared and writable.
fn check_not_writable(pid: i32, layers: &HashMap<u64, PathBuf>) -> Result<(), LayerError> {
    let writable = |ino: u64| LayerError::Writable {
        pid,
        path: layers.get(&ino).cloned().unwrap_or_default(),
    };
    let fds = PathBuf::from(format!("/proc/{pid}/fd"));
    for entry in fs::read_dir(&fds).map_err(io("read", &fds))? {
        let fd = entry.map_err(io("read", &fds))?.file_name();
        // A descriptor closed meanwhile is no descriptor.
        let Ok(meta) = fs::metadata(fds.join(&fd)) else {
            continue;
        };
        if !layers.contains_key(&meta.ino()) {
            continue;
        }
        let info = PathBuf::from(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()));
        let text = fs::read_to_string(&info).map_err(io("read", &info))?;
        if fdinfo_writable(&text) {
            return Err(writable(meta.ino()));
        }
    }
    let maps = PathBuf::from(format!("/proc/{pid}/maps"));
    let text = fs::read_to_string(&maps).map_err(io("read", &maps))?;
    let mapped = shared_writable_inodes(&text).find(|ino| layers.contains_key(ino));
    match mapped {
        Some(ino) => Err(writable(ino)),
        None => Ok(()),
    }
}

/// Whether a `/proc/PID/fdinfo/FD` text says the descriptor can write.
fn fdinfo_writable(text: &str) -> bool {
    text.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())
        // Unreadable flags: assume the worst.
        .is_none_or(|flags| flags & libc::O_ACCMODE != libc::O_RDONLY)
}

/// The inodes a `/proc/PID/maps` text maps shared and writable.
fn shared_writable_inodes(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let perms = fields.nth(1)?;
        let inode = fields.nth(2)?.parse().ok()?;
        (perms.contains('w') && perms.contains('s')).then_some(inode)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn fdinfo_flags() {
        assert!(!fdinfo_writable("pos:\t0\nflags:\t0100000\nmnt_id:\t30\n"));
        assert!(fdinfo_writable("pos:\t0\nflags:\t0100002\nmnt_id:\t30\n"));
        assert!(fdinfo_writable("pos:\t0\nflags:\t02100001\n"));
        assert!(fdinfo_writable("pos:\t0\n"));
    }

    #[test]
    fn shared_writable_mappings() {
        let maps = "\
7f00-7f10 rw-p 00000000 fd:01 11 /l/1.mem
7f10-7f20 rw-s 00000000 fd:01 12 /l/2.mem
7f20-7f30 r--s 00000000 fd:01 13 /l/3.mem
7f30-7f40 rw-p 00000000 00:00 0
";
        assert_eq!(shared_writable_inodes(maps).collect::<Vec<_>>(), [12]);
    }

    #[test]
    fn a_layer_held_for_writing_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("1-1.mem");
        fs::write(&layer, b"pages").unwrap();
        let pid = i32::try_from(std::process::id()).unwrap();
        let writer = File::options().write(true).open(&layer).unwrap();
        let e = seal(dir.path(), pid).unwrap_err().to_string();
        assert!(
            e.contains("open for writing") && e.contains("1-1.mem"),
            "{e}"
        );
        drop(writer);
        let reader = File::open(&layer).unwrap();
        seal(dir.path(), pid).unwrap();
        let mode = fs::metadata(&layer).unwrap().mode() & 0o777;
        assert_eq!(mode, SEALED_MODE);
        drop(reader);
        // A missing directory holds no layers.
        seal(&dir.path().join("none"), pid).unwrap();
    }

    #[test]
    fn links_are_not_layers() {
        let dir = tempfile::tempdir().unwrap();
        let target = tempfile::NamedTempFile::new().unwrap();
        symlink(target.path(), dir.path().join("1-1.mem")).unwrap();
        let pid = i32::try_from(std::process::id()).unwrap();
        let e = seal(dir.path(), pid).unwrap_err().to_string();
        assert!(e.contains("is not a memory layer"), "{e}");
        let other = tempfile::tempdir().unwrap();
        fs::write(other.path().join("a"), b"x").unwrap();
        fs::hard_link(other.path().join("a"), other.path().join("b")).unwrap();
        let e = seal(other.path(), pid).unwrap_err().to_string();
        assert!(e.contains("is not a memory layer"), "{e}");
    }
}
