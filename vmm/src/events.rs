//! Typed events for husk-vmm's supervisor (`--events-fd N`): one JSON
//! [`VmmEvent`] per line on a descriptor the parent passed, so the
//! supervisor learns the boot marker and a failure's reason without reading
//! log text.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Mutex;

pub use husk_proto::vm::VmmEvent;

/// Event sink errors.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The descriptor is not open (or is one of stdin/stdout/stderr).
    #[error("--events-fd {fd} is not an open descriptor above 2")]
    BadFd {
        /// The descriptor.
        fd: RawFd,
    },
}

/// Where events go.
#[derive(Debug)]
pub struct EventSink {
    out: Mutex<File>,
}

impl EventSink {
    /// Takes ownership of descriptor `fd`, inherited from the parent.
    pub fn from_fd(fd: RawFd) -> Result<Self, EventError> {
        // SAFETY: F_GETFD only queries the descriptor's flags.
        if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(EventError::BadFd { fd });
        }
        // SAFETY: the descriptor is open (checked above), was handed to this
        // process for this purpose alone, and nothing else in husk-vmm
        // refers to it: the File becomes its only owner.
        let file = unsafe { File::from_raw_fd(fd) };
        // Not inherited by anything husk-vmm might start.
        // SAFETY: F_SETFD on an open descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(EventSink {
            out: Mutex::new(file),
        })
    }

    /// Writes one event. A reader that went away is not an error for the
    /// VM: the event is dropped with a warning.
    pub fn emit(&self, event: &VmmEvent) {
        let line = event.to_line();
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = out.write_all(line.as_bytes()) {
            log::warn!("cannot report event to the supervisor: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::IntoRawFd;

    #[test]
    fn events_reach_the_pipe_as_lines() {
        let (mut r, w) = std::io::pipe().unwrap();
        let sink = EventSink::from_fd(w.into_raw_fd()).unwrap();
        sink.emit(&VmmEvent::BootMarker { ms: 12.0 });
        sink.emit(&VmmEvent::Stopped {
            reason: "power_off".into(),
        });
        drop(sink);
        let mut text = String::new();
        r.read_to_string(&mut text).unwrap();
        let events: Vec<VmmEvent> = text
            .lines()
            .map(|l| VmmEvent::from_line(l).unwrap())
            .collect();
        assert_eq!(
            events,
            vec![
                VmmEvent::BootMarker { ms: 12.0 },
                VmmEvent::Stopped {
                    reason: "power_off".into()
                }
            ]
        );
    }

    #[test]
    fn closed_or_standard_descriptors_are_refused() {
        assert!(EventSink::from_fd(1).is_err());
        assert_eq!(
            EventSink::from_fd(987_654).unwrap_err().to_string(),
            "--events-fd 987654 is not an open descriptor above 2"
        );
    }
}
