//! `husk logs [-f] [--tail N] [-t] CONTAINER`: the container's output, read
//! from its log file (no supervisor needed), stdout to stdout and stderr
//! to stderr.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use clap::Args;

use super::{CliError, CliResult};
use crate::container::logs::{self, lines, timestamp, Follower, Record, STDERR};
use crate::container::Status;

/// Options of `husk logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow the output while the container runs.
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines from the end ("all" for every line).
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show timestamps.
    #[arg(short, long)]
    pub timestamps: bool,
    /// Container.
    pub container: String,
}

fn emit(recs: &[Record], timestamps: bool) {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for r in recs {
        let w: &mut dyn Write = if r.stream == STDERR {
            &mut err
        } else {
            &mut out
        };
        if timestamps {
            let _ = write!(w, "{} ", timestamp(r.nanos));
        }
        let _ = w.write_all(&r.data);
    }
    let _ = out.flush();
    let _ = err.flush();
}

/// `husk logs`.
pub fn run(data_dir: &Path, args: LogsArgs) -> CliResult {
    let tail: Option<usize> = match args.tail.as_str() {
        "all" | "-1" => None,
        n => Some(
            n.parse()
                .map_err(|_| CliError::new(1, format!("invalid --tail {n:?}")))?,
        ),
    };
    let cs = super::containers(data_dir)?;
    let h = cs.find(&args.container)?;
    let path = h.log_path();
    let mut follower = match tail {
        Some(n) => {
            let (ls, follower) = logs::tail(&path, n)?;
            emit(&ls, args.timestamps);
            follower
        }
        None => {
            let mut follower = Follower::from_start(&path)?;
            let recs = follower.poll()?;
            if args.timestamps {
                emit(&lines(&recs), true);
            } else {
                emit(&recs, false);
            }
            follower
        }
    };
    if !args.follow {
        return Ok(0);
    }
    loop {
        let running = h
            .live_state()
            .map(|s| s.status == Status::Running || h.supervisor_alive())
            .unwrap_or(false);
        if let Ok(recs) = follower.poll() {
            emit(&recs, args.timestamps);
        }
        if !running {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
