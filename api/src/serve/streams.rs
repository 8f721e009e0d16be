//! The container endpoints that stream: start (which hands a waiting
//! attach its stream), wait, logs and attach. The supervisor's control
//! socket carries `husk_proto::stdio` frames; Docker's clients get raw
//! bytes with a TTY and 8-byte multiplexed frames without one.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::containers::{load, open};
use super::{blocking, channel, empty, lock, ApiError, Ctx, Query, Reply};
use crate::container::control::{Attach, Frame, Request as SupRequest};
use crate::container::logs::{self, Follower, Record, STDERR, STDOUT};
use crate::container::{create, ipc, Handle, State, Status};

/// Content type of a raw (TTY) stream.
const RAW: &str = "application/vnd.docker.raw-stream";
/// Content type of a multiplexed stream.
const MUX: &str = "application/vnd.docker.multiplexed-stream";

/// An attach that waits for its container to start: `start` starts the
/// container with an attached stream and sends that here.
#[derive(Debug)]
pub struct PendingAttach {
    /// Whether the client's stdin is forwarded.
    pub stdin: bool,
    /// Where the supervisor's stream goes.
    pub tx: oneshot::Sender<UnixStream>,
}

/// One frame of Docker's multiplexed stream: stream (0 stdin, 1 stdout, 2
/// stderr), three zero bytes, the length (big-endian u32), the bytes.
pub fn mux_frame(stream: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    for chunk in data.chunks(u32::MAX as usize) {
        let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&[stream, 0, 0, 0]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// Output bytes as the client gets them: raw with a TTY, else framed.
fn encode(tty: bool, stream: u8, data: &[u8]) -> Bytes {
    if tty {
        Bytes::copy_from_slice(data)
    } else {
        Bytes::from(mux_frame(stream, data))
    }
}

/// `POST /containers/{id}/start`.
pub async fn start(ctx: Arc<Ctx>, key: String) -> Reply {
    blocking(move || {
        let cs = open(&ctx)?;
        let (h, _, _, running) = load(&cs, &key)?;
        if running {
            return Err(ApiError::NotModified);
        }
        lock(&ctx.exits).remove(&h.id);
        let pending = lock(&ctx.pending)
            .remove(&h.id)
            .filter(|p| !p.tx.is_closed());
        let attach = pending.as_ref().map(|p| Attach {
            stdin: p.stdin,
            console_size: None,
        });
        let conn = create::start(&ctx.data_dir, &cs, &h, attach, false)?;
        if let Some(p) = pending {
            let _ = p.tx.send(conn);
        }
        Ok(())
    })
    .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Whether a wait condition is met, given the first and current state.
fn wait_done(
    condition: &str,
    first: &State,
    now: &State,
    running: bool,
    seen_running: bool,
) -> bool {
    match condition {
        "removed" => false,
        "next-exit" => {
            !running
                && now.status == Status::Exited
                && (seen_running || now.finished_at != first.finished_at)
        }
        _ => !running,
    }
}

/// Polls the container until `condition` holds; its exit status.
fn wait_blocking(ctx: &Ctx, h: &Handle, condition: &str, first: &State) -> i32 {
    let mut seen_running = false;
    let mut last = first.exit_code;
    loop {
        let Ok(now) = h.live_state() else {
            // Removed: the status last seen, or the one its stream carried.
            let streamed = lock(&ctx.exits).get(&h.id).copied();
            return streamed.or(last).unwrap_or(0);
        };
        let running = now.status == Status::Running || h.supervisor_alive();
        seen_running |= running;
        last = now.exit_code.or(last);
        if wait_done(condition, first, &now, running, seen_running) {
            return now.exit_code.unwrap_or(0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `POST /containers/{id}/wait?condition=`: the 200 and its headers go out
/// at once (`docker run` starts the container only after it sees them),
/// the body `{"StatusCode": N}` when the condition holds.
pub async fn wait(ctx: Arc<Ctx>, key: String, q: Query) -> Reply {
    let condition = q.get("condition").unwrap_or("not-running").to_string();
    if !matches!(
        condition.as_str(),
        "not-running" | "next-exit" | "removed" | ""
    ) {
        return Err(ApiError::BadParameter(format!(
            "invalid condition: {condition:?}"
        )));
    }
    let c2 = ctx.clone();
    let (h, first) = blocking(move || {
        let cs = open(&c2)?;
        let (h, _, s, _) = load(&cs, &key)?;
        Ok((h, s))
    })
    .await?;
    let (resp, tx) = channel("application/json");
    tokio::task::spawn_blocking(move || {
        let code = wait_blocking(&ctx, &h, &condition, &first);
        let body = serde_json::json!({"StatusCode": code, "Error": null});
        let _ = tx.blocking_send(Bytes::from(format!("{body}\n")));
    });
    Ok(resp)
}

/// Which records `logs` sends and how.
#[derive(Debug, Clone, Copy)]
struct LogOpts {
    stdout: bool,
    stderr: bool,
    timestamps: bool,
    tty: bool,
    /// Only records written at or after this time (nanoseconds).
    since: Option<u128>,
    /// Only records written at or before this time (nanoseconds).
    until: Option<u128>,
}

impl LogOpts {
    /// Whether record `r` is asked for.
    fn wants(&self, r: &Record) -> bool {
        let t = u128::from(r.nanos);
        let stream = if r.stream == STDERR {
            self.stderr
        } else {
            self.stdout
        };
        stream && self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }

    /// Whether following is over: `until` has passed.
    fn ended(&self) -> bool {
        self.until.is_some_and(|u| super::events::now_nano() > u)
    }
}

/// Sends records; `false` once the client is gone.
fn send_records(tx: &mpsc::Sender<Bytes>, recs: &[Record], o: LogOpts) -> bool {
    for r in recs.iter().filter(|r| o.wants(r)) {
        let data = if o.timestamps {
            [format!("{} ", logs::timestamp(r.nanos)).as_bytes(), &r.data].concat()
        } else {
            r.data.clone()
        };
        let stream = if r.stream == STDERR { 2 } else { STDOUT };
        if tx.blocking_send(encode(o.tty, stream, &data)).is_err() {
            return false;
        }
    }
    true
}

fn stream_logs(
    h: &Handle,
    tail: Option<usize>,
    follow: bool,
    o: LogOpts,
    tx: &mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    let path = h.log_path();
    let mut follower = match tail {
        Some(n) => {
            let (recs, f) = logs::tail(&path, n)?;
            if !send_records(tx, &recs, o) {
                return Ok(());
            }
            f
        }
        None => {
            let mut f = Follower::from_start(&path)?;
            let recs = f.poll()?;
            let recs = if o.timestamps {
                logs::lines(&recs)
            } else {
                recs
            };
            if !send_records(tx, &recs, o) {
                return Ok(());
            }
            f
        }
    };
    if !follow {
        return Ok(());
    }
    loop {
        let running = h
            .live_state()
            .map(|s| s.status == Status::Running || h.supervisor_alive())
            .unwrap_or(false);
        if !send_records(tx, &follower.poll()?, o) || !running || o.ended() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// `GET /containers/{id}/logs?stdout&stderr&follow&tail&timestamps&since&until`.
pub async fn logs(ctx: Arc<Ctx>, key: String, q: Query) -> Reply {
    let tail = match q.get("tail").unwrap_or("all") {
        "all" | "" | "-1" => None,
        n => Some(
            n.parse::<usize>()
                .map_err(|_| ApiError::BadParameter(format!("invalid tail {n:?}")))?,
        ),
    };
    let (stdout, stderr) = (q.flag("stdout"), q.flag("stderr"));
    if !stdout && !stderr {
        return Err(ApiError::BadParameter(
            "Bad parameters: you must choose at least one stream".into(),
        ));
    }
    let follow = q.flag("follow");
    let timestamps = q.flag("timestamps");
    // 0 is what clients send for "not given".
    let since = super::events::parse_time(&q, "since")?.filter(|t| *t > 0);
    let until = super::events::parse_time(&q, "until")?.filter(|t| *t > 0);
    let (h, tty) = blocking(move || {
        let (h, c, _, _) = load(&open(&ctx)?, &key)?;
        Ok((h, c.process.tty))
    })
    .await?;
    let (resp, tx) = channel(if tty { RAW } else { MUX });
    let o = LogOpts {
        stdout,
        stderr,
        timestamps,
        tty,
        since,
        until,
    };
    tokio::task::spawn_blocking(move || {
        if let Err(e) = stream_logs(&h, tail, follow, o, &tx) {
            log::warn!("logs of {}: {e}", h.id);
        }
    });
    Ok(resp)
}

/// `POST /containers/{id}/attach?stream&stdin&stdout&stderr`: hijacked
/// (`101 UPGRADED` to `Upgrade: tcp`). A created container's attach waits
/// for `start`; the stream ends when the container exits.
pub async fn attach(ctx: Arc<Ctx>, key: String, q: Query, mut req: Request<Incoming>) -> Reply {
    if !req.headers().contains_key(UPGRADE) {
        return Err(ApiError::BadParameter(
            "attach needs a hijacked connection (Upgrade: tcp)".into(),
        ));
    }
    let c2 = ctx.clone();
    let (h, tty, open_stdin, running) = blocking(move || {
        let (h, c, s, running) = load(&open(&c2)?, &key)?;
        if !running && s.status == Status::Exited {
            return Err(ApiError::Conflict(
                "You cannot attach to a stopped container, start it first".into(),
            ));
        }
        Ok((h, c.process.tty, c.process.open_stdin, running))
    })
    .await?;
    let stdin = q.flag("stdin") && open_stdin;
    let (stdout, stderr) = (q.flag("stdout"), q.flag("stderr"));
    let source = if running {
        Source::Running(h.clone())
    } else {
        let (tx, rx) = oneshot::channel();
        lock(&ctx.pending).insert(h.id.clone(), PendingAttach { stdin, tx });
        Source::Pending(rx)
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let id = h.id.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let conn = match source {
            Source::Pending(rx) => rx.await.ok(),
            Source::Running(h) => tokio::task::spawn_blocking(move || {
                ipc::request(
                    &h,
                    &SupRequest::Attach(Attach {
                        stdin,
                        console_size: None,
                    }),
                )
                .ok()
            })
            .await
            .ok()
            .flatten(),
        };
        if let Some(conn) = conn {
            let o = Bridge {
                tty,
                stdin,
                stdout,
                stderr,
                on_exit: Box::new(move |code| {
                    lock(&ctx.exits).insert(id, code);
                }),
                to_supervisor: std::sync::mpsc::channel(),
            };
            if let Err(e) = o.run(upgraded, conn).await {
                log::debug!("attach: {e}");
            }
        }
    });
    Ok(upgraded_response(tty))
}

/// `101 UPGRADED` to `Upgrade: tcp`, with the stream's content type: raw
/// with a TTY, multiplexed without.
pub fn upgraded_response(tty: bool) -> Response<super::Body> {
    let mut r = Response::new(super::full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hd = r.headers_mut();
    hd.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    hd.insert(UPGRADE, HeaderValue::from_static("tcp"));
    hd.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if tty { RAW } else { MUX }),
    );
    r
}

/// The `h` (rows) and `w` (columns) parameters of a resize.
pub fn terminal_size(q: &Query) -> Result<(u16, u16), ApiError> {
    let dim = |k: &str| {
        let v = q.get(k).unwrap_or("");
        v.parse::<u16>()
            .map_err(|_| ApiError::BadParameter(format!("invalid {k} {v:?}")))
    };
    Ok((dim("h")?, dim("w")?))
}

/// `POST /containers/{id}/resize?h=&w=`: the container's terminal size
/// (`docker run -t` sends it after start and on every change).
pub async fn resize(ctx: Arc<Ctx>, key: String, q: Query) -> Reply {
    let (rows, cols) = terminal_size(&q)?;
    blocking(move || {
        let (h, _, _, running) = load(&open(&ctx)?, &key)?;
        if !running {
            return Err(ApiError::Conflict(format!(
                "Container {} is not running",
                h.id
            )));
        }
        // Any attached connection may resize; this one only does that.
        let attach = Attach {
            stdin: false,
            console_size: None,
        };
        let mut conn = ipc::request(&h, &SupRequest::Attach(attach))?;
        Frame::Resize { rows, cols }
            .write_to(&mut conn)
            .map_err(|e| ApiError::Internal(format!("cannot resize {}: {e}", h.id)))
    })
    .await?;
    Ok(empty(StatusCode::OK))
}

/// Where an attach's supervisor stream comes from.
enum Source {
    Running(Handle),
    Pending(oneshot::Receiver<UnixStream>),
}

/// What a [`Bridge`] does with the exit status its stream carries.
pub type OnExit = Box<dyn FnOnce(i32) + Send>;

/// Frames for the supervisor's side of a stream (stdin, resizes): the
/// bridge's stdin and others holding a sender (an exec's resize) send
/// them; one thread writes them, so frames never interleave.
pub type ToSupervisor = (
    std::sync::mpsc::Sender<Frame>,
    std::sync::mpsc::Receiver<Frame>,
);

/// Copies between a hijacked client connection and a supervisor stream.
pub struct Bridge {
    /// Raw output (a TTY) or multiplexed frames.
    pub tty: bool,
    /// Whether the client's input goes to the process's stdin.
    pub stdin: bool,
    /// Whether the client gets the process's stdout.
    pub stdout: bool,
    /// Whether the client gets the process's stderr.
    pub stderr: bool,
    /// Called with the exit status, before the client's stream ends.
    pub on_exit: OnExit,
    /// Frames to write to the supervisor.
    pub to_supervisor: ToSupervisor,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("tty", &self.tty)
            .field("stdin", &self.stdin)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// Copies until the supervisor's stream ends.
    pub async fn run(
        self,
        upgraded: hyper::upgrade::Upgraded,
        conn: UnixStream,
    ) -> std::io::Result<()> {
        let (mut rd, mut wr) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
        let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(64);
        let mut reader = conn.try_clone()?;
        let (tty, want_out, want_err, on_exit) = (self.tty, self.stdout, self.stderr, self.on_exit);
        std::thread::spawn(move || loop {
            let b = match Frame::read_from(&mut reader) {
                Ok(Some(Frame::Stdout(d))) if want_out => encode(tty, STDOUT, &d),
                Ok(Some(Frame::Stderr(d))) if want_err => encode(tty, 2, &d),
                Ok(Some(Frame::Exit(code))) => {
                    on_exit(code);
                    break;
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            };
            if out_tx.blocking_send(b).is_err() {
                break;
            }
        });
        let (in_tx, in_rx) = self.to_supervisor;
        let mut writer = conn;
        std::thread::spawn(move || {
            for f in in_rx {
                if f.write_to(&mut writer).is_err() {
                    break;
                }
            }
        });
        let stdin_task = self.stdin.then(|| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 32 << 10];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            // Half-closed: the output keeps flowing.
                            let _ = in_tx.send(Frame::StdinEof);
                            break;
                        }
                        Ok(n) => {
                            if in_tx.send(Frame::Stdin(buf[..n].to_vec())).is_err() {
                                break;
                            }
                        }
                    }
                }
            })
        });
        while let Some(b) = out_rx.recv().await {
            wr.write_all(&b).await?;
            wr.flush().await?;
        }
        if let Some(t) = stdin_task {
            t.abort();
        }
        wr.shutdown().await
    }
}

/// Reads one whole multiplexed stream into (stream, bytes) pairs (tests and
/// clients of this module).
pub fn demux(mut r: impl Read) -> std::io::Result<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut hdr = [0u8; 8];
    loop {
        match r.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(out),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
        let mut data = vec![0u8; len];
        r.read_exact(&mut data)?;
        out.push((hdr[0], data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplexed_frames() {
        let f = mux_frame(1, b"hi\n");
        assert_eq!(f, [1, 0, 0, 0, 0, 0, 0, 3, b'h', b'i', b'\n']);
        let mut all = f.clone();
        all.extend(mux_frame(2, b"oops"));
        // Nothing to send, no frame.
        assert!(mux_frame(1, b"").is_empty());
        let back = demux(&all[..]).unwrap();
        assert_eq!(back, vec![(1, b"hi\n".to_vec()), (2, b"oops".to_vec())]);
        assert_eq!(&encode(true, 2, b"raw")[..], b"raw");
        assert_eq!(encode(false, 2, b"x")[0], 2);
        // A truncated frame is an error, not a short read.
        assert!(demux(&all[..all.len() - 1]).is_err());
    }

    #[test]
    fn wait_conditions() {
        let created = State::default();
        let exited = State {
            status: Status::Exited,
            exit_code: Some(3),
            finished_at: Some("2026-01-01T00:00:00Z".into()),
            ..State::default()
        };
        // not-running: a created container is not running.
        assert!(wait_done("not-running", &created, &created, false, false));
        assert!(!wait_done("not-running", &created, &created, true, true));
        // next-exit waits for an exit after the call.
        assert!(!wait_done("next-exit", &created, &created, false, false));
        assert!(wait_done("next-exit", &created, &exited, false, false));
        assert!(!wait_done("next-exit", &exited, &exited, false, false));
        assert!(wait_done("next-exit", &exited, &exited, false, true));
        // removed only ends when the container is gone.
        assert!(!wait_done("removed", &created, &exited, false, true));
    }

    #[test]
    fn wait_reads_the_exit_of_a_removed_container() {
        let d = tempfile::tempdir().unwrap();
        let cs = crate::container::Containers::open(d.path()).unwrap();
        let cfg = crate::container::ContainerConfig {
            id: crate::container::new_id(),
            name: "waiter".into(),
            ..Default::default()
        };
        let h = cs.create(&cfg).unwrap();
        let ctx = Ctx::new(d.path().to_path_buf());
        let first = h.state().unwrap();
        let mut s = first.clone();
        s.mark_exited(3, None);
        h.write_state(&s).unwrap();
        assert_eq!(wait_blocking(&ctx, &h, "next-exit", &first), 3);
        cs.remove(&h).unwrap();
        lock(&ctx.exits).insert(h.id.clone(), 7);
        assert_eq!(wait_blocking(&ctx, &h, "removed", &first), 7);
    }

    #[test]
    fn logs_since_and_until_pick_records_by_their_time() {
        let rec = |stream, nanos| Record {
            stream,
            nanos,
            data: b"x\n".to_vec(),
        };
        let o = LogOpts {
            stdout: true,
            stderr: false,
            timestamps: false,
            tty: false,
            since: Some(2_000),
            until: Some(3_000),
        };
        assert!(!o.wants(&rec(STDOUT, 1_999)));
        assert!(o.wants(&rec(STDOUT, 2_000)));
        assert!(o.wants(&rec(STDOUT, 3_000)));
        assert!(!o.wants(&rec(STDOUT, 3_001)));
        assert!(!o.wants(&rec(STDERR, 2_500)), "stderr was not asked for");
        assert!(o.ended(), "an until in the past ends a follow");
        let open = LogOpts {
            since: None,
            until: None,
            ..o
        };
        assert!(open.wants(&rec(STDOUT, 0)) && !open.ended());
    }
}
