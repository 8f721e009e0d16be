//! Registry client (OCI distribution spec): manifests with the Accept
//! headers for OCI and Docker schema-2 manifests, indexes and manifest lists
//! (choosing linux/amd64), blobs streamed into the store while their sha256
//! is checked, bearer tokens from `WWW-Authenticate` and basic credentials,
//! HTTPS (rustls) or plain HTTP for loopback registries, redirects, retries
//! with back-off and concurrent layer downloads.

use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::oci::{Manifest, MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST};
use super::reference::Reference;
use super::store::{is_index, parse_index, Store, StoreError};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
const ATTEMPTS: u32 = 4;

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
}

/// Whether husk talks plain HTTP to `host`: loopback registries, as Docker
/// allows, and hosts listed in `HUSK_INSECURE_REGISTRIES` (comma-separated).
pub fn is_insecure(host: &str) -> bool {
    let h = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    h == "localhost"
        || h.starts_with("127.")
        || h == "[::1]"
        || std::env::var("HUSK_INSECURE_REGISTRIES")
            .is_ok_and(|v| v.split(',').any(|x| x.trim() == host))
}

fn param<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let i = header.find(&format!("{key}=\""))?;
    let rest = &header[i + key.len() + 2..];
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
        }
    }

    fn url(&self, r: &Reference, kind: &str, what: &str) -> String {
        format!(
            "{}://{}/v2/{}/{kind}/{what}",
            self.scheme,
            r.api_host(),
            r.repository
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
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_vec()
            .map_err(|e| RegistryError::Transport {
                url: url.clone(),
                reason: e.to_string(),
            })?;
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
                bar.set_prefix(digest[7..19].to_string());
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
                        let short = &l.digest[7..19];
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
            handles
                .into_iter()
                .filter_map(|h| h.join().ok().and_then(|r| r.err()))
                .collect()
        });
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        store.put_blob(&mut &bytes[..], &digest, Some(bytes.len() as u64))?;
        store.tag(r, &digest)?;
        let _ = (MT_OCI_INDEX, MT_DOCKER_LIST);
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
    }
}
