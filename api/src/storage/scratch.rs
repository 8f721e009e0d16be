//! The container's writable layer: a sparse ext4 disk per container
//! (`rw.ext4` in its directory), attached read-write and mounted by the
//! guest where the agent keeps the overlay's upper and work directories,
//! so what a container writes survives `husk stop` and `husk start` (a new
//! microVM) as with Docker, and does not take guest memory.
//!
//! The empty file system is made once (`mkfs.ext4`, no journal: the layer
//! lives only as long as its container) and kept in the rootfs cache as a
//! template; a new container gets a sparse copy (only the few MiB of
//! metadata are written).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::storage::ext4::{self, MkfsOptions};

/// Size of a container's writable layer (sparse).
pub const SIZE: u64 = 10 << 30;

/// Writable-layer errors.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// A file operation failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// mkfs failed.
    #[error("making the writable layer's file system")]
    Mkfs(#[from] ext4::Ext4Error),
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, ScratchError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ScratchError + '_ {
    move |source| ScratchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes sure `disk` exists, copying the template from `cache_dir` (made
/// first when missing). Returns whether it was created now.
pub fn ensure(cache_dir: &Path, disk: &Path) -> Result<bool> {
    if disk.exists() {
        return Ok(false);
    }
    let template = cache_dir.join(format!("scratch-{}g.ext4", SIZE >> 30));
    if !template.exists() {
        fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
        remove_dead_temps(cache_dir);
        let tmp = cache_dir.join(format!(".scratch-{}.tmp", std::process::id()));
        let made = (|| {
            File::create(&tmp)
                .and_then(|f| f.set_len(SIZE))
                .map_err(io_err(&tmp))?;
            ext4::mkfs(
                &tmp,
                &MkfsOptions {
                    label: "husk-rw",
                    tree: None,
                    inodes: None,
                    no_journal: true,
                    extended: Some("root_owner=0:0,lazy_itable_init=1"),
                },
            )?;
            fs::rename(&tmp, &template).map_err(io_err(&template))
        })();
        if made.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        made?;
    }
    let tmp = disk.with_extension("tmp");
    let copied =
        copy_sparse(&template, &tmp).and_then(|()| fs::rename(&tmp, disk).map_err(io_err(disk)));
    if copied.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    copied.map(|()| true)
}

/// Whether process `pid` exists (EPERM: it does, owned by someone else).
fn pid_alive(pid: i32) -> bool {
    pid > 0
        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            .map_or_else(|e| e != nix::errno::Errno::ESRCH, |()| true)
}

/// Removes `.scratch-<pid>.tmp` templates of processes that died while
/// making one (each is a 10 GiB sparse file); a live process's is kept.
/// Best effort.
pub fn remove_dead_temps(cache_dir: &Path) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(".scratch-"))
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !pid_alive(pid) {
            if let Err(err) = fs::remove_file(e.path()) {
                log::warn!("cannot remove {}: {err}", e.path().display());
            }
        }
    }
}

/// Copies `src` to `dst` keeping its holes (SEEK_DATA/SEEK_HOLE).
pub fn copy_sparse(src: &Path, dst: &Path) -> Result<()> {
    let mut from = File::open(src).map_err(io_err(src))?;
    let len = from.metadata().map_err(io_err(src))?.len();
    let mut to = File::create(dst).map_err(io_err(dst))?;
    to.set_len(len).map_err(io_err(dst))?;
    let fd = from.as_raw_fd();
    let mut pos: i64 = 0;
    let end = i64::try_from(len).unwrap_or(i64::MAX);
    let mut buf = vec![0u8; 1 << 20];
    while pos < end {
        // SAFETY: lseek on a descriptor this function owns; no memory is
        // passed.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole is left.
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole };
        let start = u64::try_from(data).unwrap_or(0);
        from.seek(SeekFrom::Start(start)).map_err(io_err(src))?;
        to.seek(SeekFrom::Start(start)).map_err(io_err(dst))?;
        let mut left = u64::try_from(hole - data).unwrap_or(0);
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            from.read_exact(&mut buf[..n]).map_err(io_err(src))?;
            to.write_all(&buf[..n]).map_err(io_err(dst))?;
            left -= n as u64;
        }
        pos = hole;
    }
    to.sync_all().map_err(io_err(dst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(10 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.seek(SeekFrom::Start((64 << 20) - 3)).unwrap();
        f.write_all(b"end").unwrap();
        drop(f);
        let dst = d.path().join("dst");
        copy_sparse(&src, &dst).unwrap();
        assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
        let m = fs::metadata(&dst).unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(
            m.blocks() * 512 < 4 << 20,
            "copy is not sparse: {} blocks",
            m.blocks()
        );
    }

    #[test]
    fn only_dead_processes_temps_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = i32::try_from(child.id()).unwrap();
        child.wait().unwrap();
        let dead_tmp = d.path().join(format!(".scratch-{dead}.tmp"));
        let live_tmp = d
            .path()
            .join(format!(".scratch-{}.tmp", std::process::id()));
        let other = d.path().join(".scratch-x.tmp");
        for f in [&dead_tmp, &live_tmp, &other] {
            File::create(f).unwrap();
        }
        remove_dead_temps(d.path());
        assert!(!dead_tmp.exists(), "a dead process's leftover stays");
        assert!(live_tmp.exists(), "a live process's template was removed");
        assert!(other.exists());
        // `ensure` sweeps before it makes the template.
        File::create(&dead_tmp).unwrap();
        let disk = d.path().join("rw.ext4");
        assert!(ensure(d.path(), &disk).unwrap());
        assert!(!dead_tmp.exists());
    }

    #[test]
    fn disk_from_template() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("c/rw.ext4");
        fs::create_dir_all(d.path().join("c")).unwrap();
        assert!(ensure(&d.path().join("cache"), &disk).unwrap());
        assert!(!ensure(&d.path().join("cache"), &disk).unwrap());
        let m = fs::metadata(&disk).unwrap();
        assert_eq!(m.len(), SIZE);
        assert!(m.blocks() * 512 < 64 << 20);
        let out = ext4::debugfs(&disk, "stats", false).unwrap();
        assert!(out.contains("husk-rw"), "{out}");
    }
}
