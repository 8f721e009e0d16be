//! `husk pause` and `husk unpause`: stop and resume a container's microVM
//! (its vCPUs; memory and devices stay as they are), as Docker's freezer.

use std::path::Path;

use clap::Args;

use super::{request, CliError, CliResult};
use crate::container::control::Request;

/// Options of `husk pause` and `husk unpause`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// `husk pause` (`pause` true) or `husk unpause`: prints each name done.
pub fn run(data_dir: &Path, args: PauseArgs, pause: bool) -> CliResult {
    let cs = super::containers(data_dir)?;
    let req = if pause {
        Request::Pause
    } else {
        Request::Unpause
    };
    let mut status = 0;
    for n in &args.containers {
        let done = cs
            .find(n)
            .map_err(CliError::from)
            .and_then(|h| request(&h, &req));
        match done {
            Ok(_) => println!("{n}"),
            Err(e) => {
                eprintln!("husk: {}", e.message);
                status = 1;
            }
        }
    }
    Ok(status)
}
