//! `husk exec [-i] [-t] [-e K=V] [-w DIR] [-u USER] CONTAINER CMD...`.

use std::path::Path;

use clap::Args;

use super::{attach, request, CliError, CliResult};
use crate::container::control::{Attach, Request};
use husk_proto::agent::ProcessSpec;

/// Options of `husk exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open and forward it.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Run in the background.
    #[arg(short, long)]
    pub detach: bool,
    /// Set an environment variable.
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Container.
    pub container: String,
    /// Command and arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `husk exec`.
pub fn run(data_dir: &Path, args: ExecArgs) -> CliResult {
    let cs = super::containers(data_dir)?;
    let h = cs.find(&args.container)?;
    let spec = ProcessSpec {
        cmd: args.command,
        env: args.env,
        workdir: args.workdir.unwrap_or_default(),
        user: args.user.unwrap_or_default(),
        tty: args.tty,
        ..ProcessSpec::default()
    };
    let attach_opts = Attach {
        stdin: args.interactive && !args.detach,
        console_size: if args.tty {
            attach::terminal_size()
        } else {
            None
        },
    };
    let conn = request(
        &h,
        &Request::Exec {
            spec,
            attach: attach_opts.clone(),
        },
    )?;
    if args.detach {
        return Ok(0);
    }
    match attach::stream(conn, attach_opts.stdin, args.tty)
        .map_err(|e| CliError::new(1, format!("exec: {e}")))?
    {
        Some(code) => Ok(code),
        None => Err(CliError::new(1, "the container stopped during exec")),
    }
}
