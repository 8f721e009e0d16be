//! Containers: each one is a microVM run by its own supervisor process
//! (`supervisor.rs`), which owns `husk-vmm`, keeps the logs and writes the
//! state. No daemon: the CLI finds containers on disk.
//!
//! Layout under the data directory:
//!
//! ```text
//! containers/<64-hex id>/config.json     what the user asked for (written once; networks change)
//!                       /state.json      status, pids, exit code, timings (atomic)
//!                       /container.log   the init's stdout/stderr (`logs.rs` frames)
//!                       /console.log     the guest's serial console
//!                       /supervisor.log  the supervisor's own errors
//!                       /supervisor.lock flock held by the live supervisor
//! <run dir>/<12-hex id>/sup.sock         the supervisor's control socket
//!                      /vsock.sock(_N)   husk-vmm's vsock muxer sockets
//! ```
//!
//! The run directory is short (`/run/husk` as root) because Unix socket
//! paths are limited to 108 bytes.

pub mod archive;
pub mod checkpoint;
pub mod client;
pub mod control;
pub mod create;
pub mod env;
pub mod hostcopy;
pub mod ipc;
pub mod log_opts;
pub mod logs;
pub mod membership;
pub mod names;
pub mod netattach;
pub mod restart;
pub mod spec;
pub mod state;
pub mod supervisor;
pub mod template;
pub mod tmpfs;
pub mod tool;
pub mod top;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

pub use spec::ContainerConfig;
pub use state::{State, Status};

/// Container errors.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// A file or directory operation failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A JSON file did not parse.
    #[error("{path}: malformed")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// No container matches.
    #[error("No such container: {0}")]
    NotFound(String),
    /// A prefix matches several containers.
    #[error("multiple containers match {0:?}: use more of the ID")]
    Ambiguous(String),
    /// The name is taken.
    #[error("Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name.")]
    NameInUse {
        /// The name.
        name: String,
        /// Who has it.
        id: String,
    },
    /// A bad container name.
    #[error("Invalid container name ({0}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    BadName(String),
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, ContainerError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Writes `v` as pretty JSON to `path`, atomically.
fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(v).map_err(|source| ContainerError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &json)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| ContainerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The containers of one data directory.
#[derive(Debug, Clone)]
pub struct Containers {
    root: PathBuf,
    run_root: PathBuf,
}

/// One container's directories.
#[derive(Debug, Clone)]
pub struct Handle {
    /// 64-hex id.
    pub id: String,
    /// `containers/<id>`.
    pub dir: PathBuf,
    /// `<run dir>/<id12>`.
    pub run_dir: PathBuf,
}

/// The short (12-hex) form of an id.
pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The run directory for sockets: `$HUSK_RUN_DIR`, `/run/husk` as root,
/// else `$XDG_RUNTIME_DIR/husk` or `/tmp/husk-<uid>`.
pub fn default_run_root() -> PathBuf {
    if let Some(d) = std::env::var_os("HUSK_RUN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/husk");
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(|d| PathBuf::from(d).join("husk"))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/husk-{uid}")))
}

impl Containers {
    /// Opens (creating) `<data_dir>/containers`.
    pub fn open(data_dir: &Path) -> Result<Containers> {
        let root = data_dir.join("containers");
        if !root.exists() {
            fs::create_dir_all(&root).map_err(io_err(&root))?;
            // Configs hold environment variables: the owner's only.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).map_err(io_err(&root))?;
        }
        Ok(Containers {
            root,
            run_root: default_run_root(),
        })
    }

    /// The containers directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Handle for an id (no check that it exists).
    pub fn handle(&self, id: &str) -> Handle {
        Handle {
            id: id.to_string(),
            dir: self.root.join(id),
            run_dir: self.run_root.join(short_id(id)),
        }
    }

    /// Takes the lock that serialises name allocation and removal.
    pub fn lock(&self) -> Result<Flock<File>> {
        let path = self.root.join(".lock");
        crate::lockfile::lock_file(&path, FlockArg::LockExclusive)
            .and_then(|l| l.ok_or_else(|| io::Error::other("lock not taken")))
            .map_err(io_err(&path))
    }

    /// Every container id, oldest first.
    pub fn ids(&self) -> Result<Vec<String>> {
        let mut all = Vec::new();
        for e in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let e = e.map_err(io_err(&self.root))?;
            let name = e.file_name().to_string_lossy().to_string();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                let created = e
                    .path()
                    .join("config.json")
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok();
                if let Some(created) = created {
                    all.push((created, name));
                }
            }
        }
        all.sort();
        Ok(all.into_iter().map(|(_, id)| id).collect())
    }

    /// Every container's config and (live) state, oldest first. Containers
    /// being created or removed concurrently are skipped.
    pub fn list(&self) -> Result<Vec<(ContainerConfig, State)>> {
        let mut out = Vec::new();
        for id in self.ids()? {
            let h = self.handle(&id);
            if let (Ok(c), Ok(s)) = (h.config(), h.live_state()) {
                out.push((c, s));
            }
        }
        Ok(out)
    }

    /// Finds a container by full id, unique id prefix or name.
    pub fn find(&self, key: &str) -> Result<Handle> {
        let ids = self.ids()?;
        if let Some(id) = ids.iter().find(|id| *id == key) {
            return Ok(self.handle(id));
        }
        let wanted = key.strip_prefix('/').unwrap_or(key);
        for id in &ids {
            if self.handle(id).config().is_ok_and(|c| c.name == wanted) {
                return Ok(self.handle(id));
            }
        }
        let matches: Vec<&String> = ids.iter().filter(|id| id.starts_with(key)).collect();
        match matches[..] {
            [] => Err(ContainerError::NotFound(key.to_string())),
            [one] if !key.is_empty() => Ok(self.handle(one)),
            _ => Err(ContainerError::Ambiguous(key.to_string())),
        }
    }

    /// The id of the container called `name`, if any.
    pub fn name_owner(&self, name: &str) -> Result<Option<String>> {
        for id in self.ids()? {
            if self.handle(&id).config().is_ok_and(|c| c.name == name) {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Creates the directory of a new container and writes its config and
    /// a `created` state; the name must be free (checked under the lock).
    pub fn create(&self, config: &ContainerConfig) -> Result<Handle> {
        let _lock = self.lock()?;
        if !names::valid_name(&config.name) {
            return Err(ContainerError::BadName(config.name.clone()));
        }
        if let Some(id) = self.name_owner(&config.name)? {
            return Err(ContainerError::NameInUse {
                name: config.name.clone(),
                id,
            });
        }
        let h = self.handle(&config.id);
        let tmp = self.root.join(format!(".new-{}", config.id));
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        write_json(&tmp.join("config.json"), config)?;
        let state = serde_json::to_vec_pretty(&State::default()).unwrap_or_default();
        write_atomic(&tmp.join("state.json"), &state)?;
        fs::rename(&tmp, &h.dir).map_err(io_err(&h.dir))?;
        Ok(h)
    }

    /// Removes a container's directories (it must not be running).
    pub fn remove(&self, h: &Handle) -> Result<()> {
        let _lock = self.lock()?;
        let _ = fs::remove_dir_all(&h.run_dir);
        // Rename first so a half-removed container is never listed.
        let gone = self.root.join(format!(".rm-{}", h.id));
        match fs::rename(&h.dir, &gone) {
            Ok(()) => fs::remove_dir_all(&gone).map_err(io_err(&gone)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&h.dir)(e)),
        }
    }

    /// Removes leftovers of interrupted creations and removals. `create`
    /// and `remove` hold the containers lock while their `.new-`/`.rm-`
    /// directory exists, so the sweep runs only when it can take that lock
    /// at once: a `.new-` directory seen then belongs to a process that died.
    /// When another husk holds the lock the sweep is left to a later call.
    pub fn sweep(&self) {
        let path = self.root.join(".lock");
        let Ok(Some(_lock)) = crate::lockfile::lock_file(&path, FlockArg::LockExclusiveNonblock)
        else {
            return;
        };
        if let Ok(rd) = fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(".rm-") || n.starts_with(".new-") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

impl Handle {
    /// The container's config.
    pub fn config(&self) -> Result<ContainerConfig> {
        read_json(&self.dir.join("config.json"))
    }

    /// The state as last written.
    pub fn state(&self) -> Result<State> {
        read_json(&self.dir.join("state.json"))
    }

    /// Rewrites the config atomically (only its networks change after
    /// creation: `network connect` and `disconnect`).
    pub fn write_config(&self, c: &ContainerConfig) -> Result<()> {
        write_json(&self.dir.join("config.json"), c)
    }

    /// Writes the state atomically.
    pub fn write_state(&self, s: &State) -> Result<()> {
        write_json(&self.dir.join("state.json"), s)
    }

    /// Cancels a restart its restart policy has scheduled (`stop` of a
    /// container waiting to be restarted, as Docker's).
    pub fn cancel_restart(&self) -> Result<()> {
        let mut s = self.state()?;
        if s.restarting {
            s.restarting = false;
            self.write_state(&s)?;
        }
        Ok(())
    }

    /// Whether a supervisor holds this container's lock.
    pub fn supervisor_alive(&self) -> bool {
        let path = self.dir.join("supervisor.lock");
        path.exists()
            && matches!(
                crate::lockfile::lock_file(&path, FlockArg::LockExclusiveNonblock),
                Ok(None)
            )
    }

    /// The state, corrected when its supervisor died without writing the
    /// end (SIGKILL): such a container is `exited` with status 137.
    pub fn live_state(&self) -> Result<State> {
        let mut s = self.state()?;
        if s.status == Status::Running && !self.supervisor_alive() {
            // Re-read: the supervisor may have just written the end.
            s = self.state()?;
            if s.status == Status::Running {
                s.mark_exited(137, Some("the container's supervisor was killed".into()));
                s.ports.clear();
                let _ = self.write_state(&s);
            }
        }
        Ok(s)
    }

    /// The supervisor's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir.join("sup.sock")
    }

    /// husk-vmm's vsock socket.
    pub fn vsock_socket(&self) -> PathBuf {
        self.run_dir.join("vsock.sock")
    }

    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("container.log")
    }
}

/// A new random 64-hex container id.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    if File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        use sha2::Digest;
        b.copy_from_slice(&sha2::Sha256::digest(format!("{t}{}", std::process::id())));
    }
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: &str, name: &str) -> ContainerConfig {
        ContainerConfig {
            id: id.into(),
            name: name.into(),
            ..ContainerConfig::default()
        }
    }

    #[test]
    fn create_find_remove() {
        let d = tempfile::tempdir().unwrap();
        let cs = Containers::open(d.path()).unwrap();
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        cs.create(&cfg(&a, "web")).unwrap();
        let err = cs.create(&cfg(&b, "web")).unwrap_err().to_string();
        assert!(err.contains("is already in use by container"), "{err}");
        cs.create(&cfg(&b, "db")).unwrap();
        assert_eq!(cs.find("web").unwrap().id, a);
        assert_eq!(cs.find(&b[..12]).unwrap().id, b);
        assert_eq!(cs.find(&a).unwrap().id, a);
        assert!(matches!(cs.find("nope"), Err(ContainerError::NotFound(_))));
        assert!(cs.create(&cfg(&new_id(), "bad/name")).is_err());
        assert_eq!(cs.list().unwrap().len(), 2);
        cs.remove(&cs.find("web").unwrap()).unwrap();
        assert!(cs.find("web").is_err());
        assert_eq!(cs.ids().unwrap(), vec![b]);
    }

    #[test]
    fn creations_survive_concurrent_sweeps() {
        let d = tempfile::tempdir().unwrap();
        let cs = Containers::open(d.path()).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let sweepers: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        while !done.load(std::sync::atomic::Ordering::Relaxed) {
                            cs.sweep();
                        }
                    })
                })
                .collect();
            let creators: Vec<_> = (0..6)
                .map(|t| {
                    let cs = &cs;
                    s.spawn(move || {
                        (0..15)
                            .filter_map(|i| {
                                cs.create(&cfg(&new_id(), &format!("c{t}-{i}")))
                                    .err()
                                    .map(|e| crate::error::chain(&e))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let failed: Vec<String> = creators
                .into_iter()
                .flat_map(|c| c.join().unwrap_or_default())
                .collect();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            for s in sweepers {
                s.join().unwrap();
            }
            assert!(
                failed.is_empty(),
                "{} creations failed, first: {:?}",
                failed.len(),
                failed.first()
            );
        });
        assert_eq!(cs.ids().unwrap().len(), 90);
        // A creation that died leaves a `.new-` directory: swept.
        let dead = cs.root().join(format!(".new-{}", new_id()));
        fs::create_dir(&dead).unwrap();
        cs.sweep();
        assert!(!dead.exists());
    }

    #[test]
    fn dead_supervisor_means_exited() {
        let d = tempfile::tempdir().unwrap();
        let cs = Containers::open(d.path()).unwrap();
        let h = cs.create(&cfg(&new_id(), "xy")).unwrap();
        let mut s = h.state().unwrap();
        s.status = Status::Running;
        h.write_state(&s).unwrap();
        // No lock held: the supervisor is gone.
        let live = h.live_state().unwrap();
        assert_eq!(live.status, Status::Exited);
        assert_eq!(live.exit_code, Some(137));
        // A held lock means alive.
        let mut s = h.state().unwrap();
        s.status = Status::Running;
        h.write_state(&s).unwrap();
        let f = File::create(h.dir.join("supervisor.lock")).unwrap();
        let _held = Flock::lock(f, FlockArg::LockExclusive).unwrap();
        assert!(h.supervisor_alive());
        assert_eq!(h.live_state().unwrap().status, Status::Running);
    }
}
