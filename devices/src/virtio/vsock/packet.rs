//! virtio-vsock packet headers (virtio 1.2, section 5.10.6): parsing and
//! building, no I/O. A header is copied out of guest memory once, checked
//! here, and never read again.

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_SIZE: usize = 44;
/// The host's context id.
pub const HOST_CID: u64 = 2;
/// Stream sockets, the only type husk supports.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload husk accepts in one packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// Packet operations.
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset.
    pub const RST: u16 = 3;
    /// No more data in one or both directions.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Credit information.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Please send a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Why a guest packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// Fewer bytes than a header.
    #[error("packet shorter than its header ({0} bytes)")]
    Short(usize),
    /// `len` exceeds the cap or the bytes that follow the header.
    #[error("packet claims {len} data bytes, {available} available (cap {MAX_PKT_DATA})")]
    BadLength {
        /// Claimed length.
        len: u32,
        /// Bytes present after the header.
        available: usize,
    },
    /// Not a stream packet.
    #[error("unsupported socket type {0}")]
    BadType(u16),
    /// Unknown operation.
    #[error("unknown operation {0}")]
    BadOp(u16),
    /// Source or destination context id is wrong.
    #[error("packet from cid {src} to cid {dst}: wrong context id")]
    BadCid {
        /// Source cid.
        src: u64,
        /// Destination cid.
        dst: u64,
    },
}

/// A vsock packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

fn u64_at(b: &[u8; HDR_SIZE], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn u32_at(b: &[u8; HDR_SIZE], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u16_at(b: &[u8; HDR_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Decodes the little-endian wire form.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// Encodes the little-endian wire form.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses a packet the guest sent: `bytes` starts with the header and
    /// `data_available` bytes follow it in the chain. The header must come
    /// from `guest_cid`, go to the host, be a stream packet with a known
    /// operation and a length within the cap and the chain.
    pub fn parse_tx(
        bytes: &[u8],
        data_available: usize,
        guest_cid: u64,
    ) -> Result<Header, PacketError> {
        let raw: &[u8; HDR_SIZE] = bytes
            .get(..HDR_SIZE)
            .and_then(|b| b.try_into().ok())
            .ok_or(PacketError::Short(bytes.len()))?;
        let h = Header::from_bytes(raw);
        if h.src_cid != guest_cid || h.dst_cid != HOST_CID {
            return Err(PacketError::BadCid {
                src: h.src_cid,
                dst: h.dst_cid,
            });
        }
        if h.type_ != TYPE_STREAM {
            return Err(PacketError::BadType(h.type_));
        }
        if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&h.op) {
            return Err(PacketError::BadOp(h.op));
        }
        let len_ok = h.len <= MAX_PKT_DATA
            && usize::try_from(h.len).is_ok_and(|l| l <= data_available)
            && (h.op == op::RW || h.len == 0);
        if !len_ok {
            return Err(PacketError::BadLength {
                len: h.len,
                available: data_available,
            });
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(op: u16, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn round_trip() {
        let h = pkt(op::RW, 10);
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        assert_eq!(Header::parse_tx(&h.to_bytes(), 10, 3), Ok(h));
    }

    #[test]
    fn every_error_variant() {
        let good = pkt(op::RW, 10);
        assert_eq!(
            Header::parse_tx(&good.to_bytes()[..20], 0, 3),
            Err(PacketError::Short(20))
        );
        assert!(matches!(
            Header::parse_tx(&good.to_bytes(), 10, 4),
            Err(PacketError::BadCid { src: 3, dst: 2 })
        ));
        let mut h = good;
        h.dst_cid = 7;
        assert!(matches!(
            Header::parse_tx(&h.to_bytes(), 10, 3),
            Err(PacketError::BadCid { .. })
        ));
        let mut h = good;
        h.type_ = 2;
        assert_eq!(
            Header::parse_tx(&h.to_bytes(), 10, 3),
            Err(PacketError::BadType(2))
        );
        for bad in [0, 8, 0xffff] {
            let mut h = good;
            h.op = bad;
            assert_eq!(
                Header::parse_tx(&h.to_bytes(), 10, 3),
                Err(PacketError::BadOp(bad))
            );
        }
        assert!(matches!(
            Header::parse_tx(&good.to_bytes(), 9, 3),
            Err(PacketError::BadLength {
                len: 10,
                available: 9
            })
        ));
        let huge = pkt(op::RW, MAX_PKT_DATA + 1);
        assert!(Header::parse_tx(&huge.to_bytes(), usize::MAX, 3).is_err());
        let ctl = pkt(op::REQUEST, 5);
        assert!(Header::parse_tx(&ctl.to_bytes(), 5, 3).is_err());
    }
}
