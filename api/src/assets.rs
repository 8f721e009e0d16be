//! Where `husk` finds what a microVM needs: the `husk-vmm` binary, the guest
//! kernel (`vmlinux`) and the guest initramfs (`initramfs.cpio.gz`, whose
//! `/init` is husk-agent).
//!
//! Lookup order for the directory holding all three:
//! 1. `$HUSK_LIB_DIR`;
//! 2. `<dir of the husk executable>/../lib/husk` (an installed layout such as
//!    `/usr/local/bin/husk` + `/usr/local/lib/husk/`), when it has `husk-vmm`;
//! 3. the directory of the husk executable itself (the build tree:
//!    `target/release/`, where `tests/lib/build.sh` puts the kernel and the
//!    initramfs next to the binaries).
//!
//! `$HUSK_VMM`, `$HUSK_KERNEL` and `$HUSK_INITRD` override single files.

use std::path::{Path, PathBuf};

/// Asset lookup errors.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// A file is missing.
    #[error("{what} not found at {path} (set {var} or HUSK_LIB_DIR; ./run.sh builds it)")]
    Missing {
        /// What the file is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The variable that overrides it.
        var: &'static str,
    },
    /// The running executable's path is unknown.
    #[error("cannot find the husk executable's directory")]
    NoExe(#[source] std::io::Error),
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, AssetError>;

/// The files a microVM is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assets {
    /// The `husk-vmm` binary.
    pub vmm: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initramfs.
    pub initrd: PathBuf,
}

/// The asset directory (see the module docs); it may not exist.
pub fn lib_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("HUSK_LIB_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().map_err(AssetError::NoExe)?;
    let bin = exe.parent().unwrap_or(Path::new("/")).to_path_buf();
    let installed = bin.join("../lib/husk");
    if installed.join("husk-vmm").is_file() {
        return Ok(installed);
    }
    Ok(bin)
}

fn pick(var: &'static str, dir: &Path, name: &str, what: &'static str) -> Result<PathBuf> {
    let path = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join(name));
    if path.is_file() {
        Ok(path)
    } else {
        Err(AssetError::Missing { what, path, var })
    }
}

/// Finds the three assets; a missing one is an error naming where it was
/// looked for.
pub fn find() -> Result<Assets> {
    let dir = lib_dir()?;
    Ok(Assets {
        vmm: pick("HUSK_VMM", &dir, "husk-vmm", "husk-vmm")?,
        kernel: pick("HUSK_KERNEL", &dir, "vmlinux", "the guest kernel")?,
        initrd: pick(
            "HUSK_INITRD",
            &dir,
            "initramfs.cpio.gz",
            "the guest initramfs",
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_names_the_path_and_variable() {
        let err = pick(
            "HUSK_TEST_UNSET_VAR",
            Path::new("/nonexistent"),
            "vmlinux",
            "the guest kernel",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "the guest kernel not found at /nonexistent/vmlinux (set HUSK_TEST_UNSET_VAR or HUSK_LIB_DIR; ./run.sh builds it)"
        );
    }

    #[test]
    fn finds_files_in_a_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("vmlinux"), b"k").unwrap();
        assert_eq!(
            pick("HUSK_TEST_UNSET_VAR", d.path(), "vmlinux", "k").unwrap(),
            d.path().join("vmlinux")
        );
    }
}
