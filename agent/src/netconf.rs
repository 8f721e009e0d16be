//! eth0 and its routes: the address and netmask, link flags, the MAC
//! address, the default route and `/etc/resolv.conf`, by the classic
//! socket ioctls (no netlink library in the static agent). Used at boot
//! (`husk.ip`, `husk.gw`, `husk.dns`) and by `readdress` (a forked
//! microVM takes its own address).

use std::fs;
use std::path::Path;

/// Network configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum NetConfError {
    /// A socket or an ioctl on it failed.
    #[error("{path}")]
    Read {
        /// What was done.
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

type Result<T> = std::result::Result<T, NetConfError>;

const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCSIFADDR: libc::c_ulong = 0x8916;
const SIOCSIFNETMASK: libc::c_ulong = 0x891c;
const SIOCSIFHWADDR: libc::c_ulong = 0x8924;
const ARPHRD_ETHER: u16 = 1;

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
        return Err(NetConfError::Read {
            path: what.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Brings interface `name` up and, when given, sets its IPv4 address.
pub fn configure_interface(name: &str, addr: Option<([u8; 4], u8)>) -> Result<()> {
    let fd = ioctl_socket()?;
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

/// Sets interface `name`'s MAC address (virtio-net takes a new one while
/// up).
pub fn set_mac(name: &str, mac: [u8; 6]) -> Result<()> {
    let fd = ioctl_socket()?;
    let mut r = ifreq(name);
    r.data[..2].copy_from_slice(&ARPHRD_ETHER.to_ne_bytes());
    r.data[2..8].copy_from_slice(&mac);
    ioctl(
        &fd,
        SIOCSIFHWADDR,
        &mut r,
        &format!("{name}: set MAC address"),
    )
}

/// Gives interface `name` a new identity: its MAC, its address, and the
/// default route through `gateway` (an old route goes with the old address).
pub fn readdress(
    name: &str,
    mac: [u8; 6],
    (ip, prefix): (std::net::Ipv4Addr, u8),
    gateway: Option<std::net::Ipv4Addr>,
) -> Result<()> {
    set_mac(name, mac)?;
    configure_interface(name, Some((ip.octets(), prefix)))?;
    if let Some(gw) = gateway {
        add_default_route(name, gw)?;
    }
    Ok(())
}

/// Brings the loopback interface of the caller's network namespace up
/// (a new namespace's `lo` is down, so 127.0.0.1 would not answer).
/// Async-signal-safe: raw syscalls on the stack only, for a child between
/// clone and execve. Returns the errno on failure.
pub fn raise_loopback() -> std::result::Result<(), i32> {
    use crate::container::process::errno;
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: an all-zero ifreq is valid (a name of NULs, no flags).
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    // SAFETY: `r` is an ifreq the kernel reads and writes in place; the
    // flags are the union's member these two ioctls use.
    let result = unsafe {
        if libc::ioctl(fd, SIOCGIFFLAGS, &mut r) != 0 {
            Err(errno())
        } else {
            r.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
            if libc::ioctl(fd, SIOCSIFFLAGS, &mut r) != 0 {
                Err(errno())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    result
}

/// An AF_INET datagram socket, the handle the interface and route ioctls
/// take.
fn inet_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) has no memory preconditions; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) })
}

/// [`inet_socket`] for the interface ioctls, with their error.
fn ioctl_socket() -> Result<std::os::fd::OwnedFd> {
    inet_socket().map_err(|source| NetConfError::Read {
        path: "socket(AF_INET)".into(),
        source,
    })
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
    use std::os::fd::AsRawFd;
    let fail = |source| NetConfError::Route {
        gateway,
        device: device.to_string(),
        source,
    };
    let dev = std::ffi::CString::new(device)
        .map_err(|_| fail(std::io::ErrorKind::InvalidInput.into()))?;
    let fd = inet_socket().map_err(fail)?;
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
    let fail = |source| NetConfError::Write {
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
    use std::fs::OpenOptions;

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
    fn a_fork_takes_its_own_mac_address_and_route() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET) (this test needs root)");
            let _tap = create_tap("hkfork0");
            configure_interface("hkfork0", Some(([10, 88, 0, 2], 30))).unwrap();
            add_default_route("hkfork0", std::net::Ipv4Addr::new(10, 88, 0, 1)).unwrap();
            // As `readdress` does.
            let mac = [0x02, 0x68, 0x75, 0, 0, 1];
            set_mac("hkfork0", mac).unwrap();
            configure_interface("hkfork0", Some(([10, 88, 0, 6], 30))).unwrap();
            add_default_route("hkfork0", std::net::Ipv4Addr::new(10, 88, 0, 5)).unwrap();
            const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
            let mut r = ifreq("hkfork0");
            ioctl(&ioctl_socket().unwrap(), SIOCGIFHWADDR, &mut r, "get MAC").unwrap();
            assert_eq!(&r.data[2..8], &mac);
            let routes = fs::read_to_string("/proc/thread-self/net/route").unwrap();
            let default: Vec<&str> = routes
                .lines()
                .filter(|l| l.split_whitespace().nth(1) == Some("00000000"))
                .collect();
            assert_eq!(
                default.len(),
                1,
                "the old route went with the old address: {routes}"
            );
            assert_eq!(
                default[0].split_whitespace().nth(2),
                Some("0500580A"),
                "{routes}"
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
