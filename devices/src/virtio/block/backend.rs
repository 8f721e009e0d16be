//! Executes block requests on a raw image file with positioned I/O.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::request::{Request, ID_BYTES, SECTOR_SIZE};

/// A raw disk image.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    serial: [u8; ID_BYTES],
}

impl RawFile {
    /// Wraps an open image; `serial` is cut to 20 bytes.
    pub fn new(file: File, serial: &str) -> Self {
        let mut s = [0u8; ID_BYTES];
        let b = serial.as_bytes();
        let n = b.len().min(ID_BYTES);
        s[..n].copy_from_slice(&b[..n]);
        RawFile { file, serial: s }
    }

    /// Reads `buf.len()` bytes at `sector`.
    pub fn read(&self, sector: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, sector * SECTOR_SIZE)
    }

    /// Writes `buf` at `sector`.
    pub fn write(&self, sector: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, sector * SECTOR_SIZE)
    }

    /// Flushes to stable storage.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The serial for GET_ID.
    pub fn serial(&self) -> &[u8; ID_BYTES] {
        &self.serial
    }

    /// The request's data for the guest: `Some` for IN and GET_ID.
    pub fn execute_read(&self, req: &Request) -> io::Result<Option<Vec<u8>>> {
        match *req {
            Request::In { sector, len } => {
                let mut buf = vec![0u8; len];
                self.read(sector, &mut buf)?;
                Ok(Some(buf))
            }
            Request::GetId => Ok(Some(self.serial.to_vec())),
            Request::Flush => self.flush().map(|()| None),
            Request::Out { .. } => Ok(None),
        }
    }
}
