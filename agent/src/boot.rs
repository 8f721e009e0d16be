//! PID 1 duties at boot: the guest's pseudo filesystems, the console, the
//! ready line, the boot-time marker and power-off.
//!
//! Power-off: with ACPI compiled out, Linux's `poweroff` only halts the
//! CPUs, so the agent first writes [`DEBUG_PORT_POWER_OFF`] to husk's debug
//! port (husk-vmm exits with status 0 at once), then asks the kernel to
//! reboot, which other VMMs (QEMU with `-no-reboot`, Firecracker) treat as
//! the end of the VM.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use nix::mount::{mount, MsFlags};

pub use husk_agent::netconf::{add_default_route, configure_interface, write_resolv_conf};
pub use husk_agent::provision::mount_disk;
pub use husk_proto::guest::{DEBUG_PORT, DEBUG_PORT_BOOT_MARKER, DEBUG_PORT_POWER_OFF};

/// Boot errors.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A mount failed.
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The boot parameters on the kernel command line are malformed.
    #[error("bad kernel command line")]
    Params(#[from] husk_proto::boot::BootParamError),
    /// A file under /proc or /sys could not be read or parsed.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for boot duties.
pub type Result<T> = std::result::Result<T, BootError>;

/// The pseudo filesystems PID 1 mounts: (source, target, type, flags, data).
const MOUNTS: &[(&str, &str, &str, u64, &str)] = &[
    ("proc", "/proc", "proc", 0, ""),
    ("sysfs", "/sys", "sysfs", 0, ""),
    ("devtmpfs", "/dev", "devtmpfs", 0, "mode=0755"),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        0,
        "gid=5,mode=620,ptmxmode=666",
    ),
    ("tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", 0, "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", 0, "mode=1777"),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, ""),
];

/// Mounts /proc, /sys, /dev (devtmpfs, devpts, shm), /run, /tmp and cgroup2.
/// A filesystem already mounted there (EBUSY) is fine.
pub fn mount_pseudo_filesystems() -> Result<()> {
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    for &(source, target, fstype, _, data) in MOUNTS {
        let _ = fs::create_dir_all(target);
        let flags = if fstype == "devtmpfs" || fstype == "tmpfs" && target != "/dev/shm" {
            MsFlags::MS_NOSUID
        } else {
            base
        };
        let data = (!data.is_empty()).then_some(data);
        match mount(Some(source), target, Some(fstype), flags, data) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(source) => {
                return Err(BootError::Mount {
                    fstype: leak(fstype),
                    target: leak(target),
                    source,
                })
            }
        }
    }
    Ok(())
}

fn leak(s: &str) -> &'static str {
    MOUNTS
        .iter()
        .flat_map(|m| [m.1, m.2])
        .find(|x| *x == s)
        .unwrap_or("?")
}

/// Points stdin/stdout/stderr at /dev/console (the kernel does this only
/// when the initramfs has a /dev/console node).
pub fn ensure_console() {
    if let Ok(console) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let _ = nix::unistd::dup2_stdin(&console);
        let _ = nix::unistd::dup2_stdout(&console);
        let _ = nix::unistd::dup2_stderr(&console);
    }
}

/// Number of online CPUs, from `/sys/devices/system/cpu/online` ("0-3,5").
pub fn online_cpus(sys: &Path) -> Result<u32> {
    let path = sys.join("devices/system/cpu/online");
    let text = fs::read_to_string(&path).map_err(|source| BootError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_cpu_list(&text).ok_or_else(|| BootError::Read {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, text.trim().to_string()),
    })
}

/// Counts the CPUs in a kernel CPU list such as "0-3,5".
pub fn parse_cpu_list(text: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// Kernel uptime in seconds, from `/proc/uptime`.
pub fn uptime(proc_dir: &Path) -> Result<f64> {
    let path = proc_dir.join("uptime");
    let text = fs::read_to_string(&path).map_err(|source| BootError::Read {
        path: path.display().to_string(),
        source,
    })?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BootError::Read {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, text.trim().to_string()),
        })
}

/// Writes one byte to husk's debug port. Fails quietly where port access is
/// not permitted (e.g. when run outside a guest in tests).
pub fn debug_port_write(value: u8) -> bool {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(u64::from(DEBUG_PORT), 1, 1) } != 0 {
        return false;
    }
    // SAFETY: ioperm above granted access to exactly this port; the `out`
    // instruction touches no memory.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") DEBUG_PORT, in("al") value,
            options(nomem, nostack, preserves_flags));
    }
    true
}

/// The agent's log: warnings and errors as `husk-agent: <level>: <text>`
/// lines on the console (stderr), which husk keeps as the container's
/// `console.log`.
#[derive(Debug)]
pub struct ConsoleLog;

static CONSOLE_LOG: ConsoleLog = ConsoleLog;

impl ConsoleLog {
    /// Makes it the `log` crate's logger (once; later calls do nothing).
    pub fn install() {
        if log::set_logger(&CONSOLE_LOG).is_ok() {
            log::set_max_level(log::LevelFilter::Warn);
        }
    }
}

impl log::Log for ConsoleLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let line = format!(
                "husk-agent: {}: {}\n",
                r.level().as_str().to_lowercase(),
                r.args()
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Prints the ready line that the host and the e2e tests look for.
pub fn print_ready(version: &str) -> Result<()> {
    let cpus = online_cpus(Path::new("/sys"))?;
    let up = uptime(Path::new("/proc"))?;
    let line = format!("husk-agent {version}: ready cpus={cpus} uptime={up:.2}s\n");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
    Ok(())
}

/// Syncs filesystems and ends the VM (never returns).
pub fn power_off() -> ! {
    // The serial console transmits asynchronously: let it drain first so the
    // last lines are not lost when the VM ends.
    let _ = nix::sys::termios::tcdrain(std::io::stdout());
    let _ = nix::sys::termios::tcdrain(std::io::stderr());
    nix::unistd::sync();
    debug_port_write(DEBUG_PORT_POWER_OFF);
    // Still running: not husk-vmm. A reset ends the VM under other VMMs.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0\n"), Some(1));
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,5,7-8"), Some(7));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn reads_host_proc_and_sys() {
        assert!(online_cpus(Path::new("/sys")).unwrap() >= 1);
        assert!(uptime(Path::new("/proc")).unwrap() > 0.0);
        let err = uptime(Path::new("/nonexistent")).unwrap_err().to_string();
        assert_eq!(err, "cannot read /nonexistent/uptime");
    }
}

/// Whether the VM has a virtio-vsock device (virtio device id 19), i.e. a
/// host to take requests from.
pub fn has_vsock_device(sys: &Path) -> bool {
    let Ok(devices) = fs::read_dir(sys.join("bus/virtio/devices")) else {
        return false;
    };
    devices
        .flatten()
        .any(|d| fs::read_to_string(d.path().join("device")).is_ok_and(|id| id.trim() == "0x0013"))
}

#[cfg(test)]
mod disk_tests {
    use super::*;

    #[test]
    fn no_vsock_in_an_empty_sysfs() {
        let dir = std::env::temp_dir().join(format!("husk-vsock-{}", std::process::id()));
        let dev = dir.join("bus/virtio/devices/virtio0");
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("device"), "0x0002\n").unwrap();
        assert!(!has_vsock_device(&dir));
        fs::write(dev.join("device"), "0x0013\n").unwrap();
        assert!(has_vsock_device(&dir));
        let _ = fs::remove_dir_all(&dir);
    }
}
