//! The control channel's client: sends one [`Request`] and relays stdio,
//! terminal size changes and SIGINT/SIGTERM until the command's exit status
//! arrives.

use std::io::{IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::proto::{read_frame, write_frame, Frame, Kind, Request};
use super::{ForwardedPort, MachineError, Result};

/// A client of one machine's control channel.
#[derive(Debug, Clone)]
pub struct Client {
    /// The control channel's address (QEMU's host forward).
    pub addr: SocketAddr,
    /// The machine's secret.
    pub token: String,
}

/// What a relayed command reads and writes.
pub struct Stdio {
    /// Its input (read on a thread; EOF is passed on).
    pub stdin: Box<dyn Read + Send>,
    /// Where its stdout (or its terminal's output) goes.
    pub stdout: Box<dyn Write>,
    /// Where its stderr goes.
    pub stderr: Box<dyn Write>,
}

impl std::fmt::Debug for Stdio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stdio")
    }
}

impl Client {
    fn request(&self, kind: Kind, argv: Vec<String>) -> Request {
        Request {
            token: self.token.clone(),
            kind,
            argv,
            tty: false,
            rows: 0,
            cols: 0,
            env: Default::default(),
        }
    }

    fn connect(&self, timeout: Duration) -> Result<TcpStream> {
        let s = TcpStream::connect_timeout(&self.addr, timeout)
            .map_err(|e| MachineError::Connect(self.addr, e))?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    /// Sends a request without stdio and returns its single answer.
    fn simple(&self, kind: Kind, timeout: Duration) -> Result<Frame> {
        let mut s = self.connect(timeout)?;
        s.set_read_timeout(Some(timeout)).ok();
        write_frame(&mut s, &self.request(kind, vec![]).to_frame())?;
        match read_frame(&mut s)? {
            Some(Frame::Error(m)) => Err(MachineError::Remote(m)),
            Some(f) => Ok(f),
            None => Err(MachineError::ConnectionLost),
        }
    }

    /// Checks that the server answers.
    pub fn ping(&self, timeout: Duration) -> Result<()> {
        match self.simple(Kind::Ping, timeout)? {
            Frame::Exit(0) => Ok(()),
            _ => Err(MachineError::ConnectionLost),
        }
    }

    /// The ports containers publish inside the machine.
    pub fn ports(&self) -> Result<Vec<ForwardedPort>> {
        match self.simple(Kind::Ports, Duration::from_secs(10))? {
            Frame::Json(json) => serde_json::from_slice(&json)
                .map_err(|_| MachineError::Remote("husk machine: malformed port list".into())),
            _ => Err(MachineError::ConnectionLost),
        }
    }

    /// A connection to the Docker API server running inside the machine
    /// (`husk serve` there), relayed byte for byte by the control server.
    pub fn dial_api(&self) -> Result<TcpStream> {
        let timeout = Duration::from_secs(10);
        let mut s = self.connect(timeout)?;
        s.set_read_timeout(Some(timeout)).ok();
        write_frame(&mut s, &self.request(Kind::Api, vec![]).to_frame())?;
        match read_frame(&mut s)? {
            Some(Frame::Exit(0)) => {
                s.set_read_timeout(None).ok();
                Ok(s)
            }
            Some(Frame::Error(m)) => Err(MachineError::Remote(m)),
            _ => Err(MachineError::ConnectionLost),
        }
    }

    /// Asks the server to end, which powers the machine off.
    pub fn stop(&self) -> Result<()> {
        self.simple(Kind::Stop, Duration::from_secs(10)).map(|_| ())
    }

    /// Runs a command over the channel with the given stdio (pipes, no
    /// terminal) and returns its exit status.
    pub fn run(&self, kind: Kind, argv: Vec<String>, io: Stdio) -> Result<i32> {
        let req = self.request(kind, argv);
        let s = self.connect(Duration::from_secs(10))?;
        self.relay(s, req, io, false)
    }

    /// Runs a command with the process's own stdio: on a pseudo-terminal in
    /// raw mode when `tty` (and both stdin and stdout are terminals), else on
    /// pipes; SIGINT/SIGTERM and window size changes are passed on.
    pub fn run_here(&self, kind: Kind, argv: Vec<String>, tty: bool) -> Result<i32> {
        let tty = tty && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        let mut req = self.request(kind, argv);
        req.tty = tty;
        if tty {
            let (rows, cols) = window_size().unwrap_or((24, 80));
            req.rows = rows;
            req.cols = cols;
            if let Ok(t) = std::env::var("TERM") {
                req.env.insert("TERM".into(), t);
            }
        }
        let s = self.connect(Duration::from_secs(10))?;
        let _raw = if tty { RawMode::enter() } else { None };
        let io = Stdio {
            stdin: Box::new(std::io::stdin()),
            stdout: Box::new(std::io::stdout()),
            stderr: Box::new(std::io::stderr()),
        };
        self.relay(s, req, io, true)
    }

    fn relay(&self, s: TcpStream, req: Request, io: Stdio, signals: bool) -> Result<i32> {
        let tty = req.tty;
        let mut reader = s.try_clone().map_err(sock)?;
        let writer = Arc::new(Mutex::new(s));
        send(&writer, &req.to_frame())?;
        spawn_stdin(io.stdin, writer.clone());
        let sig_handle = if signals {
            Some(spawn_signals(writer.clone(), tty)?)
        } else {
            None
        };
        let (mut stdout, mut stderr) = (io.stdout, io.stderr);
        let result = loop {
            match read_frame(&mut reader) {
                Ok(Some(Frame::Stdout(b))) => {
                    let _ = stdout.write_all(&b);
                    let _ = stdout.flush();
                }
                Ok(Some(Frame::Stderr(b))) => {
                    let _ = stderr.write_all(&b);
                    let _ = stderr.flush();
                }
                Ok(Some(Frame::Exit(code))) => break Ok(code),
                Ok(Some(Frame::Error(m))) => break Err(MachineError::Remote(m)),
                Ok(Some(_)) => {}
                Ok(None) => break Err(MachineError::ConnectionLost),
                Err(e) => break Err(e.into()),
            }
        };
        if let Some(h) = sig_handle {
            h.close();
        }
        let _ = reader.shutdown(Shutdown::Both);
        result
    }
}

fn sock(e: std::io::Error) -> MachineError {
    MachineError::Io("the control connection".into(), e)
}

fn send(w: &Mutex<TcpStream>, f: &Frame) -> Result<()> {
    let mut g = w.lock().unwrap_or_else(|p| p.into_inner());
    write_frame(&mut *g, f)?;
    Ok(())
}

fn spawn_stdin(mut stdin: Box<dyn Read + Send>, w: Arc<Mutex<TcpStream>>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = send(&w, &Frame::StdinEof);
                    break;
                }
                Ok(n) => {
                    if send(&w, &Frame::Stdin(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

fn spawn_signals(w: Arc<Mutex<TcpStream>>, tty: bool) -> Result<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGWINCH};
    let mut sigs = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGWINCH])
        .map_err(|e| MachineError::Io("signal handlers".into(), e))?;
    let handle = sigs.handle();
    std::thread::spawn(move || {
        for sig in sigs.forever() {
            let frame = if sig == SIGWINCH {
                if !tty {
                    continue;
                }
                match window_size() {
                    Some((rows, cols)) => Frame::Resize { rows, cols },
                    None => continue,
                }
            } else {
                Frame::Signal(sig)
            };
            if send(&w, &frame).is_err() {
                break;
            }
        }
    });
    Ok(handle)
}

/// The terminal size of stdout, as (rows, columns).
fn window_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which is
    // valid for the call.
    let rc = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Puts stdin in raw mode until dropped.
struct RawMode(nix::sys::termios::Termios);

impl std::fmt::Debug for RawMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawMode")
    }
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        let _ = nix::sys::termios::tcsetattr(
            stdin.as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}
