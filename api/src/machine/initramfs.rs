//! The machine's initramfs: a newc cpio archive holding busybox, the L1
//! kernel's modules, the husk executable, the microVM assets and `/init`.
//! It is cached in the state directory under a name keyed by a hash of every
//! input (paths, sizes, modification times, the `/init` text), so it is
//! rebuilt only when one changes. The per-start secret goes in a second,
//! tiny archive appended to it (the kernel unpacks concatenated archives).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{MachineError, Result};

/// One file to place in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path inside the archive.
    pub dest: String,
    /// The host file it is copied from.
    pub src: PathBuf,
}

/// Everything the archive is built from.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Files, by destination (later entries win).
    pub files: BTreeMap<String, PathBuf>,
    /// Symbolic links: path -> target.
    pub links: BTreeMap<String, String>,
    /// The `/init` script.
    pub init: String,
}

impl Inputs {
    /// Adds a file at `dest`.
    pub fn file(&mut self, dest: &str, src: &Path) {
        self.files.insert(dest.to_string(), src.to_path_buf());
    }

    /// Adds an executable at `dest` and, at their own paths, the shared
    /// libraries `ldd` lists for it.
    pub fn executable(&mut self, dest: &str, src: &Path) -> Result<()> {
        self.file(dest, src);
        for lib in shared_libraries(src)? {
            let d = lib.to_string_lossy().into_owned();
            self.files.entry(d).or_insert(lib);
        }
        Ok(())
    }

    /// The cache key: a hash over every input.
    pub fn key(&self) -> Result<String> {
        let mut h = Sha256::new();
        h.update(self.init.as_bytes());
        for (dest, src) in &self.files {
            let m = fs::metadata(src).map_err(|e| io_err(src, e))?;
            h.update(format!(
                "\0{dest}\0{}\0{}\0{}.{}",
                src.display(),
                m.len(),
                m.mtime(),
                m.mtime_nsec()
            ));
        }
        for (l, t) in &self.links {
            h.update(format!("\0{l}->{t}"));
        }
        Ok(hex::encode(&h.finalize()[..8]))
    }

    /// Returns the cached archive for these inputs in `dir`, building it
    /// (and removing stale ones) when missing.
    pub fn build_cached(&self, dir: &Path) -> Result<PathBuf> {
        let key = self.key()?;
        let path = dir.join(format!("initramfs-{key}.cpio"));
        if path.is_file() {
            return Ok(path);
        }
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("initramfs-") && n.ends_with(".cpio") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let tmp = dir.join(format!(".initramfs-{key}.tmp"));
        let f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        let mut w = Cpio::new(BufWriter::new(f));
        self.write(&mut w).map_err(|e| io_err(&tmp, e))?;
        w.finish().map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        Ok(path)
    }

    fn write<W: Write>(&self, w: &mut Cpio<W>) -> io::Result<()> {
        for d in [
            "/proc",
            "/sys",
            "/dev",
            "/tmp",
            "/run",
            "/root",
            "/etc",
            "/var/lib/husk",
        ] {
            w.dir(d)?;
        }
        for (dest, src) in &self.files {
            let m = fs::metadata(src)?;
            let data = fs::read(src)?;
            w.file(dest, m.permissions().mode() & 0o7777, &data)?;
        }
        for (l, t) in &self.links {
            w.symlink(l, t)?;
        }
        w.file("/init", 0o755, self.init.as_bytes())?;
        w.file("/etc/hosts", 0o644, b"127.0.0.1 localhost husk-machine\n")?;
        w.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
        w.file("/etc/group", 0o644, b"root:x:0:\n")?;
        Ok(())
    }
}

/// A small archive holding `/etc/husk/token` (mode 0600).
pub fn token_archive(token: &str) -> Vec<u8> {
    let mut w = Cpio::new(Vec::new());
    // Writing to a Vec cannot fail.
    let _ = w.dir("/etc/husk");
    let _ = w.file("/etc/husk/token", 0o600, token.as_bytes());
    w.finish().unwrap_or_default()
}

fn io_err(p: &Path, e: io::Error) -> MachineError {
    MachineError::Io(p.display().to_string(), e)
}

/// The shared libraries (absolute paths) `ldd` lists for `exe`; none for a
/// static executable.
pub fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .map_err(|e| MachineError::Exec("ldd".into(), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for word in text.split_whitespace() {
        let w = word.trim_end_matches(')');
        if w.starts_with('/') && Path::new(w).exists() {
            libs.push(PathBuf::from(w));
        }
    }
    Ok(libs)
}

/// A newc ("070701") cpio writer that creates parent directories itself.
#[derive(Debug)]
struct Cpio<W: Write> {
    out: W,
    ino: u32,
    dirs: std::collections::HashSet<String>,
}

impl<W: Write> Cpio<W> {
    fn new(out: W) -> Self {
        Cpio {
            out,
            ino: 1,
            dirs: Default::default(),
        }
    }

    fn header(&mut self, name: &str, mode: u32, size: usize) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let size = u32::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
        let namesize = name.len() + 1;
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        write!(
            self.out,
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0
        )?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + namesize)
    }

    fn pad(&mut self, n: usize) -> io::Result<()> {
        let p = (4 - n % 4) % 4;
        self.out.write_all(&[0u8; 3][..p])
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !parent.is_empty() && !self.dirs.contains(parent) {
                self.dir(parent)?;
            }
        }
        Ok(())
    }

    fn dir(&mut self, path: &str) -> io::Result<()> {
        if self.dirs.contains(path) {
            return Ok(());
        }
        self.parents(path)?;
        self.dirs.insert(path.to_string());
        self.header(path, 0o040755, 0)
    }

    fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.parents(path)?;
        self.header(path, 0o100000 | perm, data.len())?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.parents(path)?;
        self.header(path, 0o120777, target.len())?;
        self.out.write_all(target.as_bytes())?;
        self.pad(target.len())
    }

    fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_readable_by_cpio() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("hello");
        fs::write(&src, b"hello world").unwrap();
        let mut inputs = Inputs {
            init: "#!/bin/sh\necho hi\n".into(),
            ..Default::default()
        };
        inputs.file("/usr/lib/husk/hello", &src);
        inputs.links.insert("/bin/sh".into(), "busybox".into());
        let archive = inputs.build_cached(d.path()).unwrap();
        // Same inputs: same file, no rebuild.
        assert_eq!(inputs.build_cached(d.path()).unwrap(), archive);
        let mut combined = fs::read(&archive).unwrap();
        combined.extend(token_archive("secret"));
        let out = d.path().join("x");
        fs::create_dir(&out).unwrap();
        // GNU cpio stops at the first trailer: extract both archives.
        let first = fs::read(&archive).unwrap();
        for part in [&first[..], &combined[first.len()..]] {
            let mut c = Command::new("cpio")
                .args(["-idm", "--quiet"])
                .current_dir(&out)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(part).unwrap();
            assert!(c.wait().unwrap().success());
        }
        assert_eq!(
            fs::read(out.join("usr/lib/husk/hello")).unwrap(),
            b"hello world"
        );
        assert_eq!(
            fs::read_link(out.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(fs::read(out.join("etc/husk/token")).unwrap(), b"secret");
        let mode = fs::metadata(out.join("init")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        // A changed input gives a new archive and removes the old one.
        fs::write(&src, b"changed!!!!").unwrap();
        let again = inputs.build_cached(d.path()).unwrap();
        assert_ne!(again, archive);
        assert!(!archive.exists());
    }

    #[test]
    fn ldd_lists_libc_for_a_dynamic_binary() {
        let libs = shared_libraries(Path::new("/bin/ls")).unwrap();
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")));
        assert!(shared_libraries(Path::new("/bin/busybox"))
            .unwrap()
            .is_empty());
    }
}
