//! Provisioning a guest restored from a template snapshot
//! (`husk_proto::provision`): fresh entropy first (mixed into the input
//! pool, then the generator reseeded, before any container process can
//! draw from it), the host's time, then eth0's identity while the disks
//! are mounted, each once the guest has seen the capacity husk-vmm gave
//! its slot.

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

use husk_proto::boot::DiskMount;
use husk_proto::provision::{Provision, ProvisionNet};

use crate::netconf;

/// How long a disk slot may take to show its new capacity.
const CAPACITY_WAIT: Duration = Duration::from_secs(10);

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Provisioning errors.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The request is malformed.
    #[error("invalid provision")]
    Invalid(#[from] husk_proto::agent::ProtocolError),
    /// The random generator could not be fed or reseeded.
    #[error("cannot {what} the kernel's random generator")]
    Entropy {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The clock could not be set.
    #[error("cannot set the clock")]
    Clock(#[source] nix::Error),
    /// eth0 could not be configured.
    #[error("cannot address eth0")]
    Network(#[from] netconf::NetConfError),
    /// A provisioning thread panicked.
    #[error("{0} panicked")]
    Panicked(&'static str),
    /// A disk slot never showed a capacity.
    #[error("/dev/{device} still has no capacity after {secs} s")]
    Capacity {
        /// Device name under /dev.
        device: String,
        /// How long it was waited for.
        secs: u64,
    },
    /// A disk could not be mounted.
    #[error("cannot mount /dev/{device} on {path}")]
    Mount {
        /// Device name under /dev.
        device: String,
        /// Mount point.
        path: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, ProvisionError>;

/// Gives this guest what `p` holds; eth0 is `iface`.
pub fn provision(iface: &str, p: &Provision) -> Result<()> {
    p.validate()?;
    reseed(&p.entropy)?;
    set_clock(p.unix_time_ns)?;
    // eth0 is addressed while the disks are waited for and mounted: they
    // do not depend on each other.
    std::thread::scope(|s| {
        let net = p.net.as_ref().map(|n| s.spawn(move || address(iface, n)));
        let disks = p.disks.iter().try_for_each(|d| {
            wait_for_capacity(Path::new("/sys"), &d.device, CAPACITY_WAIT)?;
            mount_disk(d)
        });
        let net = net.map_or(Ok(()), |t| {
            t.join()
                .unwrap_or(Err(ProvisionError::Panicked("addressing eth0")))
        });
        disks.and(net)
    })
}

/// Gives eth0 the identity in `n` and writes its name servers.
fn address(iface: &str, n: &ProvisionNet) -> Result<()> {
    netconf::readdress(iface, n.mac, (n.net.ip, n.net.prefix), n.net.gateway)?;
    if !n.net.dns.is_empty() {
        netconf::write_resolv_conf(Path::new("/"), &n.net.dns)?;
    }
    Ok(())
}

/// Mixes `bytes` into the kernel's input pool, credited as entropy, and
/// reseeds the generator from it at once.
pub fn reseed(bytes: &[u8]) -> Result<()> {
    let err = |what| move |source| ProvisionError::Entropy { what, source };
    let random = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(err("open"))?;
    let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&len.saturating_mul(8).to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(bytes);
    // SAFETY: `info` is a valid rand_pool_info whose buf_size matches the
    // bytes that follow it; the kernel only reads it.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(err("feed")(std::io::Error::last_os_error()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(err("reseed")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets the real-time clock to `unix_time_ns`.
pub fn set_clock(unix_time_ns: u64) -> Result<()> {
    let secs = i64::try_from(unix_time_ns / 1_000_000_000).unwrap_or(i64::MAX);
    let nanos = i64::try_from(unix_time_ns % 1_000_000_000).unwrap_or(0);
    let ts = nix::sys::time::TimeSpec::new(secs, nanos);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).map_err(ProvisionError::Clock)
}

/// Waits up to `limit` until `/sys/block/<device>/size` is not zero.
pub fn wait_for_capacity(sys: &Path, device: &str, limit: Duration) -> Result<()> {
    let size = sys.join("block").join(device).join("size");
    let deadline = Instant::now() + limit;
    loop {
        let sectors = fs::read_to_string(&size)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if sectors > 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ProvisionError::Capacity {
                device: device.to_string(),
                secs: limit.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Mounts one disk (ext4, nosuid, nodev).
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
    .map_err(|source| ProvisionError::Mount {
        device: d.device.clone(),
        path: d.path.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_waited_for_and_then_found() {
        let sys = tempfile::tempdir().unwrap();
        let dev = sys.path().join("block/vdb");
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("size"), "0\n").unwrap();
        let e = wait_for_capacity(sys.path(), "vdb", Duration::from_millis(20)).unwrap_err();
        assert_eq!(e.to_string(), "/dev/vdb still has no capacity after 0 s");
        let size = dev.join("size");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            fs::write(size, "2048\n").unwrap();
        });
        wait_for_capacity(sys.path(), "vdb", Duration::from_secs(5)).unwrap();
        writer.join().unwrap();
    }

    #[test]
    fn an_invalid_provision_changes_nothing() {
        let p = Provision {
            entropy: vec![0; 4],
            unix_time_ns: 0,
            net: None,
            disks: Vec::new(),
        };
        let e = provision("eth0", &p).unwrap_err();
        assert!(matches!(e, ProvisionError::Invalid(_)), "{e}");
    }
}
