//! The host end of a container's TAP: wait for husk-vmm to create it, make
//! sure the firewall and NAT rules exist, turn IPv6 off on it (no router
//! advertisements from guests), give it the lease's host address, bring it
//! up and enable IP forwarding.
//!
//! Addresses are set with the classic socket ioctls (SIOCSIFADDR,
//! SIOCSIFNETMASK, SIOCSIFFLAGS), as the guest agent does for eth0: no
//! netlink library and no `ip` binary are needed. The kernel adds the /30's
//! connected route itself.

use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{firewall, io_cause, nat, Lease, NetError, Result};

const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCGIFADDR: libc::c_ulong = 0x8915;
const SIOCSIFADDR: libc::c_ulong = 0x8916;
const SIOCGIFNETMASK: libc::c_ulong = 0x891b;
const SIOCSIFNETMASK: libc::c_ulong = 0x891c;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// `struct ifreq` with its union as raw bytes (flags or a `sockaddr_in`).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut r = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        let n = name.len().min(15);
        r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        r
    }

    fn with_addr(name: &str, addr: Ipv4Addr) -> IfReq {
        let mut r = IfReq::new(name);
        let family = u16::try_from(libc::AF_INET).unwrap_or(2);
        r.data[..2].copy_from_slice(&family.to_ne_bytes());
        r.data[4..8].copy_from_slice(&addr.octets());
        r
    }

    fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.data[4], self.data[5], self.data[6], self.data[7])
    }
}

fn inet_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory preconditions.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn ioctl(
    fd: &OwnedFd,
    req: libc::c_ulong,
    r: &mut IfReq,
    what: &str,
) -> std::result::Result<(), String> {
    // SAFETY: these socket ioctls read or write one `struct ifreq`, which
    // `IfReq` matches in size (40 bytes) and layout.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req, r as *mut IfReq) } < 0 {
        return Err(format!(
            "{what}: {}",
            io_cause(&std::io::Error::last_os_error())
        ));
    }
    Ok(())
}

/// Waits up to `timeout` for `lease.tap_name` to exist, ensures the
/// firewall rules ([`firewall::ensure_rules`]) before the TAP is up, turns
/// IPv6 off on it, sets the lease's host address with a /30 netmask on it,
/// brings it up, enables IPv4 forwarding and ensures the NAT rule.
pub fn configure_host(lease: &Lease, timeout: Duration) -> Result<()> {
    let tap = lease.tap_name.as_str();
    let fail = |cause: String| NetError::Host {
        tap: tap.to_string(),
        cause,
    };
    wait_for_interface(tap, timeout).map_err(fail)?;
    firewall::ensure_rules(&lease.net_dir, lease, firewall::in_machine()).map_err(fail)?;
    disable_ipv6(tap).map_err(fail)?;
    set_address(tap, lease.host_ip, lease.prefix).map_err(fail)?;
    enable_forwarding(Path::new(IP_FORWARD)).map_err(fail)?;
    nat::ensure_rules(&lease.net_dir).map_err(fail)
}

/// Turns IPv6 off on interface `name` (nothing to do on a host without
/// IPv6).
fn disable_ipv6(name: &str) -> std::result::Result<(), String> {
    let path = Path::new("/proc/sys/net/ipv6/conf")
        .join(name)
        .join("disable_ipv6");
    match fs::write(&path, "1") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|e| format!("{}: {}", path.display(), io_cause(&e))),
    }
}

/// Polls /sys/class/net/NAME until the interface exists.
fn wait_for_interface(name: &str, timeout: Duration) -> std::result::Result<(), String> {
    let path = Path::new("/sys/class/net").join(name);
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() >= timeout {
            return Err(format!("no such network interface after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Sets `addr/prefix` on interface `name` and brings it up.
pub fn set_address(name: &str, addr: Ipv4Addr, prefix: u8) -> std::result::Result<(), String> {
    let fd = inet_socket().map_err(|e| format!("socket: {}", io_cause(&e)))?;
    ioctl(
        &fd,
        SIOCSIFADDR,
        &mut IfReq::with_addr(name, addr),
        "set address",
    )?;
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    ioctl(
        &fd,
        SIOCSIFNETMASK,
        &mut IfReq::with_addr(name, Ipv4Addr::from(mask)),
        "set netmask",
    )?;
    let mut r = IfReq::new(name);
    ioctl(&fd, SIOCGIFFLAGS, &mut r, "get flags")?;
    let up = i16::try_from(libc::IFF_UP).unwrap_or(1);
    let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) | up;
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(&fd, SIOCSIFFLAGS, &mut r, "set flags")
}

/// The IPv4 address, netmask and up flag of interface `name`.
pub fn interface_state(name: &str) -> std::result::Result<(Ipv4Addr, Ipv4Addr, bool), String> {
    let fd = inet_socket().map_err(|e| format!("socket: {}", io_cause(&e)))?;
    let mut a = IfReq::new(name);
    ioctl(&fd, SIOCGIFADDR, &mut a, "get address")?;
    let mut m = IfReq::new(name);
    ioctl(&fd, SIOCGIFNETMASK, &mut m, "get netmask")?;
    let mut f = IfReq::new(name);
    ioctl(&fd, SIOCGIFFLAGS, &mut f, "get flags")?;
    let up = i32::from(i16::from_ne_bytes([f.data[0], f.data[1]])) & libc::IFF_UP != 0;
    Ok((a.addr(), m.addr(), up))
}

/// Writes "1" to the ip_forward sysctl unless it is already on.
fn enable_forwarding(path: &Path) -> std::result::Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {}", path.display(), io_cause(&e));
    if fs::read_to_string(path).map_err(fail)?.trim() == "1" {
        return Ok(());
    }
    fs::write(path, "1\n").map_err(fail)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs::{File, OpenOptions};

    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;

    /// Creates a non-persistent TAP that lives as long as the returned file.
    pub(crate) fn create_tap(name: &str) -> File {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("open /dev/net/tun (tests need root)");
        let mut req = IfReq::new(name);
        req.data[..2].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq` (40 bytes),
        // which `IfReq` matches.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
        assert_eq!(
            rc,
            0,
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        );
        file
    }

    #[test]
    fn ifreq_is_the_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn missing_tap_times_out_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut lease = super::super::allocate(dir.path(), "t").unwrap();
        lease.tap_name = "husktestnone".into();
        let start = Instant::now();
        let err = configure_host(&lease, Duration::from_millis(100)).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(
            err.to_string(),
            "cannot configure husktestnone: no such network interface after 100ms"
        );
    }

    #[test]
    fn forwarding_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ip_forward");
        fs::write(&f, "0\n").unwrap();
        enable_forwarding(&f).unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "1\n");
        let missing = dir.path().join("nope");
        let err = enable_forwarding(&missing).unwrap_err();
        assert_eq!(
            err,
            format!("{}: No such file or directory", missing.display())
        );
    }

    #[test]
    fn configures_a_real_tap() {
        let dir = tempfile::tempdir().unwrap();
        let mut lease = super::super::allocate(dir.path(), "t").unwrap();
        // A name no real container uses, with the lease's addresses moved
        // to a range no real lease gives out, in case husk runs here too.
        lease.tap_name = format!("hktest{}", std::process::id() % 100_000);
        lease.host_ip = Ipv4Addr::new(10, 89, 0, 1);
        lease.guest_ip = Ipv4Addr::new(10, 89, 0, 2);
        lease.net_dir = nat::tests::test_lock_dir();
        let tap_name = lease.tap_name.clone();
        let creator = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            create_tap(&tap_name)
        });
        configure_host(&lease, Duration::from_secs(5)).unwrap();
        let tap = creator.join().unwrap();
        let (addr, mask, up) = interface_state(&lease.tap_name).unwrap();
        assert_eq!(addr, Ipv4Addr::new(10, 89, 0, 1));
        assert_eq!(mask, Ipv4Addr::new(255, 255, 255, 252));
        assert!(up);
        assert_eq!(fs::read_to_string(IP_FORWARD).unwrap().trim(), "1");
        // Idempotent: a second call adds no second rule.
        configure_host(&lease, Duration::from_secs(1)).unwrap();
        assert_eq!(nat::count_masquerade_rules().unwrap(), 1);
        let ipv6_off = Path::new("/proc/sys/net/ipv6/conf")
            .join(&lease.tap_name)
            .join("disable_ipv6");
        if ipv6_off.exists() {
            assert_eq!(fs::read_to_string(&ipv6_off).unwrap().trim(), "1");
        }
        // The test TAP's anti-spoofing rules go with it.
        for (chain, args) in firewall::spoof_rules(&lease) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert!(nat::iptables(&[&["-t", "filter", "-D", chain][..], &args].concat()).unwrap());
        }
        drop(tap);
        assert!(!Path::new("/sys/class/net").join(&lease.tap_name).exists());
    }
}
