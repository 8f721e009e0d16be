//! Parsing a virtio-blk request out of a descriptor chain, without I/O:
//! the 16-byte header (read once), the data buffers and the status byte.

/// Sector size.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the serial returned by GET_ID.
pub const ID_BYTES: usize = 20;
/// Largest data transfer of one request.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Request types.
pub mod req_type {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Device id (serial).
    pub const GET_ID: u32 = 8;
}

/// Status codes.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// I/O error (also: out of range, malformed).
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The header is shorter than 16 bytes.
    #[error("request header too short ({0} bytes)")]
    ShortHeader(usize),
    /// No writable byte for the status.
    #[error("request has no status byte")]
    NoStatus,
    /// Data length not a multiple of the sector size, or too large.
    #[error("data length {0} is not a multiple of 512 or exceeds the limit")]
    BadLength(usize),
    /// The request reaches past the disk's end.
    #[error("sectors {sector}+{count} out of range (capacity {capacity})")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Sector count.
        count: u64,
        /// Disk size in sectors.
        capacity: u64,
    },
    /// Unknown request type.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
}

/// A parsed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes at `sector` into the writable buffers.
    In {
        /// First sector.
        sector: u64,
        /// Bytes.
        len: usize,
    },
    /// Write `len` bytes from the readable buffers at `sector`.
    Out {
        /// First sector.
        sector: u64,
        /// Bytes.
        len: usize,
    },
    /// Flush to stable storage.
    Flush,
    /// Return the serial.
    GetId,
}

impl Request {
    /// Parses a request from its header bytes and the sizes of the data that
    /// follow: `readable_after` readable bytes after the header and
    /// `writable` writable bytes (data plus the status byte).
    pub fn parse(
        header: &[u8],
        readable_after: usize,
        writable: usize,
        capacity: u64,
        read_only: bool,
    ) -> Result<Request, RequestError> {
        let h: &[u8; 16] = header
            .get(..16)
            .and_then(|b| b.try_into().ok())
            .ok_or(RequestError::ShortHeader(header.len()))?;
        if writable == 0 {
            return Err(RequestError::NoStatus);
        }
        let t = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&h[8..16]);
        let sector = u64::from_le_bytes(s);
        let check = |len: usize| -> Result<usize, RequestError> {
            if !len.is_multiple_of(512) || len > MAX_REQUEST_BYTES {
                return Err(RequestError::BadLength(len));
            }
            let count = (len as u64) / SECTOR_SIZE;
            match sector.checked_add(count) {
                Some(end) if end <= capacity => Ok(len),
                _ => Err(RequestError::OutOfRange {
                    sector,
                    count,
                    capacity,
                }),
            }
        };
        match t {
            req_type::IN => Ok(Request::In {
                sector,
                len: check(writable - 1)?,
            }),
            req_type::OUT if read_only => Err(RequestError::ReadOnly),
            req_type::OUT => Ok(Request::Out {
                sector,
                len: check(readable_after)?,
            }),
            req_type::FLUSH => Ok(Request::Flush),
            req_type::GET_ID => Ok(Request::GetId),
            other => Err(RequestError::Unsupported(other)),
        }
    }
}

impl RequestError {
    /// The status byte the driver sees.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => status::UNSUPP,
            _ => status::IOERR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(t: u32, sector: u64) -> Vec<u8> {
        let mut v = t.to_le_bytes().to_vec();
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&sector.to_le_bytes());
        v
    }

    #[test]
    fn valid_requests() {
        assert_eq!(
            Request::parse(&hdr(0, 2), 0, 1025, 8, false),
            Ok(Request::In {
                sector: 2,
                len: 1024
            })
        );
        assert_eq!(
            Request::parse(&hdr(1, 7), 512, 1, 8, false),
            Ok(Request::Out {
                sector: 7,
                len: 512
            })
        );
        assert_eq!(
            Request::parse(&hdr(4, 0), 0, 1, 8, true),
            Ok(Request::Flush)
        );
        assert_eq!(
            Request::parse(&hdr(8, 0), 0, 21, 8, true),
            Ok(Request::GetId)
        );
    }

    #[test]
    fn every_error_variant() {
        assert_eq!(
            Request::parse(&[0; 8], 0, 1, 8, false),
            Err(RequestError::ShortHeader(8))
        );
        assert_eq!(
            Request::parse(&hdr(0, 0), 0, 0, 8, false),
            Err(RequestError::NoStatus)
        );
        assert_eq!(
            Request::parse(&hdr(0, 0), 0, 101, 8, false),
            Err(RequestError::BadLength(100))
        );
        assert_eq!(
            Request::parse(&hdr(0, 7), 0, 1025, 8, false),
            Err(RequestError::OutOfRange {
                sector: 7,
                count: 2,
                capacity: 8
            })
        );
        assert!(matches!(
            Request::parse(&hdr(1, u64::MAX), 512, 1, 8, false),
            Err(RequestError::OutOfRange { .. })
        ));
        assert_eq!(
            Request::parse(&hdr(1, 0), 512, 1, 8, true),
            Err(RequestError::ReadOnly)
        );
        let e = Request::parse(&hdr(99, 0), 0, 1, 8, false).unwrap_err();
        assert_eq!(e, RequestError::Unsupported(99));
        assert_eq!(e.status(), status::UNSUPP);
        assert_eq!(RequestError::ReadOnly.status(), status::IOERR);
        assert!(Request::parse(&hdr(0, 0), 0, MAX_REQUEST_BYTES + 513, u64::MAX, false).is_err());
    }
}
