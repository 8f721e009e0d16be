//! Guest paths, vsock ports and debug-port values that the host and
//! `husk-agent` both rely on. Nothing here is a coincidence of two files:
//! each name is defined once.

/// vsock port the agent serves the control protocol on.
pub const CONTROL_PORT: u32 = 1024;
/// The host's vsock CID (where the agent connects for stdio and blobs).
pub const HOST_CID: u32 = 2;
/// The guest CID husk gives every microVM.
pub const GUEST_CID: u32 = 3;

/// The agent's run directory in the guest: `images/` (unpacked images) and
/// `containers/<id>/` (each container's overlay upper, work dir and files).
pub const RUN_DIR: &str = "/run/husk";
/// Where the image's read-only rootfs disk is mounted in the guest.
pub const IMAGE_MOUNT: &str = "/run/husk/image";
/// Where volume disks are mounted in the guest: `VOLUMES_DIR/<name>`.
pub const VOLUMES_DIR: &str = "/run/husk/volumes";
/// Where a builder microVM mounts the disk it unpacks layers into.
pub const BUILD_MOUNT: &str = "/run/husk/build";
/// The id of the one container a husk microVM runs.
pub const CONTAINER_ID: &str = "c";

/// The agent's directory for container `id`, where the host's
/// writable-layer disk is mounted so that the overlay's upper and work
/// directories live on it.
pub fn container_dir(id: &str) -> String {
    format!("{RUN_DIR}/containers/{id}")
}

/// Guest mount point of volume `name`.
pub fn volume_mount(name: &str) -> String {
    format!("{VOLUMES_DIR}/{name}")
}

/// vsock ports (on the host) the agent connects to for the container
/// init's stdio: stdin, stdout, stderr.
pub const INIT_STDIO_PORTS: [u32; 3] = [5000, 5001, 5002];
/// First host port of exec'd processes' stdio (three per exec, in order).
pub const EXEC_STDIO_BASE_PORT: u32 = 5100;

/// The stdin, stdout and stderr ports of the `n`th exec of a microVM's
/// life, or `None` past the port space.
pub fn exec_stdio_ports(n: u32) -> Option<[u32; 3]> {
    let base = n.checked_mul(3)?.checked_add(EXEC_STDIO_BASE_PORT)?;
    Some([base, base.checked_add(1)?, base.checked_add(2)?])
}

/// husk's debug I/O port (as Firecracker's boot timer).
pub const DEBUG_PORT: u16 = 0x3f0;
/// Debug-port value: the guest's init has started.
pub const DEBUG_PORT_BOOT_MARKER: u8 = 123;
/// Debug-port value: power the VM off.
pub const DEBUG_PORT_POWER_OFF: u8 = 0xad;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_nest_under_the_run_dir() {
        assert_eq!(container_dir(CONTAINER_ID), "/run/husk/containers/c");
        assert!(IMAGE_MOUNT.starts_with(RUN_DIR));
        assert!(BUILD_MOUNT.starts_with(RUN_DIR));
        assert_eq!(volume_mount("data"), "/run/husk/volumes/data");
        assert_eq!(exec_stdio_ports(1), Some([5103, 5104, 5105]));
        assert_eq!(exec_stdio_ports(u32::MAX), None);
    }
}
