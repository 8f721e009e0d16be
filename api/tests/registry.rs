//! husk against a real registry: Debian's `docker-registry` on 127.0.0.1,
//! images pushed with Debian's `skopeo` from an OCI layout husk saved.
//! Missing tools fail the test with a message; nothing is skipped.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use husk::image::default::{build_default_image, BUSYBOX};
use husk::image::layout;
use husk::image::reference::Reference;
use husk::image::store::Store;

mod common;
use common::{need, push_big, push_default, sha256_hex, start_registry, start_registry_with};

fn husk(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn pull_by_tag_and_by_digest() {
    let reg = start_registry();
    let (layer, _src) = push_default(&reg, "test/busybox:1");
    let data = tempfile::tempdir().unwrap();
    let r = format!("127.0.0.1:{}/test/busybox:1", reg.port);
    let out = husk(data.path(), &["pull", &r]);
    assert!(
        out.status.success(),
        "pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let digest = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .expect("digest line")
        .to_string();
    let store = Store::open(&data.path().join("images")).unwrap();
    let img = store.image(&Reference::parse(&r).unwrap()).unwrap();
    assert_eq!(img.manifest.layers[0].digest, layer);
    assert!(store.has_blob(&layer));
    // By digest, into a fresh store.
    let data2 = tempfile::tempdir().unwrap();
    let by_digest = format!("127.0.0.1:{}/test/busybox@{digest}", reg.port);
    let out = husk(data2.path(), &["pull", "-q", &by_digest]);
    assert!(
        out.status.success(),
        "pull by digest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store2 = Store::open(&data2.path().join("images")).unwrap();
    assert_eq!(
        store2
            .image(&Reference::parse(&by_digest).unwrap())
            .unwrap()
            .manifest_digest,
        digest
    );
    // An unknown tag is a clear error.
    let out = husk(
        data2.path(),
        &["pull", &format!("127.0.0.1:{}/test/busybox:nope", reg.port)],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 404") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn tampered_blob_is_refused_and_nothing_half_written_stays() {
    let reg = start_registry();
    let (layer, _src) = push_default(&reg, "test/tampered:1");
    let hex = &layer[7..];
    let blob = reg
        .storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&blob).expect("layer blob in registry storage");
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = husk(
        data.path(),
        &["pull", &format!("127.0.0.1:{}/test/tampered:1", reg.port)],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("digest mismatch"), "{err}");
    let store = Store::open(&data.path().join("images")).unwrap();
    assert!(!store.has_blob(&layer), "tampered layer must not be stored");
    assert_eq!(
        std::fs::read_dir(data.path().join("images/tmp"))
            .unwrap()
            .count(),
        0
    );
    assert!(
        store.refs().unwrap().is_empty(),
        "no name for a failed pull"
    );
}

#[test]
fn concurrent_pulls_share_one_store() {
    let reg = start_registry();
    let (_layer, _src) = push_default(&reg, "test/par:1");
    let data = tempfile::tempdir().unwrap();
    let r = format!("127.0.0.1:{}/test/par:1", reg.port);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (d, r) = (data.path().to_path_buf(), r.clone());
            std::thread::spawn(move || husk(&d, &["pull", "-q", &r]))
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = husk(data.path(), &["images"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("test/par") && listing.contains("busybox"),
        "{listing}"
    );
    let out = husk(data.path(), &["rmi", &r]);
    assert!(out.status.success());
    let out = husk(data.path(), &["gc"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("removed "));
}

#[test]
fn save_and_load_round_trip() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("bb");
    let o = husk(
        data.path(),
        &["save", "-o", dir.to_str().unwrap(), "busybox"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let data2 = tempfile::tempdir().unwrap();
    let o = husk(
        data2.path(),
        &["load", "-i", dir.to_str().unwrap(), "--name", "mybox"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "Loaded image: mybox:latest"
    );
    // A corrupted layout is refused.
    let blobs = dir.join("blobs/sha256");
    for e in std::fs::read_dir(&blobs).unwrap().flatten() {
        let mut b = std::fs::read(e.path()).unwrap();
        b.push(0);
        std::fs::write(e.path(), b).unwrap();
    }
    let data3 = tempfile::tempdir().unwrap();
    let o = husk(data3.path(), &["load", "-i", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bytes its descriptor gives") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn multi_arch_index_picks_linux_amd64() {
    let reg = start_registry();
    let src = tempfile::tempdir().unwrap();
    let store = Store::open(&src.path().join("images")).unwrap();
    let amd64 = build_default_image(&store, Path::new(BUSYBOX)).unwrap();
    let dir = src.path().join("layout");
    layout::save(&store, &Reference::parse("busybox").unwrap(), &dir).unwrap();
    let blobs = dir.join("blobs/sha256");
    let m: serde_json::Value = serde_json::from_slice(&store.read_blob(&amd64).unwrap()).unwrap();
    // An arm64 variant: same layer, its own config and manifest.
    let mut cfg: serde_json::Value = serde_json::from_slice(
        &store
            .read_blob(m["config"]["digest"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    cfg["architecture"] = "arm64".into();
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    std::fs::write(blobs.join(sha256_hex(&cfg_bytes)), &cfg_bytes).unwrap();
    let mut arm = m.clone();
    arm["config"]["digest"] = format!("sha256:{}", sha256_hex(&cfg_bytes)).into();
    arm["config"]["size"] = cfg_bytes.len().into();
    let arm_bytes = serde_json::to_vec(&arm).unwrap();
    std::fs::write(blobs.join(sha256_hex(&arm_bytes)), &arm_bytes).unwrap();
    let amd_size = store.read_blob(&amd64).unwrap().len();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", sha256_hex(&arm_bytes)),
             "size": arm_bytes.len(), "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd64,
             "size": amd_size, "platform": {"architecture": "amd64", "os": "linux"}}
        ]
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    std::fs::write(blobs.join(sha256_hex(&index_bytes)), &index_bytes).unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": format!("sha256:{}", sha256_hex(&index_bytes)),
        "size": index_bytes.len(), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let out = Command::new(need("/usr/bin/skopeo"))
        .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", dir.display()))
        .arg(format!("docker://127.0.0.1:{}/test/multi:1", reg.port))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy --all: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = tempfile::tempdir().unwrap();
    let r = format!("127.0.0.1:{}/test/multi:1", reg.port);
    let out = husk(data.path(), &["pull", "-q", &r]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = Store::open(&data.path().join("images"))
        .unwrap()
        .image(&Reference::parse(&r).unwrap())
        .unwrap();
    assert_eq!(
        got.manifest_digest, amd64,
        "husk must pick the linux/amd64 manifest"
    );
}

#[test]
fn htpasswd_auth_right_and_wrong_credentials() {
    let reg = start_registry_with(|dir| {
        let hash = bcrypt::hash("s3cret", 5).unwrap();
        std::fs::write(dir.join("htpasswd"), format!("alice:{hash}\n")).unwrap();
        format!(
            "auth:\n  htpasswd:\n    realm: husk-test\n    path: {}\n",
            dir.join("htpasswd").display()
        )
    });
    // Push with credentials.
    let src = tempfile::tempdir().unwrap();
    let store = Store::open(&src.path().join("images")).unwrap();
    build_default_image(&store, Path::new(BUSYBOX)).unwrap();
    let ldir = src.path().join("layout");
    layout::save(&store, &Reference::parse("busybox").unwrap(), &ldir).unwrap();
    let out = Command::new(need("/usr/bin/skopeo"))
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            "alice:s3cret",
        ])
        .arg(format!("oci:{}:latest", ldir.display()))
        .arg(format!("docker://127.0.0.1:{}/private/bb:1", reg.port))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo push with creds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = format!("127.0.0.1:{}/private/bb:1", reg.port);
    let data = tempfile::tempdir().unwrap();
    let out = husk(
        data.path(),
        &["pull", "-q", "--user", "alice", "--password", "wrong", &r],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication to 127.0.0.1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = husk(data.path(), &["pull", "-q", &r]);
    assert_eq!(out.status.code(), Some(1), "no credentials must fail");
    let out = husk(
        data.path(),
        &["pull", "-q", "--user", "alice", "--password", "s3cret", &r],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pull_killed_midway_leaves_a_consistent_store() {
    let reg = start_registry();
    let _src = push_big(&reg, "test/big:1", 64);
    let data = tempfile::tempdir().unwrap();
    let r = format!("127.0.0.1:{}/test/big:1", reg.port);
    let mut child = Command::new(env!("CARGO_BIN_EXE_husk"))
        .arg("--data-dir")
        .arg(data.path())
        .args(["pull", "-q", &r])
        .spawn()
        .unwrap();
    // Kill it once the big layer is being written.
    let tmp = data.path().join("images/tmp");
    let start = Instant::now();
    loop {
        let partial = std::fs::read_dir(&tmp)
            .map(|d| {
                d.flatten()
                    .any(|e| e.metadata().is_ok_and(|m| m.len() > 1 << 20))
            })
            .unwrap_or(false);
        if partial || start.elapsed() > Duration::from_secs(30) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the pull finished before it could be killed"
    );
    let store = Store::open(&data.path().join("images")).unwrap();
    assert!(
        store.refs().unwrap().is_empty(),
        "a killed pull must not name an image"
    );
    // Every blob present is complete and verified.
    for e in std::fs::read_dir(data.path().join("images/blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let b = std::fs::read(e.path()).unwrap();
        assert_eq!(
            sha256_hex(&b),
            e.file_name().to_string_lossy(),
            "half-written blob in the store"
        );
    }
    let out = husk(data.path(), &["pull", "-q", &r]);
    assert!(
        out.status.success(),
        "re-pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        store
            .image(&Reference::parse(&r).unwrap())
            .unwrap()
            .manifest
            .layers
            .len(),
        2
    );
    husk(data.path(), &["gc"]);
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "gc removes partial downloads"
    );
}

#[test]
fn load_docker_save_tarball_and_oci_layout_tar() {
    // Make a docker-save archive of the default image: uncompressed layer,
    // config, manifest.json with RepoTags.
    let src = tempfile::tempdir().unwrap();
    let store = Store::open(&src.path().join("images")).unwrap();
    let d = build_default_image(&store, Path::new(BUSYBOX)).unwrap();
    let m = store.manifest(&d).unwrap();
    let gz = store.read_blob(&m.layers[0].digest).unwrap();
    let mut layer = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut layer).unwrap();
    let cfg = store.read_blob(&m.config.digest).unwrap();
    let work = src.path().join("save");
    std::fs::create_dir_all(work.join("abc")).unwrap();
    std::fs::write(work.join("abc/layer.tar"), &layer).unwrap();
    std::fs::write(work.join("cfg.json"), &cfg).unwrap();
    std::fs::write(
        work.join("manifest.json"),
        r#"[{"Config":"cfg.json","RepoTags":["saved/box:7"],"Layers":["abc/layer.tar"]}]"#,
    )
    .unwrap();
    let tarball = src.path().join("box.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&work)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let data = tempfile::tempdir().unwrap();
    let o = husk(data.path(), &["load", "-i", tarball.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "Loaded image: saved/box:7"
    );
    let s2 = Store::open(&data.path().join("images")).unwrap();
    let img = s2.image(&Reference::parse("saved/box:7").unwrap()).unwrap();
    assert_eq!(
        img.manifest.layers[0].digest,
        format!("sha256:{}", sha256_hex(&layer))
    );
    // A tarred OCI layout.
    let ldir = src.path().join("oci");
    layout::save(&store, &Reference::parse("busybox").unwrap(), &ldir).unwrap();
    let ltar = src.path().join("ocibox.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&ldir)
        .arg("-cf")
        .arg(&ltar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let o = husk(data.path(), &["load", "-i", ltar.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "Loaded image: ocibox:latest"
    );
    // Garbage is a one-line error.
    std::fs::write(src.path().join("junk.tar"), b"not a tar").unwrap();
    let o = husk(
        data.path(),
        &["load", "-i", src.path().join("junk.tar").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1);
}

#[test]
fn credentials_from_docker_config_json() {
    use base64::Engine;
    let reg = start_registry_with(|dir| {
        let hash = bcrypt::hash("pw2", 5).unwrap();
        std::fs::write(dir.join("htpasswd"), format!("bob:{hash}\n")).unwrap();
        format!(
            "auth:\n  htpasswd:\n    realm: husk-test\n    path: {}\n",
            dir.join("htpasswd").display()
        )
    });
    let src = tempfile::tempdir().unwrap();
    let store = Store::open(&src.path().join("images")).unwrap();
    build_default_image(&store, Path::new(BUSYBOX)).unwrap();
    let ldir = src.path().join("layout");
    layout::save(&store, &Reference::parse("busybox").unwrap(), &ldir).unwrap();
    let out = Command::new(need("/usr/bin/skopeo"))
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            "bob:pw2",
        ])
        .arg(format!("oci:{}:latest", ldir.display()))
        .arg(format!("docker://127.0.0.1:{}/private/cfg:1", reg.port))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfgdir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("bob:pw2");
    std::fs::write(
        cfgdir.path().join("config.json"),
        format!(
            r#"{{"auths": {{"127.0.0.1:{}": {{"auth": "{auth}"}}}}}}"#,
            reg.port
        ),
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let pull = |with_config: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_husk"));
        c.env("HOME", home.path());
        if with_config {
            c.env("DOCKER_CONFIG", cfgdir.path());
        } else {
            c.env("DOCKER_CONFIG", home.path());
        }
        c.arg("--data-dir")
            .arg(data.path())
            .args([
                "pull",
                "-q",
                &format!("127.0.0.1:{}/private/cfg:1", reg.port),
            ])
            .output()
            .unwrap()
    };
    assert_eq!(
        pull(false).status.code(),
        Some(1),
        "no credentials must fail"
    );
    let out = pull(true);
    assert!(
        out.status.success(),
        "config.json credentials: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
