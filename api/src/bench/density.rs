//! The density row: K sandboxes started at once (`husk run -d IMAGE sleep`,
//! K processes spawned together), the time until the last one is up
//! (starts per second), then the summed PSS of their husk-vmm processes
//! (`/proc/PID/smaps_rollup`) while all K run; they are removed afterwards,
//! also when something failed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::husk::husk_command;
use super::report::{Density, DensityFigures};
use super::{check_status, io_err, run_checked, BenchError, Options, Result};

/// Measures the density row for `opts.density` sandboxes.
pub fn measure(opts: &Options, log: &mut dyn std::io::Write) -> Density {
    let outcome = start_all(opts).map_err(|e| crate::error::chain(&e));
    if let Ok(f) = &outcome {
        let _ = writeln!(
            log,
            "density: {} up in {:.1} ms, husk-vmm PSS {} KiB",
            opts.density,
            f.seconds * 1000.0,
            f.pss_bytes / 1024
        );
    }
    Density {
        k: opts.density,
        outcome,
    }
}

/// Removes the named containers when dropped.
pub(super) struct Sandboxes<'a> {
    opts: &'a Options,
    names: Vec<String>,
}

impl<'a> Sandboxes<'a> {
    /// None yet.
    pub(super) fn new(opts: &'a Options) -> Self {
        Sandboxes {
            opts,
            names: Vec::new(),
        }
    }

    /// Removes container `name` too when dropped.
    pub(super) fn push(&mut self, name: String) {
        self.names.push(name);
    }
}

impl Drop for Sandboxes<'_> {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let mut rm = husk_command(&self.opts.husk, &self.opts.data_dir);
        rm.args(["rm", "-f"]).args(&self.names);
        if let Err(e) = run_checked(&mut rm, "husk rm -f") {
            log::warn!("density row: {}", crate::error::chain(&e));
        }
    }
}

/// `husk run -d` of an idle sandbox named `name` (the image's `sleep`).
pub(super) fn idle_sandbox(opts: &Options, name: &str) -> Command {
    let mut c = husk_command(&opts.husk, &opts.data_dir);
    c.args(["run", "-d", "-q", "--name", name, &opts.image])
        .args(["sleep", "3600"]);
    c
}

fn start_all(opts: &Options) -> Result<DensityFigures> {
    let mut sandboxes = Sandboxes::new(opts);
    for i in 0..opts.density {
        sandboxes.push(format!("husk-bench-{}-{i}", std::process::id()));
    }
    let t = Instant::now();
    let mut children = Vec::new();
    for name in &sandboxes.names {
        let mut c = idle_sandbox(opts, name);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match c.spawn() {
            Ok(child) => children.push(child),
            Err(source) => {
                reap(children);
                return Err(BenchError::Spawn {
                    program: "husk run -d".into(),
                    source,
                });
            }
        }
    }
    let outputs = reap(children);
    let seconds = t.elapsed().as_secs_f64();
    for out in outputs {
        check_status("husk run -d", &out?)?;
    }
    let mut pss = 0;
    for name in &sandboxes.names {
        pss += vmm_pss_of(opts, name)?;
    }
    Ok(DensityFigures {
        seconds,
        pss_bytes: pss,
    })
}

/// Waits for every child.
fn reap(children: Vec<Child>) -> Vec<Result<std::process::Output>> {
    children
        .into_iter()
        .map(|c| {
            c.wait_with_output().map_err(|source| BenchError::Spawn {
                program: "husk run -d".into(),
                source,
            })
        })
        .collect()
}

/// PSS in bytes of the husk-vmm of container `name`.
pub(super) fn vmm_pss_of(opts: &Options, name: &str) -> Result<u64> {
    let mut inspect = husk_command(&opts.husk, &opts.data_dir);
    inspect.args(["inspect", name]);
    let out = run_checked(&mut inspect, "husk inspect")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let pid = vmm_pid(&v).ok_or_else(|| {
        BenchError::Unfinished(format!("container {name} has no running husk-vmm"))
    })?;
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).map_err(io_err("read", Path::new(&path)))?;
    pss_kib(&text)
        .map(|k| k * 1024)
        .ok_or_else(|| BenchError::Unfinished(format!("no Pss line in {path}")))
}

/// `State.VmmPid` of `husk inspect`'s output (an array of one, or one
/// object); `None` when it is missing or 0.
pub fn vmm_pid(inspect: &serde_json::Value) -> Option<u64> {
    let c = inspect
        .as_array()
        .and_then(|a| a.first())
        .unwrap_or(inspect);
    c["State"]["VmmPid"].as_u64().filter(|&p| p > 0)
}

/// The `Pss:` figure of a `smaps_rollup`, in KiB.
pub fn pss_kib(smaps_rollup: &str) -> Option<u64> {
    smaps_rollup.lines().find_map(|l| {
        let rest = l.strip_prefix("Pss:")?;
        let mut f = rest.split_whitespace();
        let n = f.next()?.parse().ok()?;
        (f.next() == Some("kB")).then_some(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pss_is_read_from_smaps_rollup() {
        let text = "55c8-7ffc ---p 00000000 00:00 0   [rollup]\nRss:   1684 kB\nPss:    341 kB\nPss_Dirty:   108 kB\n";
        assert_eq!(pss_kib(text), Some(341));
        assert_eq!(pss_kib("Rss: 1 kB\n"), None);
        assert_eq!(pss_kib("Pss: many kB\n"), None);
        let own = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
        assert!(pss_kib(&own).unwrap() > 0);
    }

    #[test]
    fn vmm_pid_from_inspect() {
        let v = serde_json::json!([{"State": {"VmmPid": 4242, "Pid": 1}}]);
        assert_eq!(vmm_pid(&v), Some(4242));
        let v = serde_json::json!({"State": {"VmmPid": 7}});
        assert_eq!(vmm_pid(&v), Some(7));
        let v = serde_json::json!([{"State": {"VmmPid": 0}}]);
        assert_eq!(vmm_pid(&v), None);
        assert_eq!(vmm_pid(&serde_json::json!([])), None);
    }
}
