//! The virtio-blk device model: features, config space (capacity), and
//! request processing from the virtqueue.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::PathBuf;

use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::backend::RawFile;
use super::request::{status, Request, RequestError, ID_BYTES, SECTOR_SIZE};
use crate::virtio::{
    device_type, read_config_bytes, ActivateArgs, ActivateError, Interrupt, VirtioDevice,
};

const QUEUE_SIZES: [u16; 1] = [256];
const VIRTIO_BLK_F_RO: u32 = 5;
const VIRTIO_BLK_F_FLUSH: u32 = 9;

pub use husk_proto::vm::BlockConfig;

/// Block device errors.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("cannot open disk image {path}")]
    Open {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image is not a whole number of sectors.
    #[error("disk image {path} is {size} bytes, not a multiple of 512")]
    Size {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The used ring could not be updated.
    #[error("cannot update the used ring: {0}")]
    UsedRing(String),
}

#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Interrupt,
}

/// A virtio-blk device.
#[derive(Debug)]
pub struct Block {
    disk: RawFile,
    path: PathBuf,
    capacity: u64,
    read_only: bool,
    active: Option<Active>,
    errors: u64,
}

impl Block {
    /// Opens the image of `cfg`.
    pub fn new(cfg: &BlockConfig) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: cfg.path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .open(&cfg.path)
            .map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len();
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::Size {
                path: cfg.path.clone(),
                size,
            });
        }
        let serial = cfg.serial.clone().unwrap_or_else(|| {
            cfg.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        Ok(Block {
            disk: RawFile::new(file, &serial),
            path: cfg.path.clone(),
            capacity: size / SECTOR_SIZE,
            read_only: cfg.read_only,
            active: None,
            errors: 0,
        })
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Processes every available request. Errors mean the queue is unusable.
    pub fn process_queue(&mut self) -> Result<(), BlockError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mut used = false;
        while let Some(chain) = a.queue.pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            let len = match execute(&a.mem, chain, &self.disk, self.capacity, self.read_only) {
                Ok(n) => n,
                Err(e) => {
                    self.errors += 1;
                    if self.errors.is_power_of_two() {
                        log::warn!(
                            "virtio-blk {}: {e} ({} errors so far)",
                            self.path.display(),
                            self.errors
                        );
                    }
                    0
                }
            };
            a.queue
                .add_used(&a.mem, head, len)
                .map_err(|e| BlockError::UsedRing(format!("{e:?}")))?;
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
        Ok(())
    }
}

/// Why a chain could not even get a status byte.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("bad descriptor chain: {0}")]
    Chain(String),
    #[error("request without a status byte")]
    NoStatus,
}

/// Parses and executes one request; returns the bytes written to the guest.
fn execute(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &RawFile,
    capacity: u64,
    read_only: bool,
) -> Result<u32, ChainError> {
    let bad = |e: virtio_queue::Error| ChainError::Chain(format!("{e:?}"));
    let mut reader: Reader<'_> = Reader::new(mem, chain.clone()).map_err(bad)?;
    let mut writer: Writer<'_> = Writer::new(mem, chain).map_err(bad)?;
    let writable = writer.available_bytes();
    if writable == 0 {
        return Err(ChainError::NoStatus);
    }
    let mut status_w = writer.split_at(writable - 1).map_err(bad)?;
    let mut header = [0u8; 16];
    let got = reader.read(&mut header).unwrap_or(0);
    let parsed = Request::parse(
        &header[..got],
        reader.available_bytes(),
        writable,
        capacity,
        read_only,
    );
    let (st, data_len) = match parsed {
        Ok(req) => run(&req, &mut reader, &mut writer, disk),
        Err(e) => {
            log::debug!("virtio-blk: {e}");
            (e.status(), 0)
        }
    };
    status_w
        .write_all(&[st])
        .map_err(|e| ChainError::Chain(e.to_string()))?;
    Ok(u32::try_from(data_len + 1).unwrap_or(u32::MAX))
}

fn run(
    req: &Request,
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_>,
    disk: &RawFile,
) -> (u8, usize) {
    let result = match *req {
        Request::Out { sector, len } => {
            let mut buf = vec![0u8; len];
            reader
                .read_exact(&mut buf)
                .and_then(|()| disk.write(sector, &buf))
                .map(|()| 0)
        }
        Request::GetId => {
            let n = writer.available_bytes().min(ID_BYTES);
            writer.write_all(&disk.serial()[..n]).map(|()| n)
        }
        _ => disk.execute_read(req).and_then(|data| match data {
            Some(d) => writer.write_all(&d).map(|()| d.len()),
            None => Ok(0),
        }),
    };
    match result {
        Ok(n) => (status::OK, n),
        Err(e) => {
            log::debug!("virtio-blk: {e}");
            (RequestError::BadLength(0).status(), 0)
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn avail_features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_BLK_F_FLUSH;
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config starts with `le64 capacity`.
        read_config_bytes(&self.capacity.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError> {
        let got = args.queues.len();
        let queue = args
            .queues
            .into_iter()
            .next()
            .filter(|_| got == 1)
            .ok_or(ActivateError::QueueCount { expected: 1, got })?;
        self.active = Some(Active {
            mem: args.mem,
            queue,
            interrupt: args.interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_positions(&self) -> Vec<(u16, u16)> {
        self.active
            .as_ref()
            .map(|a| vec![(a.queue.next_avail(), a.queue.next_used())])
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::test_utils::{desc, guest_memory, Harness, BUF_BASE, F_NEXT, F_WRITE};

    const HDR: u64 = BUF_BASE;
    const DATA: u64 = BUF_BASE + 0x1000;
    const STATUS: u64 = BUF_BASE + 0x10_0000;

    fn disk(sectors: usize, read_only: bool) -> (tempfile::NamedTempFile, Block) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..sectors * 512)
            .map(|i| u8::try_from(i / 512).unwrap())
            .collect();
        f.write_all(&content).unwrap();
        let b = Block::new(&BlockConfig {
            path: f.path().to_path_buf(),
            read_only,
            serial: Some("husk-serial".into()),
        })
        .unwrap();
        (f, b)
    }

    fn write_header(mem: &GuestMemoryMmap, t: u32, sector: u64) {
        let mut h = t.to_le_bytes().to_vec();
        h.extend_from_slice(&[0; 4]);
        h.extend_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn run(h: &mut Harness<'_, Block>) {
        h.with_device(|d| d.process_queue()).unwrap();
    }

    #[test]
    fn read_write_flush_get_id() {
        let mem = guest_memory();
        let (f, dev) = disk(8, false);
        let mut h = Harness::new(&mem, dev);
        // Read sectors 2-3.
        write_header(&mem, 0, 2);
        h.add(
            0,
            &[
                desc(HDR, 16, F_NEXT, 1),
                desc(DATA, 1024, F_NEXT | F_WRITE, 2),
                desc(STATUS, 1, F_WRITE, 0),
            ],
        );
        run(&mut h);
        assert_eq!(status(&mem), status::OK);
        assert_eq!(h.used_elem(0, 0), (0, 1025));
        let mut buf = [0u8; 1024];
        mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf[..512].iter().all(|b| *b == 2) && buf[512..].iter().all(|b| *b == 3));
        // Write sector 5 from guest memory.
        mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        write_header(&mem, 1, 5);
        h.add(
            0,
            &[
                desc(HDR, 16, F_NEXT, 1),
                desc(DATA, 512, F_NEXT, 2),
                desc(STATUS, 1, F_WRITE, 0),
            ],
        );
        run(&mut h);
        assert_eq!(status(&mem), status::OK);
        let on_disk = std::fs::read(f.path()).unwrap();
        assert!(on_disk[5 * 512..6 * 512].iter().all(|b| *b == 0xab));
        // Flush.
        write_header(&mem, 4, 0);
        h.add(0, &[desc(HDR, 16, F_NEXT, 1), desc(STATUS, 1, F_WRITE, 0)]);
        run(&mut h);
        assert_eq!(status(&mem), status::OK);
        // GET_ID.
        write_header(&mem, 8, 0);
        h.add(
            0,
            &[
                desc(HDR, 16, F_NEXT, 1),
                desc(DATA, 20, F_NEXT | F_WRITE, 2),
                desc(STATUS, 1, F_WRITE, 0),
            ],
        );
        run(&mut h);
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..11], b"husk-serial");
        assert_eq!(status(&mem), status::OK);
        assert_eq!(h.used_idx(0), 4);
    }

    #[test]
    fn bad_requests_get_error_status() {
        let mem = guest_memory();
        let (_f, dev) = disk(8, true);
        assert_ne!(dev.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
        let mut h = Harness::new(&mem, dev);
        let cases: [(u32, u64, u32, u8); 4] = [
            (0, 7, 1024, status::IOERR),  // reads past the end
            (1, 0, 512, status::IOERR),   // write to a read-only disk
            (0, 0, 100, status::IOERR),   // not whole sectors
            (77, 0, 512, status::UNSUPP), // unknown type
        ];
        for (t, sector, len, want) in cases {
            write_header(&mem, t, sector);
            let dir = if t == 1 { F_NEXT } else { F_NEXT | F_WRITE };
            h.add(
                0,
                &[
                    desc(HDR, 16, F_NEXT, 1),
                    desc(DATA, len, dir, 2),
                    desc(STATUS, 1, F_WRITE, 0),
                ],
            );
            run(&mut h);
            assert_eq!(status(&mem), want, "type {t} sector {sector} len {len}");
        }
        assert_eq!(h.used_idx(0), 4);
    }

    #[test]
    fn malicious_chains_do_not_panic_or_stall() {
        let mem = guest_memory();
        let (_f, dev) = disk(8, false);
        let mut h = Harness::new(&mem, dev);
        let end = crate::virtio::test_utils::MEM_SIZE as u64;
        let chains: Vec<Vec<_>> = vec![
            // Header outside guest memory.
            vec![
                desc(end + 0x1000, 16, F_NEXT, 1),
                desc(STATUS, 1, F_WRITE, 0),
            ],
            // Data buffer crossing the end of memory.
            vec![
                desc(HDR, 16, F_NEXT, 1),
                desc(end - 256, 4096, F_NEXT | F_WRITE, 2),
                desc(STATUS, 1, F_WRITE, 0),
            ],
            // Huge length.
            vec![
                desc(HDR, 16, F_NEXT, 1),
                desc(DATA, u32::MAX, F_NEXT | F_WRITE, 2),
                desc(STATUS, 1, F_WRITE, 0),
            ],
            // Status descriptor not writable (wrong direction).
            vec![desc(HDR, 16, F_NEXT, 1), desc(STATUS, 1, 0, 0)],
            // Header too short.
            vec![desc(HDR, 8, F_NEXT, 1), desc(STATUS, 1, F_WRITE, 0)],
            // Zero-length descriptors.
            vec![desc(HDR, 0, F_NEXT, 1), desc(STATUS, 0, F_WRITE, 0)],
            // A loop: descriptor 1 points back to 0.
            vec![
                desc(HDR, 16, F_NEXT, 1),
                desc(DATA, 512, F_NEXT | F_WRITE, 0),
            ],
            // `next` out of the table.
            vec![desc(HDR, 16, F_NEXT, 200)],
        ];
        for (i, c) in chains.iter().enumerate() {
            write_header(&mem, 0, 0);
            h.add(0, c);
            run(&mut h);
            assert_eq!(
                h.used_idx(0),
                u16::try_from(i + 1).unwrap(),
                "chain {i} not completed"
            );
        }
        // The queue still serves a good request afterwards.
        write_header(&mem, 0, 1);
        h.add(
            0,
            &[
                desc(HDR, 16, F_NEXT, 1),
                desc(DATA, 512, F_NEXT | F_WRITE, 2),
                desc(STATUS, 1, F_WRITE, 0),
            ],
        );
        run(&mut h);
        assert_eq!(status(&mem), status::OK);
    }

    #[test]
    fn open_errors_name_the_file() {
        let err = Block::new(&BlockConfig {
            path: "/nonexistent.img".into(),
            read_only: true,
            serial: None,
        })
        .unwrap_err()
        .to_string();
        assert_eq!(err, "cannot open disk image /nonexistent.img");
    }
}
