//! Image references as Docker writes them: `busybox`, `busybox:1.36`,
//! `library/busybox`, `host:5000/ns/name:tag`, `name@sha256:...`, normalised
//! with Docker's defaults (registry `docker.io`, namespace `library/`, tag
//! `latest`). Grammar: distribution/reference.

use std::fmt;

/// Docker Hub's registry name in references.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Where Docker Hub's API lives.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Tag used when none is given.
pub const DEFAULT_TAG: &str = "latest";

/// Reference parsing errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// Empty string.
    #[error("invalid reference format: empty")]
    Empty,
    /// The repository has upper-case letters.
    #[error("invalid reference format: repository name {0:?} must be lowercase")]
    Uppercase(String),
    /// A path component breaks the grammar.
    #[error("invalid reference format: bad repository name component {0:?}")]
    BadComponent(String),
    /// The tag breaks the grammar.
    #[error("invalid reference format: bad tag {0:?}")]
    BadTag(String),
    /// The digest is not `sha256:` and 64 hex digits.
    #[error("invalid reference format: bad digest {0:?}")]
    BadDigest(String),
    /// Too long.
    #[error("invalid reference format: repository name longer than 255 characters")]
    TooLong,
}

/// A normalised reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host (and port), `docker.io` for Docker Hub.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, when not pinned by digest alone.
    pub tag: Option<String>,
    /// `sha256:<hex>` digest.
    pub digest: Option<String>,
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_lowercase() || b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

/// Whether `d` is `sha256:` and 64 lower-case hex digits.
pub fn valid_digest(d: &str) -> bool {
    super::oci::check_digest(d).is_ok()
}

fn is_domain(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

impl Reference {
    /// Parses and normalises a reference.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                if !valid_digest(d) {
                    return Err(ReferenceError::BadDigest(d.to_string()));
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[slash..].rfind(':') {
            Some(i) => {
                let t = &name_tag[slash + i + 1..];
                if !valid_tag(t) {
                    return Err(ReferenceError::BadTag(t.to_string()));
                }
                (&name_tag[..slash + i], Some(t.to_string()))
            }
            None => (name_tag, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if is_domain(first) => (first.to_string(), rest.to_string()),
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(path));
        }
        for c in path.split('/') {
            if !valid_component(c) {
                return Err(ReferenceError::BadComponent(c.to_string()));
            }
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if registry.len() + 1 + repository.len() > 255 {
            return Err(ReferenceError::TooLong);
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry's API host.
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short form Docker shows (`busybox:latest`, `host:5000/a/b:1`).
    pub fn familiar(&self) -> String {
        let name = if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.name()
        };
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{name}:{t}"),
            (None, Some(d)) => format!("{name}@{d}"),
            (None, None) => name,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_defaults() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(norm("ns/name"), "docker.io/ns/name:latest");
        assert_eq!(norm("host:5000/ns/name:tag"), "host:5000/ns/name:tag");
        assert_eq!(norm("localhost/foo"), "localhost/foo:latest");
        assert_eq!(
            norm(&format!("busybox@{D}")),
            format!("docker.io/library/busybox@{D}")
        );
        assert_eq!(norm(&format!("a/b:1@{D}")), format!("docker.io/a/b:1@{D}"));
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(
            (r.api_host(), r.familiar().as_str()),
            ("registry-1.docker.io", "busybox:latest")
        );
        assert_eq!(
            Reference::parse("127.0.0.1:5000/a/b:c").unwrap().familiar(),
            "127.0.0.1:5000/a/b:c"
        );
    }

    #[test]
    fn grammar_examples() {
        // Valid names from distribution/reference's tests.
        for ok in [
            "test_com",
            "test.com:10304/j",
            "test_com/foo",
            "test:8080/foo",
            "a__b",
            "a.b-c_d",
            "foo/bar/baz",
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
            "b.gcr.io/test.example.com/my-app:test.example.com",
            "xn--n3h.com/myimage:xn--n3h.com",
            "docker.io/library/ubuntu:16.04",
            "a---b",
        ] {
            Reference::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, want) in [
            ("", ReferenceError::Empty),
            (":justtag", ReferenceError::Empty),
            (
                "Uppercase:tag",
                ReferenceError::Uppercase("Uppercase".into()),
            ),
            (
                "aa/asdf$$^/aa",
                ReferenceError::BadComponent("asdf$$^".into()),
            ),
            ("a-/b", ReferenceError::BadComponent("a-".into())),
            ("a..b", ReferenceError::BadComponent("a..b".into())),
            ("foo:-bad", ReferenceError::BadTag("-bad".into())),
            (
                "foo@sha256:abc",
                ReferenceError::BadDigest("sha256:abc".into()),
            ),
            (
                "foo@md5:ffffffffffffffffffffffffffffffff",
                ReferenceError::BadDigest("md5:ffffffffffffffffffffffffffffffff".into()),
            ),
        ] {
            assert_eq!(Reference::parse(bad), Err(want), "{bad}");
        }
        assert!(Reference::parse(&format!("a/{}", "b".repeat(300))).is_err());
        assert!(Reference::parse(&format!("foo:{}", "t".repeat(129))).is_err());
    }
}
