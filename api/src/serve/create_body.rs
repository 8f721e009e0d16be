//! The body of `POST /containers/create`, parsed into the library's
//! [`CreateOptions`]. Clients send many fields as `null`, so every field is
//! optional; what husk cannot do (host bind mounts, privileged containers,
//! devices, security options but `no-new-privileges`, ulimits, sysctls,
//! `--init`, the host's network) is refused with a 400 that says so, never
//! ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ApiError;
use crate::container::create::{self, CreateOptions};
use crate::container::log_opts::LogOptError;
use crate::container::logs;
use crate::container::restart::RestartPolicy as Policy;
use crate::container::spec::Restrictions;

/// A string or a list of strings (Docker's `strslice`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum StrOrVec {
    /// One string (split as a shell would not: kept whole).
    One(String),
    /// A list.
    Many(Vec<String>),
}

impl StrOrVec {
    fn into_vec(self) -> Vec<String> {
        match self {
            StrOrVec::One(s) => vec![s],
            StrOrVec::Many(v) => v,
        }
    }
}

/// The container-create body (the fields husk reads).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct CreateBody {
    pub image: Option<String>,
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub tty: Option<bool>,
    pub open_stdin: Option<bool>,
    pub env: Option<Vec<String>>,
    pub cmd: Option<StrOrVec>,
    pub entrypoint: Option<StrOrVec>,
    pub working_dir: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    pub host_config: Option<HostConfig>,
    pub networking_config: Option<NetworkingConfig>,
}

/// `NetworkingConfig`: per network, the endpoint's aliases.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct NetworkingConfig {
    pub endpoints_config: Option<BTreeMap<String, Option<EndpointConfig>>>,
}

/// One endpoint of `NetworkingConfig` (and of `/networks/{id}/connect`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct EndpointConfig {
    pub aliases: Option<Vec<String>>,
}

/// `HostConfig` (the fields husk reads).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct HostConfig {
    pub binds: Option<Vec<String>>,
    pub mounts: Option<Vec<Mount>>,
    pub port_bindings: Option<BTreeMap<String, Option<Vec<PortBinding>>>>,
    pub publish_all_ports: Option<bool>,
    pub memory: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub auto_remove: Option<bool>,
    pub network_mode: Option<String>,
    pub privileged: Option<bool>,
    pub devices: Option<Vec<serde_json::Value>>,
    pub restart_policy: Option<RestartPolicy>,
    pub log_config: Option<LogConfig>,
    pub pids_limit: Option<i64>,
    pub readonly_rootfs: Option<bool>,
    pub tmpfs: Option<BTreeMap<String, String>>,
    pub cap_add: Option<Vec<String>>,
    pub cap_drop: Option<Vec<String>>,
    pub security_opt: Option<Vec<String>>,
    pub ulimits: Option<Vec<serde_json::Value>>,
    pub sysctls: Option<BTreeMap<String, String>>,
    pub init: Option<bool>,
    pub shm_size: Option<i64>,
}

/// `HostConfig.LogConfig`: a driver and its options.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct LogConfig {
    #[serde(rename = "Type")]
    pub kind: Option<String>,
    pub config: Option<BTreeMap<String, String>>,
}

/// One `HostConfig.Mounts` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct Mount {
    #[serde(rename = "Type")]
    pub kind: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub read_only: Option<bool>,
}

/// One host binding of a container port.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct PortBinding {
    pub host_ip: Option<String>,
    pub host_port: Option<String>,
}

/// `HostConfig.RestartPolicy`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct RestartPolicy {
    pub name: Option<String>,
    pub maximum_retry_count: Option<u32>,
}

fn unsupported(what: &str) -> ApiError {
    ApiError::Unsupported(format!("husk cannot {what}"))
}

/// The image and the create options of a body; `name` from the query;
/// user-defined networks are those of `data_dir`.
pub fn parse(
    body: CreateBody,
    name: Option<String>,
    data_dir: &std::path::Path,
) -> Result<(String, CreateOptions), ApiError> {
    let image = body
        .image
        .filter(|i| !i.is_empty())
        .ok_or_else(|| ApiError::BadParameter("Config.Image is required".into()))?;
    let mut hc = body.host_config.unwrap_or_default();
    refuse_unsupported(&hc)?;
    let restrictions = restrictions(&mut hc)?;
    let mut volumes = Vec::new();
    for b in hc.binds.unwrap_or_default() {
        if b.starts_with('/') || b.starts_with('.') {
            return Err(unsupported(&format!(
                "mount host directories ({b}): a microVM shares no file system with the host; use a named volume (NAME:/path)"
            )));
        }
        volumes.push(create::parse_volume(&b)?);
    }
    for m in hc.mounts.unwrap_or_default() {
        volumes.push(mount(m)?);
    }
    let mode = hc.network_mode.clone().unwrap_or_default();
    if mode == "host" {
        return Err(unsupported(
            "use the host's network: each container is its own microVM",
        ));
    }
    let aliases = body
        .networking_config
        .and_then(|n| n.endpoints_config)
        .and_then(|mut e| e.remove(&mode))
        .flatten()
        .and_then(|e| e.aliases)
        .unwrap_or_default();
    let (network, networks) = match create::resolve_network(data_dir, &mode, &aliases) {
        Ok(r) => r,
        Err(e @ create::CreateError::UnknownNetwork(_)) => {
            return Err(ApiError::NotFound(e.to_string()))
        }
        Err(e) => return Err(ApiError::BadParameter(e.to_string())),
    };
    let opts = CreateOptions {
        name: name
            .filter(|n| !n.is_empty())
            .map(|n| n.trim_start_matches('/').to_string()),
        entrypoint: body.entrypoint.map(StrOrVec::into_vec),
        cmd: body.cmd.map(StrOrVec::into_vec).unwrap_or_default(),
        env: body.env.unwrap_or_default(),
        workdir: body.working_dir,
        user: body.user,
        hostname: body.hostname,
        tty: body.tty.unwrap_or(false),
        open_stdin: body.open_stdin.unwrap_or(false),
        console_size: None,
        ports: port_specs(hc.port_bindings.unwrap_or_default())?,
        volumes,
        memory_bytes: positive(hc.memory),
        cpu_millis: positive(hc.nano_cpus).map(|n| n.div_ceil(1_000_000)),
        network,
        networks,
        auto_remove: hc.auto_remove.unwrap_or(false),
        labels: body.labels.unwrap_or_default(),
        restart: restart_policy(hc.restart_policy.as_ref())?,
        cold_boot: false,
        log: log_config(hc.log_config)?,
        restrictions,
    };
    Ok((image, opts))
}

fn positive(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0)
}

/// `PidsLimit` (0 or -1: none), `ReadonlyRootfs`, `Tmpfs` (a path to its
/// mount options), `CapAdd`, `CapDrop` and `SecurityOpt`
/// (`no-new-privileges` only).
fn restrictions(hc: &mut HostConfig) -> Result<Restrictions, ApiError> {
    let bad = |e: &dyn std::error::Error| ApiError::BadParameter(crate::error::chain(e));
    let tmpfs = hc
        .tmpfs
        .take()
        .unwrap_or_default()
        .iter()
        .map(|(path, opts)| crate::container::tmpfs::parse_with(path, opts))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let no_new_privileges =
        crate::container::spec::parse_security_opts(&hc.security_opt.take().unwrap_or_default())
            .map_err(|e| ApiError::Unsupported(e.to_string()))?;
    let r = Restrictions {
        pids_limit: positive(hc.pids_limit),
        readonly_rootfs: hc.readonly_rootfs.unwrap_or(false),
        tmpfs,
        cap_add: hc.cap_add.take().unwrap_or_default(),
        cap_drop: hc.cap_drop.take().unwrap_or_default(),
        no_new_privileges,
    };
    r.security().map_err(|e| bad(&e))?;
    Ok(r)
}

/// Docker's `/dev/shm` size, the one husk gives.
const SHM_SIZE: i64 = 64 << 20;

fn refuse_unsupported(hc: &HostConfig) -> Result<(), ApiError> {
    if hc.ulimits.as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(unsupported("set ulimits yet"));
    }
    if hc.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(unsupported("set sysctls yet"));
    }
    if hc.init == Some(true) {
        return Err(unsupported(
            "run an init process (--init) yet: the container's command is its PID 1",
        ));
    }
    if hc.shm_size.is_some_and(|s| s > 0 && s != SHM_SIZE) {
        return Err(unsupported(
            "size /dev/shm other than Docker's default 64m yet: mount a tmpfs (--tmpfs) for more",
        ));
    }
    if hc.privileged == Some(true) {
        return Err(unsupported(
            "run privileged containers: each container is a microVM without the host's devices",
        ));
    }
    if hc.devices.as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(unsupported("pass host devices into a container's microVM"));
    }
    if hc.publish_all_ports == Some(true) {
        return Err(unsupported(
            "publish all exposed ports (-P) yet: publish them with -p",
        ));
    }
    Ok(())
}

/// `HostConfig.RestartPolicy` as husk's policy.
fn restart_policy(p: Option<&RestartPolicy>) -> Result<Policy, ApiError> {
    let Some(p) = p else {
        return Ok(Policy::No);
    };
    Policy::from_docker(
        p.name.as_deref().unwrap_or(""),
        p.maximum_retry_count.filter(|n| *n > 0),
    )
    .map_err(|e| ApiError::BadParameter(e.to_string()))
}

/// `HostConfig.LogConfig` as husk's log limits: Docker's default driver
/// (`json-file`, or none named) and `local` mean husk's own rotated log.
fn log_config(c: Option<LogConfig>) -> Result<logs::LogConfig, ApiError> {
    let c = c.unwrap_or_default();
    let opts: Vec<String> = c
        .config
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    logs::LogConfig::parse(c.kind.as_deref().unwrap_or(""), &opts).map_err(|e| match e {
        LogOptError::UnsupportedDriver(_) => ApiError::Unsupported(e.to_string()),
        e => ApiError::BadParameter(e.to_string()),
    })
}

fn mount(m: Mount) -> Result<crate::container::spec::VolumeMount, ApiError> {
    let target = m.target.unwrap_or_default();
    match m.kind.as_deref().unwrap_or("volume") {
        "volume" => match m.source.filter(|s| !s.is_empty()) {
            Some(src) => Ok(create::volume_mount(&src, &target, m.read_only.unwrap_or(false))?),
            None => Err(unsupported(&format!(
                "make anonymous volumes yet ({target}): name the volume"
            ))),
        },
        "bind" => Err(unsupported(&format!(
            "mount host directories ({}): a microVM shares no file system with the host; use a named volume",
            m.source.unwrap_or_default()
        ))),
        other => Err(unsupported(&format!("make {other} mounts yet ({target})"))),
    }
}

/// `PortBindings` as `-p` specifications.
pub fn port_specs(
    bindings: BTreeMap<String, Option<Vec<PortBinding>>>,
) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    for (port, binds) in bindings {
        let (num, proto) = port.split_once('/').unwrap_or((&port, "tcp"));
        for b in binds.unwrap_or_default() {
            let ip = b.host_ip.unwrap_or_default();
            let hp = b.host_port.unwrap_or_default();
            let spec = match (ip.as_str(), hp.as_str()) {
                ("", "") => format!("{num}/{proto}"),
                ("", hp) => format!("{hp}:{num}/{proto}"),
                (ip, hp) if ip.contains(':') => format!("[{ip}]:{hp}:{num}/{proto}"),
                (ip, hp) => format!("{ip}:{hp}:{num}/{proto}"),
            };
            spec.parse::<crate::net::PortSpec>()
                .map_err(|e| ApiError::BadParameter(e.to_string()))?;
            out.push(spec);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<(String, CreateOptions), ApiError> {
        parse(
            serde_json::from_str(s).unwrap(),
            Some("web".into()),
            std::path::Path::new("/nonexistent"),
        )
    }

    #[test]
    fn restart_policies_as_docker_sends_them() {
        for (body, want) in [
            (r#"{"Image":"b"}"#, Policy::No),
            (
                r#"{"Image":"b","HostConfig":{"RestartPolicy":{"Name":"","MaximumRetryCount":0}}}"#,
                Policy::No,
            ),
            (
                r#"{"Image":"b","HostConfig":{"RestartPolicy":{"Name":"always","MaximumRetryCount":0}}}"#,
                Policy::Always,
            ),
            (
                r#"{"Image":"b","HostConfig":{"RestartPolicy":{"Name":"unless-stopped"}}}"#,
                Policy::UnlessStopped,
            ),
            (
                r#"{"Image":"b","HostConfig":{"RestartPolicy":{"Name":"on-failure","MaximumRetryCount":2}}}"#,
                Policy::OnFailure { max_retries: 2 },
            ),
        ] {
            assert_eq!(parse_str(body).unwrap().1.restart, want, "{body}");
        }
        for body in [
            r#"{"Image":"b","HostConfig":{"RestartPolicy":{"Name":"sometimes"}}}"#,
            r#"{"Image":"b","HostConfig":{"RestartPolicy":{"Name":"always","MaximumRetryCount":3}}}"#,
        ] {
            let e = parse_str(body).unwrap_err();
            assert_eq!(e.status(), hyper::StatusCode::BAD_REQUEST, "{body}");
            assert!(e.to_string().contains("invalid restart policy"), "{e}");
        }
    }

    #[test]
    fn docker_cli_body() {
        // What `docker create -t -p 8081:80 -v data:/srv -e A=1 -l app=x
        // --memory 256m --cpus 1.5 busybox httpd -f` sends (trimmed).
        let body = r#"{"Hostname":"","User":"","AttachStdin":false,"Tty":true,"OpenStdin":false,
            "Env":["A=1"],"Cmd":["httpd","-f"],"Image":"busybox","Volumes":{},"WorkingDir":"",
            "Entrypoint":null,"OnBuild":null,"Labels":{"app":"x"},"ExposedPorts":{"80/tcp":{}},
            "HostConfig":{"Binds":["data:/srv"],"NetworkMode":"default","PortBindings":
            {"80/tcp":[{"HostIp":"","HostPort":"8081"}],"53/udp":[{"HostIp":"127.0.0.1","HostPort":""}]},
            "RestartPolicy":{"Name":"no","MaximumRetryCount":0},"AutoRemove":true,
            "Memory":268435456,"NanoCpus":1500000000,"Privileged":false,"Devices":[],"Mounts":null},
            "NetworkingConfig":{"EndpointsConfig":{}}}"#;
        let (image, o) = parse_str(body).unwrap();
        assert_eq!(image, "busybox");
        assert_eq!(o.name.as_deref(), Some("web"));
        assert_eq!(o.cmd, ["httpd", "-f"]);
        assert_eq!(o.entrypoint, None);
        assert!(o.tty && o.auto_remove);
        assert_eq!(o.ports, ["127.0.0.1::53/udp", "8081:80/tcp"]);
        assert_eq!(o.volumes[0].name, "data");
        assert_eq!(o.memory_bytes, Some(256 << 20));
        assert_eq!(o.cpu_millis, Some(1500));
        assert_eq!(o.labels["app"], "x");
        assert_eq!(o.workdir.as_deref(), Some(""));
    }

    #[test]
    fn pids_limit_read_only_and_tmpfs() {
        // `docker create --pids-limit 64 --read-only --tmpfs /tmp
        // --tmpfs /run:exec,size=8m busybox`, with the nulls and defaults
        // the CLI sends for what is not asked.
        let body = r#"{"Image":"busybox","HostConfig":{"PidsLimit":64,"ReadonlyRootfs":true,
            "Tmpfs":{"/tmp":"","/run":"exec,size=8m"},"CapAdd":null,"CapDrop":null,
            "SecurityOpt":null,"Ulimits":null,"Init":null,"ShmSize":0}}"#;
        let (_, o) = parse_str(body).unwrap();
        let r = &o.restrictions;
        assert_eq!(r.pids_limit, Some(64));
        assert!(r.readonly_rootfs);
        assert_eq!(r.tmpfs.len(), 2);
        let run = r
            .tmpfs
            .iter()
            .find(|t| t.destination.ends_with("run"))
            .unwrap();
        assert_eq!(run.size_bytes, Some(8 << 20));
        assert!(run.allow.exec);
        for unlimited in ["-1", "0", "null"] {
            let body = format!(r#"{{"Image":"b","HostConfig":{{"PidsLimit":{unlimited}}}}}"#);
            assert_eq!(parse_str(&body).unwrap().1.restrictions.pids_limit, None);
        }
        let body = r#"{"Image":"b","HostConfig":{"CapAdd":["NET_ADMIN"],"CapDrop":["CAP_CHOWN"],
            "SecurityOpt":["no-new-privileges:true"]}}"#;
        let r = parse_str(body).unwrap().1.restrictions;
        assert_eq!(
            (r.cap_add, r.cap_drop),
            (vec!["NET_ADMIN".into()], vec!["CAP_CHOWN".into()])
        );
        assert!(r.no_new_privileges);
        let e = parse_str(r#"{"Image":"b","HostConfig":{"CapAdd":["FLY"]}}"#).unwrap_err();
        assert!(matches!(e, ApiError::BadParameter(_)), "{e}");
        assert_eq!(e.to_string(), "unknown capability: \"FLY\"");
        let e = parse_str(r#"{"Image":"b","HostConfig":{"Tmpfs":{"/t":"uid=0"}}}"#).unwrap_err();
        assert!(matches!(e, ApiError::BadParameter(_)), "{e}");
        assert!(e.to_string().contains("\"uid=0\" is not supported"), "{e}");
    }

    #[test]
    fn strings_and_nulls() {
        let (_, o) =
            parse_str(r#"{"Image":"busybox","Cmd":"sh","Entrypoint":[""],"Env":null}"#).unwrap();
        assert_eq!(o.cmd, ["sh"]);
        assert_eq!(o.entrypoint, Some(vec![String::new()]));
        let (_, o) = parse_str(
            r#"{"Image":"b","HostConfig":{"Mounts":[{"Type":"volume","Source":"v","Target":"/d","ReadOnly":true}],"NetworkMode":"bridge"}}"#,
        )
        .unwrap();
        assert!(o.volumes[0].readonly);
        assert_eq!(o.network, crate::container::spec::NetworkMode::Default);
    }

    #[test]
    fn refusals() {
        for (body, want) in [
            (
                r#"{"Image":"b","HostConfig":{"Binds":["/etc:/x"]}}"#,
                "mount host directories",
            ),
            (
                r#"{"Image":"b","HostConfig":{"Privileged":true}}"#,
                "privileged",
            ),
            (
                r#"{"Image":"b","HostConfig":{"Devices":[{"PathOnHost":"/dev/fuse"}]}}"#,
                "devices",
            ),
            (
                r#"{"Image":"b","HostConfig":{"Mounts":[{"Type":"bind","Source":"/tmp","Target":"/t"}]}}"#,
                "host directories",
            ),
            (
                r#"{"Image":"b","HostConfig":{"NetworkMode":"host"}}"#,
                "host's network",
            ),
            (
                r#"{"Image":"b","HostConfig":{"SecurityOpt":["seccomp=unconfined"]}}"#,
                "--security-opt \"seccomp=unconfined\"",
            ),
            (
                r#"{"Image":"b","HostConfig":{"Ulimits":[{"Name":"nofile","Soft":1,"Hard":1}]}}"#,
                "ulimits",
            ),
            (
                r#"{"Image":"b","HostConfig":{"Sysctls":{"net.ipv4.ip_forward":"1"}}}"#,
                "sysctls",
            ),
            (r#"{"Image":"b","HostConfig":{"Init":true}}"#, "init"),
            (
                r#"{"Image":"b","HostConfig":{"ShmSize":1073741824}}"#,
                "/dev/shm",
            ),
        ] {
            let e = parse_str(body).unwrap_err();
            assert!(matches!(e, ApiError::Unsupported(_)), "{body}: {e}");
            assert!(e.to_string().starts_with("husk cannot"), "{e}");
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(e.status(), hyper::StatusCode::BAD_REQUEST);
        }
        for body in [
            r#"{"Cmd":["x"]}"#,
            r#"{"Image":"b","HostConfig":{"PortBindings":{"80/tcp":[{"HostPort":"x"}]}}}"#,
        ] {
            let e = parse_str(body).unwrap_err();
            assert!(matches!(e, ApiError::BadParameter(_)), "{body}: {e}");
        }
        let e = parse_str(r#"{"Image":"b","HostConfig":{"NetworkMode":"mynet"}}"#).unwrap_err();
        assert_eq!(
            (e.status(), e.to_string()),
            (
                hyper::StatusCode::NOT_FOUND,
                "network mynet not found".into()
            )
        );
    }

    #[test]
    fn log_configs_as_clients_send_them() {
        let default = crate::container::logs::LogConfig::default();
        for body in [
            r#"{"Image":"b"}"#,
            r#"{"Image":"b","HostConfig":{"LogConfig":null}}"#,
            r#"{"Image":"b","HostConfig":{"LogConfig":{"Type":"","Config":{}}}}"#,
            r#"{"Image":"b","HostConfig":{"LogConfig":{"Type":"","Config":null}}}"#,
            r#"{"Image":"b","HostConfig":{"LogConfig":{"Type":"json-file","Config":{}}}}"#,
            r#"{"Image":"b","HostConfig":{"LogConfig":{"Type":"json-file"}}}"#,
        ] {
            assert_eq!(parse_str(body).unwrap().1.log, default, "{body}");
        }
        let body = r#"{"Image":"b","HostConfig":{"LogConfig":{"Type":"local",
            "Config":{"max-size":"10m","max-file":"3","compress":"false"}}}}"#;
        let log = parse_str(body).unwrap().1.log;
        assert_eq!((log.max_size, log.max_file), (10 << 20, 3));
        for (body, status) in [
            (
                r#"{"Image":"b","HostConfig":{"LogConfig":{"Type":"syslog","Config":{}}}}"#,
                "unsupported log driver",
            ),
            (
                r#"{"Image":"b","HostConfig":{"LogConfig":{"Type":"none"}}}"#,
                "unsupported log driver",
            ),
            (
                r#"{"Image":"b","HostConfig":{"LogConfig":{"Type":"local","Config":{"max-size":"abc"}}}}"#,
                "invalid --log-opt max-size=abc",
            ),
            (
                r#"{"Image":"b","HostConfig":{"LogConfig":{"Config":{"labels":"a"}}}}"#,
                "unknown option",
            ),
        ] {
            let e = parse_str(body).unwrap_err();
            assert_eq!(e.status(), hyper::StatusCode::BAD_REQUEST, "{body}");
            assert!(e.to_string().contains(status), "{e}");
        }
    }

    #[test]
    fn user_networks_and_their_aliases() {
        let d = tempfile::tempdir().unwrap();
        crate::net::networks::Networks::open(d.path())
            .create("proj_default", "bridge", Default::default())
            .unwrap();
        let body = r#"{"Image":"b","HostConfig":{"NetworkMode":"proj_default"},
            "NetworkingConfig":{"EndpointsConfig":{"proj_default":{"Aliases":["web"],"IPAMConfig":null}}}}"#;
        let (_, o) = parse(serde_json::from_str(body).unwrap(), None, d.path()).unwrap();
        assert_eq!(o.network, crate::container::spec::NetworkMode::Default);
        assert_eq!(o.networks.len(), 1);
        assert_eq!(o.networks[0].network, "proj_default");
        assert_eq!(o.networks[0].aliases, vec!["web".to_string()]);
        let bad = r#"{"Image":"b","HostConfig":{"NetworkMode":"proj_default"},
            "NetworkingConfig":{"EndpointsConfig":{"proj_default":{"Aliases":["a b"]}}}}"#;
        let e = parse(serde_json::from_str(bad).unwrap(), None, d.path()).unwrap_err();
        assert_eq!(e.status(), hyper::StatusCode::BAD_REQUEST);
    }
}
