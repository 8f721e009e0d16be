//! Collecting the exit status of container processes.
//!
//! As PID 1 of the guest the agent inherits every orphan, so in
//! [`ReapMode::All`] one thread waits for any child and keeps the status of
//! the tracked ones (untracked orphans are simply reaped). On a host (tests)
//! other code owns other children, so [`ReapMode::Tracked`] waits for each
//! tracked pid on its own thread. Spawning goes through [`Reaper::spawn`],
//! which holds the table's lock across the fork so a child that dies at once
//! is not taken for an orphan.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use husk_proto::agent::ExitStatus;

/// Which children the reaper waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapMode {
    /// `waitpid(-1)`: the agent is PID 1 and owns all children.
    All,
    /// `waitpid(pid)` per tracked child.
    Tracked,
}

#[derive(Debug, Default)]
struct Table {
    /// Tracked pids: `None` while running.
    procs: HashMap<i32, Option<ExitStatus>>,
}

/// Shared exit-status table.
#[derive(Debug, Clone)]
pub struct Reaper {
    mode: ReapMode,
    inner: Arc<(Mutex<Table>, Condvar)>,
}

fn status_of(ws: WaitStatus) -> Option<(i32, ExitStatus)> {
    match ws {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), ExitStatus::Code { code })),
        WaitStatus::Signaled(pid, sig, _) => {
            Some((pid.as_raw(), ExitStatus::Signal { signal: sig as i32 }))
        }
        _ => None,
    }
}

impl Reaper {
    /// Creates a reaper; in [`ReapMode::All`] starts the reaping thread.
    pub fn new(mode: ReapMode) -> Self {
        let r = Self {
            mode,
            inner: Arc::default(),
        };
        if mode == ReapMode::All {
            let me = r.clone();
            std::thread::spawn(move || me.reap_all());
        }
        r
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, pid: i32, status: ExitStatus) {
        let mut t = self.lock();
        if let Some(slot) = t.procs.get_mut(&pid) {
            *slot = Some(status);
            self.inner.1.notify_all();
        }
    }

    fn reap_all(&self) {
        loop {
            match waitpid(None, None) {
                Ok(ws) => {
                    if let Some((pid, st)) = status_of(ws) {
                        self.record(pid, st);
                    }
                }
                // No children yet: poll gently.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Runs `fork` (which returns a child pid or an error) with the table
    /// locked and tracks the child.
    pub fn spawn<E>(&self, fork: impl FnOnce() -> Result<i32, E>) -> Result<i32, E> {
        let mut t = self.lock();
        let pid = fork()?;
        t.procs.insert(pid, None);
        drop(t);
        if self.mode == ReapMode::Tracked {
            let me = self.clone();
            std::thread::spawn(move || loop {
                match waitpid(Pid::from_raw(pid), None) {
                    Ok(ws) => {
                        if let Some((pid, st)) = status_of(ws) {
                            me.record(pid, st);
                            return;
                        }
                    }
                    Err(nix::Error::EINTR) => continue,
                    Err(_) => return,
                }
            });
        }
        Ok(pid)
    }

    /// The status if `pid` has exited.
    pub fn try_status(&self, pid: i32) -> Option<ExitStatus> {
        self.lock().procs.get(&pid).copied().flatten()
    }

    /// Blocks until `pid` (tracked) exits.
    pub fn wait(&self, pid: i32) -> Option<ExitStatus> {
        let mut t = self.lock();
        loop {
            match t.procs.get(&pid) {
                None => return None,
                Some(Some(st)) => return Some(*st),
                Some(None) => t = self.inner.1.wait(t).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_child_status() {
        let r = Reaper::new(ReapMode::Tracked);
        let pid = r
            .spawn(|| {
                std::process::Command::new("sh")
                    .args(["-c", "exit 7"])
                    .spawn()
                    .map(|c| c.id() as i32)
            })
            .unwrap();
        assert_eq!(r.wait(pid), Some(ExitStatus::Code { code: 7 }));
        assert_eq!(r.wait(12345678), None);
    }
}
