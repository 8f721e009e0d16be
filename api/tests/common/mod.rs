//! Shared by the registry tests and the pull benchmark: a real
//! `docker-registry` on 127.0.0.1 and images pushed to it with `skopeo`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use husk::image::default::{build_default_image, BUSYBOX};
use husk::image::layout;
use husk::image::reference::Reference;
use husk::image::store::Store;

pub struct Registry {
    pub child: Child,
    pub port: u16,
    pub storage: PathBuf,
    pub _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn need(tool: &str) -> PathBuf {
    let p = PathBuf::from(tool);
    assert!(
        p.exists(),
        "{tool} is missing: install it (tests/apt-packages.txt lists it)"
    );
    p
}

pub fn start_registry() -> Registry {
    start_registry_with(|_| String::new())
}

/// Starts a registry whose config gets `extra(dir)` appended (e.g. an
/// `auth:` section referring to files the closure writes into `dir`).
pub fn start_registry_with(extra: impl FnOnce(&Path) -> String) -> Registry {
    let bin = need("/usr/bin/docker-registry");
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let storage = dir.path().join("storage");
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{}",
            storage.display(),
            extra(dir.path())
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "docker-registry did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Registry {
        child,
        port,
        storage,
        _dir: dir,
    }
}

/// Builds the default image, saves it as an OCI layout and pushes it.
pub fn push_default(reg: &Registry, name: &str) -> (String, tempfile::TempDir) {
    let src = tempfile::tempdir().unwrap();
    let store = Store::open(&src.path().join("images")).unwrap();
    build_default_image(&store, Path::new(BUSYBOX)).expect("busybox-static is needed");
    let layout_dir = src.path().join("layout");
    layout::save(&store, &Reference::parse("busybox").unwrap(), &layout_dir).unwrap();
    let img = store.image(&Reference::parse("busybox").unwrap()).unwrap();
    let out = Command::new(need("/usr/bin/skopeo"))
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", layout_dir.display()))
        .arg(format!("docker://127.0.0.1:{}/{name}", reg.port))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (img.manifest.layers[0].digest.clone(), src)
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Pushes the default image plus one large extra layer (`mib` MiB).
pub fn push_big(reg: &Registry, name: &str, mib: usize) -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    let store = Store::open(&src.path().join("images")).unwrap();
    let amd64 = build_default_image(&store, Path::new(BUSYBOX)).unwrap();
    let dir = src.path().join("layout");
    layout::save(&store, &Reference::parse("busybox").unwrap(), &dir).unwrap();
    let blobs = dir.join("blobs/sha256");
    let mut big = vec![0u8; mib << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x.to_le_bytes()[0];
    }
    std::fs::write(blobs.join(sha256_hex(&big)), &big).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&amd64).unwrap()).unwrap();
    m["layers"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": format!("sha256:{}", sha256_hex(&big)), "size": big.len()}));
    let mb = serde_json::to_vec(&m).unwrap();
    std::fs::write(blobs.join(sha256_hex(&mb)), &mb).unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", sha256_hex(&mb)),
        "size": mb.len(), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let out = Command::new(need("/usr/bin/skopeo"))
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", dir.display()))
        .arg(format!("docker://127.0.0.1:{}/{name}", reg.port))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    src
}
