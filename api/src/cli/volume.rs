//! `husk volume create|ls|rm|inspect`, printing as `docker volume` does.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::storage::volume::{parse_size, Volume, VolumeError, Volumes};

/// `husk volume` subcommands.
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum VolumeCmd {
    /// Create a volume (a name is generated when none is given).
    Create {
        /// Volume name.
        name: Option<String>,
        /// Disk size (bytes, or with k, m, g, t); default 1g.
        #[arg(long, value_parser = size_arg)]
        size: Option<u64>,
    },
    /// List volumes.
    #[command(visible_alias = "list")]
    Ls {
        /// Only display volume names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove one or more volumes.
    #[command(visible_alias = "remove")]
    Rm {
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Do not fail on a volume that does not exist.
        #[arg(short, long)]
        force: bool,
    },
    /// Display detailed information on one or more volumes (JSON).
    Inspect {
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// A volume as `docker volume inspect` shows it; `Mountpoint` is the disk
/// image the volume lives in.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect<'a> {
    created_at: &'a str,
    driver: &'static str,
    labels: BTreeMap<String, String>,
    mountpoint: &'a PathBuf,
    name: &'a str,
    options: BTreeMap<&'static str, String>,
    scope: &'static str,
}

impl<'a> From<&'a Volume> for Inspect<'a> {
    fn from(v: &'a Volume) -> Self {
        Inspect {
            created_at: &v.created,
            driver: "local",
            labels: BTreeMap::new(),
            mountpoint: &v.disk,
            name: &v.name,
            options: BTreeMap::from([("size", v.size_bytes.to_string())]),
            scope: "local",
        }
    }
}

/// A new volume name: 64 random hex digits, as Docker makes them.
pub fn random_name() -> String {
    let mut b = [0u8; 32];
    if let Err(e) = getrandom::getrandom(&mut b) {
        // The kernel's random source failing is not recoverable here; fall
        // back to time and pid so the name is still unique enough.
        log::warn!("getrandom: {e}");
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b[..16].copy_from_slice(&t.to_le_bytes());
        b[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex::encode(b)
}

/// `husk volume ...`: the volumes with the containers that use them.
pub fn dispatch(data: &Path, cmd: VolumeCmd) -> super::CliResult {
    let volumes = Volumes::open(&data.join("volumes"))?;
    let containers = super::containers(data)?;
    let in_use = |name: &str| {
        containers.list().ok().and_then(|all| {
            all.into_iter()
                .find(|(c, _)| c.volumes.iter().any(|v| v.name == name))
                .map(|(c, _)| c.id)
        })
    };
    run(cmd, &volumes, &in_use)?;
    Ok(0)
}

/// Runs a `husk volume` subcommand, printing to stdout. `in_use(name)` gives
/// the id of a container that refers to the volume (running or not), which
/// `rm` refuses.
pub fn run(
    cmd: VolumeCmd,
    volumes: &Volumes,
    in_use: &dyn Fn(&str) -> Option<String>,
) -> Result<(), VolumeError> {
    run_to(cmd, volumes, in_use, &mut io::stdout().lock())
}

fn out_err(source: io::Error) -> VolumeError {
    VolumeError::Io {
        what: "cannot write to",
        path: PathBuf::from("stdout"),
        source,
    }
}

/// [`run`], printing to `out`. When several names are given, each is tried;
/// earlier failures go to stderr and the last is returned (as Docker exits
/// 1 after trying them all).
pub fn run_to(
    cmd: VolumeCmd,
    volumes: &Volumes,
    in_use: &dyn Fn(&str) -> Option<String>,
    out: &mut dyn Write,
) -> Result<(), VolumeError> {
    match cmd {
        VolumeCmd::Create { name, size } => {
            let name = name.unwrap_or_else(random_name);
            let v = volumes.create(&name, size)?;
            writeln!(out, "{}", v.name).map_err(out_err)
        }
        VolumeCmd::Ls { quiet } => {
            let list = volumes.list()?;
            if !quiet {
                writeln!(out, "DRIVER    VOLUME NAME").map_err(out_err)?;
            }
            for v in list {
                if quiet {
                    writeln!(out, "{}", v.name)
                } else {
                    writeln!(out, "{:<10}{}", "local", v.name)
                }
                .map_err(out_err)?;
            }
            Ok(())
        }
        VolumeCmd::Rm { names, force } => each(names, |name| {
            if let Some(holder) = in_use(name) {
                return Err(VolumeError::InUse {
                    name: name.to_string(),
                    holder,
                });
            }
            if volumes.remove(name, force)? || force {
                writeln!(out, "{name}").map_err(out_err)?;
            }
            Ok(())
        }),
        VolumeCmd::Inspect { names } => {
            let mut found = Vec::new();
            let res = each(names, |name| {
                found.push(volumes.get(name)?);
                Ok(())
            });
            let shown: Vec<Inspect<'_>> = found.iter().map(Inspect::from).collect();
            let json = serde_json::to_string_pretty(&shown).map_err(io::Error::from);
            json.and_then(|j| writeln!(out, "{j}")).map_err(out_err)?;
            res
        }
    }
}

/// Applies `f` to every name; reports all but the last failure on stderr
/// and returns the last.
fn each(
    names: Vec<String>,
    mut f: impl FnMut(&str) -> Result<(), VolumeError>,
) -> Result<(), VolumeError> {
    let mut last = Ok(());
    for name in &names {
        if let Err(e) = f(name) {
            if let Err(prev) = std::mem::replace(&mut last, Err(e)) {
                eprintln!("husk: {}", crate::error::chain(&prev));
            }
        }
    }
    last
}
