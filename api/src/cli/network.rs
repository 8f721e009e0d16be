//! `husk network create|ls|rm|inspect|connect|disconnect`, as `docker
//! network` prints them. The work is `net::networks` and
//! `container::netattach`'s.

use std::collections::BTreeMap;
use std::path::Path;

use super::{CliError, CliResult};
use crate::container::netattach;
use crate::net::networks::Networks;

/// `husk network` subcommands.
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum NetworkCmd {
    /// Create a network: its members reach and resolve each other.
    Create {
        /// Network name.
        name: String,
        /// Driver (bridge only).
        #[arg(short, long, default_value = "bridge")]
        driver: String,
        /// A label KEY=VALUE.
        #[arg(long)]
        label: Vec<String>,
    },
    /// List networks.
    #[command(visible_alias = "list")]
    Ls {
        /// Only display network ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove one or more networks.
    #[command(visible_alias = "remove")]
    Rm {
        /// Networks.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Display detailed information on one or more networks (JSON).
    Inspect {
        /// Networks.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Connect a container to a network.
    Connect {
        /// Another name the container has on the network.
        #[arg(long)]
        alias: Vec<String>,
        /// Network.
        network: String,
        /// Container.
        container: String,
    },
    /// Disconnect a container from a network.
    Disconnect {
        /// Network.
        network: String,
        /// Container.
        container: String,
    },
}

/// Runs a `husk network` subcommand.
pub fn dispatch(data_dir: &Path, cmd: NetworkCmd) -> CliResult {
    let store = Networks::open(data_dir);
    match cmd {
        NetworkCmd::Create {
            name,
            driver,
            label,
        } => {
            let labels: BTreeMap<String, String> =
                label.iter().map(|l| super::label_pair(l)).collect();
            println!("{}", store.create(&name, &driver, labels)?.id);
            Ok(0)
        }
        NetworkCmd::Ls { quiet } => list(data_dir, quiet),
        NetworkCmd::Rm { names } => remove(data_dir, &store, &names),
        NetworkCmd::Inspect { names } => {
            let mut out = Vec::new();
            for n in &names {
                out.push(
                    crate::serve::networks::inspect_value(data_dir, n).map_err(|e| {
                        CliError::new(1, format!("Error: No such network: {n} ({e})"))
                    })?,
                );
            }
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            Ok(0)
        }
        NetworkCmd::Connect {
            alias,
            network,
            container,
        } => {
            let net = store.find(&network)?;
            let cs = super::containers(data_dir)?;
            let h = cs.find(&container)?;
            netattach::connect(data_dir, &cs, &h, &net, alias)?;
            Ok(0)
        }
        NetworkCmd::Disconnect { network, container } => {
            let net = store.find(&network)?;
            let cs = super::containers(data_dir)?;
            let h = cs.find(&container)?;
            netattach::disconnect(data_dir, &cs, &h, &net)?;
            Ok(0)
        }
    }
}

fn list(data_dir: &Path, quiet: bool) -> CliResult {
    let rows = crate::serve::networks::all_values(data_dir)
        .map_err(|e| CliError::new(1, e.to_string()))?;
    if !quiet {
        println!("{:<14}{:<24}{:<10}SCOPE", "NETWORK ID", "NAME", "DRIVER");
    }
    for r in rows {
        let id: String = r["Id"].as_str().unwrap_or("").chars().take(12).collect();
        if quiet {
            println!("{id}");
        } else {
            println!(
                "{:<14}{:<24}{:<10}local",
                id,
                r["Name"].as_str().unwrap_or(""),
                r["Driver"].as_str().unwrap_or("")
            );
        }
    }
    Ok(0)
}

fn remove(data_dir: &Path, store: &Networks, names: &[String]) -> CliResult {
    let cs = super::containers(data_dir)?;
    let mut status = 0;
    for n in names {
        match store.remove(n, |net| !netattach::attached(&cs, &net.name).is_empty()) {
            Ok(_) => println!("{n}"),
            Err(e) => {
                eprintln!("husk: {}", crate::error::chain(&e));
                status = 1;
            }
        }
    }
    Ok(status)
}
