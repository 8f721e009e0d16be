//! Builds a microVM from a validated [`VmConfig`], as a flat run of named
//! steps: KVM VM and irqchip, guest memory, kernel and initramfs, boot
//! information, legacy devices, vCPUs.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use husk_devices::legacy::{
    DebugPort, EventFdTrigger, Serial, SerialState, DEBUG_PORT, I8042, I8042_PORT_BASE,
    I8042_PORT_LEN, SERIAL_IRQ, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::boot::{self, KernelEntry};
use crate::arch::{mptable, regs::EntryMode};
use crate::bus::{Bus, BusError};
use crate::config::{Console, VmConfig, VmConfigExt, MAX_CMDLINE_LEN};
use crate::console::{CappedFile, CONSOLE_FILE_CAP};
use crate::device_manager::{DeviceManagerError, MmioDeviceManager};
use crate::memory::{self, MemoryError};
use crate::snapshot::{self, DevicesState, SnapshotError};
use crate::vcpu::{Vcpu, VcpuError};
use crate::vmm::{ExitEvents, Subscriber, Vmm};
use husk_devices::virtio::block::{persist as block_persist, Block, BlockError, BlockHandler};
use husk_devices::virtio::mmio::MmioTransport;
use husk_devices::virtio::net::{persist as net_persist, Net, NetError, NetHandler};
use husk_devices::virtio::vsock::{persist as vsock_persist, Vsock, VsockError, VsockHandler};

/// Address of the TSS KVM needs on Intel hosts (three pages below 4 GiB,
/// inside the MMIO gap so it never overlaps RAM).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Build errors.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm (is KVM available and accessible?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// KVM lacks something husk needs.
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    /// A VM-level KVM call failed.
    #[error("KVM {op} failed")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory allocation failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel, initramfs or boot information could not be loaded.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// The MP table could not be written.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Devices overlap on a bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd for {0}")]
    EventFd(&'static str, #[source] std::io::Error),
    /// A disk could not be set up.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A network interface could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The vsock device could not be set up.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// A virtio device could not be placed.
    #[error(transparent)]
    DeviceManager(#[from] DeviceManagerError),
    /// A virtio transport could not be created.
    #[error("cannot create the virtio transport for {0}")]
    Transport(&'static str, #[source] std::io::Error),
    /// The command line with the device announcements is too long.
    #[error("kernel command line with device announcements is {0} bytes; the limit is {MAX_CMDLINE_LEN}")]
    CmdlineTooLong(usize),
    /// A snapshot could not be loaded.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The snapshot's devices differ from the configured ones.
    #[error("snapshot has {saved} {what}, the configuration gives {given}")]
    SnapshotDevices {
        /// "disks", "network interfaces", "vsock devices".
        what: &'static str,
        /// Count in the snapshot.
        saved: usize,
        /// Count configured.
        given: usize,
    },
    /// A device's saved state does not fit the configured device.
    #[error("cannot restore {what}: {reason}")]
    DeviceRestore {
        /// Which device.
        what: String,
        /// Why.
        reason: String,
    },
    /// COM1's saved state is unusable.
    #[error("cannot restore the serial port")]
    SerialState(#[source] std::io::Error),
    /// The VM-wide KVM state could not be restored.
    #[error(transparent)]
    VmState(#[from] crate::snapshot::vm::VmStateError),
    /// The console file could not be opened.
    #[error("cannot open console file {path}")]
    ConsoleFile {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for building.
pub type Result<T> = std::result::Result<T, BuildError>;

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::Kvm { op, source }
}

fn eventfd(what: &'static str) -> Result<EventFd> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| BuildError::EventFd(what, e))
}

/// Opens /dev/kvm and checks the capabilities husk relies on.
pub fn open_kvm() -> Result<Kvm> {
    let kvm = Kvm::new().map_err(BuildError::OpenKvm)?;
    for (cap, name) in [
        (Cap::Irqchip, "in-kernel irqchip"),
        (Cap::UserMemory, "user memory"),
        (Cap::Ioeventfd, "ioeventfd"),
        (Cap::Irqfd, "irqfd"),
        (Cap::Pit2, "PIT"),
        (Cap::ExtCpuid, "extended CPUID"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(BuildError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// Creates the VM with an in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

/// Tells KVM about every guest memory region.
pub fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| BuildError::MissingCap("host mapping of guest memory"))?;
        let region = kvm_userspace_memory_region {
            slot: u32::try_from(slot).unwrap_or(u32::MAX),
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which the `Vmm`
        // keeps alive for as long as the VM (and thus KVM's use of it) exists.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// Loads kernel, initramfs and command line and writes the boot information
/// the entry mode needs.
pub fn load_guest(mem: &GuestMemoryMmap, config: &VmConfig, cmdline: &str) -> Result<KernelEntry> {
    let kernel_path = config
        .kernel
        .as_deref()
        .ok_or(crate::config::ConfigError::NoKernel)?;
    let kernel = boot::load_kernel(mem, kernel_path, config.pvh)?;
    let initrd = config
        .initrd
        .as_deref()
        .map(|p| boot::load_initrd(mem, p, kernel.kernel_end))
        .transpose()?;
    boot::load_command_line(mem, cmdline)?;
    match kernel.mode {
        EntryMode::Pvh => boot::write_pvh_info(mem, initrd)?,
        EntryMode::LongMode => boot::write_zero_page(mem, &kernel, cmdline.len(), initrd)?,
    }
    Ok(kernel)
}

fn console_writer(console: &Console) -> Result<Box<dyn Write + Send>> {
    Ok(match console {
        Console::Stdout => Box::new(std::io::stdout()),
        Console::Off => Box::new(std::io::sink()),
        Console::File(path) => {
            Box::new(CappedFile::open(path, CONSOLE_FILE_CAP).map_err(|source| {
                BuildError::ConsoleFile {
                    path: path.clone(),
                    source,
                }
            })?)
        }
    })
}

/// The legacy devices on the port-I/O bus.
#[derive(Debug)]
pub struct LegacyDevices {
    /// COM1.
    pub serial: Arc<Mutex<Serial>>,
    /// The boot-marker / power-off port.
    pub debug_port: Arc<Mutex<DebugPort>>,
}

/// Creates COM1 (interrupt through an irqfd; in `serial_state` when
/// restoring), the i8042 reset line and the debug port, and places them on
/// `pio`. The i8042 has no state to restore.
pub fn attach_legacy_devices(
    vm: &VmFd,
    pio: &mut Bus,
    (console, serial_state): (&Console, Option<&SerialState>),
    exits: &ExitEvents,
    start: Instant,
) -> Result<LegacyDevices> {
    let irq = eventfd("serial interrupt")?;
    vm.register_irqfd(&irq, SERIAL_IRQ)
        .map_err(kvm_err("KVM_IRQFD (serial)"))?;
    let (irq, out) = (EventFdTrigger::new(irq), console_writer(console)?);
    let serial = match serial_state {
        Some(state) => Serial::from_state(state, irq, out).map_err(BuildError::SerialState)?,
        None => Serial::new(irq, out),
    };
    let serial = Arc::new(Mutex::new(serial));
    pio.insert(
        u64::from(SERIAL_PORT_BASE),
        u64::from(SERIAL_PORT_LEN),
        serial.clone(),
    )?;
    let reset = exits
        .reset
        .try_clone()
        .map_err(|e| BuildError::EventFd("i8042 reset", e))?;
    pio.insert(
        u64::from(I8042_PORT_BASE),
        u64::from(I8042_PORT_LEN),
        Arc::new(Mutex::new(I8042::new(reset))),
    )?;
    let power_off = exits
        .power_off
        .try_clone()
        .map_err(|e| BuildError::EventFd("power-off", e))?;
    let debug_port = Arc::new(Mutex::new(DebugPort::new(start, power_off)));
    pio.insert(u64::from(DEBUG_PORT), 1, debug_port.clone())?;
    Ok(LegacyDevices { serial, debug_port })
}

/// The virtio devices: their transports (for snapshots) and their event
/// handlers.
#[derive(Default)]
pub struct VirtioDevices {
    /// Disks, in attach order.
    pub disks: Vec<Arc<Mutex<MmioTransport<Block>>>>,
    /// Network interfaces.
    pub nets: Vec<Arc<Mutex<MmioTransport<Net>>>>,
    /// The vsock device.
    pub vsock: Option<Arc<Mutex<MmioTransport<Vsock>>>>,
    /// Their event handlers.
    pub subscribers: Vec<Subscriber>,
}

impl std::fmt::Debug for VirtioDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioDevices")
            .field("disks", &self.disks.len())
            .field("nets", &self.nets.len())
            .field("vsock", &self.vsock.is_some())
            .finish()
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VirtioDevices {
    /// Raises every device's pending interrupt again (see
    /// [`MmioTransport::raise_pending_interrupt`]).
    pub fn raise_pending_interrupts(&self) {
        for t in &self.disks {
            locked(t).raise_pending_interrupt();
        }
        for t in &self.nets {
            locked(t).raise_pending_interrupt();
        }
        if let Some(t) = &self.vsock {
            locked(t).raise_pending_interrupt();
        }
    }

    /// How far the vsock device and its driver got (see
    /// [`husk_devices::virtio::VirtioDevice::describe`]).
    pub fn describe(&self) -> String {
        match &self.vsock {
            Some(t) => {
                let t = locked(t);
                let text = husk_devices::virtio::VirtioDevice::describe(t.device());
                format!("vsock status {:#x}: {text}", t.status())
            }
            None => "no vsock device".into(),
        }
    }

    /// Every device's snapshot state.
    pub fn save(&self) -> DevicesState {
        DevicesState {
            disks: self
                .disks
                .iter()
                .map(|t| block_persist::save(&locked(t)))
                .collect(),
            nets: self
                .nets
                .iter()
                .map(|t| net_persist::save(&locked(t)))
                .collect(),
            vsock: self.vsock.as_ref().map(|t| vsock_persist::save(&locked(t))),
        }
    }
}

/// Creates the configured disks, interfaces and vsock device (in the state
/// of `saved` when restoring a snapshot), places them on the MMIO bus, and
/// returns their command-line announcements and handles.
pub fn attach_virtio_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    config: &VmConfig,
    saved: Option<&DevicesState>,
) -> Result<(String, VirtioDevices)> {
    if let Some(s) = saved {
        check_counts(config, s)?;
    }
    let mut dm = MmioDeviceManager::new();
    let mut devs = VirtioDevices::default();
    for (i, disk) in config.disks.iter().enumerate() {
        let block = Block::new(disk)?;
        let t = match saved.and_then(|s| s.disks.get(i)) {
            Some(st) => block_persist::restore(mem.clone(), block, st)
                .map_err(|e| restore_err(format!("disk {}", disk.path.display()), &e))?,
            None => MmioTransport::new(mem.clone(), block)
                .map_err(|e| BuildError::Transport("virtio-blk", e))?,
        };
        let t = Arc::new(Mutex::new(t));
        dm.attach(vm, mmio, t.clone())?;
        devs.subscribers
            .push(Arc::new(Mutex::new(BlockHandler::new(t.clone()))));
        devs.disks.push(t);
    }
    for (i, net) in config.nets.iter().enumerate() {
        let st = saved.and_then(|s| s.nets.get(i));
        let cfg = st.map_or_else(|| net.clone(), |st| net_persist::config(net, st));
        let dev = Net::new(&cfg)?;
        let t = match st {
            Some(st) => net_persist::restore(mem.clone(), dev, st)
                .map_err(|e| restore_err("a network interface".into(), &e))?,
            None => MmioTransport::new(mem.clone(), dev)
                .map_err(|e| BuildError::Transport("virtio-net", e))?,
        };
        let t = Arc::new(Mutex::new(t));
        dm.attach(vm, mmio, t.clone())?;
        devs.subscribers
            .push(Arc::new(Mutex::new(NetHandler::new(t.clone()))));
        devs.nets.push(t);
    }
    if let Some(vsock) = &config.vsock {
        let st = saved.and_then(|s| s.vsock.as_ref());
        let cfg = st.map_or_else(|| vsock.clone(), |st| vsock_persist::config(vsock, st));
        let dev = Vsock::new(&cfg)?;
        let t = match st {
            Some(st) => vsock_persist::restore(mem.clone(), dev, st)
                .map_err(|e| restore_err("the vsock device".into(), &e))?,
            None => MmioTransport::new(mem.clone(), dev)
                .map_err(|e| BuildError::Transport("virtio-vsock", e))?,
        };
        let t = Arc::new(Mutex::new(t));
        dm.attach(vm, mmio, t.clone())?;
        devs.subscribers
            .push(Arc::new(Mutex::new(VsockHandler::new(t.clone()))));
        devs.vsock = Some(t);
    }
    Ok((dm.cmdline(), devs))
}

fn restore_err(what: String, e: &dyn std::error::Error) -> BuildError {
    BuildError::DeviceRestore {
        what,
        reason: crate::vmm::chain(e),
    }
}

fn check_counts(config: &VmConfig, s: &DevicesState) -> Result<()> {
    let counts = [
        ("disks", s.disks.len(), config.disks.len()),
        ("network interfaces", s.nets.len(), config.nets.len()),
        (
            "vsock devices",
            usize::from(s.vsock.is_some()),
            usize::from(config.vsock.is_some()),
        ),
    ];
    for (what, saved, given) in counts {
        if saved != given {
            return Err(BuildError::SnapshotDevices { what, saved, given });
        }
    }
    Ok(())
}

/// Creates and configures every vCPU.
pub fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    count: u8,
    kernel: &KernelEntry,
    (pio, mmio): (Arc<Bus>, Arc<Bus>),
) -> Result<Vec<Vcpu>> {
    (0..count)
        .map(|i| {
            Vcpu::new(
                kvm,
                vm,
                mem,
                (i, count),
                kernel.entry.raw_value(),
                kernel.mode,
                pio.clone(),
                mmio.clone(),
            )
            .map_err(BuildError::from)
        })
        .collect()
}

/// Builds the whole microVM, ready to run.
pub fn build_microvm(config: &VmConfig, start: Instant) -> Result<Vmm> {
    config.validate()?;
    let vcpus =
        u8::try_from(config.vcpus).map_err(|_| crate::config::ConfigError::Vcpus(config.vcpus))?;
    let kvm = open_kvm()?;
    let vm = create_vm(&kvm)?;
    let mem = memory::create_guest_memory(config.mem_mib)?;
    register_memory(&vm, &mem)?;
    let mut mmio = Bus::new();
    let (announce, devices) = attach_virtio_devices(&vm, &mem, &mut mmio, config, None)?;
    let cmdline = full_cmdline(&config.cmdline, &announce)?;
    let kernel = load_guest(&mem, config, &cmdline)?;
    mptable::setup_mptable(&mem, vcpus)?;
    let exits = ExitEvents::new()?;
    let mut pio = Bus::new();
    let legacy = attach_legacy_devices(&vm, &mut pio, (&config.console, None), &exits, start)?;
    let buses = (Arc::new(pio), Arc::new(mmio));
    let vcpus = create_vcpus(&kvm, &vm, &mem, vcpus, &kernel, buses)?;
    log::debug!(
        "kernel entry {:#x} ({:?})",
        kernel.entry.raw_value(),
        kernel.mode
    );
    Ok(Vmm::new(kvm, vm, mem, vcpus, exits, legacy, devices))
}

/// Builds a microVM from snapshot directory `dir`, ready to run on from
/// where it was paused. `config` gives the host side only: console, disk
/// images, TAPs, the vsock Unix socket (kernel, command line, vCPU count
/// and memory size come from the snapshot). KVM calls follow Firecracker's
/// order: VM, memory, vCPUs created, VM state, devices, vCPU states.
pub fn restore_microvm(dir: &Path, config: &VmConfig, start: Instant) -> Result<Vmm> {
    let state = snapshot::load_state(dir)?;
    let kvm = open_kvm()?;
    let vm = create_vm(&kvm)?;
    let memory_file = snapshot::memory_path(dir);
    let (mem, opened) =
        snapshot::memory::restore(&state.memory, &memory_file).map_err(SnapshotError::from)?;
    let mapped_from = snapshot::layers::MappedFrom::new(opened)
        .inspect_err(|e| log::warn!("forks of this VM will write whole snapshots: {e}"))
        .ok();
    register_memory(&vm, &mem)?;
    let mut mmio = Bus::new();
    let mut pio = Bus::new();
    let exits = ExitEvents::new()?;
    let (_, devices) = attach_virtio_devices(&vm, &mem, &mut mmio, config, Some(&state.devices))?;
    let console = (&config.console, Some(&state.serial));
    let legacy = attach_legacy_devices(&vm, &mut pio, console, &exits, start)?;
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    let vcpus = state
        .vcpus
        .iter()
        .map(|s| Vcpu::create_for_restore(&vm, s.index, pio.clone(), mmio.clone()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    snapshot::vm::restore(&vm, &state.vm)?;
    for (vcpu, s) in vcpus.iter().zip(&state.vcpus) {
        vcpu.restore_state(s)?;
    }
    // Interrupts raised while the devices were restored (the vsock's
    // transport reset) were dropped by the interrupt controllers' state.
    devices.raise_pending_interrupts();
    let mut vmm = Vmm::new(kvm, vm, mem, vcpus, exits, legacy, devices);
    if let Some(m) = mapped_from {
        vmm.set_mapped_from(m);
    }
    Ok(vmm)
}

/// The user's command line followed by the device announcements.
pub fn full_cmdline(user: &str, devices: &str) -> Result<String> {
    let full = if devices.is_empty() {
        user.to_string()
    } else {
        format!("{user} {devices}")
    };
    if full.len() > MAX_CMDLINE_LEN {
        return Err(BuildError::CmdlineTooLong(full.len()));
    }
    Ok(full)
}

impl ExitEvents {
    /// Fresh, non-blocking events.
    pub fn new() -> Result<Self> {
        Ok(ExitEvents {
            reset: eventfd("reset")?,
            power_off: eventfd("power-off")?,
            vcpu: eventfd("vCPU exit")?,
        })
    }
}
