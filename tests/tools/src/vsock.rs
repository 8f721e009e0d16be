//! `husk-vsock`: both ends of the e2e vsock checks, as a static binary that
//! runs in the guest (AF_VSOCK) and in the test host (husk-vmm's Unix
//! sockets).
//!
//! - `guest-echo PORT COUNT`: echo COUNT connections on vsock PORT, concurrently.
//! - `guest-send CID PORT CONNS BYTES`: CONNS parallel connections to CID:PORT,
//!   each sends BYTES of a seeded pattern, half-closes, and checks the echo.
//! - `host-echo PATH`: echo every connection on the Unix socket PATH.
//! - `host-send UDS PORT CONNS BYTES`: like guest-send through husk-vmm's
//!   `CONNECT PORT` handshake on UDS.
//! - `host-bench UDS PORT BYTES` / `guest-sink PORT`: one-way throughput.
//! - `unix-query PATH LINE`: one line to a Unix socket, one line back
//!   (husk-vmm's API socket: `queues` describes its virtio queues).
//!
//! Prints one result line per command and exits non-zero on any mismatch.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::thread;
use std::time::Instant;

use sha2::{Digest, Sha256};
use vsock::{VsockListener, VsockStream};

/// A deterministic byte pattern for connection `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

trait Duplex: Read + Write + Send {
    fn shutdown_write(&self) -> io::Result<()>;
    fn try_clone_box(&self) -> io::Result<Box<dyn Duplex>>;
}

impl Duplex for UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn try_clone_box(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
}

impl Duplex for VsockStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn try_clone_box(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
}

fn verbose() -> bool {
    std::env::var_os("HUSK_VSOCK_VERBOSE").is_some_and(|v| !v.is_empty())
}

/// Echoes until EOF, then half-closes.
fn echo(mut s: Box<dyn Duplex>) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if verbose() {
            eprintln!("husk-vsock: echo read {n}");
        }
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n])?;
        if verbose() {
            eprintln!("husk-vsock: echo wrote {n}");
        }
        total += n as u64;
    }
    s.shutdown_write()?;
    Ok(total)
}

/// Sends the pattern while reading the echo on another thread; checks it.
fn send_and_check(s: Box<dyn Duplex>, seed: u64, len: usize) -> io::Result<()> {
    let data = pattern(seed, len);
    let want = Sha256::digest(&data);
    let mut reader = s.try_clone_box()?;
    let rx = thread::spawn(move || -> io::Result<(usize, Vec<u8>)> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n_total = 0;
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            n_total += n;
        }
        Ok((n_total, h.finalize().to_vec()))
    });
    let mut w = s;
    for chunk in data.chunks(32 * 1024) {
        w.write_all(chunk)?;
    }
    w.shutdown_write()?;
    let (got, digest) = rx
        .join()
        .map_err(|_| io::Error::other("reader thread panicked"))??;
    if got != len || digest != want.as_slice() {
        return Err(io::Error::other(format!(
            "connection {seed}: echoed {got} of {len} bytes, digest {}",
            if digest == want.as_slice() {
                "matches"
            } else {
                "differs"
            }
        )));
    }
    Ok(())
}

fn host_connect(uds: &str, port: u32) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = String::new();
    // Read the reply byte by byte: what follows belongs to the stream.
    let mut b = [0u8; 1];
    while !line.ends_with('\n') {
        if s.read(&mut b)? == 0 {
            return Err(io::Error::other(format!(
                "no reply to CONNECT {port} (got {line:?})"
            )));
        }
        line.push(char::from(b[0]));
    }
    if !line.starts_with("OK ") {
        return Err(io::Error::other(format!("CONNECT {port}: {line:?}")));
    }
    Ok(s)
}

fn parallel<F>(conns: u64, f: F) -> io::Result<()>
where
    F: Fn(u64) -> io::Result<()> + Send + Sync + Copy + 'static,
{
    let handles: Vec<_> = (0..conns).map(|i| thread::spawn(move || f(i))).collect();
    for h in handles {
        h.join()
            .map_err(|_| io::Error::other("worker panicked"))??;
    }
    Ok(())
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> io::Result<T> {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| io::Error::other(format!("missing or bad {what}")))
}

fn run(args: &[String]) -> io::Result<String> {
    let cmd = args.first().map(String::as_str).unwrap_or("");
    match cmd {
        "guest-echo" => {
            let port: u32 = arg(args, 1, "PORT")?;
            let count: usize = arg(args, 2, "COUNT")?;
            let l = VsockListener::bind_with_cid_port(vsock::VMADDR_CID_ANY, port)?;
            println!("husk-vsock: guest-echo listening on {port}");
            let mut handles = Vec::new();
            for s in l.incoming().take(count) {
                let s: Box<dyn Duplex> = Box::new(s?);
                handles.push(thread::spawn(move || echo(s)));
            }
            let mut total = 0;
            for h in handles {
                total += h.join().map_err(|_| io::Error::other("echo panicked"))??;
            }
            Ok(format!("guest-echo: {count} connections, {total} bytes echoed"))
        }
        "guest-send" => {
            let cid: u32 = arg(args, 1, "CID")?;
            let port: u32 = arg(args, 2, "PORT")?;
            let conns: u64 = arg(args, 3, "CONNS")?;
            let bytes: usize = arg(args, 4, "BYTES")?;
            parallel(conns, move |i| {
                let s = VsockStream::connect_with_cid_port(cid, port)?;
                send_and_check(Box::new(s), 1000 + i, bytes)
            })?;
            Ok(format!("guest-send: {conns} connections x {bytes} bytes echoed intact"))
        }
        "host-echo" => {
            let path = args.get(1).ok_or_else(|| io::Error::other("missing PATH"))?;
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path)?;
            for s in l.incoming() {
                let s: Box<dyn Duplex> = Box::new(s?);
                thread::spawn(move || echo(s));
            }
            Ok("host-echo: done".into())
        }
        "host-send" => {
            let uds: String = arg(args, 1, "UDS")?;
            let port: u32 = arg(args, 2, "PORT")?;
            let conns: u64 = arg(args, 3, "CONNS")?;
            let bytes: usize = arg(args, 4, "BYTES")?;
            let uds: &'static str = Box::leak(uds.into_boxed_str());
            parallel(conns, move |i| {
                let s = host_connect(uds, port)?;
                send_and_check(Box::new(s), 2000 + i, bytes)
            })?;
            Ok(format!("host-send: {conns} connections x {bytes} bytes echoed intact"))
        }
        "guest-sink" => {
            let port: u32 = arg(args, 1, "PORT")?;
            let l = VsockListener::bind_with_cid_port(vsock::VMADDR_CID_ANY, port)?;
            println!("husk-vsock: guest-sink listening on {port}");
            let (mut s, _) = l.accept()?;
            let n = io::copy(&mut s, &mut io::sink())?;
            s.write_all(format!("{n}\n").as_bytes())?;
            Ok(format!("guest-sink: {n} bytes"))
        }
        "host-bench" | "unix-bench" => {
            // host-bench UDS PORT BYTES: through vsock to a guest-sink.
            // unix-bench PATH BYTES: to a Unix-socket sink on this host.
            let bytes: usize = arg(args, if cmd == "host-bench" { 3 } else { 2 }, "BYTES")?;
            let mut s = if cmd == "host-bench" {
                host_connect(&arg::<String>(args, 1, "UDS")?, arg(args, 2, "PORT")?)?
            } else {
                UnixStream::connect(arg::<String>(args, 1, "PATH")?)?
            };
            let chunk = vec![0x5au8; 64 * 1024];
            let start = Instant::now();
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                s.write_all(&chunk[..n])?;
                left -= n;
            }
            s.shutdown(Shutdown::Write)?;
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line)?;
            let secs = start.elapsed().as_secs_f64();
            if line.trim().parse::<usize>().ok() != Some(bytes) {
                return Err(io::Error::other(format!("sink got {line:?}, sent {bytes}")));
            }
            Ok(format!("{cmd}: {bytes} bytes in {secs:.3} s = {:.1} MB/s", bytes as f64 / secs / 1e6))
        }
        "unix-sink" => {
            let path: String = arg(args, 1, "PATH")?;
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path)?;
            let (mut s, _) = l.accept()?;
            let n = io::copy(&mut s, &mut io::sink())?;
            s.write_all(format!("{n}\n").as_bytes())?;
            Ok(format!("unix-sink: {n} bytes"))
        }
        "unix-query" => {
            let path: String = arg(args, 1, "PATH")?;
            let query: String = arg(args, 2, "LINE")?;
            let mut s = UnixStream::connect(&path)?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            s.write_all(format!("{query}\n").as_bytes())?;
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line)?;
            Ok(format!("unix-query {query}: {}", line.trim_end()))
        }
        _ => Err(io::Error::other(
            "usage: husk-vsock guest-echo|guest-send|host-echo|host-send|guest-sink|host-bench|unix-sink|unix-bench|unix-query ...",
        )),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(msg) => {
            println!("husk-vsock: {msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("husk-vsock: FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}
