//! The built-in default image: `busybox:latest` built from Debian's
//! `busybox-static` (`/bin/busybox`) without network, so a first `husk run`
//! works offline. The layer is deterministic (sorted entries, mtime 0, owner
//! root, gzip without a timestamp): the same busybox gives the same digest.

use std::path::Path;
use std::process::Command;

use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

use super::oci::{
    Descriptor, ImageConfig, Manifest, RootFs, RunConfig, MT_OCI_CONFIG, MT_OCI_LAYER_GZIP,
    MT_OCI_MANIFEST,
};
use super::reference::Reference;
use super::store::{Store, StoreError};

/// The name the default image is stored under.
pub const DEFAULT_IMAGE: &str = "busybox:latest";
/// Where Debian's busybox-static puts busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// Default-image errors.
#[derive(Debug, thiserror::Error)]
pub enum DefaultImageError {
    /// busybox is missing or not runnable.
    #[error("cannot build the default image from {path}: {reason} (install busybox-static)")]
    Busybox {
        /// Its path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Building the layer failed.
    #[error("building the default image layer")]
    Layer(#[from] std::io::Error),
    /// Storing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    let _ = h.set_path(path);
    h.set_cksum();
    h
}

/// Builds the uncompressed layer tar from a busybox binary.
pub fn busybox_layer(busybox: &Path) -> Result<Vec<u8>, DefaultImageError> {
    let bad = |reason: String| DefaultImageError::Busybox {
        path: busybox.display().to_string(),
        reason,
    };
    let bin = std::fs::read(busybox).map_err(|e| bad(e.to_string()))?;
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| bad(e.to_string()))?;
    if !out.status.success() {
        return Err(bad(format!("`busybox --list` failed: {}", out.status)));
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|a| {
            !a.is_empty()
                && *a != "busybox"
                && a.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b'['
                })
        })
        .map(str::to_string)
        .collect();
    applets.sort();
    applets.dedup();
    let mut tar = tar::Builder::new(Vec::new());
    let dirs = [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("var", 0o755),
    ];
    for (d, mode) in dirs {
        tar.append(
            &header(&format!("{d}/"), tar::EntryType::Directory, mode, 0),
            &[][..],
        )?;
    }
    tar.append(
        &header(
            "bin/busybox",
            tar::EntryType::Regular,
            0o755,
            bin.len() as u64,
        ),
        &bin[..],
    )?;
    for a in &applets {
        let mut h = header(&format!("bin/{a}"), tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name("busybox")?;
        h.set_cksum();
        tar.append(&h, &[][..])?;
    }
    let files: [(&str, &str); 3] = [
        ("etc/group", "root:x:0:\nnobody:x:65534:\n"),
        ("etc/hostname", "husk\n"),
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        ),
    ];
    for (p, content) in files {
        tar.append(
            &header(p, tar::EntryType::Regular, 0o644, content.len() as u64),
            content.as_bytes(),
        )?;
    }
    Ok(tar.into_inner()?)
}

/// Builds the default image from `busybox` into `store` and tags it
/// `busybox:latest`; returns the manifest digest.
pub fn build_default_image(store: &Store, busybox: &Path) -> Result<String, DefaultImageError> {
    let tar = busybox_layer(busybox)?;
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    let mut gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    std::io::Write::write_all(&mut gz, &tar)?;
    let layer = gz.finish()?;
    let layer_digest = store.put_bytes(&layer)?;
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        config: RunConfig {
            env: Some(vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ]),
            cmd: Some(vec!["sh".into()]),
            ..RunConfig::default()
        },
        rootfs: RootFs {
            type_: "layers".into(),
            diff_ids: vec![diff_id],
        },
        created: Some(created(busybox)),
    };
    let config_bytes = serde_json::to_vec(&config).map_err(std::io::Error::other)?;
    let config_digest = store.put_bytes(&config_bytes)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MT_OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: MT_OCI_CONFIG.into(),
            digest: config_digest,
            size: config_bytes.len() as u64,
            platform: None,
            annotations: Default::default(),
        },
        layers: vec![Descriptor {
            media_type: MT_OCI_LAYER_GZIP.into(),
            digest: layer_digest,
            size: layer.len() as u64,
            platform: None,
            annotations: Default::default(),
        }],
    };
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
    let digest = store.put_bytes(&manifest_bytes)?;
    let r = Reference::parse(DEFAULT_IMAGE).map_err(|e| std::io::Error::other(e.to_string()))?;
    store.tag(&r, &digest)?;
    Ok(digest)
}

/// The image's creation time: the busybox binary's modification time (its
/// package's build), so the same binary gives the same image and `docker
/// images` does not show it as made in 1970.
fn created(busybox: &Path) -> String {
    std::fs::metadata(busybox)
        .and_then(|m| m.modified())
        .map(crate::time::rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Makes sure the default image is in the store (built once).
pub fn ensure_default_image(store: &Store) -> Result<(), DefaultImageError> {
    let r = Reference::parse(DEFAULT_IMAGE).map_err(|e| std::io::Error::other(e.to_string()))?;
    if store.image(&r).is_err() {
        build_default_image(store, Path::new(BUSYBOX))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_image_is_deterministic_and_runnable_shape() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sa = Store::open(a.path()).unwrap();
        let sb = Store::open(b.path()).unwrap();
        let da = build_default_image(&sa, Path::new(BUSYBOX)).expect("needs busybox-static");
        let db = build_default_image(&sb, Path::new(BUSYBOX)).unwrap();
        assert_eq!(da, db, "same busybox must give the same digest");
        let img = sa.image(&Reference::parse("busybox").unwrap()).unwrap();
        let config: ImageConfig =
            serde_json::from_slice(&sa.read_blob(&img.manifest.config.digest).unwrap()).unwrap();
        let made = config.created.as_deref().unwrap_or_default();
        assert!(made > "2000" && made.ends_with('Z'), "created {made:?}");
        let layer = sa.read_blob(&img.manifest.layers[0].digest).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&layer[..]));
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        for want in ["bin/busybox", "bin/sh", "bin/echo", "etc/passwd", "tmp/"] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        let err = build_default_image(&sa, Path::new("/nonexistent/busybox")).unwrap_err();
        assert!(err.to_string().contains("install busybox-static"), "{err}");
    }

    #[test]
    fn layer_error_names_its_cause_once() {
        let e = DefaultImageError::from(std::io::Error::other("disk full"));
        assert_eq!(
            crate::error::chain(&e),
            "building the default image layer: disk full"
        );
    }
}
