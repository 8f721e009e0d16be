//! A container's state (`state.json`), written atomically by its supervisor.

use serde::{Deserialize, Serialize};

/// Lifecycle status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, not started (or being started).
    #[default]
    Created,
    /// The container's process runs.
    Running,
    /// It ended.
    Exited,
}

impl Status {
    /// Docker's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        }
    }
}

/// A published port, as bound on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortBinding {
    /// Host address (`0.0.0.0` for all).
    pub host_ip: String,
    /// Host port.
    pub host_port: u16,
    /// Container port.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
}

/// Where start-up time went, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    /// Preparing the image's root filesystem disk (0 when cached).
    pub rootfs_ms: f64,
    /// Whether the rootfs disk was built by this start.
    pub rootfs_built: bool,
    /// Supervisor start to husk-vmm running (disks, network, spawn).
    pub vmm_ms: f64,
    /// Building the template snapshot (0 when cached or not used).
    #[serde(default)]
    pub template_ms: f64,
    /// husk-vmm start to the agent of a restored template provisioned
    /// (0 for a boot).
    #[serde(default)]
    pub restore_ms: f64,
    /// husk-vmm start to the guest's init (kernel boot), from its boot
    /// marker (0 for a restore).
    pub kernel_ms: f64,
    /// Guest init to the agent answering on vsock.
    pub agent_ms: f64,
    /// The agent building the container (overlay rootfs, mounts, cgroup).
    pub create_ms: f64,
    /// Starting the container's process.
    pub exec_ms: f64,
    /// Supervisor start to the process running.
    pub total_ms: f64,
}

/// A container's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Status.
    pub status: Status,
    /// Supervisor pid while it runs.
    #[serde(default)]
    pub supervisor_pid: Option<i32>,
    /// husk-vmm's pid while it runs.
    #[serde(default)]
    pub vmm_pid: Option<i32>,
    /// The process's pid in the guest.
    #[serde(default)]
    pub guest_pid: Option<i32>,
    /// RFC 3339.
    #[serde(default)]
    pub started_at: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Exit status (128+N for signal N).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why it ended abnormally.
    #[serde(default)]
    pub error: Option<String>,
    /// The guest's address.
    #[serde(default)]
    pub ip: Option<String>,
    /// Ports bound on the host while running.
    #[serde(default)]
    pub ports: Vec<PortBinding>,
    /// Start-up breakdown of the last start.
    #[serde(default)]
    pub timings: Option<Timings>,
    /// The microVM's vCPUs are paused (`husk pause`); status stays running.
    #[serde(default)]
    pub paused: bool,
    /// Restarts by its restart policy since the user last started it.
    #[serde(default)]
    pub restart_count: u32,
    /// Exited, and waiting to be restarted by its restart policy.
    #[serde(default)]
    pub restarting: bool,
}

pub use crate::time::now_rfc3339;

impl State {
    /// Docker's State word: `running`, `paused`, `restarting`, `created` or
    /// `exited`; `running` says whether it runs now (a live check, or
    /// `status`).
    pub fn docker_state(&self, running: bool) -> &'static str {
        if running {
            if self.paused {
                "paused"
            } else {
                "running"
            }
        } else if self.restarting {
            "restarting"
        } else {
            self.status.as_str()
        }
    }

    /// Marks the container ended.
    pub fn mark_exited(&mut self, code: i32, error: Option<String>) {
        self.status = Status::Exited;
        self.paused = false;
        self.exit_code = Some(code);
        self.finished_at = Some(now_rfc3339());
        self.supervisor_pid = None;
        self.vmm_pid = None;
        self.guest_pid = None;
        if error.is_some() {
            self.error = error;
        }
    }
}

/// "3 seconds", "About a minute", "2 hours" — Docker's human durations.
pub fn human_duration(secs: u64) -> String {
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".into(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

/// Seconds since an RFC 3339 time (0 when unparsable or in the future).
pub fn secs_since(t: &str) -> u64 {
    crate::time::parse_rfc3339(t)
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        let now = now_rfc3339();
        assert!(secs_since(&now) < 5);
    }
}
