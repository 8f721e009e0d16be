//! Container endpoints without streams: list, inspect, create, stop, kill,
//! restart, remove (start, wait, logs and attach are in `streams.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::StatusCode;
use serde_json::{json, Value};

use super::{blocking, create_body, empty, json, read_json, ApiError, Ctx, Query, Reply};
use crate::container::control::Request;
use crate::container::state::{PortBinding, State};
use crate::container::{create, ipc, ContainerConfig, Containers, Handle, Status};
use crate::image::store::Store;

/// The containers of the server's data directory.
pub fn open(ctx: &Ctx) -> Result<Containers, ApiError> {
    open_at(&ctx.data_dir)
}

/// The containers of `data_dir`, swept.
pub fn open_at(data_dir: &Path) -> Result<Containers, ApiError> {
    let c = Containers::open(data_dir)?;
    c.sweep();
    Ok(c)
}

/// Seconds since the epoch of an RFC 3339 time (0 when unparsable).
pub fn unix_secs(t: &str) -> u64 {
    crate::time::parse_rfc3339(t)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn is_running(h: &Handle, s: &State) -> bool {
    s.status == Status::Running || (s.status == Status::Created && h.supervisor_alive())
}

/// Docker's `Ports` list.
fn port_list(ports: &[PortBinding]) -> Value {
    ports
        .iter()
        .map(|p| json!({"IP": p.host_ip, "PrivatePort": p.container_port, "PublicPort": p.host_port, "Type": p.proto}))
        .collect()
}

/// Docker's `NetworkSettings.Ports` map.
fn port_map(ports: &[PortBinding]) -> Value {
    let mut map = serde_json::Map::new();
    for p in ports {
        let key = format!("{}/{}", p.container_port, p.proto);
        if let Some(a) = map.entry(key).or_insert_with(|| json!([])).as_array_mut() {
            a.push(json!({"HostIp": p.host_ip, "HostPort": p.host_port.to_string()}));
        }
    }
    Value::Object(map)
}

/// `HostConfig.PortBindings` from the `-p` specifications.
fn port_bindings(specs: &[String]) -> Value {
    let mut map = serde_json::Map::new();
    for s in specs
        .iter()
        .filter_map(|s| s.parse::<crate::net::PortSpec>().ok())
    {
        let key = format!("{}/{}", s.container_port, s.proto);
        if let Some(a) = map.entry(key).or_insert_with(|| json!([])).as_array_mut() {
            a.push(json!({
                "HostIp": s.host_ip.map(|i| i.to_string()).unwrap_or_default(),
                "HostPort": s.host_port.map(|p| p.to_string()).unwrap_or_default(),
            }));
        }
    }
    Value::Object(map)
}

fn mounts(c: &ContainerConfig, data_dir: &Path) -> Value {
    c.volumes
        .iter()
        .map(|v| {
            json!({"Type": "volume", "Name": v.name, "Source": data_dir.join("volumes").join(&v.name).join("disk.ext4"),
                   "Destination": v.destination, "Driver": "local", "Mode": if v.readonly { "ro" } else { "rw" },
                   "RW": !v.readonly, "Propagation": ""})
        })
        .collect()
}

/// One entry of `GET /containers/json`.
pub fn summary(c: &ContainerConfig, s: &State, running: bool, data_dir: &Path) -> Value {
    json!({
        "Id": c.id,
        "Names": [format!("/{}", c.name)],
        "Image": c.image,
        "ImageID": c.image_digest,
        "Command": c.process.argv().join(" "),
        "Created": unix_secs(&c.created),
        "Ports": port_list(&s.ports),
        "Labels": c.labels,
        "State": s.docker_state(running),
        "Status": crate::cli::ps::status_text(s),
        "HostConfig": {"NetworkMode": super::networks::network_mode(c)},
        "NetworkSettings": {"Networks": super::networks::container_networks(c, s, data_dir)},
        "Mounts": mounts(c, data_dir),
    })
}

/// `GET /containers/{id}/json`.
pub fn inspect_json(
    c: &ContainerConfig,
    s: &State,
    running: bool,
    h: &Handle,
    data_dir: &Path,
) -> Value {
    let never = "0001-01-01T00:00:00Z";
    let mut argv = c.process.entrypoint.iter().chain(&c.process.cmd);
    let path = argv.next().cloned().unwrap_or_default();
    let exposed: BTreeMap<String, Value> = c
        .ports
        .iter()
        .filter_map(|p| p.parse::<crate::net::PortSpec>().ok())
        .map(|p| (format!("{}/{}", p.container_port, p.proto), json!({})))
        .collect();
    json!({
        "Id": c.id,
        "Created": c.created,
        "Path": path,
        "Args": argv.collect::<Vec<_>>(),
        "State": {
            "Status": s.docker_state(running),
            "Running": running,
            "Paused": running && s.paused,
            "Restarting": !running && s.restarting,
            "OOMKilled": false,
            "Dead": false,
            "Pid": s.supervisor_pid.unwrap_or(0),
            "ExitCode": s.exit_code.unwrap_or(0),
            "Error": s.error.clone().unwrap_or_default(),
            "StartedAt": s.started_at.clone().unwrap_or_else(|| never.into()),
            "FinishedAt": s.finished_at.clone().unwrap_or_else(|| never.into()),
        },
        "Image": c.image_digest,
        "Name": format!("/{}", c.name),
        "RestartCount": s.restart_count,
        "Driver": "husk",
        "Platform": "linux",
        "LogPath": h.log_path(),
        "HostConfig": crate::cli::inspect::host_config(c, serde_json::json!({
            "NetworkMode": super::networks::network_mode(c),
            "PortBindings": port_bindings(&c.ports),
            "Privileged": false,
            "Runtime": "husk",
        })),
        "Mounts": mounts(c, data_dir),
        "Config": {
            "Hostname": c.hostname,
            "Domainname": "",
            "User": c.process.user,
            "AttachStdin": false,
            "AttachStdout": false,
            "AttachStderr": false,
            "ExposedPorts": exposed,
            "Tty": c.process.tty,
            "OpenStdin": c.process.open_stdin,
            "StdinOnce": false,
            "Env": c.process.env,
            "Cmd": c.process.cmd,
            "Image": c.image,
            "WorkingDir": c.process.workdir,
            "Entrypoint": if c.process.entrypoint.is_empty() { Value::Null } else { json!(c.process.entrypoint) },
            "Labels": c.labels,
        },
        "NetworkSettings": {
            "IPAddress": s.ip.clone().unwrap_or_default(),
            "Ports": port_map(&s.ports),
            "Networks": super::networks::container_networks(c, s, data_dir),
        },
        "Timings": s.timings,
    })
}

/// A container's config, live state and whether it runs.
pub fn load(
    cs: &Containers,
    key: &str,
) -> Result<(Handle, ContainerConfig, State, bool), ApiError> {
    let h = cs.find(key)?;
    let c = h.config()?;
    let s = h.live_state()?;
    let running = is_running(&h, &s);
    Ok((h, c, s, running))
}

/// `GET /containers/{id}/json`.
pub async fn inspect(ctx: Arc<Ctx>, key: String) -> Reply {
    let v = blocking(move || {
        let cs = open(&ctx)?;
        let (h, c, s, running) = load(&cs, &key)?;
        Ok(inspect_json(&c, &s, running, &h, &ctx.data_dir))
    })
    .await?;
    Ok(json(StatusCode::OK, &v))
}

/// Docker's `filters` parameter: `{"k": ["v"]}` or the old `{"k": {"v": true}}`.
pub fn parse_filters(q: &Query) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let Some(raw) = q.get("filters").filter(|f| !f.is_empty()) else {
        return Ok(BTreeMap::new());
    };
    let v: BTreeMap<String, Value> = serde_json::from_str(raw)
        .map_err(|e| ApiError::BadParameter(format!("invalid filters: {e}")))?;
    v.into_iter()
        .map(|(k, v)| {
            let vals = match v {
                Value::Array(a) => a
                    .into_iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                Value::Object(o) => o.into_iter().map(|(x, _)| x).collect(),
                _ => return Err(ApiError::BadParameter(format!("invalid filter {k:?}"))),
            };
            Ok((k, vals))
        })
        .collect()
}

/// Whether a container passes every filter (values of one filter are
/// alternatives, except labels, which must all match).
pub fn matches(
    filters: &BTreeMap<String, Vec<String>>,
    c: &ContainerConfig,
    status: &str,
) -> Result<bool, ApiError> {
    for (k, vals) in filters {
        let ok = match k.as_str() {
            // Every label must match, as Docker reads them (compose asks
            // for its project and oneoff labels together).
            "label" => vals.iter().all(|l| match l.split_once('=') {
                Some((k, v)) => c.labels.get(k).is_some_and(|x| x == v),
                None => c.labels.contains_key(l),
            }),
            "name" => vals
                .iter()
                .any(|n| c.name.contains(n.trim_start_matches('/'))),
            "id" => vals.iter().any(|i| c.id.starts_with(i.as_str())),
            "status" => vals.iter().any(|s| s == status),
            other => return Err(ApiError::BadParameter(format!("invalid filter '{other}'"))),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `GET /containers/json?all=&filters=`.
pub async fn list(ctx: Arc<Ctx>, q: Query) -> Reply {
    let filters = parse_filters(&q)?;
    let all = q.flag("all");
    let v = blocking(move || {
        let cs = open(&ctx)?;
        let mut out = Vec::new();
        for (c, s) in cs.list()?.into_iter().rev() {
            let running = is_running(&cs.handle(&c.id), &s);
            let status = s.docker_state(running);
            if (all || running || filters.contains_key("status")) && matches(&filters, &c, status)?
            {
                out.push(summary(&c, &s, running, &ctx.data_dir));
            }
        }
        Ok(Value::Array(out))
    })
    .await?;
    Ok(json(StatusCode::OK, &v))
}

/// `POST /containers/create?name=`: the image must be in the store
/// (`docker` pulls on a 404 and tries again).
pub async fn create(ctx: Arc<Ctx>, q: Query, body: Incoming) -> Reply {
    let body: create_body::CreateBody = read_json::<Option<_>>(body)
        .await?
        .ok_or_else(|| ApiError::BadParameter("a container config is required".into()))?;
    let (image, opts) = create_body::parse(body, q.get("name").map(String::from), &ctx.data_dir)?;
    let id = blocking(move || {
        crate::assets::find().map_err(|e| ApiError::internal(&e))?;
        let store = Store::open(&ctx.data_dir.join("images"))?;
        let img = super::images::find(&store, &image)?;
        let ic = create::image_config(&store, &img)?;
        let cs = open(&ctx)?;
        Ok(create::create(&cs, &opts, &img, &ic)?.id)
    })
    .await?;
    Ok(json(
        StatusCode::CREATED,
        &json!({"Id": id, "Warnings": []}),
    ))
}

/// Stops a running container (SIGTERM, SIGKILL after `secs`) and waits
/// for its supervisor to end; `false` when it was not running.
pub fn stop_container(h: &Handle, secs: u64) -> Result<bool, ApiError> {
    let running = is_running(h, &h.live_state()?);
    Ok(ipc::stop(h, secs, running)?)
}

fn timeout(q: &Query) -> Result<u64, ApiError> {
    match q.get("t").filter(|t| !t.is_empty()) {
        None => Ok(10),
        Some(t) => t
            .parse::<i64>()
            .map(|t| u64::try_from(t).unwrap_or(0))
            .map_err(|_| ApiError::BadParameter(format!("invalid timeout {t:?}"))),
    }
}

/// `POST /containers/{id}/stop?t=`.
pub async fn stop(ctx: Arc<Ctx>, key: String, q: Query) -> Reply {
    let secs = timeout(&q)?;
    let stopped = blocking(move || {
        let cs = open(&ctx)?;
        stop_with_events(&ctx, &cs, &cs.find(&key)?, secs)
    })
    .await?;
    if stopped {
        Ok(empty(StatusCode::NO_CONTENT))
    } else {
        Err(ApiError::NotModified)
    }
}

/// `POST /containers/{id}/kill?signal=`.
pub async fn kill(ctx: Arc<Ctx>, key: String, q: Query) -> Reply {
    let name = q.get("signal").filter(|s| !s.is_empty()).unwrap_or("KILL");
    let signal = crate::cli::lifecycle::parse_signal(name)
        .ok_or_else(|| ApiError::BadParameter(format!("Invalid signal: {name}")))?;
    blocking(move || {
        let cs = open(&ctx)?;
        let (h, _, _, running) = load(&cs, &key)?;
        if !running {
            return Err(ApiError::Conflict(format!(
                "Cannot kill container: {key}: Container {} is not running",
                h.id
            )));
        }
        ipc::request(&h, &Request::Signal { signal })?;
        if let Ok(c) = h.config() {
            ctx.events
                .action("kill", &c, &[("signal", signal.to_string())]);
        }
        Ok(())
    })
    .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Stops container `key` as [`stop_container`] does, with Docker's events:
/// `kill` (signal 15), then the `die` seen at its end, then `stop`.
fn stop_with_events(ctx: &Ctx, cs: &Containers, h: &Handle, secs: u64) -> Result<bool, ApiError> {
    let config = h.config().ok();
    let running = is_running(h, &h.live_state()?);
    if let (true, Some(c)) = (running, &config) {
        ctx.events
            .action("kill", c, &[("signal", libc::SIGTERM.to_string())]);
    }
    let stopped = ipc::stop(h, secs, running)?;
    if let (true, Some(c)) = (stopped, &config) {
        ctx.events.refresh(cs);
        ctx.events.action("stop", c, &[]);
    }
    Ok(stopped)
}

/// `POST /containers/{id}/pause` (`pause` true) and `/unpause`: stop or
/// resume the microVM's vCPUs, with Docker's `pause`/`unpause` events.
pub async fn pause(ctx: Arc<Ctx>, key: String, pause: bool) -> Reply {
    blocking(move || {
        let cs = open(&ctx)?;
        let (h, c, s, running) = load(&cs, &key)?;
        if !running {
            return Err(ApiError::Conflict(format!(
                "Container {} is not running",
                h.id
            )));
        }
        if s.paused == pause {
            let what = if pause {
                "already paused"
            } else {
                "not paused"
            };
            return Err(ApiError::Conflict(format!("Container {} is {what}", h.id)));
        }
        let req = if pause {
            Request::Pause
        } else {
            Request::Unpause
        };
        ipc::request(&h, &req)?;
        ctx.events
            .action(if pause { "pause" } else { "unpause" }, &c, &[]);
        Ok(())
    })
    .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /containers/{id}/restart?t=`: stop, then start a new microVM.
pub async fn restart(ctx: Arc<Ctx>, key: String, q: Query) -> Reply {
    let secs = timeout(&q)?;
    blocking(move || {
        let cs = open(&ctx)?;
        let h = cs.find(&key)?;
        stop_with_events(&ctx, &cs, &h, secs)?;
        create::start(&ctx.data_dir, &cs, &h, None, false)?;
        ctx.events.refresh(&cs);
        if let Ok(c) = h.config() {
            ctx.events.action("restart", &c, &[]);
        }
        Ok(())
    })
    .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `DELETE /containers/{id}?force=&v=` (`v` removes anonymous volumes,
/// which husk never makes: named volumes stay, as with Docker).
pub async fn delete(ctx: Arc<Ctx>, key: String, q: Query) -> Reply {
    let force = q.flag("force");
    blocking(move || {
        let cs = open(&ctx)?;
        let (h, _, _, running) = load(&cs, &key)?;
        if running || h.supervisor_alive() {
            if !force {
                return Err(ApiError::Conflict(format!(
                    "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                    h.id
                )));
            }
            stop_container(&h, 0)?;
        }
        cs.remove(&h)?;
        Ok(())
    })
    .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ContainerConfig {
        ContainerConfig {
            id: "ab".repeat(32),
            name: "web".into(),
            labels: BTreeMap::from([("app".into(), "shop".into())]),
            ports: vec!["8081:80/tcp".into()],
            ..ContainerConfig::default()
        }
    }

    #[test]
    fn filters() {
        let q = Query::parse(Some(
            "filters=%7B%22label%22%3A%5B%22app%3Dshop%22%5D%2C%22status%22%3A%7B%22exited%22%3Atrue%7D%7D",
        ));
        let f = parse_filters(&q).unwrap();
        assert_eq!(f["status"], ["exited"]);
        let c = cfg();
        assert!(matches(&f, &c, "exited").unwrap());
        assert!(!matches(&f, &c, "running").unwrap());
        let by = |k: &str, v: &str| BTreeMap::from([(k.to_string(), vec![v.to_string()])]);
        assert!(matches(&by("name", "/web"), &c, "x").unwrap());
        assert!(!matches(&by("name", "db"), &c, "x").unwrap());
        assert!(matches(&by("id", "abab"), &c, "x").unwrap());
        assert!(matches(&by("label", "app"), &c, "x").unwrap());
        assert!(!matches(&by("label", "app=x"), &c, "x").unwrap());
        let both = |a: &str, b: &str| {
            BTreeMap::from([("label".to_string(), vec![a.to_string(), b.to_string()])])
        };
        assert!(matches(&both("app", "app=shop"), &c, "x").unwrap());
        assert!(
            !matches(&both("app=shop", "project=other"), &c, "x").unwrap(),
            "labels of one filter must all match"
        );
        assert!(matches(&by("bogus", "x"), &c, "x").is_err());
        assert!(parse_filters(&Query::parse(Some("filters=nope"))).is_err());
    }

    #[test]
    fn docker_shapes() {
        let c = cfg();
        let s = State {
            ports: vec![PortBinding {
                host_ip: "0.0.0.0".into(),
                host_port: 8081,
                container_port: 80,
                proto: "tcp".into(),
            }],
            ..State::default()
        };
        let sum = summary(&c, &s, true, Path::new("/d"));
        assert_eq!(sum["Names"], json!(["/web"]));
        assert_eq!(sum["State"], "running");
        assert_eq!(sum["Ports"][0]["PublicPort"], 8081);
        let d = tempfile::tempdir().unwrap();
        let h = Containers::open(d.path()).unwrap().handle(&c.id);
        let i = inspect_json(&c, &s, false, &h, Path::new("/d"));
        assert_eq!(
            i["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"],
            "8081"
        );
        assert_eq!(
            i["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"],
            "8081"
        );
        assert_eq!(
            i["HostConfig"]["LogConfig"],
            json!({"Type": "json-file", "Config": {"max-size": "20m", "max-file": "5"}})
        );
        let mut c = cfg();
        c.log = crate::container::logs::LogConfig {
            max_size: 10 << 20,
            max_file: 3,
        };
        let i = inspect_json(&c, &s, false, &h, Path::new("/d"));
        assert_eq!(i["HostConfig"]["LogConfig"]["Config"]["max-size"], "10m");
        assert_eq!(i["HostConfig"]["LogConfig"]["Config"]["max-file"], "3");
        assert_eq!(i["State"]["StartedAt"], "0001-01-01T00:00:00Z");
        assert_eq!(i["Config"]["Labels"]["app"], "shop");
    }
}
