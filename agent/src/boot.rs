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

use husk_proto::boot::DiskMount;
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
    /// A disk named by the boot parameters could not be mounted.
    #[error("cannot mount /dev/{device} on {path}")]
    MountDisk {
        /// Device name under /dev.
        device: String,
        /// Mount point.
        path: String,
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
    /// The default route could not be added.
    #[error("cannot add a default route via {gateway} on {device}")]
    Route {
        /// The gateway.
        gateway: std::net::Ipv4Addr,
        /// The interface.
        device: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
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

/// Mounts one requested disk.
pub fn mount_disk(d: &DiskMount) -> Result<()> {
    let _ = fs::create_dir_all(&d.path);
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if d.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(
        Some(format!("/dev/{}", d.device).as_str()),
        d.path.as_str(),
        Some("ext4"),
        flags,
        None::<&str>,
    )
    .map_err(|source| BootError::MountDisk {
        device: d.device.clone(),
        path: d.path.clone(),
        source,
    })
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

const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCSIFADDR: libc::c_ulong = 0x8916;
const SIOCSIFNETMASK: libc::c_ulong = 0x891c;

/// `struct ifreq` with the union as raw bytes (flags or a `sockaddr_in`).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

fn ifreq(name: &str) -> IfReq {
    let mut r = IfReq {
        name: [0; 16],
        data: [0; 24],
    };
    let n = name.len().min(15);
    r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    r
}

fn sockaddr_in(addr: [u8; 4]) -> [u8; 24] {
    let mut d = [0u8; 24];
    d[..2].copy_from_slice(&u16::try_from(libc::AF_INET).unwrap_or(2).to_ne_bytes());
    d[4..8].copy_from_slice(&addr);
    d
}

fn ioctl(fd: &std::os::fd::OwnedFd, req: libc::c_ulong, r: &mut IfReq, what: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the socket ioctls used here read or write one `struct ifreq`,
    // which `IfReq` matches in size (40 bytes) and layout.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req, r as *mut IfReq) } < 0 {
        return Err(BootError::Read {
            path: what.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Brings interface `name` up and, when given, sets its IPv4 address.
pub fn configure_interface(name: &str, addr: Option<([u8; 4], u8)>) -> Result<()> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) has no memory preconditions; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(BootError::Read {
            path: "socket(AF_INET)".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    if let Some((ip, prefix)) = addr {
        let mut r = ifreq(name);
        r.data = sockaddr_in(ip);
        ioctl(&fd, SIOCSIFADDR, &mut r, &format!("{name}: set address"))?;
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix.min(32)))
            .unwrap_or(0);
        let mut r = ifreq(name);
        r.data = sockaddr_in(mask.to_be_bytes());
        ioctl(&fd, SIOCSIFNETMASK, &mut r, &format!("{name}: set netmask"))?;
    }
    let mut r = ifreq(name);
    ioctl(&fd, SIOCGIFFLAGS, &mut r, &format!("{name}: get flags"))?;
    let flags =
        i16::from_ne_bytes([r.data[0], r.data[1]]) | i16::try_from(libc::IFF_UP).unwrap_or(1);
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(&fd, SIOCSIFFLAGS, &mut r, &format!("{name}: set flags"))
}

const SIOCADDRT: libc::c_ulong = 0x890b;
const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;

/// `struct rtentry` (linux/route.h), the argument of SIOCADDRT.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// An IPv4 `struct sockaddr` (laid out as `sockaddr_in`, port 0).
fn sockaddr(addr: std::net::Ipv4Addr) -> libc::sockaddr {
    let mut data = [0 as libc::c_char; 14];
    for (d, b) in data[2..6].iter_mut().zip(addr.octets()) {
        *d = libc::c_char::from_ne_bytes([b]);
    }
    libc::sockaddr {
        sa_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
        sa_data: data,
    }
}

/// Adds the default route `0.0.0.0/0 via gateway dev device` (an existing
/// one is fine).
pub fn add_default_route(device: &str, gateway: std::net::Ipv4Addr) -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let fail = |source| BootError::Route {
        gateway,
        device: device.to_string(),
        source,
    };
    let dev = std::ffi::CString::new(device)
        .map_err(|_| fail(std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: socket(2) has no memory preconditions; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr(std::net::Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr(gateway),
        rt_genmask: sockaddr(std::net::Ipv4Addr::UNSPECIFIED),
        rt_flags: RTF_UP | RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_ptr().cast_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT reads one `struct rtentry`, which `RtEntry` matches
    // in size (120 bytes) and layout; `rt_dev` points at a NUL-terminated
    // string that outlives the call, and the kernel only reads it.
    if unsafe { libc::ioctl(fd.as_raw_fd(), SIOCADDRT, &mut rt as *mut RtEntry) } < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(fail(e));
        }
    }
    Ok(())
}

/// Writes `<root>/etc/resolv.conf` naming `servers`. The file is replaced
/// (written beside it, then renamed), so a symlink there is replaced, not
/// followed.
pub fn write_resolv_conf(root: &Path, servers: &[std::net::Ipv4Addr]) -> Result<()> {
    let etc = root.join("etc");
    let path = etc.join("resolv.conf");
    let tmp = etc.join(".resolv.conf.husk");
    let fail = |source| BootError::Write {
        path: path.display().to_string(),
        source,
    };
    fs::create_dir_all(&etc).map_err(fail)?;
    let mut text = String::from("# written by husk-agent from husk.dns\n");
    for s in servers {
        text.push_str(&format!("nameserver {s}\n"));
    }
    fs::write(&tmp, text).map_err(fail)?;
    fs::rename(&tmp, &path).map_err(fail)
}

#[cfg(test)]
mod net_tests {
    use super::*;

    #[test]
    fn ifreq_is_the_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn rtentry_is_the_kernel_layout() {
        use std::mem::offset_of;
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        assert_eq!(offset_of!(RtEntry, rt_dst), 8);
        assert_eq!(offset_of!(RtEntry, rt_gateway), 24);
        assert_eq!(offset_of!(RtEntry, rt_genmask), 40);
        assert_eq!(offset_of!(RtEntry, rt_flags), 56);
        assert_eq!(offset_of!(RtEntry, rt_metric), 80);
        assert_eq!(offset_of!(RtEntry, rt_dev), 88);
        assert_eq!(offset_of!(RtEntry, rt_irtt), 112);
    }

    /// Creates a TAP in the calling thread's network namespace; it lives as
    /// long as the returned file.
    fn create_tap(name: &str) -> fs::File {
        use std::os::fd::AsRawFd;
        const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("open /dev/net/tun (this test needs root)");
        let mut r = ifreq(name);
        r.data[..2].copy_from_slice(&(0x0002i16 | 0x1000).to_ne_bytes()); // IFF_TAP | IFF_NO_PI
                                                                          // SAFETY: TUNSETIFF reads and writes one `struct ifreq` (40 bytes).
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut r as *mut IfReq) };
        assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        file
    }

    #[test]
    fn default_route_in_a_private_network_namespace() {
        // Namespaces are per thread: this thread gets its own, so the
        // host's routes are untouched.
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET) (this test needs root)");
            let _tap = create_tap("hkroute0");
            configure_interface("hkroute0", Some(([10, 88, 0, 2], 30))).unwrap();
            let gw = std::net::Ipv4Addr::new(10, 88, 0, 1);
            add_default_route("hkroute0", gw).unwrap();
            add_default_route("hkroute0", gw).unwrap(); // EEXIST is fine
            let routes = fs::read_to_string("/proc/thread-self/net/route").unwrap();
            let default: Vec<&str> = routes
                .lines()
                .filter(|l| l.split_whitespace().nth(1) == Some("00000000"))
                .collect();
            assert_eq!(default.len(), 1, "{routes}");
            let f: Vec<&str> = default[0].split_whitespace().collect();
            assert_eq!((f[0], f[2]), ("hkroute0", "0100580A"), "{routes}");
            let err = add_default_route("nosuchdev0", gw).unwrap_err();
            assert_eq!(
                err.to_string(),
                "cannot add a default route via 10.88.0.1 on nosuchdev0"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn sockaddr_holds_the_address() {
        let sa = sockaddr(std::net::Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(i32::from(sa.sa_family), libc::AF_INET);
        let bytes: Vec<u8> = sa.sa_data.iter().map(|c| c.to_ne_bytes()[0]).collect();
        assert_eq!(&bytes[..6], &[0, 0, 10, 88, 0, 1]);
    }

    #[test]
    fn resolv_conf_replaces_a_symlink() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, root.path().join("etc/resolv.conf")).unwrap();
        let servers = [
            std::net::Ipv4Addr::new(10, 0, 2, 3),
            std::net::Ipv4Addr::new(1, 1, 1, 1),
        ];
        write_resolv_conf(root.path(), &servers).unwrap();
        assert!(!outside.exists());
        assert_eq!(
            fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap(),
            "# written by husk-agent from husk.dns\nnameserver 10.0.2.3\nnameserver 1.1.1.1\n"
        );
        let err = write_resolv_conf(Path::new("/proc/1/nonexistent"), &servers).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot write /proc/1/nonexistent/etc/resolv.conf"
        );
    }
}
