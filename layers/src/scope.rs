//! Scoped path resolution under a root directory.
//!
//! Image content is hostile: every path from a layer or a mount target is
//! resolved here, one component at a time, with `lstat`. `..` is refused
//! outright; an intermediate symlink is followed only when its target is
//! relative and stays inside the root (absolute targets are refused, since a
//! naive writer would follow them out of the rootfs). The final component is
//! never followed, so callers replace or create it themselves.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// How many symlinks a single resolution may follow.
const MAX_SYMLINKS: u32 = 40;

/// Scoped-resolution errors.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    /// The path contains `..`.
    #[error("'..' escapes the root")]
    ParentDir {
        /// The offending path.
        path: PathBuf,
    },
    /// An intermediate symlink points outside the root (or is absolute).
    #[error("path {path:?} goes through symlink {link:?} -> {target:?}, which leaves the root")]
    SymlinkEscape {
        /// The path being resolved.
        path: PathBuf,
        /// The symlink (relative to the root).
        link: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// An intermediate component exists but is not a directory.
    #[error("path {path:?}: {component:?} is not a directory")]
    NotADirectory {
        /// The path being resolved.
        path: PathBuf,
        /// The component (relative to the root).
        component: PathBuf,
    },
    /// Too many symlinks.
    #[error("path {path:?}: too many levels of symbolic links")]
    TooManySymlinks {
        /// The path being resolved.
        path: PathBuf,
    },
    /// `lstat` or `readlink` failed.
    #[error("cannot inspect {path:?}")]
    Io {
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, ScopeError>;

/// Splits a path from image content into normal components: a leading `/`
/// and `.` are dropped (absolute paths are taken as root-relative, as Docker
/// does), `..` is refused.
pub fn normalize(path: &Path) -> Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(ScopeError::ParentDir {
                    path: path.to_path_buf(),
                })
            }
        }
    }
    Ok(out)
}

/// Resolves `path` (root-relative) under `root`, following intermediate
/// symlinks only inside the root. Returns the host path of the final
/// component, which is not followed and need not exist. Intermediate
/// components that do not exist are created as directories (mode 0755) when
/// `create_dirs` is set, else the path is returned as if they were plain
/// directories.
pub fn resolve(root: &Path, path: &Path, create_dirs: bool) -> Result<PathBuf> {
    let comps = normalize(path)?;
    let mut pending: Vec<PathBuf> = comps.iter().rev().map(PathBuf::from).collect();
    // `cur` is the resolved root-relative prefix.
    let mut cur = PathBuf::new();
    let mut followed = 0;
    while let Some(name) = pending.pop() {
        let candidate = cur.join(&name);
        if pending.is_empty() {
            return Ok(root.join(candidate));
        }
        let host = root.join(&candidate);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(ScopeError::TooManySymlinks {
                        path: path.to_path_buf(),
                    });
                }
                let target = fs::read_link(&host).map_err(|source| ScopeError::Io {
                    path: host.clone(),
                    source,
                })?;
                let joined =
                    lexical_join(&cur, &target).ok_or_else(|| ScopeError::SymlinkEscape {
                        path: path.to_path_buf(),
                        link: candidate.clone(),
                        target: target.clone(),
                    })?;
                // Restart from the root with the link's resolution.
                for c in joined.iter().rev() {
                    pending.push(PathBuf::from(c));
                }
                cur = PathBuf::new();
            }
            Ok(m) if m.is_dir() => cur = candidate,
            Ok(_) => {
                return Err(ScopeError::NotADirectory {
                    path: path.to_path_buf(),
                    component: candidate,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if create_dirs {
                    fs::create_dir(&host).map_err(|source| ScopeError::Io {
                        path: host.clone(),
                        source,
                    })?;
                }
                cur = candidate;
            }
            Err(source) => return Err(ScopeError::Io { path: host, source }),
        }
    }
    // Empty path: the root itself.
    Ok(root.to_path_buf())
}

/// Resolves a relative symlink `target` found in directory `dir`
/// (root-relative) lexically; `None` when it is absolute or climbs above the
/// root.
fn lexical_join(dir: &Path, target: &Path) -> Option<Vec<std::ffi::OsString>> {
    let mut out: Vec<std::ffi::OsString> = dir.iter().map(|c| c.to_os_string()).collect();
    for c in target.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn plain_and_absolute_paths_stay_inside() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        assert_eq!(resolve(r, Path::new("/a/b"), false).unwrap(), r.join("a/b"));
        assert_eq!(
            resolve(r, Path::new("./a/./b"), false).unwrap(),
            r.join("a/b")
        );
        assert_eq!(resolve(r, Path::new("/"), false).unwrap(), r.to_path_buf());
    }

    #[test]
    fn dotdot_refused() {
        let d = tempfile::tempdir().unwrap();
        let err = resolve(d.path(), Path::new("a/../../etc"), false).unwrap_err();
        assert!(matches!(err, ScopeError::ParentDir { .. }), "{err}");
    }

    #[test]
    fn relative_symlink_inside_followed() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        assert_eq!(
            resolve(r, Path::new("lib/x"), false).unwrap(),
            r.join("usr/lib/x")
        );
        // The last component is never followed.
        assert_eq!(resolve(r, Path::new("lib"), false).unwrap(), r.join("lib"));
    }

    #[test]
    fn escaping_symlinks_refused() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir(r.join("a")).unwrap();
        symlink("../../..", r.join("a/up")).unwrap();
        symlink("/etc", r.join("abs")).unwrap();
        for p in ["a/up/x", "abs/passwd"] {
            let err = resolve(r, Path::new(p), true).unwrap_err();
            assert!(
                matches!(err, ScopeError::SymlinkEscape { .. }),
                "{p}: {err}"
            );
        }
    }

    #[test]
    fn symlink_loop_refused() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        symlink("b", r.join("a")).unwrap();
        symlink("a", r.join("b")).unwrap();
        let err = resolve(r, Path::new("a/x"), false).unwrap_err();
        assert!(matches!(err, ScopeError::TooManySymlinks { .. }), "{err}");
    }

    #[test]
    fn file_as_dir_refused_and_dirs_created() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::write(r.join("f"), b"").unwrap();
        let err = resolve(r, Path::new("f/x"), true).unwrap_err();
        assert!(matches!(err, ScopeError::NotADirectory { .. }), "{err}");
        resolve(r, Path::new("n/m/x"), true).unwrap();
        assert!(r.join("n/m").is_dir());
    }

    /// Random trees of directories and symlinks (relative, climbing,
    /// absolute) and random paths: whatever resolves must have its parent
    /// inside the root once every symlink is followed by the kernel.
    #[test]
    fn randomized_resolution_stays_inside() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n as u64).unwrap()
        };
        let names = ["a", "b", "c", "..", "."];
        let targets = ["a", "../b", "../../..", "/", "/etc", "b/../a", "c/.."];
        for _ in 0..200 {
            let d = tempfile::tempdir().unwrap();
            let r = d.path();
            for _ in 0..6 {
                let dir: PathBuf = (0..next(3)).map(|_| names[next(3)]).collect();
                let _ = fs::create_dir_all(r.join(&dir));
                let _ = symlink(
                    targets[next(targets.len())],
                    r.join(&dir).join(names[next(3)]),
                );
            }
            let canon_root = r.canonicalize().unwrap();
            for _ in 0..10 {
                let p: PathBuf = (0..1 + next(4)).map(|_| names[next(names.len())]).collect();
                if let Ok(host) = resolve(r, &p, true) {
                    if host == r {
                        continue; // the root itself
                    }
                    let parent = host.parent().unwrap().canonicalize().unwrap();
                    assert!(
                        parent.starts_with(&canon_root),
                        "{p:?} -> {host:?} ({parent:?})"
                    );
                }
            }
        }
    }
}
