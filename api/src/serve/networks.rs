//! Network endpoints: list, create, inspect, remove, connect, disconnect,
//! prune. `bridge` (husk's default network) and `none` are built in; a
//! user-defined network (`net::networks`) lets its members reach and
//! resolve each other, and nothing else reach them.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::containers::open as open_containers;
use super::create_body::EndpointConfig;
use super::{blocking, empty, json, read_json, ApiError, Ctx, Query, Reply};
use crate::container::netattach::{self, AttachError};
use crate::container::spec::{ContainerConfig, NetworkMode};
use crate::container::state::State;
use crate::net::networks::{Network, Networks, NetworksError};

/// The built-in networks: name and a fixed id.
const BUILTINS: &[(&str, &str)] = &[
    (
        "bridge",
        "6875736b2d6272696467652d6e6574776f726b2d64656661756c742d6e617421",
    ),
    (
        "none",
        "6875736b2d6e6f6e652d6e6574776f726b2d6c6f6f706261636b2d6f6e6c7921",
    ),
];

impl From<NetworksError> for ApiError {
    fn from(e: NetworksError) -> Self {
        match &e {
            NetworksError::NotFound(_) => ApiError::NotFound(e.to_string()),
            NetworksError::Exists(_) => ApiError::Conflict(e.to_string()),
            NetworksError::InUse { .. } | NetworksError::Builtin(_) => {
                ApiError::Forbidden(e.to_string())
            }
            NetworksError::BadName(_) | NetworksError::Driver(_) | NetworksError::Full => {
                ApiError::BadParameter(e.to_string())
            }
            NetworksError::Io { .. } => ApiError::internal(&e),
        }
    }
}

impl From<AttachError> for ApiError {
    fn from(e: AttachError) -> Self {
        match e {
            AttachError::Container(c) => c.into(),
            AttachError::Already { .. } => ApiError::Forbidden(e.to_string()),
            e => ApiError::BadParameter(e.to_string()),
        }
    }
}

fn store(ctx: &Ctx) -> Networks {
    Networks::open(&ctx.data_dir)
}

/// Every container of `data_dir` with its live state: what the network
/// objects' `Containers` maps are made from, read once per request.
fn containers_of(data_dir: &std::path::Path) -> Result<Vec<(ContainerConfig, State)>, ApiError> {
    Ok(super::containers::open_at(data_dir)?.list()?)
}

/// A network's members for its `Containers` map.
fn members_json(members: &[(ContainerConfig, State)]) -> Value {
    let mut out = serde_json::Map::new();
    for (c, s) in members.iter().filter(|(_, s)| s.ip.is_some()) {
        out.insert(
            c.id.clone(),
            json!({
                "Name": c.name,
                "EndpointID": c.id,
                "MacAddress": "",
                "IPv4Address": format!("{}/30", s.ip.clone().unwrap_or_default()),
                "IPv6Address": "",
            }),
        );
    }
    Value::Object(out)
}

/// Docker's network object.
fn network_json(
    name: &str,
    id: &str,
    created: &str,
    labels: &BTreeMap<String, String>,
    members: Value,
) -> Value {
    json!({
        "Name": name,
        "Id": id,
        "Created": created,
        "Scope": "local",
        "Driver": if name == "none" { "null" } else { "bridge" },
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": []},
        "Internal": false,
        "Attachable": true,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": members,
        "Options": {},
        "Labels": labels,
    })
}

fn user_json(all: &[(ContainerConfig, State)], n: &Network) -> Value {
    let members: Vec<_> = all
        .iter()
        .filter(|(c, s)| {
            s.supervisor_pid.is_some() && c.networks.iter().any(|a| a.network == n.name)
        })
        .cloned()
        .collect();
    network_json(
        &n.name,
        &n.id,
        &n.created,
        &n.labels,
        members_json(&members),
    )
}

fn builtin_json(all: &[(ContainerConfig, State)], name: &str, id: &str) -> Value {
    let mode = if name == "none" {
        NetworkMode::None
    } else {
        NetworkMode::Default
    };
    let members: Vec<_> = all
        .iter()
        .filter(|(c, s)| c.network == mode && c.networks.is_empty() && s.supervisor_pid.is_some())
        .cloned()
        .collect();
    network_json(
        name,
        id,
        "0001-01-01T00:00:00Z",
        &BTreeMap::new(),
        members_json(&members),
    )
}

/// Every network's object, built in ones first.
pub fn all_values(data_dir: &std::path::Path) -> Result<Vec<Value>, ApiError> {
    let all = containers_of(data_dir)?;
    let mut out: Vec<Value> = BUILTINS
        .iter()
        .map(|(name, id)| builtin_json(&all, name, id))
        .collect();
    for n in Networks::open(data_dir).list()? {
        out.push(user_json(&all, &n));
    }
    Ok(out)
}

/// The built-in network `key` names (name, id or id prefix).
fn builtin(key: &str) -> Option<(&'static str, &'static str)> {
    let key = if key == "default" { "bridge" } else { key };
    BUILTINS
        .iter()
        .find(|(n, id)| *n == key || *id == key || (key.len() >= 3 && id.starts_with(key)))
        .copied()
}

/// Whether a network object passes `filters` (name substring, id prefix,
/// label `k` or `k=v`, driver, type custom/builtin).
fn passes(v: &Value, filters: &BTreeMap<String, Vec<String>>) -> bool {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    filters.iter().all(|(k, wanted)| {
        let label = |w: &String| match w.split_once('=') {
            Some((lk, lv)) => v["Labels"][lk].as_str() == Some(lv),
            None => v["Labels"].get(w.as_str()).is_some(),
        };
        if k == "label" {
            return wanted.iter().all(label);
        }
        wanted.iter().any(|w| match k.as_str() {
            "name" => s("Name").contains(w.as_str()),
            "id" => s("Id").starts_with(w.as_str()),
            "driver" => s("Driver") == *w,
            "type" => (w == "builtin") == BUILTINS.iter().any(|(n, _)| *n == s("Name")),
            _ => true,
        })
    })
}

/// `GET /networks?filters=`.
pub async fn list(ctx: Arc<Ctx>, q: Query) -> Reply {
    let filters = super::containers::parse_filters(&q)?;
    let v = blocking(move || {
        let mut all = all_values(&ctx.data_dir)?;
        all.retain(|v| passes(v, &filters));
        Ok(Value::Array(all))
    })
    .await?;
    Ok(json(StatusCode::OK, &v))
}

/// The network object of `key` (name, id or id prefix), built in or not.
pub fn inspect_value(data_dir: &std::path::Path, key: &str) -> Result<Value, ApiError> {
    match builtin(key) {
        Some((name, id)) => Ok(builtin_json(&containers_of(data_dir)?, name, id)),
        None => {
            let n = Networks::open(data_dir).find(key)?;
            Ok(user_json(&containers_of(data_dir)?, &n))
        }
    }
}

/// `GET /networks/{id}`.
pub async fn inspect(ctx: Arc<Ctx>, key: String) -> Reply {
    let v = blocking(move || inspect_value(&ctx.data_dir, &key)).await?;
    Ok(json(StatusCode::OK, &v))
}

/// The body of `POST /networks/create`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    name: String,
    driver: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    internal: bool,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: bool,
    options: Option<BTreeMap<String, String>>,
}

/// `POST /networks/create`: 201 `{"Id", "Warning"}`.
pub async fn create(ctx: Arc<Ctx>, body: Incoming) -> Reply {
    let b: CreateBody = read_json::<Option<CreateBody>>(body)
        .await?
        .ok_or_else(|| ApiError::BadParameter("a network config is required".into()))?;
    if b.internal {
        return Err(ApiError::Unsupported(
            "husk cannot make internal networks (without outside access) yet".into(),
        ));
    }
    if b.enable_ipv6 {
        return Err(ApiError::Unsupported("husk networks are IPv4 only".into()));
    }
    if let Some(k) = b.options.unwrap_or_default().keys().next() {
        return Err(ApiError::Unsupported(format!(
            "husk networks take no driver options ({k})"
        )));
    }
    let n = blocking(move || {
        Ok(store(&ctx).create(
            &b.name,
            b.driver.as_deref().unwrap_or(""),
            b.labels.unwrap_or_default(),
        )?)
    })
    .await?;
    Ok(json(
        StatusCode::CREATED,
        &json!({"Id": n.id, "Warning": ""}),
    ))
}

/// `DELETE /networks/{id}`: refused while containers are attached.
pub async fn delete(ctx: Arc<Ctx>, key: String) -> Reply {
    blocking(move || {
        if builtin(&key).is_some() {
            return Err(NetworksError::Builtin(key).into());
        }
        let cs = open_containers(&ctx)?;
        store(&ctx).remove(&key, |n| !netattach::attached(&cs, &n.name).is_empty())?;
        Ok(())
    })
    .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /networks/prune`: removes the user-defined networks no container
/// is attached to.
pub async fn prune(ctx: Arc<Ctx>) -> Reply {
    let gone = blocking(move || {
        let cs = open_containers(&ctx)?;
        let s = store(&ctx);
        let mut gone = Vec::new();
        for n in s.list()? {
            if s.remove(&n.id, |n| !netattach::attached(&cs, &n.name).is_empty())
                .is_ok()
            {
                gone.push(n.name);
            }
        }
        Ok(gone)
    })
    .await?;
    Ok(json(StatusCode::OK, &json!({"NetworksDeleted": gone})))
}

/// The body of `connect` and `disconnect`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct AttachBody {
    container: String,
    endpoint_config: Option<EndpointConfig>,
}

/// `POST /networks/{id}/connect` (`connect` true) or `/disconnect`.
pub async fn attach(ctx: Arc<Ctx>, key: String, body: Incoming, connect: bool) -> Reply {
    let b: AttachBody = read_json::<Option<AttachBody>>(body)
        .await?
        .unwrap_or_default();
    blocking(move || {
        if builtin(&key).is_some() {
            return Err(ApiError::Unsupported(format!(
                "husk containers join or leave only user-defined networks ({key} is built in)"
            )));
        }
        let net = store(&ctx).find(&key)?;
        let cs = open_containers(&ctx)?;
        let h = cs.find(&b.container)?;
        if connect {
            let aliases = b
                .endpoint_config
                .and_then(|e| e.aliases)
                .unwrap_or_default();
            netattach::connect(&ctx.data_dir, &cs, &h, &net, aliases)?;
        } else {
            netattach::disconnect(&ctx.data_dir, &cs, &h, &net)?;
        }
        Ok(())
    })
    .await?;
    Ok(empty(StatusCode::OK))
}

/// `NetworkSettings.Networks` of a container: its user-defined networks
/// (aliases and the short id), else the built-in one.
pub fn container_networks(c: &ContainerConfig, s: &State, data_dir: &std::path::Path) -> Value {
    let ip = s.ip.clone().unwrap_or_default();
    let short = crate::container::short_id(&c.id).to_string();
    let mut out = serde_json::Map::new();
    if c.networks.is_empty() {
        let (name, id) = if c.network == NetworkMode::None {
            BUILTINS[1]
        } else {
            BUILTINS[0]
        };
        out.insert(
            name.into(),
            json!({"IPAddress": ip, "Aliases": [c.name, short], "NetworkID": id}),
        );
        return Value::Object(out);
    }
    let store = Networks::open(data_dir);
    for n in &c.networks {
        let mut aliases = n.aliases.clone();
        if !aliases.contains(&short) {
            aliases.push(short.clone());
        }
        let id = store.find(&n.network).map(|x| x.id).unwrap_or_default();
        out.insert(
            n.network.clone(),
            json!({"IPAddress": ip, "Aliases": aliases, "NetworkID": id, "IPPrefixLen": 30}),
        );
    }
    Value::Object(out)
}

/// `HostConfig.NetworkMode` of a container.
pub fn network_mode(c: &ContainerConfig) -> String {
    match (c.networks.first(), c.network) {
        (Some(n), _) => n.network.clone(),
        (None, NetworkMode::None) => "none".into(),
        (None, NetworkMode::Default) => "default".into(),
    }
}
