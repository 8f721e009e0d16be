//! The OCI runtime rows: `crun run` / `runc run` of a bundle made from the
//! same unpacked image (the runtime's own `spec`, with `true` as the process
//! and no terminal), each start a new container that the runtime deletes
//! when `true` exits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::report::Unavailable;
use super::rootfs::ImageTree;
use super::{find_program, io_err, run_checked, timed, Result, Starter};

/// The runtimes measured when installed.
pub const RUNTIMES: &[&str] = &["crun", "runc"];

/// `RUNTIME run` of a bundle of the image.
#[derive(Debug)]
pub struct OciRun {
    runtime: &'static str,
    program: PathBuf,
    root: PathBuf,
    bundle: PathBuf,
    made: bool,
    no_pivot: bool,
}

impl OciRun {
    /// The row of `runtime` over `tree`; unavailable when it is not
    /// installed. The bundle is made at the first start (a failure there is
    /// the row's error).
    pub fn new(runtime: &'static str, tree: &ImageTree) -> std::result::Result<Self, Unavailable> {
        let unavailable = |reason: String| Unavailable {
            name: runtime.into(),
            reason,
        };
        let program = find_program(runtime)
            .ok_or_else(|| unavailable(format!("{runtime} is not installed")))?;
        let bundle = tree
            .side_dir(runtime)
            .map_err(|e| unavailable(crate::error::chain(&e)))?;
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        Ok(OciRun {
            runtime,
            program,
            root: tree.root().to_path_buf(),
            bundle,
            made: false,
            no_pivot: root_is_initramfs(&mounts),
        })
    }

    /// `RUNTIME spec` in the bundle, then the process, terminal and root
    /// set for this bench.
    fn make_bundle(&self) -> Result<()> {
        let mut spec = Command::new(&self.program);
        spec.arg("spec").current_dir(&self.bundle);
        run_checked(&mut spec, &format!("{} spec", self.runtime))?;
        let path = self.bundle.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
        let mut config: serde_json::Value = serde_json::from_str(&text)?;
        edit_config(&mut config, &self.root);
        let text = serde_json::to_string_pretty(&config)?;
        std::fs::write(&path, text).map_err(io_err("write", &path))
    }
}

/// Sets a runtime's default config to run `true` without a terminal on
/// `root`.
pub fn edit_config(config: &mut serde_json::Value, root: &Path) {
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["true"]);
    config["root"]["path"] = root.to_string_lossy().into_owned().into();
}

/// Whether `/` is the initramfs (`rootfs`), where `pivot_root` fails and
/// the runtimes need `--no-pivot` (the husk machine, the nested test host).
/// `mounts` is `/proc/mounts`; the last mount on `/` is the one in effect.
pub fn root_is_initramfs(mounts: &str) -> bool {
    mounts.lines().rev().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, point, fstype) = (f.next(), f.next()?, f.next()?);
        (point == "/").then_some(fstype)
    }) == Some("rootfs")
}

impl Starter for OciRun {
    fn name(&self) -> &str {
        self.runtime
    }

    fn what(&self) -> String {
        format!(
            "{} run{} (OCI bundle of the same image), true",
            self.runtime,
            if self.no_pivot { " --no-pivot" } else { "" }
        )
    }

    fn start_once(&mut self, round: usize) -> Result<Duration> {
        if !self.made {
            self.make_bundle()?;
            self.made = true;
        }
        let id = format!("husk-bench-{}-{round}", std::process::id());
        let mut cmd = Command::new(&self.program);
        cmd.arg("run");
        if self.no_pivot {
            cmd.arg("--no-pivot");
        }
        cmd.arg(&id).current_dir(&self.bundle);
        let program = format!("{} run", self.runtime);
        timed(|| run_checked(&mut cmd, &program).map(drop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_root_is_seen_through_later_mounts() {
        assert!(root_is_initramfs(
            "rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n"
        ));
        assert!(!root_is_initramfs(
            "/dev/sda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n"
        ));
        assert!(!root_is_initramfs(
            "rootfs / rootfs rw 0 0\n/dev/vda / ext4 rw 0 0\n"
        ));
        assert!(!root_is_initramfs(""));
    }

    #[test]
    fn config_runs_true_on_the_tree_without_a_terminal() {
        let mut c = serde_json::json!({
            "process": {"terminal": true, "args": ["sh"], "cwd": "/"},
            "root": {"path": "rootfs", "readonly": true}
        });
        edit_config(&mut c, Path::new("/data/bench-x/rootfs"));
        assert_eq!(
            c,
            serde_json::json!({
                "process": {"terminal": false, "args": ["true"], "cwd": "/"},
                "root": {"path": "/data/bench-x/rootfs", "readonly": true}
            })
        );
    }

    #[test]
    fn makes_the_bundle_and_runs_crun_on_it() {
        let data = tempfile::tempdir().unwrap();
        let tree = ImageTree::unpack(data.path(), "busybox").unwrap();
        let mut s = OciRun::new("crun", &tree).expect("crun is in tests/apt-packages.txt");
        assert!(s.what().starts_with("crun run"));
        let started = s.start_once(0);
        let config = std::fs::read_to_string(s.bundle.join("config.json")).unwrap();
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(config["process"]["args"], serde_json::json!(["true"]));
        assert_eq!(
            config["root"]["path"],
            tree.root().to_string_lossy().as_ref()
        );
        // crun itself ran on the bundle: it either ran `true` or refused
        // this host's cgroups (a build machine with hybrid cgroups).
        match started {
            Ok(d) => assert!(d > Duration::ZERO),
            Err(super::super::BenchError::Status {
                program, stderr, ..
            }) => {
                assert_eq!(program, "crun run");
                assert!(stderr.contains("cgroup"), "{stderr}");
            }
            Err(e) => panic!("{e}"),
        }
    }
}
