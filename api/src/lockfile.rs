//! `flock`ed lock files that may be unlinked by their remover: the lock is
//! taken on an open file and then checked to still be the file at the path,
//! retrying otherwise, so a process that opened a lock file just before it
//! was removed never holds a lock nobody else can see.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Opens (creating) `path` and flocks it with `arg`. `Ok(None)` when `arg`
/// is non-blocking and the lock is held elsewhere.
pub fn lock_file(path: &Path, arg: FlockArg) -> io::Result<Option<Flock<File>>> {
    loop {
        let f = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        let locked = match Flock::lock(f, arg) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(e.into()),
        };
        let held = locked.metadata()?;
        match fs::metadata(path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                return Ok(Some(locked))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
}

/// Opens (creating) `path` and takes an exclusive flock on it, waiting
/// for other holders.
pub fn lock_exclusive(path: &Path) -> io::Result<Flock<File>> {
    lock_file(path, FlockArg::LockExclusive)?
        .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_unlinked_file_is_not_a_lock() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let a = lock_file(&p, FlockArg::LockExclusiveNonblock).unwrap();
        assert!(a.is_some());
        assert!(lock_file(&p, FlockArg::LockExclusiveNonblock)
            .unwrap()
            .is_none());
        assert!(lock_file(&p, FlockArg::LockSharedNonblock)
            .unwrap()
            .is_none());
        // The holder removes the file: a new lock is on a new file.
        fs::remove_file(&p).unwrap();
        assert!(lock_file(&p, FlockArg::LockExclusiveNonblock)
            .unwrap()
            .is_some());
        drop(a);
        let s1 = lock_file(&p, FlockArg::LockSharedNonblock).unwrap();
        let s2 = lock_file(&p, FlockArg::LockSharedNonblock).unwrap();
        assert!(s1.is_some() && s2.is_some(), "shared locks coexist");
        assert!(lock_file(&p, FlockArg::LockExclusiveNonblock)
            .unwrap()
            .is_none());
    }
}
