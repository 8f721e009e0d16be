//! Peer check: an OCI image built with Debian's `umoci` (two layers, the
//! second with whiteouts) is unpacked by `umoci unpack` and by husk-agent's
//! layers module; the two trees must match (type, content, mode, owner,
//! link target, device number, hard-link groups, mtime).
//!
//! Needs root (owners, device nodes) and `umoci` (tests/apt-packages.txt);
//! fails, never skips, without them.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use husk_layers::{self as layers, UnpackOptions};
use sha2::{Digest, Sha256};

fn umoci(dir: &Path, args: &[&str]) {
    let out = Command::new("umoci")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "umoci is missing ({e}): apt-get install umoci (listed in tests/apt-packages.txt)"
            )
        });
    assert!(
        out.status.success(),
        "umoci {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn mode(p: &Path, m: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
}

/// First layer's content.
fn populate_base(r: &Path) {
    for d in [
        "etc",
        "bin",
        "dir/sub",
        "gone/deeper",
        "run",
        "dev",
        "tmp",
        "home/u",
    ] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    mode(&r.join("tmp"), 0o1777);
    mode(&r.join("dir/sub"), 0o700);
    fs::write(r.join("etc/f"), b"hello\n").unwrap();
    fs::write(r.join("etc/old"), b"to be deleted\n").unwrap();
    fs::write(r.join("gone/deeper/x"), b"x").unwrap();
    fs::write(r.join("dir/sub/lower"), b"lower").unwrap();
    fs::write(r.join("dir/keep"), b"keep").unwrap();
    fs::write(r.join("bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    mode(&r.join("bin/tool"), 0o4755);
    fs::hard_link(r.join("bin/tool"), r.join("bin/tool2")).unwrap();
    let big: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    fs::write(r.join("home/u/big"), big).unwrap();
    fs::write(r.join("home/u/secret"), b"s").unwrap();
    mode(&r.join("home/u/secret"), 0o600);
    chown(&r.join("home/u/secret"), 1234, 5678);
    chown(&r.join("home/u"), 1234, 5678);
    symlink("f", r.join("etc/rel")).unwrap();
    symlink("/etc/f", r.join("abs")).unwrap();
    symlink("nowhere", r.join("dangling")).unwrap();
    chown(&r.join("dangling"), 7, 8);
    nix::unistd::mkfifo(
        &r.join("run/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &r.join("dev/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
}

/// Second layer: deletions (whiteouts), a replaced directory, new files.
fn modify(r: &Path) {
    fs::remove_file(r.join("etc/old")).unwrap();
    fs::remove_dir_all(r.join("gone")).unwrap();
    fs::remove_dir_all(r.join("dir/sub")).unwrap();
    fs::create_dir(r.join("dir/sub")).unwrap();
    fs::write(r.join("dir/sub/upper"), b"upper").unwrap();
    fs::write(r.join("etc/f"), b"changed\n").unwrap();
    fs::write(r.join("etc/new"), b"new\n").unwrap();
    mode(&r.join("etc/new"), 0o640);
    fs::remove_file(r.join("abs")).unwrap();
    fs::create_dir(r.join("abs")).unwrap();
}

#[derive(Debug, PartialEq)]
struct Info {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    content: Option<String>,
    link: Option<PathBuf>,
    rdev: u64,
}

/// Every path under `root` with its properties, plus the hard-link groups.
fn snapshot(root: &Path) -> (BTreeMap<PathBuf, Info>, Vec<Vec<PathBuf>>) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "char"
        } else {
            "other"
        };
        let content = ft.is_file().then(|| {
            let mut h = Sha256::new();
            let mut f = fs::File::open(&p).unwrap();
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).unwrap();
            h.update(&buf);
            hex::encode(h.finalize())
        });
        if ft.is_file() && m.nlink() > 1 {
            inodes.entry(m.ino()).or_default().push(rel.clone());
        }
        if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        if rel.as_os_str().is_empty() {
            continue; // the root itself: created by each tool, not by a layer
        }
        out.insert(
            rel,
            Info {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: m.mtime(),
                content,
                link: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
                rdev: m.rdev(),
            },
        );
    }
    let mut groups: Vec<Vec<PathBuf>> = inodes
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    groups.sort();
    (out, groups)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(alg).join(hex)
}

#[test]
fn husk_unpack_matches_umoci_unpack() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the umoci peer check needs root (owners, device nodes)"
    );
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    umoci(d, &["init", "--layout", "img"]);
    umoci(d, &["new", "--image", "img:t"]);
    umoci(d, &["unpack", "--image", "img:t", "b1"]);
    populate_base(&d.join("b1/rootfs"));
    umoci(d, &["repack", "--image", "img:t", "b1"]);
    umoci(d, &["unpack", "--image", "img:t", "b2"]);
    modify(&d.join("b2/rootfs"));
    umoci(d, &["repack", "--image", "img:t", "b2"]);
    umoci(d, &["unpack", "--image", "img:t", "reference"]);

    // Husk: index -> manifest -> layers, each verified and unpacked.
    let layout = d.join("img");
    let index = read_json(&layout.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = read_json(&blob_path(&layout, manifest_digest));
    let layer_list = manifest["layers"].as_array().unwrap();
    assert_eq!(layer_list.len(), 2, "two layers: base and changes");
    let husk = d.join("husk");
    fs::create_dir(&husk).unwrap();
    let mut whiteouts = 0;
    for l in layer_list {
        let digest = l["digest"].as_str().unwrap();
        let media_type = l["mediaType"].as_str().unwrap();
        let size = l["size"].as_u64().unwrap();
        let stats = layers::apply_layer_file(
            &husk,
            &blob_path(&layout, digest),
            digest,
            media_type,
            Some(size),
            &UnpackOptions::default(),
        )
        .unwrap_or_else(|e| panic!("layer {digest}: {e}"));
        whiteouts += stats.whiteouts;
    }
    assert!(
        whiteouts >= 3,
        "umoci's second layer carries whiteouts (got {whiteouts})"
    );

    let (want, want_links) = snapshot(&d.join("reference/rootfs"));
    let (got, got_links) = snapshot(&husk);
    let mut diffs = Vec::new();
    for (p, w) in &want {
        match got.get(p) {
            None => diffs.push(format!("missing in husk: {p:?}")),
            Some(g) if g != w => diffs.push(format!("{p:?}: umoci {w:?}, husk {g:?}")),
            _ => {}
        }
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        diffs.push(format!("extra in husk: {p:?}"));
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    assert_eq!(want_links, got_links, "hard-link groups");
    assert_eq!(
        want_links,
        vec![vec![PathBuf::from("bin/tool"), PathBuf::from("bin/tool2")]]
    );
    // Sanity: the comparison saw the interesting entries.
    for p in [
        "etc/new",
        "dir/sub/upper",
        "dev/null",
        "run/fifo",
        "abs",
        "home/u/secret",
    ] {
        assert!(want.contains_key(Path::new(p)), "{p}");
    }
    for p in ["etc/old", "gone", "dir/sub/lower"] {
        assert!(!want.contains_key(Path::new(p)), "{p}");
    }
}
