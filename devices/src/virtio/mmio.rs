//! The virtio-mmio transport, version 2 registers (virtio 1.2, section 4.2.2):
//! feature negotiation, the device status state machine, queue set-up, reset,
//! interrupt status and the device configuration window.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
#[cfg(any(test, feature = "test-utils"))]
use vm_memory::GuestAddress;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateArgs, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::{BusDevice, VirtioMmioDevice};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b53_5548; // "HUSK"

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;
const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// A virtio device behind MMIO version 2 registers.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    interrupt: Interrupt,
    status: u32,
    features_sel: u32,
    acked_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
}

impl<D: VirtioDevice> std::fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device`; queue and interrupt events are created here.
    pub fn new(mem: GuestMemoryMmap, device: D) -> std::io::Result<Self> {
        let sizes = device.queue_max_sizes().to_vec();
        let mut queues = Vec::with_capacity(sizes.len());
        let mut queue_evts = Vec::with_capacity(sizes.len());
        for max in sizes {
            queues.push(Queue::new(max).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("queue: {e:?}"))
            })?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            queues,
            queue_evts,
            interrupt: Interrupt::new(EventFd::new(EFD_NONBLOCK)?),
            status: 0,
            features_sel: 0,
            acked_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably (for its event handler).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Signals the interrupt again when InterruptStatus has bits set: after
    /// a restore, once the VM's interrupt controllers hold their saved
    /// state (which would drop an interrupt raised before).
    pub fn raise_pending_interrupt(&self) {
        if self.interrupt.status() != 0 {
            if let Err(e) = self.interrupt.event().write(1) {
                log::error!("virtio-mmio: cannot raise the pending interrupt: {e}");
            }
        }
    }

    /// Tells the driver the device's configuration changed (a new
    /// configuration generation and a configuration-change interrupt).
    pub fn notify_config_change(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.signal_config_change();
    }

    /// Whether the driver has activated the device.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Marks the device broken (DEVICE_NEEDS_RESET) and tells the driver.
    pub fn mark_broken(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let i = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(i)
    }

    fn features(&self) -> u64 {
        self.device.avail_features() | (1u64 << VIRTIO_F_VERSION_1)
    }

    fn update_queue<F: FnOnce(&mut Queue)>(&mut self, f: F) {
        // Queue registers are writable only while the driver sets up, before
        // DRIVER_OK (virtio 1.2, 4.2.3.2).
        if self.status & status::DRIVER_OK != 0 {
            log::warn!("virtio-mmio: queue register written after DRIVER_OK");
            return;
        }
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, in order (virtio 1.2, 3.1.1).
        if value & self.status != self.status {
            log::warn!(
                "virtio-mmio: status {:#x} clears bits of {:#x}",
                value,
                self.status
            );
            return;
        }
        let added = value & !self.status;
        if added & status::FEATURES_OK != 0 && self.acked_features & (1 << VIRTIO_F_VERSION_1) == 0
        {
            // Legacy drivers are not supported: leave FEATURES_OK unset so the
            // driver sees negotiation failed.
            self.status = value & !status::FEATURES_OK;
            return;
        }
        self.status = value;
        if added & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let ready: Vec<Queue> = self
            .queues
            .iter()
            .filter(|q| q.ready())
            .filter_map(|q| Queue::try_from(q.state()).ok())
            .collect();
        if ready.len() != self.queues.len() || !ready.iter().all(|q| q.is_valid(&self.mem)) {
            log::warn!(
                "virtio-mmio: device type {} activated with invalid or missing queues",
                self.device.device_type()
            );
            self.mark_broken();
            return;
        }
        let args = ActivateArgs {
            mem: self.mem.clone(),
            queues: ready,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        };
        match self.device.activate(args) {
            Ok(()) => self.activated = true,
            Err(e) => {
                log::error!(
                    "virtio-mmio: device type {} failed to activate: {e}",
                    self.device.device_type()
                );
                self.mark_broken();
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        self.status = 0;
        self.features_sel = 0;
        self.acked_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.ack(u32::MAX);
    }

    fn read_u32(&self, offset: u64) -> u32 {
        let q = usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get(i));
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.features_sel {
                0 => lo32(self.features()),
                1 => hi32(self.features()),
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                log::warn!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_u32(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.acked_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK != 0 {
                    log::warn!("virtio-mmio: features written after FEATURES_OK");
                    return;
                }
                let shift = match self.acked_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                // Accept only what was offered.
                let offered = (self.features() >> shift) & 0xffff_ffff;
                let v = u64::from(v) & offered;
                self.acked_features =
                    (self.acked_features & !(0xffff_ffff << shift)) | (v << shift);
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => self.update_queue(|q| {
                if let Ok(n) = u16::try_from(v) {
                    q.set_size(n)
                }
            }),
            REG_QUEUE_READY => self.update_queue(|q| q.set_ready(v == 1)),
            REG_QUEUE_NOTIFY => {
                let i = usize::try_from(v).unwrap_or(usize::MAX);
                match self.queue_evts.get(i) {
                    Some(evt) => {
                        if let Err(e) = evt.write(1) {
                            log::error!("virtio-mmio: queue {i} notify: {e}");
                        }
                    }
                    None => log::warn!("virtio-mmio: notify of missing queue {v}"),
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.set_status(v),
            REG_QUEUE_DESC_LOW => self.update_queue(|q| q.set_desc_table_address(Some(v), None)),
            REG_QUEUE_DESC_HIGH => self.update_queue(|q| q.set_desc_table_address(None, Some(v))),
            REG_QUEUE_AVAIL_LOW => self.update_queue(|q| q.set_avail_ring_address(Some(v), None)),
            REG_QUEUE_AVAIL_HIGH => self.update_queue(|q| q.set_avail_ring_address(None, Some(v))),
            REG_QUEUE_USED_LOW => self.update_queue(|q| q.set_used_ring_address(Some(v), None)),
            REG_QUEUE_USED_HIGH => self.update_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => log::warn!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }
}

/// A virtqueue as the driver programmed it and as far as the device got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available-ring entry the device will take.
    pub next_avail: u16,
    /// Next used-ring entry the device will fill.
    pub next_used: u16,
}

/// The transport's registers and queues (virtio 1.2, 4.2.2), for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    /// Virtio device type, checked on restore.
    pub device_type: u32,
    /// Device status.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub features_sel: u32,
    /// DriverFeaturesSel.
    pub acked_features_sel: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Whether the device was running.
    pub activated: bool,
    /// Every queue, in index order.
    pub queues: Vec<QueueSnapshot>,
}

/// Why a transport state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum MmioRestoreError {
    /// The state belongs to another kind of device.
    #[error("virtio-mmio state is for device type {saved}, the device is type {actual}")]
    DeviceType {
        /// Type in the state.
        saved: u32,
        /// Type of the device given.
        actual: u32,
    },
    /// The queue count or a queue's limits differ.
    #[error("virtio-mmio state for device type {device_type} has queues the device cannot take")]
    Queues {
        /// The device type.
        device_type: u32,
    },
    /// The transport could not be created.
    #[error("cannot create the virtio-mmio transport")]
    Create(#[source] std::io::Error),
    /// The device refused to start again.
    #[error("virtio device type {device_type} did not resume (status {status:#x})")]
    Activate {
        /// The device type.
        device_type: u32,
        /// Status after the attempt.
        status: u32,
    },
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// The transport's state; queue positions come from the running device.
    pub fn save_state(&self) -> MmioState {
        let progress = self.device.queue_positions();
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (next_avail, next_used) = progress
                    .get(i)
                    .copied()
                    .unwrap_or((q.next_avail(), q.next_used()));
                QueueSnapshot {
                    max_size: q.max_size(),
                    size: q.size(),
                    ready: q.ready(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                    next_avail,
                    next_used,
                }
            })
            .collect();
        MmioState {
            device_type: self.device.device_type(),
            status: self.status,
            features_sel: self.features_sel,
            acked_features_sel: self.acked_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            activated: self.activated,
            queues,
        }
    }

    /// A transport for `device` in the saved `state`; a device that was
    /// running is activated again with its queues where they were.
    pub fn restore(
        mem: GuestMemoryMmap,
        device: D,
        state: &MmioState,
    ) -> Result<Self, MmioRestoreError> {
        let device_type = device.device_type();
        if state.device_type != device_type {
            return Err(MmioRestoreError::DeviceType {
                saved: state.device_type,
                actual: device_type,
            });
        }
        let mut t = MmioTransport::new(mem, device).map_err(MmioRestoreError::Create)?;
        if state.queues.len() != t.queues.len() {
            return Err(MmioRestoreError::Queues { device_type });
        }
        for (q, s) in t.queues.iter_mut().zip(&state.queues) {
            if s.max_size != q.max_size() || s.size > s.max_size {
                return Err(MmioRestoreError::Queues { device_type });
            }
            q.set_size(s.size);
            q.set_desc_table_address(Some(lo32(s.desc_table)), Some(hi32(s.desc_table)));
            q.set_avail_ring_address(Some(lo32(s.avail_ring)), Some(hi32(s.avail_ring)));
            q.set_used_ring_address(Some(lo32(s.used_ring)), Some(hi32(s.used_ring)));
            q.set_next_avail(s.next_avail);
            q.set_next_used(s.next_used);
            q.set_ready(s.ready);
        }
        t.status = state.status;
        t.features_sel = state.features_sel;
        t.acked_features_sel = state.acked_features_sel;
        t.acked_features = state.acked_features;
        t.queue_sel = state.queue_sel;
        t.config_generation = state.config_generation;
        t.interrupt
            .status
            .store(state.interrupt_status, std::sync::atomic::Ordering::SeqCst);
        if state.activated {
            t.activate();
            if !t.activated {
                return Err(MmioRestoreError::Activate {
                    device_type,
                    status: t.status,
                });
            }
        }
        Ok(t)
    }
}

/// The low 32 bits of `v`.
pub fn lo32(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(0)
}

/// The high 32 bits of `v`.
pub fn hi32(v: u64) -> u32 {
    u32::try_from(v >> 32).unwrap_or(0)
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::warn!("virtio-mmio: {}-byte read at {offset:#x}", data.len());
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_u32(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::warn!("virtio-mmio: {}-byte write at {offset:#x}", data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            log::warn!("virtio-mmio: unaligned write at {offset:#x}");
            return;
        }
        self.write_u32(offset, u32::from_le_bytes(bytes));
    }
}

impl<D: VirtioDevice> VirtioMmioDevice for MmioTransport<D> {
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn interrupt_event(&self) -> &EventFd {
        self.interrupt.event()
    }
}

/// Driver-side helpers for tests: program a transport the way Linux does.
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils {
    use super::*;

    /// Writes a 32-bit register.
    pub fn write_reg<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u64, v: u32) {
        t.write(offset, &v.to_le_bytes());
    }

    /// Reads a 32-bit register.
    pub fn read_reg<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Negotiates VERSION_1 plus `features` and sets up queue `i` at the
    /// given addresses with `size` entries, for every `(desc, avail, used)`.
    pub fn activate<D: VirtioDevice>(
        t: &mut MmioTransport<D>,
        features: u64,
        queues: &[(GuestAddress, GuestAddress, GuestAddress)],
        size: u16,
    ) {
        write_reg(t, REG_STATUS, status::ACKNOWLEDGE);
        write_reg(t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let f = features | (1 << VIRTIO_F_VERSION_1);
        write_reg(t, REG_DRIVER_FEATURES_SEL, 0);
        write_reg(t, REG_DRIVER_FEATURES, lo32(f));
        write_reg(t, REG_DRIVER_FEATURES_SEL, 1);
        write_reg(t, REG_DRIVER_FEATURES, hi32(f));
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        write_reg(t, REG_STATUS, s);
        for (i, (desc, avail, used)) in queues.iter().enumerate() {
            write_reg(t, REG_QUEUE_SEL, u32::try_from(i).unwrap_or(u32::MAX));
            write_reg(t, REG_QUEUE_NUM, u32::from(size));
            write_reg(t, REG_QUEUE_DESC_LOW, lo32(desc.0));
            write_reg(t, REG_QUEUE_DESC_HIGH, hi32(desc.0));
            write_reg(t, REG_QUEUE_AVAIL_LOW, lo32(avail.0));
            write_reg(t, REG_QUEUE_AVAIL_HIGH, hi32(avail.0));
            write_reg(t, REG_QUEUE_USED_LOW, lo32(used.0));
            write_reg(t, REG_QUEUE_USED_HIGH, hi32(used.0));
            write_reg(t, REG_QUEUE_READY, 1);
        }
        write_reg(t, REG_STATUS, s | status::DRIVER_OK);
    }
}

#[cfg(test)]
mod tests {
    use super::test_utils::*;
    use super::*;
    use crate::virtio::ActivateError;

    #[derive(Default)]
    struct Dummy {
        activated: Option<(usize, u64)>,
        resets: u32,
        fail: bool,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn avail_features(&self) -> u64 {
            0b101
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::virtio::read_config_bytes(&[1, 2, 3, 4], offset, data);
        }
        fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError> {
            if self.fail {
                return Err(ActivateError::Backend("nope".into()));
            }
            self.activated = Some((args.queues.len(), args.acked_features));
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn queues() -> Vec<(GuestAddress, GuestAddress, GuestAddress)> {
        vec![
            (
                GuestAddress(0x1000),
                GuestAddress(0x2000),
                GuestAddress(0x3000),
            ),
            (
                GuestAddress(0x4000),
                GuestAddress(0x5000),
                GuestAddress(0x6000),
            ),
        ]
    }

    #[test]
    fn identity_registers() {
        let mut t = MmioTransport::new(mem(), Dummy::default()).unwrap();
        assert_eq!(read_reg(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(read_reg(&mut t, REG_VERSION), 2);
        assert_eq!(read_reg(&mut t, REG_DEVICE_ID), 42);
        write_reg(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(read_reg(&mut t, REG_DEVICE_FEATURES), 1); // VERSION_1
        write_reg(&mut t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(read_reg(&mut t, REG_DEVICE_FEATURES), 0b101);
        write_reg(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(read_reg(&mut t, REG_QUEUE_NUM_MAX), 16);
        write_reg(&mut t, REG_QUEUE_SEL, 7);
        assert_eq!(read_reg(&mut t, REG_QUEUE_NUM_MAX), 0);
        let mut cfg = [0u8; 4];
        t.read(CONFIG_SPACE + 2, &mut cfg);
        assert_eq!(cfg, [3, 4, 0, 0]);
    }

    #[test]
    fn negotiation_and_activation() {
        let mut t = MmioTransport::new(mem(), Dummy::default()).unwrap();
        // Bit 1 was not offered: it is dropped.
        activate(&mut t, 0b111, &queues(), 16);
        assert!(t.is_activated());
        assert_eq!(t.device().activated, Some((2, 0b101 | (1 << 32))));
        // Reset clears everything and tells the device.
        write_reg(&mut t, REG_STATUS, 0);
        assert!(!t.is_activated());
        assert_eq!(t.device().resets, 1);
        assert_eq!(read_reg(&mut t, REG_STATUS), 0);
        // And it can be activated again.
        activate(&mut t, 0, &queues(), 16);
        assert!(t.is_activated());
    }

    #[test]
    fn legacy_driver_is_refused() {
        let mut t = MmioTransport::new(mem(), Dummy::default()).unwrap();
        write_reg(&mut t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write_reg(&mut t, REG_DRIVER_FEATURES, 0b1);
        write_reg(
            &mut t,
            REG_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(read_reg(&mut t, REG_STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn bad_queues_mark_the_device_broken() {
        let mut t = MmioTransport::new(mem(), Dummy::default()).unwrap();
        // Queue 1's used ring lies outside guest memory.
        let mut qs = queues();
        qs[1].2 = GuestAddress(0x1000_0000);
        activate(&mut t, 0, &qs, 16);
        assert!(!t.is_activated());
        assert_ne!(read_reg(&mut t, REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(read_reg(&mut t, REG_INTERRUPT_STATUS) & 2, 0);
        // Only one of the two queues made ready.
        let mut t = MmioTransport::new(mem(), Dummy::default()).unwrap();
        activate(&mut t, 0, &queues()[..1], 16);
        assert!(!t.is_activated());
        // A size that is not a power of two is ignored: the queue keeps its
        // maximum size and activation works.
        let mut t = MmioTransport::new(mem(), Dummy::default()).unwrap();
        activate(&mut t, 0, &queues(), 17);
        assert!(t.is_activated());
    }

    #[test]
    fn failing_backend_marks_broken() {
        let dev = Dummy {
            fail: true,
            ..Default::default()
        };
        let mut t = MmioTransport::new(mem(), dev).unwrap();
        activate(&mut t, 0, &queues(), 16);
        assert!(!t.is_activated());
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn notify_and_interrupt_ack() {
        let mut t = MmioTransport::new(mem(), Dummy::default()).unwrap();
        write_reg(&mut t, REG_QUEUE_NOTIFY, 1);
        assert_eq!(t.queue_events()[1].read().unwrap(), 1);
        write_reg(&mut t, REG_QUEUE_NOTIFY, 9); // ignored
        t.interrupt.signal_used_queue();
        assert_eq!(read_reg(&mut t, REG_INTERRUPT_STATUS), 1);
        assert_eq!(t.interrupt_event().read().unwrap(), 1);
        write_reg(&mut t, REG_INTERRUPT_ACK, 1);
        assert_eq!(read_reg(&mut t, REG_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn state_round_trip_resumes_a_running_device() {
        let mut t = MmioTransport::new(mem(), Dummy::default()).unwrap();
        activate(&mut t, 0b100, &queues(), 8);
        write_reg(&mut t, REG_QUEUE_SEL, 1);
        t.interrupt.signal_used_queue();
        let state = t.save_state();
        assert!(state.activated);
        assert_eq!(state.queues[1].size, 8);
        assert_eq!(state.queues[1].used_ring, 0x6000);

        let mut back = MmioTransport::restore(mem(), Dummy::default(), &state).unwrap();
        assert!(back.is_activated());
        assert_eq!(back.device().activated, Some((2, 0b100 | (1 << 32))));
        assert_eq!(back.save_state(), state);
        assert_eq!(read_reg(&mut back, REG_QUEUE_READY), 1);
        assert_eq!(read_reg(&mut back, REG_INTERRUPT_STATUS), 1);
        // Queue registers stay locked after DRIVER_OK, as before.
        write_reg(&mut back, REG_QUEUE_NUM, 4);
        assert_eq!(back.save_state().queues[1].size, 8);
    }

    #[test]
    fn restore_checks_type_queues_and_activation() {
        let mut t = MmioTransport::new(mem(), Dummy::default()).unwrap();
        activate(&mut t, 0, &queues(), 16);
        let mut state = t.save_state();
        state.device_type = 7;
        let e = MmioTransport::restore(mem(), Dummy::default(), &state).unwrap_err();
        assert!(matches!(
            e,
            MmioRestoreError::DeviceType {
                saved: 7,
                actual: 42
            }
        ));
        let mut state = t.save_state();
        state.queues.pop();
        assert!(matches!(
            MmioTransport::restore(mem(), Dummy::default(), &state),
            Err(MmioRestoreError::Queues { .. })
        ));
        let failing = Dummy {
            fail: true,
            ..Default::default()
        };
        assert!(matches!(
            MmioTransport::restore(mem(), failing, &t.save_state()),
            Err(MmioRestoreError::Activate { .. })
        ));
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let mut t = MmioTransport::new(mem(), Dummy::default()).unwrap();
        let mut b = [0u8; 2];
        t.read(REG_MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(REG_STATUS, &[1]);
        t.write(REG_STATUS + 1, &[1, 0, 0, 0]);
        t.read(u64::MAX, &mut b);
        t.write(u64::MAX - 3, &[0; 4]);
        assert_eq!(read_reg(&mut t, REG_STATUS), 0);
    }
}
