//! The CLI end of an attached container stream (`run`, `start -a`,
//! `exec`): the terminal in raw mode for `-t`, stdin forwarded with `-i`,
//! window-size changes, Ctrl-C forwarded as a signal without `-t` (Docker's
//! sig-proxy), output written out, and the exit status returned.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;

use nix::sys::termios::{self, SetArg, Termios};

use crate::container::control::Frame;
use husk_proto::agent::ConsoleSize;

/// Restores the terminal's settings when dropped.
#[derive(Debug)]
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode; `None` when stdin is no terminal.
    pub fn enter() -> Option<RawMode> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// The size (rows, cols) of the terminal on stdout or stdin, if any.
pub fn terminal_size() -> Option<ConsoleSize> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `struct winsize` into `ws`, which
        // lives for the call.
        let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if r == 0 && ws.ws_row > 0 {
            return Some(ConsoleSize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            });
        }
    }
    None
}

/// Whether stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    nix::unistd::isatty(io::stdin().as_fd()).unwrap_or(false)
}

/// Streams an attached connection until the process's exit frame; returns
/// its status. `None` when the stream ended without one (the supervisor
/// died).
pub fn stream(conn: UnixStream, stdin: bool, tty: bool) -> io::Result<Option<i32>> {
    let writer = Arc::new(Mutex::new(conn.try_clone()?));
    let _raw = if tty && stdin { RawMode::enter() } else { None };
    if stdin {
        let w = writer.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 32 << 10];
            let mut inp = io::stdin().lock();
            loop {
                match inp.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = Frame::StdinEof.write_to(&mut *lock(&w));
                        break;
                    }
                    Ok(n) => {
                        if Frame::Stdin(buf[..n].to_vec())
                            .write_to(&mut *lock(&w))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
    }
    let signals = if tty {
        vec![signal_hook::consts::SIGWINCH]
    } else {
        vec![
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
            signal_hook::consts::SIGQUIT,
            signal_hook::consts::SIGUSR1,
            signal_hook::consts::SIGUSR2,
        ]
    };
    if let Ok(mut sigs) = signal_hook::iterator::Signals::new(&signals) {
        let w = writer.clone();
        thread::spawn(move || {
            for sig in sigs.forever() {
                let f = if sig == signal_hook::consts::SIGWINCH {
                    match terminal_size() {
                        Some(s) => Frame::Resize {
                            rows: s.rows,
                            cols: s.cols,
                        },
                        None => continue,
                    }
                } else {
                    Frame::Signal(sig)
                };
                if f.write_to(&mut *lock(&w)).is_err() {
                    break;
                }
            }
        });
    }
    let mut conn = conn;
    let mut out = io::stdout();
    let mut err = io::stderr();
    loop {
        match Frame::read_from(&mut conn)? {
            Some(Frame::Stdout(d)) => {
                out.write_all(&d)?;
                out.flush()?;
            }
            Some(Frame::Stderr(d)) => {
                err.write_all(&d)?;
                err.flush()?;
            }
            Some(Frame::Exit(code)) => return Ok(Some(code)),
            Some(_) => {}
            None => return Ok(None),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
