//! `husk ps [-a] [-q] [--no-trunc] [--format FORMAT]`.

use std::path::Path;

use clap::Args;

use super::ps_format::{self, Format};
use super::{CliError, CliResult};
use crate::container::spec::NetworkMode;
use crate::container::state::{human_duration, secs_since, PortBinding, State, Status};
use crate::container::{short_id, ContainerConfig};

/// Options of `husk ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default: running ones).
    #[arg(short, long)]
    pub all: bool,
    /// Only print IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Docker's formats: `table`, `table TEMPLATE`, `json`, or a TEMPLATE of
    /// `{{.Field}}` (ID, Image, Command, CreatedAt, RunningFor, Ports, State,
    /// Status, Names, Labels, Mounts, Networks, LocalVolumes).
    #[arg(long)]
    pub format: Option<String>,
}

/// Docker's STATUS column.
pub fn status_text(s: &State) -> String {
    match s.status {
        // Its next start (booting, so `created`) is its restart policy's.
        Status::Created | Status::Exited if s.restarting => format!(
            "Restarting ({}) {} ago",
            s.exit_code.unwrap_or(0),
            human_duration(s.finished_at.as_deref().map(secs_since).unwrap_or(0))
        ),
        Status::Created => "Created".into(),
        Status::Running => format!(
            "Up {}{}",
            human_duration(s.started_at.as_deref().map(secs_since).unwrap_or(0)),
            if s.paused { " (Paused)" } else { "" }
        ),
        Status::Exited => format!(
            "Exited ({}) {} ago",
            s.exit_code.unwrap_or(0),
            human_duration(s.finished_at.as_deref().map(secs_since).unwrap_or(0))
        ),
    }
}

/// Docker's PORTS column.
pub fn ports_text(ports: &[PortBinding]) -> String {
    ports
        .iter()
        .map(|p| {
            format!(
                "{}:{}->{}/{}",
                p.host_ip, p.host_port, p.container_port, p.proto
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn command_text(c: &ContainerConfig, full: bool) -> String {
    let s = format!("\"{}\"", c.process.argv().join(" "));
    if full || s.chars().count() <= 22 {
        s
    } else {
        let cut: String = s.chars().take(19).collect();
        format!("{cut}…\"")
    }
}

/// Docker's CreatedAt (`2026-12-05 05:30:00 +0000 UTC`) of an RFC 3339 UTC
/// time.
fn created_at(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..19)) {
        (Some(day), Some(time)) if rfc3339.ends_with('Z') => format!("{day} {time} +0000 UTC"),
        _ => rfc3339.to_string(),
    }
}

/// Docker's Networks: the user-defined networks the container is on, else
/// `bridge` (the default network) or `none`.
fn networks(c: &ContainerConfig) -> Vec<&str> {
    if !c.networks.is_empty() {
        return c.networks.iter().map(|n| n.network.as_str()).collect();
    }
    vec![match c.network {
        NetworkMode::Default => "bridge",
        NetworkMode::None => "none",
    }]
}

/// One container's values for `--format`, in [`ps_format::FIELDS`] order.
fn values(c: &ContainerConfig, s: &State, full: bool) -> ps_format::Values {
    let id = if full {
        c.id.clone()
    } else {
        short_id(&c.id).to_string()
    };
    let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mounts: Vec<&str> = c.volumes.iter().map(|v| v.name.as_str()).collect();
    let networks = networks(c);
    let value = |field: &str| match field {
        "ID" => id.clone(),
        "Image" => c.image.clone(),
        "Command" => command_text(c, full),
        "CreatedAt" => created_at(&c.created),
        "RunningFor" => format!("{} ago", human_duration(secs_since(&c.created))),
        "Ports" => ports_text(&s.ports),
        "State" => s.docker_state(s.status == Status::Running).to_string(),
        "Status" => status_text(s),
        "Names" => c.name.clone(),
        "Labels" => labels.join(","),
        "Mounts" => mounts.join(","),
        "Networks" => networks.join(","),
        "LocalVolumes" => c.volumes.len().to_string(),
        _ => String::new(),
    };
    ps_format::FIELDS.iter().map(|f| value(f.0)).collect()
}

/// `husk ps`.
pub fn run(data_dir: &Path, args: PsArgs) -> CliResult {
    let cs = super::containers(data_dir)?;
    let mut rows = cs.list()?;
    rows.reverse();
    if !args.all {
        rows.retain(|(_, s)| s.status == Status::Running);
    }
    if args.quiet {
        for (c, _) in rows {
            println!(
                "{}",
                if args.no_trunc {
                    &c.id
                } else {
                    short_id(&c.id)
                }
            );
        }
        return Ok(0);
    }
    // Without --format: Docker's default table, aligned as Docker's
    // tabwriter aligns it.
    let format = Format::parse(args.format.as_deref()).map_err(|e| CliError::new(1, e))?;
    let values: Vec<_> = rows
        .iter()
        .map(|(c, s)| values(c, s, args.no_trunc))
        .collect();
    print!("{}", format.render(&values));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_the_user_networks_else_the_mode() {
        let mut c = ContainerConfig::default();
        assert_eq!(networks(&c), ["bridge"]);
        c.network = NetworkMode::None;
        assert_eq!(networks(&c), ["none"]);
        // `--network front` is the default network's NAT plus front's
        // members: Docker shows front alone.
        c.network = NetworkMode::Default;
        for name in ["front", "back"] {
            c.networks.push(crate::container::spec::NetworkAttachment {
                network: name.into(),
                aliases: Vec::new(),
            });
        }
        assert_eq!(networks(&c), ["front", "back"]);
    }

    #[test]
    fn a_container_waiting_for_its_restart_shows_restarting() {
        let mut s = State {
            status: Status::Exited,
            exit_code: Some(3),
            ..State::default()
        };
        assert!(status_text(&s).starts_with("Exited (3) "));
        s.restarting = true;
        assert!(status_text(&s).starts_with("Restarting (3) "));
        // Its next supervisor boots the microVM: still restarting.
        s.status = Status::Created;
        assert!(status_text(&s).starts_with("Restarting (3) "));
        s.restarting = false;
        assert_eq!(status_text(&s), "Created");
    }
}
