//! Placing the entries of one (decompressed) layer tar into a root.
//!
//! Entries are read with the `tar` crate and placed here: paths go through
//! [`scope::resolve`], files are created with `O_NOFOLLOW | O_EXCL`, and
//! whatever already sits at a path (from a lower layer) is removed first,
//! never written through. OCI whiteouts delete from lower layers; an opaque
//! marker empties its directory of everything this layer did not create.
//! Directory mtimes are applied last, deepest first.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{self, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, FchownatFlags, Gid, Uid};
use tar::EntryType;

use super::scope::{self, ScopeError};
use super::{LayerError, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Limits and switches for unpacking.
#[derive(Debug, Clone, PartialEq)]
pub struct UnpackOptions {
    /// Largest blob (compressed) accepted.
    pub max_blob_bytes: u64,
    /// Largest total of file contents one layer may unpack to.
    pub max_unpacked_bytes: u64,
    /// Most entries in one layer.
    pub max_entries: u64,
    /// `lchown` entries to their uid/gid (needs root).
    pub preserve_owners: bool,
    /// Create device nodes (needs root outside a user namespace); else they
    /// are skipped and counted.
    pub devices: bool,
    /// Apply `SCHILY.xattr.*` records where the filesystem supports them.
    pub xattrs: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        let root = nix::unistd::geteuid().is_root();
        Self {
            max_blob_bytes: 16 << 30,
            max_unpacked_bytes: 64 << 30,
            max_entries: 4_000_000,
            preserve_owners: root,
            devices: root,
            xattrs: true,
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries read.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Whiteouts applied.
    pub whiteouts: u64,
    /// Device nodes or xattrs that could not be applied.
    pub skipped: u64,
}

/// Metadata of an entry, copied out of its header.
#[derive(Debug)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(CString, Vec<u8>)>,
}

/// Unpacks a tar stream into `root` (an existing directory).
pub fn unpack_tar<R: Read>(root: &Path, r: R, opts: &UnpackOptions) -> Result<UnpackStats> {
    let mut ar = tar::Archive::new(r);
    let mut stats = UnpackStats::default();
    let mut created: HashSet<PathBuf> = HashSet::new();
    let mut dirs: Vec<(PathBuf, i64)> = Vec::new();
    for entry in ar.entries().map_err(LayerError::Tar)? {
        let mut entry = entry.map_err(LayerError::Tar)?;
        stats.entries += 1;
        if stats.entries > opts.max_entries {
            return Err(LayerError::LimitExceeded {
                what: "entry count",
                limit: opts.max_entries,
            });
        }
        let raw = entry.path().map_err(LayerError::Tar)?.into_owned();
        let scoped = |source: ScopeError| LayerError::Scope {
            entry: raw.clone(),
            source,
        };
        let rel: PathBuf = scope::normalize(&raw).map_err(scoped)?.iter().collect();
        let Some(name) = rel.file_name() else {
            continue; // the root itself ("./")
        };
        let name = name.to_string_lossy().into_owned();
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if name == OPAQUE {
            let dir = scope::resolve(root, &parent, false).map_err(scoped)?;
            clear_except(&dir, &parent, &created)?;
            stats.whiteouts += 1;
            continue;
        }
        if let Some(victim) = name.strip_prefix(WHITEOUT_PREFIX) {
            if victim.is_empty() || victim == "." || victim == ".." || victim.contains('/') {
                return Err(scoped(ScopeError::ParentDir { path: raw.clone() }));
            }
            let host = scope::resolve(root, &parent.join(victim), false).map_err(scoped)?;
            remove_existing(&host)?;
            stats.whiteouts += 1;
            continue;
        }
        let meta = read_meta(&mut entry, opts)?;
        let host = scope::resolve(root, &rel, true).map_err(scoped)?;
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Directory => {
                let is_dir = fs::symlink_metadata(&host)
                    .map(|m| m.is_dir())
                    .unwrap_or(false);
                if !is_dir {
                    remove_existing(&host)?;
                    fs::create_dir(&host).map_err(|source| write_err(&host, source))?;
                }
                set_meta(&host, &meta, false, opts, &mut stats)?;
                dirs.push((host, meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.header().size().map_err(LayerError::Tar)?;
                if stats.bytes.saturating_add(size) > opts.max_unpacked_bytes {
                    return Err(LayerError::LimitExceeded {
                        what: "unpacked size",
                        limit: opts.max_unpacked_bytes,
                    });
                }
                remove_existing(&host)?;
                write_file(&host, &mut entry)?;
                stats.bytes += size;
                set_meta(&host, &meta, false, opts, &mut stats)?;
                set_mtime(&host, meta.mtime)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(LayerError::Tar)?
                    .ok_or_else(|| LayerError::Tar(io::Error::other("symlink without target")))?;
                remove_existing(&host)?;
                std::os::unix::fs::symlink(&target, &host)
                    .map_err(|source| write_err(&host, source))?;
                set_meta(&host, &meta, true, opts, &mut stats)?;
                set_mtime(&host, meta.mtime)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(LayerError::Tar)?
                    .ok_or_else(|| LayerError::Tar(io::Error::other("hard link without target")))?
                    .into_owned();
                hard_link(root, &raw, &target, &host)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                remove_existing(&host)?;
                if make_node(&host, kind, &entry, &meta, opts)? {
                    set_meta(&host, &meta, false, opts, &mut stats)?;
                    set_mtime(&host, meta.mtime)?;
                } else {
                    stats.skipped += 1;
                    continue;
                }
            }
            _ => {
                log::warn!("ignoring tar entry of type {kind:?}");
                stats.skipped += 1;
                continue;
            }
        }
        for a in rel.ancestors() {
            if !created.insert(a.to_path_buf()) {
                break;
            }
        }
    }
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (d, mtime) in dirs {
        set_mtime(&d, mtime)?;
    }
    Ok(stats)
}

fn write_err(path: &Path, source: io::Error) -> LayerError {
    LayerError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, opts: &UnpackOptions) -> Result<Meta> {
    let h = entry.header();
    let mode = h.mode().map_err(LayerError::Tar)?;
    let uid = u32::try_from(h.uid().map_err(LayerError::Tar)?).unwrap_or(u32::MAX);
    let gid = u32::try_from(h.gid().map_err(LayerError::Tar)?).unwrap_or(u32::MAX);
    let mtime = i64::try_from(h.mtime().map_err(LayerError::Tar)?).unwrap_or(0);
    let mut xattrs = Vec::new();
    if opts.xattrs {
        if let Some(exts) = entry.pax_extensions().map_err(LayerError::Tar)? {
            for ext in exts {
                let ext = ext.map_err(LayerError::Tar)?;
                if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    if let Ok(name) = CString::new(name) {
                        xattrs.push((name, ext.value_bytes().to_vec()));
                    }
                }
            }
        }
    }
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    })
}

/// Removes whatever is at `host` (not following a symlink there).
fn remove_existing(host: &Path) -> Result<()> {
    match fs::symlink_metadata(host) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(host).map_err(|e| write_err(host, e)),
        Ok(_) => fs::remove_file(host).map_err(|e| write_err(host, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(write_err(host, e)),
    }
}

/// Opaque directory: removes every child of `dir` that this layer did not
/// create, recursing into directories it did.
fn clear_except(dir: &Path, rel: &Path, created: &HashSet<PathBuf>) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(write_err(dir, e)),
    };
    if !fs::symlink_metadata(dir)
        .map_err(|e| write_err(dir, e))?
        .is_dir()
    {
        return Ok(());
    }
    for child in rd {
        let child = child.map_err(|e| write_err(dir, e))?;
        let child_rel = rel.join(child.file_name());
        let host = child.path();
        if !created.contains(&child_rel) {
            remove_existing(&host)?;
        } else if child.file_type().map_err(|e| write_err(&host, e))?.is_dir() {
            clear_except(&host, &child_rel, created)?;
        }
    }
    Ok(())
}

fn write_file<R: Read>(host: &Path, entry: &mut R) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(host)
        .map_err(|e| write_err(host, e))?;
    io::copy(entry, &mut f).map_err(|e| write_err(host, e))?;
    Ok(())
}

fn hard_link(root: &Path, entry: &Path, target: &Path, host: &Path) -> Result<()> {
    let bad = |reason| LayerError::BadHardLink {
        entry: entry.to_path_buf(),
        target: target.to_path_buf(),
        reason,
    };
    let target_host = match scope::resolve(root, target, false) {
        Ok(p) => p,
        Err(ScopeError::ParentDir { .. }) => return Err(bad("target contains '..'")),
        Err(ScopeError::SymlinkEscape { .. }) => return Err(bad("target leaves the root")),
        Err(e) => {
            return Err(LayerError::Scope {
                entry: entry.to_path_buf(),
                source: e,
            })
        }
    };
    match fs::symlink_metadata(&target_host) {
        Ok(m) if m.is_dir() => return Err(bad("target is a directory")),
        Ok(_) => {}
        Err(_) => return Err(bad("target does not exist")),
    }
    if target_host == host {
        return Ok(());
    }
    remove_existing(host)?;
    // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked itself.
    fs::hard_link(&target_host, host).map_err(|e| write_err(host, e))
}

fn make_node<R: Read>(
    host: &Path,
    kind: EntryType,
    entry: &tar::Entry<'_, R>,
    meta: &Meta,
    opts: &UnpackOptions,
) -> Result<bool> {
    let perm = Mode::from_bits_truncate(meta.mode & 0o777);
    let (sflag, dev) = match kind {
        EntryType::Fifo => (SFlag::S_IFIFO, 0),
        _ => {
            if !opts.devices {
                return Ok(false);
            }
            let major = entry.header().device_major().ok().flatten().unwrap_or(0);
            let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
            let f = if kind == EntryType::Char {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            (f, stat::makedev(major.into(), minor.into()))
        }
    };
    match stat::mknod(host, sflag, perm, dev) {
        Ok(()) => Ok(true),
        Err(nix::Error::EPERM) => {
            log::warn!("no permission to create device node {}", host.display());
            Ok(false)
        }
        Err(e) => Err(write_err(host, e.into())),
    }
}

fn set_meta(
    host: &Path,
    meta: &Meta,
    symlink: bool,
    opts: &UnpackOptions,
    stats: &mut UnpackStats,
) -> Result<()> {
    if opts.preserve_owners {
        fchownat(
            AT_FDCWD,
            host,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            FchownatFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| write_err(host, e.into()))?;
    }
    for (name, value) in &meta.xattrs {
        if !set_xattr(host, name, value) {
            stats.skipped += 1;
        }
    }
    if !symlink {
        // After chown, which clears set-id bits.
        fs::set_permissions(host, fs::Permissions::from_mode(meta.mode & 0o7777))
            .map_err(|e| write_err(host, e))?;
    }
    Ok(())
}

/// `lsetxattr`; false when the filesystem or our privileges refuse it.
fn set_xattr(host: &Path, name: &CString, value: &[u8]) -> bool {
    let Ok(path) = CString::new(host.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` and `name` are NUL-terminated C strings that outlive the
    // call; `value` is a valid buffer of `value.len()` bytes.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        log::warn!(
            "cannot set xattr {:?} on {}: {}",
            OsStr::from_bytes(name.as_bytes()),
            host.display(),
            io::Error::last_os_error()
        );
    }
    rc == 0
}

fn set_mtime(host: &Path, mtime: i64) -> Result<()> {
    let t = TimeSpec::new(mtime, 0);
    stat::utimensat(AT_FDCWD, host, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| write_err(host, e.into()))
}
