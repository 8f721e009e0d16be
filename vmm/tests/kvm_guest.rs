//! Fast KVM tests with tiny hand-assembled guests (no Linux). They run on any
//! /dev/kvm, including the build machines' emulating one (a few thousand
//! instructions at most), and check the boot vCPU state husk-vmm gives a
//! kernel (long mode with paging, PVH's 32-bit protected mode), port-I/O and
//! MMIO exit dispatch, the serial port, the debug port and the i8042 reset.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use husk_devices::legacy::{
    DebugPort, EventFdTrigger, Serial, DEBUG_PORT, I8042, I8042_PORT_BASE, I8042_PORT_LEN,
    SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};
use husk_devices::BusDevice;
use husk_vmm::arch::regs::{self, EntryMode};
use husk_vmm::builder::{open_kvm, register_memory};
use husk_vmm::bus::Bus;
use husk_vmm::memory::{create_guest_memory, HIMEM_START, PVH_INFO_START};
use husk_vmm::vcpu::{Vcpu, VcpuStop};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Records accesses and answers reads with a fixed byte.
#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
    reads: Vec<(u64, usize)>,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        data.fill(0x5a);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

const TEST_MMIO_BASE: u64 = 0x2000_0000; // inside the identity map, not RAM
const TEST_PIO_PORT: u64 = 0x80;

struct TestVm {
    vcpu: Vcpu,
    console: SharedBuf,
    mmio: Arc<Mutex<Recorder>>,
    pio: Arc<Mutex<Recorder>>,
    reset: EventFd,
    power_off: EventFd,
    _vm: kvm_ioctls::VmFd,
    _mem: vm_memory::GuestMemoryMmap,
}

fn boot(code: &[u8], mode: EntryMode) -> TestVm {
    let kvm = open_kvm().expect("/dev/kvm must be usable for these tests");
    // No irqchip: HLT then exits to user space, which ends each test guest.
    let vm = kvm.create_vm().unwrap();
    let mem = create_guest_memory(32).unwrap();
    register_memory(&vm, &mem).unwrap();
    mem.write_slice(code, GuestAddress(HIMEM_START)).unwrap();

    let console = SharedBuf::default();
    let reset = EventFd::new(EFD_NONBLOCK).unwrap();
    let power_off = EventFd::new(EFD_NONBLOCK).unwrap();
    let serial = Serial::new(
        EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap()),
        Box::new(console.clone()),
    );
    let pio_rec = Arc::new(Mutex::new(Recorder::default()));
    let mmio_rec = Arc::new(Mutex::new(Recorder::default()));
    let mut pio = Bus::new();
    pio.insert(
        u64::from(SERIAL_PORT_BASE),
        u64::from(SERIAL_PORT_LEN),
        Arc::new(Mutex::new(serial)),
    )
    .unwrap();
    pio.insert(
        u64::from(I8042_PORT_BASE),
        u64::from(I8042_PORT_LEN),
        Arc::new(Mutex::new(I8042::new(reset.try_clone().unwrap()))),
    )
    .unwrap();
    pio.insert(
        u64::from(DEBUG_PORT),
        1,
        Arc::new(Mutex::new(DebugPort::new(
            Instant::now(),
            power_off.try_clone().unwrap(),
        ))),
    )
    .unwrap();
    pio.insert(TEST_PIO_PORT, 4, pio_rec.clone()).unwrap();
    let mut mmio = Bus::new();
    mmio.insert(TEST_MMIO_BASE, 0x1000, mmio_rec.clone())
        .unwrap();

    let fd = vm.create_vcpu(0).unwrap();
    let mut cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    husk_vmm::arch::cpuid::filter_cpuid(cpuid.as_mut_slice(), 0, 1);
    fd.set_cpuid2(&cpuid).unwrap();
    regs::setup_vcpu_regs(&fd, &mem, HIMEM_START, mode).unwrap();
    TestVm {
        vcpu: Vcpu::from_fd(fd, 0, Arc::new(pio), Arc::new(mmio)),
        console,
        mmio: mmio_rec,
        pio: pio_rec,
        reset,
        power_off,
        _vm: vm,
        _mem: mem,
    }
}

impl TestVm {
    /// Runs until the vCPU stops, with a bound on exits so a broken guest
    /// cannot hang the test, on a thread under husk-vmm's vCPU seccomp
    /// filter (a call outside it kills the test process with SIGSYS).
    fn run(&mut self) -> VcpuStop {
        let filter = husk_vmm::seccomp::compile(husk_vmm::seccomp::FilterSpec {
            kind: husk_vmm::seccomp::ThreadKind::Vcpu,
            control: false,
        })
        .unwrap();
        let vcpu = &mut self.vcpu;
        let stop = std::thread::scope(|s| {
            s.spawn(move || {
                husk_vmm::seccomp::install(husk_vmm::seccomp::ThreadKind::Vcpu, Some(&filter))
                    .ok()?;
                (0..1000).find_map(|_| vcpu.run_once())
            })
            .join()
            .unwrap()
        });
        stop.expect("guest did not stop within 1000 exits (or no filter)")
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.0.lock().unwrap()).into_owned()
    }
}

fn is_hlt(stop: &VcpuStop) -> bool {
    matches!(stop, VcpuStop::Failure(why) if why.contains("halted"))
}

// mov dx, 0x3f8 ; mov al, C ; out dx, al (per char)
fn serial_print(s: &str) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03];
    for b in s.bytes() {
        code.extend_from_slice(&[0xb0, b, 0xee]);
    }
    code
}

#[test]
fn long_mode_guest_prints_and_touches_mmio() {
    let mut code = serial_print("long mode ok\n");
    code.extend_from_slice(&[
        0x48, 0xc7, 0xc3, 0x10, 0x00, 0x00, 0x20, // mov rbx, 0x20000010
        0xc6, 0x03, 0x42, // mov byte [rbx], 0x42   (MMIO write)
        0x8b, 0x03, // mov eax, [rbx]            (MMIO read, 4 bytes)
        0x66, 0xba, 0x80, 0x00, // mov dx, 0x80
        0xef, // out dx, eax                 (4-byte port write of what MMIO returned)
        0x0f, 0x20, 0xc0, // mov rax, cr0
        0xef, // out dx, eax
        0xf4, // hlt
    ]);
    let mut vm = boot(&code, EntryMode::LongMode);
    let stop = vm.run();
    assert!(is_hlt(&stop), "unexpected stop {stop:?}");
    assert_eq!(vm.console(), "long mode ok\n");
    let mmio = vm.mmio.lock().unwrap();
    assert_eq!(mmio.writes, vec![(0x10, vec![0x42])]);
    assert_eq!(mmio.reads, vec![(0x10, 4)]);
    let pio = vm.pio.lock().unwrap();
    assert_eq!(pio.writes[0], (0, vec![0x5a; 4]));
    let cr0 = u32::from_le_bytes(pio.writes[1].1.clone().try_into().unwrap());
    assert_ne!(cr0 & 0x8000_0000, 0, "paging must be on: cr0={cr0:#x}");
    assert_ne!(cr0 & 1, 0, "protected mode must be on");
    let sregs = vm.vcpu.fd().get_sregs().unwrap();
    assert_ne!(sregs.efer & 0x400, 0, "long mode must be active");
    assert_eq!(sregs.cs.l, 1);
}

#[test]
fn pvh_guest_starts_in_protected_mode_with_start_info_in_ebx() {
    let mut code = serial_print("pvh\n");
    code.extend_from_slice(&[
        0x89, 0xd8, // mov eax, ebx
        0x66, 0xba, 0x80, 0x00, // mov dx, 0x80
        0xef, // out dx, eax
        0x0f, 0x20, 0xc0, // mov eax, cr0
        0xef, // out dx, eax
        0xf4, // hlt
    ]);
    let mut vm = boot(&code, EntryMode::Pvh);
    let stop = vm.run();
    assert!(is_hlt(&stop), "unexpected stop {stop:?}");
    assert_eq!(vm.console(), "pvh\n");
    let pio = vm.pio.lock().unwrap();
    let ebx = u32::from_le_bytes(pio.writes[0].1.clone().try_into().unwrap());
    assert_eq!(u64::from(ebx), PVH_INFO_START);
    let cr0 = u32::from_le_bytes(pio.writes[1].1.clone().try_into().unwrap());
    assert_eq!(cr0 & 0x8000_0001, 1, "protected mode on, paging off");
}

#[test]
fn debug_port_power_off_and_unclaimed_port_reads() {
    let code = [
        0xe4, 0x99, // in al, 0x99   (no device: reads 0xff)
        0x66, 0xba, 0x80, 0x00, // mov dx, 0x80
        0xee, // out dx, al
        0x66, 0xba, 0xf0, 0x03, // mov dx, 0x3f0
        0xb0, 0xad, // mov al, 0xad
        0xee, // out dx, al
        0xf4,
    ];
    let mut vm = boot(&code, EntryMode::LongMode);
    assert!(is_hlt(&vm.run()));
    assert_eq!(vm.pio.lock().unwrap().writes, vec![(0, vec![0xff])]);
    assert_eq!(vm.power_off.read().unwrap(), 1);
    assert!(vm.reset.read().is_err());
}

#[test]
fn i8042_reset_signals_the_vmm() {
    let code = [
        0xe4, 0x64, // in al, 0x64 (status: input buffer empty)
        0xb0, 0xfe, // mov al, 0xfe
        0xe6, 0x64, // out 0x64, al
        0xf4,
    ];
    let mut vm = boot(&code, EntryMode::LongMode);
    assert!(is_hlt(&vm.run()));
    assert_eq!(vm.reset.read().unwrap(), 1);
}

#[test]
fn fault_without_idt_is_a_triple_fault() {
    // ud2 with an empty IDT: #UD -> #DF -> triple fault -> KVM_EXIT_SHUTDOWN.
    let mut vm = boot(&[0x0f, 0x0b], EntryMode::LongMode);
    let stop = vm.run();
    assert!(
        matches!(&stop, VcpuStop::TripleFault(at) if at.starts_with("vCPU 0 at rip ")),
        "{stop:?}"
    );
}
