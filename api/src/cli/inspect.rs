//! `husk inspect CONTAINER...`: a JSON array shaped like Docker's, with
//! husk's start-up breakdown under `Timings`.

use std::path::Path;

use clap::Args;
use serde_json::json;

use super::CliResult;
use crate::container::{ContainerConfig, State, Status};

/// Options of `husk inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Docker-shaped JSON of one container.
pub fn to_json(c: &ContainerConfig, s: &State, dir: &Path) -> serde_json::Value {
    let mut ports = serde_json::Map::new();
    for p in &s.ports {
        let key = format!("{}/{}", p.container_port, p.proto);
        let entry = ports.entry(key).or_insert_with(|| json!([]));
        if let Some(a) = entry.as_array_mut() {
            a.push(json!({"HostIp": p.host_ip, "HostPort": p.host_port.to_string()}));
        }
    }
    json!({
        "Id": c.id,
        "Name": format!("/{}", c.name),
        "Created": c.created,
        "Path": c.process.entrypoint.iter().chain(&c.process.cmd).next(),
        "Args": c.process.entrypoint.iter().chain(&c.process.cmd).skip(1).collect::<Vec<_>>(),
        "Image": c.image_digest,
        "State": {
            "Status": if s.paused { "paused" } else { s.status.as_str() },
            "Running": s.status == Status::Running,
            "Paused": s.paused,
            "Restarting": s.restarting,
            "Pid": s.supervisor_pid.unwrap_or(0),
            "VmmPid": s.vmm_pid.unwrap_or(0),
            "GuestPid": s.guest_pid.unwrap_or(0),
            "ExitCode": s.exit_code.unwrap_or(0),
            "Error": s.error.clone().unwrap_or_default(),
            "StartedAt": s.started_at.clone().unwrap_or_default(),
            "FinishedAt": s.finished_at.clone().unwrap_or_default(),
        },
        "RestartCount": s.restart_count,
        "LogPath": dir.join("container.log"),
        "Config": {
            "Hostname": c.hostname,
            "User": c.process.user,
            "Env": c.process.env,
            "Cmd": c.process.cmd,
            "Entrypoint": c.process.entrypoint,
            "WorkingDir": c.process.workdir,
            "Tty": c.process.tty,
            "OpenStdin": c.process.open_stdin,
            "Image": c.image,
            "Labels": c.labels,
        },
        "HostConfig": host_config(c, serde_json::json!({
            "NetworkMode": match c.network {
                crate::container::spec::NetworkMode::Default => "default",
                crate::container::spec::NetworkMode::None => "none",
            },
            "PortBindings": c.ports,
        })),
        "NetworkSettings": {
            "IPAddress": s.ip.clone().unwrap_or_default(),
            "Ports": ports,
        },
        "Timings": s.timings,
    })
}

/// Docker's `HostConfig` of `c` as both `husk inspect` and the API's
/// inspect show it, with each one's own fields (`own`, an object) added.
pub fn host_config(c: &ContainerConfig, own: serde_json::Value) -> serde_json::Value {
    let r = &c.restrictions;
    let mut hc = serde_json::json!({
        "Binds": c.volumes.iter().map(|v| format!("{}:{}{}", v.name, v.destination, if v.readonly { ":ro" } else { "" })).collect::<Vec<_>>(),
        "RestartPolicy": {"Name": c.restart.name(), "MaximumRetryCount": c.restart.max_retries()},
        "AutoRemove": c.auto_remove,
        "LogConfig": c.log.docker_json(),
        "Memory": c.memory_bytes.unwrap_or(0),
        "NanoCpus": c.cpu_millis.unwrap_or(0) * 1_000_000,
        "PidsLimit": r.pids_limit,
        "ReadonlyRootfs": r.readonly_rootfs,
        "Tmpfs": crate::container::tmpfs::docker_map(&r.tmpfs),
        "CapAdd": r.cap_add,
        "CapDrop": r.cap_drop,
        "SecurityOpt": r.security_opt(),
    });
    if let (Some(hc), serde_json::Value::Object(own)) = (hc.as_object_mut(), own) {
        hc.extend(own);
    }
    hc
}

/// `husk inspect`.
pub fn run(data_dir: &Path, args: InspectArgs) -> CliResult {
    let cs = super::containers(data_dir)?;
    let mut out = Vec::new();
    let mut status = 0;
    for n in &args.containers {
        match cs
            .find(n)
            .and_then(|h| Ok((h.config()?, h.live_state()?, h.dir)))
        {
            Ok((c, s, dir)) => out.push(to_json(&c, &s, &dir)),
            Err(e) => {
                eprintln!("husk: {e}");
                status = 1;
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&out).unwrap_or_else(|_| "[]".into())
    );
    Ok(status)
}
