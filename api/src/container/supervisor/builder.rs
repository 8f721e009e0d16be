//! The builder microVM: how the rootfs cache ([`crate::storage::rootfs`])
//! gets an image's layers unpacked without the host ever reading a tar
//! entry. It is an ordinary husk microVM started like a container's (the
//! same kernel, initramfs and agent, the same jailed, seccomp-filtered
//! husk-vmm with its cgroup: `vmm.rs`, `jail.rs`), but bounded to
//! [`BUILDER_VCPUS`] vCPU and [`BUILDER_MEM_MIB`] MiB, with no network,
//! two disks (the blob disk read-only, the empty target disk) and
//! `husk.build` on its command line: its agent serves one `build` and
//! nothing else, and no image code runs in it.
//!
//! Every wait has a limit: the boot (`HUSK_BOOT_TIMEOUT`, as for
//! containers), the build (`HUSK_BUILD_TIMEOUT` seconds, [`BUILD_TIMEOUT`]
//! by default) and the power-off ([`POWER_OFF_TIMEOUT`]); past one, or on
//! any failure, husk-vmm is killed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_proto::agent::{Request, Response};
use husk_proto::boot::{BootParams, BuildDisks};
use husk_proto::vm::{BlockConfig, VmConfig};

use super::boot::BOOT_ATTEMPTS;
use super::guest_wait::{connect_agent, stop_vmm, worth_another_boot};
use super::vmm::{self, describe_exit, VmmProcess};
use crate::container::client::AgentClient;
use crate::container::client::ClientError;
use crate::storage::rootfs::{BuildJob, DiskBuilder};

/// vCPUs of a builder microVM.
pub const BUILDER_VCPUS: u32 = 1;
/// Memory of a builder microVM (MiB).
pub const BUILDER_MEM_MIB: u32 = 256;
/// How long a build may take by default (`HUSK_BUILD_TIMEOUT` overrides).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the guest may take to power off once it answered.
pub const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(30);

/// Builder microVM errors.
#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    /// Its working directory could not be made.
    #[error("cannot prepare the builder microVM's directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel, initramfs or husk-vmm is missing.
    #[error("the builder microVM")]
    Assets(#[from] crate::assets::AssetError),
    /// Its boot parameters could not be rendered.
    #[error("the builder microVM's boot parameters")]
    Params(#[from] husk_proto::boot::BootParamError),
    /// husk-vmm could not be started.
    #[error("cannot start the builder microVM")]
    Vmm(#[from] vmm::VmmError),
    /// The guest did not come up (the message ends with its console's last
    /// line).
    #[error("the builder microVM: {0}")]
    Boot(String),
    /// The agent refused or failed the build, or did not answer in time.
    #[error("the builder microVM")]
    Agent(#[from] ClientError),
    /// The agent answered something else than `built`.
    #[error("the builder microVM answered {0}")]
    Unexpected(String),
    /// The guest did not end after building.
    #[error("the builder microVM did not power off within {secs} s")]
    NoPowerOff {
        /// The limit.
        secs: u64,
    },
    /// husk-vmm ended with a failure.
    #[error("the builder microVM's husk-vmm {status}")]
    Exit {
        /// How it ended.
        status: String,
    },
}

/// Builds rootfs disks in builder microVMs whose working directories
/// (vm.json, logs, the vsock socket) go under `run_dir`.
#[derive(Debug, Clone)]
pub struct VmBuilder {
    run_dir: PathBuf,
}

/// A started builder VM, killed (if still running) and its directory
/// removed when dropped.
struct Running {
    vmm: VmmProcess,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        stop_vmm(&mut self.vmm);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            log::warn!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

impl VmBuilder {
    /// A builder using `run_dir` (the container's run directory).
    pub fn new(run_dir: PathBuf) -> Self {
        VmBuilder { run_dir }
    }

    /// The builder VM's own directory, fresh and private:
    /// `<run dir>/build-<run dir's name>`. Its name is also its husk-vmm's
    /// cgroup's, so a leftover of a killed supervisor is reused by the
    /// container's next build, not leaked.
    fn work_dir(&self) -> Result<PathBuf, BuilderError> {
        use std::os::unix::fs::DirBuilderExt;
        let name = self
            .run_dir
            .file_name()
            .map_or_else(|| "vm".into(), |n| n.to_string_lossy());
        let dir = self.run_dir.join(format!("build-{name}"));
        let fail = |source| BuilderError::Dir {
            path: dir.clone(),
            source,
        };
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(fail(e)),
            _ => {}
        }
        fs::create_dir_all(&self.run_dir).map_err(fail)?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(fail)?;
        Ok(dir)
    }

    /// Boots a builder VM up to its agent; a guest that stops by itself
    /// during boot (as the nested test host makes one do now and then) is
    /// booted once more, as a container's.
    fn boot(&self, job: &BuildJob<'_>) -> Result<(Running, AgentClient), BuilderError> {
        let assets = crate::assets::find()?;
        let mut attempt = 1;
        loop {
            let dir = self.work_dir()?;
            let config = vm_config(&assets, &dir, job)?;
            let api_sock = dir.join("vmm.sock");
            let vmm = vmm::spawn(&assets.vmm, &config, &dir, &vmm::Control::socket(&api_sock));
            let mut vm = Running {
                vmm: vmm.inspect_err(|_| {
                    let _ = fs::remove_dir_all(&dir);
                })?,
                dir,
            };
            let uds = vm.dir.join("vsock.sock");
            match connect_agent(&vm.dir.join("console.log"), &uds, &mut vm.vmm) {
                Ok(agent) => return Ok((vm, agent)),
                Err(e) => {
                    if !worth_another_boot(&mut vm.vmm, &api_sock) || attempt >= BOOT_ATTEMPTS {
                        return Err(BuilderError::Boot(e.message));
                    }
                    log::warn!(
                        "the builder guest's boot failed ({}); booting it once more",
                        e.message
                    );
                    attempt += 1;
                }
            }
        }
    }

    fn run(&self, job: &BuildJob<'_>) -> Result<(), BuilderError> {
        let (mut vm, mut agent) = self.boot(job)?;
        let request = Request::Build(job.request.clone());
        match agent.call_within(request, Some(build_timeout()))? {
            Response::Built { entries, bytes } => {
                log::info!("builder microVM unpacked {entries} entries ({bytes} bytes)")
            }
            other => return Err(BuilderError::Unexpected(format!("{other:?}"))),
        }
        // The agent powers the VM off once the host closes the connection.
        drop(agent);
        wait_for_exit(&mut vm.vmm, POWER_OFF_TIMEOUT)
    }
}

impl DiskBuilder for VmBuilder {
    fn build(&self, job: &BuildJob<'_>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.run(job).map_err(Into::into)
    }
}

/// `HUSK_BUILD_TIMEOUT` seconds (at least 1), or [`BUILD_TIMEOUT`].
fn build_timeout() -> Duration {
    parse_timeout(std::env::var("HUSK_BUILD_TIMEOUT").ok().as_deref())
}

fn parse_timeout(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(BUILD_TIMEOUT, Duration::from_secs)
}

/// The builder VM: one vCPU, little memory, no network, the blob disk
/// (`vda`, read-only) and the target disk (`vdb`), vsock for the agent.
fn vm_config(
    assets: &crate::assets::Assets,
    dir: &Path,
    job: &BuildJob<'_>,
) -> Result<VmConfig, BuilderError> {
    let params = BootParams {
        build: Some(BuildDisks {
            blobs: "vda".into(),
            target: "vdb".into(),
        }),
        ..BootParams::default()
    };
    let disk = |path: &Path, read_only| BlockConfig {
        path: path.to_path_buf(),
        read_only,
        serial: None,
    };
    let files = (dir.join("console.log"), dir.join("vsock.sock"));
    let shape = (BUILDER_VCPUS, BUILDER_MEM_MIB);
    Ok(VmConfig {
        disks: vec![disk(job.blobs, true), disk(job.target, false)],
        ..vmm::guest_vm(assets, &params.render()?, shape, files)
    })
}

/// Waits up to `limit` for husk-vmm to exit by itself with status 0 (the
/// guest powered off).
fn wait_for_exit(vmm: &mut VmmProcess, limit: Duration) -> Result<(), BuilderError> {
    let deadline = Instant::now() + limit;
    loop {
        match vmm.child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => {
                return Err(BuilderError::Exit {
                    status: describe_exit(&st),
                })
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                return Err(BuilderError::NoPowerOff {
                    secs: limit.as_secs(),
                })
            }
            Err(e) => {
                return Err(BuilderError::Exit {
                    status: format!("cannot be waited for: {e}"),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_proto::agent::{BlobExtent, BuildRequest};

    #[test]
    fn the_builder_vm_is_small_and_in_build_mode() {
        let assets = crate::assets::Assets {
            vmm: "/x/husk-vmm".into(),
            kernel: "/x/vmlinux".into(),
            initrd: "/x/initramfs.cpio.gz".into(),
        };
        let request = BuildRequest {
            layers: vec![BlobExtent {
                digest: "sha256:0".into(),
                media_type: "m".into(),
                offset: 0,
                size: 1,
            }],
        };
        let job = BuildJob {
            key: "k",
            blobs: Path::new("/c/tmp-k.blobs"),
            target: Path::new("/c/tmp-k.ext4"),
            request: &request,
        };
        let c = vm_config(&assets, Path::new("/run/b"), &job).unwrap();
        assert_eq!((c.vcpus, c.mem_mib), (1, 256));
        assert!(c.cmdline.ends_with(" husk.build=vda:vdb"), "{}", c.cmdline);
        assert!(c.nets.is_empty());
        let disks: Vec<(&Path, bool)> = c
            .disks
            .iter()
            .map(|d| (d.path.as_path(), d.read_only))
            .collect();
        assert_eq!(disks, [(job.blobs, true), (job.target, false)]);
        assert_eq!(
            c.vsock.map(|v| v.uds_path),
            Some(PathBuf::from("/run/b/vsock.sock"))
        );
    }

    #[test]
    fn the_work_dir_is_named_after_the_run_dir_and_fresh() {
        let tmp = tempfile::tempdir().unwrap();
        let b = VmBuilder::new(tmp.path().join("abc123"));
        let dir = b.work_dir().unwrap();
        assert_eq!(dir, tmp.path().join("abc123/build-abc123"));
        fs::write(dir.join("stale"), "x").unwrap();
        assert_eq!(b.work_dir().unwrap(), dir);
        assert!(!dir.join("stale").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn the_build_timeout_is_positive() {
        assert_eq!(parse_timeout(Some("5")), Duration::from_secs(5));
        for bad in [None, Some("0"), Some("-1"), Some("x")] {
            assert_eq!(parse_timeout(bad), BUILD_TIMEOUT, "{bad:?}");
        }
    }

    #[test]
    fn a_vm_that_does_not_end_is_reported_and_one_that_fails_too() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-vmm");
        fs::write(
            &fake,
            "#!/bin/sh\n[ \"$1\" = --config ] || exit 9\nexec sleep 30\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let config = VmConfig::default();
        let api_sock = dir.path().join("s");
        let control = vmm::Control::socket(&api_sock);
        let mut p = vmm::spawn(&fake, &config, dir.path(), &control).unwrap();
        let t0 = Instant::now();
        let err = wait_for_exit(&mut p, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, BuilderError::NoPowerOff { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        stop_vmm(&mut p);
        fs::write(&fake, "#!/bin/sh\nexit 3\n").unwrap();
        let mut p = vmm::spawn(&fake, &config, dir.path(), &control).unwrap();
        let err = wait_for_exit(&mut p, Duration::from_secs(10)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the builder microVM's husk-vmm exit status: 3"
        );
    }
}
