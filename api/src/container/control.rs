//! The supervisor's control socket (`sup.sock`): how CLI commands reach a
//! running container.
//!
//! A connection starts with one JSON request frame (`husk_proto::frame`)
//! answered by one JSON [`Reply`]. After an `ok` reply to a request that
//! attaches (`start` with `attach`, `attach`, `exec`), the connection
//! carries `husk_proto::stdio` frames both ways: stdin, stdin EOF, resizes
//! and signals from the CLI; stdout, stderr and finally the exit status
//! from the supervisor.

use husk_proto::agent::{ConsoleSize, ProcessSpec};
use serde::{Deserialize, Serialize};

pub use husk_proto::frame::{read_frame, write_frame};
pub use husk_proto::stdio::Frame;

/// Stdio options of an attaching request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attach {
    /// Forward the client's stdin.
    pub stdin: bool,
    /// The client's terminal size when it has one.
    #[serde(default)]
    pub console_size: Option<ConsoleSize>,
}

/// Requests to a supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Start the created container; with `attach` the connection then
    /// streams its stdio.
    Start {
        /// Attach options.
        #[serde(default)]
        attach: Option<Attach>,
    },
    /// Stream the running container's output (and stdin when asked).
    Attach(Attach),
    /// Run a process in the container (`husk exec`); the connection streams
    /// its stdio. Empty `workdir` and `user` mean the container's.
    Exec {
        /// The process (`cmd` is its argv).
        spec: ProcessSpec,
        /// Stdio options.
        attach: Attach,
    },
    /// Send a signal to the container's init.
    Signal {
        /// Signal number.
        signal: i32,
    },
    /// Pause the microVM's vCPUs.
    Pause,
    /// Resume them.
    Unpause,
    /// Save the running container as checkpoint `fork` of created
    /// container `into` (its fork), and run on.
    Fork {
        /// The fork's id.
        into: String,
    },
    /// Save the running container as checkpoint `name`; it then stops
    /// unless `leave_running`.
    Checkpoint {
        /// The checkpoint's name.
        name: String,
        /// Keep it running.
        #[serde(default)]
        leave_running: bool,
    },
    /// Replace the network members' lines of the container's `/etc/hosts`.
    SetHosts {
        /// The lines.
        entries: Vec<husk_proto::agent::HostEntry>,
    },
    /// SIGTERM, then SIGKILL after `timeout_secs`; answered once it ended.
    Stop {
        /// Grace period.
        timeout_secs: u64,
    },
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Done (or streaming follows).
    Ok,
    /// Failed; `status` is the exit status the CLI should use (125, 126, 127).
    Error {
        /// One line.
        message: String,
        /// Exit status for the CLI.
        status: i32,
    },
}

/// What a new supervisor tells the `husk` command that started it, once,
/// on its standard output: the container's VM is up and created, or why
/// not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SupervisorReady {
    /// The supervisor serves its control socket.
    Ready,
    /// It could not start the container.
    Failed {
        /// One line.
        message: String,
        /// Exit status for the CLI.
        status: i32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json() {
        let r: Request = serde_json::from_str(r#"{"type":"stop","timeout_secs":3}"#).unwrap();
        assert_eq!(r, Request::Stop { timeout_secs: 3 });
        let r: Request =
            serde_json::from_str(r#"{"type":"start","attach":{"stdin":true}}"#).unwrap();
        assert!(matches!(r, Request::Start { attach: Some(_) }));
    }

    #[test]
    fn ready_roundtrip() {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &SupervisorReady::Failed {
                message: "no such image".into(),
                status: 125,
            },
        )
        .unwrap();
        let back: SupervisorReady = read_frame(&mut buf.as_slice()).unwrap();
        assert!(matches!(back, SupervisorReady::Failed { status: 125, .. }));
    }
}
