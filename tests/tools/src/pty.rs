//! `husk-pty`: runs a command on a new pseudo-terminal, the way a person at
//! a terminal would, for the e2e `-t` checks. Usage:
//! `husk-pty ROWS COLS -- CMD [ARG...]`. Our stdin is typed into the
//! terminal line by line, one line every 300 ms (a person typing); a line
//! `<<TEXT` types nothing but waits until the terminal has shown TEXT (a
//! person waiting for a prompt), and `^C` types Ctrl-C. Everything the
//! terminal shows goes to our stdout; the exit status is CMD's.

use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::Duration;

fn run(args: &[String]) -> io::Result<i32> {
    let [rows, cols, sep, cmd @ ..] = args else {
        return Err(io::Error::other(
            "usage: husk-pty ROWS COLS -- CMD [ARG...]",
        ));
    };
    if sep != "--" || cmd.is_empty() {
        return Err(io::Error::other(
            "usage: husk-pty ROWS COLS -- CMD [ARG...]",
        ));
    }
    let ws = nix::pty::Winsize {
        ws_row: rows.parse().map_err(io::Error::other)?,
        ws_col: cols.parse().map_err(io::Error::other)?,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).map_err(io::Error::from)?;
    let slave: OwnedFd = pty.slave;
    let master = std::fs::File::from(pty.master);
    let slave_raw = slave.as_raw_fd();
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..])
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe; they make
    // the pty the child's controlling terminal.
    unsafe {
        c.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(slave_raw, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn()?;
    drop(c);
    let mut typer = master.try_clone()?;
    let shown = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let seen = shown.clone();
    thread::spawn(move || {
        for line in io::stdin().lock().lines().map_while(Result::ok) {
            if let Some(text) = line.strip_prefix("<<") {
                // Wait up to 5 minutes for TEXT on the screen.
                for _ in 0..3000 {
                    let got = seen
                        .lock()
                        .map(|v| contains(&v, text.as_bytes()))
                        .unwrap_or(true);
                    if got {
                        break;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            thread::sleep(Duration::from_millis(300));
            // "^C" alone on a line types Ctrl-C.
            let bytes: Vec<u8> = if line == "^C" {
                vec![3]
            } else {
                format!("{line}\n").into_bytes()
            };
            if typer.write_all(&bytes).is_err() {
                break;
            }
        }
    });
    let mut reader = master;
    let out = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdout = io::stdout();
        // EIO once the last slave fd closes.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                break;
            }
            if let Ok(mut v) = shown.lock() {
                v.extend_from_slice(&buf[..n]);
            }
            let _ = stdout.flush();
        }
    });
    let status = child.wait()?;
    thread::sleep(Duration::from_millis(200));
    drop(out);
    Ok(status
        .code()
        .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("husk-pty: {e}");
            ExitCode::from(125)
        }
    }
}
