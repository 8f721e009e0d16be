//! `/_ping`, `/version`, `/info`.

use std::sync::Arc;

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;
use serde_json::{json, Value};

use super::{blocking, full, json, Body, Ctx, Reply, API_VERSION, MIN_API_VERSION};
use crate::container::{Containers, Status};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `GET|HEAD /_ping`: `OK` (no body for HEAD).
pub fn ping(method: &str) -> hyper::Response<Body> {
    let body = if method == "HEAD" { "" } else { "OK" };
    let mut r = hyper::Response::new(full(body));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        "Cache-Control",
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    r
}

fn kernel_version() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `GET /version`.
pub async fn version() -> Reply {
    let kernel = kernel_version();
    Ok(json(
        StatusCode::OK,
        &json!({
            "Platform": {"Name": "husk"},
            "Components": [{
                "Name": "Engine",
                "Version": VERSION,
                "Details": {
                    "ApiVersion": API_VERSION,
                    "MinAPIVersion": MIN_API_VERSION,
                    "Os": "linux",
                    "Arch": "amd64",
                    "KernelVersion": kernel,
                }
            }],
            "Version": VERSION,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "husk",
            "GoVersion": "none (husk is written in Rust)",
            "Os": "linux",
            "Arch": "amd64",
            "KernelVersion": kernel,
            "BuildTime": "",
        }),
    ))
}

/// `GET /info`.
pub async fn info(ctx: Arc<Ctx>) -> Reply {
    let data = ctx.data_dir.clone();
    let (all, running, images) = blocking(move || {
        let rows = Containers::open(&data)?.list()?;
        let running = rows
            .iter()
            .filter(|(_, s)| s.status == Status::Running)
            .count();
        let images = crate::image::store::Store::open(&data.join("images"))
            .and_then(|s| s.refs())
            .map(|r| r.len())
            .unwrap_or(0);
        Ok((rows.len(), running, images))
    })
    .await?;
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut v = json!({
            "ID": "husk",
            "Containers": all,
            "ContainersRunning": running,
            "ContainersPaused": 0,
            "ContainersStopped": all - running,
            "Images": images,
            "Driver": "husk (ext4 rootfs disks)",
            "DriverStatus": [],
            "Plugins": {"Volume": ["local"], "Network": ["default", "none"], "Authorization": null, "Log": ["husk"]},
            "MemoryLimit": true,
            "SwapLimit": false,
            "KernelMemory": false,
            "CpuCfsPeriod": true,
            "CpuCfsQuota": true,
            "IPv4Forwarding": true,
            "Debug": false,
            "NFd": 0,
            "NGoroutines": 0,
            "SystemTime": crate::time::now_rfc3339(),
            "LoggingDriver": "json-file",
            "CgroupDriver": "none",
            "CgroupVersion": "2",
            "NEventsListener": 0,
    });
    let more = json!({
            "KernelVersion": kernel_version(),
            "OperatingSystem": "husk (every container in its own microVM)",
            "OSVersion": VERSION,
            "OSType": "linux",
            "Architecture": "x86_64",
            "IndexServerAddress": "https://index.docker.io/v1/",
            "NCPU": ncpu,
            "MemTotal": mem_total(),
            "DockerRootDir": ctx.data_dir,
            "Name": host,
            "Labels": [],
            "ExperimentalBuild": false,
            "ServerVersion": VERSION,
            "Runtimes": {"husk": {"path": "husk-vmm"}},
            "DefaultRuntime": "husk",
            "Swarm": {"LocalNodeState": "inactive", "ControlAvailable": false, "NodeID": "", "NodeAddr": ""},
            "LiveRestoreEnabled": true,
            "Isolation": "",
            "SecurityOptions": [],
            "Warnings": [],
    });
    if let (Some(a), Value::Object(b)) = (v.as_object_mut(), more) {
        a.extend(b);
    }
    Ok(json(StatusCode::OK, &v))
}

fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
