//! The container log (`container.log`): what the container's init wrote,
//! kept byte for byte. Each record is a frame:
//!
//! ```text
//! u8 stream (1 stdout, 2 stderr) | u64 BE nanoseconds since the epoch | u32 BE length | bytes
//! ```
//!
//! A torn last record (the supervisor killed mid-write) is ignored.
//!
//! The log is bounded as Docker's `local` driver: when `container.log`
//! would pass [`LogConfig::max_size`] it is renamed `container.log.1` (older
//! files shift to `.2` ...) and at most [`LogConfig::max_file`] files are
//! kept. Readers ([`read_all`], [`tail`], [`Follower`]) read across them in
//! order, oldest first.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

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

/// How much log a container keeps (Docker's `local` driver defaults;
/// `log_opts.rs` parses Docker's options into it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Largest size of one file, in bytes (a file may pass it by one frame).
    pub max_size: u64,
    /// Most files kept, the current one included (at least 1).
    pub max_file: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_size: 20 << 20,
            max_file: 5,
        }
    }
}

impl LogConfig {
    /// Whether these are the default limits (left out of `config.json`).
    pub fn is_default(&self) -> bool {
        *self == LogConfig::default()
    }
}

/// The `n`th rotated file of `path` (`path.n`); 0 is `path` itself.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Appends records to a log file, rotating it.
#[derive(Debug)]
pub struct LogWriter {
    file: File,
    path: PathBuf,
    size: u64,
    cfg: LogConfig,
}

impl LogWriter {
    /// Opens `path` for appending (creating it), with the default limits.
    pub fn open(path: &Path) -> io::Result<LogWriter> {
        Self::with_config(path, LogConfig::default())
    }

    /// Opens `path` for appending (creating it), keeping what `cfg` allows.
    pub fn with_config(path: &Path, cfg: LogConfig) -> io::Result<LogWriter> {
        let file = File::options().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            file,
            path: path.to_path_buf(),
            size,
            cfg,
        })
    }

    /// Shifts `path.n` to `path.n+1` (dropping the oldest), `path` to
    /// `path.1`, and starts a new `path`.
    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.cfg.max_file.max(1);
        if keep == 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let last = rotated_path(&self.path, keep - 1);
        match std::fs::remove_file(&last) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (0..keep - 1).rev() {
            let from = rotated_path(&self.path, n);
            match std::fs::rename(&from, rotated_path(&self.path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.file = File::options().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
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
            if self.size > 0 && self.size + rec.len() as u64 > self.cfg.max_size {
                self.rotate()?;
            }
            self.file.write_all(&rec)?;
            self.size += rec.len() as u64;
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

/// The log's files, oldest first: `path.N` ... `path.1`, `path`.
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..)
        .map(|n| rotated_path(path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    files
}

/// Every record of the log, across its rotated files.
pub fn read_all(path: &Path) -> io::Result<Vec<Record>> {
    Follower::from_start(path)?.poll()
}

/// Reads a frame header at the reader's position: (stream, nanos, len),
/// or `None` at EOF or a torn or garbled frame.
fn read_header<R: Read>(r: &mut R) -> io::Result<Option<(u8, u64, u32)>> {
    let mut h = [0u8; HEADER];
    if read_full(r, &mut h)? < HEADER {
        return Ok(None);
    }
    let stream = h[0];
    let nanos = u64::from_be_bytes(h[1..9].try_into().unwrap_or_default());
    let len = u32::from_be_bytes(h[9..13].try_into().unwrap_or_default());
    if !(stream == STDOUT || stream == STDERR) || len > MAX_RECORD {
        return Ok(None);
    }
    Ok(Some((stream, nanos, len)))
}

/// Offsets of the whole frames of a log file, read from their headers
/// only, and where the last one ends.
fn frame_offsets(file: &File) -> io::Result<(Vec<u64>, u64)> {
    let size = file.metadata()?.len();
    let mut r = BufReader::new(file);
    r.seek(SeekFrom::Start(0))?;
    let mut out = Vec::new();
    let mut at = 0u64;
    while let Some((_, _, len)) = read_header(&mut r)? {
        let end = at + HEADER as u64 + u64::from(len);
        if end > size {
            break;
        }
        out.push(at);
        r.seek_relative(i64::from(len))?;
        at = end;
    }
    Ok((out, at))
}

fn read_frame_at(file: &File, at: u64) -> io::Result<Option<Record>> {
    let mut r = file;
    r.seek(SeekFrom::Start(at))?;
    let Some((stream, nanos, len)) = read_header(&mut r)? else {
        return Ok(None);
    };
    let mut data = vec![0u8; len as usize];
    if read_full(&mut r, &mut data)? < data.len() {
        return Ok(None);
    }
    Ok(Some(Record {
        stream,
        nanos,
        data,
    }))
}

/// Whether the last `n` lines of `window` are whole: none of them is the
/// first line of its stream in the window (which may have begun earlier).
fn tail_is_whole(window: &[Record], n: usize) -> bool {
    let ls = lines(window);
    if ls.len() < n {
        return false;
    }
    let cut = ls.len() - n;
    [STDOUT, STDERR].iter().all(|s| {
        ls.iter()
            .position(|l| l.stream == *s)
            .is_none_or(|first| first < cut)
    })
}

/// The last `n` lines of the log, reading frames backwards from the end:
/// only the frames those lines need are read into memory (plus an index of
/// one file's frame offsets). The follower continues after them.
pub fn tail(path: &Path, n: usize) -> io::Result<(Vec<Record>, Follower)> {
    let mut follower = Follower {
        path: path.to_path_buf(),
        id: None,
        offset: 0,
    };
    let mut window: std::collections::VecDeque<Record> = Default::default();
    let mut next_check = 1usize;
    'files: for (i, f) in log_files(path).iter().rev().enumerate() {
        let file = match File::open(f) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let (offsets, end) = frame_offsets(&file)?;
        if i == 0 {
            follower.id = Some(file_id(&file)?);
            follower.offset = end;
        }
        if n == 0 {
            break;
        }
        for at in offsets.into_iter().rev() {
            if let Some(rec) = read_frame_at(&file, at)? {
                window.push_front(rec);
            }
            if window.len() >= next_check {
                next_check = next_check.saturating_mul(2);
                if tail_is_whole(window.make_contiguous(), n) {
                    break 'files;
                }
            }
        }
    }
    let mut ls = lines(window.make_contiguous());
    let skip = ls.len().saturating_sub(n);
    ls.drain(..skip);
    Ok((ls, follower))
}

/// Reads a log as it grows, following it across rotations.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    /// (device, inode) of the file being read, once opened.
    id: Option<(u64, u64)>,
    offset: u64,
}

fn file_id(f: &File) -> io::Result<(u64, u64)> {
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

fn read_from(f: &File, offset: u64) -> io::Result<(Vec<Record>, u64)> {
    let mut r = f;
    r.seek(SeekFrom::Start(offset))?;
    read_records(r)
}

impl Follower {
    /// Follows `path` from its beginning: the oldest rotated file. The first
    /// [`Follower::poll`] returns the whole log.
    pub fn from_start(path: &Path) -> io::Result<Follower> {
        let mut f = Follower {
            path: path.to_path_buf(),
            id: None,
            offset: 0,
        };
        for p in log_files(path) {
            match File::open(&p) {
                Ok(file) => {
                    f.id = Some(file_id(&file)?);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(f)
    }

    /// Records written since the last call, across rotations (oldest
    /// first). Output rotated away past `max_file` files is lost.
    pub fn poll(&mut self) -> io::Result<Vec<Record>> {
        let cur = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let cur_id = file_id(&cur)?;
        let mut out = Vec::new();
        if self.id.is_some_and(|id| id != cur_id) {
            out = self.read_rotated()?;
            self.offset = 0;
        }
        self.id = Some(cur_id);
        let (recs, used) = read_from(&cur, self.offset)?;
        self.offset += used;
        out.extend(recs);
        Ok(out)
    }

    /// The rest of the file being read, now rotated, and the files rotated
    /// after it.
    fn read_rotated(&self) -> io::Result<Vec<Record>> {
        let mut rotated: Vec<File> = Vec::new(); // newest first
        for n in 1.. {
            match File::open(rotated_path(&self.path, n)) {
                Ok(f) => rotated.push(f),
                Err(_) => break,
            }
        }
        let mut out = Vec::new();
        // Files rotated after ours are newer (lower numbers); if ours was
        // deleted, every rotated file is newer.
        let ours = rotated
            .iter()
            .position(|f| file_id(f).ok() == self.id)
            .unwrap_or(rotated.len());
        if let Some(f) = rotated.get(ours) {
            out.extend(read_from(f, self.offset)?.0);
        }
        for f in rotated[..ours].iter().rev() {
            out.extend(read_records(f)?.0);
        }
        Ok(out)
    }
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
    crate::time::rfc3339_from_nanos(nanos)
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

    const SMALL: LogConfig = LogConfig {
        max_size: 10_000,
        max_file: 3,
    };

    fn numbered(w: &mut LogWriter, from: usize, to: usize) {
        for i in from..to {
            // 100-byte frames: 13 header + 87 data.
            w.write(STDOUT, format!("{i:086}\n").as_bytes()).unwrap();
        }
    }

    fn numbers(recs: &[Record]) -> Vec<usize> {
        recs.iter()
            .map(|r| {
                std::str::from_utf8(&r.data)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn rotation_keeps_disk_use_under_the_cap() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("container.log");
        let mut w = LogWriter::with_config(&p, SMALL).unwrap();
        // 3x the cap of 3 x 10 kB.
        numbered(&mut w, 0, 900);
        let files = log_files(&p);
        assert_eq!(files.len(), 3, "{files:?}");
        let used: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert!(used <= 3 * SMALL.max_size + 100, "{used}");
        // What is kept is the newest output, in order.
        let kept = numbers(&read_all(&p).unwrap());
        assert_eq!(*kept.last().unwrap(), 899);
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
        assert!(kept.len() >= 200);
    }

    #[test]
    fn tail_reads_backwards_across_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("container.log");
        let mut w = LogWriter::with_config(&p, SMALL).unwrap();
        numbered(&mut w, 0, 250);
        let (last, _) = tail(&p, 1).unwrap();
        assert_eq!(numbers(&last), vec![249]);
        // More lines than the newest file holds.
        let (many, _) = tail(&p, 150).unwrap();
        assert_eq!(numbers(&many), (100..250).collect::<Vec<_>>());
        assert!(tail(&p, 0).unwrap().0.is_empty());
        // A stdout line begun long before a run of stderr lines is whole.
        w.write(STDOUT, b"start of ").unwrap();
        for _ in 0..5 {
            w.write(STDERR, b"e\n").unwrap();
        }
        w.write(STDOUT, b"a long line\n").unwrap();
        let (ls, _) = tail(&p, 2).unwrap();
        let text: Vec<&[u8]> = ls.iter().map(|l| &l.data[..]).collect();
        assert_eq!(text, vec![&b"e\n"[..], &b"start of a long line\n"[..]]);
        assert_eq!(tail(&d.path().join("none"), 3).unwrap().0, vec![]);
    }

    #[test]
    fn follow_continues_across_rotations() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("container.log");
        let mut w = LogWriter::with_config(&p, SMALL).unwrap();
        numbered(&mut w, 0, 50);
        let mut f = Follower::from_start(&p).unwrap();
        let mut seen = numbers(&f.poll().unwrap());
        // One rotation between polls, then two.
        numbered(&mut w, 50, 120);
        seen.extend(numbers(&f.poll().unwrap()));
        numbered(&mut w, 120, 330);
        seen.extend(numbers(&f.poll().unwrap()));
        assert_eq!(seen, (0..330).collect::<Vec<_>>());
        // After tail, following picks up exactly the new output.
        let (_, mut f) = tail(&p, 1).unwrap();
        numbered(&mut w, 330, 460);
        assert_eq!(numbers(&f.poll().unwrap()), (330..460).collect::<Vec<_>>());
    }
}
