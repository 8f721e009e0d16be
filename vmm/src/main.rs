//! `husk-vmm`: boots one microVM and exits when it ends.
//!
//! Exit statuses:
//! - 0: the guest powered off (husk-agent's power-off through the debug port)
//! - 1: husk-vmm failed (bad configuration, missing kernel, no KVM, ...)
//! - 2: bad command-line usage
//! - 3: the guest reset itself (`reboot`, i8042 reset line, `panic=-1`)
//! - 4: a vCPU triple-faulted
//! - 5: KVM could not run a vCPU (emulation failure, failed entry)
//! - 128+N: stopped by signal N (130 for SIGINT, 143 for SIGTERM)

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use husk_vmm::builder::build_microvm;
use husk_vmm::config::{Console, VmConfig};
use husk_vmm::vmm::VmExit;

/// Boot a KVM microVM: a Linux kernel, an initramfs and a serial console.
#[derive(Debug, Parser)]
#[command(name = "husk-vmm", version, about)]
struct Cli {
    /// JSON VM configuration; flags given too override its values.
    #[arg(long, value_name = "vm.json")]
    config: Option<PathBuf>,
    /// Guest kernel: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (cpio).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs (1-32).
    #[arg(long)]
    vcpus: Option<u32>,
    /// Guest memory in MiB.
    #[arg(long)]
    mem_mib: Option<u32>,
    /// Serial console: stdout, off or file:PATH.
    #[arg(long)]
    console: Option<Console>,
    /// Enter an ELF kernel through the 64-bit Linux boot protocol even when
    /// it has a PVH entry.
    #[arg(long)]
    no_pvh: bool,
    /// A virtio-blk disk: PATH[,ro][,serial=ID] (repeatable; vda, vdb, ...).
    #[arg(long = "disk", value_parser = husk_vmm::config::parse_disk)]
    disks: Vec<husk_devices::virtio::block::BlockConfig>,
    /// A virtio-net interface on a host TAP: tap=NAME[,mac=MAC] (repeatable).
    #[arg(long = "net", value_parser = husk_vmm::config::parse_net)]
    nets: Vec<husk_devices::virtio::net::NetConfig>,
    /// The virtio-vsock device: CID,UNIX_SOCKET_PATH.
    #[arg(long, value_parser = husk_vmm::config::parse_vsock)]
    vsock: Option<husk_devices::virtio::vsock::VsockConfig>,
    /// Print the effective configuration as JSON and exit.
    #[arg(long)]
    print_config: bool,
}

const EXIT_ERROR: u8 = 1;
const EXIT_RESET: u8 = 3;
const EXIT_TRIPLE_FAULT: u8 = 4;
const EXIT_VCPU_FAILURE: u8 = 5;

fn effective_config(cli: Cli) -> Result<(VmConfig, bool), husk_vmm::config::ConfigError> {
    let mut cfg = match &cli.config {
        Some(path) => VmConfig::from_file(path)?,
        None => VmConfig::default(),
    };
    if let Some(v) = cli.kernel {
        cfg.kernel = Some(v);
    }
    if let Some(v) = cli.initrd {
        cfg.initrd = Some(v);
    }
    if let Some(v) = cli.cmdline {
        cfg.cmdline = v;
    }
    if let Some(v) = cli.vcpus {
        cfg.vcpus = v;
    }
    if let Some(v) = cli.mem_mib {
        cfg.mem_mib = v;
    }
    if let Some(v) = cli.console {
        cfg.console = v;
    }
    if cli.no_pvh {
        cfg.pvh = false;
    }
    cfg.disks.extend(cli.disks);
    cfg.nets.extend(cli.nets);
    if let Some(v) = cli.vsock {
        cfg.vsock = Some(v);
    }
    Ok((cfg, cli.print_config))
}

fn exit_status(exit: &VmExit) -> u8 {
    match exit {
        VmExit::PowerOff => 0,
        VmExit::Reset => EXIT_RESET,
        VmExit::TripleFault => EXIT_TRIPLE_FAULT,
        VmExit::Failure(_) => EXIT_VCPU_FAILURE,
        VmExit::Signal(n) => u8::try_from(128 + n).unwrap_or(EXIT_ERROR),
    }
}

fn main() -> ExitCode {
    let start = Instant::now();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let (cfg, print) = match effective_config(cli) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if print {
        match serde_json::to_string_pretty(&cfg) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(&e),
        }
        return ExitCode::SUCCESS;
    }
    let mut vmm = match build_microvm(&cfg, start) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    log::debug!("VM built in {} ms", start.elapsed().as_millis());
    let exit = match vmm.run() {
        Ok(e) => e,
        Err(e) => return fail(&e),
    };
    match &exit {
        VmExit::Failure(why) => log::error!("guest stopped: {why}"),
        VmExit::TripleFault => log::error!("guest stopped: triple fault"),
        VmExit::Signal(n) => log::info!("stopped by signal {n}"),
        VmExit::Reset => log::info!("guest reset"),
        VmExit::PowerOff => log::info!("guest powered off"),
    }
    ExitCode::from(exit_status(&exit))
}

/// Prints an error and its causes on one line and returns status 1.
fn fail(e: &dyn std::error::Error) -> ExitCode {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    eprintln!("husk-vmm: {msg}");
    ExitCode::from(EXIT_ERROR)
}
