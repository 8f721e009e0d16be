//! `husk-agent`: PID 1 of a husk guest.
//!
//! It mounts the guest's pseudo filesystems, prints its ready line (online
//! CPUs and kernel uptime), writes the boot-time marker to husk's debug port
//! and powers the VM off. As PID 1 it never unwinds out of `main`: any error
//! is logged and the VM powered off.

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
        Ok(Err(e)) => eprintln!("husk-agent: {e}"),
        Err(_) => eprintln!("husk-agent: internal error (panic)"),
    }
    boot::power_off();
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    boot::mount_pseudo_filesystems()?;
    boot::ensure_console();
    boot::debug_port_write(boot::DEBUG_PORT_BOOT_MARKER);
    boot::print_ready(VERSION)?;
    Ok(())
}
