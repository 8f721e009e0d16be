//! Checkpoints of a running container (`husk checkpoint create`) and
//! starts from one (`husk start --checkpoint`), on husk-vmm's snapshots.
//!
//! Making one: the vCPUs are paused, husk-vmm writes its snapshot into the
//! staging directory its jail keeps, the supervisor copies the writable
//! layer beside it (the VM is paused, so the disk is what the guest's
//! memory says it is) and commits it (`container::checkpoint`). Then the
//! container stops (exit 0, no restart), or runs on with
//! `--leave-running`.
//!
//! Starting from one: the writable layer is put back, the address lease
//! the guest has configured is taken again, and husk-vmm restores the
//! snapshot instead of booting. Its vsock device resets every connection;
//! the agent still listens, and the init's output connections are opened
//! again by the agent (`agent/src/container/relay.rs`), so the supervisor
//! only listens for them and waits for the init, as after a start.

use super::*;
use crate::container::checkpoint::{
    CheckpointError, Checkpoints, DiskId, Meta, DISK_FILE, LAYERS_DIR,
};

/// The checkpoint a fork starts from, in the fork's own directory.
pub const FORK_CHECKPOINT: &str = "fork";

/// What a checkpoint needs from the running VM.
#[derive(Debug, Clone, Copy)]
pub(super) struct SnapshotInfo {
    /// The address lease the guest has configured.
    pub lease_index: Option<u32>,
    /// The image disk the guest has mounted.
    pub rootfs: Option<DiskId>,
    /// The VM was restored from a checkpoint (its init runs already).
    pub restored: bool,
}

/// A start from a checkpoint.
#[derive(Debug)]
pub(super) struct Restore {
    /// The checkpoint's directory.
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: Meta,
    name: String,
}

impl Restore {
    /// Checkpoint `name` of container `h`, if a checkpoint can carry it.
    pub(super) fn load(
        h: &Handle,
        config: &ContainerConfig,
        name: &str,
    ) -> Result<Self, StartError> {
        supported(config)?;
        let dir = Checkpoints::of(h).existing(name)?;
        let meta = Checkpoints::meta(&dir)?;
        Ok(Restore {
            dir,
            meta,
            name: name.to_string(),
        })
    }

    /// Whether it is a fork's (which takes an address of its own).
    pub(super) fn is_fork(&self) -> bool {
        self.meta.fork_of.is_some()
    }

    /// Checks that `rootfs` is the image disk the guest had mounted, and
    /// puts the checkpoint's writable layer in place of `rw`.
    pub(super) fn prepare_disks(&self, rootfs: &Path, rw: &Path) -> Result<(), StartError> {
        if DiskId::of(rootfs)? != self.meta.rootfs {
            return Err(CheckpointError::DiskChanged(self.name.clone()).into());
        }
        let tmp = rw.with_extension("restore");
        let copied = crate::storage::scratch::copy_sparse(&self.dir.join(DISK_FILE), &tmp)
            .map_err(StartError::from)
            .and_then(|()| {
                fs::rename(&tmp, rw)
                    .map_err(io_ctx(format!("cannot rename {}", tmp.display())))
                    .map_err(StartError::from)
            });
        if copied.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        copied
    }
}

/// Refuses what a checkpoint cannot carry: a terminal or an open stdin
/// (their connections do not survive the restore), volumes (they change
/// while the checkpoint waits), user-defined networks (their members'
/// addresses do).
pub(super) fn supported(config: &ContainerConfig) -> Result<(), StartError> {
    let why = if config.process.tty || config.process.open_stdin {
        "a terminal or an open stdin"
    } else if !config.volumes.is_empty() {
        "volumes"
    } else if !config.networks.is_empty() {
        "user-defined networks"
    } else {
        return Ok(());
    };
    fail(format!(
        "checkpoints of containers with {why} are not supported"
    ))
}

impl Sup {
    /// `husk checkpoint create`: saves the running container as checkpoint
    /// `name`, then stops it (exit 0, no restart) unless `leave_running`.
    pub(super) fn checkpoint(&self, name: &str, leave_running: bool) -> Result<(), StartError> {
        let cps = Checkpoints::of(&self.handle);
        cps.check_free(name)?;
        if self.config.auto_remove && !leave_running {
            // Stopping it would remove it, and its checkpoints with it.
            return fail("a container started with --rm would be removed with its checkpoint; use --leave-running");
        }
        let (was_paused, rootfs) = self.saveable()?;
        vmm::api_command(&self.vm.api_sock, "pause")?;
        let made = self.save(&cps, name, rootfs, None);
        if made.is_ok() && !leave_running {
            self.by_user.store(true, Ordering::SeqCst);
            let _ = self.events.send(Event::Checkpointed);
            self.kill_vmm();
            return Ok(());
        }
        if !was_paused {
            vmm::api_command(&self.vm.api_sock, "resume")?;
        }
        made
    }

    /// `husk fork`: saves the running container as checkpoint `fork` of
    /// the created container `child` (pausing it only for that), which then
    /// starts from it with an address of its own.
    pub(super) fn fork(&self, child: &str) -> Result<(), StartError> {
        if child.len() != 64 || !child.bytes().all(|b| b.is_ascii_hexdigit()) {
            return fail(format!("bad container id {child:?}"));
        }
        let (was_paused, rootfs) = self.saveable()?;
        let Some(root) = self.handle.dir.parent() else {
            return fail("no containers directory");
        };
        let into = Checkpoints::at(&root.join(child), child);
        vmm::api_command(&self.vm.api_sock, "pause")?;
        let made = self.save(&into, FORK_CHECKPOINT, rootfs, Some(self.handle.id.clone()));
        if !was_paused {
            vmm::api_command(&self.vm.api_sock, "resume")?;
        }
        made
    }

    /// Whether the container can be saved now: it runs, a checkpoint can
    /// carry it, and its image disk is known. Returns whether it is paused
    /// already, and that disk.
    fn saveable(&self) -> Result<(bool, DiskId), StartError> {
        supported(&self.config)?;
        let was_paused = {
            let st = lock(&self.state);
            if st.status != Status::Running {
                return fail(format!("Container {} is not running", self.handle.id));
            }
            st.paused
        };
        match self.vm.snapshot.rootfs {
            Some(rootfs) => Ok((was_paused, rootfs)),
            None => fail("this container's image disk is unknown; it cannot be saved"),
        }
    }

    /// Writes checkpoint `name` of the paused VM into `into` (this
    /// container's checkpoints, or a fork's).
    fn save(
        &self,
        into: &Checkpoints,
        name: &str,
        rootfs: DiskId,
        fork_of: Option<String>,
    ) -> Result<(), StartError> {
        let t = Instant::now();
        let staging = Checkpoints::of(&self.handle).staging();
        // A fork is restored at once: its memory may be a diff against the
        // file this VM's is mapped from (a template's or a checkpoint's),
        // whose unchanged pages every VM restored from it then shares. A
        // checkpoint is kept: whole.
        let verb = if fork_of.is_some() {
            "snapshot-diff"
        } else {
            "snapshot"
        };
        let command = format!("{verb} {}", staging.display());
        vmm::api_command(&self.vm.api_sock, &command)?;
        if fork_of.is_some() {
            super::layers::seal(&staging.join(LAYERS_DIR), self.vm.pid)?;
        }
        let meta = Meta {
            created: now_rfc3339(),
            lease_index: self.vm.snapshot.lease_index,
            guest_pid: lock(&self.state).guest_pid,
            rootfs,
            next_exec: self.next_exec.load(Ordering::SeqCst),
            fork_of,
        };
        into.commit_from(&staging, name, &self.handle.dir.join("rw.ext4"), &meta)?;
        log_line(
            &self.handle,
            &format!("checkpoint {name} made in {:.0} ms", ms(t.elapsed())),
        );
        Ok(())
    }
}
