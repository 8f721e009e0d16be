//! `husk machine`: start, stop and inspect the helper VM that runs the
//! microVMs on a host without hardware virtualization, and run commands in
//! it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::machine::proto::Kind;
use crate::machine::qemu::{self, Size};
use crate::machine::{ports, run_in_machine, server, MachineError, PortProvider, Result};

/// `husk machine` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum MachineCmd {
    /// Start the machine (nothing to do when it runs).
    Start {
        /// Virtual CPUs (default: as last started, else 2).
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory in MiB (default: as last started, else 3072).
        #[arg(long)]
        memory: Option<u32>,
    },
    /// Stop the machine cleanly (its data disk is kept).
    Stop,
    /// Print `running` with its pid, size and uptime, or `stopped`.
    Status,
    /// Run a command in the machine (default: a shell).
    Ssh {
        /// Allocate a terminal (when stdin and stdout are terminals).
        #[arg(short, long)]
        tty: bool,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Serve the control channel (run inside the machine by its /init).
    #[command(hide = true)]
    Serve {
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// File holding the token clients must present.
        #[arg(long)]
        token_file: PathBuf,
        /// A JSON list of extra ports to publish, read at each request.
        #[arg(long)]
        ports_file: Option<PathBuf>,
    },
}

/// `husk machine ...`, with the published ports of this host's containers.
pub fn dispatch(data: &Path, cmd: MachineCmd) -> super::CliResult {
    let ports = container_ports(data.to_path_buf());
    run(cmd, data, ports).map_err(|e| super::CliError::new(1, crate::error::chain(&e)))
}

/// Runs a `husk machine` subcommand; returns the exit status. `ports` reports
/// the ports containers publish (used by `serve`).
pub fn run(cmd: MachineCmd, data_dir: &Path, ports: PortProvider) -> Result<i32> {
    let dir = data_dir.join("machine");
    match cmd {
        MachineCmd::Start { cpus, memory } => {
            let saved = qemu::saved_size(&dir);
            let size = Size {
                cpus: cpus.unwrap_or(saved.cpus),
                memory_mib: memory.unwrap_or(saved.memory_mib),
            };
            if size.cpus == 0 || size.memory_mib < 512 {
                return Err(MachineError::BadArgs(
                    "the machine needs at least 1 CPU and 512 MiB".into(),
                ));
            }
            let (r, started) = qemu::ensure(
                &dir,
                Some(size),
                Some("husk: starting the husk machine (a helper VM); this takes a few seconds"),
            )?;
            if !started {
                if r.size != size {
                    eprintln!(
                        "husk: the machine already runs with {} CPUs and {} MiB; stop it to change that",
                        r.size.cpus, r.size.memory_mib
                    );
                }
                println!("the husk machine is already running");
            } else {
                println!("the husk machine is running");
            }
            Ok(0)
        }
        MachineCmd::Stop => {
            if qemu::stop(&dir)? {
                println!("the husk machine stopped");
            } else {
                println!("the husk machine is not running");
            }
            Ok(0)
        }
        MachineCmd::Status => {
            print!("{}", status(&dir));
            Ok(0)
        }
        MachineCmd::Ssh { tty, cmd } => run_in_machine(data_dir, Kind::Ssh, cmd, tty),
        MachineCmd::Serve {
            listen,
            token_file,
            ports_file,
        } => {
            let token = std::fs::read_to_string(&token_file)
                .map_err(|e| MachineError::Io(token_file.display().to_string(), e))?;
            let l = TcpListener::bind(listen)
                .map_err(|e| MachineError::Io(format!("listening on {listen}"), e))?;
            let provider: PortProvider = Box::new(move || {
                let mut v = ports();
                if let Some(f) = &ports_file {
                    v.extend(ports::from_file(f));
                }
                v
            });
            let exe = std::env::current_exe()
                .map_err(|e| MachineError::Io("the husk executable".into(), e))?;
            server::serve(l, token.trim().to_string(), provider, exe)?;
            Ok(0)
        }
    }
}

/// The ports the running containers under `data_dir` publish.
pub fn container_ports(data_dir: PathBuf) -> PortProvider {
    Box::new(move || {
        let Ok(list) = crate::container::Containers::open(&data_dir).and_then(|c| c.list()) else {
            return Vec::new();
        };
        list.into_iter()
            .filter(|(_, st)| st.status == crate::container::state::Status::Running)
            .flat_map(|(_, st)| st.ports)
            .filter_map(|p| {
                let ip = if p.host_ip.is_empty() {
                    "0.0.0.0"
                } else {
                    &p.host_ip
                };
                Some(crate::machine::ForwardedPort {
                    host_ip: ip.parse().ok()?,
                    host_port: p.host_port,
                    proto: p.proto,
                })
            })
            .collect()
    })
}

/// The `status` text.
fn status(dir: &Path) -> String {
    let Some(r) = qemu::running(dir) else {
        return "stopped\n".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let up = now.saturating_sub(r.started);
    format!(
        "running\npid: {}\ncpus: {}\nmemory: {} MiB\nuptime: {}h{:02}m{:02}s\ncontrol: 127.0.0.1:{}\n",
        r.pid,
        r.size.cpus,
        r.size.memory_mib,
        up / 3600,
        up / 60 % 60,
        up % 60,
        r.port
    )
}
