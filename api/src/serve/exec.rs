//! Exec instances: `POST /containers/{id}/exec` makes one, `POST
//! /exec/{id}/start` runs it in the container (through its supervisor, as
//! `husk exec` does; hijacked unless detached), `POST /exec/{id}/resize`
//! sizes its terminal and `GET /exec/{id}/json` says whether it runs and
//! its exit code (`docker exec` reads it when the stream ends).
//!
//! Instances live in the server's memory, as in Docker: at most
//! [`MAX_EXECS`]; when full, the oldest ended ones make room, and a server
//! whose instances all still run refuses a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::header::UPGRADE;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::containers::{load, open};
use super::streams::{terminal_size, upgraded_response, Bridge};
use super::{blocking, empty, lock, read_json, ApiError, Ctx, Query, Reply};
use crate::container::control::{Attach, Frame, Request as SupRequest};
use crate::container::{ipc, Handle};
use husk_proto::agent::{ConsoleSize, ProcessSpec};

/// The most exec instances a server keeps.
pub const MAX_EXECS: usize = 1024;

/// One exec instance.
#[derive(Debug)]
pub struct Exec {
    /// The container's full id.
    container: String,
    spec: ProcessSpec,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    /// Where it stands; shared with the thread reading its stream.
    run: Arc<Mutex<ExecRun>>,
}

/// An exec's progress.
#[derive(Debug, Default)]
struct ExecRun {
    started: bool,
    exit_code: Option<i32>,
    /// Frames to its supervisor stream while it runs (resizes).
    to_supervisor: Option<std::sync::mpsc::Sender<Frame>>,
    /// When it was made (its order among the instances).
    seq: u64,
}

impl ExecRun {
    fn running(&self) -> bool {
        self.started && self.exit_code.is_none()
    }
}

/// The instances, by id.
#[derive(Debug, Default)]
pub struct Execs {
    map: HashMap<String, Exec>,
    next_seq: u64,
}

impl Execs {
    /// Adds `e` under a new id; makes room by dropping the oldest ended
    /// instance when full.
    fn add(&mut self, e: Exec) -> Result<String, ApiError> {
        if self.map.len() >= MAX_EXECS {
            let oldest_ended = self
                .map
                .iter()
                .filter(|(_, x)| !lock(&x.run).running())
                .min_by_key(|(_, x)| lock(&x.run).seq)
                .map(|(k, _)| k.clone());
            match oldest_ended {
                Some(k) => {
                    self.map.remove(&k);
                }
                None => {
                    return Err(ApiError::Conflict(format!(
                        "too many exec instances ({MAX_EXECS}) are running"
                    )))
                }
            }
        }
        self.next_seq += 1;
        lock(&e.run).seq = self.next_seq;
        let id = crate::container::new_id();
        self.map.insert(id.clone(), e);
        Ok(id)
    }

    /// The instance `id`, or Docker's 404.
    fn get(&self, id: &str) -> Result<&Exec, ApiError> {
        self.map
            .get(id)
            .ok_or_else(|| ApiError::NoSuchExec(id.to_string()))
    }
}

/// The body of `POST /containers/{id}/exec`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ExecConfig {
    attach_stdin: bool,
    attach_stdout: bool,
    attach_stderr: bool,
    tty: bool,
    cmd: Vec<String>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    privileged: bool,
}

/// The body of `POST /exec/{id}/start`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct StartConfig {
    detach: bool,
    console_size: Option<[u16; 2]>,
}

/// `POST /containers/{id}/exec`: 201 `{"Id": ...}`.
pub async fn create(ctx: Arc<Ctx>, key: String, body: Incoming) -> Reply {
    let cfg: ExecConfig = read_json::<Option<ExecConfig>>(body)
        .await?
        .unwrap_or_default();
    if cfg.cmd.is_empty() {
        return Err(ApiError::BadParameter("No exec command specified".into()));
    }
    if cfg.privileged {
        return Err(ApiError::BadParameter(
            "husk cannot run privileged exec processes".into(),
        ));
    }
    let c2 = ctx.clone();
    let container = blocking(move || {
        let (h, _, _, running) = load(&open(&c2)?, &key)?;
        if !running {
            return Err(ApiError::Conflict(format!(
                "Container {} is not running",
                h.id
            )));
        }
        Ok(h.id)
    })
    .await?;
    let exec = Exec {
        container,
        spec: ProcessSpec {
            cmd: cfg.cmd,
            env: cfg.env.unwrap_or_default(),
            workdir: cfg.working_dir.unwrap_or_default(),
            user: cfg.user.unwrap_or_default(),
            tty: cfg.tty,
            ..ProcessSpec::default()
        },
        stdin: cfg.attach_stdin,
        stdout: cfg.attach_stdout,
        stderr: cfg.attach_stderr,
        run: Arc::default(),
    };
    let id = lock(&ctx.execs).add(exec)?;
    Ok(super::json(StatusCode::CREATED, &json!({ "Id": id })))
}

/// `POST /exec/{id}/start`: detached, 200 at once; else hijacked (`101
/// UPGRADED`), streaming until the process ends.
pub async fn start(ctx: Arc<Ctx>, id: String, mut req: Request<Incoming>) -> Reply {
    let upgrade = req.headers().contains_key(UPGRADE);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let cfg: StartConfig = read_json::<Option<StartConfig>>(req.into_body())
        .await?
        .unwrap_or_default();
    let (container, spec, stdin, stdout, stderr, run) = {
        let execs = lock(&ctx.execs);
        let e = execs.get(&id)?;
        let mut r = lock(&e.run);
        if r.started {
            return Err(ApiError::Conflict(format!(
                "Exec {id} has already been started"
            )));
        }
        r.started = true;
        (
            e.container.clone(),
            e.spec.clone(),
            e.stdin,
            e.stdout,
            e.stderr,
            e.run.clone(),
        )
    };
    let detach = cfg.detach || !upgrade;
    let tty = spec.tty;
    let attach = Attach {
        stdin: stdin && !detach,
        console_size: cfg
            .console_size
            .map(|[rows, cols]| ConsoleSize { rows, cols }),
    };
    let c2 = ctx.clone();
    let conn = blocking(move || {
        let cs = open(&c2)?;
        let h: Handle = cs.find(&container)?;
        Ok(ipc::request(&h, &SupRequest::Exec { spec, attach })?)
    })
    .await
    .inspect_err(|_| lock(&run).exit_code = Some(126))?;
    let (to_sup, from_bridge) = std::sync::mpsc::channel();
    lock(&run).to_supervisor = Some(to_sup.clone());
    let run2 = run.clone();
    let on_exit: super::streams::OnExit = Box::new(move |code| {
        let mut r = lock(&run2);
        r.exit_code = Some(code);
        r.to_supervisor = None;
    });
    if detach {
        // Nobody reads the output; the exit status is kept for inspect.
        std::thread::spawn(move || drain_to_exit(conn, on_exit));
        return Ok(empty(StatusCode::OK));
    }
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let bridge = Bridge {
            tty,
            stdin,
            stdout,
            stderr,
            on_exit,
            to_supervisor: (to_sup, from_bridge),
        };
        if let Err(e) = bridge.run(upgraded, conn).await {
            log::debug!("exec: {e}");
        }
    });
    Ok(upgraded_response(tty))
}

/// Reads a detached exec's stream until its exit status.
fn drain_to_exit(mut conn: std::os::unix::net::UnixStream, on_exit: super::streams::OnExit) {
    loop {
        match Frame::read_from(&mut conn) {
            Ok(Some(Frame::Exit(code))) => return on_exit(code),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}

/// `POST /exec/{id}/resize?h=&w=`.
pub async fn resize(ctx: Arc<Ctx>, id: String, q: Query) -> Reply {
    let (rows, cols) = terminal_size(&q)?;
    let execs = lock(&ctx.execs);
    let e = execs.get(&id)?;
    let r = lock(&e.run);
    match &r.to_supervisor {
        Some(tx) if r.running() => {
            let _ = tx.send(Frame::Resize { rows, cols });
            Ok(empty(StatusCode::OK))
        }
        _ => Err(ApiError::Conflict(format!("Exec {id} is not running"))),
    }
}

/// `GET /exec/{id}/json`.
pub async fn inspect(ctx: Arc<Ctx>, id: String) -> Reply {
    let execs = lock(&ctx.execs);
    let e = execs.get(&id)?;
    let r = lock(&e.run);
    let (entrypoint, arguments) = e
        .spec
        .cmd
        .split_first()
        .map_or((String::new(), Vec::new()), |(first, rest)| {
            (first.clone(), rest.to_vec())
        });
    Ok(super::json(
        StatusCode::OK,
        &json!({
            "ID": id,
            "ContainerID": e.container,
            "Running": r.running(),
            "ExitCode": r.exit_code,
            "OpenStdin": e.stdin,
            "OpenStdout": e.stdout,
            "OpenStderr": e.stderr,
            "CanRemove": false,
            "DetachKeys": "",
            "Pid": 0,
            "ProcessConfig": {
                "entrypoint": entrypoint,
                "arguments": arguments,
                "tty": e.spec.tty,
                "user": e.spec.user,
                "privileged": false,
            },
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(ended: bool) -> Exec {
        let run = ExecRun {
            started: true,
            exit_code: ended.then_some(0),
            ..ExecRun::default()
        };
        Exec {
            container: "c".into(),
            spec: ProcessSpec::default(),
            stdin: false,
            stdout: true,
            stderr: true,
            run: Arc::new(Mutex::new(run)),
        }
    }

    #[test]
    fn instances_are_bounded_and_the_oldest_ended_makes_room() {
        let mut execs = Execs::default();
        let first = execs.add(exec(true)).unwrap();
        let running = execs.add(exec(false)).unwrap();
        for _ in 2..MAX_EXECS {
            execs.add(exec(true)).unwrap();
        }
        assert_eq!(execs.map.len(), MAX_EXECS);
        let newest = execs.add(exec(false)).unwrap();
        assert_eq!(execs.map.len(), MAX_EXECS);
        assert!(execs.get(&first).is_err(), "the oldest ended one went");
        assert!(execs.get(&running).is_ok() && execs.get(&newest).is_ok());
        let mut full = Execs::default();
        for _ in 0..MAX_EXECS {
            full.add(exec(false)).unwrap();
        }
        assert!(matches!(full.add(exec(false)), Err(ApiError::Conflict(_))));
        assert!(matches!(full.get("nope"), Err(ApiError::NoSuchExec(_))));
    }
}
