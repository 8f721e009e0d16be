//! A container's environment as the user gives it: `-e KEY=VALUE`, `-e KEY`
//! (taken from this environment, as Docker does) and `--env-file`.

use std::path::{Path, PathBuf};

/// An env file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("open {path}")]
pub struct EnvFileError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// `KEY=VALUE` stays; a bare `KEY` takes the value from this environment
/// (and is dropped when unset), as Docker does.
pub fn env_entry(e: &str) -> Option<String> {
    if e.contains('=') {
        Some(e.to_string())
    } else {
        std::env::var(e).ok().map(|v| format!("{e}={v}"))
    }
}

/// The `KEY=VALUE` entries of an `--env-file` (`#` comments, blank lines
/// skipped, bare `KEY`s as [`env_entry`]).
pub fn read_env_file(path: &Path) -> Result<Vec<String>, EnvFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| EnvFileError {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(env_entry)
        .collect())
}

/// Merges `KEY=VALUE` lists: later keys replace earlier ones.
pub fn merge_env(base: Vec<String>, extra: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in base.into_iter().chain(extra) {
        let key = e.split('=').next().unwrap_or("").to_string();
        out.retain(|x| x.split('=').next() != Some(key.as_str()));
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_merging() {
        let m = merge_env(
            vec!["PATH=/bin".into(), "A=1".into()],
            vec!["A=2".into(), "B=3".into()],
        );
        assert_eq!(m, vec!["PATH=/bin", "A=2", "B=3"]);
        std::env::set_var("HUSK_TEST_ENV_X", "y");
        assert_eq!(
            env_entry("HUSK_TEST_ENV_X"),
            Some("HUSK_TEST_ENV_X=y".into())
        );
        assert_eq!(env_entry("HUSK_TEST_ENV_UNSET_Q"), None);
    }

    #[test]
    fn env_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("env");
        std::fs::write(&p, "# comment\nA=1\n\nB=two words\n").unwrap();
        assert_eq!(read_env_file(&p).unwrap(), vec!["A=1", "B=two words"]);
        let err = read_env_file(&d.path().join("nope")).unwrap_err();
        assert!(crate::error::chain(&err).starts_with("open "), "{err}");
    }
}
