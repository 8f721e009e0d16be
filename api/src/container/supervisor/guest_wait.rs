//! Waiting for a guest's agent and telling why a guest stopped: the boot
//! timeout and stall watch, the console's last line for an error, and
//! whether a guest that stopped did so by itself (a triple fault or a
//! reset), which makes its boot worth one more try.

use super::vmm::{self, VmmEvents, VmmProcess};
use super::*;

/// Connects to the agent (the boot timeout is `HUSK_BOOT_TIMEOUT`
/// seconds, 120 by default) and says hello; a failure ends with the last
/// line of the guest's `console` log.
pub(super) fn connect_agent(
    console: &Path,
    uds: &Path,
    vmm: &mut VmmProcess,
) -> Result<AgentClient, StartError> {
    let limit = Duration::from_secs(
        std::env::var("HUSK_BOOT_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120),
    );
    let spawned = Instant::now();
    let (child, events) = (&mut vmm.child, &vmm.events);
    let agent = AgentClient::connect_retry(uds, limit, || {
        matches!(child.try_wait(), Ok(None)) && !stalled(events, spawned.elapsed())
    });
    agent.map_err(|e| {
        let cause = match vmm.child.try_wait() {
            Ok(Some(st)) => vmm_failure(vmm, &st.to_string()),
            _ => crate::error::chain(&e),
        };
        StartError::new(match last_console_line(console) {
            Some(line) => format!("{cause}; the guest's console ended with: {line}"),
            None => cause,
        })
    })
}

/// The last non-empty line of the guest's console log (read from its last
/// 4 KiB: the guest wrote it), for an error that must show its cause even
/// when the container directory is removed after a failed `run`.
pub(super) fn last_console_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    f.take(4096).read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    Some(line.chars().filter(|c| !c.is_control()).take(200).collect())
}

/// Stops husk-vmm after its container's `create` failed. When the guest
/// had stopped (its agent connection then breaks: "Broken pipe"), the
/// error names how it stopped; the flag says whether it stopped by itself.
pub(super) fn stop_after_failed_create(vmm: &mut VmmProcess, e: StartError) -> (StartError, bool) {
    match stop_and_reason(vmm) {
        Some(why) => {
            let message = format!(
                "the guest stopped while its container was being created: {why} ({})",
                e.message
            );
            let by_itself = by_itself(&why);
            (
                StartError {
                    message,
                    status: e.status,
                },
                by_itself,
            )
        }
        None => (e, false),
    }
}

/// Whether husk-vmm's stop reason is the guest stopping by itself: a
/// triple fault or a reset it did not ask for.
fn by_itself(reason: &str) -> bool {
    reason.starts_with("triple_fault") || reason == "reset"
}

/// How long after the agent's boot marker its vsock port may stay silent
/// before the boot counts as stalled.
const STALL_AFTER_MARKER: Duration = Duration::from_secs(30);

/// Whether the agent reached its boot marker at least
/// [`STALL_AFTER_MARKER`] before `elapsed` (time since husk-vmm started,
/// roughly) without answering on vsock.
fn stalled(events: &VmmEvents, elapsed: Duration) -> bool {
    events
        .boot_marker_ms(Duration::ZERO)
        .is_some_and(|marker| ms(elapsed) > marker + ms(STALL_AFTER_MARKER))
}

/// Stops husk-vmm after its agent did not answer and says whether the boot
/// is worth one more try: the guest stopped by itself (a triple fault or a
/// reset, as the nested test host makes a booting guest do now and then),
/// or its agent came up but the vsock device never carried an answer (seen
/// about 1 boot in 30 in the husk machine; what husk-vmm's vsock queues
/// looked like goes to the log first, for its diagnosis).
pub(super) fn worth_another_boot(vmm: &mut VmmProcess, api_sock: &Path) -> bool {
    let alive = matches!(vmm.child.try_wait(), Ok(None));
    let marked = vmm.events.boot_marker_ms(Duration::ZERO).is_some();
    if alive {
        let up = if marked {
            "is up"
        } else {
            "did not reach its boot marker"
        };
        match vmm::api_query(api_sock, "queues") {
            Ok(text) => log::warn!("the agent {up} and vsock carried no answer: {text}"),
            Err(e) => log::warn!(
                "the agent {up} and vsock carried no answer; husk-vmm did not describe its queues: {}",
                crate::error::chain(&e)
            ),
        }
    }
    stopped_by_itself(vmm) || (alive && marked)
}

/// Stops husk-vmm and says whether the guest had stopped by itself (a
/// triple fault or a reset).
pub(super) fn stopped_by_itself(vmm: &mut VmmProcess) -> bool {
    stop_and_reason(vmm).as_deref().is_some_and(by_itself)
}

/// Stops husk-vmm and returns how its guest had stopped, if it had: the
/// `stopped` event husk-vmm sends before it exits (read until its pipe
/// closes, which a husk-vmm that was still running does once killed).
fn stop_and_reason(vmm: &mut VmmProcess) -> Option<String> {
    stop_vmm(vmm);
    vmm.events.stop_reason(Duration::from_secs(2))
}

pub(super) fn stop_vmm(vmm: &mut VmmProcess) {
    let _ = vmm.child.kill();
    let _ = vmm.child.wait();
}

/// "the microVM did not start: " and husk-vmm's own reason (its `failed`
/// event), or its exit status.
fn vmm_failure(vmm: &VmmProcess, status: &str) -> String {
    match vmm.events.failure(Duration::from_secs(2)) {
        Some(why) => format!("the microVM did not start: husk-vmm: {why}"),
        None => match vmm.events.stop_reason(Duration::ZERO) {
            Some(why) => format!("the microVM did not start: the guest stopped: {why}"),
            None => format!("the microVM did not start: husk-vmm exited ({status})"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_tail_is_one_bounded_clean_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        assert_eq!(last_console_line(&log), None);
        let mut text = "x".repeat(10_000);
        text.push_str("\n[ 1.0] Kernel panic - not syncing: \x1b[0mboom\r\n\n  \n");
        fs::write(&log, &text).unwrap();
        assert_eq!(
            last_console_line(&log).as_deref(),
            Some("[ 1.0] Kernel panic - not syncing: [0mboom")
        );
        fs::write(&log, "y".repeat(10_000)).unwrap();
        assert_eq!(last_console_line(&log).map(|l| l.len()), Some(200));
    }

    #[test]
    fn only_a_triple_fault_or_a_reset_is_a_stop_by_itself() {
        assert!(by_itself("triple_fault: vCPU 0 at rip 0xfff0"));
        assert!(by_itself("reset"));
        assert!(!by_itself("power_off"));
        assert!(!by_itself("failure: KVM_RUN"));
    }
}
