//! A Unix-socket connect that never blocks the device thread.
//!
//! `UnixStream::connect` blocks while the listener's backlog is full (a host
//! service that stopped accepting would stall every guest connection). A
//! connect on a non-blocking `AF_UNIX` socket either completes at once or
//! fails with `EAGAIN`; there is no "in progress" state to wait for.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Connects a non-blocking stream to the listener at `path`. A listener
/// whose backlog is full gives `WouldBlock` at once.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let addr = sockaddr(path)?;
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_un>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        // SAFETY: `addr` is a valid, initialised sockaddr_un of `len` bytes
        // that outlives the call; `fd` is an open socket.
        let rc = unsafe {
            libc::connect(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                std::ptr::addr_of!(addr).cast(),
                len,
            )
        };
        if rc == 0 {
            return Ok(UnixStream::from(fd));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn sockaddr(path: &Path) -> io::Result<libc::sockaddr_un> {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = path.as_os_str().as_bytes();
    // Keep a terminating NUL.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path of {} bytes is too long", bytes.len()),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    Ok(addr)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A listener whose backlog holds one connection (listen(2) with 0).
    pub(crate) fn tiny_backlog_listener(path: &Path) -> UnixListener {
        let l = UnixListener::bind(path).unwrap();
        // SAFETY: `l` is an open, bound socket; listen(2) takes no pointers.
        // Calling it again on a listening socket only changes the backlog.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
        l
    }

    #[test]
    fn full_backlog_fails_at_once_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let l = tiny_backlog_listener(&p);
        let mut held = Vec::new();
        let err = loop {
            match connect_nonblocking(&p) {
                Ok(s) => held.push(s),
                Err(e) => break e,
            }
            assert!(held.len() < 16, "backlog never filled");
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // Accepting makes room again.
        let _ = l.accept().unwrap();
        assert!(connect_nonblocking(&p).is_ok());
    }

    #[test]
    fn bad_paths_are_refused() {
        let long = "x".repeat(200);
        let e = connect_nonblocking(Path::new(&long)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let dir = tempfile::tempdir().unwrap();
        let e = connect_nonblocking(&dir.path().join("none")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
