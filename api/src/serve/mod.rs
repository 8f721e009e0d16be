//! `husk serve`: the Docker Engine API (version 1.41) over a Unix socket,
//! so the `docker` CLI, docker-py and compose drive husk. One more front
//! end over the library the CLI uses: containers made here show in
//! `husk ps` and the other way round, and each keeps its own supervisor, so
//! stopping the server loses none.
//!
//! This file holds the route table ([`ROUTES`], also checked against
//! `openapi.yaml`), version negotiation (`/v1.NN/...` and unversioned
//! paths), the headers every response carries and the body helpers; one
//! file per endpoint group has the handlers.

pub mod archive;
pub mod containers;
pub mod create_body;
pub mod error;
pub mod events;
pub mod exec;
pub mod images;
pub mod networks;
pub mod streams;
pub mod system;
pub mod top;
pub mod volumes;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

pub use error::ApiError;

/// The API version husk speaks.
pub const API_VERSION: &str = "1.41";
/// The oldest API version husk accepts.
pub const MIN_API_VERSION: &str = "1.24";
/// The largest request body read (create, volume create).
const MAX_BODY: usize = 4 << 20;

/// A response body: whole, or streamed from a channel.
pub type Body = BoxBody<Bytes, Infallible>;
/// A handler's answer.
pub type Reply = Result<Response<Body>, ApiError>;

/// What the server shares between requests.
#[derive(Debug)]
pub struct Ctx {
    /// The data directory (images, containers, volumes).
    pub data_dir: PathBuf,
    /// Attaches waiting for their container's start, by container id.
    pub pending: Mutex<HashMap<String, streams::PendingAttach>>,
    /// Exit statuses seen on attached streams, by container id (a
    /// container removed on exit leaves no state to read them from).
    pub exits: Mutex<HashMap<String, i32>>,
    /// Exec instances (`docker exec`).
    pub execs: Mutex<exec::Execs>,
    /// Container events (`GET /events`).
    pub events: events::EventLog,
}

impl Ctx {
    /// A context over `data_dir`.
    pub fn new(data_dir: PathBuf) -> Ctx {
        Ctx {
            data_dir,
            pending: Mutex::new(HashMap::new()),
            exits: Mutex::new(HashMap::new()),
            execs: Mutex::default(),
            events: events::EventLog::default(),
        }
    }
}

/// The default socket path: `/run/husk/docker.sock` as root, else
/// `docker.sock` in the user's husk run directory.
pub fn default_socket() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/husk/docker.sock");
    }
    crate::container::default_run_root().join("docker.sock")
}

/// Locks a mutex, also after a panic elsewhere.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every endpoint served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Route {
    Ping,
    Version,
    Info,
    Events,
    ContainerList,
    ContainerCreate,
    ContainerInspect,
    ContainerStart,
    ContainerStop,
    ContainerKill,
    ContainerRestart,
    ContainerPause,
    ContainerUnpause,
    ContainerWait,
    ContainerDelete,
    ContainerLogs,
    ContainerAttach,
    ContainerResize,
    ContainerTop,
    ArchiveHead,
    ArchiveGet,
    ArchivePut,
    ExecCreate,
    ExecStart,
    ExecResize,
    ExecInspect,
    ImageList,
    ImageCreate,
    ImageInspect,
    ImageDelete,
    ImageTag,
    NetworkList,
    NetworkCreate,
    NetworkInspect,
    NetworkDelete,
    NetworkConnect,
    NetworkDisconnect,
    NetworkPrune,
    VolumeList,
    VolumeCreate,
    VolumeInspect,
    VolumeDelete,
    VolumePrune,
}

/// The route table: method, path pattern (`{x}` one segment, `{x*}` one
/// or more, for image names with slashes), route.
pub const ROUTES: &[(&str, &str, Route)] = &[
    ("GET", "/_ping", Route::Ping),
    ("HEAD", "/_ping", Route::Ping),
    ("GET", "/version", Route::Version),
    ("GET", "/info", Route::Info),
    ("GET", "/events", Route::Events),
    ("GET", "/containers/json", Route::ContainerList),
    ("POST", "/containers/create", Route::ContainerCreate),
    ("GET", "/containers/{id}/json", Route::ContainerInspect),
    ("POST", "/containers/{id}/start", Route::ContainerStart),
    ("POST", "/containers/{id}/stop", Route::ContainerStop),
    ("POST", "/containers/{id}/kill", Route::ContainerKill),
    ("POST", "/containers/{id}/restart", Route::ContainerRestart),
    ("POST", "/containers/{id}/pause", Route::ContainerPause),
    ("POST", "/containers/{id}/unpause", Route::ContainerUnpause),
    ("POST", "/containers/{id}/wait", Route::ContainerWait),
    ("DELETE", "/containers/{id}", Route::ContainerDelete),
    ("GET", "/containers/{id}/logs", Route::ContainerLogs),
    ("POST", "/containers/{id}/attach", Route::ContainerAttach),
    ("POST", "/containers/{id}/resize", Route::ContainerResize),
    ("GET", "/containers/{id}/top", Route::ContainerTop),
    ("HEAD", "/containers/{id}/archive", Route::ArchiveHead),
    ("GET", "/containers/{id}/archive", Route::ArchiveGet),
    ("PUT", "/containers/{id}/archive", Route::ArchivePut),
    ("POST", "/containers/{id}/exec", Route::ExecCreate),
    ("POST", "/exec/{id}/start", Route::ExecStart),
    ("POST", "/exec/{id}/resize", Route::ExecResize),
    ("GET", "/exec/{id}/json", Route::ExecInspect),
    ("GET", "/images/json", Route::ImageList),
    ("POST", "/images/create", Route::ImageCreate),
    ("GET", "/images/{name*}/json", Route::ImageInspect),
    ("POST", "/images/{name*}/tag", Route::ImageTag),
    ("DELETE", "/images/{name*}", Route::ImageDelete),
    ("GET", "/networks", Route::NetworkList),
    ("POST", "/networks/create", Route::NetworkCreate),
    ("POST", "/networks/prune", Route::NetworkPrune),
    ("GET", "/networks/{id}", Route::NetworkInspect),
    ("DELETE", "/networks/{id}", Route::NetworkDelete),
    ("POST", "/networks/{id}/connect", Route::NetworkConnect),
    (
        "POST",
        "/networks/{id}/disconnect",
        Route::NetworkDisconnect,
    ),
    ("GET", "/volumes", Route::VolumeList),
    ("POST", "/volumes/create", Route::VolumeCreate),
    ("POST", "/volumes/prune", Route::VolumePrune),
    ("GET", "/volumes/{name}", Route::VolumeInspect),
    ("DELETE", "/volumes/{name}", Route::VolumeDelete),
];

/// Splits `/v1.NN/rest` into the version and `/rest`; refuses versions
/// outside [`MIN_API_VERSION`]..=[`API_VERSION`] with Docker's messages.
pub fn split_version(path: &str) -> Result<(Option<String>, &str), ApiError> {
    let Some(rest) = path.strip_prefix("/v") else {
        return Ok((None, path));
    };
    let (ver, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Some(parsed) = parse_version(ver) else {
        return Ok((None, path));
    };
    if parsed > parse_version(API_VERSION).unwrap_or((1, 41)) {
        return Err(ApiError::VersionTooNew(ver.to_string()));
    }
    if parsed < parse_version(MIN_API_VERSION).unwrap_or((1, 24)) {
        return Err(ApiError::VersionTooOld(ver.to_string()));
    }
    Ok((Some(ver.to_string()), tail))
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Finds the route of `method` and `path` (unversioned) and its
/// parameters.
pub fn route(method: &str, path: &str) -> Option<(Route, Vec<String>)> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    ROUTES.iter().find_map(|(m, pattern, r)| {
        if *m != method {
            return None;
        }
        let pat: Vec<&str> = pattern.split('/').skip(1).collect();
        match_segments(&pat, &segs).map(|params| (*r, params))
    })
}

fn match_segments(pat: &[&str], segs: &[&str]) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut i = 0;
    for (n, p) in pat.iter().enumerate() {
        if p.starts_with('{') && p.ends_with("*}") {
            // Greedy: leaves exactly the rest of the pattern's segments.
            let rest = pat.len() - n - 1;
            let end = segs.len().checked_sub(rest).filter(|e| *e > i)?;
            if segs[i..end].iter().any(|s| s.is_empty()) {
                return None;
            }
            params.push(segs[i..end].join("/"));
            i = end;
        } else if p.starts_with('{') {
            params.push(segs.get(i).filter(|s| !s.is_empty())?.to_string());
            i += 1;
        } else {
            (segs.get(i)? == p).then_some(())?;
            i += 1;
        }
    }
    (i == segs.len()).then_some(params)
}

/// Query parameters, percent-decoded.
#[derive(Debug, Default, Clone)]
pub struct Query(HashMap<String, String>);

impl Query {
    /// Parses a query string.
    pub fn parse(q: Option<&str>) -> Query {
        let mut map = HashMap::new();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(decode(k), decode(v));
        }
        Query(map)
    }

    /// A parameter.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    /// A boolean parameter as Docker reads them (`1`, `true`, `True`).
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "true" | "True" | "TRUE"))
    }
}

/// Percent-decoding, `+` as a space.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON response.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An empty response.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// A whole body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// A streamed body: chunks sent on the returned channel are written (and
/// flushed) as they come; dropping the sender ends the body.
pub fn channel(content_type: &'static str) -> (Response<Body>, tokio::sync::mpsc::Sender<Bytes>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let stream =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |b| {
            Ok::<_, Infallible>(Frame::data(b))
        });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    (r, tx)
}

/// Reads a JSON request body (empty means `null`).
pub async fn read_json<T: serde::de::DeserializeOwned>(body: Incoming) -> Result<T, ApiError> {
    let bytes = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::BadParameter(format!("cannot read the request body: {e}")))?
        .to_bytes();
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        &bytes
    };
    serde_json::from_slice(text)
        .map_err(|e| ApiError::BadParameter(format!("malformed JSON in the request body: {e}")))
}

/// Runs blocking library work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("handler failed: {e}")))?
}

/// Serves one request: version check, routing, the handler, the common
/// headers.
pub async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut resp = match dispatch(ctx, req).await {
        Ok(r) => r,
        Err(ApiError::NotModified) => empty(StatusCode::NOT_MODIFIED),
        Err(e) => {
            if e.status().is_server_error() {
                log::error!("{e}");
            }
            json(e.status(), &e.body())
        }
    };
    let h = resp.headers_mut();
    h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert(
        "Server",
        HeaderValue::from_static(concat!("husk/", env!("CARGO_PKG_VERSION"), " (linux)")),
    );
    Ok(resp)
}

async fn dispatch(ctx: Arc<Ctx>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let (_, path) = split_version(&path)?;
    let method = if req.method() == Method::HEAD {
        "HEAD"
    } else {
        req.method().as_str()
    };
    let (r, params) = route(method, path).ok_or(ApiError::NoRoute)?;
    let q = Query::parse(req.uri().query());
    let p = params.into_iter().next().unwrap_or_default();
    match r {
        Route::Ping => Ok(system::ping(method)),
        Route::Version => system::version().await,
        Route::Info => system::info(ctx).await,
        Route::Events => events::events(ctx, q).await,
        Route::ContainerList => containers::list(ctx, q).await,
        Route::ContainerCreate => containers::create(ctx, q, req.into_body()).await,
        Route::ContainerInspect => containers::inspect(ctx, p).await,
        Route::ContainerStart => streams::start(ctx, p).await,
        Route::ContainerStop => containers::stop(ctx, p, q).await,
        Route::ContainerKill => containers::kill(ctx, p, q).await,
        Route::ContainerRestart => containers::restart(ctx, p, q).await,
        Route::ContainerPause => containers::pause(ctx, p, true).await,
        Route::ContainerUnpause => containers::pause(ctx, p, false).await,
        Route::ContainerWait => streams::wait(ctx, p, q).await,
        Route::ContainerDelete => containers::delete(ctx, p, q).await,
        Route::ContainerLogs => streams::logs(ctx, p, q).await,
        Route::ContainerAttach => streams::attach(ctx, p, q, req).await,
        Route::ContainerResize => streams::resize(ctx, p, q).await,
        Route::ContainerTop => top::top(ctx, p, q).await,
        Route::ArchiveHead => archive::head(ctx, p, q).await,
        Route::ArchiveGet => archive::get(ctx, p, q).await,
        Route::ArchivePut => archive::put(ctx, p, q, req.into_body()).await,
        Route::ExecCreate => exec::create(ctx, p, req.into_body()).await,
        Route::ExecStart => exec::start(ctx, p, req).await,
        Route::ExecResize => exec::resize(ctx, p, q).await,
        Route::ExecInspect => exec::inspect(ctx, p).await,
        Route::ImageList => images::list(ctx).await,
        Route::ImageCreate => images::create(ctx, q, req.headers()).await,
        Route::ImageInspect => images::inspect(ctx, p).await,
        Route::ImageDelete => images::delete(ctx, p, q).await,
        Route::ImageTag => images::tag(ctx, p, q).await,
        Route::NetworkList => networks::list(ctx, q).await,
        Route::NetworkCreate => networks::create(ctx, req.into_body()).await,
        Route::NetworkInspect => networks::inspect(ctx, p).await,
        Route::NetworkDelete => networks::delete(ctx, p).await,
        Route::NetworkConnect => networks::attach(ctx, p, req.into_body(), true).await,
        Route::NetworkDisconnect => networks::attach(ctx, p, req.into_body(), false).await,
        Route::NetworkPrune => networks::prune(ctx).await,
        Route::VolumeList => volumes::list(ctx).await,
        Route::VolumeCreate => volumes::create(ctx, req.into_body()).await,
        Route::VolumeInspect => volumes::inspect(ctx, p).await,
        Route::VolumeDelete => volumes::delete(ctx, p, q).await,
        Route::VolumePrune => volumes::prune(ctx).await,
    }
}

/// Accepts connections until the process is stopped.
pub async fn serve(listener: tokio::net::UnixListener, ctx: Arc<Ctx>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(ctx.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                log::debug!("connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("GET", "/_ping"), Some((Route::Ping, vec![])));
        assert_eq!(
            route("POST", "/containers/abc/start"),
            Some((Route::ContainerStart, vec!["abc".into()]))
        );
        assert_eq!(
            route("DELETE", "/containers/abc"),
            Some((Route::ContainerDelete, vec!["abc".into()]))
        );
        assert_eq!(
            route("GET", "/images/library/busybox:latest/json"),
            Some((Route::ImageInspect, vec!["library/busybox:latest".into()]))
        );
        assert_eq!(
            route("DELETE", "/images/localhost:5000/a/b:1"),
            Some((Route::ImageDelete, vec!["localhost:5000/a/b:1".into()]))
        );
        assert_eq!(
            route("POST", "/volumes/prune"),
            Some((Route::VolumePrune, vec![]))
        );
        assert_eq!(
            route("GET", "/volumes/data"),
            Some((Route::VolumeInspect, vec!["data".into()]))
        );
        assert_eq!(
            route("GET", "/containers/json/"),
            Some((Route::ContainerList, vec![]))
        );
        assert_eq!(route("PUT", "/containers/json"), None);
        assert_eq!(route("GET", "/images//json"), None);
        assert_eq!(route("GET", "/nope"), None);
    }

    #[test]
    fn versions() {
        assert_eq!(
            split_version("/v1.41/containers/json").unwrap(),
            (Some("1.41".into()), "/containers/json")
        );
        assert_eq!(split_version("/v1.24/_ping").unwrap().1, "/_ping");
        assert_eq!(split_version("/_ping").unwrap(), (None, "/_ping"));
        assert_eq!(split_version("/volumes").unwrap(), (None, "/volumes"));
        let e = split_version("/v1.99/version").unwrap_err();
        assert_eq!(
            e.to_string(),
            "client version 1.99 is too new. Maximum supported API version is 1.41"
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(matches!(
            split_version("/v1.12/version"),
            Err(ApiError::VersionTooOld(_))
        ));
        assert!(matches!(
            split_version("/v2.0/x"),
            Err(ApiError::VersionTooNew(_))
        ));
    }

    #[test]
    fn queries() {
        let q = Query::parse(Some(
            "all=1&filters=%7B%22name%22%3A%5B%22web%22%5D%7D&t=a+b&x",
        ));
        assert!(q.flag("all"));
        assert_eq!(q.get("filters"), Some(r#"{"name":["web"]}"#));
        assert_eq!(q.get("t"), Some("a b"));
        assert_eq!(q.get("x"), Some(""));
        assert!(!q.flag("x") && !q.flag("missing"));
        assert_eq!(decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn openapi_matches_the_route_table() {
        let doc = include_str!("openapi.yaml");
        let mut documented = std::collections::BTreeSet::new();
        let mut path = None;
        for line in doc.lines() {
            if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
                path = Some(format!("/{p}"));
            } else if let (Some(p), Some(m)) = (
                &path,
                line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')),
            ) {
                if !m.starts_with(' ') {
                    documented.insert((m.to_ascii_uppercase(), p.replace('*', "")));
                }
            }
        }
        let served: std::collections::BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.replace('*', "")))
            .collect();
        assert_eq!(documented, served, "openapi.yaml and ROUTES differ");
    }
}
