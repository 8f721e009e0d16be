//! Running a container: its init process in new mount, PID, UTS, IPC,
//! cgroup and (optionally) network namespaces, under cgroup v2 limits, in a
//! pivoted root; and `exec` of more processes into it with `setns`.

pub mod cgroup;
pub mod etc;
pub mod privileges;
pub mod process;
pub mod relay;
pub mod rootfs;
pub mod sys;
pub mod user;

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::reaper::Reaper;
use cgroup::Cgroup;
use husk_layers::scope::{self, ScopeError};
use husk_proto::agent::{ConsoleSize, Limits, MountSpec, ProcessSpec};
use process::ChildPlan;
use relay::{Pipes, Relay};

/// PATH when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Container errors.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The id is not `[A-Za-z0-9_.-]{1,64}`.
    #[error("invalid container or exec id {id:?}")]
    InvalidId {
        /// As given.
        id: String,
    },
    /// The process spec is unusable.
    #[error("invalid process: {reason}")]
    InvalidProcess {
        /// Why.
        reason: String,
    },
    /// The user or group is not in the rootfs's passwd/group.
    #[error("user {spec:?}: no such user or group {what:?} in the image")]
    UnknownUser {
        /// The user spec.
        spec: String,
        /// The missing name.
        what: String,
    },
    /// A path in the rootfs could not be resolved safely.
    #[error("path {path:?} in the rootfs refused")]
    Scope {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: ScopeError,
    },
    /// A mount target inside the rootfs is a symlink.
    #[error("mount target {path:?} is a symlink")]
    MountTargetSymlink {
        /// The target.
        path: PathBuf,
    },
    /// File-system access failed.
    #[error("cannot access {path:?}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Creating the process failed at `step`.
    #[error("starting the process failed at {step}")]
    Spawn {
        /// The failed step.
        step: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The request does not fit the container's state.
    #[error("container {id:?} {reason}")]
    InvalidState {
        /// Container id.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// No such exec.
    #[error("no exec {exec_id:?} in container {id:?}")]
    NoSuchExec {
        /// Container id.
        id: String,
        /// Exec id.
        exec_id: String,
    },
    /// `execve` found no such file (Docker's exit code 127).
    #[error("exec: {command:?}: {}", if *searched { "executable file not found in $PATH" } else { "no such file or directory" })]
    CommandNotFound {
        /// argv\[0\].
        command: String,
        /// Whether `PATH` was searched (argv\[0\] has no `/`).
        searched: bool,
    },
    /// `execve` found the file but cannot run it (Docker's exit code 126).
    #[error("exec: {command:?}: {reason}")]
    CommandNotExecutable {
        /// argv\[0\].
        command: String,
        /// "permission denied", "exec format error", ...
        reason: &'static str,
    },
    /// The working directory could not be entered.
    #[error("cannot change to the working directory {workdir:?}")]
    Workdir {
        /// The directory.
        workdir: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The working directory could not be created in the rootfs.
    #[error("working directory {workdir:?}")]
    WorkdirRefused {
        /// The directory.
        workdir: String,
        /// Why.
        #[source]
        source: ScopeError,
    },
    /// The process has no terminal to resize.
    #[error("container {id:?}: the process has no terminal (not started with tty)")]
    NoTerminal {
        /// Container id.
        id: String,
    },
    /// Sending a signal failed.
    #[error("cannot send signal {signal}")]
    Signal {
        /// The signal.
        signal: i32,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, ContainerError>;

/// Checks a container or exec id: `[A-Za-z0-9_.-]{1,64}`, not `.`/`..`.
pub fn validate_id(id: &str) -> Result<()> {
    if husk_proto::agent::valid_id(id) {
        Ok(())
    } else {
        Err(ContainerError::InvalidId { id: id.to_string() })
    }
}

/// What a container is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerConfig {
    /// Id (validated).
    pub id: String,
    /// The assembled root filesystem (e.g. the merged overlay).
    pub rootfs: PathBuf,
    /// The init process.
    pub process: ProcessSpec,
    /// Hostname (the id when empty).
    pub hostname: String,
    /// Volumes, tmpfs mounts, a read-only root.
    pub mounts: rootfs::UserMounts,
    /// Limits.
    pub limits: Limits,
    /// New network namespace.
    pub new_network: bool,
    /// Generated files bind-mounted over `/etc/*` (see [`etc`]), under
    /// `mounts`.
    pub etc_files: Vec<MountSpec>,
    /// The cgroup v2 root to create the container's cgroup under.
    pub cgroup_root: PathBuf,
    /// Capabilities and `no_new_privs` of its init and execs.
    pub security: husk_proto::security::Security,
}

/// A process's stdio; `None` is /dev/null.
#[derive(Debug, Default)]
pub struct Stdio {
    /// stdin.
    pub stdin: Option<OwnedFd>,
    /// stdout.
    pub stdout: Option<OwnedFd>,
    /// stderr.
    pub stderr: Option<OwnedFd>,
    /// How to open an output stream's connection again once it broke (the
    /// container's init, whose microVM may be restored from a checkpoint:
    /// its host connections are then reset, and the host listens again).
    pub reopen: Option<relay::Reopen>,
}

/// A created (and maybe started) container.
#[derive(Debug)]
pub struct Container {
    config: ContainerConfig,
    cgroup: Cgroup,
    init: Option<i32>,
    execs: HashMap<String, i32>,
    /// pty masters of `tty` processes, by exec id (`None`: the init).
    ttys: HashMap<Option<String>, File>,
    /// stdio relays of the other processes, by exec id (`None`: the init).
    relays: HashMap<Option<String>, Relay>,
}

/// The agent's side of a process's stdio.
#[derive(Debug)]
enum Attach {
    /// A pty master (pumped already).
    Tty(File),
    /// Pipes to relay once the process runs.
    Pipes(Pipes),
}

fn c(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| ContainerError::InvalidProcess {
        reason: format!("{s:?} contains NUL"),
    })
}

/// Builds argv, envp, exec candidates and identity for `p` in `rootfs`.
fn process_plan(rootfs: &Path, p: &ProcessSpec, stdio: [OwnedFd; 3]) -> Result<ChildPlan> {
    let args: Vec<&String> = p.entrypoint.iter().chain(&p.cmd).collect();
    let Some(arg0) = args.first() else {
        return Err(ContainerError::InvalidProcess {
            reason: "empty entrypoint and cmd".into(),
        });
    };
    let identity = user::resolve_user(rootfs, &p.user)?;
    let mut env: Vec<String> = p.env.clone();
    let has = |env: &[String], k: &str| {
        env.iter()
            .any(|e| e.split_once('=').map(|(a, _)| a) == Some(k))
    };
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", identity.home));
    }
    if p.tty && !has(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let candidates = if arg0.contains('/') {
        vec![c(arg0)?]
    } else {
        path.split(':')
            .map(|d| if d.is_empty() { "." } else { d })
            .map(|d| c(&format!("{}/{arg0}", d.trim_end_matches('/'))))
            .collect::<Result<_>>()?
    };
    let workdir = if p.workdir.is_empty() {
        "/"
    } else {
        &p.workdir
    };
    Ok(ChildPlan {
        mounts: Vec::new(),
        hostname: None,
        setns: Vec::new(),
        unshare_cgroup: false,
        loopback_up: false,
        security: Default::default(),
        identity,
        workdir: c(workdir)?,
        argv: args.iter().map(|a| c(a)).collect::<Result<_>>()?,
        envp: env.iter().map(|e| c(e)).collect::<Result<_>>()?,
        candidates,
        stdio,
        tty: p.tty,
    })
}

/// Turns a [`Stdio`] into the child's three descriptors: with `p.tty` a
/// pty of `p.console_size`, else pipes (see [`relay`]).
fn stdio_fds(stdio: Stdio, p: &ProcessSpec) -> Result<([OwnedFd; 3], Attach)> {
    if p.tty {
        let (slave, master) = process::tty(stdio.stdin, stdio.stdout, p.console_size)?;
        let fds = [process::dup(&slave)?, process::dup(&slave)?, slave];
        return Ok((fds, Attach::Tty(master)));
    }
    let (fds, pipes) = Pipes::new(stdio)?;
    Ok((fds, Attach::Pipes(pipes)))
}

/// Creates the working directory `workdir` in `rootfs` when it is missing,
/// as Docker does: each missing component as a directory of mode 0755 owned
/// by root. Symlinks are followed only inside the rootfs.
pub fn ensure_workdir(rootfs: &Path, workdir: &str) -> Result<()> {
    let refused = |source| ContainerError::WorkdirRefused {
        workdir: workdir.to_string(),
        source,
    };
    let mut rel = PathBuf::new();
    for comp in scope::normalize(Path::new(workdir)).map_err(refused)? {
        rel.push(comp);
        // Resolving a child of `rel` follows `rel` itself if it is a link.
        let probe = scope::resolve(rootfs, &rel.join("_"), false).map_err(refused)?;
        let Some(dir) = probe.parent() else { continue };
        let io = |source| ContainerError::Io {
            path: dir.to_path_buf(),
            source,
        };
        match fs::symlink_metadata(dir) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new().mode(0o755).create(dir).map_err(io)?;
                // Whatever the agent's umask.
                fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        }
    }
    Ok(())
}

impl Container {
    /// Creates the container's cgroup and checks its config; nothing runs.
    pub fn create(config: ContainerConfig) -> Result<Self> {
        validate_id(&config.id)?;
        if config.process.entrypoint.is_empty() && config.process.cmd.is_empty() {
            return Err(ContainerError::InvalidProcess {
                reason: "empty entrypoint and cmd".into(),
            });
        }
        user::resolve_user(&config.rootfs, &config.process.user)?;
        let cgroup = Cgroup::create(&config.cgroup_root, &config.id, &config.limits)?;
        Ok(Self {
            config,
            cgroup,
            init: None,
            execs: HashMap::new(),
            ttys: HashMap::new(),
            relays: HashMap::new(),
        })
    }

    /// The init process's spec.
    pub fn process(&self) -> &ProcessSpec {
        &self.config.process
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Starts the init process; returns its pid (in the agent's namespace).
    pub fn start(&mut self, stdio: Stdio, reaper: &Reaper) -> Result<i32> {
        if self.init.is_some() {
            return Err(ContainerError::InvalidState {
                id: self.config.id.clone(),
                reason: "is already started",
            });
        }
        let cfg = &self.config;
        ensure_workdir(&cfg.rootfs, &cfg.process.workdir)?;
        let (fds, attach) = stdio_fds(stdio, &cfg.process)?;
        let mut plan = process_plan(&cfg.rootfs, &cfg.process, fds)?;
        plan.mounts = rootfs::plan(&cfg.rootfs, &cfg.etc_files, &cfg.mounts)?;
        let hostname = if cfg.hostname.is_empty() {
            &cfg.id
        } else {
            &cfg.hostname
        };
        plan.hostname = Some(c(hostname)?);
        plan.unshare_cgroup = true;
        plan.security = cfg.security;
        let mut flags = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC;
        if cfg.new_network {
            flags |= CloneFlags::CLONE_NEWNET;
            plan.loopback_up = true;
        }
        let cgroup = &self.cgroup;
        let pid = process::spawn(&plan, flags, None, reaper, |pid| cgroup.add(pid))?;
        // The agent keeps no child end of the pipes: end-of-file on them
        // means the process (and its descendants) closed them.
        drop(plan);
        self.init = Some(pid);
        self.attach(None, pid, attach, reaper);
        Ok(pid)
    }

    /// Runs another process in the running container.
    pub fn exec(
        &mut self,
        exec_id: &str,
        p: &ProcessSpec,
        stdio: Stdio,
        reaper: &Reaper,
    ) -> Result<i32> {
        validate_id(exec_id)?;
        let init = self.init_pid()?;
        if reaper.try_status(init).is_some() {
            return Err(ContainerError::InvalidState {
                id: self.config.id.clone(),
                reason: "has exited",
            });
        }
        if self.execs.contains_key(exec_id) {
            return Err(ContainerError::InvalidState {
                id: self.config.id.clone(),
                reason: "already has an exec with this id",
            });
        }
        let ns = |name: &str| -> Result<OwnedFd> {
            let path = PathBuf::from(format!("/proc/{init}/ns/{name}"));
            File::open(&path)
                .map(OwnedFd::from)
                .map_err(|source| ContainerError::Io { path, source })
        };
        let pidns = ns("pid")?;
        let mut joins = vec![(ns("cgroup")?, CloneFlags::CLONE_NEWCGROUP)];
        joins.push((ns("ipc")?, CloneFlags::CLONE_NEWIPC));
        joins.push((ns("uts")?, CloneFlags::CLONE_NEWUTS));
        if self.config.new_network {
            joins.push((ns("net")?, CloneFlags::CLONE_NEWNET));
        }
        joins.push((ns("mnt")?, CloneFlags::CLONE_NEWNS));
        let (fds, attach) = stdio_fds(stdio, p)?;
        // The image's passwd is read through the container's root.
        let root = PathBuf::from(format!("/proc/{init}/root"));
        let mut plan = process_plan(&root, p, fds)?;
        plan.setns = joins;
        plan.security = self.config.security;
        let cgroup = &self.cgroup;
        let pid = process::spawn(&plan, CloneFlags::empty(), Some(&pidns), reaper, |pid| {
            cgroup.add(pid)
        })?;
        drop(plan);
        self.execs.insert(exec_id.to_string(), pid);
        // Close the ptys of processes that have exited.
        let dead: Vec<Option<String>> = self
            .ttys
            .keys()
            .filter(|k| {
                self.pid(k.as_deref())
                    .map_or(true, |p| reaper.try_status(p).is_some())
            })
            .cloned()
            .collect();
        for k in dead {
            self.ttys.remove(&k);
        }
        self.relays.retain(|_, r| !r.is_done());
        self.attach(Some(exec_id.to_string()), pid, attach, reaper);
        Ok(pid)
    }

    /// Keeps the pty master of `key`'s process `pid`, or starts relaying its
    /// pipes.
    fn attach(&mut self, key: Option<String>, pid: i32, a: Attach, reaper: &Reaper) {
        match a {
            Attach::Tty(master) => {
                self.ttys.insert(key, master);
            }
            Attach::Pipes(pipes) => {
                self.relays.insert(key, pipes.start(pid, reaper));
            }
        }
    }

    /// The stdio relay of the init's (`None`) or an exec's process, if it
    /// has pipes and still relays: [`Relay::wait`] returns once its output
    /// is relayed and the connections are closed.
    pub fn relay(&self, exec_id: Option<&str>) -> Option<Relay> {
        self.relays.get(&exec_id.map(str::to_string)).cloned()
    }

    /// Sets the terminal size of the init's (`None`) or an exec's pty; the
    /// kernel sends `SIGWINCH` to its foreground process group.
    pub fn resize(&self, exec_id: Option<&str>, size: ConsoleSize, reaper: &Reaper) -> Result<()> {
        let pid = self.pid(exec_id)?;
        if reaper.try_status(pid).is_some() {
            return Err(ContainerError::InvalidState {
                id: self.config.id.clone(),
                reason: "process has exited",
            });
        }
        let master = self.ttys.get(&exec_id.map(str::to_string)).ok_or_else(|| {
            ContainerError::NoTerminal {
                id: self.config.id.clone(),
            }
        })?;
        process::resize(master, size)
    }

    fn init_pid(&self) -> Result<i32> {
        self.init.ok_or_else(|| ContainerError::InvalidState {
            id: self.config.id.clone(),
            reason: "is not started",
        })
    }

    /// The pid of the init (`None`) or of an exec.
    pub fn pid(&self, exec_id: Option<&str>) -> Result<i32> {
        match exec_id {
            None => self.init_pid(),
            Some(e) => self
                .execs
                .get(e)
                .copied()
                .ok_or_else(|| ContainerError::NoSuchExec {
                    id: self.config.id.clone(),
                    exec_id: e.to_string(),
                }),
        }
    }

    /// Sends `signal` to the init or an exec.
    pub fn signal(&self, exec_id: Option<&str>, signal: i32, reaper: &Reaper) -> Result<()> {
        let pid = self.pid(exec_id)?;
        if reaper.try_status(pid).is_some() {
            return Err(ContainerError::InvalidState {
                id: self.config.id.clone(),
                reason: "process has exited",
            });
        }
        let sig =
            Signal::try_from(signal).map_err(|source| ContainerError::Signal { signal, source })?;
        nix::sys::signal::kill(Pid::from_raw(pid), sig)
            .map_err(|source| ContainerError::Signal { signal, source })
    }

    /// Kills every process of the container (SIGKILL to its init, whose
    /// death takes the PID namespace with it) and removes the cgroup.
    pub fn kill_all(&self, reaper: &Reaper) {
        if let Some(pid) = self.init {
            if reaper.try_status(pid).is_none() {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                reaper.wait(pid);
            }
        }
        self.cgroup.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "web-1.x_y", &"a".repeat(64)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", &"a".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn process_plan_env_and_candidates() {
        let d = tempfile::tempdir().unwrap();
        let p = ProcessSpec {
            entrypoint: vec!["sh".into()],
            cmd: vec!["-c".into(), "true".into()],
            env: vec!["PATH=/bin:/usr/bin".into()],
            user: "7:8".into(),
            ..Default::default()
        };
        let null = || process::dev_null().unwrap();
        let plan = process_plan(d.path(), &p, [null(), null(), null()]).unwrap();
        assert_eq!(
            plan.candidates,
            vec![c("/bin/sh").unwrap(), c("/usr/bin/sh").unwrap()]
        );
        assert_eq!(plan.argv.len(), 3);
        assert!(plan.envp.contains(&c("HOME=/").unwrap()));
        assert_eq!((plan.identity.uid, plan.identity.gid), (7, 8));
        assert_eq!(plan.workdir, c("/").unwrap());
        let empty = ProcessSpec::default();
        assert!(process_plan(d.path(), &empty, [null(), null(), null()]).is_err());
    }

    #[test]
    fn workdir_created_inside_the_rootfs_only() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir(r.join("usr")).unwrap();
        symlink("usr", r.join("u")).unwrap();
        ensure_workdir(r, "/u/src/app").unwrap();
        let made = fs::symlink_metadata(r.join("usr/src/app")).unwrap();
        assert!(made.is_dir());
        assert_eq!(made.permissions().mode() & 0o7777, 0o755);
        ensure_workdir(r, "/usr/src/app").unwrap();
        ensure_workdir(r, "").unwrap();
        symlink("/etc", r.join("evil")).unwrap();
        let e = ensure_workdir(r, "/evil/x").unwrap_err();
        assert!(matches!(e, ContainerError::WorkdirRefused { .. }), "{e}");
        assert!(!Path::new("/etc/x").exists());
        fs::write(r.join("file"), "").unwrap();
        assert!(ensure_workdir(r, "/file/x").is_err());
    }
}
