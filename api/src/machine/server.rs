//! `husk machine serve`: the control channel's server, run inside the
//! machine by its `/init`. Each connection carries one [`Request`]; commands
//! run on a pseudo-terminal or on pipes and their stdio is relayed as frames.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::proto::{read_frame, write_frame, Frame, Kind, Request};
use super::{ForwardedPort, MachineError, Result};

/// What reports the ports containers publish inside the machine.
pub type PortProvider = Box<dyn Fn() -> Vec<ForwardedPort> + Send + Sync>;

/// How long output is still relayed after the command ended, for
/// descendants that keep its stdout open.
const DRAIN: Duration = Duration::from_secs(2);

/// The server's shared settings.
struct Ctx {
    token: String,
    ports: PortProvider,
    husk_exe: PathBuf,
    api_socket: PathBuf,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("husk_exe", &self.husk_exe)
            .finish_non_exhaustive()
    }
}

/// Serves connections on `listener` until a [`Kind::Stop`] request.
/// `husk_exe` is what [`Kind::Husk`] requests run.
pub fn serve(
    listener: TcpListener,
    token: String,
    ports: PortProvider,
    husk_exe: PathBuf,
) -> Result<()> {
    let wake = listener
        .local_addr()
        .map_err(|e| MachineError::Io("the control socket".into(), e))?;
    let ctx = Arc::new(Ctx {
        token,
        ports,
        husk_exe,
        api_socket: crate::serve::default_socket(),
        stopping: AtomicBool::new(false),
    });
    for conn in listener.incoming() {
        if ctx.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else { continue };
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(&ctx, stream) {
                log::warn!("machine serve: {e}");
            }
            if ctx.stopping.load(Ordering::SeqCst) {
                // Wake the accept loop so it sees the flag.
                let mut addr = wake;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                let _ = TcpStream::connect(addr);
            }
        });
    }
    Ok(())
}

fn handle(ctx: &Ctx, mut stream: TcpStream) -> Result<()> {
    let _ = stream.set_nodelay(true);
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let req = match read_frame(&mut stream)? {
        Some(f) => Request::from_frame(&f)?,
        None => return Ok(()),
    };
    stream.set_read_timeout(None).ok();
    if !same_token(&req.token, &ctx.token) {
        write_frame(&mut stream, &Frame::Error("husk machine: bad token".into()))?;
        return Ok(());
    }
    match req.kind {
        Kind::Ping => write_frame(&mut stream, &Frame::Exit(0))?,
        Kind::Ports => {
            let json = serde_json::to_vec(&(ctx.ports)()).unwrap_or_default();
            write_frame(&mut stream, &Frame::Json(json))?;
        }
        Kind::Stop => {
            ctx.stopping.store(true, Ordering::SeqCst);
            write_frame(&mut stream, &Frame::Exit(0))?;
        }
        Kind::Api => {
            super::api_relay::serve_api_connection(stream, &ctx.api_socket)?;
            return Ok(());
        }
        Kind::Husk | Kind::Ssh => {
            if let Err(e) = run(ctx, &req, stream.try_clone().map_err(sock)?) {
                let _ = write_frame(&mut stream, &Frame::Error(crate::error::chain(&e)));
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

fn sock(e: std::io::Error) -> MachineError {
    MachineError::Io("the control connection".into(), e)
}

/// The command line a request runs.
fn command_for(ctx: &Ctx, req: &Request) -> Command {
    let mut cmd = match req.kind {
        Kind::Husk => {
            let mut c = Command::new(&ctx.husk_exe);
            c.args(&req.argv);
            c
        }
        _ => {
            let argv: Vec<String> = if req.argv.is_empty() {
                vec!["sh".into()]
            } else {
                req.argv.clone()
            };
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    match req.env.get("TERM") {
        Some(t) => cmd.env("TERM", t),
        None if req.tty => cmd.env("TERM", "xterm"),
        None => &mut cmd,
    };
    cmd
}

/// Where the command's input goes.
enum Input {
    Pty(File),
    Pipe(Option<std::process::ChildStdin>),
}

fn run(ctx: &Ctx, req: &Request, stream: TcpStream) -> Result<()> {
    let out = Arc::new(Mutex::new(stream.try_clone().map_err(sock)?));
    let mut cmd = command_for(ctx, req);
    let (tx, rx) = mpsc::channel::<()>();
    let mut readers = 0;
    let (mut child, input) = if req.tty {
        let ws = nix::pty::Winsize {
            ws_row: req.rows.max(1),
            ws_col: req.cols.max(1),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None)
            .map_err(|e| MachineError::Io("a pseudo-terminal".into(), e.into()))?;
        let slave: OwnedFd = pty.slave;
        for set in [Command::stdin, Command::stdout, Command::stderr] {
            let fd = slave
                .try_clone()
                .map_err(|e| MachineError::Io("a pty".into(), e))?;
            set(&mut cmd, Stdio::from(fd));
        }
        // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe and only
        // touch the child's own session and its stdin (the pty slave).
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = spawn(&mut cmd, req)?;
        // The Command holds slave copies too: close them all, so the master
        // reads EIO once the command's session has let go of the terminal.
        drop(cmd);
        drop(slave);
        let master = File::from(pty.master);
        let reader = master
            .try_clone()
            .map_err(|e| MachineError::Io("a pty".into(), e))?;
        relay_output(reader, out.clone(), Frame::Stdout, tx.clone());
        readers += 1;
        (child, Input::Pty(master))
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut cmd, req)?;
        if let Some(o) = child.stdout.take() {
            relay_output(o, out.clone(), Frame::Stdout, tx.clone());
            readers += 1;
        }
        if let Some(e) = child.stderr.take() {
            relay_output(e, out.clone(), Frame::Stderr, tx.clone());
            readers += 1;
        }
        let stdin = child.stdin.take();
        (child, Input::Pipe(stdin))
    };
    drop(tx);
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let exited = Arc::new(AtomicBool::new(false));
    {
        let exited = exited.clone();
        std::thread::spawn(move || relay_input(stream, input, pid, &exited));
    }
    let code = wait(&mut child)?;
    exited.store(true, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + DRAIN;
    for _ in 0..readers {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
    write_frame(&mut *w, &Frame::Exit(code))?;
    Ok(())
}

fn spawn(cmd: &mut Command, req: &Request) -> Result<Child> {
    cmd.spawn().map_err(|e| {
        let what = match req.kind {
            Kind::Husk => "husk".to_string(),
            _ => req.argv.first().cloned().unwrap_or_else(|| "sh".into()),
        };
        MachineError::Exec(what, e)
    })
}

fn wait(child: &mut Child) -> Result<i32> {
    let st = child
        .wait()
        .map_err(|e| MachineError::Io("waiting for the command".into(), e))?;
    Ok(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)))
}

/// Copies `src` into frames made by `make` until EOF or error, then tells `done`.
fn relay_output(
    mut src: impl Read + Send + 'static,
    out: Arc<Mutex<TcpStream>>,
    make: fn(Vec<u8>) -> Frame,
    done: mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
                    if write_frame(&mut *w, &make(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = done.send(());
    });
}

/// Applies the client's stdin, resize and signal frames until it hangs up;
/// a client that leaves before the command ends sends it SIGHUP.
fn relay_input(mut stream: TcpStream, mut input: Input, pid: Pid, exited: &AtomicBool) {
    while let Ok(Some(frame)) = read_frame(&mut stream) {
        match (frame, &mut input) {
            (Frame::Stdin(b), Input::Pty(m)) if !b.is_empty() => {
                let _ = m.write_all(&b);
            }
            (Frame::StdinEof, Input::Pipe(p)) => *p = None,
            (Frame::Stdin(b), Input::Pipe(p)) => {
                if let Some(w) = p {
                    if w.write_all(&b).is_err() {
                        *p = None;
                    }
                }
            }
            (Frame::Resize { rows, cols }, Input::Pty(m)) => {
                let ws = libc::winsize {
                    ws_row: rows,
                    ws_col: cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: TIOCSWINSZ reads one winsize from the pointer,
                // which is valid for the call; the fd is our pty master.
                unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
            }
            (Frame::Signal(n), _) => {
                if let Ok(sig) = Signal::try_from(n) {
                    if !exited.load(Ordering::SeqCst) {
                        let _ = kill(pid, sig);
                    }
                }
            }
            _ => {}
        }
    }
    if !exited.load(Ordering::SeqCst) {
        let _ = kill(pid, Signal::SIGHUP);
    }
}

/// Compares a presented token with the machine's in time that does not
/// depend on where they differ (only on the presented token's length).
fn same_token(presented: &str, expected: &str) -> bool {
    let (p, e) = (presented.as_bytes(), expected.as_bytes());
    let mut diff = u8::from(p.len() != e.len());
    for (i, b) in p.iter().enumerate() {
        diff |= b ^ e.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc123", "abc123"));
        for bad in ["", "abc12", "abc1234", "xbc123", "abc12x"] {
            assert!(!same_token(bad, "abc123"), "{bad}");
        }
    }
}
