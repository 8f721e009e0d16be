//! The husk cold-boot row: `husk run --rm IMAGE true`, the real command
//! (this same husk executable), from its start to its exit: a microVM
//! booted, the container run, the VM gone.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{run_checked, timed, Options, Result, Starter};

/// The row's name.
pub const NAME: &str = "husk";

/// `husk run --rm IMAGE true`.
#[derive(Debug)]
pub struct HuskRun {
    husk: PathBuf,
    data_dir: PathBuf,
    image: String,
}

impl HuskRun {
    /// The row for `opts`' husk, data directory and image.
    pub fn new(opts: &Options) -> Self {
        HuskRun {
            husk: opts.husk.clone(),
            data_dir: opts.data_dir.clone(),
            image: opts.image.clone(),
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
        NAME
    }

    fn what(&self) -> String {
        format!("husk run --rm {} true (microVM cold boot)", self.image)
    }

    fn start_once(&mut self, _round: usize) -> Result<Duration> {
        let mut cmd = husk_command(&self.husk, &self.data_dir);
        cmd.args(["run", "--rm", "-q", &self.image, "true"]);
        timed(|| run_checked(&mut cmd, "husk run").map(drop))
    }
}
