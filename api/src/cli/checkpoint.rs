//! `husk checkpoint create|ls|rm` and `husk start --checkpoint`, with
//! Docker's syntax: a checkpoint saves a running container's whole microVM
//! (its processes, their memory, the writable layer); starting from it
//! resumes them where they were. `husk fork` makes a new container that
//! way from a running one, which runs on.

use std::path::Path;

use clap::{Args, Subcommand};

use super::{request, CliError, CliResult};
use crate::container::checkpoint::Checkpoints;
use crate::container::control::Request;
use crate::container::state::Status;
use crate::container::Containers;

/// `husk checkpoint` subcommands.
#[derive(Debug, Subcommand)]
pub enum CheckpointCmd {
    /// Save a running container as a checkpoint (it then stops).
    Create {
        /// Keep the container running after the checkpoint.
        #[arg(long)]
        leave_running: bool,
        /// The container.
        container: String,
        /// The checkpoint's name.
        checkpoint: String,
    },
    /// List a container's checkpoints.
    #[command(alias = "list")]
    Ls {
        /// The container.
        container: String,
    },
    /// Remove a checkpoint.
    #[command(alias = "remove")]
    Rm {
        /// The container.
        container: String,
        /// The checkpoint.
        checkpoint: String,
    },
}

/// Runs a `husk checkpoint` subcommand.
pub fn dispatch(data_dir: &Path, cmd: CheckpointCmd) -> CliResult {
    let cs = super::containers(data_dir)?;
    match cmd {
        CheckpointCmd::Create {
            leave_running,
            container,
            checkpoint,
        } => {
            let h = cs.find(&container)?;
            crate::container::checkpoint::check_name(&checkpoint)?;
            let req = Request::Checkpoint {
                name: checkpoint.clone(),
                leave_running,
            };
            must_run(&h, &container)?;
            request(&h, &req)?;
            if !leave_running {
                // As `stop`: once it returns, the container shows exited.
                super::wait_supervisor_gone(&h, std::time::Duration::from_secs(30));
            }
            println!("{checkpoint}");
            Ok(0)
        }
        CheckpointCmd::Ls { container } => {
            let h = cs.find(&container)?;
            println!("CHECKPOINT NAME");
            for c in Checkpoints::of(&h).list()? {
                println!("{}", c.name);
            }
            Ok(0)
        }
        CheckpointCmd::Rm {
            container,
            checkpoint,
        } => {
            let h = cs.find(&container)?;
            Checkpoints::of(&h).remove(&checkpoint)?;
            Ok(0)
        }
    }
}

/// Refuses container `h` (named `name` by the user) unless it runs.
fn must_run(h: &crate::container::Handle, name: &str) -> Result<(), CliError> {
    if h.live_state()?.status != Status::Running {
        return Err(CliError::new(
            1,
            format!("Error response from daemon: Container {name} is not running"),
        ));
    }
    Ok(())
}

/// Options of `husk fork`.
#[derive(Debug, Args)]
pub struct ForkArgs {
    /// The fork's name (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// The running container to fork.
    pub container: String,
}

/// `husk fork C`: a new container from running container `C`'s microVM as
/// it is now (its processes, memory and writable layer), with its own
/// address and no published ports; `C` pauses only while it is saved.
/// Prints the fork's id.
pub fn fork(data_dir: &Path, args: ForkArgs) -> CliResult {
    use crate::container::{names, new_id};
    let cs = super::containers(data_dir)?;
    let parent = cs.find(&args.container)?;
    must_run(&parent, &args.container)?;
    let mut config = parent.config()?;
    config.id = new_id();
    config.name = match args.name {
        Some(n) => n,
        None => names::for_id(&config.id),
    };
    config.created = crate::time::now_rfc3339();
    // The parent keeps its ports; a fork is reached by its address.
    config.ports.clear();
    config.auto_remove = false;
    config.restart = Default::default();
    let child = cs.create(&config)?;
    let forked = request(
        &parent,
        &Request::Fork {
            into: child.id.clone(),
        },
    )
    .and_then(|_| {
        crate::container::create::start_from_checkpoint(
            &child,
            data_dir,
            crate::container::supervisor::FORK_CHECKPOINT,
        )
        .map_err(super::ipc_error)
    });
    if let Err(e) = forked {
        super::wait_supervisor_gone(&child, std::time::Duration::from_secs(30));
        let _ = cs.remove(&child);
        return Err(e);
    }
    // Its microVM maps the memory file; the name goes.
    let _ = Checkpoints::of(&child).remove(crate::container::supervisor::FORK_CHECKPOINT);
    println!("{}", child.id);
    Ok(0)
}

/// `husk start --checkpoint NAME CONTAINER`.
pub fn start(data_dir: &Path, cs: &Containers, containers: &[String], name: &str) -> CliResult {
    let [n] = containers else {
        return Err(CliError::new(
            1,
            "you cannot start multiple containers from one checkpoint",
        ));
    };
    let h = cs.find(n)?;
    if h.live_state()?.status == Status::Running {
        return Err(CliError::new(
            1,
            format!("container {n} is already running"),
        ));
    }
    crate::container::create::start_from_checkpoint(&h, data_dir, name)
        .map_err(super::ipc_error)?;
    Ok(0)
}
