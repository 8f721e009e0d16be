//! The husk machine: a helper VM for hosts without hardware virtualization,
//! as `podman machine` or Docker Desktop have.
//!
//! On a host whose CPU lacks `vmx`/`svm`, `/dev/kvm` cannot boot Linux, so
//! the CLI forwards its commands ([`should_forward`], [`forward`]) into "the
//! machine": Debian's cloud kernel under QEMU's TCG with an emulated AMD SVM
//! CPU (`-cpu EPYC,+svm`), which loads `kvm-amd` and so has a real
//! `/dev/kvm` (see shared/NESTED-KVM.md). The first command that needs it
//! starts it (saying so once on stderr); it keeps running (QEMU daemonized)
//! and later commands reuse it until `husk machine stop`.
//!
//! # State directory `<data dir>/machine/`
//! `lock` (flock: one starter at a time), `machine.json` (pid, control port,
//! size, start time), `size.json` (size for the next start), `pid`, `token`
//! (0600), `initramfs-<hash>.cpio` (cached, keyed by a hash of its inputs),
//! `boot.cpio` (that plus the token, 0600), `disk.img` (sparse 16 GiB ext4,
//! mounted at /var/lib/husk inside; survives stops), `console.log`,
//! `qemu.log`, `monitor.sock` (HMP), `ports.json` + `ports.lock` (the host
//! forwards this side added).
//!
//! # Inside
//! The initramfs also holds the binaries and libraries of
//! `guest-kernel/machine-binaries.txt` and `machine-net.txt` (iptables,
//! mkfs.ext4...). `/init` (busybox sh) mounts the pseudo file systems and
//! cgroup2, loads the modules of `guest-kernel/machine-modules.txt` then
//! those `machine-net.txt` adds, sets eth0 to QEMU's user network
//! defaults (10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3), mounts the data
//! disk and runs `husk machine serve` with `HUSK_IN_MACHINE=1
//! HUSK_DATA_DIR=/var/lib/husk HUSK_LIB_DIR=/usr/lib/husk`. When `serve` ends (a `stop` request) it
//! kills everything, syncs, unmounts the disk and powers off; QEMU exits.
//!
//! # Control channel
//! TCP to 127.0.0.1:PORT on the host, forwarded by QEMU to the machine's
//! port [`GUEST_PORT`]. One request per connection, in length-prefixed
//! frames ([`proto`]): the client sends a `Request` {token, kind, argv, tty,
//! rows, cols, env} — kind `husk` runs `husk ARGV`, `ssh` runs ARGV (default
//! `sh`), `ping` answers `Exit 0`, `ports` answers a `Ports` frame, `stop`
//! answers `Exit 0` and ends the server. For `husk`/`ssh` the client then
//! sends `Stdin` (empty = EOF), `Resize` and `Signal` frames and the server
//! `Stdout`/`Stderr` frames and finally `Exit` (status, 128+N for signal N)
//! or `Error` (one line). A wrong token gets `Error`. The token is random
//! per start, kept 0600 in `<dir>/token` and reaches the machine inside the
//! 0600 initramfs (never on a command line that `ps` shows).
//!
//! # Published ports
//! The server answers `ports` from a [`PortProvider`] (the container state)
//! plus `/run/husk-machine-ports.json` inside the machine; while and after
//! each forwarded command the client adds QEMU host forwards
//! (`hostfwd_add net0 tcp:IP:P-:P` on the monitor) for new ports and removes
//! the ones it added that are gone ([`ports`]).

pub mod api_relay;
pub mod client;
pub mod images;
pub mod initramfs;
pub mod ports;
pub mod proto;
pub mod qemu;
pub mod server;

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use server::PortProvider;

/// The control channel's port inside the machine.
pub const GUEST_PORT: u16 = 7690;

/// What is printed once when a command starts the machine.
pub const STARTING: &str = "husk: no hardware virtualization here: starting the husk machine \
     (a helper VM); this takes a few seconds";

/// Machine errors.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// A file or socket operation failed.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    /// A program could not be run.
    #[error("cannot run {0}")]
    Exec(String, #[source] std::io::Error),
    /// The control channel broke a rule.
    #[error("husk machine control channel")]
    Proto(#[from] proto::ProtoError),
    /// The control channel is unreachable.
    #[error("cannot reach the husk machine at {0}")]
    Connect(SocketAddr, #[source] std::io::Error),
    /// The machine refused or failed the request.
    #[error("{0}")]
    Remote(String),
    /// The connection ended before the command's exit status came.
    #[error("the husk machine closed the connection")]
    ConnectionLost,
    /// No L1 kernel.
    #[error("no kernel for the husk machine: install linux-image-cloud-amd64 (or set HUSK_MACHINE_KERNEL)")]
    NoKernel,
    /// QEMU failed.
    #[error("{0}")]
    Qemu(String),
    /// The microVM files are missing.
    #[error("the husk machine needs the microVM files")]
    Assets(#[from] crate::assets::AssetError),
    /// A command line the machine cannot take.
    #[error("{0}")]
    BadArgs(String),
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, MachineError>;

/// A port published inside the machine that the host should forward.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ForwardedPort {
    /// Host address to listen on (0.0.0.0 for all).
    pub host_ip: IpAddr,
    /// Host port; the machine side uses the same number.
    pub host_port: u16,
    /// "tcp" or "udp".
    pub proto: String,
}

/// Whether this host's CPU has hardware virtualization usable by KVM.
pub fn hardware_virtualization() -> bool {
    Path::new("/dev/kvm").exists()
        && std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| {
                c.lines()
                    .filter(|l| l.starts_with("flags"))
                    .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
            })
            .unwrap_or(false)
}

/// Whether commands should go to the machine: never inside it
/// (`HUSK_IN_MACHINE`), always with `HUSK_MACHINE=1`, never with
/// `HUSK_MACHINE=0`, else when the host lacks hardware virtualization.
pub fn should_forward() -> bool {
    if std::env::var_os("HUSK_IN_MACHINE").is_some_and(|v| !v.is_empty()) {
        return false;
    }
    match std::env::var("HUSK_MACHINE").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => !hardware_virtualization(),
    }
}

/// Subcommands that need microVMs, and so go to the machine on a host
/// without hardware virtualization. Image commands stay on the host for now
/// (their registries and files are the host's).
pub const MACHINE_COMMANDS: &[&str] = &[
    "run", "create", "start", "stop", "restart", "kill", "rm", "ps", "exec", "logs", "attach",
    "wait", "inspect", "port", "top", "pause", "unpause", "stats", "volume", "network", "bench",
];

/// The subcommand of a command line (argv after the program name): the first
/// argument that is not an option, skipping a global `--data-dir X`.
pub fn subcommand(args: &[OsString]) -> Option<&str> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_str()?;
        if a == "--data-dir" {
            it.next();
        } else if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
}

/// Whether this command line (argv after the program name) goes to the
/// machine: never `machine ...`, `serve` or `cp`, never inside the machine or with
/// `HUSK_MACHINE=0`; every command with `HUSK_MACHINE=1`; else the
/// [`MACHINE_COMMANDS`] when the host lacks hardware virtualization.
pub fn should_forward_args(args: &[OsString]) -> bool {
    let sub = subcommand(args);
    // `serve` and `cp` reach the machine themselves (`api_relay`, `cli::cp`).
    if sub.is_none() || matches!(sub, Some("machine" | "serve" | "cp")) || !should_forward() {
        return false;
    }
    std::env::var("HUSK_MACHINE").as_deref() == Ok("1")
        || sub.is_some_and(|s| MACHINE_COMMANDS.contains(&s))
}

/// The arguments without a global `--data-dir X` / `--data-dir=X` (before
/// any `--`), as UTF-8.
pub fn strip_data_dir(args: Vec<OsString>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut it = args.into_iter();
    let mut rest = false;
    while let Some(a) = it.next() {
        let s = a
            .into_string()
            .map_err(|a| MachineError::BadArgs(format!("argument {a:?} is not UTF-8")))?;
        if !rest && s == "--data-dir" {
            it.next();
            continue;
        }
        if !rest && s.starts_with("--data-dir=") {
            continue;
        }
        rest |= s == "--";
        out.push(s);
    }
    Ok(out)
}

/// Whether a command line asks for a terminal (`-t`, `-it`, `--tty`...).
pub fn wants_tty(argv: &[String]) -> bool {
    argv.iter().take_while(|a| *a != "--").any(|a| {
        a == "--tty"
            || (a.len() > 1
                && a.starts_with('-')
                && !a.starts_with("--")
                && a[1..].chars().all(|c| c.is_ascii_alphabetic())
                && a.contains('t'))
    })
}

/// Runs `husk ARGS` (argv after the program name) in the machine, starting
/// it first if needed, with stdio, SIGINT/SIGTERM, the terminal and
/// published ports passed through; returns the command's exit status.
pub fn forward(data_dir: &Path, args: Vec<OsString>) -> Result<i32> {
    let argv = strip_data_dir(args)?;
    let tty = wants_tty(&argv);
    run_in_machine(data_dir, proto::Kind::Husk, argv, tty)
}

/// The machine's control client, starting the machine if needed.
pub fn client(data_dir: &Path) -> Result<client::Client> {
    let dir = data_dir.join("machine");
    let (m, _) = qemu::ensure(&dir, None, Some(STARTING))?;
    m.client(&dir)
}

/// Runs a request of `kind` in the machine (started if needed) with this
/// process's stdio, reconciling published ports during and after it.
pub fn run_in_machine(
    data_dir: &Path,
    kind: proto::Kind,
    argv: Vec<String>,
    tty: bool,
) -> Result<i32> {
    let dir = data_dir.join("machine");
    let (m, _) = qemu::ensure(&dir, None, Some(STARTING))?;
    let client = m.client(&dir)?;
    let poller = ports::Poller::start(&dir, &client);
    let code = client.run_here(kind, argv, tty);
    poller.finish();
    code
}

#[cfg(test)]
mod tests {
    use super::client::{Client, Stdio};
    use super::proto::Kind;
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A Write that keeps what it gets.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Sink {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    fn start_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let provider: PortProvider = Box::new(|| {
            vec![ForwardedPort {
                host_ip: "127.0.0.1".parse().unwrap(),
                host_port: 8080,
                proto: "tcp".into(),
            }]
        });
        std::thread::spawn(move || {
            server::serve(l, "secret".into(), provider, "/bin/echo".into()).unwrap()
        });
        addr
    }

    fn run(
        addr: SocketAddr,
        token: &str,
        kind: Kind,
        argv: &[&str],
        stdin: &[u8],
    ) -> (Result<i32>, String, String) {
        let c = Client {
            addr,
            token: token.into(),
        };
        let (out, err) = (Sink::default(), Sink::default());
        let r = c.run(
            kind,
            argv.iter().map(|s| s.to_string()).collect(),
            Stdio {
                stdin: Box::new(std::io::Cursor::new(stdin.to_vec())),
                stdout: Box::new(out.clone()),
                stderr: Box::new(err.clone()),
            },
        );
        (r, out.text(), err.text())
    }

    #[test]
    fn relays_stdio_and_exit_status() {
        let addr = start_server();
        let (r, out, err) = run(
            addr,
            "secret",
            Kind::Ssh,
            &[
                "sh",
                "-c",
                "echo out; echo err >&2; read x; echo got $x; exit 3",
            ],
            b"hello\n",
        );
        assert_eq!(r.unwrap(), 3);
        assert_eq!(out, "out\ngot hello\n");
        assert_eq!(err, "err\n");
    }

    #[test]
    fn stdin_eof_reaches_the_command() {
        let addr = start_server();
        let (r, out, _) = run(addr, "secret", Kind::Ssh, &["wc", "-c"], b"12345");
        assert_eq!(r.unwrap(), 0);
        assert_eq!(out.trim(), "5");
    }

    #[test]
    fn husk_kind_runs_the_husk_executable_and_signals_give_128_plus_n() {
        let addr = start_server();
        let (r, out, _) = run(addr, "secret", Kind::Husk, &["images", "-q"], b"");
        assert_eq!(r.unwrap(), 0);
        assert_eq!(out, "images -q\n");
        let (r, _, _) = run(addr, "secret", Kind::Ssh, &["sh", "-c", "kill -9 $$"], b"");
        assert_eq!(r.unwrap(), 137);
    }

    #[test]
    fn bad_token_is_refused() {
        let addr = start_server();
        let (r, out, _) = run(addr, "wrong", Kind::Ssh, &["sh", "-c", "echo ran"], b"");
        match r {
            Err(MachineError::Remote(m)) => assert_eq!(m, "husk machine: bad token"),
            other => panic!("{other:?}"),
        }
        assert_eq!(out, "");
        let c = Client {
            addr,
            token: "wrong".into(),
        };
        assert!(c.ports().is_err());
    }

    #[test]
    fn ping_ports_and_missing_program() {
        let addr = start_server();
        let c = Client {
            addr,
            token: "secret".into(),
        };
        c.ping(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(c.ports().unwrap()[0].host_port, 8080);
        let (r, _, _) = run(addr, "secret", Kind::Ssh, &["/nonexistent/prog"], b"");
        assert!(
            matches!(r, Err(MachineError::Remote(m)) if m.starts_with("cannot run /nonexistent/prog"))
        );
    }

    #[test]
    fn stop_ends_the_server() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            server::serve(l, "secret".into(), Box::new(Vec::new), "/bin/echo".into())
        });
        let c = Client {
            addr,
            token: "secret".into(),
        };
        c.ping(std::time::Duration::from_secs(5)).unwrap();
        c.stop().unwrap();
        t.join().unwrap().unwrap();
        assert!(c.ping(std::time::Duration::from_secs(1)).is_err());
    }

    #[test]
    fn tty_requests_run_on_a_terminal() {
        let addr = start_server();
        let c = Client {
            addr,
            token: "secret".into(),
        };
        // Over the raw protocol: ask for a pty of 33x101 and check it.
        let t0 = std::time::Instant::now();
        let mut s = std::net::TcpStream::connect(c.addr).unwrap();
        let req = proto::Request {
            token: "secret".into(),
            kind: Kind::Ssh,
            argv: vec!["sh".into(), "-c".into(), "test -t 0 && stty size".into()],
            tty: true,
            rows: 33,
            cols: 101,
            env: Default::default(),
        };
        proto::write_frame(&mut s, &req.to_frame()).unwrap();
        let mut out = Vec::new();
        let code = loop {
            match proto::read_frame(&mut s).unwrap().unwrap() {
                proto::Frame::Stdout(b) => out.extend(b),
                proto::Frame::Exit(c) => break c,
                _ => {}
            }
        };
        assert_eq!(code, 0);
        assert_eq!(String::from_utf8_lossy(&out).trim(), "33 101");
        // The exit status comes when the terminal closes, not after the
        // drain timeout for stray holders of it.
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn resize_and_input_reach_the_terminal() {
        let addr = start_server();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let req = proto::Request {
            token: "secret".into(),
            kind: Kind::Ssh,
            argv: vec![
                "sh".into(),
                "-c".into(),
                "stty -echo; echo ready; read x; stty size; echo got-$x".into(),
            ],
            tty: true,
            rows: 10,
            cols: 20,
            env: Default::default(),
        };
        proto::write_frame(&mut s, &req.to_frame()).unwrap();
        let mut out = Vec::new();
        let mut sent = false;
        let code = loop {
            match proto::read_frame(&mut s).unwrap().unwrap() {
                proto::Frame::Stdout(b) => out.extend(b),
                proto::Frame::Exit(c) => break c,
                _ => {}
            }
            if !sent && String::from_utf8_lossy(&out).contains("ready") {
                sent = true;
                let resize = proto::Frame::Resize {
                    rows: 50,
                    cols: 132,
                };
                proto::write_frame(&mut s, &resize).unwrap();
                proto::write_frame(&mut s, &proto::Frame::Stdin(b"abc\r".to_vec())).unwrap();
            }
        };
        assert_eq!(code, 0);
        let text = String::from_utf8_lossy(&out).replace('\r', "");
        assert!(text.ends_with("50 132\ngot-abc\n"), "{text:?}");
    }

    #[test]
    fn subcommand_skips_global_options() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            subcommand(&a(&["--data-dir", "/x", "run", "-it"])),
            Some("run")
        );
        assert_eq!(
            subcommand(&a(&["--data-dir=/x", "machine", "ssh"])),
            Some("machine")
        );
        assert_eq!(subcommand(&a(&["--help"])), None);
    }

    #[test]
    fn data_dir_is_stripped_and_tty_detected() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            strip_data_dir(a(&[
                "--data-dir",
                "/x",
                "run",
                "--data-dir=/y",
                "busybox",
                "--",
                "--data-dir"
            ]))
            .unwrap(),
            vec!["run", "busybox", "--", "--data-dir"]
        );
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(wants_tty(&s(&["run", "-it", "busybox"])));
        assert!(wants_tty(&s(&["run", "--tty", "busybox"])));
        assert!(!wants_tty(&s(&["run", "-i", "busybox"])));
        assert!(!wants_tty(&s(&[
            "run", "-p", "8080:80", "busybox", "--", "ls", "-t"
        ])));
    }
}
