//! `husk bench [--runs N] [--image IMG] [--plot FILE.png] [--density K] [--forks K]`:
//! VM against container start-up, measured here ([`crate::bench`]), or in
//! the husk machine on a host without hardware virtualization: the image
//! is synced there as for `run`, the machine measures and sends the
//! measurements back as JSON (`--json`), and the table and the plot are made
//! here, so the PNG lands at this host's path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::Args;

use super::{CliError, CliResult};
use crate::bench::report::Report;
use crate::bench::{self, plot, table, Options};
use crate::machine::{self, client::Stdio, proto::Kind, MachineError};

/// Options of `husk bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Measured starts per row (after one unmeasured warm-up each).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    pub runs: u16,
    /// The image every row starts.
    #[arg(long, default_value = "busybox")]
    pub image: String,
    /// Write a PNG plot of the results to this file.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// Sandboxes the density row starts at once (0: no density row).
    #[arg(long, default_value_t = 4, value_name = "K")]
    pub density: u16,
    /// Forks of one idle container the fork density row makes (0: no fork
    /// density row).
    #[arg(long, default_value_t = 4, value_name = "K")]
    pub forks: u16,
    /// Print the measurements as JSON instead (what the husk machine sends
    /// back to the host).
    #[arg(long, hide = true)]
    pub json: bool,
}

/// `husk bench` measured on this host.
pub fn run(data_dir: &Path, args: BenchArgs) -> CliResult {
    let husk = std::env::current_exe()
        .map_err(|e| CliError::new(1, format!("cannot find the husk executable: {e}")))?;
    let opts = Options {
        husk,
        data_dir: data_dir.to_path_buf(),
        image: args.image.clone(),
        runs: usize::from(args.runs),
        density: usize::from(args.density),
        forks: usize::from(args.forks),
    };
    let report = bench::measure(&opts, &mut std::io::stderr())?;
    if args.json {
        let text = serde_json::to_string(&report)?;
        println!("{text}");
        return Ok(i32::from(report.failed()));
    }
    present(&report, args.plot.as_deref())
}

/// Prints the table, writes the plot; status 1 when a row failed.
fn present(report: &Report, plot_path: Option<&Path>) -> CliResult {
    print!("{}", table::render(report));
    let _ = std::io::stdout().flush();
    if let Some(p) = plot_path {
        plot::write_png(report, p)?;
        eprintln!("husk bench: plot written to {}", p.display());
    }
    Ok(i32::from(report.failed()))
}

/// A `Write` that keeps what it gets.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("capture lock poisoned"))?
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The command line the machine runs for `args` (image as synced).
pub fn machine_argv(args: &BenchArgs, image: &str) -> Vec<String> {
    vec![
        "bench".into(),
        "--json".into(),
        "--runs".into(),
        args.runs.to_string(),
        "--image".into(),
        image.into(),
        "--density".into(),
        args.density.to_string(),
        "--forks".into(),
        args.forks.to_string(),
    ]
}

/// `husk bench` measured in the husk machine, shown here.
pub fn forward(data_dir: &Path, args: &BenchArgs) -> machine::Result<i32> {
    let client = machine::client(data_dir)?;
    let image = machine::images::sync_image(data_dir, &client, &args.image, false)?;
    let out = Capture::default();
    let code = client.run(
        Kind::Husk,
        machine_argv(args, &image),
        Stdio {
            stdin: Box::new(std::io::empty()),
            stdout: Box::new(out.clone()),
            stderr: Box::new(std::io::stderr()),
        },
    )?;
    let bytes = out.0.lock().map(|b| b.clone()).unwrap_or_default();
    let Ok(report) = serde_json::from_slice::<Report>(&bytes) else {
        return Err(MachineError::Remote(format!(
            "husk bench in the husk machine ended with status {code} and no measurements"
        )));
    };
    if args.json {
        println!("{}", String::from_utf8_lossy(&bytes).trim_end());
        return Ok(code);
    }
    Ok(present(&report, args.plot.as_deref()).unwrap_or_else(|e| {
        eprintln!("husk: {}", e.message);
        e.status
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: BenchArgs,
    }

    #[test]
    fn defaults_and_the_machine_command_line() {
        let t = T::try_parse_from(["bench", "--plot", "/tmp/x.png"]).unwrap();
        assert_eq!(
            (t.a.runs, t.a.density, t.a.forks, t.a.image.as_str()),
            (5, 4, 4, "busybox")
        );
        let t = T::try_parse_from([
            "bench",
            "--runs",
            "2",
            "--density",
            "0",
            "--image",
            "alpine",
            "--forks",
            "10",
        ])
        .unwrap();
        assert_eq!(
            machine_argv(&t.a, "alpine:latest"),
            [
                "bench",
                "--json",
                "--runs",
                "2",
                "--image",
                "alpine:latest",
                "--density",
                "0",
                "--forks",
                "10"
            ]
        );
        assert!(T::try_parse_from(["bench", "--runs", "0"]).is_err());
    }
}
