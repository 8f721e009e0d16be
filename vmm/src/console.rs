//! The serial console's file sink, bounded: a guest printing in a loop
//! cannot fill the host's disk. Once the file reaches its cap, one final
//! line says the output was truncated and later output is dropped.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Default cap of a console file (existing content included).
pub const CONSOLE_FILE_CAP: u64 = 10 << 20;
/// The line written once when the cap is reached.
pub const TRUNCATED_NOTICE: &[u8] = b"\n[husk: console output truncated]\n";

/// A console file that stops growing at its cap.
#[derive(Debug)]
pub struct CappedFile {
    file: File,
    len: u64,
    cap: u64,
    truncated: bool,
}

impl CappedFile {
    /// Opens `path` for appending (creating it), capped at `cap` bytes plus
    /// the truncation notice.
    pub fn open(path: &Path, cap: u64) -> io::Result<CappedFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(CappedFile {
            file,
            len,
            cap,
            truncated: false,
        })
    }

    /// Whether output is being dropped.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.truncated {
            return Ok(buf.len());
        }
        let room = usize::try_from(self.cap.saturating_sub(self.len)).unwrap_or(usize::MAX);
        if buf.len() <= room {
            let n = self.file.write(buf)?;
            self.len += n as u64;
            return Ok(n);
        }
        self.file.write_all(&buf[..room])?;
        self.file.write_all(TRUNCATED_NOTICE)?;
        self.len += (room + TRUNCATED_NOTICE.len()) as u64;
        self.truncated = true;
        log::warn!(
            "console file reached {} bytes; dropping further output",
            self.cap
        );
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_the_cap_with_one_notice() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console");
        std::fs::write(&p, b"earlier run\n").unwrap();
        let cap = 4096u64;
        let mut f = CappedFile::open(&p, cap).unwrap();
        // Byte by byte, as the serial port writes, 3x the cap.
        for i in 0..3 * cap {
            f.write_all(&[b'a' + (i % 26) as u8]).unwrap();
        }
        f.write_all(&[b'x'; 100]).unwrap();
        assert!(f.truncated());
        let text = std::fs::read(&p).unwrap();
        assert_eq!(text.len() as u64, cap + TRUNCATED_NOTICE.len() as u64);
        assert!(text.starts_with(b"earlier run\n"));
        assert!(text.ends_with(TRUNCATED_NOTICE));
        let notices = text
            .windows(TRUNCATED_NOTICE.len())
            .filter(|w| *w == TRUNCATED_NOTICE)
            .count();
        assert_eq!(notices, 1);
    }

    #[test]
    fn a_large_write_is_cut_at_the_cap() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console");
        let mut f = CappedFile::open(&p, 10).unwrap();
        f.write_all(b"0123456789abcdef").unwrap();
        let text = std::fs::read(&p).unwrap();
        assert_eq!(&text[..10], b"0123456789");
        assert_eq!(&text[10..], TRUNCATED_NOTICE);
    }
}
