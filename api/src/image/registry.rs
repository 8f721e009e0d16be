//! Registry client (OCI distribution spec): manifests with the Accept
//! headers for OCI and Docker schema-2 manifests, indexes and manifest lists
//! (choosing linux/amd64), blobs streamed into the store while their sha256
//! is checked, bearer tokens from `WWW-Authenticate` and basic credentials,
//! HTTPS (rustls) or plain HTTP for loopback registries, redirects, retries
//! with back-off and concurrent layer downloads. Downloads are bounded: a
//! manifest by [`MAX_MANIFEST`], a blob by its descriptor's size.

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::oci::{short_digest, Manifest, MT_DOCKER_MANIFEST, MT_OCI_MANIFEST};
use super::reference::Reference;
use super::store::{is_index, parse_index, Store, StoreError};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
const ATTEMPTS: u32 = 4;
/// The largest manifest or index husk reads (the distribution spec asks
/// registries to accept at least 4 MiB).
pub const MAX_MANIFEST: u64 = 4 << 20;

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached.
    #[error("cannot reach {url}: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// The cause.
        reason: String,
    },
    /// An unexpected HTTP status.
    #[error("{url}: HTTP {status}{hint}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// Extra explanation.
        hint: String,
    },
    /// Credentials were refused.
    #[error(
        "authentication to {registry} failed (HTTP {status}): check the user name and password"
    )]
    Auth {
        /// The registry.
        registry: String,
        /// The status.
        status: u16,
    },
    /// The manifest is not one husk can run.
    #[error("{0}")]
    Unsupported(String),
    /// A manifest larger than [`MAX_MANIFEST`].
    #[error("{url}: manifest larger than the limit of {limit} bytes")]
    ManifestTooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// A layer download thread panicked (a bug, reported, not ignored).
    #[error("downloading layer {digest} failed unexpectedly")]
    DownloadPanicked {
        /// The layer.
        digest: String,
    },
    /// Content failed verification or could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result alias for registry operations.
pub type Result<T> = std::result::Result<T, RegistryError>;

/// User name and password for basic auth and token requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// Credentials for `registry` from Docker's `config.json` (`$DOCKER_CONFIG`
/// or `~/.docker/config.json`) or husk's `~/.config/husk/auth.json`, same
/// format: `{"auths": {"host:port": {"auth": base64("user:password")}}}`.
pub fn config_credentials(registry: &str) -> Option<Credentials> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from)?;
    let docker = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| home.join(".docker"));
    let files = [
        home.join(".config/husk/auth.json"),
        docker.join("config.json"),
    ];
    let keys = [
        registry.to_string(),
        format!("https://{registry}"),
        if registry == "docker.io" {
            "https://index.docker.io/v1/".into()
        } else {
            String::new()
        },
    ];
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            log::warn!("ignoring unreadable credentials file {}", f.display());
            continue;
        };
        for k in keys.iter().filter(|k| !k.is_empty()) {
            let auth = v["auths"][k.as_str()]["auth"].as_str();
            let decoded =
                auth.and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok());
            if let Some((user, password)) = decoded
                .as_deref()
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|s| s.split_once(':'))
            {
                return Some(Credentials {
                    user: user.into(),
                    password: password.into(),
                });
            }
        }
    }
    None
}

/// A client for one registry.
#[derive(Debug)]
pub struct Registry {
    agent: ureq::Agent,
    scheme: &'static str,
    creds: Option<Credentials>,
    auth_header: Mutex<Option<String>>,
    quiet: bool,
    /// Progress bars, on a terminal only.
    bars: Option<indicatif::MultiProgress>,
    /// The host and port connected to (see [`dial_host`]).
    dial_host: String,
}

/// A registry host's name and port (`localhost:5000` → `localhost`, `5000`).
fn split_port(host: &str) -> (&str, Option<&str>) {
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (host, None),
    }
}

/// Whether a registry host name is this machine's loopback.
fn is_loopback(name: &str) -> bool {
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
}

/// QEMU's user-network address of the outer host's loopback, seen from
/// inside the husk machine.
const MACHINE_HOST_LOOPBACK: &str = "10.0.2.2";

/// The address to connect to for a registry `host`: the same, except
/// inside the husk machine (`in_machine`), where a loopback registry
/// (`localhost:5000`, as a user of this host means it) is reached at the
/// outer host's loopback through QEMU's user network.
pub fn dial_host(host: &str, in_machine: bool) -> String {
    let (name, port) = split_port(host);
    if !(in_machine && is_loopback(name)) {
        return host.to_string();
    }
    match port {
        Some(p) => format!("{MACHINE_HOST_LOOPBACK}:{p}"),
        None => MACHINE_HOST_LOOPBACK.to_string(),
    }
}

/// Whether husk talks plain HTTP to `host`: loopback registries, as Docker
/// allows, and hosts listed in `HUSK_INSECURE_REGISTRIES` (comma-separated).
pub fn is_insecure(host: &str) -> bool {
    is_loopback(split_port(host).0)
        || std::env::var("HUSK_INSECURE_REGISTRIES")
            .is_ok_and(|v| v.split(',').any(|x| x.trim() == host))
}

fn param<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let (_, rest) = header.split_once(&format!("{key}=\""))?;
    rest.split('"').next()
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Registry {
    /// A client for `reference`'s registry.
    pub fn new(reference: &Reference, creds: Option<Credentials>, quiet: bool) -> Registry {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(5)
            .timeout_connect(Some(Duration::from_secs(15)))
            .build()
            .into();
        Registry {
            agent,
            scheme: if is_insecure(reference.api_host()) {
                "http"
            } else {
                "https"
            },
            creds,
            auth_header: Mutex::new(None),
            quiet,
            bars: (!quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .then(indicatif::MultiProgress::new),
            dial_host: dial_host(
                reference.api_host(),
                std::env::var_os("HUSK_IN_MACHINE").is_some_and(|v| !v.is_empty()),
            ),
        }
    }

    fn url(&self, r: &Reference, kind: &str, what: &str) -> String {
        format!(
            "{}://{}/v2/{}/{kind}/{what}",
            self.scheme, self.dial_host, r.repository
        )
    }

    /// GET with auth, retries and back-off; returns a 200 response.
    fn get(
        &self,
        r: &Reference,
        url: &str,
        accept: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut authed_once = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(h) = self
                .auth_header
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                req = req.header("Authorization", h);
            }
            let resp = match req.call() {
                Ok(r) => r,
                Err(e) if attempt < ATTEMPTS => {
                    log::debug!("{url}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                    continue;
                }
                Err(e) => {
                    return Err(RegistryError::Transport {
                        url: url.to_string(),
                        reason: e.to_string(),
                    })
                }
            };
            let status = resp.status().as_u16();
            match status {
                200 => return Ok(resp),
                401 if !authed_once => {
                    authed_once = true;
                    let challenge = resp
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    self.authenticate(r, &challenge)?;
                }
                401 | 403 => {
                    return Err(RegistryError::Auth {
                        registry: r.registry.clone(),
                        status,
                    })
                }
                500..=599 if attempt < ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
                _ => {
                    let hint = match status {
                        404 => format!(": {} not found", r.familiar()),
                        _ => String::new(),
                    };
                    return Err(RegistryError::Status {
                        url: url.to_string(),
                        status,
                        hint,
                    });
                }
            }
        }
    }

    fn basic(&self) -> Option<String> {
        self.creds.as_ref().map(|c| {
            let raw = format!("{}:{}", c.user, c.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        })
    }

    /// Answers a `WWW-Authenticate` challenge: basic credentials, or a
    /// bearer token from the realm it names.
    fn authenticate(&self, r: &Reference, challenge: &str) -> Result<()> {
        let header = if challenge.to_ascii_lowercase().starts_with("bearer") {
            let realm = param(challenge, "realm").ok_or_else(|| {
                RegistryError::Unsupported(format!(
                    "{}: bearer challenge without realm",
                    r.registry
                ))
            })?;
            let mut url = format!("{realm}?scope=repository:{}:pull", r.repository);
            if let Some(s) = param(challenge, "service") {
                url.push_str(&format!("&service={s}"));
            }
            let mut req = self.agent.get(&url);
            if let Some(b) = self.basic() {
                req = req.header("Authorization", b);
            }
            let mut resp = req.call().map_err(|e| RegistryError::Transport {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Err(RegistryError::Auth {
                    registry: r.registry.clone(),
                    status,
                });
            }
            let body = resp
                .body_mut()
                .read_to_vec()
                .map_err(|e| RegistryError::Transport {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                RegistryError::Unsupported(format!("token response from {realm}: {e}"))
            })?;
            let token = v
                .get("token")
                .or_else(|| v.get("access_token"))
                .and_then(|t| t.as_str())
                .ok_or_else(|| RegistryError::Unsupported(format!("no token from {realm}")))?;
            format!("Bearer {token}")
        } else {
            self.basic().ok_or(RegistryError::Auth {
                registry: r.registry.clone(),
                status: 401,
            })?
        };
        *self.auth_header.lock().unwrap_or_else(|e| e.into_inner()) = Some(header);
        Ok(())
    }

    /// Fetches a manifest or index by tag or digest: (bytes, media type, digest).
    fn fetch_manifest(&self, r: &Reference, what: &str) -> Result<(Vec<u8>, String, String)> {
        let url = self.url(r, "manifests", what);
        let mut resp = self.get(r, &url, Some(ACCEPT))?;
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut bytes = Vec::new();
        resp.body_mut()
            .with_config()
            .limit(u64::MAX)
            .reader()
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| RegistryError::Transport {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if bytes.len() as u64 > MAX_MANIFEST {
            return Err(RegistryError::ManifestTooLarge {
                url,
                limit: MAX_MANIFEST,
            });
        }
        let digest = sha256_digest(&bytes);
        if what.starts_with("sha256:") && digest != what {
            return Err(StoreError::DigestMismatch {
                expected: what.to_string(),
                actual: digest,
            }
            .into());
        }
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or(ct);
        Ok((bytes, media_type, digest))
    }

    fn fetch_blob(&self, store: &Store, r: &Reference, digest: &str, size: u64) -> Result<()> {
        if store.has_blob(digest) {
            return Ok(());
        }
        let url = self.url(r, "blobs", digest);
        let resp = self.get(r, &url, None)?;
        let body = resp.into_body().into_with_config().limit(u64::MAX).reader();
        match self.bars.as_ref().filter(|_| size > 1 << 20) {
            Some(multi) => {
                let bar = multi.add(indicatif::ProgressBar::new(size));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.set_prefix(short_digest(digest).to_string());
                let mut reader = bar.wrap_read(body);
                store.put_blob(&mut reader, digest, Some(size))?;
                bar.finish();
            }
            None => {
                let mut body = body;
                store.put_blob(&mut body, digest, Some(size))?;
            }
        }
        Ok(())
    }

    /// Pulls `r` into `store` and tags it; returns the manifest digest.
    pub fn pull(&self, store: &Store, r: &Reference) -> Result<String> {
        let (mut bytes, mut media_type, mut digest) = self.fetch_manifest(r, r.manifest_ref())?;
        if is_index(&media_type) {
            let index = parse_index(&bytes, &digest)?;
            let d = index.linux_amd64().ok_or_else(|| {
                RegistryError::Unsupported(format!("{} has no linux/amd64 image", r.familiar()))
            })?;
            let d = d.digest.clone();
            (bytes, media_type, digest) = self.fetch_manifest(r, &d)?;
        }
        if media_type != MT_OCI_MANIFEST && media_type != MT_DOCKER_MANIFEST {
            return Err(RegistryError::Unsupported(format!(
                "{}: unsupported manifest type {media_type:?}",
                r.familiar()
            )));
        }
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
                what: "manifest",
                digest: digest.clone(),
                source,
            })?;
        self.fetch_blob(store, r, &manifest.config.digest, manifest.config.size)?;
        let errors: Vec<RegistryError> = std::thread::scope(|s| {
            let handles: Vec<_> = manifest
                .layers
                .iter()
                .map(|l| {
                    s.spawn(move || {
                        let short = short_digest(&l.digest);
                        let plain = !self.quiet && self.bars.is_none();
                        if plain {
                            eprintln!("{short}: pulling {} bytes", l.size);
                        }
                        let res = self.fetch_blob(store, r, &l.digest, l.size);
                        if plain && res.is_ok() {
                            eprintln!("{short}: pull complete");
                        }
                        res
                    })
                })
                .collect();
            manifest
                .layers
                .iter()
                .zip(handles)
                .filter_map(|(l, h)| match h.join() {
                    Ok(res) => res.err(),
                    Err(_) => Some(RegistryError::DownloadPanicked {
                        digest: l.digest.clone(),
                    }),
                })
                .collect()
        });
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        store.put_blob(&mut &bytes[..], &digest, Some(bytes.len() as u64))?;
        store.tag(r, &digest)?;
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_params_and_insecure_hosts() {
        let c = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        assert_eq!(param(c, "realm"), Some("https://auth.docker.io/token"));
        assert_eq!(param(c, "service"), Some("registry.docker.io"));
        assert_eq!(param(c, "nope"), None);
        assert!(is_insecure("127.0.0.1:5000"));
        assert!(is_insecure("localhost"));
        assert!(!is_insecure("registry-1.docker.io"));
        assert!(!is_insecure("example.com:5000"));
        assert_eq!(dial_host("localhost:5000", true), "10.0.2.2:5000");
        assert_eq!(dial_host("127.0.0.1", true), "10.0.2.2");
        assert_eq!(dial_host("localhost:5000", false), "localhost:5000");
        assert_eq!(dial_host("example.com:5000", true), "example.com:5000");
        assert_eq!(param(r#"Bearer realm="é"#, "realm"), Some("é"));
        assert_eq!(param("Bearer realm=", "realm"), None);
    }

    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    use crate::image::oci::{MT_OCI_CONFIG, MT_OCI_LAYER_GZIP};

    type Routes = Arc<Mutex<HashMap<String, (String, Vec<u8>)>>>;

    /// A tiny registry on 127.0.0.1: GET path → (content type, body), else
    /// 404. One request per connection.
    struct TestRegistry {
        port: u16,
        routes: Routes,
    }

    impl TestRegistry {
        fn start() -> TestRegistry {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let routes: Routes = Arc::default();
            let r = routes.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    let r = r.clone();
                    std::thread::spawn(move || serve(conn, &r));
                }
            });
            TestRegistry { port, routes }
        }

        fn put(&self, path: &str, content_type: &str, body: Vec<u8>) {
            self.routes
                .lock()
                .unwrap()
                .insert(path.to_string(), (content_type.to_string(), body));
        }

        /// Serves `body` as blob `digest` of repository `t`.
        fn blob(&self, digest: &str, body: Vec<u8>) {
            self.put(
                &format!("/v2/t/blobs/{digest}"),
                "application/octet-stream",
                body,
            );
        }

        fn manifest(&self, tag: &str, body: Vec<u8>) -> Reference {
            self.put(&format!("/v2/t/manifests/{tag}"), MT_OCI_MANIFEST, body);
            Reference::parse(&format!("127.0.0.1:{}/t:{tag}", self.port)).unwrap()
        }
    }

    fn serve(conn: TcpStream, routes: &Routes) {
        let mut reader = BufReader::new(&conn);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            return;
        }
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let path = request_line.split(' ').nth(1).unwrap_or("");
        let found = routes.lock().unwrap().get(path).cloned();
        let (status, ct, body) = match found {
            Some((ct, body)) => ("200 OK", ct, body),
            None => ("404 Not Found", "text/plain".into(), b"not found".to_vec()),
        };
        let mut w = &conn;
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        // The client may hang up early (a refused download): ignore that.
        let _ = w
            .write_all(head.as_bytes())
            .and_then(|()| w.write_all(&body));
    }

    fn manifest_json(config: (&str, u64), layers: &[(String, u64)]) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .map(|(d, size)| serde_json::json!({"mediaType": MT_OCI_LAYER_GZIP, "digest": d, "size": size}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": config.0, "size": config.1},
            "layers": layers,
        }))
        .unwrap()
    }

    fn pull(store: &Store, r: &Reference) -> Result<String> {
        Registry::new(r, None, true).pull(store, r)
    }

    #[test]
    fn manifest_over_the_cap_is_refused() {
        let reg = TestRegistry::start();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut body = b"{\"schemaVersion\":2,\"x\":\"".to_vec();
        body.resize(usize::try_from(MAX_MANIFEST).unwrap() + 4096, b'a');
        let r = reg.manifest("big", body);
        let e = crate::error::chain(&pull(&store, &r).unwrap_err());
        assert_eq!(
            e,
            format!(
                "http://127.0.0.1:{}/v2/t/manifests/big: manifest larger than the limit of 4194304 bytes",
                reg.port
            )
        );
    }

    #[test]
    fn blob_longer_than_its_descriptor_is_refused() {
        let reg = TestRegistry::start();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config = b"{}".to_vec();
        let config_digest = sha256_digest(&config);
        reg.blob(&config_digest, config);
        let layer = vec![7u8; 3 << 20];
        let layer_digest = sha256_digest(&layer);
        reg.blob(&layer_digest, layer);
        let m = manifest_json((&config_digest, 2), &[(layer_digest.clone(), 10)]);
        let r = reg.manifest("long", m);
        let e = crate::error::chain(&pull(&store, &r).unwrap_err());
        assert_eq!(
            e,
            format!("{layer_digest} is longer than the 10 bytes its descriptor gives")
        );
        assert!(!store.has_blob(&layer_digest));
        assert_eq!(fs_count(&dir.path().join("tmp")), 0);
        assert!(store.refs().unwrap().is_empty());
    }

    fn fs_count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn malformed_digests_in_a_manifest_are_refused() {
        let reg = TestRegistry::start();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config_digest = sha256_digest(b"{}");
        reg.blob(&config_digest, b"{}".to_vec());
        for (i, bad) in [
            "sha256:abc",
            "sha256:é",
            &config_digest.to_uppercase(),
            "sha512:00",
        ]
        .iter()
        .enumerate()
        {
            let m = manifest_json((&config_digest, 2), &[(bad.to_string(), 1)]);
            let r = reg.manifest(&format!("bad{i}"), m);
            let e = crate::error::chain(&pull(&store, &r).unwrap_err());
            assert!(
                e.contains("invalid digest") || e.contains("unsupported digest algorithm"),
                "{bad}: {e}"
            );
            assert_eq!(e.lines().count(), 1);
        }
        assert!(store.refs().unwrap().is_empty());
    }

    /// Random manifests (random digests, sizes and bytes): every pull ends
    /// in `Ok` or an error, never a panic, and nothing malformed is stored.
    #[test]
    fn random_manifests_never_panic_a_pull() {
        let reg = TestRegistry::start();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config_digest = sha256_digest(b"{}");
        reg.blob(&config_digest, b"{}".to_vec());
        let layer = b"layer-bytes".to_vec();
        let layer_digest = sha256_digest(&layer);
        reg.blob(&layer_digest, layer.clone());
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..150 {
            let mut layers = Vec::new();
            for _ in 0..next() % 3 {
                let n = usize::try_from(next() % 70).unwrap_or(0);
                let noise: Vec<u8> = (0..n).map(|_| next().to_le_bytes()[0]).collect();
                let d = match next() % 4 {
                    0 => layer_digest.clone(),
                    1 => format!("sha256:{}", String::from_utf8_lossy(&noise)),
                    2 => format!("sha256:{}", hex::encode(&noise)),
                    _ => String::from_utf8_lossy(&noise).into_owned(),
                };
                layers.push((d, next() % 20));
            }
            let mut m = manifest_json((&config_digest, 2), &layers);
            if next() % 4 == 0 {
                let at = usize::try_from(next() % m.len() as u64).unwrap_or(0);
                m[at] = next().to_le_bytes()[0];
            }
            let r = reg.manifest(&format!("f{i}"), m);
            if pull(&store, &r).is_ok() {
                let img = store.image(&r).unwrap();
                for l in &img.manifest.layers {
                    assert_eq!(l.digest, layer_digest);
                    assert_eq!(l.size, layer.len() as u64);
                }
            }
        }
    }
}
