//! The OCI image types husk reads and writes (image-spec 1.1): descriptors,
//! manifests, indexes and the parts of the image config the runtime uses.
//! Docker schema-2 manifests and manifest lists share these shapes.
//!
//! Every digest is checked when a manifest, index or config is parsed
//! (`sha256:` and 64 lowercase hex digits), so nothing downstream sees a
//! malformed one: registry content is hostile.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// OCI image manifest.
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer.
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker schema-2 manifest.
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The only digest algorithm husk stores and verifies.
pub const SHA256: &str = "sha256";

/// Longest part of a bad digest quoted in an error message.
const QUOTE_MAX: usize = 80;

/// Digest errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// A well-formed digest of an algorithm husk does not verify.
    #[error("unsupported digest algorithm {algorithm:?} in {digest:?}: husk verifies sha256 only")]
    UnsupportedAlgorithm {
        /// The algorithm.
        algorithm: String,
        /// The digest (shortened).
        digest: String,
    },
    /// Not `sha256:` and 64 lowercase hex digits.
    #[error("invalid digest {0:?}: want sha256: and 64 lowercase hex digits")]
    Malformed(String),
}

/// At most `QUOTE_MAX` characters of `s`, for error messages.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX) {
        Some((i, _)) => format!("{}...", s.get(..i).unwrap_or_default()),
        None => s.to_string(),
    }
}

fn is_lower_hex(h: &str, len: usize) -> bool {
    h.len() == len
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks that `d` is `sha256:` and 64 lowercase hex digits. Other
/// algorithms of the image spec (`sha512:` and 128 hex digits, or any
/// `alg:hex`) are refused as unsupported.
pub fn check_digest(d: &str) -> Result<(), DigestError> {
    let (alg, hex) = d
        .split_once(':')
        .ok_or_else(|| DigestError::Malformed(quote(d)))?;
    if alg == SHA256 && is_lower_hex(hex, 64) {
        return Ok(());
    }
    let known = (alg == "sha512" && is_lower_hex(hex, 128))
        || (alg != SHA256
            && !alg.is_empty()
            && alg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && !hex.is_empty()
            && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if known {
        return Err(DigestError::UnsupportedAlgorithm {
            algorithm: alg.to_string(),
            digest: quote(d),
        });
    }
    Err(DigestError::Malformed(quote(d)))
}

/// The 12-digit short form of a digest (`sha256:0123456789ab...` →
/// `0123456789ab`); the whole string when it is shorter or not sha256.
pub fn short_digest(d: &str) -> &str {
    d.strip_prefix("sha256:")
        .and_then(|h| h.get(..12))
        .filter(|h| h.is_ascii())
        .unwrap_or(d)
}

/// The hex part of a checked sha256 digest.
pub fn digest_hex(d: &str) -> Result<&str, DigestError> {
    check_digest(d)?;
    d.strip_prefix("sha256:")
        .ok_or_else(|| DigestError::Malformed(quote(d)))
}

fn de_digest<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    let d = String::deserialize(de)?;
    check_digest(&d).map_err(serde::de::Error::custom)?;
    Ok(d)
}

fn de_digests<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(de)?;
    for d in &v {
        check_digest(d).map_err(serde::de::Error::custom)?;
    }
    Ok(v)
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:<hex>`, checked when parsed.
    #[serde(deserialize_with = "de_digest")]
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform (in indexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An index entry's platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// Variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests.
    pub manifests: Vec<Descriptor>,
}

impl Index {
    /// The linux/amd64 manifest, as Docker picks it on this host.
    pub fn linux_amd64(&self) -> Option<&Descriptor> {
        self.manifests.iter().find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
    }
}

/// The image config fields a container needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// Default user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

/// An image config (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture.
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// Runtime defaults.
    #[serde(default)]
    pub config: RunConfig,
    /// Layer diff ids.
    pub rootfs: RootFs,
    /// Creation time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// The config's rootfs section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub type_: String,
    /// sha256 of each uncompressed layer, checked when parsed.
    #[serde(deserialize_with = "de_digests")]
    pub diff_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn manifest_with(layer_digest: &str) -> String {
        serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": GOOD, "size": 2},
            "layers": [{"mediaType": MT_OCI_LAYER_GZIP, "digest": layer_digest, "size": 5}],
        })
        .to_string()
    }

    #[test]
    fn digests_are_checked() {
        assert_eq!(check_digest(GOOD), Ok(()));
        let upper = GOOD.replace('a', "A");
        let sha512 = format!("sha512:{}", "0".repeat(128));
        let cases = [
            ("sha256:0123", "invalid digest"),
            ("sha256:", "invalid digest"),
            ("", "invalid digest"),
            ("sha256", "invalid digest"),
            (upper.as_str(), "invalid digest"),
            (
                "sha256:é123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd",
                "invalid digest",
            ),
            ("sha256:../../../../etc/passwd", "invalid digest"),
            (sha512.as_str(), "unsupported digest algorithm \"sha512\""),
            (
                "md5:d41d8cd98f00b204e9800998ecf8427e",
                "unsupported digest algorithm \"md5\"",
            ),
        ];
        for (d, want) in cases {
            let e = check_digest(d).expect_err(d).to_string();
            assert!(e.contains(want), "{d:?}: {e}");
        }
        let long = format!("sha256:{}", "é".repeat(1000));
        assert!(check_digest(&long).unwrap_err().to_string().chars().count() < 200);
    }

    #[test]
    fn manifests_index_and_config_refuse_bad_digests() {
        let m: Manifest = serde_json::from_str(&manifest_with(GOOD)).unwrap();
        assert_eq!(m.layers[0].digest, GOOD);
        for bad in ["sha256:abc", "sha256:ü", &GOOD.to_uppercase()] {
            let e = serde_json::from_str::<Manifest>(&manifest_with(bad)).unwrap_err();
            assert!(e.to_string().contains("invalid digest"), "{bad}: {e}");
        }
        let index =
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"m","digest":"sha256:12","size":1}]}"#;
        assert!(serde_json::from_str::<Index>(index).is_err());
        let config = r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#;
        assert!(serde_json::from_str::<ImageConfig>(config).is_err());
    }

    #[test]
    fn short_forms_never_panic() {
        assert_eq!(short_digest(GOOD), "0123456789ab");
        assert_eq!(short_digest("sha256:01"), "sha256:01");
        assert_eq!(short_digest("sha256:ééééééé"), "sha256:ééééééé");
        assert_eq!(digest_hex(GOOD).unwrap().len(), 64);
        assert!(digest_hex("sha256:../x").is_err());
    }

    /// A small xorshift generator: deterministic "fuzz" input without a
    /// dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next().to_le_bytes()[0]).collect()
        }
    }

    #[test]
    fn random_manifest_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let template = manifest_with(GOOD).into_bytes();
        for i in 0..20_000 {
            let input = match i % 3 {
                // Random bytes.
                0 => {
                    let n = usize::try_from(rng.next() % 300).unwrap_or(0);
                    rng.bytes(n)
                }
                // A valid manifest with a few bytes flipped.
                1 => {
                    let mut b = template.clone();
                    for _ in 0..1 + rng.next() % 4 {
                        let at = usize::try_from(rng.next() % b.len() as u64).unwrap_or(0);
                        b[at] = rng.bytes(1)[0];
                    }
                    b
                }
                // A random (often non-UTF-8 or short) digest string.
                _ => {
                    let n = usize::try_from(rng.next() % 80).unwrap_or(0);
                    let d = String::from_utf8_lossy(&rng.bytes(n)).into_owned();
                    manifest_with(&format!("sha256:{d}")).into_bytes()
                }
            };
            if let Ok(m) = serde_json::from_slice::<Manifest>(&input) {
                for d in std::iter::once(&m.config).chain(&m.layers) {
                    assert_eq!(check_digest(&d.digest), Ok(()));
                    assert_eq!(short_digest(&d.digest).len(), 12);
                }
            }
            let _ = serde_json::from_slice::<Index>(&input);
        }
    }
}
