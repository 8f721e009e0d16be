//! `husk bench`: how long a husk microVM takes to start compared with a
//! container, measured side by side on one host (or in the husk machine).
//!
//! Each "starter" starts the same image's `true` once per round; the rows
//! take turns within every round (so drift on the host affects them all
//! alike), after one unmeasured warm-up start each (caches: husk's rootfs
//! disk). The bare-namespace start is the container baseline the ratios are
//! to. The density row starts K sandboxes at once and sums their husk-vmm
//! processes' PSS. Rows that need something this host lacks (crun, QEMU,
//! hardware virtualization) are listed as unavailable with the reason.
//!
//! Files: [`stats`] (percentiles, ratios), [`report`] (what was measured, as
//! JSON between the machine and the host), [`table`] and [`plot`] (how it is
//! shown), [`rootfs`] (the image unpacked for the container rows), one file
//! per starter ([`husk`], [`namespace`], [`oci`], [`qemu`]), [`density`]
//! and [`fork_density`] (K forks of one idle container: the PSS they share).

pub mod density;
pub mod fork_density;
pub mod husk;
pub mod namespace;
pub mod oci;
pub mod plot;
pub mod qemu;
pub mod report;
pub mod rootfs;
pub mod stats;
pub mod table;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use report::{Report, Row, Unavailable};

/// Errors of `husk bench`.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file operation failed.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done ("create", "read").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A program failed.
    #[error("{program}: {status}{}", if .stderr.is_empty() { String::new() } else { format!(": {}", .stderr) })]
    Status {
        /// The program (and its first arguments).
        program: String,
        /// How it ended.
        status: String,
        /// Its last line of stderr.
        stderr: String,
    },
    /// A program did not reach what it was waited for.
    #[error("{0}")]
    Unfinished(String),
    /// A system call failed.
    #[error("{call}")]
    Sys {
        /// The call ("fork", "unshare").
        call: &'static str,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The image could not be found or unpacked.
    #[error("image {image}: {message}")]
    Image {
        /// The image.
        image: String,
        /// Why (the cause chain on one line).
        message: String,
    },
    /// The plot could not be drawn or written.
    #[error("cannot draw the plot {path}: {message}")]
    Plot {
        /// The PNG file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The measurements from the husk machine do not parse.
    #[error("the husk machine's bench result")]
    Json(#[from] serde_json::Error),
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, BenchError>;

/// Something started once per round and timed.
pub trait Starter {
    /// Short name for the table.
    fn name(&self) -> &str;
    /// What one start is.
    fn what(&self) -> String;
    /// Starts the image's `true` once and waits for it to end; returns the
    /// wall time. `round` numbers the starts (unique names).
    fn start_once(&mut self, round: usize) -> Result<Duration>;
}

/// What `husk bench` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The husk executable the husk rows run.
    pub husk: PathBuf,
    /// husk's data directory (passed to every husk it runs).
    pub data_dir: PathBuf,
    /// The image.
    pub image: String,
    /// Measured starts per row.
    pub runs: usize,
    /// Sandboxes of the density row (0: no density row).
    pub density: usize,
    /// Forks of the fork density row (0: no fork density row).
    pub forks: usize,
}

/// Measures every starter available here and the density row; progress
/// goes to `log`, one line per round.
pub fn measure(opts: &Options, log: &mut dyn Write) -> Result<Report> {
    let tree = rootfs::ImageTree::unpack(&opts.data_dir, &opts.image);
    let mut unavailable = Vec::new();
    let mut starters: Vec<Box<dyn Starter>> = vec![
        Box::new(husk::HuskRun::new(opts)),
        Box::new(husk::HuskRun::from_snapshot(opts)),
        Box::new(husk::HuskFork::new(opts)),
    ];
    let mut push = |s: std::result::Result<Box<dyn Starter>, Unavailable>| match s {
        Ok(s) => starters.push(s),
        Err(u) => unavailable.push(u),
    };
    match &tree {
        Ok(tree) => {
            push(
                namespace::NamespaceStart::new(tree.root())
                    .map(|s| Box::new(s) as Box<dyn Starter>),
            );
            for runtime in oci::RUNTIMES {
                push(oci::OciRun::new(runtime, tree).map(|s| Box::new(s) as Box<dyn Starter>));
            }
        }
        Err(e) => {
            for name in ["namespace", "crun", "runc"] {
                push(Err(Unavailable {
                    name: name.into(),
                    reason: e.to_string(),
                }));
            }
        }
    }
    push(qemu::QemuBoot::new().map(|s| Box::new(s) as Box<dyn Starter>));
    let rows = alternate(&mut starters, opts.runs, log);
    let density = (opts.density > 0).then(|| density::measure(opts, log));
    let forks = (opts.forks > 0).then(|| fork_density::measure(opts, log));
    Ok(Report {
        image: opts.image.clone(),
        runs: opts.runs,
        place: place(),
        rows,
        unavailable,
        density,
        forks,
    })
}

/// Runs every starter once unmeasured, then `runs` rounds in turn; a
/// starter that fails is not started again and its row keeps the error.
pub fn alternate(starters: &mut [Box<dyn Starter>], runs: usize, log: &mut dyn Write) -> Vec<Row> {
    let mut rows: Vec<Row> = starters
        .iter()
        .map(|s| Row {
            name: s.name().to_string(),
            what: s.what(),
            baseline: s.name() == namespace::NAME,
            samples_ms: Vec::new(),
            error: None,
        })
        .collect();
    for round in 0..=runs {
        let mut line = if round == 0 {
            "warm-up:".to_string()
        } else {
            format!("round {round}/{runs}:")
        };
        for (s, row) in starters.iter_mut().zip(rows.iter_mut()) {
            if row.error.is_some() {
                continue;
            }
            match s.start_once(round) {
                Ok(d) => {
                    let ms = d.as_secs_f64() * 1000.0;
                    line.push_str(&format!(" {} {ms:.1} ms", row.name));
                    if round > 0 {
                        row.samples_ms.push(ms);
                    }
                }
                Err(e) => {
                    line.push_str(&format!(" {} failed", row.name));
                    row.error = Some(crate::error::chain(&e));
                }
            }
        }
        let _ = writeln!(log, "{line}");
    }
    rows
}

/// "this host (Linux R, N CPUs)" or "the husk machine (...)".
fn place() -> String {
    let inside = std::env::var_os("HUSK_IN_MACHINE").is_some_and(|v| !v.is_empty());
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{} (Linux {release}, {cpus} CPUs)",
        if inside {
            "the husk machine"
        } else {
            "this host"
        }
    )
}

/// Runs `cmd` to its end with stdin closed, stdout and stderr captured; a
/// failure names `program` with its status and last line of stderr.
pub fn run_checked(cmd: &mut Command, program: &str) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| BenchError::Spawn {
            program: program.to_string(),
            source,
        })?;
    check_status(program, &out)?;
    Ok(out)
}

/// An error for a finished program that did not exit 0.
pub fn check_status(program: &str, out: &Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(BenchError::Status {
        program: program.to_string(),
        status: out.status.to_string(),
        stderr: last_line(&out.stderr),
    })
}

/// The last non-empty line of a program's output.
pub fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

/// Times `f`.
pub fn timed(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

/// The first executable called `name` in `$PATH` (or `/usr/sbin`, `/sbin`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    crate::storage::ext4::find_tool(name)
}

/// An I/O error on `path`.
pub fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BenchError + 'a {
    move |source| BenchError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A starter that sleeps, or fails at one round.
    struct Fake {
        name: &'static str,
        fail_at: Option<usize>,
        started: Vec<usize>,
    }

    impl Starter for Fake {
        fn name(&self) -> &str {
            self.name
        }
        fn what(&self) -> String {
            format!("{} once", self.name)
        }
        fn start_once(&mut self, round: usize) -> Result<Duration> {
            self.started.push(round);
            if self.fail_at == Some(round) {
                return Err(BenchError::Unfinished(format!("{} broke", self.name)));
            }
            timed(|| {
                std::thread::sleep(Duration::from_millis(1));
                Ok(())
            })
        }
    }

    #[test]
    fn rows_take_turns_after_a_warm_up_and_a_failure_stops_a_row() {
        let mut s: Vec<Box<dyn Starter>> = vec![
            Box::new(Fake {
                name: "namespace",
                fail_at: None,
                started: vec![],
            }),
            Box::new(Fake {
                name: "flaky",
                fail_at: Some(2),
                started: vec![],
            }),
        ];
        let mut log = Vec::new();
        let rows = alternate(&mut s, 3, &mut log);
        let log = String::from_utf8(log).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].baseline && !rows[1].baseline);
        assert_eq!(rows[0].samples_ms.len(), 3);
        assert!(rows[0].samples_ms.iter().all(|&ms| ms >= 1.0));
        assert_eq!(rows[0].error, None);
        assert_eq!(rows[1].samples_ms.len(), 1);
        assert_eq!(rows[1].error.as_deref(), Some("flaky broke"));
        assert_eq!(rows[1].what, "flaky once");
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 4, "{log}");
        assert!(lines[0].starts_with("warm-up: namespace "));
        assert!(lines[2].ends_with(" flaky failed"), "{log}");
        assert!(!lines[3].contains("flaky"), "{log}");
    }

    #[test]
    fn failed_programs_name_their_status_and_last_stderr_line() {
        let e = run_checked(
            Command::new("sh").args(["-c", "echo one >&2; echo two >&2; exit 3"]),
            "sh -c",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "sh -c: exit status: 3: two");
        let e = run_checked(&mut Command::new("/nonexistent/x"), "x").unwrap_err();
        assert_eq!(e.to_string(), "cannot run x");
        assert!(run_checked(&mut Command::new("true"), "true").is_ok());
    }
}
