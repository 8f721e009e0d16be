//! `husk run [OPTIONS] IMAGE [COMMAND [ARG...]]`: pull the image when it is
//! missing, create the container, start its supervisor (which boots the
//! microVM) and either print the id (`-d`) or stream the container's stdio
//! and exit with its status.

use std::path::{Path, PathBuf};

use clap::{ArgAction, Args};

use super::{attach, CliError, CliResult};
use crate::container::control::Attach;
use crate::container::create::{self, CreateError, CreateOptions};
use crate::container::env::{env_entry, read_env_file};
use crate::container::logs::LogConfig;
use crate::container::restart::RestartPolicy;
use crate::container::spec::{parse_cpus, parse_memory, Restrictions, VolumeMount};
use crate::container::state::Timings;
use crate::container::tmpfs;
use crate::container::{Containers, Handle};
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
    /// Restart policy: no, always, unless-stopped, on-failure[:N].
    #[arg(long, default_value = "no", value_parser = parse_restart)]
    pub restart: RestartPolicy,
    /// Boot the guest instead of restoring a template snapshot (as
    /// HUSK_SNAPSHOT=0 does).
    #[arg(long)]
    pub no_snapshot: bool,
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
    /// Process limit: at most N tasks (the container's pids.max); 0 or -1
    /// for none.
    #[arg(long = "pids-limit", value_name = "N", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// Add a Linux capability to Docker's default set (ALL for every one).
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability from Docker's default set (ALL for every
    /// one).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Security option: no-new-privileges (set-user-id programs gain
    /// nothing).
    #[arg(long = "security-opt", value_name = "OPTION")]
    pub security_opt: Vec<String>,
    /// Mount the container's root file system read-only (its volumes and
    /// tmpfs mounts stay writable).
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Mount a tmpfs: PATH[:OPTIONS] (rw|ro, exec|noexec, suid|nosuid,
    /// dev|nodev, size=64m, mode=1777; default rw,noexec,nosuid,nodev).
    #[arg(long, value_name = "PATH[:OPTIONS]")]
    pub tmpfs: Vec<String>,
    /// Network: default (outbound access, -p), none, or a user-defined
    /// network (`husk network create`).
    #[arg(long, default_value = "default")]
    pub network: String,
    /// Another name the container has on its user-defined network.
    #[arg(long = "network-alias", value_name = "ALIAS")]
    pub network_alias: Vec<String>,
    /// Logging driver: local or json-file (the same here: husk keeps the
    /// log itself, rotated as Docker's local driver).
    #[arg(long = "log-driver", value_name = "DRIVER")]
    pub log_driver: Option<String>,
    /// Log option: max-size=SIZE (e.g. 10m), max-file=N (1 to 100),
    /// compress=false.
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    pub log_opt: Vec<String>,
    /// Set a label on the container (KEY=VALUE, or KEY for an empty value).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
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

fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    RestartPolicy::parse(s).map_err(|e| e.to_string())
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::new(125, msg)
}

fn create_error(e: CreateError) -> CliError {
    usage(crate::error::chain(&e))
}

/// The stored image, pulled when missing; failures are husk's (125).
pub fn resolve_image(store: &Store, image: &str, quiet: bool) -> Result<StoredImage, CliError> {
    crate::image::resolve::resolve_image(store, image, quiet)
        .map_err(|e| usage(crate::error::chain(&e)))
}

/// Parses `-v NAME:/path[:ro|rw]`.
pub fn parse_volume(spec: &str) -> Result<VolumeMount, CliError> {
    create::parse_volume(spec).map_err(create_error)
}

/// `--pids-limit`, `--read-only`, `--tmpfs`, `--cap-add`, `--cap-drop`
/// and `--security-opt`.
fn restrictions(args: &RunArgs) -> Result<Restrictions, CliError> {
    let tmpfs = args
        .tmpfs
        .iter()
        .map(|t| tmpfs::parse(t).map_err(|e| usage(crate::error::chain(&e))))
        .collect::<Result<Vec<_>, _>>()?;
    let no_new_privileges = crate::container::spec::parse_security_opts(&args.security_opt)
        .map_err(|e| usage(e.to_string()))?;
    Ok(Restrictions {
        pids_limit: args
            .pids_limit
            .and_then(|n| u64::try_from(n).ok())
            .filter(|n| *n > 0),
        readonly_rootfs: args.read_only,
        tmpfs,
        cap_add: args.cap_add.clone(),
        cap_drop: args.cap_drop.clone(),
        no_new_privileges,
    })
}

/// The typed create options of the flags (`--env-file` read, `-e KEY`
/// taken from this environment, sizes parsed).
pub fn create_options(data_dir: &Path, args: &RunArgs) -> Result<CreateOptions, CliError> {
    let mut env = Vec::new();
    for f in &args.env_file {
        env.extend(read_env_file(f).map_err(|e| usage(crate::error::chain(&e)))?);
    }
    env.extend(args.env.iter().filter_map(|e| env_entry(e)));
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
    let (network, networks) = create::resolve_network(data_dir, &args.network, &args.network_alias)
        .map_err(create_error)?;
    let log = log_config(args)?;
    let restrictions = restrictions(args)?;
    Ok(CreateOptions {
        name: args.name.clone(),
        entrypoint: args.entrypoint.as_ref().map(|e| {
            if e.is_empty() {
                Vec::new()
            } else {
                vec![e.clone()]
            }
        }),
        cmd: args.command.clone(),
        env,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        hostname: args.hostname.clone(),
        tty: args.tty,
        open_stdin: args.interactive,
        console_size: if args.tty {
            attach::terminal_size()
        } else {
            None
        },
        ports: args.publish.clone(),
        volumes: args
            .volume
            .iter()
            .map(|v| parse_volume(v))
            .collect::<Result<Vec<_>, _>>()?,
        memory_bytes,
        cpu_millis,
        network,
        networks,
        auto_remove: args.rm,
        labels: labels(&args.label)?,
        restrictions,
        restart: args.restart,
        cold_boot: args.no_snapshot,
        log,
    })
}

/// The labels of `--label KEY=VALUE` (`KEY` alone: an empty value), as
/// Docker's; an empty key is a 125.
fn labels(args: &[String]) -> Result<std::collections::BTreeMap<String, String>, CliError> {
    args.iter()
        .map(|l| {
            let (k, v) = super::label_pair(l);
            if k.trim().is_empty() {
                return Err(usage(format!("invalid label {l:?}: the key is empty")));
            }
            Ok((k, v))
        })
        .collect()
}

/// The log limits of `--log-driver` and `--log-opt`; refusals are 125s.
fn log_config(args: &RunArgs) -> Result<LogConfig, CliError> {
    LogConfig::parse(args.log_driver.as_deref().unwrap_or(""), &args.log_opt)
        .map_err(|e| usage(e.to_string()))
}

/// Prints the start-up breakdown on stderr: a restored template's
/// `restore` (and the template's build, when this start made it) or a
/// boot's `kernel` and `agent`.
pub fn print_timings(t: &Timings) {
    let guest = if t.restore_ms > 0.0 {
        let template = if t.template_ms > 0.0 {
            format!(" (template built in {:.0} ms)", t.template_ms)
        } else {
            String::new()
        };
        format!("restore {:.0} ms{template}", t.restore_ms)
    } else {
        format!("kernel {:.0} ms, agent {:.0} ms", t.kernel_ms, t.agent_ms)
    };
    eprintln!(
        "husk: start-up {:.0} ms: rootfs {:.0} ms{}, vmm {:.0} ms, {guest}, rootfs mount {:.0} ms, exec {:.0} ms",
        t.total_ms,
        t.rootfs_ms,
        if t.rootfs_built { " (built)" } else { " (cached)" },
        t.vmm_ms,
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
    let stdin = attach_opts.as_ref().is_some_and(|a| a.stdin);
    let conn = create::start(data_dir, containers, h, attach_opts.clone(), fresh)
        .map_err(super::ipc_error)?;
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
    // A missing kernel or VMM and bad flags are reported before anything
    // is pulled or created.
    crate::assets::find().map_err(|e| CliError::new(125, e.to_string()))?;
    let opts = create_options(data_dir, args)?;
    let store = Store::open(&data_dir.join("images"))
        .map_err(|e| CliError::new(125, crate::error::chain(&e)))?;
    let img = resolve_image(&store, &args.image, args.quiet)?;
    let ic = create::image_config(&store, &img).map_err(create_error)?;
    let containers = super::containers(data_dir).map_err(|e| CliError::new(125, e.message))?;
    let h = create::create(&containers, &opts, &img, &ic).map_err(create_error)?;
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

    fn args(extra: &[&str]) -> RunArgs {
        #[derive(clap::Parser)]
        #[command(disable_help_flag = true)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let argv = ["husk"].iter().chain(extra).chain(&["busybox"]).copied();
        <Cli as clap::Parser>::parse_from(argv).run
    }

    #[test]
    fn labels_are_key_value_or_key() {
        let got = labels(&["a=1".into(), "b".into(), "c=x=y".into()]).unwrap();
        let want: Vec<(&str, &str)> = vec![("a", "1"), ("b", ""), ("c", "x=y")];
        assert_eq!(
            got.iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
            want
        );
        assert_eq!(labels(&["=v".into()]).unwrap_err().status, 125);
    }

    #[test]
    fn log_options() {
        let a = args(&["--log-opt", "max-size=10m", "--log-opt", "max-file=3"]);
        let c = log_config(&a).unwrap();
        assert_eq!((c.max_size, c.max_file), (10 << 20, 3));
        let a = args(&["--log-driver", "json-file", "--log-opt=max-file=2"]);
        assert_eq!(log_config(&a).unwrap().max_file, 2);
        assert_eq!(log_config(&args(&[])).unwrap(), LogConfig::default());
        for bad in [
            &["--log-opt", "max-size=abc"][..],
            &["--log-opt", "max-file"],
            &["--log-opt", "compress=true"],
            &["--log-driver", "none"],
            &["--log-driver", "syslog"],
        ] {
            let e = log_config(&args(bad)).unwrap_err();
            assert_eq!(e.status, 125, "{bad:?}");
            assert!(!e.message.contains('\n'), "{}", e.message);
        }
    }

    #[test]
    fn a_bad_volume_is_a_125() {
        assert!(parse_volume("data:/srv:ro").unwrap().readonly);
        for bad in ["/host:/srv", "data:rel"] {
            assert_eq!(parse_volume(bad).unwrap_err().status, 125, "{bad}");
        }
    }

    #[test]
    fn pids_limit_read_only_and_tmpfs_flags() {
        let a = args(&[
            "--pids-limit",
            "32",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--tmpfs=/run:exec,size=1m",
        ]);
        let r = restrictions(&a).unwrap();
        assert_eq!(r.pids_limit, Some(32));
        assert!(r.readonly_rootfs);
        assert_eq!(r.tmpfs.len(), 2);
        assert_eq!(r.tmpfs[1].size_bytes, Some(1 << 20));
        assert_eq!(
            restrictions(&args(&["--pids-limit", "-1"]))
                .unwrap()
                .pids_limit,
            None
        );
        assert_eq!(restrictions(&args(&[])).unwrap(), Restrictions::default());
        let a = args(&[
            "--cap-add",
            "NET_ADMIN",
            "--cap-drop=ALL",
            "--security-opt",
            "no-new-privileges",
        ]);
        let r = restrictions(&a).unwrap();
        assert_eq!((r.cap_add.len(), r.cap_drop.len()), (1, 1));
        assert!(r.no_new_privileges);
        let e = restrictions(&args(&["--security-opt", "apparmor=x"])).unwrap_err();
        assert!(
            e.message
                .starts_with("husk cannot apply --security-opt \"apparmor=x\""),
            "{}",
            e.message
        );
        let e = restrictions(&args(&["--tmpfs", "/t:bogus"])).unwrap_err();
        assert_eq!(e.status, 125);
        assert!(
            e.message.contains("option \"bogus\" is not supported"),
            "{}",
            e.message
        );
    }
}
