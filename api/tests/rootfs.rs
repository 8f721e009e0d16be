//! The image rootfs disk cache: the host's side of a build (blob disk,
//! empty target disk, locking, cleanup) with a stand-in for the builder
//! microVM that runs the agent's own build code on the host over a loop
//! mount of the target ([`HostBuilder`]; the microVM itself is tested by
//! `tests/e2e.sh run`). Disks are checked with debugfs, e2fsck and a
//! read-only loop mount (these tests need root and e2fsprogs).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

use flate2::{Compression, GzBuilder};
use husk::image::default::ensure_default_image;
use husk::image::oci::{Descriptor, Manifest, MT_OCI_CONFIG, MT_OCI_LAYER_GZIP, MT_OCI_MANIFEST};
use husk::image::reference::Reference;
use husk::image::store::Store;
use husk::storage::rootfs::{BuildJob, DiskBuilder, RootfsCache, RootfsError};
use husk_layers::UnpackOptions;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The builder microVM's stand-in: the agent's build code on a loop mount.
struct HostBuilder;

impl DiskBuilder for HostBuilder {
    fn build(&self, job: &BuildJob<'_>) -> Result<(), BoxError> {
        assert!(job.blobs.exists() && job.target.exists());
        let m = Mount::new(job.target, "loop");
        husk_agent::build::unpack_layers(
            job.blobs,
            m.dir.path(),
            job.request,
            &UnpackOptions::default(),
        )?;
        Ok(())
    }
}

/// A builder that fails (as a VM that timed out would), after checking
/// what it was given.
struct FailingBuilder;

impl DiskBuilder for FailingBuilder {
    fn build(&self, job: &BuildJob<'_>) -> Result<(), BoxError> {
        let blobs = fs::metadata(job.blobs).unwrap().len();
        let end = job.request.layers.last().unwrap().end().unwrap();
        assert_eq!(blobs, end.next_multiple_of(4096));
        Err("the guest agent did not answer within 1 s".into())
    }
}

fn busybox(store: &Store) -> Manifest {
    ensure_default_image(store).expect("the default image needs busybox-static");
    store
        .image(&Reference::parse("busybox").unwrap())
        .unwrap()
        .manifest
}

fn debugfs(image: &Path, req: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", req])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs)");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// `debugfs ls -l` line of `name`: (mode octal, uid, gid).
fn ls_entry(listing: &str, name: &str) -> Option<(String, String, String)> {
    listing.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 9 && f.last() == Some(&name)).then(|| (f[1].into(), f[3].into(), f[4].into()))
    })
}

fn fsck(image: &Path) {
    let out = Command::new("e2fsck")
        .args(["-fn"])
        .arg(image)
        .output()
        .expect("e2fsck (e2fsprogs)");
    assert!(
        out.status.success(),
        "e2fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A read-only loop mount, unmounted on drop.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    fn new(image: &Path, options: &str) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-o", options])
            .arg(image)
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount -o {options} {}", image.display());
        Mount { dir }
    }
    fn ro(image: &Path) -> Mount {
        Mount::new(image, "loop,ro")
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn cache_files(cache: &RootfsCache) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn busybox_disk_is_built_once_and_keeps_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let cache = RootfsCache::open(&tmp.path().join("rootfs")).unwrap();
    let manifest = busybox(&store);

    let disk = cache.ensure(&store, &manifest, &HostBuilder).unwrap();
    assert!(disk.built);
    assert_eq!(disk.chain_key, RootfsCache::chain_key(&manifest));
    assert_eq!(
        disk.path,
        cache.dir().join(format!("{}.ext4", disk.chain_key))
    );
    assert_eq!(disk.bytes, fs::metadata(&disk.path).unwrap().len());
    assert_eq!(
        cache_files(&cache),
        vec![format!("{}.ext4", disk.chain_key)],
        "no temporaries or lock files are left"
    );
    fsck(&disk.path);

    let bin = debugfs(&disk.path, "ls -l /bin");
    assert_eq!(
        ls_entry(&bin, "busybox"),
        Some(("100755".into(), "0".into(), "0".into())),
        "{bin}"
    );
    assert_eq!(
        ls_entry(&bin, "sh").map(|e| e.0),
        Some("120777".into()),
        "{bin}"
    );
    let root = debugfs(&disk.path, "ls -l /");
    assert!(ls_entry(&root, "lost+found").is_none(), "{root}");
    assert!(ls_entry(&root, "bin").is_some(), "{root}");

    {
        let m = Mount::ro(&disk.path);
        let md = fs::symlink_metadata(m.path("bin/busybox")).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o755);
        assert_eq!((md.uid(), md.gid()), (0, 0));
        assert_eq!(
            fs::read_link(m.path("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            fs::read(m.path("bin/busybox")).unwrap(),
            fs::read("/bin/busybox").unwrap()
        );
        assert!(!m.path("lost+found").exists());
    }

    let mtime = fs::metadata(&disk.path).unwrap().modified().unwrap();
    let again = cache.ensure(&store, &manifest, &HostBuilder).unwrap();
    assert!(!again.built, "second ensure is a hit");
    assert_eq!(cache.cached(&manifest).unwrap(), Some(again.clone()));
    let keys = husk::storage::rootfs::referenced_keys(&store).unwrap();
    assert_eq!(keys, HashSet::from([disk.chain_key.clone()]));
    assert_eq!(again.path, disk.path);
    assert_eq!(again.build_time, std::time::Duration::ZERO);
    assert_eq!(fs::metadata(&disk.path).unwrap().modified().unwrap(), mtime);

    // In use: kept even when unreferenced; then removed.
    let lease = again.hold(&cache).unwrap();
    assert_eq!(cache.remove_unused(&HashSet::new()).unwrap(), 0);
    assert!(disk.path.exists());
    drop(lease);
    let keep = HashSet::from([disk.chain_key.clone()]);
    assert_eq!(cache.remove_unused(&keep).unwrap(), 0);
    assert_eq!(cache.remove_unused(&HashSet::new()).unwrap(), 1);
    assert_eq!(cache_files(&cache), Vec::<String>::new());
    assert!(again.hold(&cache).is_err(), "a removed disk cannot be held");
    let (held, _lease) = cache.ensure_held(&store, &manifest, &HostBuilder).unwrap();
    assert!(held.built, "rebuilt after removal");
    assert_eq!(cache.remove_unused(&HashSet::new()).unwrap(), 0, "held");
}

#[test]
fn tampered_layer_fails_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let cache = RootfsCache::open(&tmp.path().join("rootfs")).unwrap();
    let manifest = busybox(&store);
    let blob = store.blob_path(&manifest.layers[0].digest).unwrap();
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();

    let err = cache.ensure(&store, &manifest, &HostBuilder).unwrap_err();
    assert!(matches!(err, RootfsError::Build { .. }), "{err:?}");
    let msg = husk::error::chain(&err);
    let key = RootfsCache::chain_key(&manifest);
    let digest = &manifest.layers[0].digest;
    assert!(
        msg.starts_with(&format!(
            "cannot build the rootfs disk of image {key}: layer {digest}: digest mismatch: expected {digest}, got sha256:"
        )),
        "{msg}"
    );
    assert_eq!(cache_files(&cache), Vec::<String>::new());

    // A missing blob, too: the host names it before any VM starts.
    fs::remove_file(&blob).unwrap();
    let err = cache.ensure(&store, &manifest, &HostBuilder).unwrap_err();
    assert!(matches!(err, RootfsError::BlobDisk { .. }), "{err:?}");
    let msg = husk::error::chain(&err);
    assert!(
        msg.contains(&format!("cannot read layer {digest} from ")),
        "{msg}"
    );
    assert_eq!(cache_files(&cache), Vec::<String>::new());
}

/// A builder that fails leaves neither the blob disk nor the target disk,
/// and its cause reaches the caller on one line.
#[test]
fn a_failed_build_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let cache = RootfsCache::open(&tmp.path().join("rootfs")).unwrap();
    let manifest = busybox(&store);
    let err = cache
        .ensure(&store, &manifest, &FailingBuilder)
        .unwrap_err();
    assert_eq!(
        husk::error::chain(&err),
        format!(
            "cannot build the rootfs disk of image {}: the guest agent did not answer within 1 s",
            RootfsCache::chain_key(&manifest)
        )
    );
    assert_eq!(cache_files(&cache), Vec::<String>::new());
    assert_eq!(cache.cached(&manifest).unwrap(), None);
}

#[test]
fn concurrent_ensures_build_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let cache = RootfsCache::open(&tmp.path().join("rootfs")).unwrap();
    let manifest = busybox(&store);
    let barrier = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (store, cache, manifest, barrier) = (
                store.clone(),
                cache.clone(),
                manifest.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                cache.ensure(&store, &manifest, &HostBuilder).unwrap()
            })
        })
        .collect();
    let disks: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(disks.iter().filter(|d| d.built).count(), 1, "{disks:?}");
    assert!(disks.iter().all(|d| d.path == disks[0].path));
    assert_eq!(cache_files(&cache).len(), 1);
}

/// Starts of one image that hold the disk as their VMs run (shared lock)
/// never wait on each other's holds: a start that finds the disk being
/// built waits for the disk, not for the lock (it used to block on the
/// lock for as long as the first VM ran).
#[test]
fn held_disks_do_not_block_later_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let cache = RootfsCache::open(&tmp.path().join("rootfs")).unwrap();
    let manifest = busybox(&store);
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..4 {
        let (store, cache, manifest, tx) =
            (store.clone(), cache.clone(), manifest.clone(), tx.clone());
        std::thread::spawn(move || {
            let held = cache.ensure_held(&store, &manifest, &HostBuilder).unwrap();
            tx.send(()).unwrap();
            // The "VM" keeps its hold until the test ends.
            std::thread::sleep(std::time::Duration::from_secs(30));
            drop(held);
        });
    }
    for i in 0..4 {
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("start {i} waited on another start's hold"));
    }
}

/// A stale temporary of a killed build is removed by the next build.
#[test]
fn stale_temporaries_are_cleaned() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let cache = RootfsCache::open(&tmp.path().join("rootfs")).unwrap();
    let manifest = busybox(&store);
    let key = RootfsCache::chain_key(&manifest);
    fs::create_dir_all(cache.dir().join(format!("tmp-{key}-1-0/bin"))).unwrap();
    fs::write(cache.dir().join(format!("tmp-{key}-1-0.ext4")), b"x").unwrap();
    fs::write(cache.dir().join(format!("tmp-{key}-1-0.blobs")), b"x").unwrap();
    let other = "0".repeat(64);
    fs::create_dir_all(cache.dir().join(format!("tmp-{other}-1-0/etc"))).unwrap();
    cache.ensure(&store, &manifest, &HostBuilder).unwrap();
    assert_eq!(
        cache_files(&cache),
        vec![format!("{key}.ext4"), format!("tmp-{other}-1-0")]
    );
    let keep = HashSet::from([key.clone()]);
    assert_eq!(cache.remove_unused(&keep).unwrap(), 0);
    assert_eq!(cache_files(&cache), vec![format!("{key}.ext4")]);
}

fn entry(path: &str, kind: tar::EntryType, mode: u32, uid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    h.set_path(path).unwrap();
    h
}

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32, u64),
    Link(&'a str, &'a str),
    Symlink(&'a str, &'a str),
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match *e {
            E::Dir(p) => {
                let mut h = entry(p, tar::EntryType::Directory, 0o755, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::File(p, data, mode, uid) => {
                let mut h = entry(p, tar::EntryType::Regular, mode, uid);
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, data).unwrap();
            }
            E::Link(p, target) => {
                let mut h = entry(p, tar::EntryType::Link, 0o644, 0);
                h.set_link_name(target).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Symlink(p, target) => {
                let mut h = entry(p, tar::EntryType::Symlink, 0o777, 0);
                h.set_link_name(target).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    gzip(&b.into_inner().unwrap())
}

fn desc(media_type: &str, digest: String, size: usize) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest,
        size: size as u64,
        platform: None,
        annotations: Default::default(),
    }
}

fn gzip(tar: &[u8]) -> Vec<u8> {
    let mut gz = GzBuilder::new().write(Vec::new(), Compression::fast());
    std::io::Write::write_all(&mut gz, tar).unwrap();
    gz.finish().unwrap()
}

/// An image of gzip `layers`, put in `store`.
fn manifest_of(store: &Store, layers: &[&[u8]]) -> Manifest {
    let config = br#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    Manifest {
        schema_version: 2,
        media_type: Some(MT_OCI_MANIFEST.into()),
        config: desc(
            MT_OCI_CONFIG,
            store.put_bytes(config).unwrap(),
            config.len(),
        ),
        layers: layers
            .iter()
            .map(|l| desc(MT_OCI_LAYER_GZIP, store.put_bytes(l).unwrap(), l.len()))
            .collect(),
    }
}

#[test]
fn two_layers_with_whiteouts_keep_owners_links_and_setuid() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let cache = RootfsCache::open(&tmp.path().join("rootfs")).unwrap();
    let l1 = layer(&[
        E::Dir("etc/"),
        E::File("etc/gone", b"lower", 0o644, 0),
        E::File("etc/kept", b"kept", 0o600, 1000),
        E::Dir("opq/"),
        E::File("opq/old", b"old", 0o644, 0),
        E::File("bin/tool", b"#!/bin/sh\n", 0o4755, 0),
        E::Link("bin/tool2", "bin/tool"),
    ]);
    let l2 = layer(&[
        E::File("etc/.wh.gone", b"", 0o644, 0),
        E::File("opq/.wh..wh..opq", b"", 0o644, 0),
        E::File("opq/new", b"new", 0o640, 33),
        E::Symlink("etc/link", "kept"),
    ]);
    let manifest = manifest_of(&store, &[&l1, &l2]);
    let disk = cache.ensure(&store, &manifest, &HostBuilder).unwrap();
    assert!(disk.built);
    fsck(&disk.path);
    let m = Mount::ro(&disk.path);
    assert!(!m.path("etc/gone").exists(), "whiteout applied");
    assert!(!m.path("etc/.wh.gone").exists(), "whiteout not copied");
    assert!(!m.path("opq/old").exists(), "opaque dir emptied");
    assert!(!m.path("opq/.wh..wh..opq").exists());
    assert_eq!(fs::read(m.path("opq/new")).unwrap(), b"new");
    let new = fs::metadata(m.path("opq/new")).unwrap();
    assert_eq!((new.uid(), new.gid(), new.mode() & 0o7777), (33, 33, 0o640));
    let kept = fs::metadata(m.path("etc/kept")).unwrap();
    assert_eq!(
        (kept.uid(), kept.gid(), kept.mode() & 0o7777),
        (1000, 1000, 0o600)
    );
    assert_eq!(
        fs::read_link(m.path("etc/link")).unwrap(),
        Path::new("kept")
    );
    assert_eq!(kept.mtime(), 1_700_000_000, "mtimes survive");
    let tool = fs::metadata(m.path("bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid survives");
    let tool2 = fs::metadata(m.path("bin/tool2")).unwrap();
    assert_eq!(tool2.ino(), tool.ino(), "hard link survives");
    assert_eq!(tool.nlink(), 2);
    assert!(!m.path("lost+found").exists());
}

/// A full disk fails the build with one error and leaves no partial file.
#[test]
fn full_disk_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let manifest = busybox(&store);
    let small = tmp.path().join("small");
    fs::create_dir(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(small.clone());
    let cache = RootfsCache::open(&small.join("rootfs")).unwrap();
    let err = cache.ensure(&store, &manifest, &HostBuilder).unwrap_err();
    let mut msg = err.to_string();
    let mut src = std::error::Error::source(&err);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    assert!(msg.contains("No space left on device"), "{msg}");
    assert_eq!(cache_files(&cache), Vec::<String>::new());
}

/// A gzip layer with one regular file whose tar name is `name`, written
/// raw (the tar crate refuses `..` in `set_path`).
fn raw_name_layer(name: &str) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_size(3);
    let field = &mut h.as_old_mut().name;
    field[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"bad"[..]).unwrap();
    gzip(&b.into_inner().unwrap())
}

/// An entry that would land outside the rootfs fails the build with one
/// line naming the layer, the entry and why.
#[test]
fn escaping_entry_is_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let cache = RootfsCache::open(&tmp.path().join("rootfs")).unwrap();
    let manifest = manifest_of(&store, &[&raw_name_layer("../../x")]);
    let digest = &manifest.layers[0].digest;
    let err = cache.ensure(&store, &manifest, &HostBuilder).unwrap_err();
    let chain = husk::error::chain(&err);
    let key = RootfsCache::chain_key(&manifest);
    assert!(
        chain.starts_with(&format!(
            "cannot build the rootfs disk of image {key}: layer {digest}: "
        )),
        "{chain}"
    );
    assert!(
        chain.contains("entry \"../../x\" refused: '..' escapes the root"),
        "{chain}"
    );
    assert_eq!(chain.matches("../../x").count(), 1, "{chain}");
    assert_eq!(cache_files(&cache), Vec::<String>::new());
    assert!(!tmp.path().join("x").exists());
}

/// A layer that unpacks to more than the target disk holds (its size is
/// bounded from the compressed sizes) fails the build with ENOSPC named,
/// and leaves nothing.
#[test]
fn a_layer_larger_than_its_disk_fails_the_build() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let cache = RootfsCache::open(&tmp.path().join("rootfs")).unwrap();
    // 160 MiB of zeros compress to a few hundred KiB.
    let zeros = vec![0u8; 160 << 20];
    let mut h = entry("zeros", tar::EntryType::Regular, 0o644, 0);
    h.set_size(zeros.len() as u64);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &zeros[..]).unwrap();
    let bomb = gzip(&b.into_inner().unwrap());
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    let manifest = manifest_of(&store, &[&bomb]);
    let err = cache.ensure(&store, &manifest, &HostBuilder).unwrap_err();
    let chain = husk::error::chain(&err);
    assert!(chain.contains("No space left on device"), "{chain}");
    assert_eq!(cache_files(&cache), Vec::<String>::new());
}

/// The host side never unpacks a layer: the `husk` crate does not depend on
/// the unpacker (only its tests do, above), and none of its sources names
/// it or a tar reader of layers.
#[test]
fn the_host_does_not_link_the_unpacker() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let toml = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let deps = toml
        .split("\n[dependencies]\n")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .unwrap();
    assert!(!deps.contains("husk-layers"), "{deps}");
    assert!(!deps.contains("husk-agent"), "{deps}");
    let mut stack = vec![root.join("src")];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = fs::read_to_string(&path).unwrap();
            for word in ["husk_layers", "apply_layer", "unpack_tar"] {
                assert!(!text.contains(word), "{} names {word}", path.display());
            }
            files += 1;
        }
    }
    assert!(files > 50, "{files}");
}
