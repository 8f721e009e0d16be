//! Real layer tarballs through husk-agent's layers module: the resulting
//! tree, and the refusals with their messages.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use husk_layers::{self as layers, LayerError, UnpackOptions};

fn apply(root: &Path, blob: &[u8], media_type: &str) -> Result<layers::UnpackStats, LayerError> {
    let dir = tempfile::tempdir().unwrap();
    let (p, d) = write_blob(dir.path(), "blob", blob);
    layers::apply_layer_file(
        root,
        &p,
        &d,
        media_type,
        Some(blob.len() as u64),
        &UnpackOptions::default(),
    )
}

fn msg(e: &LayerError) -> String {
    let mut m = e.to_string();
    let mut s = std::error::Error::source(e);
    while let Some(x) = s {
        m += &format!(": {x}");
        s = x.source();
    }
    m
}

fn rootfs() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn tree_modes_links_owners_mtimes_xattrs_devices() {
    let r = rootfs();
    let root = r.path();
    let layer = tar(&[
        E::Dir("etc/", 0o755),
        E::File("etc/hosts", 0o644, b"127.0.0.1 localhost\n".to_vec()),
        E::File("/abs/file", 0o600, b"abs".to_vec()),
        E::File("bin/tool", 0o4755, b"#!/bin/sh\n".to_vec()),
        E::Symlink("bin/rel", "tool"),
        E::Symlink("bin/abs", "/etc/hosts"),
        E::Hardlink("bin/tool2", "bin/tool"),
        E::Owned("home/u/f", 0o640, 1234, 5678, 1_234_567_890),
        E::Fifo("run/fifo"),
        E::CharDev("dev/null", 1, 3),
        E::Xattr("x/attr", "user.husk", b"yes"),
        E::Dir("./", 0o755),
    ]);
    let stats = apply(root, &gzip(&layer), OCI_GZ).unwrap();
    assert_eq!(stats.entries, 12);
    assert_eq!(
        fs::read(root.join("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    // An absolute entry path lands inside the root.
    assert_eq!(fs::read(root.join("abs/file")).unwrap(), b"abs");
    let tool = fs::metadata(root.join("bin/tool")).unwrap();
    assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(
        fs::read_link(root.join("bin/rel")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        fs::read_link(root.join("bin/abs")).unwrap(),
        Path::new("/etc/hosts")
    );
    let tool2 = fs::metadata(root.join("bin/tool2")).unwrap();
    assert_eq!(tool.ino(), tool2.ino(), "hard link shares the inode");
    assert_eq!(tool.nlink(), 2);
    let owned = fs::metadata(root.join("home/u/f")).unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o777),
        (1234, 5678, 0o640)
    );
    assert_eq!(owned.mtime(), 1_234_567_890);
    assert_eq!(
        fs::metadata(root.join("etc")).unwrap().mtime(),
        1_600_000_000,
        "dir mtime applied last"
    );
    assert!(fs::symlink_metadata(root.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let dev = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), nix::sys::stat::makedev(1, 3));
    let mut buf = [0u8; 8];
    let p = std::ffi::CString::new(root.join("x/attr").to_str().unwrap()).unwrap();
    // SAFETY: valid C strings and a stack buffer of the given size.
    let n = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            c"user.husk".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 3, "xattr user.husk set");
    assert_eq!(&buf[..3], b"yes");
}

#[test]
fn whiteouts_and_opaque_dirs_across_layers() {
    let r = rootfs();
    let root = r.path();
    let l1 = tar(&[
        E::File("a/x", 0o644, b"x".to_vec()),
        E::File("a/y", 0o644, b"y".to_vec()),
        E::File("b/old", 0o644, b"old".to_vec()),
        E::File("b/sub/deep", 0o644, b"deep".to_vec()),
        E::File("c/gone/inner", 0o644, b"i".to_vec()),
    ]);
    // The layer's own entry in b/ comes before the opaque marker.
    let l2 = tar(&[
        E::File("a/.wh.x", 0o644, vec![]),
        E::File("b/new", 0o644, b"new".to_vec()),
        E::File("b/.wh..wh..opq", 0o644, vec![]),
        E::File("c/.wh.gone", 0o644, vec![]),
        E::File("d/.wh.never-existed", 0o644, vec![]),
    ]);
    apply(root, &l1, OCI_TAR).unwrap();
    let st = apply(root, &zstd(&l2), OCI_ZSTD).unwrap();
    assert_eq!(st.whiteouts, 4);
    assert!(!root.join("a/x").exists() && root.join("a/y").exists());
    assert!(!root.join("b/old").exists() && !root.join("b/sub").exists());
    assert_eq!(fs::read(root.join("b/new")).unwrap(), b"new");
    assert!(!root.join("c/gone").exists() && root.join("c").is_dir());
    for p in ["a/.wh.x", "b/.wh..wh..opq", "c/.wh.gone"] {
        assert!(
            fs::symlink_metadata(root.join(p)).is_err(),
            "{p} must not be materialized"
        );
    }
}

#[test]
fn replacing_entries_never_writes_through_them() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("victim");
    fs::write(&target, b"untouched").unwrap();
    let r = rootfs();
    let root = r.path();
    let link_target: &'static str =
        Box::leak(target.to_str().unwrap().to_string().into_boxed_str());
    apply(
        root,
        &tar(&[
            E::Symlink("f", link_target),
            E::File("d/x", 0o644, b"1".to_vec()),
        ]),
        OCI_TAR,
    )
    .unwrap();
    // A file over a symlink and a file over a directory replace them.
    apply(
        root,
        &tar(&[
            E::File("f", 0o644, b"new".to_vec()),
            E::File("d", 0o644, b"file".to_vec()),
        ]),
        OCI_TAR,
    )
    .unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"untouched");
    assert!(fs::symlink_metadata(root.join("f")).unwrap().is_file());
    assert_eq!(fs::read(root.join("d")).unwrap(), b"file");
    // And a directory over a file.
    apply(root, &tar(&[E::Dir("d", 0o700)]), OCI_TAR).unwrap();
    assert!(root.join("d").is_dir());
}

fn assert_refused(entries: &[E], want: &str) {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("rootfs");
    fs::create_dir(&root).unwrap();
    let err = apply(&root, &tar(entries), OCI_TAR).unwrap_err();
    let m = msg(&err);
    assert!(m.contains(want), "message {m:?} lacks {want:?}");
    let outside: Vec<_> = fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside,
        vec![std::ffi::OsString::from("rootfs")],
        "nothing written beside the rootfs"
    );
}

#[test]
fn dotdot_traversal_refused() {
    assert_refused(
        &[E::File("../escape", 0o644, b"x".to_vec())],
        "entry \"../escape\" refused: '..' escapes the root",
    );
    assert_refused(
        &[E::File("a/../../escape", 0o644, b"x".to_vec())],
        "'..' escapes the root",
    );
    assert_refused(
        &[E::File("a/.wh...", 0o644, vec![])],
        "entry \"a/.wh...\" refused",
    );
}

#[test]
fn symlink_escape_refused() {
    assert_refused(
        &[
            E::Symlink("up", "../"),
            E::File("up/escape", 0o644, b"x".to_vec()),
        ],
        "goes through symlink \"up\" -> \"../\", which leaves the root",
    );
    assert_refused(
        &[
            E::Dir("a/", 0o755),
            E::Symlink("a/b", "../../.."),
            E::File("a/b/escape", 0o644, b"x".to_vec()),
        ],
        "which leaves the root",
    );
}

#[test]
fn absolute_symlink_then_write_through_it_refused() {
    let outside = tempfile::tempdir().unwrap();
    let t: &'static str = Box::leak(
        outside
            .path()
            .to_str()
            .unwrap()
            .to_string()
            .into_boxed_str(),
    );
    let entries = [
        E::Symlink("evil", t),
        E::File("evil/pwned", 0o644, b"x".to_vec()),
    ];
    assert_refused(&entries, "goes through symlink \"evil\"");
    assert!(!outside.path().join("pwned").exists());
    // Across layers too.
    let r = rootfs();
    apply(r.path(), &tar(&[E::Symlink("etc", "/etc")]), OCI_TAR).unwrap();
    let err = apply(
        r.path(),
        &tar(&[E::File("etc/passwd", 0o644, b"x".to_vec())]),
        OCI_TAR,
    )
    .unwrap_err();
    assert!(
        msg(&err).contains("symlink \"etc\" -> \"/etc\", which leaves the root"),
        "{}",
        msg(&err)
    );
}

#[test]
fn hard_link_escapes_refused() {
    assert_refused(
        &[E::Hardlink("h", "../../etc/passwd")],
        "target contains '..'",
    );
    assert_refused(
        &[E::Symlink("s", "/etc"), E::Hardlink("h", "s/passwd")],
        "target leaves the root",
    );
    assert_refused(&[E::Hardlink("h", "missing")], "target does not exist");
    assert_refused(
        &[E::Dir("d", 0o755), E::Hardlink("h", "d")],
        "target is a directory",
    );
}

#[test]
fn digest_mismatch_refused_before_any_entry_is_used() {
    let r = rootfs();
    let blob = gzip(&tar(&[E::File("f", 0o644, b"x".to_vec())]));
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = write_blob(dir.path(), "blob", &blob);
    let wrong = digest(b"something else");
    let err = layers::apply_layer_file(
        r.path(),
        &p,
        &wrong,
        OCI_GZ,
        None,
        &UnpackOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, LayerError::DigestMismatch { .. }));
    assert!(
        msg(&err).starts_with(&format!("digest mismatch: expected {wrong}, got sha256:")),
        "{}",
        msg(&err)
    );
    assert_eq!(
        fs::read_dir(r.path()).unwrap().count(),
        0,
        "nothing unpacked"
    );
    let err = layers::apply_layer_file(
        r.path(),
        &p,
        "md5:abc",
        OCI_GZ,
        None,
        &UnpackOptions::default(),
    )
    .unwrap_err();
    assert_eq!(msg(&err), "invalid digest \"md5:abc\"");
    let right = digest(&blob);
    let err = layers::apply_layer_file(
        r.path(),
        &p,
        &right,
        OCI_GZ,
        Some(1),
        &UnpackOptions::default(),
    )
    .unwrap_err();
    assert!(msg(&err).starts_with("size mismatch"), "{}", msg(&err));
}

#[test]
fn gzip_zstd_plain_and_media_types() {
    let layer = tar(&[E::File("hello", 0o644, b"world".to_vec())]);
    for (blob, mt) in [
        (layer.clone(), OCI_TAR),
        (gzip(&layer), OCI_GZ),
        (zstd(&layer), OCI_ZSTD),
        (gzip(&layer), DOCKER_GZ),
        (
            layer.clone(),
            "application/vnd.docker.image.rootfs.diff.tar",
        ),
    ] {
        let r = rootfs();
        apply(r.path(), &blob, mt).unwrap_or_else(|e| panic!("{mt}: {}", msg(&e)));
        assert_eq!(fs::read(r.path().join("hello")).unwrap(), b"world", "{mt}");
    }
    let r = rootfs();
    let err = apply(r.path(), &gzip(&layer), OCI_ZSTD).unwrap_err();
    assert!(
        msg(&err).contains("announces Zstd but the blob is Gzip"),
        "{}",
        msg(&err)
    );
    let err = apply(r.path(), &layer, "application/json").unwrap_err();
    assert_eq!(
        msg(&err),
        "unsupported layer media type \"application/json\""
    );
    // Corrupt compressed data with a matching digest is a tar error.
    let mut bad = gzip(&layer);
    let n = bad.len();
    bad[n / 2] ^= 0xff;
    bad[n - 5] ^= 0xff;
    let err = apply(r.path(), &bad, OCI_GZ).unwrap_err();
    assert!(matches!(err, LayerError::Tar(_)), "{}", msg(&err));
}

#[test]
fn limits_enforced() {
    let r = rootfs();
    let layer = tar(&[
        E::File("a", 0o644, vec![0; 1000]),
        E::File("b", 0o644, vec![0; 1000]),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let (p, d) = write_blob(dir.path(), "blob", &layer);
    let opts = UnpackOptions {
        max_unpacked_bytes: 1500,
        ..Default::default()
    };
    let err = layers::apply_layer_file(r.path(), &p, &d, OCI_TAR, None, &opts).unwrap_err();
    assert_eq!(msg(&err), "layer exceeds the unpacked size limit of 1500");
    let opts = UnpackOptions {
        max_entries: 1,
        ..Default::default()
    };
    let err = layers::apply_layer_file(r.path(), &p, &d, OCI_TAR, None, &opts).unwrap_err();
    assert_eq!(msg(&err), "layer exceeds the entry count limit of 1");
    let opts = UnpackOptions {
        max_blob_bytes: 100,
        ..Default::default()
    };
    let err = layers::apply_layer_file(r.path(), &p, &d, OCI_TAR, None, &opts).unwrap_err();
    assert_eq!(msg(&err), "blob exceeds the limit of 100 bytes");
}

#[test]
fn streamed_layer() {
    let r = rootfs();
    let tmp = tempfile::tempdir().unwrap();
    let blob = zstd(&tar(&[E::File("s", 0o644, b"streamed".to_vec())]));
    let d = digest(&blob);
    layers::apply_layer_stream(
        r.path(),
        blob.as_slice(),
        tmp.path(),
        &d,
        OCI_ZSTD,
        blob.len() as u64,
        &UnpackOptions::default(),
    )
    .unwrap();
    assert_eq!(fs::read(r.path().join("s")).unwrap(), b"streamed");
    // A stream longer than announced is refused.
    let mut longer = blob.clone();
    longer.push(0);
    let err = layers::apply_layer_stream(
        r.path(),
        longer.as_slice(),
        tmp.path(),
        &d,
        OCI_ZSTD,
        blob.len() as u64,
        &UnpackOptions::default(),
    )
    .unwrap_err();
    assert!(msg(&err).starts_with("digest mismatch"), "{}", msg(&err));
}
