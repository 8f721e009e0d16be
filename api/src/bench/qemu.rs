//! The QEMU row: `qemu-system-x86_64 -M microvm` on KVM booting husk's own
//! guest kernel and initramfs (as tests/scenarios/bench-run.sh does), timed
//! from QEMU's start to husk-agent's ready line on the serial console; QEMU
//! is then killed. The boot alone, without a container.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::report::Unavailable;
use super::{find_program, last_line, BenchError, Result, Starter};

/// The row's name.
pub const NAME: &str = "qemu-microvm";

/// How long a boot may take before the row fails.
const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// How long a killed QEMU is waited for (a vCPU stuck in the kernel can
/// keep it from dying; it is then left behind, and the row fails).
const EXIT_LIMIT: Duration = Duration::from_secs(10);

/// One boot of QEMU's microvm to husk-agent's ready line.
#[derive(Debug)]
pub struct QemuBoot {
    qemu: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

/// Whether a console line is husk-agent's ready line.
pub fn is_ready_line(line: &str) -> bool {
    line.contains("husk-agent ") && line.contains(": ready cpus=")
}

impl QemuBoot {
    /// The row; unavailable without QEMU, without hardware virtualization
    /// or without husk's guest kernel and initramfs.
    pub fn new() -> std::result::Result<Self, Unavailable> {
        let unavailable = |reason: String| Unavailable {
            name: NAME.into(),
            reason,
        };
        let qemu = find_program("qemu-system-x86_64")
            .ok_or_else(|| unavailable("qemu-system-x86_64 is not installed".into()))?;
        if !crate::machine::hardware_virtualization() {
            return Err(unavailable(
                "/dev/kvm cannot boot Linux here (the CPU has no vmx/svm)".into(),
            ));
        }
        let assets = crate::assets::find().map_err(|e| unavailable(e.to_string()))?;
        Ok(QemuBoot {
            qemu,
            kernel: assets.kernel,
            initrd: assets.initrd,
        })
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.qemu);
        c.args(["-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host"])
            .args(["-smp", "1", "-m", "512", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-no-reboot", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", "console=ttyS0 reboot=k panic=-1 quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
}

/// Reads `child`'s console until the ready line (Ok) or its end (Err),
/// within `limit`.
fn wait_ready(child: &mut Child, limit: Duration) -> Result<()> {
    let Some(out) = child.stdout.take() else {
        return Err(BenchError::Unfinished("no console from QEMU".into()));
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let ready = BufReader::new(out)
            .lines()
            .map_while(std::result::Result::ok)
            .any(|l| is_ready_line(&l));
        let _ = tx.send(ready);
    });
    match rx.recv_timeout(limit) {
        Ok(true) => Ok(()),
        Ok(false) => {
            let mut err = Vec::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_end(&mut err);
            }
            Err(BenchError::Unfinished(format!(
                "qemu ended before husk-agent was ready: {}",
                last_line(&err)
            )))
        }
        Err(_) => Err(BenchError::Unfinished(format!(
            "husk-agent was not ready within {} s under qemu",
            limit.as_secs()
        ))),
    }
}

/// Waits up to `limit` for the killed `child` to end.
fn reap(child: &mut Child, limit: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if t.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                return Err(BenchError::Unfinished(format!(
                    "qemu (pid {}) did not end within {} s of SIGKILL",
                    child.id(),
                    limit.as_secs()
                )))
            }
            Err(e) => {
                return Err(BenchError::Spawn {
                    program: "qemu".into(),
                    source: e,
                })
            }
        }
    }
}

impl Starter for QemuBoot {
    fn name(&self) -> &str {
        NAME
    }

    fn what(&self) -> String {
        "qemu -M microvm, same kernel + initramfs, to husk-agent ready (boot only)".into()
    }

    fn start_once(&mut self, _round: usize) -> Result<Duration> {
        let t = Instant::now();
        let mut child = self.command().spawn().map_err(|source| BenchError::Spawn {
            program: self.qemu.display().to_string(),
            source,
        })?;
        let ready = wait_ready(&mut child, BOOT_LIMIT);
        let took = t.elapsed();
        let _ = child.kill();
        let reaped = reap(&mut child, EXIT_LIMIT);
        ready?;
        reaped.map(|()| took)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_is_husk_agents() {
        assert!(is_ready_line("husk-agent 0.1.0: ready cpus=1 uptime=1.52s"));
        assert!(!is_ready_line("[    0.1] Run /init as init process"));
        assert!(!is_ready_line("husk-agent 0.1.0: mounting"));
    }

    #[test]
    fn a_console_without_the_ready_line_fails_and_a_slow_one_times_out() {
        let mut c = Command::new("sh")
            .args(["-c", "echo booting; echo no kvm >&2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let e = wait_ready(&mut c, Duration::from_secs(30)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "qemu ended before husk-agent was ready: no kvm"
        );
        c.wait().unwrap();
        let mut c = Command::new("sh")
            .args([
                "-c",
                "echo 'husk-agent 1: ready cpus=2 uptime=0.5s'; exec sleep 30",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        wait_ready(&mut c, Duration::from_secs(30)).unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        let mut c = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let e = wait_ready(&mut c, Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("not ready within"), "{e}");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    #[test]
    fn a_killed_child_is_reaped_and_a_live_one_is_reported() {
        let mut c = Command::new("sleep").arg("30").spawn().unwrap();
        let e = reap(&mut c, Duration::from_millis(100)).unwrap_err();
        assert!(
            e.to_string().contains("did not end within 0 s of SIGKILL"),
            "{e}"
        );
        c.kill().unwrap();
        reap(&mut c, Duration::from_secs(10)).unwrap();
    }
}
