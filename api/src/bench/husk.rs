//! The husk rows: `husk run --rm IMAGE true`, the real command (this same
//! husk executable), from its start to its exit: a microVM booted
//! (`--no-snapshot`) or restored from its template snapshot, the container
//! run, the VM gone; and `husk fork` of a running container.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{run_checked, timed, Options, Result, Starter};

/// The cold-boot row's name.
pub const NAME: &str = "husk";
/// The template-snapshot row's name.
pub const SNAPSHOT_NAME: &str = "husk-snapshot";

/// `husk run --rm IMAGE true`, booted or from the template snapshot.
#[derive(Debug)]
pub struct HuskRun {
    husk: PathBuf,
    data_dir: PathBuf,
    image: String,
    snapshot: bool,
}

impl HuskRun {
    /// The cold-boot row for `opts`' husk, data directory and image.
    pub fn new(opts: &Options) -> Self {
        HuskRun {
            husk: opts.husk.clone(),
            data_dir: opts.data_dir.clone(),
            image: opts.image.clone(),
            snapshot: false,
        }
    }

    /// The template-snapshot row.
    pub fn from_snapshot(opts: &Options) -> Self {
        HuskRun {
            snapshot: true,
            ..HuskRun::new(opts)
        }
    }
}

/// `husk --data-dir DATA ARGS...`.
pub fn husk_command(husk: &std::path::Path, data_dir: &std::path::Path) -> Command {
    let mut c = Command::new(husk);
    c.arg("--data-dir").arg(data_dir);
    c
}

impl Starter for HuskRun {
    fn name(&self) -> &str {
        if self.snapshot {
            SNAPSHOT_NAME
        } else {
            NAME
        }
    }

    fn what(&self) -> String {
        if self.snapshot {
            format!(
                "husk run --rm {} true (from the template snapshot)",
                self.image
            )
        } else {
            format!(
                "husk run --rm --no-snapshot {} true (microVM cold boot)",
                self.image
            )
        }
    }

    fn start_once(&mut self, _round: usize) -> Result<Duration> {
        let mut cmd = husk_command(&self.husk, &self.data_dir);
        cmd.args(["run", "--rm", "-q"]);
        if !self.snapshot {
            cmd.arg("--no-snapshot");
        }
        cmd.args([&self.image, "true"]);
        timed(|| run_checked(&mut cmd, "husk run").map(drop))
    }
}

/// The fork row's name.
pub const FORK_NAME: &str = "husk-fork";

/// `husk fork PARENT` of a running, idle container (made at the first
/// start, removed with the row), then the fork removed, untimed.
#[derive(Debug)]
pub struct HuskFork {
    husk: PathBuf,
    data_dir: PathBuf,
    image: String,
    parent: Option<String>,
}

impl HuskFork {
    /// The row for `opts`' husk, data directory and image.
    pub fn new(opts: &Options) -> Self {
        HuskFork {
            husk: opts.husk.clone(),
            data_dir: opts.data_dir.clone(),
            image: opts.image.clone(),
            parent: None,
        }
    }

    fn parent(&mut self) -> Result<String> {
        if let Some(p) = &self.parent {
            return Ok(p.clone());
        }
        let name = format!("husk-bench-fork-parent-{}", std::process::id());
        let mut cmd = husk_command(&self.husk, &self.data_dir);
        cmd.args([
            "run",
            "-d",
            "-q",
            "--name",
            &name,
            &self.image,
            "sleep",
            "1000000",
        ]);
        run_checked(&mut cmd, "husk run -d")?;
        self.parent = Some(name.clone());
        Ok(name)
    }
}

impl Starter for HuskFork {
    fn name(&self) -> &str {
        FORK_NAME
    }

    fn what(&self) -> String {
        format!(
            "husk fork of a running {} container (its microVM saved, a new one restored)",
            self.image
        )
    }

    fn start_once(&mut self, round: usize) -> Result<Duration> {
        let parent = self.parent()?;
        let child = format!("{parent}-{round}");
        let mut cmd = husk_command(&self.husk, &self.data_dir);
        cmd.args(["fork", "--name", &child, &parent]);
        let took = timed(|| run_checked(&mut cmd, "husk fork").map(drop));
        let mut rm = husk_command(&self.husk, &self.data_dir);
        rm.args(["rm", "-f", &child]);
        let _ = rm.output();
        took
    }
}

impl Drop for HuskFork {
    fn drop(&mut self) {
        if let Some(p) = &self.parent {
            let mut rm = husk_command(&self.husk, &self.data_dir);
            rm.args(["rm", "-f", p]);
            let _ = rm.output();
        }
    }
}
