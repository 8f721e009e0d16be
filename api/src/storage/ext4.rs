//! Making ext4 disk images with e2fsprogs (`mkfs.ext4`, `debugfs`): the
//! image rootfs cache ([`crate::storage::rootfs`]) and named volumes
//! ([`crate::storage::volume`]) are both ext4 files the host keeps.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// e2fsprogs errors.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// The tool is not installed.
    #[error("{tool} not found: install e2fsprogs")]
    ToolMissing {
        /// `mkfs.ext4` or `debugfs`.
        tool: &'static str,
    },
    /// The tool could not be started.
    #[error("cannot run {tool}")]
    Spawn {
        /// Which tool.
        tool: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The tool failed.
    #[error("{tool} failed on {path}: {message}")]
    Failed {
        /// Which tool.
        tool: &'static str,
        /// The disk image.
        path: PathBuf,
        /// Its exit status and stderr, on one line.
        message: String,
    },
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, Ext4Error>;

/// Finds an executable in `$PATH`, then in `/usr/sbin` and `/sbin` (where
/// e2fsprogs lives, often outside a user's `$PATH`).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The tool's stderr on one line, without version banners.
fn stderr_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("debugfs ") && !l.starts_with("mke2fs "))
        .collect::<Vec<_>>()
        .join("; ")
}

fn one_line(out: &Output) -> String {
    match stderr_line(out) {
        s if s.is_empty() => out.status.to_string(),
        s => s,
    }
}

fn run(tool: &'static str, image: &Path, args: &[&OsStr]) -> Result<Output> {
    let bin = find_tool(tool).ok_or(Ext4Error::ToolMissing { tool })?;
    let out = Command::new(bin)
        .args(args)
        .arg(image)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| Ext4Error::Spawn { tool, source })?;
    if !out.status.success() {
        return Err(Ext4Error::Failed {
            tool,
            path: image.to_path_buf(),
            message: one_line(&out),
        });
    }
    Ok(out)
}

/// Options for [`mkfs`].
#[derive(Debug, Clone, Default)]
pub struct MkfsOptions<'a> {
    /// Volume label (at most 16 bytes).
    pub label: &'a str,
    /// Copy this directory tree into the new file system (`-d`).
    pub tree: Option<&'a Path>,
    /// Number of inodes (`-N`); mkfs's default ratio when `None`.
    pub inodes: Option<u64>,
    /// No journal (`-O ^has_journal`): for read-only images.
    pub no_journal: bool,
    /// Extended options (`-E`), e.g. `root_owner=0:0`.
    pub extended: Option<&'a str>,
}

/// Makes an ext4 file system in `image`, an existing file whose length is
/// the file system's size; 4 KiB blocks, no reserved blocks.
pub fn mkfs(image: &Path, opts: &MkfsOptions<'_>) -> Result<()> {
    let mut args: Vec<std::ffi::OsString> = ["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0"]
        .iter()
        .map(Into::into)
        .collect();
    args.extend(["-L".into(), opts.label.into()]);
    if opts.no_journal {
        args.extend(["-O".into(), "^has_journal".into()]);
    }
    if let Some(n) = opts.inodes {
        args.extend(["-N".into(), n.to_string().into()]);
    }
    if let Some(e) = opts.extended {
        args.extend(["-E".into(), e.into()]);
    }
    if let Some(tree) = opts.tree {
        args.extend(["-d".into(), tree.as_os_str().to_owned()]);
    }
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run("mkfs.ext4", image, &args).map(drop)
}

/// Runs one `debugfs` request on `image` (`-w` to write). debugfs exits 0
/// even when a request fails, so anything on stderr but its banner is an
/// error. Returns stdout.
pub fn debugfs(image: &Path, request: &str, write: bool) -> Result<String> {
    let mut args: Vec<&OsStr> = Vec::new();
    if write {
        args.push(OsStr::new("-w"));
    }
    args.extend([OsStr::new("-R"), OsStr::new(request)]);
    let out = run("debugfs", image, &args)?;
    let message = stderr_line(&out);
    if !message.is_empty() {
        return Err(Ext4Error::Failed {
            tool: "debugfs",
            path: image.to_path_buf(),
            message: format!("{request}: {message}"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_is_one_clear_line() {
        let err = run("husk-no-such-mkfs", Path::new("/nonexistent"), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "husk-no-such-mkfs not found: install e2fsprogs"
        );
    }

    #[test]
    fn mkfs_failure_and_debugfs_errors_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let tiny = dir.path().join("tiny");
        // 4 KiB is far too small for ext4.
        std::fs::write(&tiny, [0u8; 4096]).unwrap();
        let err = mkfs(&tiny, &MkfsOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                Ext4Error::Failed {
                    tool: "mkfs.ext4",
                    ..
                }
            ),
            "{err:?}"
        );
        let img = dir.path().join("img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        mkfs(&img, &MkfsOptions::default()).unwrap();
        assert!(debugfs(&img, "ls -l /", false)
            .unwrap()
            .contains("lost+found"));
        let err = debugfs(&img, "rmdir /no-such-dir", true).unwrap_err();
        assert!(err.to_string().contains("rmdir /no-such-dir"), "{err}");
    }
}
