//! `husk-agent`: PID 1 of a husk guest.
//!
//! It leaves the initramfs for a tmpfs root, mounts the guest's pseudo
//! filesystems, writes the boot-time marker to husk's debug port, prints its
//! ready line (online CPUs and kernel uptime) and mounts the disks named by
//! `husk.disk=DEV:PATH[:ro]`. The network comes from `husk.ip=A.B.C.D/N`
//! (eth0's address), `husk.gw=A.B.C.D` (the default route) and
//! `husk.dns=IP[,IP...]` (written to /etc/resolv.conf). With a vsock device it then serves the control
//! protocol (agent/PROTOCOL.md) on vsock port 1024 until told to shut down
//! (or, with `husk.run_once`, until its containers have exited); without
//! one (or with `husk.no_serve`) it has nothing to do. Either way it then powers the VM off. As PID 1
//! it never unwinds out of `main`: any error is logged and the VM powered off.

mod boot;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() {
    let pid1 = std::process::id() == 1;
    if !pid1 {
        eprintln!("husk-agent: must run as PID 1 of a husk guest");
        std::process::exit(2);
    }
    boot::ensure_console();
    let result = std::panic::catch_unwind(run);
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("husk-agent: {}", with_causes(e.as_ref())),
        Err(_) => eprintln!("husk-agent: internal error (panic)"),
    }
    boot::power_off();
}

/// An error and its chain of causes on one line: "a: b: c".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    boot::mount_pseudo_filesystems()?;
    boot::ensure_console();
    boot::debug_port_write(boot::DEBUG_PORT_BOOT_MARKER);
    boot::print_ready(VERSION)?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Err(e) = boot::configure_interface("lo", None) {
        eprintln!("husk-agent: {e}");
    }
    if let Some(ip) = boot::guest_ip(&cmdline) {
        boot::configure_interface("eth0", Some(ip))?;
        if let Some(gw) = boot::gateway(&cmdline) {
            boot::add_default_route("eth0", gw)?;
        }
    }
    let dns = boot::dns_servers(&cmdline);
    if !dns.is_empty() {
        boot::write_resolv_conf(std::path::Path::new("/"), &dns)?;
    }
    let _ = nix::unistd::sethostname("husk");
    for disk in boot::disk_mounts(&cmdline) {
        boot::mount_disk(&disk)?;
    }
    let no_serve = cmdline.split_whitespace().any(|p| p == "husk.no_serve");
    if !no_serve && boot::has_vsock_device(std::path::Path::new("/sys")) {
        let mut config = husk_agent::server::ServerConfig::guest(VERSION);
        config.run_once = cmdline.split_whitespace().any(|p| p == "husk.run_once");
        husk_agent::vsock::serve(config, husk_agent::vsock::CONTROL_PORT)?;
    }
    Ok(())
}
