//! The fork density row: one idle container (`husk run -d IMAGE sleep`),
//! then K forks of it (`husk fork`, one after another). The first fork's
//! husk-vmm PSS is taken while it is the only fork; the sum over all K once
//! they all run. Their ratio is what the forks share: K for nothing shared,
//! 1 for everything. Everything is removed afterwards, also on failure.

use std::time::Instant;

use super::density::{idle_sandbox, vmm_pss_of, Sandboxes};
use super::husk::husk_command;
use super::report::{ForkDensity, ForkFigures};
use super::{run_checked, Options, Result};

/// Measures the fork density row for `opts.forks` forks.
pub fn measure(opts: &Options, log: &mut dyn std::io::Write) -> ForkDensity {
    let outcome = fork_all(opts).map_err(|e| crate::error::chain(&e));
    if let Ok(f) = &outcome {
        let _ = writeln!(
            log,
            "fork density: {} forks in {:.1} s, husk-vmm PSS {} KiB (the container {} KiB, the first fork alone {} KiB)",
            opts.forks,
            f.seconds,
            f.forks_pss_bytes / 1024,
            f.parent_pss_bytes / 1024,
            f.one_fork_pss_bytes / 1024
        );
    }
    ForkDensity {
        k: opts.forks,
        outcome,
    }
}

fn fork_all(opts: &Options) -> Result<ForkFigures> {
    let prefix = format!("husk-bench-{}-fork", std::process::id());
    let parent = format!("{prefix}-parent");
    let mut sandboxes = Sandboxes::new(opts);
    let mut run = idle_sandbox(opts, &parent);
    sandboxes.push(parent.clone());
    run_checked(&mut run, "husk run -d")?;
    let parent_pss_bytes = vmm_pss_of(opts, &parent)?;
    let t = Instant::now();
    let mut one_fork_pss_bytes = 0;
    let mut forks = Vec::new();
    for i in 0..opts.forks {
        let name = format!("{prefix}-{i}");
        let mut fork = husk_command(&opts.husk, &opts.data_dir);
        fork.args(["fork", "--name", &name, &parent]);
        sandboxes.push(name.clone());
        run_checked(&mut fork, "husk fork")?;
        if i == 0 {
            one_fork_pss_bytes = vmm_pss_of(opts, &name)?;
        }
        forks.push(name);
    }
    let seconds = t.elapsed().as_secs_f64();
    let mut forks_pss_bytes = 0;
    for name in &forks {
        forks_pss_bytes += vmm_pss_of(opts, name)?;
    }
    Ok(ForkFigures {
        seconds,
        parent_pss_bytes,
        one_fork_pss_bytes,
        forks_pss_bytes,
    })
}
