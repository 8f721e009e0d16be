//! Address leases: each container gets the lowest free point-to-point /30
//! of 10.88.0.0/16 and the TAP `husk<index>`.
//!
//! A lease is a lock file `<net_dir>/<index>.lock` held with `flock(2)` for
//! the lease's lifetime. The kernel drops the lock when its holder dies, so a
//! SIGKILLed supervisor frees its address without any clean-up; the file
//! keeps the last owner's id for `husk inspect` and debugging. Lock files are
//! never deleted (deleting a locked file would let two holders in).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::{io_cause, NetError, Result};

/// The network all leases come from.
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 0);
/// Prefix length of [`SUBNET`].
pub const SUBNET_PREFIX: u8 = 16;
/// Prefix length of one lease.
pub const LEASE_PREFIX: u8 = 30;
/// How many /30 leases fit in [`SUBNET`].
pub const MAX_LEASES: u32 = 1 << (LEASE_PREFIX - SUBNET_PREFIX);

/// One container's share of the husk network, held until dropped.
#[derive(Debug)]
pub struct Lease {
    /// Index of the /30 within 10.88.0.0/16.
    pub index: u32,
    /// The host's TAP for this container: `husk<index>`.
    pub tap_name: String,
    /// The host end of the /30 (the guest's gateway).
    pub host_ip: Ipv4Addr,
    /// The guest end of the /30 (the guest's eth0).
    pub guest_ip: Ipv4Addr,
    /// Always 30.
    pub prefix: u8,
    /// The guest's MAC address: locally administered, derived from the index.
    pub mac: [u8; 6],
    pub(crate) net_dir: PathBuf,
    _lock: Flock<File>,
}

impl Lease {
    /// The MAC as `husk-vmm --net tap=NAME,mac=MAC` takes it (`02:68:75:00:00:05`).
    pub fn mac_string(&self) -> String {
        let m = self.mac;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The deterministic guest MAC of lease `index`: `02:68:75:` ("hu", locally
/// administered, unicast) then the index's low 24 bits.
pub fn mac_for(index: u32) -> [u8; 6] {
    let b = index.to_be_bytes();
    [0x02, 0x68, 0x75, b[1], b[2], b[3]]
}

/// The (host, guest) addresses of lease `index`.
pub fn addresses(index: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(SUBNET) + index * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// The path of lease `index`'s lock file.
pub fn lock_path(net_dir: &Path, index: u32) -> PathBuf {
    net_dir.join(format!("{index}.lock"))
}

/// Allocates the lowest free /30 for `owner` (a container id), creating
/// `net_dir` when needed.
pub fn allocate(net_dir: &Path, owner: &str) -> Result<Lease> {
    fs::create_dir_all(net_dir).map_err(|e| NetError::Lease {
        path: net_dir.display().to_string(),
        cause: io_cause(&e),
    })?;
    for index in 0..MAX_LEASES {
        if let Some(lease) = take(net_dir, owner, index)? {
            return Ok(lease);
        }
    }
    Err(NetError::Exhausted)
}

/// Takes lease `index` for `owner` (a container restored from a checkpoint
/// needs the address its guest has configured); fails when another holds
/// it.
pub fn allocate_at(net_dir: &Path, owner: &str, index: u32) -> Result<Lease> {
    fs::create_dir_all(net_dir).map_err(|e| NetError::Lease {
        path: net_dir.display().to_string(),
        cause: io_cause(&e),
    })?;
    if index >= MAX_LEASES {
        return Err(NetError::Exhausted);
    }
    take(net_dir, owner, index)?.ok_or_else(|| NetError::Taken(addresses(index).1, index))
}

/// Lease `index` for `owner`, or `None` when another process holds it.
fn take(net_dir: &Path, owner: &str, index: u32) -> Result<Option<Lease>> {
    let path = lock_path(net_dir, index);
    let lease_err = |e: &std::io::Error| NetError::Lease {
        path: path.display().to_string(),
        cause: io_cause(e),
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| lease_err(&e))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
        Err((_, errno)) => return Err(lease_err(&errno.into())),
    };
    lock.set_len(0).map_err(|e| lease_err(&e))?;
    lock.write_all(format!("{owner}\n").as_bytes())
        .map_err(|e| lease_err(&e))?;
    let (host_ip, guest_ip) = addresses(index);
    Ok(Some(Lease {
        index,
        tap_name: format!("husk{index}"),
        host_ip,
        guest_ip,
        prefix: LEASE_PREFIX,
        mac: mac_for(index),
        net_dir: net_dir.to_path_buf(),
        _lock: lock,
    }))
}

/// The owner recorded in lease `index`'s lock file, if it is held now.
pub fn holder(net_dir: &Path, index: u32) -> Option<String> {
    let file = File::open(lock_path(net_dir, index)).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => None,
        Err(_) => fs::read_to_string(lock_path(net_dir, index))
            .ok()
            .map(|s| s.trim().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_index_and_drop_frees() {
        let dir = tempfile::tempdir().unwrap();
        let a = allocate(dir.path(), "aaa").unwrap();
        let b = allocate(dir.path(), "bbb").unwrap();
        assert_eq!((a.index, b.index), (0, 1));
        assert_eq!(a.tap_name, "husk0");
        assert_eq!(a.host_ip, Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(a.guest_ip, Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(b.host_ip, Ipv4Addr::new(10, 88, 0, 5));
        assert_eq!(b.guest_ip, Ipv4Addr::new(10, 88, 0, 6));
        assert_eq!(a.prefix, 30);
        assert_ne!(a.mac, b.mac);
        assert_eq!(b.mac_string(), "02:68:75:00:00:01");
        assert_eq!(holder(dir.path(), 1).as_deref(), Some("bbb"));
        drop(a);
        assert_eq!(holder(dir.path(), 0), None);
        let c = allocate(dir.path(), "ccc").unwrap();
        assert_eq!(c.index, 0);
        assert_eq!(holder(dir.path(), 0).as_deref(), Some("ccc"));
        let d = allocate(dir.path(), "ddd").unwrap();
        assert_eq!(d.index, 2);
    }

    /// Forks a child that opens and locks `path` itself (flock locks
    /// belong to open files, so it must not share ours) and then waits. The
    /// child first closes every inherited descriptor, so it holds none of
    /// the sockets that tests running in parallel have open.
    fn fork_lock_holder(path: &Path) -> libc::pid_t {
        use std::os::unix::ffi::OsStrExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: the child only makes async-signal-safe calls (close_range,
        // open, flock, pause, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: see above; `c_path` is a valid C string.
            unsafe {
                libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                let fd = libc::open(c_path.as_ptr(), libc::O_RDWR);
                if fd < 0 || libc::flock(fd, libc::LOCK_EX) != 0 {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            }
        }
        pid
    }

    #[test]
    fn a_sigkilled_holder_frees_its_lease() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(dir.path(), 0);
        fs::write(&path, "other\n").unwrap();
        let pid = fork_lock_holder(&path);
        let start = std::time::Instant::now();
        while holder(dir.path(), 0).is_none() {
            assert!(start.elapsed().as_secs() < 5, "the child never locked");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(allocate(dir.path(), "me").unwrap().index, 1);
        // SAFETY: kill and waitpid on our own child.
        unsafe {
            assert_eq!(libc::kill(pid, libc::SIGKILL), 0);
            assert_eq!(libc::waitpid(pid, std::ptr::null_mut(), 0), pid);
        }
        assert_eq!(holder(dir.path(), 0), None);
        assert_eq!(allocate(dir.path(), "me").unwrap().index, 0);
    }

    #[test]
    fn addresses_and_names_fit() {
        let last = MAX_LEASES - 1;
        assert_eq!(addresses(last).1, Ipv4Addr::new(10, 88, 255, 254));
        assert!(format!("husk{last}").len() <= 15);
        assert_eq!(mac_for(last)[0] & 0x03, 0x02);
    }
}
