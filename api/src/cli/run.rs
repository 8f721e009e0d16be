//! `husk run [OPTIONS] IMAGE [COMMAND [ARG...]]`: pull the image when it is
//! missing, create the container, start its supervisor (which boots the
//! microVM) and either print the id (`-d`) or stream the container's stdio
//! and exit with its status.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Args};

use super::{attach, request, spawn_supervisor, wait_supervisor_gone, CliError, CliResult};
use crate::container::control::{Attach, Request};
use crate::container::spec::{
    parse_cpus, parse_memory, ContainerConfig, NetworkMode, ProcessConfig, VolumeMount,
};
use crate::container::state::{now_rfc3339, Timings};
use crate::container::{names, new_id, short_id, Containers, Handle};
use crate::image::default::ensure_default_image;
use crate::image::oci::ImageConfig;
use crate::image::reference::Reference;
use crate::image::registry::{config_credentials, Registry};
use crate::image::store::{Store, StoredImage};

/// Options of `husk run`.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    /// Run in the background and print the container ID.
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Keep stdin open and forward it.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to copy it from here).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines, # comments).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User: name|uid[:group|gid].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Container name.
    #[arg(long)]
    pub name: Option<String>,
    /// Container hostname.
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Override the image's entrypoint ("" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Publish a container port: [IP:]HOST:CONTAINER[/tcp|udp], or CONTAINER.
    #[arg(short, long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Mount a named volume: NAME:/path[:ro].
    #[arg(short, long = "volume", value_name = "NAME:PATH[:ro]")]
    pub volume: Vec<String>,
    /// Memory limit (e.g. 256m, 1g).
    #[arg(short, long)]
    pub memory: Option<String>,
    /// CPU limit (e.g. 1.5).
    #[arg(long)]
    pub cpus: Option<String>,
    /// Network: default (outbound access, -p) or none.
    #[arg(long, default_value = "default")]
    pub network: String,
    /// Print where start-up time went (on stderr) when the command returns.
    #[arg(long)]
    pub timings: bool,
    /// Suppress the pull output.
    #[arg(short, long)]
    pub quiet: bool,
    /// The image.
    pub image: String,
    /// Command and arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::new(125, msg)
}

/// Finds the image in the store, building the built-in default or pulling
/// it when missing.
pub fn resolve_image(store: &Store, image: &str, quiet: bool) -> Result<StoredImage, CliError> {
    let r = Reference::parse(image)
        .map_err(|e| usage(format!("invalid reference format: {image:?}: {e}")))?;
    if r.familiar() == "busybox:latest" {
        ensure_default_image(store).map_err(|e| usage(e.to_string()))?;
    }
    if let Ok(img) = store.image(&r) {
        return Ok(img);
    }
    if !quiet {
        eprintln!("Unable to find image '{}' locally", r.familiar());
    }
    let creds = config_credentials(&r.registry);
    Registry::new(&r, creds, quiet)
        .pull(store, &r)
        .map_err(|e| usage(crate::error::chain(&e)))?;
    store.image(&r).map_err(|e| usage(e.to_string()))
}

fn image_config(store: &Store, img: &StoredImage) -> Result<ImageConfig, CliError> {
    let bytes = store
        .read_blob(&img.manifest.config.digest)
        .map_err(|e| usage(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        usage(format!(
            "image {}: bad config: {e}",
            img.reference.familiar()
        ))
    })
}

/// `KEY=VALUE` stays; a bare `KEY` takes the value from this environment
/// (and is dropped when unset), as Docker does.
pub fn env_entry(e: &str) -> Option<String> {
    if e.contains('=') {
        Some(e.to_string())
    } else {
        std::env::var(e).ok().map(|v| format!("{e}={v}"))
    }
}

/// The `KEY=VALUE` entries of an `--env-file` (`#` comments, blank lines
/// skipped, bare `KEY`s as [`env_entry`]).
pub fn read_env_file(path: &Path) -> Result<Vec<String>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("open {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(env_entry)
        .collect())
}

/// Merges `KEY=VALUE` lists: later keys replace earlier ones.
fn merge_env(base: Vec<String>, extra: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in base.into_iter().chain(extra) {
        let key = e.split('=').next().unwrap_or("").to_string();
        out.retain(|x| x.split('=').next() != Some(key.as_str()));
        out.push(e);
    }
    out
}

/// Parses `-v NAME:/path[:ro|rw]`.
pub fn parse_volume(spec: &str) -> Result<VolumeMount, CliError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (name, dest, mode) = match parts[..] {
        [n, d] => (n, d, "rw"),
        [n, d, m] => (n, d, m),
        _ => return Err(usage(format!("invalid volume specification: {spec:?}"))),
    };
    if name.starts_with('/') || name.starts_with('.') {
        return Err(usage(format!(
            "invalid volume specification: {spec:?}: husk mounts named volumes only (NAME:/path); host directories cannot be shared with a microVM"
        )));
    }
    if !crate::volume::valid_name(name) {
        return Err(usage(format!(
            "invalid volume name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )));
    }
    if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
        return Err(usage(format!(
            "invalid volume specification: {spec:?}: the mount point must be an absolute path"
        )));
    }
    let readonly = match mode {
        "ro" => true,
        "rw" => false,
        m => return Err(usage(format!("invalid mode {m:?} in volume {spec:?}"))),
    };
    Ok(VolumeMount {
        name: name.to_string(),
        destination: dest.to_string(),
        readonly,
    })
}

/// Builds the container's config from the flags and the image.
pub fn build_config(
    args: &RunArgs,
    img: &StoredImage,
    ic: &ImageConfig,
    id: &str,
) -> Result<ContainerConfig, CliError> {
    let rc = &ic.config;
    let (entrypoint, cmd) = match &args.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), args.command.clone()),
        Some(e) => (vec![e.clone()], args.command.clone()),
        None => (
            rc.entrypoint.clone().unwrap_or_default(),
            if args.command.is_empty() {
                rc.cmd.clone().unwrap_or_default()
            } else {
                args.command.clone()
            },
        ),
    };
    if entrypoint.is_empty() && cmd.is_empty() {
        return Err(usage("No command specified"));
    }
    let mut extra = Vec::new();
    for f in &args.env_file {
        extra.extend(read_env_file(f)?);
    }
    extra.extend(args.env.iter().filter_map(|e| env_entry(e)));
    for e in &extra {
        if e.starts_with('=') {
            return Err(usage(format!("invalid environment variable: {e}")));
        }
    }
    let env = merge_env(rc.env.clone().unwrap_or_default(), extra);
    let network = match args.network.as_str() {
        "default" | "bridge" => NetworkMode::Default,
        "none" => NetworkMode::None,
        other => {
            return Err(usage(format!(
                "network {other} not found (husk has: default, none)"
            )))
        }
    };
    for p in &args.publish {
        p.parse::<crate::net::PortSpec>()
            .map_err(|e| usage(e.to_string()))?;
    }
    if network == NetworkMode::None && !args.publish.is_empty() {
        return Err(usage("cannot publish ports with --network none"));
    }
    let volumes = args
        .volume
        .iter()
        .map(|v| parse_volume(v))
        .collect::<Result<Vec<_>, _>>()?;
    let memory_bytes =
        match &args.memory {
            Some(m) => Some(parse_memory(m).filter(|b| *b >= 6 << 20).ok_or_else(|| {
                usage(format!("invalid memory {m:?} (at least 6m, e.g. 256m, 1g)"))
            })?),
            None => None,
        };
    let cpu_millis = match &args.cpus {
        Some(c) => Some(parse_cpus(c).ok_or_else(|| usage(format!("invalid --cpus {c:?}")))?),
        None => None,
    };
    let name = match &args.name {
        Some(n) => {
            if !names::valid_name(n) {
                return Err(usage(format!(
                    "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                )));
            }
            n.clone()
        }
        None => names::generate(&hex::decode(&id[..8]).unwrap_or_default()),
    };
    Ok(ContainerConfig {
        id: id.to_string(),
        name,
        created: now_rfc3339(),
        image: img.reference.familiar(),
        image_digest: img.manifest_digest.clone(),
        process: ProcessConfig {
            entrypoint,
            cmd,
            env,
            workdir: args
                .workdir
                .clone()
                .or_else(|| rc.working_dir.clone())
                .unwrap_or_default(),
            user: args
                .user
                .clone()
                .or_else(|| rc.user.clone())
                .unwrap_or_default(),
            tty: args.tty,
            stdin: args.interactive,
            console_size: if args.tty {
                attach::terminal_size()
            } else {
                None
            },
        },
        hostname: args
            .hostname
            .clone()
            .unwrap_or_else(|| short_id(id).to_string()),
        ports: args.publish.clone(),
        volumes,
        memory_bytes,
        cpu_millis,
        network,
        auto_remove: args.rm,
    })
}

/// Creates the container and its config; a generated name that is taken
/// is chosen again.
fn create(
    containers: &Containers,
    args: &RunArgs,
    img: &StoredImage,
    ic: &ImageConfig,
) -> Result<Handle, CliError> {
    for attempt in 0..8 {
        let id = new_id();
        let config = build_config(args, img, ic, &id)?;
        match containers.create(&config) {
            Ok(h) => return Ok(h),
            Err(crate::container::ContainerError::NameInUse { .. })
                if args.name.is_none() && attempt < 7 => {}
            Err(e) => return Err(CliError::new(125, e.to_string())),
        }
    }
    Err(CliError::new(125, "could not choose a container name"))
}

/// Prints the start-up breakdown on stderr.
pub fn print_timings(t: &Timings) {
    eprintln!(
        "husk: start-up {:.0} ms: rootfs {:.0} ms{}, vmm {:.0} ms, kernel {:.0} ms, agent {:.0} ms, rootfs mount {:.0} ms, exec {:.0} ms",
        t.total_ms,
        t.rootfs_ms,
        if t.rootfs_built { " (built)" } else { " (cached)" },
        t.vmm_ms,
        t.kernel_ms,
        t.agent_ms,
        t.create_ms,
        t.exec_ms
    );
}

/// Starts a created container's supervisor and its process; attaches when
/// asked. Shared by `run` and `start`.
pub fn start_and_attach(
    data_dir: &Path,
    containers: &Containers,
    h: &Handle,
    attach_opts: Option<Attach>,
    show_timings: bool,
    fresh: bool,
) -> CliResult {
    let auto_remove = h.config().map(|c| c.auto_remove).unwrap_or(false);
    let cleanup_failed = |e: CliError| {
        wait_supervisor_gone(h, Duration::from_secs(30));
        if auto_remove {
            let _ = containers.remove(h);
        }
        Err(e)
    };
    if let Err(e) = spawn_supervisor(data_dir, h) {
        // A new container that never ran leaves nothing behind.
        if fresh {
            let _ = containers.remove(h);
        }
        return Err(e);
    }
    let stdin = attach_opts.as_ref().is_some_and(|a| a.stdin);
    let conn = match request(
        h,
        &Request::Start {
            attach: attach_opts.clone(),
        },
    ) {
        Ok(c) => c,
        Err(e) => return cleanup_failed(e),
    };
    let timings = h.state().ok().and_then(|s| s.timings);
    let Some(_) = attach_opts else {
        if show_timings {
            if let Some(t) = &timings {
                print_timings(t);
            }
        }
        return Ok(0);
    };
    let tty = h.config().map(|c| c.process.tty).unwrap_or(false);
    let code =
        attach::stream(conn, stdin, tty).map_err(|e| CliError::new(125, format!("attach: {e}")))?;
    if show_timings {
        if let Some(t) = &timings {
            print_timings(t);
        }
    }
    match code {
        Some(c) => Ok(c),
        None => {
            // The supervisor went away without an exit status.
            let st = h.live_state().ok();
            match st.and_then(|s| s.exit_code) {
                Some(c) => Ok(c),
                None => Err(CliError::new(125, "lost the container's supervisor")),
            }
        }
    }
}

/// Resolves the image (pulling it when missing) and creates the container
/// (config written, nothing started).
fn create_container(data_dir: &Path, args: &RunArgs) -> Result<(Containers, Handle), CliError> {
    // A missing kernel or VMM is reported before anything is created.
    crate::assets::find().map_err(|e| CliError::new(125, e.to_string()))?;
    let store =
        Store::open(&data_dir.join("images")).map_err(|e| CliError::new(125, e.to_string()))?;
    let img = resolve_image(&store, &args.image, args.quiet)?;
    let ic = image_config(&store, &img)?;
    let containers = super::containers(data_dir).map_err(|e| CliError::new(125, e.message))?;
    let h = create(&containers, args, &img, &ic)?;
    Ok((containers, h))
}

/// `husk create`: the container exists (`ps -a` shows it `Created`); its
/// microVM boots at `husk start`.
pub fn create_only(data_dir: &Path, args: RunArgs) -> CliResult {
    let (_, h) = create_container(data_dir, &args)?;
    println!("{}", h.id);
    Ok(0)
}

/// `husk run`.
pub fn run(data_dir: &Path, args: RunArgs) -> CliResult {
    let (containers, h) = create_container(data_dir, &args)?;
    if args.detach {
        start_and_attach(data_dir, &containers, &h, None, args.timings, true)?;
        println!("{}", h.id);
        return Ok(0);
    }
    let attach = Attach {
        stdin: args.interactive,
        console_size: if args.tty {
            attach::terminal_size()
        } else {
            None
        },
    };
    start_and_attach(data_dir, &containers, &h, Some(attach), args.timings, true)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let e = parse_volume(bad).unwrap_err();
            assert_eq!(e.status, 125, "{bad}");
        }
    }

    #[test]
    fn env_merging() {
        let m = merge_env(
            vec!["PATH=/bin".into(), "A=1".into()],
            vec!["A=2".into(), "B=3".into()],
        );
        assert_eq!(m, vec!["PATH=/bin", "A=2", "B=3"]);
        std::env::set_var("HUSK_TEST_ENV_X", "y");
        assert_eq!(
            env_entry("HUSK_TEST_ENV_X"),
            Some("HUSK_TEST_ENV_X=y".into())
        );
        assert_eq!(env_entry("HUSK_TEST_ENV_UNSET_Q"), None);
    }

    #[test]
    fn env_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("env");
        std::fs::write(&p, "# comment\nA=1\n\nB=two words\n").unwrap();
        assert_eq!(read_env_file(&p).unwrap(), vec!["A=1", "B=two words"]);
        assert_eq!(
            read_env_file(&d.path().join("nope")).unwrap_err().status,
            125
        );
    }
}
