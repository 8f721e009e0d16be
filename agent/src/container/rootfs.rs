//! The container's mount set-up as a plan of [`MountOp`]s.
//!
//! The plan is built in the agent (mount targets scoped under the rootfs and
//! created there; a target that is a symlink is refused, since mount(2)
//! would follow it) and executed in the cloned child, inside its new mount
//! namespace: make every mount private, bind the rootfs onto itself (so
//! `pivot_root` works even when the agent's root is an initramfs), /proc,
//! a minimal /dev (tmpfs, device nodes, devpts with ptmx, shm), read-only
//! /sys, the generated `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`
//! (see [`super::etc`]), the bind mounts, then `pivot_root`.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};

use super::sys::{cstring, Sys};
use super::{ContainerError, Result};
use husk_layers::scope;
use husk_proto::agent::{MountSpec, TmpfsMount};

/// One step of the rootfs set-up.
#[derive(Debug, Clone, PartialEq)]
pub enum MountOp {
    /// mount(2).
    Mount {
        /// Source.
        source: Option<CString>,
        /// Target (host path).
        target: CString,
        /// Filesystem type.
        fstype: Option<CString>,
        /// Flags.
        flags: MsFlags,
        /// Options.
        data: Option<CString>,
    },
    /// mknod(2) of a character device, mode 0666.
    CharDev {
        /// Path.
        path: CString,
        /// Major.
        major: u64,
        /// Minor.
        minor: u64,
    },
    /// mkdir(2), mode 0755.
    Mkdir {
        /// Path.
        path: CString,
    },
    /// symlink(2).
    Symlink {
        /// Link target.
        target: CString,
        /// The link.
        link: CString,
    },
    /// pivot_root into the rootfs.
    PivotRoot {
        /// The rootfs.
        new_root: CString,
    },
}

/// Device nodes of the minimal /dev: name, major, minor.
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> MountOp {
    MountOp::Mount {
        source: source.map(c),
        target: cstring(target),
        fstype: fstype.map(c),
        flags,
        data: data.map(c),
    }
}

/// Resolves a mount target under the rootfs and makes sure it is a real
/// directory (or file, for a file source).
fn target(rootfs: &Path, rel: &Path, file: bool) -> Result<PathBuf> {
    let host = scope::resolve(rootfs, rel, true).map_err(|source| ContainerError::Scope {
        path: rel.to_path_buf(),
        source,
    })?;
    let io = |source| ContainerError::Io {
        path: host.clone(),
        source,
    };
    match fs::symlink_metadata(&host) {
        Ok(m) if m.file_type().is_symlink() => Err(ContainerError::MountTargetSymlink {
            path: rel.to_path_buf(),
        }),
        Ok(_) => Ok(host),
        Err(_) if file => {
            fs::write(&host, b"").map_err(io)?;
            Ok(host)
        }
        Err(_) => {
            fs::create_dir(&host).map_err(io)?;
            Ok(host)
        }
    }
}

/// Resolves the target of a file bind-mounted over `/etc/<name>` (see
/// [`super::etc`]): `None` when the image has no `/etc` directory, or its
/// file is a symlink or a directory (left alone, as nothing may be mounted
/// through a symlink); a missing file is created empty.
fn etc_target(rootfs: &Path, dest: &Path) -> Result<Option<PathBuf>> {
    let etc = rootfs.join("etc");
    match fs::symlink_metadata(&etc) {
        Ok(m) if m.is_dir() => {}
        _ => return Ok(None),
    }
    let Some(name) = dest.file_name() else {
        return Ok(None);
    };
    let host = etc.join(name);
    match fs::symlink_metadata(&host) {
        Ok(m) if m.is_file() => Ok(Some(host)),
        Ok(_) => {
            log::warn!("{dest:?} in the image is not a regular file; left as is");
            Ok(None)
        }
        Err(_) => {
            fs::write(&host, b"").map_err(|source| ContainerError::Io {
                path: host.clone(),
                source,
            })?;
            Ok(Some(host))
        }
    }
}

/// What the user asked to mount besides the image: volumes (bind mounts of
/// their guest mount points), tmpfs mounts, and a read-only root.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserMounts {
    /// Bind mounts.
    pub binds: Vec<MountSpec>,
    /// tmpfs mounts.
    pub tmpfs: Vec<TmpfsMount>,
    /// The rootfs is remounted read-only once everything is mounted on it.
    pub readonly_root: bool,
}

/// One of the user's mounts, for ordering them by depth.
enum UserMount<'a> {
    Bind(&'a MountSpec),
    Tmpfs(&'a TmpfsMount),
}

impl UserMount<'_> {
    fn destination(&self) -> &Path {
        match self {
            UserMount::Bind(m) => &m.destination,
            UserMount::Tmpfs(t) => &t.destination,
        }
    }
}

/// The user's bind and tmpfs mounts, the shallower first (as Docker
/// orders them), so `/data/tmp` lands on a volume at `/data`.
fn user_mounts(rootfs: &Path, user: &UserMounts, ops: &mut Vec<MountOp>) -> Result<()> {
    let mut all: Vec<UserMount<'_>> = user.binds.iter().map(UserMount::Bind).collect();
    all.extend(user.tmpfs.iter().map(UserMount::Tmpfs));
    all.sort_by_key(|m| m.destination().components().count());
    for m in all {
        match m {
            UserMount::Bind(b) => bind_ops(rootfs, b, ops)?,
            UserMount::Tmpfs(t) => ops.push(tmpfs_op(rootfs, t)?),
        }
    }
    Ok(())
}

fn bind_ops(rootfs: &Path, m: &MountSpec, ops: &mut Vec<MountOp>) -> Result<()> {
    let file = fs::metadata(&m.source)
        .map(|md| !md.is_dir())
        .unwrap_or(false);
    let t = target(rootfs, &m.destination, file)?;
    ops.push(mount(
        Some(&m.source.to_string_lossy()),
        &t,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    ));
    if m.readonly {
        ops.push(mount(
            None,
            &t,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        ));
    }
    Ok(())
}

/// A tmpfs mount: Docker's `noexec`, `nosuid`, `nodev` unless allowed,
/// mode 1777 unless given, the kernel's size unless given.
fn tmpfs_op(rootfs: &Path, t: &TmpfsMount) -> Result<MountOp> {
    let target = target(rootfs, &t.destination, false)?;
    let mut flags = MsFlags::empty();
    for (allowed, flag) in [
        (t.allow.exec, MsFlags::MS_NOEXEC),
        (t.allow.suid, MsFlags::MS_NOSUID),
        (t.allow.dev, MsFlags::MS_NODEV),
    ] {
        if !allowed {
            flags |= flag;
        }
    }
    if t.readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    let mut data = format!("mode={:o}", t.mode.unwrap_or(0o1777));
    if let Some(size) = t.size_bytes {
        data.push_str(&format!(",size={size}"));
    }
    Ok(mount(
        Some("tmpfs"),
        &target,
        Some("tmpfs"),
        flags,
        Some(&data),
    ))
}

/// Builds the plan for `rootfs` (the merged overlay, a host path): `etc`
/// are the generated `/etc/*` files (mounted before, so under, the user's
/// mounts).
pub fn plan(rootfs: &Path, etc: &[MountSpec], user: &UserMounts) -> Result<Vec<MountOp>> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut ops = vec![
        mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        ),
        mount(
            Some(&rootfs.to_string_lossy()),
            rootfs,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ),
    ];
    let proc_ = target(rootfs, Path::new("proc"), false)?;
    ops.push(mount(
        Some("proc"),
        &proc_,
        Some("proc"),
        nosuid_nodev_noexec,
        None,
    ));
    let dev = target(rootfs, Path::new("dev"), false)?;
    ops.push(mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    ));
    // /dev is a fresh tmpfs from here on: fixed names, nothing to escape.
    for (name, major, minor) in DEVICES {
        ops.push(MountOp::CharDev {
            path: cstring(&dev.join(name)),
            major: *major,
            minor: *minor,
        });
    }
    // The guest's own devpts, bound in: the agent allocates the
    // container's terminals there (before the clone), and a husk guest runs
    // one container, so it holds no other container's terminals. A new
    // devpts instance would not have them, and `tty`/`ttyname` would fail.
    ops.push(MountOp::Mkdir {
        path: cstring(&dev.join("pts")),
    });
    ops.push(mount(
        Some("/dev/pts"),
        &dev.join("pts"),
        None,
        MsFlags::MS_BIND,
        None,
    ));
    ops.push(MountOp::Mkdir {
        path: cstring(&dev.join("shm")),
    });
    ops.push(mount(
        Some("tmpfs"),
        &dev.join("shm"),
        Some("tmpfs"),
        nosuid_nodev_noexec,
        Some("mode=1777,size=65536k"),
    ));
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ops.push(MountOp::Symlink {
            target: c(to),
            link: cstring(&dev.join(link)),
        });
    }
    let sys = target(rootfs, Path::new("sys"), false)?;
    ops.push(mount(
        Some("sysfs"),
        &sys,
        Some("sysfs"),
        nosuid_nodev_noexec | MsFlags::MS_RDONLY,
        None,
    ));
    // The container's own cgroup (the child is in its cgroup namespace by
    // now), read-only, as Docker shows it: memory.max, cpu.max, ...
    ops.push(mount(
        Some("cgroup2"),
        &sys.join("fs/cgroup"),
        Some("cgroup2"),
        nosuid_nodev_noexec | MsFlags::MS_RDONLY,
        None,
    ));
    for m in etc {
        if let Some(t) = etc_target(rootfs, &m.destination)? {
            ops.push(mount(
                Some(&m.source.to_string_lossy()),
                &t,
                None,
                MsFlags::MS_BIND,
                None,
            ));
        }
    }
    user_mounts(rootfs, user, &mut ops)?;
    if user.readonly_root {
        // The rootfs's own bind mount only: the mounts on it stay as they are.
        ops.push(mount(
            None,
            rootfs,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        ));
    }
    ops.push(MountOp::PivotRoot {
        new_root: cstring(rootfs),
    });
    Ok(ops)
}

/// Runs the plan; on failure returns the failed step's index and errno.
/// Called in the cloned child: no allocation.
pub fn execute(sys: &dyn Sys, ops: &[MountOp]) -> std::result::Result<(), (usize, nix::Error)> {
    for (i, op) in ops.iter().enumerate() {
        let r = match op {
            MountOp::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => sys.mount(
                source.as_deref(),
                target,
                fstype.as_deref(),
                *flags,
                data.as_deref(),
            ),
            MountOp::CharDev { path, major, minor } => sys.mknod(
                path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(*major, *minor),
            ),
            MountOp::Symlink { target, link } => sys.symlink(target, link),
            MountOp::Mkdir { path } => sys.mkdir(path, Mode::from_bits_truncate(0o755)),
            MountOp::PivotRoot { new_root } => sys.pivot_root(new_root),
        };
        r.map_err(|e| (i, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::sys::RecordingSys;
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn plan_order_and_targets() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let src = tempfile::tempdir().unwrap();
        let plan = plan(
            root,
            &[],
            &UserMounts {
                binds: vec![MountSpec {
                    source: src.path().to_path_buf(),
                    destination: "/data/in".into(),
                    readonly: true,
                }],
                ..Default::default()
            },
        )
        .unwrap();
        let sys = RecordingSys::default();
        execute(&sys, &plan).unwrap();
        let calls = sys.calls();
        let r = root.display();
        assert!(
            calls[0].starts_with("mount - / - MS_REC|MS_PRIVATE"),
            "{}",
            calls[0]
        );
        assert!(
            calls[1].starts_with(&format!("mount {r} {r} - MS_BIND|MS_REC")),
            "{}",
            calls[1]
        );
        assert!(
            calls[2].starts_with(&format!("mount proc {r}/proc proc")),
            "{}",
            calls[2]
        );
        assert!(calls
            .iter()
            .any(|c| c == &format!("mknod {r}/dev/null 20000 666 259")));
        assert!(calls.iter().any(|c| c == &format!("mkdir {r}/dev/pts 755")));
        assert!(calls
            .iter()
            .any(|c| c.starts_with(&format!("mount /dev/pts {r}/dev/pts - MS_BIND"))));
        assert!(calls
            .iter()
            .any(|c| c == &format!("symlink pts/ptmx {r}/dev/ptmx")));
        assert!(calls.iter().any(
            |c| c.starts_with(&format!("mount sysfs {r}/sys sysfs")) && c.contains("MS_RDONLY")
        ));
        assert!(calls.iter().any(|c| c
            .starts_with(&format!("mount cgroup2 {r}/sys/fs/cgroup cgroup2"))
            && c.contains("MS_RDONLY")));
        let n = calls.len();
        assert!(
            calls[n - 2].contains("MS_REMOUNT") && calls[n - 2].contains(&format!("{r}/data/in"))
        );
        assert_eq!(calls[n - 1], format!("pivot_root {r}"));
        assert!(root.join("data/in").is_dir() && root.join("proc").is_dir());
    }

    #[test]
    fn tmpfs_by_depth_over_volumes_then_the_root_read_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let src = tempfile::tempdir().unwrap();
        let user = UserMounts {
            binds: vec![MountSpec {
                source: src.path().to_path_buf(),
                destination: "/data".into(),
                readonly: false,
            }],
            tmpfs: vec![
                TmpfsMount {
                    destination: "/data/tmp".into(),
                    ..Default::default()
                },
                TmpfsMount {
                    destination: "/run".into(),
                    size_bytes: Some(1 << 20),
                    mode: Some(0o755),
                    allow: husk_proto::mounts::TmpfsAllow {
                        exec: true,
                        ..Default::default()
                    },
                    readonly: false,
                },
            ],
            readonly_root: true,
        };
        let ops = plan(root, &[], &user).unwrap();
        let sys = RecordingSys::default();
        execute(&sys, &ops).unwrap();
        let calls = sys.calls();
        let r = root.display();
        let at = |prefix: String| {
            calls
                .iter()
                .position(|c| c.starts_with(&prefix))
                .unwrap_or_else(|| panic!("{prefix}: {calls:?}"))
        };
        let run = at(format!(
            "mount tmpfs {r}/run tmpfs MS_NOSUID|MS_NODEV mode=755,size=1048576"
        ));
        let data = at(format!(
            "mount {} {r}/data - MS_BIND|MS_REC",
            src.path().display()
        ));
        let data_tmp = at(format!(
            "mount tmpfs {r}/data/tmp tmpfs MS_NOSUID|MS_NODEV|MS_NOEXEC mode=1777"
        ));
        assert!(run < data_tmp && data < data_tmp, "{calls:?}");
        let n = calls.len();
        assert_eq!(
            calls[n - 2],
            format!("mount - {r} - MS_RDONLY|MS_REMOUNT|MS_BIND -")
        );
        assert_eq!(calls[n - 1], format!("pivot_root {r}"));
        assert!(root.join("run").is_dir() && root.join("data/tmp").is_dir());
    }

    #[test]
    fn etc_files_mounted_over_existing_or_new_targets() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hosts"), "image's\n").unwrap();
        symlink("/etc/passwd", root.join("etc/resolv.conf")).unwrap();
        let src = d.path().join("run");
        let etc: Vec<MountSpec> = ["hosts", "hostname", "resolv.conf"]
            .iter()
            .map(|n| MountSpec {
                source: src.join(n),
                destination: PathBuf::from("/etc").join(n),
                readonly: false,
            })
            .collect();
        let ops = plan(&root, &etc, &UserMounts::default()).unwrap();
        let sys = RecordingSys::default();
        execute(&sys, &ops).unwrap();
        let calls = sys.calls();
        let (r, s) = (root.display(), src.display());
        for n in ["hosts", "hostname"] {
            assert!(
                calls.contains(&format!("mount {s}/{n} {r}/etc/{n} - MS_BIND -")),
                "{n}: {calls:?}"
            );
        }
        assert!(
            !calls.iter().any(|c| c.contains("resolv.conf")),
            "a symlinked target is left alone: {calls:?}"
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/hosts")).unwrap(),
            "image's\n"
        );
        assert!(
            root.join("etc/hostname").is_file(),
            "missing target created"
        );
        // No /etc in the image: nothing mounted, nothing created.
        let bare = d.path().join("bare");
        fs::create_dir(&bare).unwrap();
        let ops = plan(&bare, &etc, &UserMounts::default()).unwrap();
        assert!(!ops.iter().any(|o| format!("{o:?}").contains("/etc/")));
        assert!(!bare.join("etc").exists());
    }

    #[test]
    fn failure_reports_step() {
        let d = tempfile::tempdir().unwrap();
        let plan = plan(d.path(), &[], &UserMounts::default()).unwrap();
        let sys = RecordingSys {
            fail_at: Some(2),
            ..Default::default()
        };
        assert_eq!(execute(&sys, &plan), Err((2, nix::Error::EPERM)));
        assert_eq!(sys.calls().len(), 3);
    }

    #[test]
    fn symlinked_targets_refused() {
        let d = tempfile::tempdir().unwrap();
        symlink("/etc", d.path().join("proc")).unwrap();
        let e = plan(d.path(), &[], &UserMounts::default()).unwrap_err();
        assert!(
            matches!(e, ContainerError::MountTargetSymlink { .. }),
            "{e}"
        );
        let d = tempfile::tempdir().unwrap();
        let m = MountSpec {
            source: "/tmp".into(),
            destination: "../../etc".into(),
            readonly: false,
        };
        let e = plan(
            d.path(),
            &[],
            &UserMounts {
                binds: vec![m],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, ContainerError::Scope { .. }), "{e}");
    }
}
