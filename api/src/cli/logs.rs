//! `husk logs [-f] [--tail N] [-t] CONTAINER`: the container's output, read
//! from its log file (no supervisor needed), stdout to stdout and stderr
//! to stderr.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use clap::Args;

use super::{CliError, CliResult};
use crate::container::logs::{lines, read_records, timestamp, Record, STDERR};
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
    let mut offset = 0u64;
    if let Ok(f) = File::open(&path) {
        let (recs, used) = read_records(f)?;
        offset = used;
        let mut ls = lines(&recs);
        if let Some(n) = tail {
            let skip = ls.len().saturating_sub(n);
            ls.drain(..skip);
        }
        if args.timestamps || tail.is_some() {
            emit(&ls, args.timestamps);
        } else {
            emit(&recs, false);
        }
    }
    if !args.follow {
        return Ok(0);
    }
    loop {
        let running = h
            .live_state()
            .map(|s| s.status == Status::Running || h.supervisor_alive())
            .unwrap_or(false);
        if let Ok(mut f) = File::open(&path) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                if let Ok((recs, used)) = read_records(f) {
                    offset += used;
                    emit(&recs, args.timestamps);
                }
            }
        }
        if !running {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
