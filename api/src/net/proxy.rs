//! The published-port proxy (`-p`), run by a container's supervisor as
//! Docker runs `docker-proxy`: it listens on the host port and relays to the
//! guest's address over the TAP.
//!
//! TCP: one thread per listener accepts; each connection gets two relay
//! threads (one per direction), and an EOF in one direction becomes a
//! `shutdown(SHUT_WR)` on the other socket, so half-closed connections work.
//! A backend that refuses (the container is not listening) just closes the
//! client. UDP: one thread per listener keeps a session socket per client
//! address (connected to the guest port) and forgets it after
//! [`UDP_IDLE_TIMEOUT`] without traffic.
//!
//! Both are bounded ([`ProxyLimits`]): a container's published ports relay
//! at most [`MAX_CONNECTIONS`] TCP connections at once (more are closed at
//! once) and keep at most [`MAX_UDP_SESSIONS`] UDP sessions per port (a new
//! client's datagrams are dropped while full), so a flood of clients costs
//! the host a bounded number of threads and sockets.
//!
//! All listeners are bound before any thread starts, so an error on any
//! leaves none bound. Stopping closes one end of a socket pair that every
//! listener thread polls, then shuts every relayed connection down.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{io_cause, NetError, PortSpec, Proto, PublishedPort, Result};

/// How long a UDP client may stay silent before its session is dropped.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a TCP connection to the guest may take to establish.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const UDP_BUFFER: usize = 65536;
/// The most TCP connections relayed at once for one container.
pub const MAX_CONNECTIONS: usize = 1024;
/// The most UDP client sessions kept per published UDP port.
pub const MAX_UDP_SESSIONS: usize = 1024;

/// What the proxy of one container may hold.
#[derive(Debug, Clone, Copy)]
pub struct ProxyLimits {
    /// How long a UDP client may stay silent before its session goes.
    pub udp_idle: Duration,
    /// TCP connections relayed at once.
    pub max_connections: usize,
    /// UDP sessions per port.
    pub max_udp_sessions: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            udp_idle: UDP_IDLE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_udp_sessions: MAX_UDP_SESSIONS,
        }
    }
}

/// The running proxy for one container's published ports. Dropping it (or
/// [`Publisher::stop`]) closes the listeners and ends its threads.
#[derive(Debug)]
pub struct Publisher {
    bound: Vec<PublishedPort>,
    stop: Option<UnixStream>,
    threads: Vec<JoinHandle<()>>,
    conns: Arc<Connections>,
}

/// The relayed TCP connections, so stopping can shut them down.
#[derive(Debug, Default)]
struct Connections {
    inner: Mutex<ConnState>,
}

#[derive(Debug, Default)]
struct ConnState {
    stopped: bool,
    next: u64,
    live: HashMap<u64, (TcpStream, TcpStream)>,
    /// Connections accepted and not yet ended (relayed or connecting).
    active: usize,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a relayed pair; None once stopped.
    fn add(&self, client: &TcpStream, backend: &TcpStream) -> Option<u64> {
        let mut s = self.lock();
        if s.stopped {
            return None;
        }
        let pair = (client.try_clone().ok()?, backend.try_clone().ok()?);
        s.next += 1;
        let id = s.next;
        s.live.insert(id, pair);
        Some(id)
    }

    /// Takes a place for one more connection; false when `max` are active
    /// or the proxy is stopping.
    fn reserve(&self, max: usize) -> bool {
        let mut s = self.lock();
        if s.stopped || s.active >= max {
            return false;
        }
        s.active += 1;
        true
    }

    fn release(&self) {
        let mut s = self.lock();
        s.active = s.active.saturating_sub(1);
    }

    fn remove(&self, id: u64) {
        self.lock().live.remove(&id);
    }

    fn stop_all(&self) {
        let mut s = self.lock();
        s.stopped = true;
        for (_, (client, backend)) in s.live.drain() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = backend.shutdown(Shutdown::Both);
        }
    }
}

enum Bound {
    Tcp(TcpListener, PublishedPort),
    Udp(UdpSocket, PublishedPort),
}

/// Binds every host port of `specs`, then relays each to
/// `guest_ip:container_port`. A host port that is taken gives
/// `port is already allocated: 0.0.0.0:8080: Address already in use`, and
/// no port stays bound. `host_ip` None listens on 0.0.0.0 (IPv4 only).
pub fn publish(specs: &[PortSpec], guest_ip: Ipv4Addr) -> Result<Publisher> {
    publish_with(specs, guest_ip, ProxyLimits::default())
}

/// [`publish`] with other limits.
pub fn publish_with(
    specs: &[PortSpec],
    guest_ip: Ipv4Addr,
    limits: ProxyLimits,
) -> Result<Publisher> {
    let bound = specs.iter().map(bind).collect::<Result<Vec<_>>>()?;
    let (stop, stop_rx) = UnixStream::pair().map_err(|e| NetError::Proxy(io_cause(&e)))?;
    let mut publisher = Publisher {
        bound: bound
            .iter()
            .map(|b| match b {
                Bound::Tcp(_, p) | Bound::Udp(_, p) => *p,
            })
            .collect(),
        stop: Some(stop),
        threads: Vec::new(),
        conns: Arc::new(Connections::default()),
    };
    for b in bound {
        let stop_rx = stop_rx
            .try_clone()
            .map_err(|e| NetError::Proxy(io_cause(&e)))?;
        let handle = match b {
            Bound::Tcp(listener, port) => {
                let backend = SocketAddr::new(IpAddr::V4(guest_ip), port.container_port);
                let conns = Arc::clone(&publisher.conns);
                std::thread::Builder::new()
                    .name(format!("husk-proxy-{}", port.host_port))
                    .spawn(move || {
                        accept_loop(&listener, &stop_rx, backend, &conns, limits.max_connections)
                    })
            }
            Bound::Udp(socket, port) => {
                let backend = SocketAddr::new(IpAddr::V4(guest_ip), port.container_port);
                std::thread::Builder::new()
                    .name(format!("husk-proxy-{}u", port.host_port))
                    .spawn(move || udp_loop(&socket, &stop_rx, backend, limits))
            }
        };
        // On failure `publisher` drops here, stopping the threads started.
        publisher
            .threads
            .push(handle.map_err(|e| NetError::Proxy(io_cause(&e)))?);
    }
    Ok(publisher)
}

fn bind(spec: &PortSpec) -> Result<Bound> {
    let ip = spec.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let addr = SocketAddr::new(ip, spec.host_port.unwrap_or(0));
    let fail = |e: io::Error| {
        if e.kind() == io::ErrorKind::AddrInUse {
            NetError::PortInUse {
                addr: addr.to_string(),
                cause: io_cause(&e),
            }
        } else {
            NetError::Bind {
                addr: format!("{addr}/{}", spec.proto),
                cause: io_cause(&e),
            }
        }
    };
    let published = |local: SocketAddr| PublishedPort {
        host_ip: ip,
        host_port: local.port(),
        container_port: spec.container_port,
        proto: spec.proto,
    };
    match spec.proto {
        Proto::Tcp => {
            let l = TcpListener::bind(addr).map_err(fail)?;
            l.set_nonblocking(true).map_err(fail)?;
            let p = published(l.local_addr().map_err(fail)?);
            Ok(Bound::Tcp(l, p))
        }
        Proto::Udp => {
            let s = UdpSocket::bind(addr).map_err(fail)?;
            s.set_nonblocking(true).map_err(fail)?;
            let p = published(s.local_addr().map_err(fail)?);
            Ok(Bound::Udp(s, p))
        }
    }
}

impl Publisher {
    /// The ports as bound, ephemeral host ports resolved, in `specs` order.
    pub fn bound(&self) -> Vec<PublishedPort> {
        self.bound.clone()
    }

    /// Closes the listeners, shuts every relayed connection down and waits
    /// for the listener threads to end.
    pub fn stop(&mut self) {
        // Closing our end wakes every listener thread's poll at once.
        drop(self.stop.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.conns.stop_all();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// poll(2) over `fds`; Ok(()) also on EINTR (the caller re-checks).
fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: `fds` is a valid, exclusively borrowed slice of `n` pollfds.
    if unsafe { libc::poll(fds.as_mut_ptr(), n, ms) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn accept_loop(
    listener: &TcpListener,
    stop: &UnixStream,
    backend: SocketAddr,
    conns: &Arc<Connections>,
    max: usize,
) {
    loop {
        let mut fds = [pollfd(listener.as_raw_fd()), pollfd(stop.as_raw_fd())];
        if poll(&mut fds, None).is_err() || fds[1].revents != 0 {
            return;
        }
        match listener.accept() {
            Ok((client, _)) => {
                if !conns.reserve(max) {
                    // Full: the client is closed at once.
                    continue;
                }
                let held = Arc::clone(conns);
                let spawned = std::thread::Builder::new()
                    .name("husk-proxy-conn".into())
                    .spawn(move || {
                        relay_tcp(client, backend, &held);
                        held.release();
                    });
                if let Err(e) = spawned {
                    conns.release();
                    log::warn!("port proxy: cannot relay a connection to {backend}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("port proxy: accept on {backend}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn relay_tcp(client: TcpStream, backend: SocketAddr, conns: &Connections) {
    let _ = client.set_nonblocking(false);
    let server = match TcpStream::connect_timeout(&backend, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(_) => return, // dropping `client` closes it
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let Some(id) = conns.add(&client, &server) else {
        return;
    };
    let copies = (client.try_clone(), server.try_clone());
    if let (Ok(client2), Ok(server2)) = copies {
        let upstream = std::thread::Builder::new()
            .name("husk-proxy-conn".into())
            .spawn(move || pipe(client2, server2));
        pipe(server, client);
        if let Ok(t) = upstream {
            let _ = t.join();
        }
    }
    conns.remove(id);
}

/// Copies `from` to `to` until EOF, then half-closes `to`. On an error both
/// sockets are shut down so the other direction ends too.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

struct UdpSession {
    socket: UdpSocket,
    last: Instant,
}

fn udp_loop(listener: &UdpSocket, stop: &UnixStream, backend: SocketAddr, limits: ProxyLimits) {
    let idle = limits.udp_idle;
    let tick = idle.min(Duration::from_secs(1));
    let mut sessions: HashMap<SocketAddr, UdpSession> = HashMap::new();
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let clients: Vec<SocketAddr> = sessions.keys().copied().collect();
        let mut fds = vec![pollfd(listener.as_raw_fd()), pollfd(stop.as_raw_fd())];
        fds.extend(
            clients
                .iter()
                .map(|c| pollfd(sessions[c].socket.as_raw_fd())),
        );
        if poll(&mut fds, Some(tick)).is_err() || fds[1].revents != 0 {
            return;
        }
        if fds[0].revents != 0 {
            udp_from_clients(
                listener,
                backend,
                &mut sessions,
                &mut buf,
                limits.max_udp_sessions,
            );
        }
        for (client, fd) in clients.iter().zip(&fds[2..]) {
            if fd.revents == 0 {
                continue;
            }
            if let Some(session) = sessions.get_mut(client) {
                while let Ok(n) = session.socket.recv(&mut buf) {
                    session.last = Instant::now();
                    let _ = listener.send_to(&buf[..n], client);
                }
            }
        }
        sessions.retain(|_, s| s.last.elapsed() < idle);
    }
}

/// Forwards every datagram waiting on the listener to its client's session.
fn udp_from_clients(
    listener: &UdpSocket,
    backend: SocketAddr,
    sessions: &mut HashMap<SocketAddr, UdpSession>,
    buf: &mut [u8],
    max: usize,
) {
    use std::collections::hash_map::Entry;
    while let Ok((n, client)) = listener.recv_from(buf) {
        let sessions_full = sessions.len() >= max;
        let session = match sessions.entry(client) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if sessions_full => continue,
            Entry::Vacant(e) => match udp_session(backend) {
                Ok(socket) => e.insert(UdpSession {
                    socket,
                    last: Instant::now(),
                }),
                Err(_) => continue,
            },
        };
        session.last = Instant::now();
        let _ = session.socket.send(&buf[..n]);
    }
}

fn udp_session(backend: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))?;
    socket.connect(backend)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

    /// A TCP echo server on 127.0.0.1 standing in for the guest: echoes
    /// until EOF, then writes "bye" and closes.
    fn echo_server() -> u16 {
        let l = TcpListener::bind((LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut conn = conn;
                    let mut buf = [0u8; 1024];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => conn.write_all(&buf[..n]).unwrap(),
                        }
                    }
                    let _ = conn.write_all(b"bye");
                });
            }
        });
        port
    }

    fn tcp(container_port: u16) -> PortSpec {
        PortSpec {
            host_ip: Some(IpAddr::V4(LOCALHOST)),
            host_port: None,
            container_port,
            proto: Proto::Tcp,
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind((LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn tcp_echo_and_half_close_through_the_proxy() {
        let backend = echo_server();
        let p = publish(&[tcp(backend)], LOCALHOST).unwrap();
        let bound = p.bound();
        assert_eq!(bound.len(), 1);
        assert_ne!(bound[0].host_port, 0, "ephemeral port resolved");
        assert_eq!(bound[0].container_port, backend);
        let mut c = TcpStream::connect((LOCALHOST, bound[0].host_port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // Half-close: the server sees EOF, still answers, then closes.
        c.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"bye");
    }

    /// Echoes one round trip through `c`.
    fn echoes(c: &mut TcpStream) -> bool {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 2];
        c.write_all(b"hi").is_ok() && c.read_exact(&mut buf).is_ok() && &buf == b"hi"
    }

    #[test]
    fn connections_beyond_the_cap_are_closed_until_one_ends() {
        let backend = echo_server();
        let limits = ProxyLimits {
            max_connections: 2,
            ..ProxyLimits::default()
        };
        let p = publish_with(&[tcp(backend)], LOCALHOST, limits).unwrap();
        let port = p.bound()[0].host_port;
        let mut first = TcpStream::connect((LOCALHOST, port)).unwrap();
        let mut second = TcpStream::connect((LOCALHOST, port)).unwrap();
        assert!(echoes(&mut first) && echoes(&mut second));
        let mut third = TcpStream::connect((LOCALHOST, port)).unwrap();
        assert!(!echoes(&mut third), "a third connection is relayed");
        drop(first);
        // The first one's relay ends, and a place is free again.
        let start = Instant::now();
        loop {
            let mut next = TcpStream::connect((LOCALHOST, port)).unwrap();
            if echoes(&mut next) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "no place freed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn refused_backend_closes_the_client() {
        let dead = free_port();
        let p = publish(&[tcp(dead)], LOCALHOST).unwrap();
        let mut c = TcpStream::connect((LOCALHOST, p.bound()[0].host_port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        // EOF or reset, but never a hang.
        let r = c.read_to_end(&mut buf);
        assert!(r.is_ok() || r.unwrap_err().kind() == io::ErrorKind::ConnectionReset);
        assert!(buf.is_empty());
    }

    #[test]
    fn port_in_use_leaves_nothing_bound() {
        let free = free_port();
        let taken = TcpListener::bind((LOCALHOST, 0)).unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut first = tcp(80);
        first.host_port = Some(free);
        let mut second = tcp(81);
        second.host_port = Some(taken_port);
        let err = publish(&[first, second], LOCALHOST).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("port is already allocated: 127.0.0.1:{taken_port}: Address already in use")
        );
        // The first port was bound and released again.
        TcpListener::bind((LOCALHOST, free)).expect("first port left bound");
    }

    #[test]
    fn stop_closes_listeners_and_connections_promptly() {
        let backend = echo_server();
        let mut p = publish(&[tcp(backend)], LOCALHOST).unwrap();
        let port = p.bound()[0].host_port;
        let mut c = TcpStream::connect((LOCALHOST, port)).unwrap();
        c.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        c.read_exact(&mut one).unwrap();
        let start = Instant::now();
        p.stop();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(
            TcpStream::connect((LOCALHOST, port)).is_err(),
            "listener still open"
        );
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "relay not shut down"
        );
    }

    /// A UDP server on 127.0.0.1 that answers each datagram with the
    /// address it came from.
    fn udp_whoami_server() -> u16 {
        let server = UdpSocket::bind((LOCALHOST, 0)).unwrap();
        let port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((_, from)) = server.recv_from(&mut buf) {
                server.send_to(from.to_string().as_bytes(), from).unwrap();
            }
        });
        port
    }

    #[test]
    fn udp_sessions_expire_when_idle() {
        let mut spec = tcp(udp_whoami_server());
        spec.proto = Proto::Udp;
        let limits = ProxyLimits {
            udp_idle: Duration::from_millis(200),
            ..ProxyLimits::default()
        };
        let p = publish_with(&[spec], LOCALHOST, limits).unwrap();
        let c = UdpSocket::bind((LOCALHOST, 0)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.connect((LOCALHOST, p.bound()[0].host_port)).unwrap();
        let ask = || {
            c.send(b"?").unwrap();
            let mut buf = [0u8; 64];
            let n = c.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let first = ask();
        assert_eq!(ask(), first, "one session while active");
        std::thread::sleep(Duration::from_millis(700));
        assert_ne!(ask(), first, "a new session after the idle timeout");
    }

    #[test]
    fn udp_echo_through_the_proxy() {
        let server = UdpSocket::bind((LOCALHOST, 0)).unwrap();
        let backend = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = server.recv_from(&mut buf) {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                server.send_to(&reply, from).unwrap();
            }
        });
        let mut spec = tcp(backend);
        spec.proto = Proto::Udp;
        let p = publish(&[spec], LOCALHOST).unwrap();
        let port = p.bound()[0].host_port;
        assert_eq!(p.bound()[0].proto, Proto::Udp);
        for client in 0..2 {
            let c = UdpSocket::bind((LOCALHOST, 0)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.connect((LOCALHOST, port)).unwrap();
            for i in 0..3 {
                let msg = format!("c{client}m{i}");
                c.send(msg.as_bytes()).unwrap();
                let mut buf = [0u8; 64];
                let n = c.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], format!("echo:{msg}").as_bytes());
            }
        }
    }

    #[test]
    fn tcp_and_udp_on_the_same_port_number() {
        let backend = echo_server();
        let port = free_port();
        let mut t = tcp(backend);
        t.host_port = Some(port);
        let mut u = t;
        u.proto = Proto::Udp;
        let p = publish(&[t, u], LOCALHOST).unwrap();
        let b = p.bound();
        assert_eq!((b[0].host_port, b[1].host_port), (port, port));
        assert_eq!(
            serde_json::to_string(&b[0]).unwrap(),
            format!(
                r#"{{"host_ip":"127.0.0.1","host_port":{port},"container_port":{backend},"proto":"tcp"}}"#
            )
        );
    }
}
