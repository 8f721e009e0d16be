//! `husk`: containers in microVMs, used like Docker: `run`, `ps`, `logs`,
//! `exec`, `stop`, `rm`, ..., images (`pull`, `images`, `rmi`, `save`,
//! `load`, `gc`). Errors are one line on stderr; statuses as Docker's (125
//! for husk's own errors and bad usage in `run`, 126/127 for a command that
//! cannot run, else the container's status; 1 for other commands).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use husk::cli::{self, CliError};
use husk::image::default::ensure_default_image;
use husk::image::layout;
use husk::image::reference::Reference;
use husk::image::registry::{Credentials, Registry};
use husk::image::store::Store;

/// husk: containers in microVMs.
#[derive(Debug, Parser)]
#[command(name = "husk", version, about)]
struct Cli {
    /// Data directory (images, containers); default /var/lib/husk as root,
    /// else $XDG_DATA_HOME/husk. Also HUSK_DATA_DIR.
    #[arg(long, global = true, env = "HUSK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a command in a new container (its own microVM).
    Run(Box<cli::run::RunArgs>),
    /// Create a container without starting it (`husk start` boots it).
    Create(Box<cli::run::RunArgs>),
    /// List containers.
    Ps(cli::ps::PsArgs),
    /// Stop running containers (SIGTERM, then SIGKILL).
    Stop(cli::lifecycle::StopArgs),
    /// Send a signal to running containers.
    Kill(cli::lifecycle::KillArgs),
    /// Remove containers.
    Rm(cli::lifecycle::RmArgs),
    /// Start stopped containers (each boots a new microVM).
    Start(cli::lifecycle::StartArgs),
    /// Stop, then start containers again.
    Restart(cli::lifecycle::RestartArgs),
    /// Attach to a running container's output (and stdin).
    Attach(cli::lifecycle::AttachArgs),
    /// List a container's published ports.
    Port(cli::lifecycle::PortArgs),
    /// Block until containers stop; print their exit statuses.
    Wait(cli::lifecycle::WaitArgs),
    /// Fetch a container's logs.
    Logs(cli::logs::LogsArgs),
    /// Run a command in a running container.
    Exec(cli::exec::ExecArgs),
    /// Show containers' configuration and state as JSON.
    Inspect(cli::inspect::InspectArgs),
    /// Manage named volumes (disks the host keeps).
    #[command(subcommand)]
    Volume(cli::volume::VolumeCmd),
    /// In the husk machine: whether the store has REF as DIGEST (status 0).
    #[command(hide = true)]
    ImagePresent {
        /// Reference.
        reference: String,
        /// Manifest digest.
        digest: String,
    },
    /// In the husk machine: load a tarred OCI layout from stdin as REF.
    #[command(hide = true)]
    ImageReceive {
        /// Reference.
        reference: String,
    },
    /// The supervisor of one container (started by `run` and `start`).
    #[command(hide = true)]
    ContainerSupervise {
        /// Container id.
        id: String,
    },
    /// Pull an image from a registry.
    Pull {
        /// Image reference (busybox, host:5000/ns/name:tag, name@sha256:...).
        image: String,
        /// Registry user name (or HUSK_REGISTRY_USER).
        #[arg(long, env = "HUSK_REGISTRY_USER")]
        user: Option<String>,
        /// Registry password (or HUSK_REGISTRY_PASSWORD).
        #[arg(long, env = "HUSK_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List images.
    Images,
    /// Remove an image name (blobs go with `husk gc`).
    Rmi {
        /// Image references.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Write an image as an OCI image layout directory.
    Save {
        /// Output directory.
        #[arg(short, long)]
        output: PathBuf,
        /// Image reference.
        image: String,
    },
    /// Load images from a `docker save` tarball or an OCI image layout (directory or tar).
    Load {
        /// A `docker save` tarball, an OCI layout directory or a tarred OCI layout.
        #[arg(short, long)]
        input: PathBuf,
        /// Repository name to tag the images with (default: the directory name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove blobs and rootfs disks no image uses.
    Gc,
    /// Manage the helper VM used on hosts without hardware virtualization.
    Machine {
        #[command(subcommand)]
        cmd: husk::cli::machine::MachineCmd,
    },
}

fn data_dir(cli: Option<PathBuf>) -> PathBuf {
    cli.unwrap_or_else(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            PathBuf::from("/var/lib/husk")
        } else {
            std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
                .unwrap_or_else(|| PathBuf::from("."))
                .join("husk")
        }
    })
}

fn run(cli: Cli) -> Result<i32, CliError> {
    let data = data_dir(cli.data_dir);
    let anyhow_status = |r: anyhow::Result<()>| {
        r.map(|()| 0)
            .map_err(|e| CliError::new(1, format!("{e:#}")))
    };
    match cli.cmd {
        Cmd::Run(a) => cli::run::run(&data, *a),
        Cmd::Create(a) => cli::run::create_only(&data, *a),
        Cmd::Restart(a) => cli::lifecycle::restart(&data, a),
        Cmd::Attach(a) => cli::lifecycle::attach(&data, a),
        Cmd::Port(a) => cli::lifecycle::port(&data, a),
        Cmd::Ps(a) => cli::ps::run(&data, a),
        Cmd::Stop(a) => cli::lifecycle::stop(&data, a),
        Cmd::Kill(a) => cli::lifecycle::kill(&data, a),
        Cmd::Rm(a) => cli::lifecycle::rm(&data, a),
        Cmd::Start(a) => cli::lifecycle::start(&data, a),
        Cmd::Wait(a) => cli::lifecycle::wait(&data, a),
        Cmd::Logs(a) => cli::logs::run(&data, a),
        Cmd::Exec(a) => cli::exec::run(&data, a),
        Cmd::Inspect(a) => cli::inspect::run(&data, a),
        Cmd::Volume(v) => {
            let volumes = husk::volume::Volumes::open(&data.join("volumes"))?;
            let containers = cli::containers(&data)?;
            let in_use = |name: &str| {
                containers.list().ok().and_then(|all| {
                    all.into_iter()
                        .find(|(c, _)| c.volumes.iter().any(|v| v.name == name))
                        .map(|(c, _)| c.id)
                })
            };
            cli::volume::run(v, &volumes, &in_use)?;
            Ok(0)
        }
        Cmd::Machine { cmd } => {
            let ports = husk::cli::machine::container_ports(data.clone());
            husk::cli::machine::run(cmd, &data, ports)
                .map_err(|e| CliError::new(1, husk::error::chain(&e)))
        }
        Cmd::ImagePresent { reference, digest } => {
            let store = Store::open(&data.join("images"))?;
            Ok(i32::from(!husk::machine::images::image_present(
                &store, &reference, &digest,
            )))
        }
        Cmd::ImageReceive { reference } => {
            let store = Store::open(&data.join("images"))?;
            husk::machine::images::image_receive(&store, &reference, std::io::stdin().lock())
                .map_err(|e| CliError::new(1, format!("receiving {reference}: {e}")))?;
            Ok(0)
        }
        Cmd::ContainerSupervise { id } => {
            // The CLI reads our ready line from stdout; afterwards stdout
            // points nowhere.
            let ready = std::fs::File::from(
                std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| CliError::new(1, e.to_string()))?,
            );
            if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
                let _ = nix::unistd::dup2_stdout(&null);
            }
            Ok(husk::container::supervisor::supervise(&data, &id, ready))
        }
        other => anyhow_status(images(&data, other)),
    }
}

fn images(data: &std::path::Path, cmd: Cmd) -> anyhow::Result<()> {
    let store = Store::open(&data.join("images"))?;
    match cmd {
        Cmd::Pull {
            image,
            user,
            password,
            quiet,
        } => {
            let r = Reference::parse(&image)?;
            let creds = match (user, password) {
                (Some(user), Some(password)) => Some(Credentials { user, password }),
                (None, None) => husk::image::registry::config_credentials(&r.registry),
                _ => anyhow::bail!("give both --user and --password, or neither"),
            };
            let digest = Registry::new(&r, creds, quiet).pull(&store, &r)?;
            if !quiet {
                println!("Digest: {digest}");
                println!("Status: Downloaded image for {}", r.familiar());
            }
            println!("{r}");
        }
        Cmd::Images => {
            ensure_default_image(&store)?;
            println!(
                "{:<40} {:<16} {:<14} {:>10}",
                "REPOSITORY", "TAG", "IMAGE ID", "SIZE"
            );
            for (name, digest) in store.refs()? {
                let r = Reference::parse(&name)?;
                let m = store.manifest(&digest)?;
                let size: u64 = m.layers.iter().map(|l| l.size).sum::<u64>() + m.config.size;
                let repo = r
                    .familiar()
                    .rsplit_once(':')
                    .map(|(a, _)| a.to_string())
                    .unwrap_or_else(|| r.familiar());
                println!(
                    "{:<40} {:<16} {:<14} {:>9.1}MB",
                    repo.split('@').next().unwrap_or(""),
                    r.tag.as_deref().unwrap_or("<none>"),
                    &m.config.digest[7..19],
                    size as f64 / 1e6
                );
            }
        }
        Cmd::Rmi { images } => {
            for i in images {
                let r = Reference::parse(&i)?;
                if !store.untag(&r)? {
                    anyhow::bail!("No such image: {i}");
                }
                println!("Untagged: {}", r.familiar());
            }
        }
        Cmd::Save { output, image } => {
            ensure_default_image(&store)?;
            layout::save(&store, &Reference::parse(&image)?, &output)?;
        }
        Cmd::Load { input, name } => {
            for r in layout::load_any(&store, &input, name.as_deref())? {
                println!("Loaded image: {}", r.familiar());
            }
        }
        Cmd::Gc => {
            println!("removed {} blobs", store.gc()?);
            let cache = husk::rootfs::RootfsCache::open(&data.join("rootfs"))?;
            let n = cache.remove_unused(&husk::rootfs::referenced_keys(&store)?)?;
            println!("removed {n} rootfs disks");
        }
        _ => {}
    }
    Ok(())
}

/// Runs the command in the husk machine; a `run` gets its image from this
/// host's store and its host-side arguments resolved first.
fn forward(
    data: &std::path::Path,
    cmd: &Cmd,
    args: Vec<std::ffi::OsString>,
) -> husk::machine::Result<i32> {
    use husk::machine::images;
    let mut argv = husk::machine::strip_data_dir(args)?;
    if let Cmd::Run(a) | Cmd::Create(a) = cmd {
        let client = husk::machine::client(data)?;
        images::sync_image(data, &client, &a.image, a.quiet)?;
        argv = images::rewrite_run_args(argv)?;
    }
    let tty = husk::machine::wants_tty(&argv);
    husk::machine::run_in_machine(data, husk::machine::proto::Kind::Husk, argv, tty)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, as Docker: the error without clap's usage block.
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("bad usage")
                .trim_start_matches("error: ");
            eprintln!("husk: {first}\nSee 'husk --help'.");
            return ExitCode::from(125);
        }
    };
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if husk::machine::should_forward_args(&args) {
        return match forward(&data_dir(cli.data_dir.clone()), &cli.cmd, args) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => {
                eprintln!("husk: {}", husk::error::chain(&e));
                ExitCode::from(125)
            }
        };
    }
    match run(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            eprintln!("husk: {}", e.message);
            ExitCode::from(u8::try_from(e.status.clamp(0, 255)).unwrap_or(1))
        }
    }
}
