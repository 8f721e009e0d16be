//! The guest transport: AF_VSOCK streams. The agent listens for control
//! connections on a port and connects to the host (CID 2) for data
//! connections; [`serve`] ties that to a [`Server`].

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};

use crate::server::{Connector, Server, ServerConfig};

pub use husk_proto::guest::{CONTROL_PORT, HOST_CID};

fn vsock_socket() -> io::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

/// Connects to ports on the host.
#[derive(Debug, Clone, Copy)]
pub struct VsockConnector {
    /// Peer CID ([`HOST_CID`]).
    pub cid: u32,
}

impl Connector for VsockConnector {
    type Stream = File;
    fn connect(&self, port: u32) -> io::Result<File> {
        let fd = vsock_socket()?;
        socket::connect(fd.as_raw_fd(), &VsockAddr::new(self.cid, port))
            .map_err(io::Error::from)?;
        Ok(File::from(fd))
    }
}

/// Listens on `port` for connections from any CID.
pub fn listen(port: u32) -> io::Result<OwnedFd> {
    let fd = vsock_socket()?;
    socket::bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))
        .map_err(io::Error::from)?;
    socket::listen(&fd, socket::Backlog::new(16).map_err(io::Error::from)?)
        .map_err(io::Error::from)?;
    Ok(fd)
}

/// Accepts one connection from the host. A connection from inside the
/// guest (vsock loopback: CID 1, or the guest's own CID) is closed at
/// once: the control port speaks for the host alone, so a container's
/// process cannot ask the agent for a container with more privileges than
/// its own.
pub fn accept(listener: &OwnedFd) -> io::Result<File> {
    loop {
        let fd = socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)
            .map_err(io::Error::from)?;
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let conn = unsafe { File::from_raw_fd(fd) };
        let peer = socket::getpeername::<VsockAddr>(conn.as_raw_fd()).map_err(io::Error::from)?;
        if from_host(peer.cid()) {
            return Ok(conn);
        }
    }
}

/// Whether a peer with context id `cid` is the host.
fn from_host(cid: u32) -> bool {
    cid == HOST_CID
}

/// Serves control connections on vsock `port`, each on its own thread,
/// until one of them receives `Shutdown` (every container is then killed).
/// Returns so that PID 1 can sync and power off.
pub fn serve(config: ServerConfig, port: u32) -> io::Result<()> {
    let listener = listen(port)?;
    let server = Arc::new(Server::new(config, VsockConnector { cid: HOST_CID }));
    server.serve_all(move || accept(&listener));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_is_served() {
        assert!(from_host(HOST_CID));
        assert!(!from_host(libc::VMADDR_CID_LOCAL));
        assert!(!from_host(husk_proto::guest::GUEST_CID));
        assert!(!from_host(libc::VMADDR_CID_ANY));
    }
}
