//! The container's `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`, as
//! Docker gives them: written to the container's run directory and
//! bind-mounted over the image's files (see [`super::rootfs::plan`]), so the
//! image is never modified.

use std::ffi::CStr;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::{ContainerError, Result};
use husk_proto::agent::{HostEntry, MountSpec};

/// The address `/etc/hosts` gives the hostname when the container has no
/// address of its own (a new network namespace with only `lo`), as Debian
/// does for a host without a fixed address.
pub const NO_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);

/// The line after which `/etc/hosts` lists the container's network members.
pub const MEMBERS_MARK: &str = "# husk: the other containers of this container's networks\n";

/// The content of `/etc/hosts`.
pub fn hosts(hostname: &str, addr: Option<Ipv4Addr>) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{hostname}\n",
        addr.unwrap_or(NO_ADDRESS)
    )
}

/// `current` (an `/etc/hosts`) with its network members' lines replaced by
/// `entries` (validated by the protocol: names cannot break a line).
pub fn with_members(current: &str, entries: &[HostEntry]) -> String {
    let base = current.split(MEMBERS_MARK).next().unwrap_or(current);
    let mut out = base.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if entries.is_empty() {
        return out;
    }
    out.push_str(MEMBERS_MARK);
    for e in entries {
        out.push_str(&format!("{}\t{}\n", e.ip, e.names.join(" ")));
    }
    out
}

/// Rewrites the members' lines of the `hosts` file in `dir` in place (it is
/// bind-mounted onto the container's `/etc/hosts`, so it keeps its inode).
pub fn set_members(dir: &Path, entries: &[HostEntry]) -> Result<()> {
    let path = dir.join("hosts");
    let io = |source| ContainerError::Io {
        path: path.clone(),
        source,
    };
    let current = fs::read_to_string(&path).map_err(io)?;
    fs::write(&path, with_members(&current, entries)).map_err(io)
}

/// Writes `hostname`, `hosts` and (when `resolv_source` exists) a copy of it
/// as `resolv.conf` into `dir`; returns the bind mounts onto `/etc/*`.
pub fn write(
    dir: &Path,
    hostname: &str,
    addr: Option<Ipv4Addr>,
    members: &[HostEntry],
    resolv_source: Option<&Path>,
) -> Result<Vec<MountSpec>> {
    let put = |name: &str, data: &[u8]| -> Result<MountSpec> {
        let path = dir.join(name);
        fs::write(&path, data).map_err(|source| ContainerError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(MountSpec {
            source: path,
            destination: PathBuf::from("/etc").join(name),
            readonly: false,
        })
    };
    let mut out = vec![
        put("hostname", format!("{hostname}\n").as_bytes())?,
        put(
            "hosts",
            with_members(&hosts(hostname, addr), members).as_bytes(),
        )?,
    ];
    if let Some(src) = resolv_source {
        match fs::read(src) {
            Ok(data) => out.push(put("resolv.conf", &data)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ContainerError::Io {
                    path: src.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(out)
}

/// The first IPv4 address of the interface `name`, if it has one.
pub fn interface_ipv4(name: &str) -> Option<Ipv4Addr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list it allocates; it is freed
    // below with freeifaddrs and not used afterwards.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs, alive
        // until freeifaddrs; `ifa_name` is a NUL-terminated string and
        // `ifa_addr`, when not null and of family AF_INET, points to a
        // `sockaddr_in`.
        unsafe {
            let ifa = &*cur;
            let addr = ifa.ifa_addr;
            if !addr.is_null()
                && i32::from((*addr).sa_family) == libc::AF_INET
                && CStr::from_ptr(ifa.ifa_name).to_bytes() == name.as_bytes()
            {
                let sin = &*addr.cast::<libc::sockaddr_in>();
                found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
                break;
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_content() {
        assert_eq!(
            hosts("web", Some(Ipv4Addr::new(10, 0, 0, 2))),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.0.0.2\tweb\n"
        );
        assert!(hosts("web", None).ends_with("127.0.1.1\tweb\n"));
    }

    #[test]
    fn members_are_replaced_not_appended() {
        let d = tempfile::tempdir().unwrap();
        let db = HostEntry {
            ip: Ipv4Addr::new(10, 88, 0, 6),
            names: vec!["db".into(), "proj_db_1".into()],
        };
        write(d.path(), "web", None, std::slice::from_ref(&db), None).unwrap();
        let text = fs::read_to_string(d.path().join("hosts")).unwrap();
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(text.ends_with(&format!("{MEMBERS_MARK}10.88.0.6\tdb proj_db_1\n")));
        let cache = HostEntry {
            ip: Ipv4Addr::new(10, 88, 0, 10),
            names: vec!["cache".into()],
        };
        set_members(d.path(), &[cache]).unwrap();
        let text = fs::read_to_string(d.path().join("hosts")).unwrap();
        assert!(
            !text.contains("db") && text.ends_with("10.88.0.10\tcache\n"),
            "{text}"
        );
        assert_eq!(text.matches(MEMBERS_MARK).count(), 1);
        set_members(d.path(), &[]).unwrap();
        assert_eq!(
            fs::read_to_string(d.path().join("hosts")).unwrap(),
            hosts("web", None)
        );
    }

    #[test]
    fn loopback_address() {
        assert_eq!(interface_ipv4("lo"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(interface_ipv4("no-such-if0"), None);
    }

    #[test]
    fn files_written() {
        let d = tempfile::tempdir().unwrap();
        let resolv = d.path().join("src-resolv");
        fs::write(&resolv, "nameserver 10.0.2.3\n").unwrap();
        let m = write(d.path(), "h", None, &[], Some(&resolv)).unwrap();
        let dests: Vec<_> = m.iter().map(|m| m.destination.clone()).collect();
        assert_eq!(
            dests,
            ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"].map(PathBuf::from)
        );
        assert_eq!(
            fs::read_to_string(d.path().join("hostname")).unwrap(),
            "h\n"
        );
        assert_eq!(
            fs::read_to_string(d.path().join("resolv.conf")).unwrap(),
            "nameserver 10.0.2.3\n"
        );
        let m = write(d.path(), "h", None, &[], Some(&d.path().join("missing"))).unwrap();
        assert_eq!(m.len(), 2, "no resolv.conf without a source");
    }
}
