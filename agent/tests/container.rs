//! A busybox container on the host, as root, through the same code path the
//! guest uses: the control protocol over a Unix socket pair, layers from a
//! real gzip blob, overlay, namespaces, pivot_root, cgroup files, stdio on
//! their own connections.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use husk_agent::reaper::ReapMode;
use husk_agent::server::{Server, ServerConfig, UnixConnector};
use husk_layers::UnpackOptions;
use husk_proto::agent::{
    BlobSource, ConsoleSize, CreateRequest, Envelope, ErrorKind, ExecRequest, ExitStatus,
    ImageSource, Layer, Limits, ProcessSpec, Request, Response, StdioPorts, StreamHello,
    PROTOCOL_VERSION,
};

const APPLETS: &[&str] = &[
    "sh", "echo", "hostname", "id", "sleep", "cat", "grep", "test", "ls", "true", "stty", "pwd",
    "seq",
];

fn require_root_and_busybox() -> PathBuf {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the container tests need root (namespaces, mounts); run them as root"
    );
    let bb = PathBuf::from("/bin/busybox");
    assert!(bb.exists(), "/bin/busybox is missing: apt-get install busybox-static (listed in tests/apt-packages.txt)");
    bb
}

/// A gzip layer holding static busybox, its applets, passwd and group.
fn busybox_layer(dir: &Path) -> Layer {
    let bb = std::fs::read(require_root_and_busybox()).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        b.append_data(&mut h, path, data).unwrap();
    };
    for d in ["bin", "etc", "tmp", "home/app"] {
        add(d, tar::EntryType::Directory, 0o755, b"", None);
    }
    // A symlink that leaves the root (for the working-directory test).
    add("evil", tar::EntryType::Symlink, 0o777, b"", Some("/etc"));
    add("bin/busybox", tar::EntryType::Regular, 0o755, &bb, None);
    for a in APPLETS {
        add(
            &format!("bin/{a}"),
            tar::EntryType::Symlink,
            0o777,
            b"",
            Some("busybox"),
        );
    }
    add(
        "etc/passwd",
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        None,
    );
    add(
        "etc/group",
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:\napp:x:1000:\n",
        None,
    );
    let blob = common::gzip(&b.into_inner().unwrap());
    let (path, digest) = common::write_blob(dir, "busybox.tar.gz", &blob);
    Layer {
        digest,
        media_type: common::OCI_GZ.into(),
        size: blob.len() as u64,
        source: BlobSource::Path { path },
    }
}

/// One control connection.
struct Conn {
    s: UnixStream,
    seq: u64,
}

impl Conn {
    fn call(&mut self, body: Request) -> Response {
        self.seq += 1;
        let env = Envelope {
            version: PROTOCOL_VERSION,
            seq: self.seq,
            body,
        };
        husk_proto::agent::write_frame(&mut self.s, &env).unwrap();
        let resp: Envelope<Response> = husk_proto::agent::read_frame(&mut self.s).unwrap();
        assert_eq!(resp.seq, self.seq);
        assert_eq!(resp.version, PROTOCOL_VERSION);
        resp.body
    }
}

struct Harness {
    dir: tempfile::TempDir,
    client: Conn,
    server: Option<JoinHandle<()>>,
    next_port: u32,
}

/// What the agent's `/etc/resolv.conf` holds in these tests.
const RESOLV: &str = "nameserver 10.9.9.9\nsearch husk.test\n";

impl Harness {
    fn new() -> Self {
        Self::with_cgroup_root(None)
    }

    fn with_cgroup_root(cgroup_root: Option<PathBuf>) -> Self {
        require_root_and_busybox();
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, RESOLV).unwrap();
        let cfg = ServerConfig {
            run_dir: dir.path().join("run"),
            cgroup_root: cgroup_root.unwrap_or_else(|| dir.path().join("cgroup")),
            unpack: UnpackOptions::default(),
            run_once: false,
            reap: ReapMode::Tracked,
            agent_version: "test".into(),
            resolv_conf: Some(resolv),
            // The hostname's address when sharing the network: lo's, so the
            // test does not depend on this host's interfaces.
            network_interface: "lo".into(),
        };
        std::fs::create_dir_all(&cfg.cgroup_root).unwrap();
        let connector = UnixConnector {
            prefix: dir.path().join("v.sock"),
        };
        let sock = dir.path().join("ctl");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let s = std::sync::Arc::new(Server::new(cfg, connector));
            s.serve_all(move || listener.accept().map(|(s, _)| s));
        });
        let mut h = Self {
            dir,
            client: Conn {
                s: UnixStream::connect(&sock).unwrap(),
                seq: 0,
            },
            server: Some(server),
            next_port: 1000,
        };
        assert!(matches!(h.call(Request::Health), Response::Ready { .. }));
        h
    }

    /// Another control connection (as a second host-side waiter would open).
    fn connect(&self) -> Conn {
        Conn {
            s: UnixStream::connect(self.dir.path().join("ctl")).unwrap(),
            seq: 0,
        }
    }

    fn call(&mut self, body: Request) -> Response {
        self.client.call(body)
    }

    /// Listens on a fresh port; the thread returns the accepted connection
    /// once its hello was read, for the test to read and write as it goes.
    fn live_port(&mut self) -> (u32, JoinHandle<(StreamHello, UnixStream)>) {
        self.next_port += 1;
        let port = self.next_port;
        let l = UnixListener::bind(self.dir.path().join(format!("v.sock_{port}"))).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let hello: StreamHello = husk_proto::agent::read_frame(&mut s).unwrap();
            (hello, s)
        });
        (port, h)
    }

    /// Listens on a fresh port; the thread returns the hello and everything
    /// read, after writing `input` (then closing the write side).
    fn port(&mut self, input: Option<&'static [u8]>) -> (u32, JoinHandle<(StreamHello, Vec<u8>)>) {
        self.next_port += 1;
        let port = self.next_port;
        let l = UnixListener::bind(self.dir.path().join(format!("v.sock_{port}"))).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let hello: StreamHello = husk_proto::agent::read_frame(&mut s).unwrap();
            if let Some(data) = input {
                s.write_all(data).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
            }
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            (hello, out)
        });
        (port, h)
    }

    /// Creates container `id` (no hostname, no limits) and starts it.
    fn create_and_start(&mut self, id: &str, layer: &Layer, process: Proc) {
        let created = self.create(id, layer, process, "", Limits::default());
        assert!(matches!(created, Response::Created { .. }), "{created:?}");
        let started = self.call(Request::Start { id: id.into() });
        assert!(matches!(started, Response::Started { .. }), "{started:?}");
    }

    fn create(
        &mut self,
        id: &str,
        layer: &Layer,
        process: Proc,
        hostname: &str,
        limits: Limits,
    ) -> Response {
        let (process, stdio) = process.split();
        self.call(Request::Create(Box::new(CreateRequest {
            id: id.into(),
            image: ImageSource::Layers {
                layers: vec![layer.clone()],
            },
            process,
            stdio,
            hostname: hostname.into(),
            mounts: vec![],
            limits,
            new_network: true,
            hosts: Vec::new(),
            tmpfs: Vec::new(),
            readonly_rootfs: false,
            security: Default::default(),
        })))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_eq!(self.call(Request::Shutdown), Response::ShuttingDown);
            if let Some(s) = self.server.take() {
                s.join().unwrap();
            }
        } else {
            let _ = husk_proto::agent::write_frame(
                &mut self.client.s,
                &Envelope {
                    version: PROTOCOL_VERSION,
                    seq: 0,
                    body: Request::Shutdown,
                },
            );
        }
    }
}

/// Test shorthand: a process and where its stdio goes.
#[derive(Debug, Clone, Default)]
struct Proc {
    cmd: Vec<String>,
    env: Vec<String>,
    workdir: String,
    user: String,
    tty: bool,
    console_size: Option<ConsoleSize>,
    stdio: StdioPorts,
}

impl Proc {
    fn split(self) -> (ProcessSpec, StdioPorts) {
        let spec = ProcessSpec {
            cmd: self.cmd,
            env: self.env,
            workdir: self.workdir,
            user: self.user,
            tty: self.tty,
            console_size: self.console_size,
            ..Default::default()
        };
        (spec, self.stdio)
    }
}

/// Test shorthand for an [`ExecRequest`] built from a [`Proc`].
struct ExecReq {
    id: String,
    exec_id: String,
    process: Proc,
}

impl From<ExecReq> for ExecRequest {
    fn from(r: ExecReq) -> Self {
        let (process, stdio) = r.process.split();
        ExecRequest {
            id: r.id,
            exec_id: r.exec_id,
            process,
            stdio,
        }
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn text(h: JoinHandle<(StreamHello, Vec<u8>)>) -> (StreamHello, String) {
    let (hello, out) = h.join().unwrap();
    (hello, String::from_utf8(out).unwrap())
}

#[test]
fn sh_runs_as_pid_1_with_hostname_uid_and_exit_status() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let (out_port, out) = h.port(None);
    let (err_port, err) = h.port(None);
    let process = Proc {
        cmd: sh("echo hello; hostname; id -u; echo $$; echo oops >&2; exit 3"),
        user: "app".into(),
        workdir: "/home/app".into(),
        stdio: StdioPorts {
            stdin: None,
            stdout: Some(out_port),
            stderr: Some(err_port),
        },
        ..Default::default()
    };
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        cpu_millis: Some(500),
        pids: Some(64),
    };
    assert_eq!(
        h.create("c1", &layer, process, "husk-test", limits),
        Response::Created { id: "c1".into() }
    );
    let Response::Started { pid } = h.call(Request::Start { id: "c1".into() }) else {
        panic!("start failed")
    };
    let status = h.call(Request::Wait {
        id: "c1".into(),
        exec_id: None,
    });
    assert_eq!(
        status,
        Response::Exited {
            status: ExitStatus::Code { code: 3 }
        }
    );
    let (hello, stdout) = text(out);
    assert_eq!(hello.stream, "stdout");
    assert_eq!(hello.id, "c1");
    assert_eq!(stdout, "hello\nhusk-test\n1000\n1\n");
    assert_eq!(text(err).1, "oops\n");
    let cg = h.dir.path().join("cgroup/c1");
    let rd = |f: &str| std::fs::read_to_string(cg.join(f)).unwrap();
    assert_eq!(rd("memory.max"), "67108864");
    assert_eq!(rd("cpu.max"), "50000 100000");
    assert_eq!(rd("pids.max"), "64");
    assert_eq!(rd("cgroup.procs"), pid.to_string());
    assert_ne!(
        nix::unistd::gethostname().unwrap(),
        "husk-test",
        "host's hostname untouched"
    );
    // The pristine layers are untouched by the container.
    let images: Vec<_> = std::fs::read_dir(h.dir.path().join("run/images"))
        .unwrap()
        .collect();
    assert_eq!(images.len(), 1);
}

/// Docker's `--network none`: the container's own network namespace has
/// its loopback up, so a server on 127.0.0.1 answers inside it.
#[test]
fn a_new_network_namespace_has_its_loopback_up() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let (out_port, out) = h.port(None);
    let process = Proc {
        cmd: sh("ip -o addr show dev lo; ip -o link show dev lo; ping -c 1 -W 2 127.0.0.1 >/dev/null && echo answered"),
        stdio: StdioPorts {
            stdin: None,
            stdout: Some(out_port),
            stderr: None,
        },
        ..Default::default()
    };
    h.create_and_start("lo", &layer, process);
    assert_eq!(wait(&mut h.client, "lo", None), exited(0));
    let stdout = text(out).1;
    assert!(stdout.contains("inet 127.0.0.1/8"), "{stdout}");
    assert!(stdout.contains(",UP"), "{stdout}");
    assert!(stdout.ends_with("answered\n"), "{stdout}");
}

#[test]
fn exec_stdin_signals_and_isolation() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let init = Proc {
        cmd: vec!["sleep".into(), "1000".into()],
        ..Default::default()
    };
    h.create_and_start("c2", &layer, init);

    let (out_port, out) = h.port(None);
    let script = "echo $$; hostname; cat /proc/1/cmdline; echo; id -u; \
        test -c /dev/null && test -c /dev/urandom && test -e /dev/ptmx && test -d /dev/pts && test -d /dev/shm && echo dev-ok; \
        grep -q '^sysfs /sys sysfs ro' /proc/mounts && echo sys-ro; \
        grep -c : /proc/net/dev; ls /; exit 5";
    let exec = |exec_id: &str, cmd: Vec<String>, stdio: StdioPorts| {
        Request::Exec(
            ExecReq {
                id: "c2".into(),
                exec_id: exec_id.into(),
                process: Proc {
                    cmd,
                    stdio,
                    ..Default::default()
                },
            }
            .into(),
        )
    };
    let r = h.call(exec(
        "e1",
        sh(script),
        StdioPorts {
            stdout: Some(out_port),
            ..Default::default()
        },
    ));
    assert!(matches!(r, Response::Started { .. }), "{r:?}");
    let w = h.call(Request::Wait {
        id: "c2".into(),
        exec_id: Some("e1".into()),
    });
    assert_eq!(
        w,
        Response::Exited {
            status: ExitStatus::Code { code: 5 }
        }
    );
    let (hello, stdout) = text(out);
    assert_eq!(hello.exec_id.as_deref(), Some("e1"));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_ne!(lines[0], "1", "exec'd shell is not PID 1");
    assert!(
        lines[0].parse::<u32>().unwrap() < 100,
        "small pid in the container's namespace: {}",
        lines[0]
    );
    assert_eq!(lines[1], "c2", "hostname defaults to the id");
    assert_eq!(
        lines[2], "sleep\u{0}1000\u{0}",
        "PID 1 of the namespace is the init"
    );
    assert_eq!(lines[3], "0");
    assert_eq!(lines[4], "dev-ok");
    assert_eq!(lines[5], "sys-ro");
    assert_eq!(lines[6], "1", "only lo in the new network namespace");
    let root_listing: Vec<&str> = lines[7..].to_vec();
    for want in ["bin", "dev", "etc", "proc", "sys"] {
        assert!(
            root_listing.contains(&want),
            "{want} missing in {root_listing:?}"
        );
    }
    assert!(
        !root_listing.contains(&"work") && !root_listing.contains(&"usr"),
        "host root visible: {root_listing:?}"
    );

    // stdin on its own connection.
    let (in_port, inp) = h.port(Some(b"ping\n"));
    let (out_port, out) = h.port(None);
    let r = h.call(exec(
        "cat2",
        vec!["cat".into()],
        StdioPorts {
            stdin: Some(in_port),
            stdout: Some(out_port),
            ..Default::default()
        },
    ));
    assert!(matches!(r, Response::Started { .. }), "{r:?}");
    let w = h.call(Request::Wait {
        id: "c2".into(),
        exec_id: Some("cat2".into()),
    });
    assert_eq!(
        w,
        Response::Exited {
            status: ExitStatus::Code { code: 0 }
        }
    );
    assert_eq!(text(out).1, "ping\n");
    drop(inp);

    // Signals: to an exec, then to the init.
    assert!(matches!(
        h.call(exec(
            "s",
            vec!["sleep".into(), "1000".into()],
            StdioPorts::default()
        )),
        Response::Started { .. }
    ));
    assert_eq!(
        h.call(Request::Signal {
            id: "c2".into(),
            exec_id: Some("s".into()),
            signal: 15
        }),
        Response::Signalled
    );
    let w = h.call(Request::Wait {
        id: "c2".into(),
        exec_id: Some("s".into()),
    });
    assert_eq!(
        w,
        Response::Exited {
            status: ExitStatus::Signal { signal: 15 }
        }
    );
    assert_eq!(
        h.call(Request::Signal {
            id: "c2".into(),
            exec_id: None,
            signal: 9
        }),
        Response::Signalled
    );
    let w = h.call(Request::Wait {
        id: "c2".into(),
        exec_id: None,
    });
    assert_eq!(
        w,
        Response::Exited {
            status: ExitStatus::Signal { signal: 9 }
        }
    );
    let r = h.call(exec("late", vec!["true".into()], StdioPorts::default()));
    assert!(
        matches!(
            r,
            Response::Error {
                kind: ErrorKind::InvalidState,
                ..
            }
        ),
        "{r:?}"
    );
}

#[test]
fn errors_are_typed() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let cmd = |c: &str| Proc {
        cmd: vec![c.into()],
        ..Default::default()
    };
    let mut bad = layer.clone();
    bad.digest = common::digest(b"not it");
    let r = h.create("bad", &bad, cmd("true"), "", Limits::default());
    let Response::Error { kind, message } = r else {
        panic!("{r:?}")
    };
    assert_eq!(kind, ErrorKind::DigestMismatch);
    assert!(message.contains("digest mismatch: expected"), "{message}");

    assert!(matches!(
        h.create("ok", &layer, cmd("nonexistent-cmd"), "", Limits::default()),
        Response::Created { .. }
    ));
    let r = h.create("ok", &layer, cmd("true"), "", Limits::default());
    assert!(
        matches!(
            r,
            Response::Error {
                kind: ErrorKind::AlreadyExists,
                ..
            }
        ),
        "{r:?}"
    );
    let r = h.call(Request::Start { id: "ok".into() });
    let Response::Error { kind, message } = r else {
        panic!("{r:?}")
    };
    assert_eq!(kind, ErrorKind::CommandNotFound);
    assert!(
        message.contains(r#"exec: "nonexistent-cmd": executable file not found in $PATH"#),
        "{message}"
    );
    let r = h.call(Request::Start { id: "nope".into() });
    assert!(
        matches!(
            r,
            Response::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ),
        "{r:?}"
    );
    let r = h.create("../x", &layer, cmd("true"), "", Limits::default());
    assert!(
        matches!(
            r,
            Response::Error {
                kind: ErrorKind::InvalidRequest,
                ..
            }
        ),
        "{r:?}"
    );
    let r = h.create(
        "u",
        &layer,
        Proc {
            user: "nobody".into(),
            ..cmd("true")
        },
        "",
        Limits::default(),
    );
    let Response::Error { message, .. } = r else {
        panic!("{r:?}")
    };
    assert!(
        message.contains("no such user or group \"nobody\""),
        "{message}"
    );
    assert!(matches!(
        h.call(Request::Hello { version: 99 }),
        Response::Error {
            kind: ErrorKind::UnsupportedVersion,
            ..
        }
    ));
    assert!(matches!(
        h.call(Request::Health),
        Response::Ready { healthy: true, .. }
    ));

    // The unpacked image is cached: with the blob gone, a new container of
    // the same image is created without unpacking.
    let BlobSource::Path { path } = &layer.source else {
        unreachable!()
    };
    std::fs::remove_file(path).unwrap();
    assert!(matches!(
        h.create("again", &layer, cmd("true"), "", Limits::default()),
        Response::Created { .. }
    ));
}

/// With a real cgroup v2 hierarchy: the init is moved into the container's
/// cgroup before it runs, and sees it as the root of its cgroup namespace.
/// (This host's cgroup2 has no memory/cpu/pids controllers, so limits are
/// checked as files above and enforced in the guest.)
#[test]
fn real_cgroup2_membership_and_cgroup_namespace() {
    let unified = Path::new("/sys/fs/cgroup/unified");
    let root = if unified.join("cgroup.procs").exists() {
        unified.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    };
    assert!(
        root.join("cgroup.procs").exists(),
        "no cgroup v2 hierarchy at {}",
        root.display()
    );
    let parent = root.join(format!("husk-test-{}", std::process::id()));
    std::fs::create_dir_all(&parent).unwrap();
    let mut h = Harness::with_cgroup_root(Some(parent.clone()));
    let layer = busybox_layer(h.dir.path());
    let (out_port, out) = h.port(None);
    let process = Proc {
        // Print, then wait for the exec below to say so: the output is
        // always complete before the init exits (no kill racing the pipe).
        cmd: sh(
            "cat /proc/self/cgroup | grep '^0::'; while [ ! -e /tmp/done ]; do sleep 0.1; done",
        ),
        stdio: StdioPorts {
            stdout: Some(out_port),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(matches!(
        h.create("cg", &layer, process, "", Limits::default()),
        Response::Created { .. }
    ));
    let Response::Started { pid } = h.call(Request::Start { id: "cg".into() }) else {
        panic!("start failed")
    };
    let host_view = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = parent.strip_prefix(&root).unwrap().join("cg");
    assert!(
        host_view
            .lines()
            .any(|l| l == format!("0::/{}", rel.display())),
        "host sees {host_view:?}"
    );
    // With a pty too: an exec whose stdin is a terminal.
    let (tty_port, tty_out) = h.port(None);
    let r = h.call(Request::Exec(
        ExecReq {
            id: "cg".into(),
            exec_id: "t".into(),
            process: Proc {
                cmd: sh("test -t 0 && test -t 1 && echo is-a-tty; exit 4"),
                tty: true,
                stdio: StdioPorts {
                    stdout: Some(tty_port),
                    ..Default::default()
                },
                ..Default::default()
            },
        }
        .into(),
    ));
    assert!(matches!(r, Response::Started { .. }), "{r:?}");
    let w = h.call(Request::Wait {
        id: "cg".into(),
        exec_id: Some("t".into()),
    });
    assert_eq!(
        w,
        Response::Exited {
            status: ExitStatus::Code { code: 4 }
        }
    );
    assert_eq!(text(tty_out).1, "is-a-tty\r\n");
    // Only now let the init end: its exit kills every process left in its
    // PID namespace, so an exec that ended the init itself could be killed
    // before reporting its own status.
    let r = h.call(Request::Exec(
        ExecReq {
            id: "cg".into(),
            exec_id: "done".into(),
            process: Proc {
                cmd: sh("touch /tmp/done"),
                ..Default::default()
            },
        }
        .into(),
    ));
    assert!(matches!(r, Response::Started { .. }), "{r:?}");
    assert_eq!(
        h.call(Request::Wait {
            id: "cg".into(),
            exec_id: None
        }),
        Response::Exited {
            status: ExitStatus::Code { code: 0 }
        }
    );
    assert_eq!(
        text(out).1,
        "0::/\n",
        "the container sees its cgroup as its namespace's root"
    );
    drop(h);
    let _ = std::fs::remove_dir(parent.join("cg"));
    std::fs::remove_dir(&parent).unwrap();
}

/// Run-once mode: `serve_all` returns once the only container's init has
/// exited and its status was sent to the host.
#[test]
fn run_once_ends_after_the_last_exit_is_reported() {
    require_root_and_busybox();
    let dir = tempfile::tempdir().unwrap();
    let layer = busybox_layer(dir.path());
    let cfg = ServerConfig {
        run_dir: dir.path().join("run"),
        cgroup_root: dir.path().join("cgroup"),
        unpack: UnpackOptions::default(),
        run_once: true,
        reap: ReapMode::Tracked,
        agent_version: "test".into(),
        resolv_conf: None,
        network_interface: "lo".into(),
    };
    std::fs::create_dir_all(&cfg.cgroup_root).unwrap();
    let sock = dir.path().join("ctl");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::sync::Arc::new(Server::new(
        cfg,
        UnixConnector {
            prefix: dir.path().join("v.sock"),
        },
    ));
    let done =
        std::thread::spawn(move || server.serve_all(move || listener.accept().map(|(s, _)| s)));
    let mut c = UnixStream::connect(&sock).unwrap();
    let mut call = |body: Request| {
        husk_proto::agent::write_frame(
            &mut c,
            &Envelope {
                version: PROTOCOL_VERSION,
                seq: 1,
                body,
            },
        )
        .unwrap();
        husk_proto::agent::read_frame::<_, Envelope<Response>>(&mut c)
            .unwrap()
            .body
    };
    let create = CreateRequest {
        id: "once".into(),
        image: ImageSource::Layers {
            layers: vec![layer],
        },
        process: ProcessSpec {
            cmd: sh("sleep 0.3; exit 0"),
            ..Default::default()
        },
        stdio: StdioPorts::default(),
        hostname: String::new(),
        mounts: vec![],
        limits: Limits::default(),
        new_network: true,
        hosts: Vec::new(),
        tmpfs: Vec::new(),
        readonly_rootfs: false,
        security: Default::default(),
    };
    assert!(matches!(
        call(Request::Create(Box::new(create))),
        Response::Created { .. }
    ));
    assert!(matches!(
        call(Request::Start { id: "once".into() }),
        Response::Started { .. }
    ));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !done.is_finished(),
        "still running while the container runs"
    );
    let w = call(Request::Wait {
        id: "once".into(),
        exec_id: None,
    });
    assert_eq!(
        w,
        Response::Exited {
            status: ExitStatus::Code { code: 0 }
        }
    );
    let t = std::time::Instant::now();
    while !done.is_finished() && t.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        done.is_finished(),
        "serve_all returned after the reported exit"
    );
    done.join().unwrap();
    // Clean up (unmount) through a fresh connection.
    assert_eq!(call(Request::Shutdown), Response::ShuttingDown);
}

/// Reads from `s` into `buf` until `needle` appears (20 s at most).
fn read_until(s: &mut UnixStream, buf: &mut Vec<u8>, needle: &str) {
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(buf).contains(needle) {
        match s.read(&mut chunk) {
            Ok(0) => panic!(
                "EOF before {needle:?}; got {:?}",
                String::from_utf8_lossy(buf)
            ),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "{e} before {needle:?}; got {:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }
}

fn exec_req(id: &str, exec_id: &str, process: Proc) -> Request {
    Request::Exec(
        ExecReq {
            id: id.into(),
            exec_id: exec_id.into(),
            process,
        }
        .into(),
    )
}

fn wait(conn: &mut Conn, id: &str, exec_id: Option<&str>) -> Response {
    conn.call(Request::Wait {
        id: id.into(),
        exec_id: exec_id.map(str::to_string),
    })
}

fn exited(code: i32) -> Response {
    Response::Exited {
        status: ExitStatus::Code { code },
    }
}

/// `husk run -it`: the initial terminal size, a resize that reaches the
/// process as SIGWINCH, and Ctrl-C (0x03 on stdin) as SIGINT, for the init
/// (PID 1 of its namespace, so with a handler) and for a tty exec running
/// alongside it (no handler: killed by signal 2).
#[test]
fn tty_size_resize_and_ctrl_c() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let (in_port, stdin) = h.live_port();
    let (out_port, stdout) = h.live_port();
    let process = Proc {
        cmd: sh("stty size; tty; ls /proc/self/fd | tr '\\n' ' '; echo; \
             trap 'stty size' WINCH; trap 'echo got-int; exit 7' INT; \
             echo ready; while :; do sleep 0.1; done"),
        tty: true,
        console_size: Some(ConsoleSize {
            rows: 30,
            cols: 100,
        }),
        stdio: StdioPorts {
            stdin: Some(in_port),
            stdout: Some(out_port),
            stderr: None,
        },
        ..Default::default()
    };
    h.create_and_start("t", &layer, process);
    let (_, mut stdin) = stdin.join().unwrap();
    let (_, mut stdout) = stdout.join().unwrap();
    let mut out = Vec::new();
    read_until(&mut stdout, &mut out, "ready");
    let text = String::from_utf8_lossy(&out).to_string();
    assert!(text.starts_with("30 100\r\n/dev/pts/"), "{text:?}");
    // Only stdio (and ls's own directory) cross execve: no pty master or
    // other agent descriptor leaks into the container.
    assert!(text.contains("\r\n0 1 2 3 \r\n"), "{text:?}");

    // A tty exec alongside: its own size, and Ctrl-C kills it.
    let (ein_port, ein) = h.live_port();
    let (eout_port, eout) = h.live_port();
    let r = h.call(exec_req(
        "t",
        "cat",
        Proc {
            cmd: sh("stty size; exec cat"),
            tty: true,
            console_size: Some(ConsoleSize { rows: 5, cols: 7 }),
            stdio: StdioPorts {
                stdin: Some(ein_port),
                stdout: Some(eout_port),
                stderr: None,
            },
            ..Default::default()
        },
    ));
    assert!(matches!(r, Response::Started { .. }), "{r:?}");
    let (_, mut ein) = ein.join().unwrap();
    let (_, mut eout) = eout.join().unwrap();
    let mut eo = Vec::new();
    read_until(&mut eout, &mut eo, "5 7\r\n");
    ein.write_all(b"echo-me\n").unwrap();
    // The tty echoes the line and cat writes it back: cat runs.
    read_until(&mut eout, &mut eo, "echo-me\r\necho-me\r\n");
    ein.write_all(&[0x03]).unwrap();
    assert_eq!(
        wait(&mut h.client, "t", Some("cat")),
        Response::Exited {
            status: ExitStatus::Signal { signal: 2 }
        }
    );
    let r = h.call(Request::Resize {
        id: "t".into(),
        exec_id: Some("cat".into()),
        rows: 1,
        cols: 1,
    });
    assert!(
        matches!(
            r,
            Response::Error {
                kind: ErrorKind::InvalidState,
                ..
            }
        ),
        "{r:?}"
    );

    // Resize the init's terminal: its WINCH trap prints the new size.
    assert_eq!(
        h.call(Request::Resize {
            id: "t".into(),
            exec_id: None,
            rows: 40,
            cols: 120
        }),
        Response::Resized
    );
    read_until(&mut stdout, &mut out, "40 120\r\n");
    // Ctrl-C reaches the init through its handler.
    stdin.write_all(&[0x03]).unwrap();
    read_until(&mut stdout, &mut out, "got-int");
    assert_eq!(wait(&mut h.client, "t", None), exited(7));
}

/// Docker's 127 and 126: a missing command and one that cannot be executed
/// are told apart, for the init and for an exec; a missing working
/// directory of an exec is an error of its own.
#[test]
fn exec_failures_are_command_not_found_or_not_executable() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let cases: &[(&str, &str, ErrorKind, &str)] = &[
        (
            "nf1",
            "nosuch",
            ErrorKind::CommandNotFound,
            r#"exec: "nosuch": executable file not found in $PATH"#,
        ),
        (
            "nf2",
            "/bin/nosuch",
            ErrorKind::CommandNotFound,
            r#"exec: "/bin/nosuch": no such file or directory"#,
        ),
        (
            "nx1",
            "/etc/passwd",
            ErrorKind::CommandNotExecutable,
            r#"exec: "/etc/passwd": permission denied"#,
        ),
        (
            "nx2",
            "/bin",
            ErrorKind::CommandNotExecutable,
            r#"exec: "/bin": permission denied"#,
        ),
    ];
    for (id, cmd, want_kind, want_msg) in cases {
        let p = Proc {
            cmd: vec![cmd.to_string()],
            ..Default::default()
        };
        assert!(matches!(
            h.create(id, &layer, p, "", Limits::default()),
            Response::Created { .. }
        ));
        let r = h.call(Request::Start { id: id.to_string() });
        let Response::Error { kind, message } = r else {
            panic!("{cmd}: {r:?}")
        };
        assert_eq!(kind, *want_kind, "{cmd}: {message}");
        assert!(message.contains(want_msg), "{cmd}: {message}");
    }

    let init = Proc {
        cmd: vec!["sleep".into(), "1000".into()],
        ..Default::default()
    };
    h.create_and_start("run", &layer, init);
    for (i, (_, cmd, want_kind, want_msg)) in cases.iter().enumerate() {
        let r = h.call(exec_req(
            "run",
            &format!("e{i}"),
            Proc {
                cmd: vec![cmd.to_string()],
                ..Default::default()
            },
        ));
        let Response::Error { kind, message } = r else {
            panic!("{cmd}: {r:?}")
        };
        assert_eq!(kind, *want_kind, "{cmd}: {message}");
        assert!(message.contains(want_msg), "{cmd}: {message}");
    }
    // Not executable for this user (mode 0700, owned by root).
    let r = h.call(exec_req(
        "run",
        "setup",
        Proc {
            cmd: sh("cp /bin/busybox /tmp/mine && chmod 700 /tmp/mine"),
            ..Default::default()
        },
    ));
    assert!(matches!(r, Response::Started { .. }), "{r:?}");
    assert_eq!(wait(&mut h.client, "run", Some("setup")), exited(0));
    let r = h.call(exec_req(
        "run",
        "as-app",
        Proc {
            cmd: vec!["/tmp/mine".into(), "true".into()],
            user: "app".into(),
            ..Default::default()
        },
    ));
    assert!(
        matches!(
            r,
            Response::Error {
                kind: ErrorKind::CommandNotExecutable,
                ..
            }
        ),
        "{r:?}"
    );
    // An exec's working directory is not created (as with docker exec).
    let r = h.call(exec_req(
        "run",
        "wd",
        Proc {
            cmd: vec!["true".into()],
            workdir: "/nonexistent".into(),
            ..Default::default()
        },
    ));
    let Response::Error { kind, message } = r else {
        panic!("{r:?}")
    };
    assert_eq!(kind, ErrorKind::Runtime);
    assert!(
        message.contains(r#"cannot change to the working directory "/nonexistent""#)
            && message.contains("No such file"),
        "{message}"
    );
    // The failed execs left the container running.
    let r = h.call(exec_req(
        "run",
        "ok",
        Proc {
            cmd: vec!["true".into()],
            ..Default::default()
        },
    ));
    assert!(matches!(r, Response::Started { .. }), "{r:?}");
    assert_eq!(wait(&mut h.client, "run", Some("ok")), exited(0));
}

/// The init's missing working directory is created (0755, root), inside
/// the rootfs only.
#[test]
fn missing_workdir_is_created_inside_the_rootfs() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let (out_port, out) = h.port(None);
    let p = Proc {
        cmd: sh("pwd; ls -ld /srv/app /srv/app/data"),
        user: "app".into(),
        workdir: "/srv/app/data".into(),
        stdio: StdioPorts {
            stdout: Some(out_port),
            ..Default::default()
        },
        ..Default::default()
    };
    h.create_and_start("wd", &layer, p);
    assert_eq!(wait(&mut h.client, "wd", None), exited(0));
    let stdout = text(out).1;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "/srv/app/data");
    for l in &lines[1..3] {
        assert!(l.starts_with("drwxr-xr-x") && l.contains(" root "), "{l}");
    }

    let p = Proc {
        cmd: vec!["true".into()],
        workdir: "/evil/x".into(),
        ..Default::default()
    };
    assert!(matches!(
        h.create("wd2", &layer, p, "", Limits::default()),
        Response::Created { .. }
    ));
    let r = h.call(Request::Start { id: "wd2".into() });
    let Response::Error { kind, message } = r else {
        panic!("{r:?}")
    };
    assert_eq!(kind, ErrorKind::Runtime);
    assert!(
        message.contains(r#"working directory "/evil/x""#) && message.contains("leaves the root"),
        "{message}"
    );
    assert!(!Path::new("/etc/x").exists());
}

/// /etc/hostname, /etc/hosts and /etc/resolv.conf as Docker gives them,
/// bind-mounted from the run directory: the image is not modified.
#[test]
fn etc_hostname_hosts_and_resolv_conf() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    for (id, new_network, addr) in [("shared", false, "127.0.0.1"), ("own", true, "127.0.1.1")] {
        let (out_port, out) = h.port(None);
        let p = Proc {
            cmd: sh("cat /etc/hostname /etc/hosts /etc/resolv.conf; grep -c app /etc/passwd"),
            stdio: StdioPorts {
                stdout: Some(out_port),
                ..Default::default()
            },
            ..Default::default()
        };
        let (process, stdio) = p.split();
        let r = h.call(Request::Create(Box::new(CreateRequest {
            id: id.into(),
            image: ImageSource::Layers {
                layers: vec![layer.clone()],
            },
            process,
            stdio,
            hostname: format!("web-{id}"),
            mounts: vec![],
            limits: Limits::default(),
            new_network,
            hosts: Vec::new(),
            tmpfs: Vec::new(),
            readonly_rootfs: false,
            security: Default::default(),
        })));
        assert!(matches!(r, Response::Created { .. }), "{r:?}");
        assert!(matches!(
            h.call(Request::Start { id: id.into() }),
            Response::Started { .. }
        ));
        assert_eq!(wait(&mut h.client, id, None), exited(0));
        assert_eq!(
            text(out).1,
            format!(
                "web-{id}\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
                 {addr}\tweb-{id}\n{RESOLV}1\n"
            )
        );
        let run = h.dir.path().join("run/containers").join(id);
        assert_eq!(
            std::fs::read_to_string(run.join("hostname")).unwrap(),
            format!("web-{id}\n")
        );
    }
    // The unpacked image has no such files: they were mounted, not written
    // into the image.
    let images = h.dir.path().join("run/images");
    let image = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .unwrap();
    for f in ["hostname", "hosts", "resolv.conf"] {
        assert!(!image.join("etc").join(f).exists(), "{f} in the image");
    }
}

/// `--read-only --tmpfs /tmp:size=1m --pids-limit 16 --security-opt
/// no-new-privileges`: the root refuses writes, the tmpfs takes them
/// (noexec, Docker's default), the container's cgroup holds the pids
/// limit, and its processes have Docker's default capabilities only.
#[test]
fn read_only_root_with_a_tmpfs_and_a_pids_limit() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let (out_port, out) = h.port(None);
    let p = Proc {
        cmd: sh(
            "touch /x 2>/dev/null && echo root-writable || echo root-read-only; \
             echo ok > /tmp/f && cat /tmp/f; grep ' /tmp ' /proc/mounts; \
             cp /bin/busybox /tmp/busybox; /tmp/busybox true && echo exec-ran || echo exec-refused; \
             grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; \
             mount -t tmpfs none /tmp 2>/dev/null || echo mount-refused",
        ),
        stdio: StdioPorts {
            stdout: Some(out_port),
            ..Default::default()
        },
        ..Default::default()
    };
    let (process, stdio) = p.split();
    let r = h.call(Request::Create(Box::new(CreateRequest {
        id: "ro".into(),
        image: ImageSource::Layers {
            layers: vec![layer],
        },
        process,
        stdio,
        hostname: String::new(),
        mounts: vec![],
        limits: Limits {
            pids: Some(16),
            ..Default::default()
        },
        new_network: true,
        hosts: Vec::new(),
        tmpfs: vec![husk_proto::agent::TmpfsMount {
            destination: "/tmp".into(),
            size_bytes: Some(1 << 20),
            ..Default::default()
        }],
        readonly_rootfs: true,
        security: husk_proto::security::Security {
            capabilities: Some(husk_proto::security::capability_set(&[], &[]).unwrap()),
            no_new_privileges: true,
        },
    })));
    assert!(matches!(r, Response::Created { .. }), "{r:?}");
    assert!(matches!(
        h.call(Request::Start { id: "ro".into() }),
        Response::Started { .. }
    ));
    let status = wait(&mut h.client, "ro", None);
    let out = text(out).1;
    assert_eq!(status, exited(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    assert_eq!(lines[0], "root-read-only");
    assert_eq!(lines[1], "ok");
    assert!(
        lines[2].starts_with("tmpfs /tmp tmpfs rw,nosuid,nodev,noexec")
            && lines[2].contains("size=1024k"),
        "{out}"
    );
    assert_eq!(lines[3], "exec-refused");
    // Docker's default capability set, well known as a80425fb.
    assert_eq!(lines[4], "CapEff:\t00000000a80425fb");
    assert_eq!(lines[5], "CapBnd:\t00000000a80425fb");
    assert_eq!(lines[6], "NoNewPrivs:\t1");
    assert_eq!(lines[7], "mount-refused");
    let pids_max = h.dir.path().join("cgroup/ro/pids.max");
    assert_eq!(std::fs::read_to_string(pids_max).unwrap(), "16");
}

/// `echo hi | husk run -i busybox cat`: the host shutting down its side of
/// stdin is end-of-file for the init and for an exec.
#[test]
fn stdin_eof_ends_cat_for_init_and_exec() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let (in_port, inp) = h.port(Some(b"hi\n"));
    let (out_port, out) = h.port(None);
    let p = Proc {
        cmd: vec!["cat".into()],
        stdio: StdioPorts {
            stdin: Some(in_port),
            stdout: Some(out_port),
            stderr: None,
        },
        ..Default::default()
    };
    h.create_and_start("in", &layer, p);
    assert_eq!(wait(&mut h.client, "in", None), exited(0));
    assert_eq!(text(out).1, "hi\n");
    assert_eq!(text(inp).0.stream, "stdin");

    let init = Proc {
        cmd: vec!["sleep".into(), "1000".into()],
        ..Default::default()
    };
    h.create_and_start("in2", &layer, init);
    let (in_port, inp) = h.port(Some(b"hi\n"));
    let (out_port, out) = h.port(None);
    let r = h.call(exec_req(
        "in2",
        "cat",
        Proc {
            cmd: vec!["cat".into()],
            stdio: StdioPorts {
                stdin: Some(in_port),
                stdout: Some(out_port),
                stderr: None,
            },
            ..Default::default()
        },
    ));
    assert!(matches!(r, Response::Started { .. }), "{r:?}");
    assert_eq!(wait(&mut h.client, "in2", Some("cat")), exited(0));
    assert_eq!(text(out).1, "hi\n");
    drop(inp);
}

/// SIGTERM reaches an init that handles it; two control connections
/// waiting for the init (the host's supervisor and `husk wait`) both get
/// its status, and so does a wait after the exit.
#[test]
fn sigterm_to_init_with_handler_and_two_waiters() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let (out_port, out) = h.live_port();
    let p = Proc {
        cmd: sh("trap 'echo term; exit 9' TERM; echo ready; while :; do sleep 0.1; done"),
        stdio: StdioPorts {
            stdout: Some(out_port),
            ..Default::default()
        },
        ..Default::default()
    };
    h.create_and_start("sig", &layer, p);
    let (_, mut out) = out.join().unwrap();
    let mut buf = Vec::new();
    read_until(&mut out, &mut buf, "ready\n");
    // Not a terminal: nothing to resize.
    let r = h.call(Request::Resize {
        id: "sig".into(),
        exec_id: None,
        rows: 10,
        cols: 10,
    });
    assert!(
        matches!(
            r,
            Response::Error {
                kind: ErrorKind::InvalidState,
                ..
            }
        ),
        "{r:?}"
    );
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let mut c = h.connect();
            std::thread::spawn(move || wait(&mut c, "sig", None))
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(waiters.iter().all(|w| !w.is_finished()), "waiters block");
    assert_eq!(
        h.call(Request::Signal {
            id: "sig".into(),
            exec_id: None,
            signal: 15
        }),
        Response::Signalled
    );
    for w in waiters {
        assert_eq!(w.join().unwrap(), exited(9));
    }
    assert_eq!(wait(&mut h.client, "sig", None), exited(9));
    out.read_to_end(&mut buf).unwrap();
    assert_eq!(String::from_utf8(buf).unwrap(), "ready\nterm\n");
}

/// The host mounts a disk at the container's directory for its writable
/// layer; a new VM's agent reuses it (what the container wrote before is
/// there) instead of refusing an existing directory.
#[test]
fn writable_layer_on_a_mounted_disk_is_reused() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let dir = h.dir.path().join("run/containers/kept");
    std::fs::create_dir_all(&dir).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    // What an earlier VM's container left in its upper layer.
    std::fs::create_dir_all(dir.join("upper")).unwrap();
    std::fs::write(dir.join("upper/left-before"), "from-before\n").unwrap();
    let (out_port, out) = h.port(None);
    let p = Proc {
        cmd: sh("cat /left-before; echo again > /left-now"),
        stdio: StdioPorts {
            stdout: Some(out_port),
            ..Default::default()
        },
        ..Default::default()
    };
    let r = h.create("kept", &layer, p, "", Limits::default());
    assert!(matches!(r, Response::Created { .. }), "{r:?}");
    assert!(matches!(
        h.call(Request::Start { id: "kept".into() }),
        Response::Started { .. }
    ));
    assert_eq!(wait(&mut h.client, "kept", None), exited(0));
    assert_eq!(text(out).1, "from-before\n");
    assert_eq!(
        std::fs::read_to_string(dir.join("upper/left-now")).unwrap(),
        "again\n"
    );
    // A plain existing directory is still refused.
    std::fs::create_dir_all(h.dir.path().join("run/containers/plain")).unwrap();
    let r = h.create(
        "plain",
        &layer,
        Proc {
            cmd: sh("true"),
            ..Default::default()
        },
        "",
        Limits::default(),
    );
    assert!(
        matches!(
            r,
            Response::Error {
                kind: ErrorKind::AlreadyExists,
                ..
            }
        ),
        "{r:?}"
    );
    // Detached now, gone once the overlay above it is unmounted.
    nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH).unwrap();
    drop(h);
}

/// `echo a > /dev/stdout; echo b > /dev/stderr` (an nginx image's log
/// symlinks): without a terminal, stdio is pipes as Docker's, which can be
/// opened through /proc (a socket cannot), for the init and for an exec.
#[test]
fn stdio_is_pipes_for_init_and_exec() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let script = "echo a > /dev/stdout; echo b > /dev/stderr; exit 3";
    let (out_port, out) = h.port(None);
    let (err_port, err) = h.port(None);
    let p = Proc {
        cmd: sh(script),
        stdio: StdioPorts {
            stdin: None,
            stdout: Some(out_port),
            stderr: Some(err_port),
        },
        ..Default::default()
    };
    h.create_and_start("pi", &layer, p);
    assert_eq!(wait(&mut h.client, "pi", None), exited(3));
    assert_eq!(text(out).1, "a\n");
    assert_eq!(text(err).1, "b\n");

    // The init reads /dev/stdin to the host's end-of-file.
    let (in_port, inp) = h.port(Some(b"hi\n"));
    let (out_port, out) = h.port(None);
    let p = Proc {
        cmd: vec!["cat".into(), "/dev/stdin".into()],
        stdio: StdioPorts {
            stdin: Some(in_port),
            stdout: Some(out_port),
            stderr: None,
        },
        ..Default::default()
    };
    h.create_and_start("pe", &layer, p);
    assert_eq!(wait(&mut h.client, "pe", None), exited(0));
    assert_eq!(text(out).1, "hi\n");
    drop(inp);

    let init = Proc {
        cmd: vec!["sleep".into(), "1000".into()],
        ..Default::default()
    };
    h.create_and_start("px", &layer, init);
    let (out_port, out) = h.port(None);
    let (err_port, err) = h.port(None);
    let p = Proc {
        cmd: sh(script),
        stdio: StdioPorts {
            stdin: None,
            stdout: Some(out_port),
            stderr: Some(err_port),
        },
        ..Default::default()
    };
    assert!(matches!(
        h.call(exec_req("px", "e", p)),
        Response::Started { .. }
    ));
    assert_eq!(wait(&mut h.client, "px", Some("e")), exited(3));
    assert_eq!(text(out).1, "a\n");
    assert_eq!(text(err).1, "b\n");

    // All three are pipes; the exec reads /dev/stdin to end-of-file too.
    let (in_port, inp) = h.port(Some(b"in\n"));
    let (out_port, out) = h.port(None);
    let (err_port, err) = h.port(None);
    let p = Proc {
        cmd: sh("cat /dev/stdin; ls -l /proc/self/fd/0 /proc/self/fd/1 /proc/self/fd/2 >&2"),
        stdio: StdioPorts {
            stdin: Some(in_port),
            stdout: Some(out_port),
            stderr: Some(err_port),
        },
        ..Default::default()
    };
    assert!(matches!(
        h.call(exec_req("px", "ls", p)),
        Response::Started { .. }
    ));
    assert_eq!(wait(&mut h.client, "px", Some("ls")), exited(0));
    assert_eq!(text(out).1, "in\n");
    let listing = text(err).1;
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    for l in lines {
        assert!(l.contains("-> pipe:["), "{listing}");
    }
    drop(inp);
}

/// All of the output is on the stream connection, closed, before `Wait`
/// answers; a large output arrives whole.
#[test]
fn output_is_relayed_before_exited() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let init = Proc {
        cmd: vec!["sleep".into(), "1000".into()],
        ..Default::default()
    };
    h.create_and_start("o", &layer, init);
    let seq = |n: u32| -> String { (1..=n).map(|i| format!("{i}\n")).collect() };
    let (out_port, out) = h.port(None);
    let p = Proc {
        cmd: vec!["seq".into(), "100000".into()],
        stdio: StdioPorts {
            stdout: Some(out_port),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(matches!(
        h.call(exec_req("o", "big", p)),
        Response::Started { .. }
    ));
    assert_eq!(wait(&mut h.client, "o", Some("big")), exited(0));
    assert!(text(out).1 == seq(100_000), "output differs");

    // The host reads nothing until `Wait` has answered: then everything
    // and the end of the stream are there already.
    let (out_port, out) = h.live_port();
    let p = Proc {
        cmd: vec!["seq".into(), "3000".into()],
        stdio: StdioPorts {
            stdout: Some(out_port),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(matches!(
        h.call(exec_req("o", "small", p)),
        Response::Started { .. }
    ));
    assert_eq!(wait(&mut h.client, "o", Some("small")), exited(0));
    let (_, mut out) = out.join().unwrap();
    out.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    out.read_to_end(&mut got)
        .expect("output and end-of-stream before Exited");
    assert!(
        String::from_utf8(got).unwrap() == seq(3000),
        "output differs"
    );
}

/// An exec that leaves a background child holding its stdout: `Wait`
/// answers and the stream ends shortly after the exec's exit, with what it
/// wrote, instead of when the child exits.
#[test]
fn a_background_child_holds_neither_wait_nor_the_stream() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let init = Proc {
        cmd: vec!["sleep".into(), "1000".into()],
        ..Default::default()
    };
    h.create_and_start("bg", &layer, init);
    let (in_port, inp) = h.live_port();
    let (out_port, out) = h.live_port();
    let p = Proc {
        cmd: sh("sleep 60 & echo x"),
        stdio: StdioPorts {
            stdin: Some(in_port),
            stdout: Some(out_port),
            stderr: None,
        },
        ..Default::default()
    };
    let t = std::time::Instant::now();
    assert!(matches!(
        h.call(exec_req("bg", "e", p)),
        Response::Started { .. }
    ));
    // The host keeps stdin open: that does not hold `Wait` either.
    let (_, inp) = inp.join().unwrap();
    assert_eq!(wait(&mut h.client, "bg", Some("e")), exited(0));
    // Read only now: the output and the end of the stream came first.
    let (_, mut out) = out.join().unwrap();
    out.set_nonblocking(true).unwrap();
    let mut got = String::new();
    out.read_to_string(&mut got)
        .expect("output and end-of-stream before Exited");
    assert_eq!(got, "x\n");
    let took = t.elapsed();
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    drop(inp);
}
