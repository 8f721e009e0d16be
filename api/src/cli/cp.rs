//! `husk cp CONTAINER:SRC DEST|-` and `husk cp SRC|- CONTAINER:DEST`: files
//! between this host and a running container, as `docker cp`. The
//! container's side goes through [`container::archive`] (its own `tar`),
//! here or, on a host without hardware virtualization, in the husk machine
//! (`husk cp` there with `-`, and a hidden stat command); this host's side
//! is [`container::hostcopy`].
//!
//! As Docker: a directory is copied with its content into an existing
//! directory (`SRC/.` copies the content alone); a destination that does
//! not exist is created with that name (its parent must exist); `-` is a
//! tar stream on stdin or stdout.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, CliResult};
use crate::container::archive::{self, ArchiveError, PathStat};
use crate::container::hostcopy;

/// Options of `husk cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// Source: CONTAINER:PATH, a host path, or - (a tar on stdin).
    pub src: String,
    /// Destination: CONTAINER:PATH, a host path, or - (a tar on stdout).
    pub dest: String,
}

/// The container side of a copy.
pub trait ContainerFiles {
    /// The stat of `path`, `None` when it does not exist.
    fn stat(&self, path: &str) -> Result<Option<PathStat>, CliError>;
    /// Writes a tar of `path` to `out`.
    fn get(&self, path: &str, out: Box<dyn Write + Send>) -> Result<(), CliError>;
    /// Extracts the tar from `input` into the directory `dir`.
    fn put(&self, dir: &str, input: Box<dyn Read + Send>) -> Result<(), CliError>;
}

/// A container of this host's data directory.
struct Local {
    handle: crate::container::Handle,
    name: String,
}

fn archive_error(e: ArchiveError) -> CliError {
    let status = match &e {
        ArchiveError::Ipc(i) => i.status(),
        _ => 1,
    };
    CliError::new(status, crate::error::chain(&e))
}

impl ContainerFiles for Local {
    fn stat(&self, path: &str) -> Result<Option<PathStat>, CliError> {
        match archive::stat(&self.handle, &self.name, path) {
            Ok(s) => Ok(Some(s)),
            Err(ArchiveError::NotFound { .. }) => Ok(None),
            Err(e) => Err(archive_error(e)),
        }
    }
    fn get(&self, path: &str, mut out: Box<dyn Write + Send>) -> Result<(), CliError> {
        archive::get(&self.handle, path, &mut out).map_err(archive_error)
    }
    fn put(&self, dir: &str, input: Box<dyn Read + Send>) -> Result<(), CliError> {
        archive::put(&self.handle, &self.name, dir, input).map_err(archive_error)
    }
}

/// A container in the husk machine, reached with `husk` commands there.
struct InMachine {
    client: crate::machine::client::Client,
    name: String,
}

/// Collects a relayed command's stderr for its error message.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut v = crate::serve::lock(&self.0);
        if v.len() < 64 * 1024 {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl InMachine {
    fn husk(
        &self,
        argv: &[&str],
        stdin: Box<dyn Read + Send>,
        stdout: Box<dyn Write>,
    ) -> Result<(), CliError> {
        use crate::machine::{client::Stdio, proto::Kind};
        let err = Captured::default();
        let io = Stdio {
            stdin,
            stdout,
            stderr: Box::new(err.clone()),
        };
        let argv = argv.iter().map(|s| s.to_string()).collect();
        let code = self
            .client
            .run(Kind::Husk, argv, io)
            .map_err(|e| CliError::new(1, crate::error::chain(&e)))?;
        if code == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&crate::serve::lock(&err.0)).to_string();
        let line = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        Err(CliError::new(code, line.trim_start_matches("husk: ")))
    }
}

impl ContainerFiles for InMachine {
    fn stat(&self, path: &str) -> Result<Option<PathStat>, CliError> {
        let out = Captured::default();
        self.husk(
            &["container-path-stat", &self.name, path],
            Box::new(std::io::empty()),
            Box::new(out.clone()),
        )?;
        let bytes = crate::serve::lock(&out.0).clone();
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::new(1, format!("the husk machine's path stat: {e}")))
    }
    fn get(&self, path: &str, out: Box<dyn Write + Send>) -> Result<(), CliError> {
        let src = format!("{}:{path}", self.name);
        self.husk(&["cp", &src, "-"], Box::new(std::io::empty()), out)
    }
    fn put(&self, dir: &str, input: Box<dyn Read + Send>) -> Result<(), CliError> {
        let dest = format!("{}:{dir}", self.name);
        self.husk(&["cp", "-", &dest], input, Box::new(std::io::sink()))
    }
}

/// One side of a copy as written.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    Container(String, String),
    Host(PathBuf),
    Stdio,
}

fn side(s: &str) -> Side {
    if s == "-" {
        return Side::Stdio;
    }
    // A colon before any slash names a container, as Docker reads it.
    match s.split_once(':') {
        Some((c, p)) if !c.is_empty() && !c.contains('/') => {
            Side::Container(c.to_string(), p.to_string())
        }
        _ => Side::Host(PathBuf::from(s)),
    }
}

/// `husk cp`.
pub fn run(data_dir: &Path, args: CpArgs) -> CliResult {
    let (src, dest) = (side(&args.src), side(&args.dest));
    let name = match (&src, &dest) {
        (Side::Container(c, _), Side::Container(..)) => {
            return Err(CliError::new(
                1,
                format!("copying between containers is not supported ({c})"),
            ))
        }
        (Side::Container(c, _), _) | (_, Side::Container(c, _)) => c.clone(),
        _ => {
            return Err(CliError::new(
                1,
                "must specify at least one container source",
            ))
        }
    };
    let files: Box<dyn ContainerFiles> = if crate::machine::should_forward() {
        let client = crate::machine::client(data_dir)
            .map_err(|e| CliError::new(1, crate::error::chain(&e)))?;
        Box::new(InMachine { client, name })
    } else {
        let handle = super::containers(data_dir)?.find(&name)?;
        Box::new(Local { handle, name })
    };
    match (src, dest) {
        (Side::Container(c, p), Side::Stdio) => from_container_to_stdout(&*files, &c, &p),
        (Side::Container(c, p), Side::Host(h)) => from_container(&*files, &c, &p, &h),
        (Side::Stdio, Side::Container(c, p)) => into_container_from_stdin(&*files, &c, &p),
        (Side::Host(h), Side::Container(c, p)) => into_container(&*files, &c, &h, &p),
        _ => Err(CliError::new(
            1,
            "must specify at least one container source",
        )),
    }
}

/// The hidden `container-path-stat`: the stat of `path` in `container` as
/// JSON, `null` when it does not exist (what [`InMachine`] reads).
pub fn print_stat(data_dir: &Path, container: &str, path: &str) -> CliResult {
    let handle = super::containers(data_dir)?.find(container)?;
    let st = Local {
        handle,
        name: container.to_string(),
    }
    .stat(path)?;
    println!(
        "{}",
        serde_json::to_string(&st).unwrap_or_else(|_| "null".into())
    );
    Ok(0)
}

fn not_found(c: &str, p: &str) -> CliError {
    CliError::new(1, format!("Could not find the file {p} in container {c}"))
}

fn from_container_to_stdout(f: &dyn ContainerFiles, c: &str, p: &str) -> CliResult {
    f.stat(p)?.ok_or_else(|| not_found(c, p))?;
    f.get(p, Box::new(std::io::stdout()))?;
    Ok(0)
}

fn into_container_from_stdin(f: &dyn ContainerFiles, c: &str, p: &str) -> CliResult {
    let st = f.stat(p)?.ok_or_else(|| not_found(c, p))?;
    if !st.is_dir() {
        return Err(CliError::new(
            1,
            format!("destination \"{c}:{p}\" must be a directory"),
        ));
    }
    f.put(p, Box::new(std::io::stdin()))?;
    Ok(0)
}

/// Runs `produce` on a thread writing into a socket pair, and hands the
/// other end to `consume`.
fn piped<T>(
    produce: impl FnOnce(Box<dyn Write + Send>) -> Result<(), CliError> + Send + 'static,
    consume: impl FnOnce(Box<dyn Read + Send>) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let (r, w) = UnixStream::pair().map_err(|e| CliError::new(1, format!("a pipe: {e}")))?;
    let producer = std::thread::spawn(move || produce(Box::new(w)));
    let consumed = consume(Box::new(r));
    let produced = producer
        .join()
        .unwrap_or_else(|_| Err(CliError::new(1, "the copy failed")));
    produced?;
    consumed
}

/// The host side of a container → host copy: into an existing directory
/// `dest/NAME`, else as `dest` (made in a temporary directory beside it,
/// then renamed into place).
fn from_container(f: &dyn ContainerFiles, c: &str, p: &str, dest: &Path) -> CliResult {
    let st = f.stat(p)?.ok_or_else(|| not_found(c, p))?;
    let (_, name) = archive::split(p);
    let into_dir = dest.is_dir();
    let parent = if into_dir {
        dest.to_path_buf()
    } else {
        match dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from("."),
        }
    };
    if !parent.is_dir() {
        return Err(CliError::new(
            1,
            format!("destination directory {} does not exist", parent.display()),
        ));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".husk-cp-")
        .tempdir_in(&parent)
        .map_err(|e| CliError::new(1, format!("cannot write in {}: {e}", parent.display())))?;
    // The container side runs here, the extraction on a thread.
    let tmp_path = tmp.path().to_path_buf();
    let (r, w) = UnixStream::pair().map_err(|e| CliError::new(1, format!("a pipe: {e}")))?;
    let extractor = std::thread::spawn(move || hostcopy::unpack(r, &tmp_path));
    let got = f.get(p, Box::new(w));
    let unpacked = extractor
        .join()
        .map_err(|_| CliError::new(1, "extraction failed"))?
        .map_err(|e| CliError::new(1, crate::error::chain(&e)))?;
    got?;
    if unpacked.skipped > 0 {
        eprintln!(
            "husk: {} entries that are neither files, directories nor links were skipped",
            unpacked.skipped
        );
    }
    let made = tmp.path().join(&name);
    let target = if into_dir && name != "." {
        dest.join(&name)
    } else {
        dest.to_path_buf()
    };
    if name == "." || (into_dir && st.is_dir() && target.is_dir()) {
        merge(&made, &target)?;
    } else {
        std::fs::rename(&made, &target)
            .map_err(|e| CliError::new(1, format!("cannot write {}: {e}", target.display())))?;
    }
    Ok(0)
}

/// Moves the entries of `from` into the directory `to` (made if needed),
/// merging directories.
fn merge(from: &Path, to: &Path) -> Result<(), CliError> {
    let fail = |p: &Path, e: std::io::Error| {
        CliError::new(1, format!("cannot write {}: {e}", p.display()))
    };
    std::fs::create_dir_all(to).map_err(|e| fail(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| fail(from, e))? {
        let entry = entry.map_err(|e| fail(from, e))?;
        let target = to.join(entry.file_name());
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && target.is_dir() {
            merge(&entry.path(), &target)?;
        } else {
            std::fs::rename(entry.path(), &target).map_err(|e| fail(&target, e))?;
        }
    }
    Ok(())
}

/// The container side of a host → container copy: into an existing
/// directory `p/NAME`, else as `p` (its parent must exist).
fn into_container(f: &dyn ContainerFiles, c: &str, src: &Path, p: &str) -> CliResult {
    let src_meta = std::fs::symlink_metadata(src)
        .map_err(|e| CliError::new(1, format!("cannot read {}: {e}", src.display())))?;
    let src_text = src.to_string_lossy();
    let content_only = src_text.ends_with("/.");
    let base = src
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| ".".into());
    let (dir, name) = match f.stat(p)? {
        Some(st) if st.is_dir() => (
            archive::absolute(p),
            if content_only { ".".into() } else { base },
        ),
        Some(_) if src_meta.is_dir() => {
            return Err(CliError::new(
                1,
                format!("cannot copy a directory to a file: {c}:{p}"),
            ))
        }
        _ => {
            let (parent, name) = archive::split(p);
            match f.stat(&parent)? {
                Some(st) if st.is_dir() => (parent, name),
                _ => return Err(not_found(c, &parent)),
            }
        }
    };
    let src = src.to_path_buf();
    piped(
        move |w| {
            hostcopy::pack(&src, &name, w).map_err(|e| CliError::new(1, crate::error::chain(&e)))
        },
        |r| f.put(&dir, r),
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_read_as_docker_reads_them() {
        assert_eq!(side("-"), Side::Stdio);
        assert_eq!(
            side("web:/etc/x"),
            Side::Container("web".into(), "/etc/x".into())
        );
        assert_eq!(side("./a:b"), Side::Host("./a:b".into()));
        assert_eq!(side("/tmp/x"), Side::Host("/tmp/x".into()));
    }
}
