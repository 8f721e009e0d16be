//! `/containers/{id}/archive` (`docker cp`): `HEAD` stats a path (the
//! `X-Docker-Container-Path-Stat` header), `GET` streams a tar of it, `PUT`
//! extracts a tar into a directory. The work is `container::archive`'s;
//! copying needs a running container.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::StatusCode;

use super::containers::{load, open};
use super::{blocking, channel, empty, ApiError, Ctx, Query, Reply};
use crate::container::archive::{self, ArchiveError, PathStat};
use crate::container::Handle;

/// The header that carries a path's stat.
const STAT_HEADER: &str = "X-Docker-Container-Path-Stat";
/// Chunks of a request body in flight to the container.
const BODY_CHUNKS: usize = 16;

impl From<ArchiveError> for ApiError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            ArchiveError::NotADirectory(_) | ArchiveError::NoTool(_) => {
                ApiError::BadParameter(e.to_string())
            }
            ArchiveError::Ipc(i) => i.into(),
            e => ApiError::internal(&e),
        }
    }
}

fn path_param(q: &Query) -> Result<String, ApiError> {
    match q.get("path") {
        Some(p) if !p.is_empty() => Ok(p.to_string()),
        _ => Err(ApiError::BadParameter("path is required".into())),
    }
}

/// The running container `key`, or Docker's 404 / a 409.
fn running(ctx: &Ctx, key: &str) -> Result<Handle, ApiError> {
    let (h, _, _, running) = load(&open(ctx)?, key)?;
    if !running {
        return Err(ApiError::Conflict(format!(
            "Container {key} is not running: husk copies files only to and from running containers"
        )));
    }
    Ok(h)
}

fn with_stat(mut r: hyper::Response<super::Body>, st: &PathStat) -> hyper::Response<super::Body> {
    if let Ok(v) = HeaderValue::from_str(&st.header_value()) {
        r.headers_mut().insert(STAT_HEADER, v);
    }
    r
}

/// `HEAD /containers/{id}/archive?path=`.
pub async fn head(ctx: Arc<Ctx>, key: String, q: Query) -> Reply {
    let path = path_param(&q)?;
    let st = blocking(move || {
        let h = running(&ctx, &key)?;
        Ok(archive::stat(&h, &key, &path)?)
    })
    .await?;
    Ok(with_stat(empty(StatusCode::OK), &st))
}

/// Writes into a response body channel from a blocking thread.
struct BodyWriter(tokio::sync::mpsc::Sender<Bytes>);

impl Write for BodyWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Bytes::copy_from_slice(b))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `GET /containers/{id}/archive?path=`: the stat header, then the tar.
pub async fn get(ctx: Arc<Ctx>, key: String, q: Query) -> Reply {
    let path = path_param(&q)?;
    let (h, st) = {
        let (key, path) = (key.clone(), path.clone());
        blocking(move || {
            let h = running(&ctx, &key)?;
            let st = archive::stat(&h, &key, &path)?;
            Ok((h, st))
        })
        .await?
    };
    let (resp, tx) = channel("application/x-tar");
    std::thread::spawn(move || {
        if let Err(e) = archive::get(&h, &path, &mut BodyWriter(tx)) {
            // The status is sent; the client sees a short archive.
            log::warn!("archive of {path} in {key}: {}", crate::error::chain(&e));
        }
    });
    Ok(with_stat(resp, &st))
}

/// Reads a request body on a blocking thread.
struct BodyReader {
    rx: std::sync::mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.recv() {
                Ok(b) => self.chunk = b,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

/// Passes `body`'s data chunks to the returned reader as they arrive.
fn body_reader(mut body: Incoming) -> BodyReader {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(BODY_CHUNKS);
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                let tx = tx.clone();
                let sent = tokio::task::spawn_blocking(move || tx.send(data).is_ok()).await;
                if !matches!(sent, Ok(true)) {
                    return;
                }
            }
        }
    });
    BodyReader {
        rx,
        chunk: Bytes::new(),
    }
}

/// `PUT /containers/{id}/archive?path=DIR`: extracts the tar body in DIR.
pub async fn put(ctx: Arc<Ctx>, key: String, q: Query, body: Incoming) -> Reply {
    let path = path_param(&q)?;
    let reader = body_reader(body);
    blocking(move || {
        let h = running(&ctx, &key)?;
        Ok(archive::put(&h, &key, &path, Box::new(reader))?)
    })
    .await?;
    Ok(empty(StatusCode::OK))
}
