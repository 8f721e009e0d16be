//! The container log (`container.log`): what the container's init wrote,
//! kept byte for byte. Each record is a frame:
//!
//! ```text
//! u8 stream (1 stdout, 2 stderr) | u64 BE nanoseconds since the epoch | u32 BE length | bytes
//! ```
//!
//! A torn last record (the supervisor killed mid-write) is ignored.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Stream number of stdout.
pub const STDOUT: u8 = 1;
/// Stream number of stderr.
pub const STDERR: u8 = 2;
const HEADER: usize = 13;
/// The largest record accepted when reading.
const MAX_RECORD: u32 = 16 << 20;

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// [`STDOUT`] or [`STDERR`].
    pub stream: u8,
    /// When it was written, nanoseconds since the epoch.
    pub nanos: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Appends records to a log file.
#[derive(Debug)]
pub struct LogWriter {
    file: File,
}

impl LogWriter {
    /// Opens `path` for appending (creating it).
    pub fn open(path: &Path) -> io::Result<LogWriter> {
        let file = File::options().create(true).append(true).open(path)?;
        Ok(LogWriter { file })
    }

    /// Appends one record (one `write` call, so records never interleave).
    pub fn write(&mut self, stream: u8, data: &[u8]) -> io::Result<()> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        for chunk in data.chunks(1 << 20) {
            let mut rec = Vec::with_capacity(HEADER + chunk.len());
            rec.push(stream);
            rec.extend_from_slice(&nanos.to_be_bytes());
            rec.extend_from_slice(&u32::try_from(chunk.len()).unwrap_or(0).to_be_bytes());
            rec.extend_from_slice(chunk);
            self.file.write_all(&rec)?;
        }
        Ok(())
    }
}

/// Reads records from `r` until EOF or a torn/garbled record. Returns the
/// records and how many bytes they took.
pub fn read_records<R: Read>(r: R) -> io::Result<(Vec<Record>, u64)> {
    let mut r = BufReader::new(r);
    let mut out = Vec::new();
    let mut used = 0u64;
    loop {
        let mut h = [0u8; HEADER];
        match read_full(&mut r, &mut h)? {
            0 => break,
            n if n < HEADER => break,
            _ => {}
        }
        let stream = h[0];
        let nanos = u64::from_be_bytes(h[1..9].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(h[9..13].try_into().unwrap_or_default());
        if !(stream == STDOUT || stream == STDERR) || len > MAX_RECORD {
            break;
        }
        let mut data = vec![0u8; len as usize];
        if read_full(&mut r, &mut data)? < data.len() {
            break;
        }
        used += HEADER as u64 + u64::from(len);
        out.push(Record {
            stream,
            nanos,
            data,
        });
    }
    Ok((out, used))
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Splits records into lines (the last one may lack its newline), keeping
/// each line's stream and time.
pub fn lines(records: &[Record]) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    // A partial line per stream, waiting for its newline.
    let mut partial: [Option<Record>; 2] = [None, None];
    for r in records {
        let slot = usize::from(r.stream == STDERR);
        for piece in r.data.split_inclusive(|b| *b == b'\n') {
            let cur = partial[slot].get_or_insert_with(|| Record {
                stream: r.stream,
                nanos: r.nanos,
                data: Vec::new(),
            });
            cur.data.extend_from_slice(piece);
            if piece.ends_with(b"\n") {
                if let Some(done) = partial[slot].take() {
                    out.push(done);
                }
            }
        }
    }
    out.extend(partial.into_iter().flatten());
    out
}

/// Formats a record time as RFC 3339.
pub fn timestamp(nanos: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(nanos)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_lines_and_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut w = LogWriter::open(&p).unwrap();
        w.write(STDOUT, b"a\nb").unwrap();
        w.write(STDERR, b"err\n").unwrap();
        w.write(STDOUT, b"c\n\x00\xff").unwrap();
        drop(w);
        // A torn record at the end (a killed writer).
        let mut f = File::options().append(true).open(&p).unwrap();
        f.write_all(&[1, 0, 0]).unwrap();
        let (recs, used) = read_records(File::open(&p).unwrap()).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(used, std::fs::metadata(&p).unwrap().len() - 3);
        let ls = lines(&recs);
        let text: Vec<(u8, &[u8])> = ls.iter().map(|l| (l.stream, &l.data[..])).collect();
        assert_eq!(
            text,
            vec![
                (STDOUT, &b"a\n"[..]),
                (STDERR, &b"err\n"[..]),
                (STDOUT, &b"bc\n"[..]),
                (STDOUT, &b"\x00\xff"[..]),
            ]
        );
        assert!(timestamp(recs[0].nanos).starts_with("20"));
    }
}
