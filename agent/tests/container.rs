//! A busybox container on the host, as root, through the same code path the
//! guest uses: the control protocol over a Unix socket pair, layers from a
//! real gzip blob, overlay, namespaces, pivot_root, cgroup files, stdio on
//! their own connections.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use husk_agent::layers::UnpackOptions;
use husk_agent::protocol::{
    self, BlobSource, CreateRequest, Envelope, ErrorKind, ExecRequest, ExitStatus, ImageSource,
    Layer, Limits, ProcessSpec, Request, Response, StdioPorts, StreamHello, PROTOCOL_VERSION,
};
use husk_agent::reaper::ReapMode;
use husk_agent::server::{Server, ServerConfig, UnixConnector};

const APPLETS: &[&str] = &[
    "sh", "echo", "hostname", "id", "sleep", "cat", "grep", "test", "ls", "true",
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

struct Harness {
    dir: tempfile::TempDir,
    client: UnixStream,
    seq: u64,
    server: Option<JoinHandle<()>>,
    next_port: u32,
}

impl Harness {
    fn new() -> Self {
        Self::with_cgroup_root(None)
    }

    fn with_cgroup_root(cgroup_root: Option<PathBuf>) -> Self {
        require_root_and_busybox();
        let dir = tempfile::tempdir().unwrap();
        let cfg = ServerConfig {
            run_dir: dir.path().join("run"),
            cgroup_root: cgroup_root.unwrap_or_else(|| dir.path().join("cgroup")),
            unpack: UnpackOptions::default(),
            run_once: false,
            reap: ReapMode::Tracked,
            agent_version: "test".into(),
        };
        std::fs::create_dir_all(&cfg.cgroup_root).unwrap();
        let connector = UnixConnector {
            prefix: dir.path().join("v.sock"),
        };
        let (client, agent) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let s = Server::new(cfg, connector);
            s.serve(agent).unwrap();
        });
        Self {
            dir,
            client,
            seq: 0,
            server: Some(server),
            next_port: 1000,
        }
    }

    fn call(&mut self, body: Request) -> Response {
        self.seq += 1;
        let env = Envelope {
            version: PROTOCOL_VERSION,
            seq: self.seq,
            body,
        };
        protocol::write_frame(&mut self.client, &env).unwrap();
        let resp: Envelope<Response> = protocol::read_frame(&mut self.client).unwrap();
        assert_eq!(resp.seq, self.seq);
        assert_eq!(resp.version, PROTOCOL_VERSION);
        resp.body
    }

    /// Listens on a fresh port; the thread returns the hello and everything
    /// read, after writing `input` (then closing the write side).
    fn port(&mut self, input: Option<&'static [u8]>) -> (u32, JoinHandle<(StreamHello, Vec<u8>)>) {
        self.next_port += 1;
        let port = self.next_port;
        let l = UnixListener::bind(self.dir.path().join(format!("v.sock_{port}"))).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let hello: StreamHello = protocol::read_frame(&mut s).unwrap();
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

    fn create(
        &mut self,
        id: &str,
        layer: &Layer,
        process: ProcessSpec,
        hostname: &str,
        limits: Limits,
    ) -> Response {
        self.call(Request::Create(Box::new(CreateRequest {
            id: id.into(),
            image: ImageSource::Layers {
                layers: vec![layer.clone()],
            },
            process,
            hostname: hostname.into(),
            mounts: vec![],
            limits,
            new_network: true,
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
            let _ = protocol::write_frame(
                &mut self.client,
                &Envelope {
                    version: PROTOCOL_VERSION,
                    seq: 0,
                    body: Request::Shutdown,
                },
            );
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
    let process = ProcessSpec {
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

#[test]
fn exec_stdin_signals_and_isolation() {
    let mut h = Harness::new();
    let layer = busybox_layer(h.dir.path());
    let init = ProcessSpec {
        cmd: vec!["sleep".into(), "1000".into()],
        ..Default::default()
    };
    assert!(matches!(
        h.create("c2", &layer, init, "", Limits::default()),
        Response::Created { .. }
    ));
    assert!(matches!(
        h.call(Request::Start { id: "c2".into() }),
        Response::Started { .. }
    ));

    let (out_port, out) = h.port(None);
    let script = "echo $$; hostname; cat /proc/1/cmdline; echo; id -u; \
        test -c /dev/null && test -c /dev/urandom && test -e /dev/ptmx && test -d /dev/pts && test -d /dev/shm && echo dev-ok; \
        grep -q '^sysfs /sys sysfs ro' /proc/mounts && echo sys-ro; \
        grep -c : /proc/net/dev; ls /; exit 5";
    let exec = |exec_id: &str, cmd: Vec<String>, stdio: StdioPorts| {
        Request::Exec(ExecRequest {
            id: "c2".into(),
            exec_id: exec_id.into(),
            process: ProcessSpec {
                cmd,
                stdio,
                ..Default::default()
            },
        })
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
    let cmd = |c: &str| ProcessSpec {
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
    assert_eq!(kind, ErrorKind::Runtime);
    assert!(
        message.contains("exec") && message.contains("No such file"),
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
        ProcessSpec {
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
    let process = ProcessSpec {
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
    let r = h.call(Request::Exec(ExecRequest {
        id: "cg".into(),
        exec_id: "t".into(),
        process: ProcessSpec {
            cmd: sh("test -t 0 && test -t 1 && echo is-a-tty; touch /tmp/done; exit 4"),
            tty: true,
            stdio: StdioPorts {
                stdout: Some(tty_port),
                ..Default::default()
            },
            ..Default::default()
        },
    }));
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
        protocol::write_frame(
            &mut c,
            &Envelope {
                version: PROTOCOL_VERSION,
                seq: 1,
                body,
            },
        )
        .unwrap();
        protocol::read_frame::<_, Envelope<Response>>(&mut c)
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
        hostname: String::new(),
        mounts: vec![],
        limits: Limits::default(),
        new_network: true,
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
