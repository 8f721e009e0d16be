//! `husk serve` on a host without hardware virtualization: the Docker API
//! is served by a `husk serve` inside the husk machine (where the microVMs
//! run), and this host's socket relays each client connection to it byte
//! for byte over the control channel ([`Kind::Api`]), so hijacked streams
//! (attach, exec) and half-closes pass through unchanged. Ports that
//! containers publish inside reach this host as with `husk run -p`
//! ([`ports::Poller`]).
//!
//! The inner server runs as one long [`Kind::Husk`] request: when this
//! side ends, the control server hangs that request up and the inner
//! server ends too; when the inner server ends, this side stops with its
//! last line as the reason.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::{Client, Stdio};
use super::proto::{write_frame, Frame, Kind};
use super::{ports, MachineError, Result};

/// How long the inner server has to start answering.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Client connections relayed at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// The inner server's line that this side replaces with its own.
const INNER_BANNER: &str = "husk: serving the Docker API on";

/// Inside the machine: connects a [`Kind::Api`] request to the local API
/// socket and relays until both directions have closed.
pub fn serve_api_connection(mut stream: TcpStream, socket: &Path) -> Result<()> {
    let unix = match UnixStream::connect(socket) {
        Ok(u) => u,
        Err(e) => {
            let msg = format!(
                "husk machine: no Docker API server answers on {}: {e}",
                socket.display()
            );
            write_frame(&mut stream, &Frame::Error(msg))?;
            return Ok(());
        }
    };
    write_frame(&mut stream, &Frame::Exit(0))?;
    splice(stream, unix);
    Ok(())
}

/// Copies both ways between a TCP and a Unix stream; each direction's end
/// of input shuts the other side's write half, so half-closes pass on.
fn splice(tcp: TcpStream, unix: UnixStream) {
    let (Ok(tcp_in), Ok(unix_out)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || pump(tcp_in, unix_out, |u| u.shutdown(Shutdown::Write)));
    pump(unix, tcp, |t| t.shutdown(Shutdown::Write));
    let _ = up.join();
}

fn pump<R: Read, W: Write>(mut from: R, mut to: W, close: impl Fn(&W) -> std::io::Result<()>) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = close(&to);
}

/// What the inner server printed last, and whether it has ended.
#[derive(Debug, Default)]
struct Inner {
    ended: Option<String>,
    last_line: String,
}

/// The inner server's stderr: passed on, except its banner; the last line
/// is kept for the message when it ends.
struct InnerStderr(Arc<Mutex<Inner>>, Vec<u8>);

impl Write for InnerStderr {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(b);
        while let Some(n) = self.1.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = self.1.drain(..=n).collect();
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if !text.starts_with(INNER_BANNER) {
                eprintln!("{text}");
            }
            crate::serve::lock(&self.0).last_line = text;
        }
        self.1.truncate(4096);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts `husk serve` inside the machine on a thread; `inner` says when it
/// ended and why.
fn start_inner(client: &Client, inner: Arc<Mutex<Inner>>) {
    let client = client.clone();
    std::thread::spawn(move || {
        let io = Stdio {
            stdin: Box::new(std::io::empty()),
            stdout: Box::new(std::io::sink()),
            stderr: Box::new(InnerStderr(inner.clone(), Vec::new())),
        };
        let why = match client.run(Kind::Husk, vec!["serve".into()], io) {
            Ok(code) => format!("it exited with status {code}"),
            Err(e) => crate::error::chain(&e),
        };
        let mut g = crate::serve::lock(&inner);
        let last = std::mem::take(&mut g.last_line);
        g.ended = Some(if last.is_empty() {
            why
        } else {
            format!("{why}: {last}")
        });
    });
}

fn ended(inner: &Mutex<Inner>) -> Option<String> {
    crate::serve::lock(inner).ended.clone()
}

/// Waits until the inner server accepts connections.
fn wait_ready(client: &Client, inner: &Mutex<Inner>) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(why) = ended(inner) {
            return Err(MachineError::Remote(format!(
                "the Docker API server in the husk machine did not start: {why}"
            )));
        }
        match client.dial_api() {
            Ok(_) => return Ok(()),
            Err(MachineError::Remote(m)) if Instant::now() < deadline => {
                log::debug!("waiting for the inner API server: {m}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Serves the Docker API on `listener` (this host's socket, shown as
/// `shown`) through the husk machine, starting it if needed, until SIGINT,
/// SIGTERM or the inner server's end.
pub fn serve_host(data_dir: &Path, listener: UnixListener, shown: &Path) -> Result<()> {
    let client = super::client(data_dir)?;
    let inner = Arc::new(Mutex::new(Inner::default()));
    start_inner(&client, inner.clone());
    wait_ready(&client, &inner)?;
    let poller = ports::Poller::start(&data_dir.join("machine"), &client);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| MachineError::Io("the relay's runtime".into(), e))?;
    eprintln!(
        "husk: serving the Docker API on unix://{} (through the husk machine)",
        shown.display()
    );
    let result = rt.block_on(relay_loop(listener, client, inner));
    rt.shutdown_background();
    poller.finish();
    result
}

async fn relay_loop(
    listener: UnixListener,
    client: Client,
    inner: Arc<Mutex<Inner>>,
) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let io = |e| MachineError::Io("the API socket".into(), e);
    let listener = tokio::net::UnixListener::from_std(listener).map_err(io)?;
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((conn, _)) = conn else { continue };
                let Ok(permit) = slots.clone().acquire_owned().await else { continue };
                let client = client.clone();
                tokio::spawn(async move {
                    relay_one(conn, client).await;
                    drop(permit);
                });
            }
            _ = check.tick() => {
                if let Some(why) = ended(&inner) {
                    return Err(MachineError::Remote(format!(
                        "the Docker API server in the husk machine ended: {why}"
                    )));
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
    }
}

/// Relays one client connection to the inner server.
async fn relay_one(mut conn: tokio::net::UnixStream, client: Client) {
    let dialed = tokio::task::spawn_blocking(move || {
        let s = client.dial_api()?;
        s.set_nonblocking(true)
            .map_err(|e| MachineError::Io("the relay connection".into(), e))?;
        Ok::<_, MachineError>(s)
    })
    .await;
    let upstream = match dialed {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            log::warn!("cannot reach the Docker API server in the husk machine: {e}");
            return;
        }
        Err(_) => return,
    };
    let Ok(mut upstream) = tokio::net::TcpStream::from_std(upstream) else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn splice_passes_half_closes_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let api = UnixListener::bind(&sock).unwrap();
        // The API server: echoes what it reads until EOF, then says "bye".
        let server = std::thread::spawn(move || {
            let (mut c, _) = api.accept().unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            c.write_all(&got).unwrap();
            c.write_all(b" bye").unwrap();
        });
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let sock2 = sock.clone();
        let relay = std::thread::spawn(move || {
            let (s, _) = tcp.accept().unwrap();
            serve_api_connection(s, &sock2).unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let ack = super::super::proto::read_frame(&mut c).unwrap().unwrap();
        assert!(matches!(ack, Frame::Exit(0)));
        c.write_all(b"ping").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out, "ping bye");
        server.join().unwrap();
        relay.join().unwrap();
    }

    #[test]
    fn a_missing_api_server_is_one_error_frame() {
        let dir = tempfile::tempdir().unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let sock = dir.path().join("none.sock");
        let relay = std::thread::spawn(move || {
            let (s, _) = tcp.accept().unwrap();
            serve_api_connection(s, &sock).unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        match super::super::proto::read_frame(&mut c).unwrap().unwrap() {
            Frame::Error(m) => assert!(m.contains("no Docker API server answers on"), "{m}"),
            f => panic!("{f:?}"),
        }
        relay.join().unwrap();
    }

    #[test]
    fn inner_stderr_hides_the_banner_and_keeps_the_last_line() {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let mut w = InnerStderr(inner.clone(), Vec::new());
        w.write_all(b"husk: serving the Docker API on unix:///run/husk/docker.sock\nhusk: boo")
            .unwrap();
        assert!(inner.lock().unwrap().last_line.starts_with(INNER_BANNER));
        w.write_all(b"m\n").unwrap();
        assert_eq!(inner.lock().unwrap().last_line, "husk: boom");
    }
}
