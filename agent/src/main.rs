//! `husk-agent`: PID 1 of a husk guest.
//!
//! It leaves the initramfs for a tmpfs root, mounts the guest's pseudo
//! filesystems, writes the boot-time marker to husk's debug port, prints its
//! ready line (online CPUs and kernel uptime), then reads its boot
//! parameters (`husk_proto::boot::BootParams` on the kernel command line):
//! the disks to mount, eth0's address, default route and DNS servers. With a
//! vsock device it then serves the control protocol (`proto/PROTOCOL.md`)
//! on vsock port 1024 until told to shut down (or, with `run_once`, until
//! its containers have exited); without one (or with `no_serve`) it has
//! nothing to do. With `husk.build` it is a builder microVM instead
//! (`husk_agent::build`): it mounts the target disk, serves one `build`
//! and nothing else. Either way it then powers the VM off. As PID 1
//! it never unwinds out of `main`: any error is logged and the VM powered off.

mod boot;
mod fatal;

use husk_proto::boot::BootParams;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() {
    let pid1 = std::process::id() == 1;
    if !pid1 {
        eprintln!("husk-agent: must run as PID 1 of a husk guest");
        std::process::exit(2);
    }
    boot::ensure_console();
    boot::ConsoleLog::install();
    fatal::install();
    let result = std::panic::catch_unwind(run);
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("husk-agent: {}", husk_proto::error::chain(e.as_ref())),
        Err(_) => eprintln!("husk-agent: internal error (panic)"),
    }
    boot::power_off();
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    boot::mount_pseudo_filesystems()?;
    boot::ensure_console();
    boot::debug_port_write(boot::DEBUG_PORT_BOOT_MARKER);
    boot::print_ready(VERSION)?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = BootParams::parse(&cmdline).map_err(boot::BootError::from)?;
    if let Err(e) = boot::configure_interface("lo", None) {
        eprintln!("husk-agent: {e}");
    }
    if let Some(net) = &params.net {
        boot::configure_interface("eth0", Some((net.ip.octets(), net.prefix)))?;
        if let Some(gw) = net.gateway {
            boot::add_default_route("eth0", gw)?;
        }
        if !net.dns.is_empty() {
            boot::write_resolv_conf(std::path::Path::new("/"), &net.dns)?;
        }
    }
    let _ = nix::unistd::sethostname("husk");
    if let Some(build) = &params.build {
        return build_mode(build);
    }
    for disk in &params.disks {
        boot::mount_disk(disk)?;
    }
    if !params.no_serve && boot::has_vsock_device(std::path::Path::new("/sys")) {
        let mut config = husk_agent::server::ServerConfig::guest(VERSION);
        config.run_once = params.run_once;
        husk_agent::vsock::serve(config, husk_proto::guest::CONTROL_PORT)?;
    }
    Ok(())
}

/// A builder microVM: mounts the target disk, serves one control
/// connection (hello, then one build), and returns so PID 1 powers off.
fn build_mode(disks: &husk_proto::boot::BuildDisks) -> Result<(), Box<dyn std::error::Error>> {
    use husk_agent::build;
    boot::mount_disk(&husk_proto::boot::DiskMount {
        device: disks.target.clone(),
        path: build::BUILD_MOUNT.into(),
        read_only: false,
    })?;
    let listener = husk_agent::vsock::listen(husk_proto::guest::CONTROL_PORT)?;
    // A connection the host gave up on before asking for the build (its
    // handshake timed out on a loaded host) is followed by another one.
    loop {
        let conn = husk_agent::vsock::accept(&listener)?;
        let mut asked = false;
        let served = build::serve(conn, VERSION, |req| {
            asked = true;
            build::build_in_guest(&disks.blobs, req)
        });
        if asked {
            served?;
            return Ok(());
        }
        if let Err(e) = served {
            eprintln!("husk-agent: a build connection ended before its request: {e}");
        }
    }
}
