//! `husk-agent-client`: drives husk-agent in a guest through husk-vmm's vsock
//! Unix socket the way the host runtime will: Hello, Create (layers from a
//! disk in the guest), Start, Wait, stdout/stderr on their own connections,
//! Shutdown. Used by the e2e `container` scenario.
//!
//! Usage: husk-agent-client UDS LAYERS_FILE HOSTNAME -- CMD [ARG...]
//! LAYERS_FILE has one `DIGEST MEDIA_TYPE SIZE GUEST_PATH` line per layer,
//! base first. Prints the container's output, then `exit: code N` or
//! `exit: signal N`, and exits with the container's code.

use std::io::{self, BufRead, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::thread;

use husk_proto::agent::{
    read_frame, write_frame, BlobSource, CreateRequest, Envelope, ExitStatus, ImageSource, Layer,
    Limits, ProcessSpec, Request, Response, StdioPorts, StreamHello, PROTOCOL_VERSION,
};

const STDOUT_PORT: u32 = 5101;
const STDERR_PORT: u32 = 5102;
use husk_proto::guest::CONTROL_PORT;

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

struct Control {
    s: UnixStream,
    seq: u64,
}

impl Control {
    fn connect(uds: &str) -> io::Result<Control> {
        let mut s = UnixStream::connect(uds)?;
        s.write_all(format!("CONNECT {CONTROL_PORT}\n").as_bytes())?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while b[0] != b'\n' {
            if s.read(&mut b)? == 0 {
                return Err(err(
                    "vsock handshake: connection closed (is the agent listening?)",
                ));
            }
            line.push(b[0]);
        }
        if !line.starts_with(b"OK ") {
            return Err(err(format!(
                "vsock handshake: {}",
                String::from_utf8_lossy(&line)
            )));
        }
        Ok(Control { s, seq: 0 })
    }

    fn call(&mut self, body: Request) -> io::Result<Response> {
        self.seq += 1;
        let env = Envelope {
            version: PROTOCOL_VERSION,
            seq: self.seq,
            body,
        };
        write_frame(&mut self.s, &env).map_err(|e| err(e.to_string()))?;
        let reply: Envelope<Response> = read_frame(&mut self.s).map_err(|e| err(e.to_string()))?;
        if let Response::Error { .. } = reply.body {
            return Err(err(format!("agent: {:?}", reply.body)));
        }
        Ok(reply.body)
    }
}

/// Accepts the agent's data connection on `<uds>_<port>` and copies it out.
fn relay(listener: UnixListener, to_stderr: bool) -> thread::JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        let (mut s, _) = listener.accept()?;
        let hello: StreamHello = read_frame(&mut s).map_err(|e| err(e.to_string()))?;
        let _ = hello;
        if to_stderr {
            io::copy(&mut s, &mut io::stderr())?;
        } else {
            io::copy(&mut s, &mut io::stdout())?;
        }
        Ok(())
    })
}

fn run(args: &[String]) -> io::Result<i32> {
    let sep = args
        .iter()
        .position(|a| a == "--")
        .ok_or_else(|| err("missing -- before the command"))?;
    let [uds, layers_file, hostname] = &args[..sep] else {
        return Err(err(
            "usage: husk-agent-client UDS LAYERS_FILE HOSTNAME -- CMD [ARG...]",
        ));
    };
    let cmd: Vec<String> = args[sep + 1..].to_vec();
    let mut layers = Vec::new();
    for line in io::BufReader::new(std::fs::File::open(layers_file)?).lines() {
        let line = line?;
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [digest, media_type, size, path] = f[..] {
            layers.push(Layer {
                digest: digest.into(),
                media_type: media_type.into(),
                size: size
                    .parse()
                    .map_err(|_| err(format!("bad size in {line:?}")))?,
                source: BlobSource::Path { path: path.into() },
            });
        }
    }
    let listen = |port: u32| -> io::Result<UnixListener> {
        let p = format!("{uds}_{port}");
        let _ = std::fs::remove_file(&p);
        UnixListener::bind(p)
    };
    let out = relay(listen(STDOUT_PORT)?, false);
    let errt = relay(listen(STDERR_PORT)?, true);

    let mut c = Control::connect(uds)?;
    c.call(Request::Hello {
        version: PROTOCOL_VERSION,
    })?;
    c.call(Request::Create(Box::new(CreateRequest {
        id: "c1".into(),
        image: ImageSource::Layers { layers },
        process: ProcessSpec {
            cmd,
            env: vec!["PATH=/bin".into()],
            workdir: "/".into(),
            ..ProcessSpec::default()
        },
        stdio: StdioPorts {
            stdin: None,
            stdout: Some(STDOUT_PORT),
            stderr: Some(STDERR_PORT),
        },
        hostname: hostname.clone(),
        mounts: Vec::new(),
        limits: Limits::default(),
        new_network: true,
        hosts: Vec::new(),
        tmpfs: Vec::new(),
        readonly_rootfs: false,
        security: Default::default(),
    })))?;
    c.call(Request::Start { id: "c1".into() })?;
    let status = match c.call(Request::Wait {
        id: "c1".into(),
        exec_id: None,
    })? {
        Response::Exited { status } => status,
        other => return Err(err(format!("unexpected answer to wait: {other:?}"))),
    };
    out.join().map_err(|_| err("stdout relay panicked"))??;
    errt.join().map_err(|_| err("stderr relay panicked"))??;
    let code = match status {
        ExitStatus::Code { code } => {
            println!("exit: code {code}");
            code
        }
        ExitStatus::Signal { signal } => {
            println!("exit: signal {signal}");
            128 + signal
        }
    };
    c.call(Request::Shutdown)?;
    Ok(code)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("husk-agent-client: {e}");
            ExitCode::from(125)
        }
    }
}
