//! Image endpoints: list, inspect, pull (`POST /images/create`, progress
//! as newline-delimited JSON), remove, tag. The image ID is the config
//! digest, as Docker's.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::StatusCode;
use serde_json::{json, Value};

use super::containers::unix_secs;
use super::{blocking, channel, empty, json, ApiError, Ctx, Query, Reply};
use crate::image::default::ensure_default_image;
use crate::image::oci::ImageConfig;
use crate::image::reference::Reference;
use crate::image::registry::{config_credentials, Credentials, Registry};
use crate::image::store::{Store, StoredImage};

fn store(ctx: &Ctx) -> Result<Store, ApiError> {
    let s = Store::open(&ctx.data_dir.join("images"))?;
    ensure_default_image(&s).map_err(|e| ApiError::internal(&e))?;
    Ok(s)
}

/// One stored image: its names and what they point at.
struct Entry {
    names: Vec<Reference>,
    manifest_digest: String,
    config_digest: String,
    size: u64,
}

/// Every name the store gives `img`'s manifest.
fn names_of(store: &Store, img: &StoredImage) -> Result<Vec<Reference>, ApiError> {
    Ok(entries(store)?
        .into_iter()
        .find(|e| e.manifest_digest == img.manifest_digest)
        .map(|e| e.names)
        .unwrap_or_default())
}

/// Every stored image, grouped by manifest.
fn entries(store: &Store) -> Result<Vec<Entry>, ApiError> {
    let mut by_digest: BTreeMap<String, Vec<Reference>> = BTreeMap::new();
    for (name, digest) in store.refs()? {
        if let Ok(r) = Reference::parse(&name) {
            by_digest.entry(digest).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for (digest, names) in by_digest {
        let Ok(m) = store.manifest(&digest) else {
            continue;
        };
        out.push(Entry {
            names,
            size: m.layers.iter().map(|l| l.size).sum::<u64>() + m.config.size,
            config_digest: m.config.digest,
            manifest_digest: digest,
        });
    }
    Ok(out)
}

/// The stored image a name or id (`sha256:…`, or a prefix of it) refers
/// to; `No such image` (404) when there is none. Never pulls.
pub fn find(store: &Store, name: &str) -> Result<StoredImage, ApiError> {
    let missing = || ApiError::NoSuchImage(name.to_string());
    if let Ok(r) = Reference::parse(name) {
        if r.familiar() == "busybox:latest" {
            ensure_default_image(store).map_err(|e| ApiError::internal(&e))?;
        }
        if let Ok(img) = store.image(&r) {
            return Ok(img);
        }
    }
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    if hex.len() < 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(missing());
    }
    let e = entries(store)?
        .into_iter()
        .find(|e| {
            e.config_digest
                .trim_start_matches("sha256:")
                .starts_with(hex)
        })
        .ok_or_else(missing)?;
    let reference = e.names.into_iter().next().ok_or_else(missing)?;
    Ok(store.image(&reference)?)
}

fn repo_tags(names: &[Reference]) -> Vec<String> {
    names
        .iter()
        .filter(|r| r.tag.is_some())
        .map(Reference::familiar)
        .collect()
}

fn repo_digests(names: &[Reference], digest: &str) -> Vec<String> {
    let mut v: Vec<String> = names
        .iter()
        .map(|r| {
            let name = Reference {
                tag: None,
                digest: None,
                ..r.clone()
            }
            .familiar();
            format!("{name}@{digest}")
        })
        .collect();
    v.dedup();
    v
}

fn config(store: &Store, digest: &str) -> Option<ImageConfig> {
    serde_json::from_slice(&store.read_blob(digest).ok()?).ok()
}

/// `GET /images/json`.
pub async fn list(ctx: Arc<Ctx>) -> Reply {
    let v = blocking(move || {
        let store = store(&ctx)?;
        let out: Vec<Value> = entries(&store)?
            .into_iter()
            .map(|e| {
                let created = config(&store, &e.config_digest)
                    .and_then(|c| c.created)
                    .map(|c| unix_secs(&c))
                    .unwrap_or(0);
                json!({
                    "Id": e.config_digest,
                    "ParentId": "",
                    "RepoTags": repo_tags(&e.names),
                    "RepoDigests": repo_digests(&e.names, &e.manifest_digest),
                    "Created": created,
                    "Size": e.size,
                    "VirtualSize": e.size,
                    "SharedSize": -1,
                    "Labels": {},
                    "Containers": -1,
                })
            })
            .collect();
        Ok(Value::Array(out))
    })
    .await?;
    Ok(json(StatusCode::OK, &v))
}

/// `GET /images/{name}/json`.
pub async fn inspect(ctx: Arc<Ctx>, name: String) -> Reply {
    let v = blocking(move || {
        let store = store(&ctx)?;
        let img = find(&store, &name)?;
        let names = names_of(&store, &img)?;
        let ic = crate::container::create::image_config(&store, &img)?;
        let size: u64 = img.manifest.layers.iter().map(|l| l.size).sum();
        let rc = &ic.config;
        Ok(json!({
            "Id": img.manifest.config.digest,
            "RepoTags": repo_tags(&names),
            "RepoDigests": repo_digests(&names, &img.manifest_digest),
            "Parent": "",
            "Comment": "",
            "Created": ic.created.clone().unwrap_or_default(),
            "Os": ic.os,
            "Architecture": ic.architecture,
            "Size": size,
            "VirtualSize": size,
            "Config": {
                "User": rc.user.clone().unwrap_or_default(),
                "Env": rc.env,
                "Cmd": rc.cmd,
                "Entrypoint": rc.entrypoint,
                "WorkingDir": rc.working_dir.clone().unwrap_or_default(),
                "Labels": {},
            },
            "RootFS": {"Type": ic.rootfs.type_, "Layers": ic.rootfs.diff_ids},
            "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
        }))
    })
    .await?;
    Ok(json(StatusCode::OK, &v))
}

/// The reference `fromImage` and `tag` name (a digest tag pins).
pub fn pull_reference(from: &str, tag: &str) -> Result<Reference, ApiError> {
    let joined = match tag {
        "" => from.to_string(),
        t if t.starts_with("sha256:") => format!("{from}@{t}"),
        t => format!("{from}:{t}"),
    };
    Reference::parse(&joined)
        .map_err(|e| ApiError::BadParameter(format!("invalid reference format: {joined:?}: {e}")))
}

/// Credentials from `X-Registry-Auth` (base64url JSON), else the host's.
fn credentials(headers: &HeaderMap, registry: &str) -> Option<Credentials> {
    let from_header = headers.get("X-Registry-Auth").and_then(|h| {
        let raw = h.to_str().ok()?.trim();
        let bytes = base64::engine::general_purpose::URL_SAFE
            .decode(raw)
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(raw))
            .ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        let user = v.get("username")?.as_str()?.to_string();
        let password = v.get("password")?.as_str()?.to_string();
        (!user.is_empty()).then_some(Credentials { user, password })
    });
    from_header.or_else(|| config_credentials(registry))
}

fn line(v: Value) -> Bytes {
    Bytes::from(format!("{v}\n"))
}

/// `POST /images/create?fromImage=&tag=`: pulls; progress and errors go in
/// the stream (the status is 200 once it began).
pub async fn create(ctx: Arc<Ctx>, q: Query, headers: &HeaderMap) -> Reply {
    let from = q
        .get("fromImage")
        .filter(|f| !f.is_empty())
        .ok_or_else(|| {
            ApiError::Unsupported("husk cannot import images (fromSrc) yet: give fromImage".into())
        })?;
    let r = pull_reference(from, q.get("tag").unwrap_or(""))?;
    let creds = credentials(headers, &r.registry);
    let (resp, tx) = channel("application/json");
    tokio::task::spawn_blocking(move || {
        let tag = r.tag.clone().or(r.digest.clone()).unwrap_or_default();
        let repo = Reference {
            tag: None,
            digest: None,
            ..r.clone()
        }
        .familiar();
        let _ = tx.blocking_send(line(
            json!({"status": format!("Pulling from {repo}"), "id": tag}),
        ));
        let result = store(&ctx).and_then(|store| {
            if r.familiar() == "busybox:latest" {
                let img = store.image(&r)?;
                return Ok((img.manifest_digest, false));
            }
            let had = store.image(&r).ok().map(|i| i.manifest_digest);
            let digest = Registry::new(&r, creds, true)
                .pull(&store, &r)
                .map_err(|e| ApiError::internal(&e))?;
            Ok((digest.clone(), had.as_deref() != Some(digest.as_str())))
        });
        let msgs = match result {
            Ok((digest, newer)) => vec![
                json!({"status": format!("Digest: {digest}")}),
                json!({"status": if newer {
                    format!("Status: Downloaded newer image for {}", r.familiar())
                } else {
                    format!("Status: Image is up to date for {}", r.familiar())
                }}),
            ],
            Err(e) => {
                vec![json!({"errorDetail": {"message": e.to_string()}, "error": e.to_string()})]
            }
        };
        for m in msgs {
            let _ = tx.blocking_send(line(m));
        }
    });
    Ok(resp)
}

/// `DELETE /images/{name}?force=`: removes names (blobs go with `husk gc`).
pub async fn delete(ctx: Arc<Ctx>, name: String, q: Query) -> Reply {
    let force = q.flag("force");
    let v = blocking(move || {
        let store = store(&ctx)?;
        let img = find(&store, &name)?;
        let names = names_of(&store, &img)?;
        let by_name = Reference::parse(&name).is_ok_and(|r| names.contains(&r));
        let doomed: Vec<Reference> = if by_name { vec![img.reference.clone()] } else { names.clone() };
        if !by_name && names.len() > 1 && !force {
            return Err(ApiError::Conflict(format!(
                "conflict: unable to delete {name} (must be forced) - image is referenced in multiple repositories"
            )));
        }
        if doomed.len() == names.len() && !force {
            let cs = super::containers::open(&ctx)?;
            if let Some((c, _)) = cs.list()?.into_iter().find(|(c, _)| c.image_digest == img.manifest_digest) {
                return Err(ApiError::Conflict(format!(
                    "conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {}",
                    crate::container::short_id(&c.id),
                    crate::image::oci::short_digest(&img.manifest.config.digest)
                )));
            }
        }
        let mut out = Vec::new();
        for r in doomed {
            if store.untag(&r)? {
                out.push(json!({"Untagged": r.familiar()}));
            }
        }
        Ok(Value::Array(out))
    })
    .await?;
    Ok(json(StatusCode::OK, &v))
}

/// `POST /images/{name}/tag?repo=&tag=`.
pub async fn tag(ctx: Arc<Ctx>, name: String, q: Query) -> Reply {
    let repo = q
        .get("repo")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::BadParameter("repository name (repo) is required".into()))?;
    let t = q.get("tag").filter(|t| !t.is_empty()).unwrap_or("latest");
    let target = Reference::parse(&format!("{repo}:{t}"))
        .map_err(|e| ApiError::BadParameter(format!("invalid reference format: {e}")))?;
    blocking(move || {
        let store = store(&ctx)?;
        let img = find(&store, &name)?;
        store.tag(&target, &img.manifest_digest)?;
        Ok(())
    })
    .await?;
    Ok(empty(StatusCode::CREATED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            pull_reference("busybox", "latest").unwrap().familiar(),
            "busybox:latest"
        );
        assert_eq!(
            pull_reference("busybox:1.36", "").unwrap().familiar(),
            "busybox:1.36"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(pull_reference("busybox", &d).unwrap().digest.is_some());
        assert!(pull_reference("Bad Name", "").is_err());
    }

    #[test]
    fn registry_auth_header() {
        let mut h = HeaderMap::new();
        let enc = base64::engine::general_purpose::URL_SAFE
            .encode(r#"{"username":"u","password":"p","serveraddress":"localhost:5000"}"#);
        h.insert("X-Registry-Auth", enc.parse().unwrap());
        let c = credentials(&h, "localhost:5000").unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("u", "p"));
    }

    #[test]
    fn find_by_name_and_id() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let ctx = Ctx::new(d.path().to_path_buf());
        let _ = ctx;
        ensure_default_image(&store).unwrap();
        let img = find(&store, "busybox").unwrap();
        let id = img.manifest.config.digest.clone();
        assert_eq!(
            find(&store, &id).unwrap().manifest_digest,
            img.manifest_digest
        );
        assert_eq!(
            find(&store, &id[7..19]).unwrap().manifest_digest,
            img.manifest_digest
        );
        let e = find(&store, "nosuch:1").err().unwrap();
        assert_eq!(e.to_string(), "No such image: nosuch:1");
        assert!(find(&store, "abc").is_err());
    }
}
