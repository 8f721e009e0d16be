//! Volume endpoints: list, create, inspect, remove, prune. A volume is a
//! disk the host keeps (`storage::volume`); `DriverOpts.size` sizes it.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{blocking, empty, json, read_json, ApiError, Ctx, Query, Reply};
use crate::storage::volume::{parse_size, Volume, VolumeError, Volumes};

fn open(ctx: &Ctx) -> Result<Volumes, ApiError> {
    Ok(Volumes::open(&ctx.data_dir.join("volumes"))?)
}

/// Docker's volume object.
pub fn volume_json(v: &Volume) -> Value {
    json!({
        "Name": v.name,
        "Driver": "local",
        "Mountpoint": v.disk,
        "CreatedAt": v.created,
        "Labels": {},
        "Scope": "local",
        "Options": {"size": v.size_bytes.to_string()},
    })
}

/// The body of `POST /volumes/create`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct CreateBody {
    pub name: Option<String>,
    pub driver: Option<String>,
    pub driver_opts: Option<BTreeMap<String, String>>,
}

/// Names of the volumes some container (in any state) mounts, with it.
fn users(ctx: &Ctx) -> Result<BTreeMap<String, String>, ApiError> {
    let cs = super::containers::open(ctx)?;
    let mut out = BTreeMap::new();
    for (c, _) in cs.list()? {
        for v in c.volumes {
            out.entry(v.name).or_insert_with(|| c.id.clone());
        }
    }
    Ok(out)
}

/// `GET /volumes`.
pub async fn list(ctx: Arc<Ctx>) -> Reply {
    let v = blocking(move || {
        let all: Vec<Value> = open(&ctx)?.list()?.iter().map(volume_json).collect();
        Ok(json!({"Volumes": all, "Warnings": []}))
    })
    .await?;
    Ok(json(StatusCode::OK, &v))
}

/// `POST /volumes/create`.
pub async fn create(ctx: Arc<Ctx>, body: Incoming) -> Reply {
    let b: CreateBody = read_json::<Option<CreateBody>>(body)
        .await?
        .unwrap_or_default();
    if let Some(d) = b
        .driver
        .as_deref()
        .filter(|d| !d.is_empty() && *d != "local")
    {
        return Err(ApiError::Unsupported(format!(
            "husk cannot use volume driver {d:?}: its volumes are local disks"
        )));
    }
    let mut size = None;
    for (k, v) in b.driver_opts.unwrap_or_default() {
        match k.as_str() {
            "size" => size = Some(parse_size(&v)?),
            other => {
                return Err(ApiError::Unsupported(format!(
                    "husk cannot honour volume option {other:?} (it knows size)"
                )))
            }
        }
    }
    let name = b
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(crate::cli::volume::random_name);
    let v = blocking(move || Ok(volume_json(&open(&ctx)?.create(&name, size)?))).await?;
    Ok(json(StatusCode::CREATED, &v))
}

/// `GET /volumes/{name}`.
pub async fn inspect(ctx: Arc<Ctx>, name: String) -> Reply {
    let v = blocking(move || match open(&ctx)?.get(&name) {
        Ok(v) => Ok(volume_json(&v)),
        // A name no volume can have names none (`docker inspect` tries
        // every kind of object and needs a 404).
        Err(VolumeError::InvalidName(_)) => Err(ApiError::NoSuchVolume(name)),
        Err(e) => Err(e.into()),
    })
    .await?;
    Ok(json(StatusCode::OK, &v))
}

/// `DELETE /volumes/{name}?force=`: refused (409) while a container uses it.
pub async fn delete(ctx: Arc<Ctx>, name: String, q: Query) -> Reply {
    let force = q.flag("force");
    blocking(move || {
        let vols = open(&ctx)?;
        if let Some(holder) = users(&ctx)?.remove(&name) {
            return Err(ApiError::Conflict(format!(
                "remove {name}: volume is in use - [{holder}]"
            )));
        }
        vols.remove(&name, force)?;
        Ok(())
    })
    .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /volumes/prune`: removes every volume no container uses.
pub async fn prune(ctx: Arc<Ctx>) -> Reply {
    let v = blocking(move || {
        let vols = open(&ctx)?;
        let used = users(&ctx)?;
        let mut deleted = Vec::new();
        let mut space = 0u64;
        for v in vols.list()? {
            if used.contains_key(&v.name) {
                continue;
            }
            let bytes = std::fs::metadata(&v.disk)
                .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                .unwrap_or(0);
            // One in use by a VM right now stays (its lock is held).
            if vols.remove(&v.name, false).is_ok() {
                space += bytes;
                deleted.push(v.name);
            }
        }
        Ok(json!({"VolumesDeleted": deleted, "SpaceReclaimed": space}))
    })
    .await?;
    Ok(json(StatusCode::OK, &v))
}
