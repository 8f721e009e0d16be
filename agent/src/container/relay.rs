//! Non-terminal stdio as pipes, as Docker gives it: the process gets a pipe
//! for each of stdin, stdout and stderr that the host asked for (so
//! `/dev/stdout` can be opened, which a socket cannot), and an agent thread
//! relays each pipe to or from its stream connection through a bounded
//! buffer. A stream the host did not ask for is /dev/null.
//!
//! When the relay ends:
//! - stdin: end-of-file from the host closes the pipe, so the process reads
//!   end-of-file; once the process has exited, stdin is dropped.
//! - stdout, stderr: at end-of-file on the pipe (every writer has exited),
//!   after relaying everything. A descendant that outlives the process and
//!   still holds the pipe gets [`EXIT_GRACE`] after the process's exit; then
//!   what the pipe holds is relayed and the connection is closed.
//!
//! - a broken output connection of a stream that can be opened again
//!   ([`Reopen`]: the container's init, whose microVM may have been
//!   restored from a checkpoint, every host connection reset) is opened
//!   again for up to [`REOPEN_LIMIT`]; what the relay held is sent on it.
//!
//! [`Relay::wait`] returns once every connection is closed, so the host
//! that reads a stream to its end and then waits gets every byte, and an
//! `Exited` answered after [`Relay::wait`] follows all of the output.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::process::{dev_null, pipe};
use super::{ContainerError, Result, Stdio};
use crate::reaper::Reaper;

/// How long after the process's exit output from descendants still holding
/// its pipes is relayed before the connections are closed.
pub const EXIT_GRACE: Duration = Duration::from_millis(500);
/// Each stream's buffer.
const BUF_SIZE: usize = 64 * 1024;
/// At most this much is taken from a pipe once the grace has passed (a
/// descendant may write without end).
const FINAL_DRAIN: usize = 1 << 20;
/// How long a broken output connection is tried again.
pub const REOPEN_LIMIT: Duration = Duration::from_secs(30);
/// The pause between tries.
const REOPEN_PAUSE: Duration = Duration::from_millis(100);

/// Opens the connection of output stream `"stdout"` or `"stderr"` again.
#[derive(Clone)]
pub struct Reopen(pub Arc<dyn Fn(&'static str) -> io::Result<OwnedFd> + Send + Sync>);

impl std::fmt::Debug for Reopen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reopen")
    }
}

fn set_nonblocking(fd: &impl AsFd) -> Result<()> {
    let err = |e: nix::Error| ContainerError::Spawn {
        step: "stdio relay".into(),
        source: e.into(),
    };
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL).map_err(err)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(err)?;
    Ok(())
}

/// Waits until one of `fds` is ready for its `events` (or in error),
/// `timeout_ms` at most (-1: no limit); sets their `revents`.
fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<()> {
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: `fds` is a live, writable array of `n` pollfd structs; poll
    // only writes their `revents` fields.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, timeout_ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn pollfd(fd: &File, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// One direction: `src` to `dst`, both non-blocking, through a buffer.
#[derive(Debug)]
struct Stream {
    src: File,
    dst: File,
    /// stdin (host to process): dropped once the process has exited.
    input: bool,
    buf: Box<[u8]>,
    /// Unwritten bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
    failed: bool,
    /// An output stream's name and how to open its connection again.
    reopen: Option<(&'static str, Reopen)>,
}

impl Stream {
    fn new(src: OwnedFd, dst: OwnedFd, input: bool) -> Result<Self> {
        set_nonblocking(&src)?;
        set_nonblocking(&dst)?;
        Ok(Self {
            src: src.into(),
            dst: dst.into(),
            input,
            buf: vec![0; BUF_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            failed: false,
            reopen: None,
        })
    }

    /// After the connection broke: opens it again (see [`Reopen`]); false
    /// when it cannot be within [`REOPEN_LIMIT`] or the stream has none.
    fn reconnect(&mut self) -> bool {
        let Some((name, reopen)) = &self.reopen else {
            return false;
        };
        let deadline = Instant::now() + REOPEN_LIMIT;
        loop {
            match (reopen.0)(name)
                .and_then(|fd| set_nonblocking(&fd).map(|()| fd).map_err(io::Error::other))
            {
                Ok(fd) => {
                    log::info!("{name} relay: connection opened again");
                    self.dst = fd.into();
                    return true;
                }
                Err(e) if Instant::now() >= deadline => {
                    log::warn!("{name} relay: connection broke and cannot be opened again: {e}");
                    return false;
                }
                Err(_) => std::thread::sleep(REOPEN_PAUSE),
            }
        }
    }

    fn pending(&self) -> bool {
        self.start < self.end
    }

    fn done(&self) -> bool {
        self.failed || (self.eof && !self.pending())
    }

    /// What to wait for: room in `dst` while data is pending, else data.
    fn interest(&self) -> libc::pollfd {
        if self.pending() {
            pollfd(&self.dst, libc::POLLOUT)
        } else {
            pollfd(&self.src, libc::POLLIN)
        }
    }

    /// After poll said ready (or in error): writes or reads once.
    fn step(&mut self) {
        if self.pending() {
            self.write();
        } else {
            self.read();
        }
    }

    fn read(&mut self) {
        match self.src.read(&mut self.buf) {
            Ok(0) => self.eof = true,
            Ok(n) => (self.start, self.end) = (0, n),
            Err(e) if transient(&e) => {}
            // A reset connection or broken pipe ends the stream.
            Err(_) => self.eof = true,
        }
    }

    fn write(&mut self) {
        let data = self.buf.get(self.start..self.end).unwrap_or_default();
        match self.dst.write(data) {
            Ok(0) => self.failed = true,
            Ok(n) => self.start += n,
            Err(e) if transient(&e) => {}
            // The reader is gone (EPIPE): the writer will see that too,
            // unless the connection can be opened again.
            Err(_) => self.failed = !self.reconnect(),
        }
    }

    /// Once the grace has passed: relays what the pipe holds now, waiting
    /// for the host to take it.
    fn flush(&mut self) {
        let mut taken = 0;
        loop {
            while self.pending() && !self.failed {
                self.write();
                if self.pending() && !self.failed {
                    let mut fds = [pollfd(&self.dst, libc::POLLOUT)];
                    if poll(&mut fds, -1).is_err_and(|e| !transient(&e)) {
                        self.failed = true;
                    }
                }
            }
            if self.failed || self.eof || taken >= FINAL_DRAIN {
                return;
            }
            self.read();
            if !self.pending() {
                return;
            }
            taken += self.end;
        }
    }
}

/// Milliseconds from now until `deadline`, rounded up (0 once passed).
fn ms_until(deadline: Instant) -> i32 {
    let left = deadline.saturating_duration_since(Instant::now());
    i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
}

/// Relays `streams` until each has ended (see the module doc); `exit`
/// becomes readable (end-of-file) when the process has exited.
fn run(mut streams: Vec<Stream>, exit: &File, grace: Duration) {
    let mut deadline: Option<Instant> = None;
    loop {
        streams.retain(|s| !s.done());
        if streams.is_empty() {
            return;
        }
        let timeout = match deadline {
            None => -1,
            Some(d) => match ms_until(d) {
                0 => break,
                ms => ms,
            },
        };
        let mut fds: Vec<libc::pollfd> = streams.iter().map(Stream::interest).collect();
        if deadline.is_none() {
            fds.push(pollfd(exit, libc::POLLIN));
        }
        if let Err(e) = poll(&mut fds, timeout) {
            if transient(&e) {
                continue;
            }
            log::error!("stdio relay: poll failed: {e}");
            break;
        }
        if deadline.is_none() && fds.last().is_some_and(|p| p.revents != 0) {
            deadline = Some(Instant::now() + grace);
            // Nobody reads stdin any more.
            streams.retain(|s| !s.input);
            continue;
        }
        for (s, p) in streams.iter_mut().zip(&fds) {
            if p.revents != 0 {
                s.step();
            }
        }
    }
    for s in streams.iter_mut().filter(|s| !s.input) {
        s.flush();
    }
}

/// The agent's side of a process's stdio pipes, paired with the stream
/// connections, before the process runs.
#[derive(Debug)]
pub struct Pipes {
    streams: Vec<Stream>,
    /// Closing the write end tells the relay the process has exited.
    exit: Option<(OwnedFd, OwnedFd)>,
}

impl Pipes {
    /// A pipe for each stream in `stdio`, /dev/null for the missing ones.
    /// Returns the child's descriptors for 0, 1 and 2 (close-on-exec, as
    /// the agent's ends are) and the agent's side.
    pub fn new(stdio: Stdio) -> Result<([OwnedFd; 3], Self)> {
        let mut streams = Vec::new();
        let stdin = match stdio.stdin {
            None => dev_null()?,
            Some(conn) => {
                let (r, w) = pipe()?;
                streams.push(Stream::new(conn, w, true)?);
                r
            }
        };
        let reopen = stdio.reopen;
        let mut output = |conn: Option<OwnedFd>, name: &'static str| -> Result<OwnedFd> {
            let Some(conn) = conn else {
                return dev_null();
            };
            let (r, w) = pipe()?;
            let mut s = Stream::new(r, conn, false)?;
            s.reopen = reopen.clone().map(|r| (name, r));
            streams.push(s);
            Ok(w)
        };
        let stdout = output(stdio.stdout, "stdout")?;
        let stderr = output(stdio.stderr, "stderr")?;
        let exit = if streams.is_empty() {
            None
        } else {
            Some(pipe()?)
        };
        Ok(([stdin, stdout, stderr], Self { streams, exit }))
    }

    /// Relays on a thread until process `pid` has exited and its output is
    /// relayed (see the module doc).
    pub fn start(self, pid: i32, reaper: &Reaper) -> Relay {
        self.start_with(EXIT_GRACE, |exited| {
            let reaper = reaper.clone();
            std::thread::spawn(move || {
                reaper.wait(pid);
                drop(exited);
            });
        })
    }

    /// [`Pipes::start`] with the grace and how the exit is told: `watch`
    /// gets a pipe's write end to close when the process has exited.
    fn start_with(self, grace: Duration, watch: impl FnOnce(OwnedFd)) -> Relay {
        let relay = Relay::default();
        let Some((exit_r, exit_w)) = self.exit else {
            relay.finish();
            return relay;
        };
        watch(exit_w);
        let done = relay.clone();
        let streams = self.streams;
        std::thread::spawn(move || {
            run(streams, &File::from(exit_r), grace);
            done.finish();
        });
        relay
    }
}

/// A running relay; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Relay {
    done: Arc<(Mutex<bool>, Condvar)>,
}

impl Relay {
    fn finish(&self) {
        let (m, cv) = &*self.done;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    /// Blocks until every stream connection is relayed and closed.
    pub fn wait(&self) {
        let (m, cv) = &*self.done;
        let mut done = m.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            done = cv.wait(done).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether the relay has ended.
    pub fn is_done(&self) -> bool {
        *self.done.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// Host ends of the three connections, and the relay's pipes.
    struct Setup {
        host_in: UnixStream,
        host_out: UnixStream,
        host_err: UnixStream,
        child: [OwnedFd; 3],
        pipes: Pipes,
    }

    fn setup() -> Setup {
        let (host_in, a) = UnixStream::pair().unwrap();
        let (host_out, b) = UnixStream::pair().unwrap();
        let (host_err, c) = UnixStream::pair().unwrap();
        let (child, pipes) = Pipes::new(Stdio {
            stdin: Some(a.into()),
            stdout: Some(b.into()),
            stderr: Some(c.into()),
            reopen: None,
        })
        .unwrap();
        Setup {
            host_in,
            host_out,
            host_err,
            child,
            pipes,
        }
    }

    /// Starts the relay; the returned descriptor's drop is the exit.
    fn start(pipes: Pipes, grace: Duration) -> (Relay, OwnedFd) {
        let mut exit = None;
        let relay = pipes.start_with(grace, |w| exit = Some(w));
        (relay, exit.unwrap())
    }

    fn read_all(mut s: UnixStream) -> Vec<u8> {
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn output_is_relayed_whole_and_stdin_eof_reaches_the_process() {
        let s = setup();
        let (relay, exit) = start(s.pipes, EXIT_GRACE);
        let [stdin, stdout, stderr] = s.child;
        let big: Vec<u8> = (0..3 * BUF_SIZE + 17)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let want = big.clone();
        let writer = std::thread::spawn(move || {
            File::from(stdout).write_all(&big).unwrap();
            File::from(stderr).write_all(b"err").unwrap();
        });
        let reader = std::thread::spawn(move || read_all(s.host_out));
        let mut host_in = s.host_in;
        host_in.write_all(b"input").unwrap();
        host_in.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        File::from(stdin).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"input", "stdin, then end-of-file");
        writer.join().unwrap();
        assert_eq!(reader.join().unwrap(), want);
        assert_eq!(read_all(s.host_err), b"err");
        drop(exit);
        relay.wait();
        // The stdin connection is closed too.
        assert_eq!(read_all(host_in), b"");
    }

    #[test]
    fn a_descendant_holding_the_pipe_does_not_hold_the_relay() {
        let s = setup();
        let (relay, exit) = start(s.pipes, Duration::from_millis(200));
        let [_stdin, stdout, _stderr] = s.child;
        let mut out = File::from(stdout);
        out.write_all(b"before").unwrap();
        let t = Instant::now();
        drop(exit);
        std::thread::sleep(Duration::from_millis(50));
        out.write_all(b" during").unwrap();
        relay.wait();
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(read_all(s.host_out), b"before during");
        assert_eq!(read_all(s.host_err), b"");
        // The host's open stdin did not hold the relay either.
        assert_eq!(read_all(s.host_in), b"");
        drop(out);
    }

    #[test]
    fn stdin_the_process_does_not_read_ends_at_exit() {
        let s = setup();
        let (relay, exit) = start(s.pipes, Duration::from_millis(100));
        let [stdin, stdout, stderr] = s.child;
        drop((stdout, stderr));
        let mut host_in = s.host_in;
        host_in.set_nonblocking(true).unwrap();
        // Fill the pipe and the relay's buffer; the process never reads.
        let chunk = [7u8; 4096];
        let mut sent = 0;
        while sent < 8 * BUF_SIZE {
            match host_in.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(!relay.is_done());
        drop(exit);
        relay.wait();
        drop(stdin);
    }

    #[test]
    fn a_host_that_hangs_up_ends_its_stream() {
        let s = setup();
        let (relay, exit) = start(s.pipes, EXIT_GRACE);
        let [_stdin, stdout, _stderr] = s.child;
        drop(s.host_out);
        let mut out = File::from(stdout);
        // The relay's write fails, it closes the pipe, the writer sees EPIPE.
        let t = Instant::now();
        let err = loop {
            if let Err(e) = out.write_all(&[1u8; 4096]) {
                break e;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no EPIPE");
        };
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        drop(exit);
        relay.wait();
    }

    #[test]
    fn a_broken_init_output_connection_is_opened_again() {
        // The host's ends of the connections the relay opens again.
        let (tx, rx) = std::sync::mpsc::channel::<(&'static str, UnixStream)>();
        let tx = Mutex::new(tx);
        let reopen = Reopen(Arc::new(move |name| {
            let (host, agent) = UnixStream::pair()?;
            tx.lock()
                .unwrap()
                .send((name, host))
                .map_err(io::Error::other)?;
            Ok(agent.into())
        }));
        let (host_out, b) = UnixStream::pair().unwrap();
        let (child, pipes) = Pipes::new(Stdio {
            stdout: Some(b.into()),
            reopen: Some(reopen),
            ..Stdio::default()
        })
        .unwrap();
        let (relay, exit) = start(pipes, EXIT_GRACE);
        let [_stdin, stdout, _stderr] = child;
        let mut out = File::from(stdout);
        out.write_all(b"one ").unwrap();
        let mut got = [0u8; 4];
        (&host_out).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"one ");
        // A checkpoint's restore resets the connection.
        drop(host_out);
        out.write_all(b"two").unwrap();
        let (name, again) = rx.recv_timeout(Duration::from_secs(10)).expect("reopened");
        assert_eq!(name, "stdout");
        drop(out);
        drop(exit);
        relay.wait();
        assert_eq!(read_all(again), b"two");
    }

    #[test]
    fn no_streams_no_thread() {
        let (child, pipes) = Pipes::new(Stdio::default()).unwrap();
        assert_eq!(child.len(), 3);
        let relay = pipes.start_with(EXIT_GRACE, |_| panic!("nothing to watch"));
        assert!(relay.is_done());
        relay.wait();
    }
}
