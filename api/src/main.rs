//! `husk`: containers in microVMs, used like Docker: `run`, `ps`, `logs`,
//! `exec`, `stop`, `rm`, ..., images (`pull`, `images`, `rmi`, `save`,
//! `load`, `gc`). Errors are one line on stderr; statuses as Docker's (125
//! for husk's own errors and bad usage in `run`, 126/127 for a command that
//! cannot run, else the container's status; 1 for other commands).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use husk::cli::{self, CliError};

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
    /// Pause the microVMs of running containers (their vCPUs stop).
    Pause(cli::pause::PauseArgs),
    /// Resume paused containers.
    Unpause(cli::pause::PauseArgs),
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
    /// Display the running processes of a container (its own ps).
    Top(cli::top::TopArgs),
    /// Copy files between a running container and this host (or a tar on stdin/stdout).
    Cp(cli::cp::CpArgs),
    /// In the husk machine: the stat of PATH in CONTAINER as JSON (null if none).
    #[command(hide = true)]
    ContainerPathStat {
        /// Container.
        container: String,
        /// Path in it.
        path: String,
    },
    /// Show containers' configuration and state as JSON.
    Inspect(cli::inspect::InspectArgs),
    /// Manage user-defined networks (members reach and resolve each other).
    #[command(subcommand)]
    Network(cli::network::NetworkCmd),
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
        /// Start from this checkpoint instead of booting.
        #[arg(long)]
        checkpoint: Option<String>,
    },
    /// Make a new container from a running one's microVM as it is now.
    Fork(cli::checkpoint::ForkArgs),
    /// Manage checkpoints of containers (their microVM saved whole).
    #[command(subcommand)]
    Checkpoint(cli::checkpoint::CheckpointCmd),
    /// Pull an image from a registry.
    Pull(cli::images::PullArgs),
    /// List images.
    Images,
    /// Remove an image name (blobs go with `husk gc`).
    Rmi(cli::images::RmiArgs),
    /// Write an image as an OCI image layout directory.
    Save(cli::images::SaveArgs),
    /// Load images from a `docker save` tarball or an OCI image layout (directory or tar).
    Load(cli::images::LoadArgs),
    /// Remove blobs and rootfs disks no image uses.
    Gc,
    /// Serve the Docker Engine API on a Unix socket (docker, docker-py).
    Serve(cli::serve::ServeArgs),
    /// Measure microVM against container start-up (table, optional PNG plot).
    Bench(cli::bench::BenchArgs),
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
    husk::storage::private::ensure_private_dir(&data)
        .map_err(|e| CliError::new(125, husk::error::chain(&e)))?;
    match cli.cmd {
        Cmd::Run(a) => cli::run::run(&data, *a),
        Cmd::Create(a) => cli::run::create_only(&data, *a),
        Cmd::Restart(a) => cli::lifecycle::restart(&data, a),
        Cmd::Attach(a) => cli::lifecycle::attach(&data, a),
        Cmd::Pause(a) => cli::pause::run(&data, a, true),
        Cmd::Unpause(a) => cli::pause::run(&data, a, false),
        Cmd::Port(a) => cli::lifecycle::port(&data, a),
        Cmd::Ps(a) => cli::ps::run(&data, a),
        Cmd::Stop(a) => cli::lifecycle::stop(&data, a),
        Cmd::Kill(a) => cli::lifecycle::kill(&data, a),
        Cmd::Rm(a) => cli::lifecycle::rm(&data, a),
        Cmd::Start(a) => cli::lifecycle::start(&data, a),
        Cmd::Wait(a) => cli::lifecycle::wait(&data, a),
        Cmd::Logs(a) => cli::logs::run(&data, a),
        Cmd::Exec(a) => cli::exec::run(&data, a),
        Cmd::Cp(a) => cli::cp::run(&data, a),
        Cmd::Top(a) => cli::top::run(&data, a),
        Cmd::ContainerPathStat { container, path } => cli::cp::print_stat(&data, &container, &path),
        Cmd::Inspect(a) => cli::inspect::run(&data, a),
        Cmd::Volume(v) => cli::volume::dispatch(&data, v),
        Cmd::Network(n) => cli::network::dispatch(&data, n),
        Cmd::Machine { cmd } => cli::machine::dispatch(&data, cmd),
        Cmd::ImagePresent { reference, digest } => {
            cli::internal::image_present(&data, &reference, &digest)
        }
        Cmd::ImageReceive { reference } => cli::internal::image_receive(&data, &reference),
        Cmd::ContainerSupervise { id, checkpoint } => {
            cli::internal::container_supervise(&data, &id, checkpoint.as_deref())
        }
        Cmd::Checkpoint(c) => cli::checkpoint::dispatch(&data, c),
        Cmd::Fork(a) => cli::checkpoint::fork(&data, a),
        Cmd::Pull(a) => cli::images::pull(&data, a),
        Cmd::Images => cli::images::list(&data),
        Cmd::Rmi(a) => cli::images::rmi(&data, a),
        Cmd::Save(a) => cli::images::save(&data, a),
        Cmd::Load(a) => cli::images::load(&data, a),
        Cmd::Gc => cli::images::gc(&data),
        Cmd::Serve(a) => cli::serve::run(&data, a),
        Cmd::Bench(a) => cli::bench::run(&data, a),
    }
}

/// Runs the command in the husk machine; a `run` gets its image from this
/// host's store and its host-side arguments resolved first.
fn forward(
    data: &std::path::Path,
    cmd: &Cmd,
    args: Vec<std::ffi::OsString>,
) -> husk::machine::Result<i32> {
    use husk::machine::images;
    if let Cmd::Bench(a) = cmd {
        return cli::bench::forward(data, a);
    }
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
