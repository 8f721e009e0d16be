//! `husk ps [-a] [-q]`.

use std::path::Path;

use clap::Args;

use super::CliResult;
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
    println!(
        "{:<14}{:<24}{:<24}{:<18}{:<28}{:<30}NAMES",
        "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS"
    );
    for (c, s) in rows {
        println!(
            "{:<14}{:<24}{:<24}{:<18}{:<28}{:<30}{}",
            if args.no_trunc {
                &c.id
            } else {
                short_id(&c.id)
            },
            c.image,
            command_text(&c, args.no_trunc),
            format!("{} ago", human_duration(secs_since(&c.created))),
            status_text(&s),
            ports_text(&s.ports),
            c.name
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
