//! The one path that makes a container, shared by `husk run`/`husk create`
//! and the Docker API (`husk serve`): typed options plus the image's config
//! become a [`ContainerConfig`], the container's directory is created under
//! the containers lock, and [`start`] boots it through its supervisor.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use husk_proto::agent::{ConsoleSize, ProcessSpec};

use super::control::{Attach, Request};
use super::logs::LogConfig;
use super::restart::RestartPolicy;
use super::spec::{ContainerConfig, NetworkAttachment, NetworkMode, VolumeMount};
use super::{ipc, names, new_id, short_id, ContainerError, Containers, Handle};
use crate::image::oci::ImageConfig;
use crate::image::store::{Store, StoredImage};

/// Why a container could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Neither the options nor the image give a command.
    #[error("No command specified")]
    NoCommand,
    /// An environment entry without a name.
    #[error("invalid environment variable: {0}")]
    BadEnv(String),
    /// A port specification does not parse.
    #[error(transparent)]
    BadPort(#[from] crate::net::PortSpecError),
    /// Ports cannot be published without a network.
    #[error("cannot publish ports with --network none")]
    PortsWithoutNetwork,
    /// An alias that cannot be a host name.
    #[error("invalid network alias {0:?}: only [a-zA-Z0-9_.-] are allowed")]
    BadAlias(String),
    /// Aliases need a user-defined network.
    #[error("network-scoped aliases are only supported for user-defined networks")]
    AliasOnDefault,
    /// An unknown network.
    #[error("network {0} not found")]
    UnknownNetwork(String),
    /// A volume specification husk cannot honour.
    #[error("invalid volume specification: {spec:?}: {why}")]
    BadVolume {
        /// As given.
        spec: String,
        /// Why.
        why: &'static str,
    },
    /// A memory limit below what a container needs.
    #[error("invalid memory limit {0} bytes (at least 6m)")]
    BadMemory(u64),
    /// A bad container name.
    #[error("Invalid container name ({0}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    BadName(String),
    /// The image's config blob is missing or malformed.
    #[error("image {image}: bad config")]
    ImageConfig {
        /// The image.
        image: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Writing the container failed (or its name is taken).
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// No free generated name was found.
    #[error("could not choose a container name")]
    NoName,
    /// `--restart` with `--rm`.
    #[error("conflicting options: --restart and --rm (a removed container cannot restart)")]
    RestartWithRm,
    /// Two mounts on one path.
    #[error("Duplicate mount point: {0}")]
    DuplicateMount(String),
    /// A capability name that is not one.
    #[error(transparent)]
    BadCapability(#[from] husk_proto::security::UnknownCapability),
    /// tmpfs mounts that do not hold together (too many, one path twice).
    #[error("invalid --tmpfs")]
    BadTmpfs(#[source] husk_proto::agent::ProtocolError),
}

/// What the caller asks the container to be; `None` and empty fields take
/// the image's values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateOptions {
    /// Name; generated when `None`.
    pub name: Option<String>,
    /// Entrypoint override (`Some(vec![])` clears the image's; then the
    /// image's command is not used either, as Docker).
    pub entrypoint: Option<Vec<String>>,
    /// Command; empty means the image's.
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries laid over the image's environment.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Hostname (default: the short id).
    pub hostname: Option<String>,
    /// A pseudo-terminal.
    pub tty: bool,
    /// Keep stdin open.
    pub open_stdin: bool,
    /// The terminal size, with `tty`.
    pub console_size: Option<ConsoleSize>,
    /// `-p` specifications.
    pub ports: Vec<String>,
    /// Named volumes.
    pub volumes: Vec<VolumeMount>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in millicpus.
    pub cpu_millis: Option<u64>,
    /// Network mode.
    pub network: NetworkMode,
    /// User-defined networks ([`resolve_network`]).
    pub networks: Vec<crate::container::spec::NetworkAttachment>,
    /// Remove the container when it exits.
    pub auto_remove: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// When it starts again after it ends.
    pub restart: RestartPolicy,
    /// Boot its guest, never restore a template snapshot.
    pub cold_boot: bool,
    /// How much log it keeps.
    pub log: LogConfig,
    /// `--pids-limit`, `--read-only`, `--tmpfs`.
    pub restrictions: crate::container::spec::Restrictions,
}

/// Parses a network name: `default` (Docker's `bridge` too) or `none`.
pub fn parse_network(name: &str) -> Result<NetworkMode, CreateError> {
    match name {
        "default" | "bridge" | "" => Ok(NetworkMode::Default),
        "none" => Ok(NetworkMode::None),
        other => Err(CreateError::UnknownNetwork(other.to_string())),
    }
}

/// Resolves `--network NAME` (with `--network-alias`es): a built-in mode,
/// or a user-defined network of `data_dir` (the default network's NAT plus
/// its members).
pub fn resolve_network(
    data_dir: &Path,
    name: &str,
    aliases: &[String],
) -> Result<(NetworkMode, Vec<NetworkAttachment>), CreateError> {
    if let Some(bad) = aliases.iter().find(|a| !valid_alias(a)) {
        return Err(CreateError::BadAlias(bad.clone()));
    }
    match parse_network(name) {
        Ok(mode) if aliases.is_empty() => return Ok((mode, Vec::new())),
        Ok(_) => return Err(CreateError::AliasOnDefault),
        Err(_) => {}
    }
    let n = crate::net::networks::Networks::open(data_dir)
        .find(name)
        .map_err(|_| CreateError::UnknownNetwork(name.to_string()))?;
    Ok((
        NetworkMode::Default,
        vec![NetworkAttachment {
            network: n.name,
            aliases: aliases.to_vec(),
        }],
    ))
}

/// Whether `a` can be a network alias (a host name in `/etc/hosts`).
pub fn valid_alias(a: &str) -> bool {
    husk_proto::agent::valid_host_name(a)
}

/// Parses `NAME:/path[:ro|rw]` (a named volume; host paths are refused).
pub fn parse_volume(spec: &str) -> Result<VolumeMount, CreateError> {
    let bad = |why| CreateError::BadVolume {
        spec: spec.to_string(),
        why,
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (name, dest, mode) = match parts[..] {
        [n, d] => (n, d, "rw"),
        [n, d, m] => (n, d, m),
        _ => return Err(bad("expected NAME:/path[:ro]")),
    };
    if name.starts_with('/') || name.starts_with('.') {
        return Err(bad("husk mounts named volumes only (NAME:/path); host directories cannot be shared with a microVM"));
    }
    if !crate::storage::volume::valid_name(name) {
        return Err(bad(
            "volume names are at least 2 characters of [a-zA-Z0-9_.-], starting with a letter or digit",
        ));
    }
    volume_mount(name, dest, mode == "ro").and_then(|v| match mode {
        "ro" | "rw" => Ok(v),
        _ => Err(bad("the mode must be ro or rw")),
    })
}

/// A named volume at `dest`, which must be an absolute path without `..`.
pub fn volume_mount(name: &str, dest: &str, readonly: bool) -> Result<VolumeMount, CreateError> {
    if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
        return Err(CreateError::BadVolume {
            spec: format!("{name}:{dest}"),
            why: "the mount point must be an absolute path",
        });
    }
    Ok(VolumeMount {
        name: name.to_string(),
        destination: dest.to_string(),
        readonly,
    })
}

/// The image's config.
pub fn image_config(store: &Store, img: &StoredImage) -> Result<ImageConfig, CreateError> {
    let bad = |source: Box<dyn std::error::Error + Send + Sync>| CreateError::ImageConfig {
        image: img.reference.familiar(),
        source,
    };
    let bytes = store
        .read_blob(&img.manifest.config.digest)
        .map_err(|e| bad(Box::new(e)))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(Box::new(e)))
}

/// Entrypoint and command from the options over the image's.
fn argv(opts: &CreateOptions, ic: &ImageConfig) -> (Vec<String>, Vec<String>) {
    let rc = &ic.config;
    match &opts.entrypoint {
        Some(e) => {
            let e: Vec<String> = e.iter().filter(|s| !s.is_empty()).cloned().collect();
            (e, opts.cmd.clone())
        }
        None if opts.cmd.is_empty() => (
            rc.entrypoint.clone().unwrap_or_default(),
            rc.cmd.clone().unwrap_or_default(),
        ),
        None => (rc.entrypoint.clone().unwrap_or_default(), opts.cmd.clone()),
    }
}

/// Checks the options that do not depend on the image.
fn validate(opts: &CreateOptions) -> Result<(), CreateError> {
    if let Some(e) = opts.env.iter().find(|e| e.starts_with('=') || e.is_empty()) {
        return Err(CreateError::BadEnv(e.clone()));
    }
    for p in &opts.ports {
        p.parse::<crate::net::PortSpec>()?;
    }
    if opts.network == NetworkMode::None && !opts.ports.is_empty() {
        return Err(CreateError::PortsWithoutNetwork);
    }
    if opts.auto_remove && !opts.restart.is_no() {
        return Err(CreateError::RestartWithRm);
    }
    if let Some(m) = opts.memory_bytes.filter(|m| *m < 6 << 20) {
        return Err(CreateError::BadMemory(m));
    }
    validate_restrictions(opts)?;
    match &opts.name {
        Some(n) if !names::valid_name(n) => Err(CreateError::BadName(n.clone())),
        _ => Ok(()),
    }
}

/// Checks `--cap-add`/`--cap-drop` names and `--tmpfs` (and its paths
/// against the volumes').
fn validate_restrictions(opts: &CreateOptions) -> Result<(), CreateError> {
    let r = &opts.restrictions;
    r.security()?;
    husk_proto::mounts::validate_tmpfs(&r.tmpfs).map_err(CreateError::BadTmpfs)?;
    let clean = |p: &std::path::Path| p.components().collect::<std::path::PathBuf>();
    for t in &r.tmpfs {
        let dest = clean(&t.destination);
        if opts
            .volumes
            .iter()
            .any(|v| clean(std::path::Path::new(&v.destination)) == dest)
        {
            return Err(CreateError::DuplicateMount(dest.display().to_string()));
        }
    }
    Ok(())
}

/// Builds the container's config from the options and the image.
pub fn build_config(
    opts: &CreateOptions,
    img: &StoredImage,
    ic: &ImageConfig,
    id: &str,
) -> Result<ContainerConfig, CreateError> {
    validate(opts)?;
    let (entrypoint, cmd) = argv(opts, ic);
    if entrypoint.is_empty() && cmd.is_empty() {
        return Err(CreateError::NoCommand);
    }
    let rc = &ic.config;
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => names::for_id(id),
    };
    Ok(ContainerConfig {
        id: id.to_string(),
        name,
        created: crate::time::now_rfc3339(),
        image: img.reference.familiar(),
        image_digest: img.manifest_digest.clone(),
        process: ProcessSpec {
            entrypoint,
            cmd,
            env: super::env::merge_env(rc.env.clone().unwrap_or_default(), opts.env.clone()),
            workdir: opts
                .workdir
                .clone()
                .filter(|w| !w.is_empty())
                .or_else(|| rc.working_dir.clone())
                .unwrap_or_default(),
            user: opts
                .user
                .clone()
                .filter(|u| !u.is_empty())
                .or_else(|| rc.user.clone())
                .unwrap_or_default(),
            tty: opts.tty,
            open_stdin: opts.open_stdin,
            console_size: opts.console_size.filter(|_| opts.tty),
        },
        hostname: opts
            .hostname
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| short_id(id).to_string()),
        ports: opts.ports.clone(),
        volumes: opts.volumes.clone(),
        memory_bytes: opts.memory_bytes,
        cpu_millis: opts.cpu_millis,
        network: opts.network,
        auto_remove: opts.auto_remove,
        labels: opts.labels.clone(),
        networks: opts.networks.clone(),
        restart: opts.restart,
        cold_boot: opts.cold_boot || !crate::container::template::enabled_by_env(),
        log: opts.log,
        restrictions: opts.restrictions.clone(),
    })
}

/// Creates the container (config and `created` state written, nothing
/// started); a generated name that is taken is chosen again.
pub fn create(
    containers: &Containers,
    opts: &CreateOptions,
    img: &StoredImage,
    ic: &ImageConfig,
) -> Result<Handle, CreateError> {
    for attempt in 0..8 {
        let config = build_config(opts, img, ic, &new_id())?;
        match containers.create(&config) {
            Ok(h) => return Ok(h),
            Err(ContainerError::NameInUse { .. }) if opts.name.is_none() && attempt < 7 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(CreateError::NoName)
}

/// Starts a created (or stopped) container: its supervisor boots the
/// microVM, then the process starts. With `attach`, the returned connection
/// streams the process's stdio (`husk_proto::stdio` frames). When the start
/// fails, a container that never ran (`fresh`) or that asked for
/// auto-removal is removed (once its supervisor is gone), as Docker does:
/// `docker run --rm` waits for that removal after a failed start.
pub fn start(
    data_dir: &Path,
    containers: &Containers,
    h: &Handle,
    attach: Option<Attach>,
    fresh: bool,
) -> Result<UnixStream, ipc::IpcError> {
    let auto_remove = h.config().is_ok_and(|c| c.auto_remove);
    if let Err(e) = ipc::spawn_supervisor(data_dir, h, None) {
        if fresh || auto_remove {
            let _ = containers.remove(h);
        }
        return Err(e);
    }
    ipc::request(h, &Request::Start { attach }).inspect_err(|_| {
        ipc::wait_supervisor_gone(h, Duration::from_secs(30));
        if auto_remove {
            let _ = containers.remove(h);
        }
    })
}

/// Starts stopped container `h` from its checkpoint `name` (`husk start
/// --checkpoint`): its processes go on where the checkpoint left them.
pub fn start_from_checkpoint(h: &Handle, data_dir: &Path, name: &str) -> Result<(), ipc::IpcError> {
    ipc::spawn_supervisor(data_dir, h, Some(name))?;
    ipc::request(h, &Request::Start { attach: None })
        .inspect_err(|_| ipc::wait_supervisor_gone(h, Duration::from_secs(30)))
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::oci::{Descriptor, Manifest, RootFs, RunConfig};
    use crate::image::reference::Reference;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> (StoredImage, ImageConfig) {
        let d = Descriptor {
            media_type: String::new(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 0,
            platform: None,
            annotations: BTreeMap::new(),
        };
        let img = StoredImage {
            reference: Reference::parse("busybox").unwrap(),
            manifest_digest: d.digest.clone(),
            manifest: Manifest {
                schema_version: 2,
                media_type: None,
                config: d,
                layers: vec![],
            },
        };
        let owned = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
        let ic = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            config: RunConfig {
                user: None,
                env: Some(vec!["PATH=/bin".into()]),
                entrypoint: owned(entrypoint).filter(|v: &Vec<String>| !v.is_empty()),
                cmd: owned(cmd),
                working_dir: Some("/srv".into()),
            },
            rootfs: RootFs {
                type_: "layers".into(),
                diff_ids: vec![],
            },
            created: None,
        };
        (img, ic)
    }

    #[test]
    fn options_over_the_image() {
        let (img, ic) = image(&[], &["sh"]);
        let id = new_id();
        let opts = CreateOptions {
            cmd: vec!["echo".into(), "hi".into()],
            env: vec!["A=1".into()],
            labels: BTreeMap::from([("app".into(), "web".into())]),
            log: LogConfig {
                max_size: 1 << 20,
                max_file: 2,
            },
            ..CreateOptions::default()
        };
        let c = build_config(&opts, &img, &ic, &id).unwrap();
        assert_eq!(c.log, opts.log);
        assert_eq!(c.process.cmd, ["echo", "hi"]);
        assert_eq!(c.process.env, ["PATH=/bin", "A=1"]);
        assert_eq!(c.process.workdir, "/srv");
        assert_eq!(c.hostname, short_id(&id));
        assert_eq!(c.labels["app"], "web");
        assert!(!c.name.is_empty());
        // An entrypoint override drops the image's command; empty clears.
        let (img2, ic2) = image(&["/init"], &["serve"]);
        let c = build_config(&CreateOptions::default(), &img2, &ic2, &id).unwrap();
        assert_eq!(
            (c.process.entrypoint, c.process.cmd),
            (vec!["/init".into()], vec!["serve".into()])
        );
        let opts = CreateOptions {
            entrypoint: Some(vec![String::new()]),
            ..CreateOptions::default()
        };
        let e = build_config(&opts, &img2, &ic2, &id).unwrap_err();
        assert!(matches!(e, CreateError::NoCommand), "{e}");
    }

    #[test]
    fn bad_options() {
        let (img, ic) = image(&[], &["sh"]);
        let id = new_id();
        let cases = [
            CreateOptions {
                env: vec!["=x".into()],
                ..Default::default()
            },
            CreateOptions {
                ports: vec!["x:80".into()],
                ..Default::default()
            },
            CreateOptions {
                ports: vec!["80".into()],
                network: NetworkMode::None,
                ..Default::default()
            },
            CreateOptions {
                memory_bytes: Some(1024),
                ..Default::default()
            },
            CreateOptions {
                name: Some("a/b".into()),
                ..Default::default()
            },
        ];
        for o in cases {
            assert!(build_config(&o, &img, &ic, &id).is_err(), "{o:?}");
        }
        let tmpfs_on_a_volume = CreateOptions {
            volumes: vec![parse_volume("data:/srv/").unwrap()],
            restrictions: crate::container::spec::Restrictions {
                tmpfs: vec![crate::container::tmpfs::parse("/srv").unwrap()],
                ..Default::default()
            },
            ..Default::default()
        };
        let e = build_config(&tmpfs_on_a_volume, &img, &ic, &id).unwrap_err();
        assert_eq!(e.to_string(), "Duplicate mount point: /srv");
        assert!(matches!(parse_network("bridge"), Ok(NetworkMode::Default)));
        assert!(matches!(
            parse_network("host"),
            Err(CreateError::UnknownNetwork(_))
        ));
    }

    #[test]
    fn volumes() {
        let v = parse_volume("data:/srv:ro").unwrap();
        assert_eq!(
            v,
            VolumeMount {
                name: "data".into(),
                destination: "/srv".into(),
                readonly: true
            }
        );
        assert!(!parse_volume("data:/srv").unwrap().readonly);
        for bad in [
            "/host:/srv",
            "data",
            "data:rel",
            "data:/a:xx",
            "a:/b:c:d",
            "data:/../x",
        ] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn create_writes_the_container() {
        let d = tempfile::tempdir().unwrap();
        let cs = Containers::open(d.path()).unwrap();
        let (img, ic) = image(&[], &["sh"]);
        let opts = CreateOptions {
            name: Some("web".into()),
            ..CreateOptions::default()
        };
        let h = create(&cs, &opts, &img, &ic).unwrap();
        assert_eq!(h.config().unwrap().name, "web");
        let e = create(&cs, &opts, &img, &ic).unwrap_err();
        assert!(matches!(
            e,
            CreateError::Container(ContainerError::NameInUse { .. })
        ));
        // Generated names never collide.
        create(&cs, &CreateOptions::default(), &img, &ic).unwrap();
        assert_eq!(cs.ids().unwrap().len(), 2);
    }
}
