//! `husk stop`, `kill`, `rm`, `wait` and `start`.

use std::path::Path;
use std::time::Duration;

use clap::Args;

use super::{request, CliError, CliResult};
use crate::container::control::{Attach, Request};
use crate::container::Status;

/// Options of `husk stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait for the container to stop before killing it.
    #[arg(short, long, default_value_t = 10)]
    pub time: u64,
    /// Containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Options of `husk kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal to send (name or number).
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    /// Containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Options of `husk rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Kill and remove a running container.
    #[arg(short, long)]
    pub force: bool,
    /// Containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Options of `husk wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Options of `husk restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// Seconds to wait for the container to stop before killing it.
    #[arg(short, long, default_value_t = 10)]
    pub time: u64,
    /// Containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Options of `husk attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Do not attach stdin.
    #[arg(long)]
    pub no_stdin: bool,
    /// Container.
    pub container: String,
}

/// Options of `husk port`.
#[derive(Debug, Args)]
pub struct PortArgs {
    /// Container.
    pub container: String,
}

/// Options of `husk start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Attach stdout/stderr and exit with the container's status.
    #[arg(short, long)]
    pub attach: bool,
    /// Attach stdin too.
    #[arg(short, long)]
    pub interactive: bool,
    /// Start from this checkpoint (`husk checkpoint create`): the
    /// container's processes go on where they were.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["attach", "interactive"])]
    pub checkpoint: Option<String>,
    /// Containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Parses a signal: `KILL`, `SIGKILL`, `9`.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|sig| sig as i32)
}

/// Runs `f` for each container; errors are printed and make the status 1,
/// as Docker does.
fn each(names: &[String], mut f: impl FnMut(&str) -> Result<(), CliError>) -> CliResult {
    let mut status = 0;
    for n in names {
        match f(n) {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("husk: {}", e.message);
                status = 1;
            }
        }
    }
    Ok(status)
}

/// Stops a container (SIGTERM, SIGKILL after `secs`) and waits for the end.
fn stop_one(h: &crate::container::Handle, secs: u64) -> Result<(), CliError> {
    let running = h.live_state()?.status == Status::Running;
    crate::container::ipc::stop(h, secs, running)?;
    Ok(())
}

/// `husk stop`.
pub fn stop(data_dir: &Path, args: StopArgs) -> CliResult {
    let cs = super::containers(data_dir)?;
    each(&args.containers, |n| stop_one(&cs.find(n)?, args.time))
}

/// `husk kill`.
pub fn kill(data_dir: &Path, args: KillArgs) -> CliResult {
    let sig = parse_signal(&args.signal)
        .ok_or_else(|| CliError::new(1, format!("invalid signal: {}", args.signal)))?;
    let cs = super::containers(data_dir)?;
    each(&args.containers, |n| {
        let h = cs.find(n)?;
        if h.live_state()?.status != Status::Running {
            return Err(CliError::new(
                1,
                format!(
                    "cannot kill container: {n}: container {} is not running",
                    h.id
                ),
            ));
        }
        request(&h, &Request::Signal { signal: sig }).map(|_| ())
    })
}

/// `husk rm`.
pub fn rm(data_dir: &Path, args: RmArgs) -> CliResult {
    let cs = super::containers(data_dir)?;
    each(&args.containers, |n| {
        let h = cs.find(n)?;
        if h.live_state()?.status == Status::Running || h.supervisor_alive() {
            if !args.force {
                return Err(CliError::new(
                    1,
                    format!("cannot remove container \"{n}\": container is running: stop the container before removing or force remove"),
                ));
            }
            stop_one(&h, 0)?;
        }
        cs.remove(&h)?;
        Ok(())
    })
}

/// `husk wait`: blocks until each container stops; prints its status.
pub fn wait(data_dir: &Path, args: WaitArgs) -> CliResult {
    let cs = super::containers(data_dir)?;
    let mut status = 0;
    for n in &args.containers {
        let h = match cs.find(n) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("husk: {e}");
                status = 1;
                continue;
            }
        };
        loop {
            match h.live_state() {
                Ok(s) if s.status == Status::Running || h.supervisor_alive() => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(s) => {
                    println!("{}", s.exit_code.unwrap_or(0));
                    break;
                }
                Err(_) => {
                    // Removed while we waited (--rm).
                    eprintln!("husk: No such container: {n}");
                    status = 1;
                    break;
                }
            }
        }
    }
    Ok(status)
}

/// `husk start`: boots a new microVM for a stopped container.
pub fn start(data_dir: &Path, args: StartArgs) -> CliResult {
    let cs = super::containers(data_dir)?;
    if let Some(name) = &args.checkpoint {
        return super::checkpoint::start(data_dir, &cs, &args.containers, name);
    }
    if args.attach || args.interactive {
        let [n] = &args.containers[..] else {
            return Err(CliError::new(
                1,
                "you cannot start and attach multiple containers at once",
            ));
        };
        let h = cs.find(n)?;
        if h.live_state()?.status == Status::Running {
            return Err(CliError::new(
                1,
                format!("container {n} is already running"),
            ));
        }
        let tty = h.config()?.process.tty;
        let attach = Attach {
            stdin: args.interactive,
            console_size: if tty {
                super::attach::terminal_size()
            } else {
                None
            },
        };
        return super::run::start_and_attach(data_dir, &cs, &h, Some(attach), false, false)
            .map_err(|e| CliError::new(1, e.message));
    }
    each(&args.containers, |n| {
        let h = cs.find(n)?;
        if h.live_state()?.status == Status::Running {
            return Ok(());
        }
        super::run::start_and_attach(data_dir, &cs, &h, None, false, false).map(|_| ())
    })
}

/// `husk restart`: stop, then start (a new microVM).
pub fn restart(data_dir: &Path, args: RestartArgs) -> CliResult {
    let cs = super::containers(data_dir)?;
    each(&args.containers, |n| {
        let h = cs.find(n)?;
        stop_one(&h, args.time)?;
        super::run::start_and_attach(data_dir, &cs, &h, None, false, false).map(|_| ())
    })
}

/// `husk attach`: the running container's output (and stdin) until it ends;
/// exits with its status.
pub fn attach(data_dir: &Path, args: AttachArgs) -> CliResult {
    let cs = super::containers(data_dir)?;
    let h = cs.find(&args.container)?;
    let config = h.config()?;
    if h.live_state()?.status != Status::Running {
        return Err(CliError::new(
            1,
            "You cannot attach to a stopped container, start it first",
        ));
    }
    let stdin = config.process.open_stdin && !args.no_stdin;
    let tty = config.process.tty;
    let conn = request(
        &h,
        &Request::Attach(Attach {
            stdin,
            console_size: None,
        }),
    )?;
    match super::attach::stream(conn, stdin, tty)
        .map_err(|e| CliError::new(1, format!("attach: {e}")))?
    {
        Some(code) => Ok(code),
        None => Ok(h.live_state()?.exit_code.unwrap_or(0)),
    }
}

/// `husk port`: the container's published ports, as Docker prints them.
pub fn port(data_dir: &Path, args: PortArgs) -> CliResult {
    let cs = super::containers(data_dir)?;
    let s = cs.find(&args.container)?.live_state()?;
    for p in &s.ports {
        println!(
            "{}/{} -> {}:{}",
            p.container_port, p.proto, p.host_ip, p.host_port
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("KILL"), Some(9));
        assert_eq!(parse_signal("sigterm"), Some(15));
        assert_eq!(parse_signal("SIGUSR1"), Some(10));
        assert_eq!(parse_signal("2"), Some(2));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("BOGUS"), None);
    }
}
