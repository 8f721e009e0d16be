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
use husk_devices::legacy::BootMarkerHook;
use husk_vmm::builder::{build_microvm, restore_microvm};
use husk_vmm::config::{Console, VmConfig, VmConfigExt};
use husk_vmm::events::{EventSink, VmmEvent};
use husk_vmm::jail::{self, Jail};
use husk_vmm::seccomp::Filters;
use husk_vmm::snapshot::api::ApiServer;
use husk_vmm::vmm::VmExit;
use std::sync::Arc;

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
    /// Report typed events (boot marker, failure, stop) as JSON lines on
    /// this inherited descriptor (for husk's supervisor).
    #[arg(long, value_name = "FD")]
    events_fd: Option<i32>,
    /// Control socket: one line per connection, `pause`, `resume` or
    /// `snapshot DIR`; answered `ok` or `error: ...`.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Start from a snapshot directory instead of booting; the config and
    /// flags then give only host-side resources (console, disks, TAPs, vsock
    /// socket), in the same order as when the snapshot was taken.
    #[arg(long, value_name = "DIR")]
    restore: Option<PathBuf>,
    /// A directory kept in the jail, where the control socket's `snapshot`
    /// may write (everything else is out of reach once jailed).
    #[arg(long, value_name = "DIR", requires = "api_sock")]
    snapshot_dir: Option<PathBuf>,
    /// Once the VM is built, become this uid (with --jail-gid; needs root):
    /// no capabilities, no supplementary groups.
    #[arg(long, value_name = "UID", requires = "jail_gid", value_parser = clap::value_parser!(u32).range(1..))]
    jail_uid: Option<u32>,
    /// The gid to become with --jail-uid.
    #[arg(long, value_name = "GID", requires = "jail_uid", value_parser = clap::value_parser!(u32).range(1..))]
    jail_gid: Option<u32>,
    /// Run without seccomp filters (for debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// Make no microVM: hold one idle VM open until killed, so KVM rewrites
    /// no kernel text per microVM (a workaround for hosts emulated by
    /// QEMU's TCG, such as the husk machine; see `husk_vmm::keyhold`).
    #[arg(long, exclusive = true)]
    hold_kvm_keys: bool,
}

/// Test hook, read once at start: with it set, SIGUSR2 makes the event
/// loop make a system call its seccomp filter forbids.
const FORBIDDEN_SYSCALL_ENV: &str = "HUSK_VMM_TEST_FORBIDDEN_SYSCALL";

const EXIT_ERROR: u8 = 1;
const EXIT_RESET: u8 = 3;
const EXIT_TRIPLE_FAULT: u8 = 4;
const EXIT_VCPU_FAILURE: u8 = 5;

/// What `main` does besides building the VM from the config.
struct Extra {
    print: bool,
    api_sock: Option<PathBuf>,
    restore: Option<PathBuf>,
    snapshot_dir: Option<PathBuf>,
    jail: Option<Jail>,
    seccomp: bool,
}

fn effective_config(cli: Cli) -> Result<(VmConfig, Extra), husk_vmm::config::ConfigError> {
    let cli = Cli {
        events_fd: None,
        ..cli
    };
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
    let extra = Extra {
        print: cli.print_config,
        api_sock: cli.api_sock,
        restore: cli.restore,
        snapshot_dir: cli.snapshot_dir,
        jail: cli
            .jail_uid
            .zip(cli.jail_gid)
            .map(|(uid, gid)| Jail { uid, gid }),
        seccomp: !cli.no_seccomp,
    };
    Ok((cfg, extra))
}

fn exit_status(exit: &VmExit) -> u8 {
    match exit {
        VmExit::PowerOff => 0,
        VmExit::Reset => EXIT_RESET,
        VmExit::TripleFault(_) => EXIT_TRIPLE_FAULT,
        VmExit::Failure(_) => EXIT_VCPU_FAILURE,
        VmExit::Signal(n) => u8::try_from(128 + n).unwrap_or(EXIT_ERROR),
    }
}

fn main() -> ExitCode {
    let start = Instant::now();
    // SAFETY: getppid has no arguments.
    let parent = unsafe { libc::getppid() };
    let forbidden_test = std::env::var_os(FORBIDDEN_SYSCALL_ENV).is_some();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    if cli.hold_kvm_keys {
        return match husk_vmm::keyhold::hold() {
            Ok(never) => match never {},
            Err(e) => fail(&e, None),
        };
    }
    let events = match cli.events_fd.map(EventSink::from_fd).transpose() {
        Ok(s) => s.map(Arc::new),
        Err(e) => return fail(&e, None),
    };
    let (cfg, extra) = match effective_config(cli) {
        Ok(c) => c,
        Err(e) => return fail(&e, events.as_deref()),
    };
    if extra.print {
        match serde_json::to_string_pretty(&cfg) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(&e, events.as_deref()),
        }
        return ExitCode::SUCCESS;
    }
    let built = match &extra.restore {
        Some(dir) => restore_microvm(dir, &cfg, start),
        None => build_microvm(&cfg, start),
    };
    let mut vmm = match built {
        Ok(v) => v,
        Err(e) => return fail(&e, events.as_deref()),
    };
    if let Some(sink) = events.clone() {
        vmm.on_boot_marker(BootMarkerHook(Box::new(move |d| {
            sink.emit(&VmmEvent::BootMarker {
                ms: d.as_secs_f64() * 1e3,
            })
        })));
    }
    if let Some(path) = &extra.api_sock {
        match ApiServer::bind(path) {
            Ok(api) => vmm.set_api(api),
            Err(e) => return fail(&e, events.as_deref()),
        }
    }
    let filters = if extra.seccomp {
        match Filters::new(extra.api_sock.is_some()) {
            Ok(f) => f,
            Err(e) => return fail(&e, events.as_deref()),
        }
    } else {
        log::warn!("seccomp filters are disabled (--no-seccomp)");
        Filters::disabled()
    };
    // Guest connections to host ports reach `<uds>_<port>`, and snapshots
    // are written under the snapshot directory: the paths husk-vmm still
    // opens.
    let keep: Vec<PathBuf> = cfg
        .vsock
        .iter()
        .filter_map(|v| v.uds_path.parent().map(PathBuf::from))
        .chain(extra.snapshot_dir.clone())
        .collect();
    if let Err(e) = jail::enter(extra.jail, parent, &keep) {
        return fail(&e, events.as_deref());
    }
    vmm.set_seccomp(filters);
    vmm.set_forbidden_syscall_test(forbidden_test);
    log::info!(
        "VM {} and jailed in {} ms",
        if extra.restore.is_some() {
            "restored"
        } else {
            "built"
        },
        start.elapsed().as_millis()
    );
    let exit = match vmm.run() {
        Ok(e) => e,
        Err(e) => return fail(&e, events.as_deref()),
    };
    let reason = match &exit {
        VmExit::Failure(why) => format!("vcpu_failure: {why}"),
        VmExit::TripleFault(at) => format!("triple_fault: {at}"),
        VmExit::Signal(n) => format!("signal {n}"),
        VmExit::Reset => "reset".into(),
        VmExit::PowerOff => "power_off".into(),
    };
    match &exit {
        VmExit::Failure(_) | VmExit::TripleFault(_) => log::error!("guest stopped: {reason}"),
        VmExit::Signal(n) => log::info!("stopped by signal {n}"),
        _ => log::info!("guest stopped: {reason}"),
    }
    if let Some(sink) = &events {
        sink.emit(&VmmEvent::Stopped { reason });
    }
    ExitCode::from(exit_status(&exit))
}

/// Prints an error and its causes on one line (and reports it as an
/// event), and returns status 1.
fn fail(e: &dyn std::error::Error, events: Option<&EventSink>) -> ExitCode {
    let message = husk_proto::error::chain(e);
    eprintln!("husk-vmm: {message}");
    if let Some(sink) = events {
        sink.emit(&VmmEvent::Failed { message });
    }
    ExitCode::from(EXIT_ERROR)
}
