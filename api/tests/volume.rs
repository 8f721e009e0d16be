//! Named volumes and `husk volume` (need root for the loop mounts and
//! e2fsprogs).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk::cli::volume::{run_to, VolumeCmd};
use husk::storage::volume::{VolumeError, Volumes, DEFAULT_SIZE};

fn vols() -> (tempfile::TempDir, Volumes) {
    let tmp = tempfile::tempdir().unwrap();
    let v = Volumes::open(&tmp.path().join("volumes")).unwrap();
    (tmp, v)
}

/// Mounts `disk` (read-write unless `ro`), runs `f` on the mount point,
/// unmounts.
fn with_mount<T>(disk: &Path, ro: bool, f: impl FnOnce(&Path) -> T) -> T {
    let dir = tempfile::tempdir().unwrap();
    let opts = if ro { "loop,ro" } else { "loop" };
    let st = Command::new("mount")
        .args(["-o", opts])
        .arg(disk)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "mount {}", disk.display());
    struct Umount<'a>(&'a Path);
    impl Drop for Umount<'_> {
        fn drop(&mut self) {
            let st = Command::new("umount").arg(self.0).status().unwrap();
            assert!(st.success(), "umount {}", self.0.display());
        }
    }
    let _u = Umount(dir.path());
    f(dir.path())
}

#[test]
fn create_list_get_remove() {
    let (_t, vols) = vols();
    assert!(vols.list().unwrap().is_empty());
    let a = vols.create("data", None).unwrap();
    assert_eq!(a.name, "data");
    assert_eq!(a.size_bytes, DEFAULT_SIZE);
    assert_eq!(a.disk, vols.root().join("data/disk.ext4"));
    let md = fs::metadata(&a.disk).unwrap();
    assert_eq!(md.len(), DEFAULT_SIZE);
    assert!(md.blocks() * 512 < DEFAULT_SIZE / 4, "sparse");
    assert!(
        a.created.ends_with('Z') && husk::time::parse_rfc3339(&a.created).is_some(),
        "{}",
        a.created
    );

    // Idempotent: the same volume, untouched, whatever the size asked.
    let again = vols.create("data", Some(64 << 20)).unwrap();
    assert_eq!(again, a);

    let b = vols.create("b.2_x-y", Some(16 << 20)).unwrap();
    assert_eq!(fs::metadata(&b.disk).unwrap().len(), 16 << 20);
    let names: Vec<String> = vols.list().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["b.2_x-y", "data"]);
    assert_eq!(vols.get("data").unwrap(), a);

    assert!(vols.remove("data", false).unwrap());
    assert!(!vols.root().join("data").exists());
    let err = vols.get("data").unwrap_err();
    assert_eq!(err.to_string(), "no such volume: data");
    let err = vols.remove("data", false).unwrap_err();
    assert_eq!(err.to_string(), "no such volume: data");
    assert!(
        !vols.remove("data", true).unwrap(),
        "-f ignores a missing volume"
    );
    assert_eq!(vols.list().unwrap().len(), 1);
    // Only volumes are left in the directory (no temporaries).
    let left: Vec<_> = fs::read_dir(vols.root()).unwrap().collect();
    assert_eq!(left.len(), 1);
}

#[test]
fn ensure_creates_once() {
    let (_t, vols) = vols();
    let (v, created) = vols.ensure("cache").unwrap();
    assert!(created);
    let (w, created) = vols.ensure("cache").unwrap();
    assert!(!created);
    assert_eq!(v, w);
}

#[test]
fn invalid_names_are_refused() {
    let (_t, vols) = vols();
    for bad in ["a", "-x", ".hidden", "a/b", "../etc", "x y", ""] {
        let err = vols.create(bad, None).unwrap_err();
        assert!(
            matches!(err, VolumeError::InvalidName(_)),
            "{bad:?}: {err:?}"
        );
        assert!(err.to_string().starts_with("invalid volume name"), "{err}");
        assert!(matches!(vols.get(bad), Err(VolumeError::InvalidName(_))));
        assert!(matches!(vols.ensure(bad), Err(VolumeError::InvalidName(_))));
        assert!(matches!(
            vols.remove(bad, true),
            Err(VolumeError::InvalidName(_))
        ));
    }
    assert!(matches!(
        vols.create("ok", Some(4096)),
        Err(VolumeError::InvalidSize(_))
    ));
    assert!(fs::read_dir(vols.root()).unwrap().next().is_none());
}

#[test]
fn lock_excludes_second_lock_and_rm_until_dropped() {
    let (_t, vols) = vols();
    let v = vols.create("db", Some(16 << 20)).unwrap();
    let lock = vols.lock(&v, "c0ffee").unwrap();
    assert_eq!(lock.name(), "db");
    let err = vols.lock(&v, "other").unwrap_err();
    assert_eq!(err.to_string(), "volume db is in use by container c0ffee");
    let err = vols.remove("db", true).unwrap_err();
    assert_eq!(err.to_string(), "volume is in use: db (container c0ffee)");
    assert!(v.disk.exists());
    drop(lock);
    let lock = vols.lock(&v, "second").unwrap();
    assert!(matches!(
        vols.lock(&v, "x"),
        Err(VolumeError::Locked { holder, .. }) if holder == "second"
    ));
    drop(lock);
    assert!(vols.remove("db", false).unwrap());
    assert!(matches!(
        vols.lock(&v, "late"),
        Err(VolumeError::NoSuchVolume(_))
    ));
}

/// A holder killed with SIGKILL frees the volume (the kernel drops its
/// flock); here the holder is flock(1) on the same lock file.
#[test]
fn killed_holder_frees_the_volume() {
    let (_t, vols) = vols();
    let v = vols.create("k8", Some(16 << 20)).unwrap();
    // -o: the lock stays with flock(1) itself, not with its sleep child.
    let mut child = Command::new("flock")
        .arg("-o")
        .arg(vols.root().join("k8/lock"))
        .arg("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("flock (util-linux)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while vols.lock(&v, "me").is_ok() {
        assert!(Instant::now() < deadline, "flock(1) never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(child.stdin.take()); // cat (the orphaned child) sees EOF and exits
    vols.lock(&v, "me")
        .expect("the killed holder's lock is gone");
}

#[test]
fn data_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("volumes");
    let disk = {
        let vols = Volumes::open(&root).unwrap();
        let v = vols.create("keep", Some(32 << 20)).unwrap();
        with_mount(&v.disk, false, |m| {
            let md = fs::metadata(m).unwrap();
            assert_eq!((md.uid(), md.gid()), (0, 0), "root_owner=0:0");
            fs::write(m.join("hello.txt"), b"written by the first container").unwrap();
        });
        v.disk
    };
    let vols = Volumes::open(&root).unwrap();
    let v = vols.get("keep").unwrap();
    assert_eq!(v.disk, disk);
    let data = with_mount(&v.disk, true, |m| fs::read(m.join("hello.txt")).unwrap());
    assert_eq!(data, b"written by the first container");
}

fn cli(
    vols: &Volumes,
    cmd: VolumeCmd,
    in_use: &dyn Fn(&str) -> Option<String>,
) -> (String, Result<(), VolumeError>) {
    let mut out = Vec::new();
    let res = run_to(cmd, vols, in_use, &mut out);
    (String::from_utf8(out).unwrap(), res)
}

#[test]
fn cli_prints_as_docker() {
    let (_t, vols) = vols();
    let none = |_: &str| None;
    let (out, res) = cli(
        &vols,
        VolumeCmd::Create {
            name: Some("web".into()),
            size: Some(16 << 20),
        },
        &none,
    );
    res.unwrap();
    assert_eq!(out, "web\n");
    let (out, res) = cli(
        &vols,
        VolumeCmd::Create {
            name: None,
            size: Some(16 << 20),
        },
        &none,
    );
    res.unwrap();
    let gen = out.trim().to_string();
    assert!(
        gen.len() == 64 && gen.bytes().all(|c| c.is_ascii_hexdigit()),
        "{gen}"
    );

    let (out, res) = cli(&vols, VolumeCmd::Ls { quiet: false }, &none);
    res.unwrap();
    let mut names = [gen.clone(), "web".to_string()];
    names.sort();
    assert_eq!(
        out,
        format!(
            "DRIVER    VOLUME NAME\nlocal     {}\nlocal     {}\n",
            names[0], names[1]
        )
    );
    let (out, _) = cli(&vols, VolumeCmd::Ls { quiet: true }, &none);
    assert_eq!(out, format!("{}\n{}\n", names[0], names[1]));

    let (out, res) = cli(
        &vols,
        VolumeCmd::Inspect {
            names: vec!["web".into()],
        },
        &none,
    );
    res.unwrap();
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let w = &json[0];
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(w["Name"], "web");
    assert_eq!(w["Driver"], "local");
    assert_eq!(w["Scope"], "local");
    assert_eq!(
        w["Mountpoint"],
        vols.root().join("web/disk.ext4").to_str().unwrap()
    );
    assert_eq!(w["Options"]["size"], (16u64 << 20).to_string());
    assert!(w["CreatedAt"].as_str().unwrap().ends_with('Z'));

    let (out, res) = cli(
        &vols,
        VolumeCmd::Inspect {
            names: vec!["web".into(), "nope".into()],
        },
        &none,
    );
    assert_eq!(res.unwrap_err().to_string(), "no such volume: nope");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1, "the found one is shown");

    // rm: refused while a container refers to it, then removed.
    let used = |n: &str| (n == "web").then(|| "abc123".to_string());
    let (out, res) = cli(
        &vols,
        VolumeCmd::Rm {
            names: vec!["web".into()],
            force: false,
        },
        &used,
    );
    assert_eq!(
        res.unwrap_err().to_string(),
        "volume is in use: web (container abc123)"
    );
    assert_eq!(out, "");
    let (out, res) = cli(
        &vols,
        VolumeCmd::Rm {
            names: vec!["web".into(), gen.clone()],
            force: false,
        },
        &none,
    );
    res.unwrap();
    assert_eq!(out, format!("web\n{gen}\n"));
    let (_, res) = cli(
        &vols,
        VolumeCmd::Rm {
            names: vec!["web".into()],
            force: false,
        },
        &none,
    );
    assert_eq!(res.unwrap_err().to_string(), "no such volume: web");
    let (out, res) = cli(
        &vols,
        VolumeCmd::Rm {
            names: vec!["web".into()],
            force: true,
        },
        &none,
    );
    res.unwrap();
    assert_eq!(out, "web\n");
    assert!(vols.list().unwrap().is_empty());
}

#[test]
fn cli_parses_flags() {
    use clap::Parser;
    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: VolumeCmd,
    }
    let t = T::try_parse_from(["volume", "create", "--size", "2g", "v1"]).unwrap();
    assert_eq!(
        t.cmd,
        VolumeCmd::Create {
            name: Some("v1".into()),
            size: Some(2 << 30)
        }
    );
    let t = T::try_parse_from(["volume", "rm", "-f", "a", "b"]).unwrap();
    assert_eq!(
        t.cmd,
        VolumeCmd::Rm {
            names: vec!["a".into(), "b".into()],
            force: true
        }
    );
    assert!(T::try_parse_from(["volume", "create", "--size", "1k"]).is_err());
    assert!(T::try_parse_from(["volume", "rm"]).is_err());
    let t = T::try_parse_from(["volume", "ls", "-q"]).unwrap();
    assert_eq!(t.cmd, VolumeCmd::Ls { quiet: true });
}

#[test]
fn concurrent_ensure_creates_once() {
    let (_t, vols) = vols();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (vols, barrier) = (vols.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                vols.ensure("shared").unwrap()
            })
        })
        .collect();
    let got: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        got.iter().filter(|(_, created)| *created).count(),
        1,
        "{got:?}"
    );
    assert!(got.iter().all(|(v, _)| *v == got[0].0));
    let names: Vec<_> = fs::read_dir(vols.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["shared"], "no temporaries left");
}

#[test]
fn dead_temporaries_are_removed_on_open() {
    let (t, vols) = vols();
    // pid 0x7ffffffe does not exist; our own pid does.
    let dead = vols.root().join(".tmp-x1-2147483646-0");
    let live = vols
        .root()
        .join(format!(".tmp-x2-{}-0", std::process::id()));
    let rm = vols.root().join(".rm-x3-2147483646-7");
    for d in [&dead, &live, &rm] {
        fs::create_dir_all(d.join("sub")).unwrap();
    }
    let _again = Volumes::open(&t.path().join("volumes")).unwrap();
    assert!(!dead.exists() && !rm.exists());
    assert!(live.exists(), "a live process's temporary is kept");
    assert!(vols.list().unwrap().is_empty());
}
