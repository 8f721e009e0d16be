//! OCI image layouts: `husk save` writes one (a directory with `oci-layout`,
//! `index.json` and `blobs/sha256/`), `husk load` reads one, checking every
//! blob's digest on the way in.

use std::fs;
use std::path::{Path, PathBuf};

use super::oci::{digest_hex, Descriptor, DigestError, Index, MT_OCI_INDEX, MT_OCI_MANIFEST};
use super::reference::Reference;
use super::store::{Store, StoreError};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Layout errors.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// I/O on a layout file.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not an OCI layout.
    #[error("{0} is not an OCI image layout: {1}")]
    NotLayout(PathBuf, String),
    /// `index.json` cannot be read or parsed.
    #[error("{dir} is not an OCI image layout")]
    BadIndex {
        /// The layout directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Store error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A malformed digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the image `r` from `store` as an OCI layout in `dir`, tagged with
/// its tag (`latest` by default) in `index.json`.
pub fn save(store: &Store, r: &Reference, dir: &Path) -> Result<(), LayoutError> {
    let img = store.image(r)?;
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let mut digests = vec![
        img.manifest_digest.clone(),
        img.manifest.config.digest.clone(),
    ];
    digests.extend(img.manifest.layers.iter().map(|l| l.digest.clone()));
    for d in &digests {
        let to = blobs.join(digest_hex(d)?);
        fs::copy(store.blob_path(d)?, &to).map_err(io(&to))?;
    }
    let size = store.read_blob(&img.manifest_digest)?.len() as u64;
    let mut annotations = std::collections::BTreeMap::new();
    annotations.insert(
        REF_NAME.to_string(),
        r.tag.clone().unwrap_or_else(|| "latest".into()),
    );
    let index = Index {
        schema_version: 2,
        media_type: Some(MT_OCI_INDEX.into()),
        manifests: vec![Descriptor {
            media_type: MT_OCI_MANIFEST.into(),
            digest: img.manifest_digest,
            size,
            platform: None,
            annotations,
        }],
    };
    let p = dir.join("index.json");
    fs::write(
        &p,
        serde_json::to_vec_pretty(&index).map_err(|e| io(&p)(std::io::Error::other(e)))?,
    )
    .map_err(io(&p))?;
    let p = dir.join("oci-layout");
    fs::write(&p, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(&p))
}

/// Loads every manifest of the OCI layout in `dir` into `store`, tagged
/// `name:<ref.name>` (`name` defaults to the layout directory's name).
pub fn load(store: &Store, dir: &Path, name: Option<&str>) -> Result<Vec<Reference>, LayoutError> {
    let p = dir.join("index.json");
    let bad_index = |source: Box<dyn std::error::Error + Send + Sync>| LayoutError::BadIndex {
        dir: dir.to_path_buf(),
        source,
    };
    let bytes = fs::read(&p).map_err(|e| bad_index(e.into()))?;
    let index: Index = serde_json::from_slice(&bytes).map_err(|e| bad_index(e.into()))?;
    let base = name.map(str::to_string).unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_else(|| "image".into())
    });
    let put = |d: &Descriptor| -> Result<(), LayoutError> {
        let src = dir.join("blobs/sha256").join(digest_hex(&d.digest)?);
        let mut f = fs::File::open(&src).map_err(io(&src))?;
        store.put_blob(&mut f, &d.digest, Some(d.size))?;
        Ok(())
    };
    let mut loaded = Vec::new();
    for m in &index.manifests {
        put(m)?;
        let manifest = store.manifest(&m.digest)?;
        put(&manifest.config)?;
        for l in &manifest.layers {
            put(l)?;
        }
        let tag = m
            .annotations
            .get(REF_NAME)
            .cloned()
            .unwrap_or_else(|| "latest".into());
        let r = Reference::parse(&format!("{base}:{tag}"))
            .map_err(|e| LayoutError::NotLayout(dir.to_path_buf(), e.to_string()))?;
        store.tag(&r, &m.digest)?;
        loaded.push(r);
    }
    Ok(loaded)
}

/// One image in a `docker save` archive's `manifest.json`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Unpacks a tar archive (`docker save` output or a tarred OCI layout) into
/// `dir`, refusing entries that would land outside it.
fn untar(archive: &Path, dir: &Path) -> Result<(), LayoutError> {
    let f = fs::File::open(archive).map_err(io(archive))?;
    let mut ar = tar::Archive::new(f);
    for e in ar.entries().map_err(io(archive))? {
        let mut e = e.map_err(io(archive))?;
        // `unpack_in` refuses absolute paths and `..`.
        if !e.unpack_in(dir).map_err(io(archive))? {
            return Err(LayoutError::NotLayout(
                archive.to_path_buf(),
                "an entry points outside the archive".into(),
            ));
        }
    }
    Ok(())
}

/// Loads a `docker save` tarball, an OCI layout directory, or a tarred OCI
/// layout into `store`.
pub fn load_any(
    store: &Store,
    input: &Path,
    name: Option<&str>,
) -> Result<Vec<Reference>, LayoutError> {
    if input.is_dir() {
        return load(store, input, name);
    }
    let tmp = tempdir_in(store)?;
    let res = (|| {
        untar(input, &tmp)?;
        if tmp.join("index.json").is_file() && !tmp.join("manifest.json").is_file() {
            let base = name.map(str::to_string).unwrap_or_else(|| {
                input
                    .file_stem()
                    .map(|n| n.to_string_lossy().to_lowercase())
                    .unwrap_or_else(|| "image".into())
            });
            return load(store, &tmp, Some(&base));
        }
        load_docker_save(store, &tmp, input)
    })();
    let _ = fs::remove_dir_all(&tmp);
    res
}

fn tempdir_in(store: &Store) -> Result<PathBuf, LayoutError> {
    let p = store.root().join("tmp").join(format!(
        "load-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    fs::create_dir_all(&p).map_err(io(&p))?;
    Ok(p)
}

fn load_docker_save(
    store: &Store,
    dir: &Path,
    archive: &Path,
) -> Result<Vec<Reference>, LayoutError> {
    use super::oci::{Manifest, MT_DOCKER_MANIFEST};
    let p = dir.join("manifest.json");
    let bytes = fs::read(&p).map_err(|e| {
        LayoutError::NotLayout(
            archive.to_path_buf(),
            format!("neither a docker save archive nor an OCI layout ({e})"),
        )
    })?;
    let entries: Vec<DockerSaveEntry> = serde_json::from_slice(&bytes).map_err(|e| {
        LayoutError::NotLayout(archive.to_path_buf(), format!("manifest.json: {e}"))
    })?;
    let mut loaded = Vec::new();
    let put_file = |rel: &str, media_type: &str| -> Result<Descriptor, LayoutError> {
        let path = dir.join(rel);
        if rel.contains("..") || rel.starts_with('/') {
            return Err(LayoutError::NotLayout(
                archive.to_path_buf(),
                format!("bad path {rel:?}"),
            ));
        }
        let bytes = fs::read(&path).map_err(io(&path))?;
        let digest = store.put_bytes(&bytes)?;
        Ok(Descriptor {
            media_type: media_type.into(),
            digest,
            size: bytes.len() as u64,
            platform: None,
            annotations: Default::default(),
        })
    };
    for e in entries {
        let config = put_file(&e.config, "application/vnd.docker.container.image.v1+json")?;
        let layers = e
            .layers
            .iter()
            .map(|l| put_file(l, "application/vnd.docker.image.rootfs.diff.tar"))
            .collect::<Result<Vec<_>, _>>()?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MT_DOCKER_MANIFEST.into()),
            config,
            layers,
        };
        let mb = serde_json::to_vec(&manifest).map_err(|e| io(&p)(std::io::Error::other(e)))?;
        let digest = store.put_bytes(&mb)?;
        for t in e.repo_tags.unwrap_or_default() {
            let r = Reference::parse(&t)
                .map_err(|err| LayoutError::NotLayout(archive.to_path_buf(), err.to_string()))?;
            store.tag(&r, &digest)?;
            loaded.push(r);
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_layouts_name_the_cause_once() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join("store")).unwrap();
        let dir = d.path().join("layout");
        fs::create_dir_all(&dir).unwrap();
        let chain = crate::error::chain(&load(&store, &dir, None).unwrap_err());
        assert_eq!(
            chain,
            format!(
                "{} is not an OCI image layout: No such file or directory (os error 2)",
                dir.display()
            )
        );
        let digest = format!("sha256:{}", "ab".repeat(32));
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"m","digest":"{digest}","size":1}}]}}"#
        );
        fs::write(dir.join("index.json"), index).unwrap();
        let chain = crate::error::chain(&load(&store, &dir, None).unwrap_err());
        let blob = dir.join("blobs/sha256").join("ab".repeat(32));
        assert_eq!(
            chain,
            format!("{}: No such file or directory (os error 2)", blob.display())
        );
        fs::write(
            dir.join("index.json"),
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"m","digest":"sha256:ABC","size":1}]}"#,
        )
        .unwrap();
        let chain = crate::error::chain(&load(&store, &dir, None).unwrap_err());
        assert_eq!(chain.matches("invalid digest").count(), 1, "{chain}");
    }
}
