//! Restart policies (`--restart`, the API's `HostConfig.RestartPolicy`):
//! which ends of a container start it again, and after how long.
//!
//! As Docker's: `no`; `always` and `unless-stopped` (the same here: husk
//! has no daemon whose own restart would tell them apart); `on-failure[:N]`
//! for a non-zero status, at most N times (0: no limit). A container
//! stopped or killed by the user is not restarted. The delay doubles from
//! 100 ms up to a minute, and starts over after a run of 10 s or more.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A container's restart policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// After every end the user did not ask for.
    Always,
    /// As `always`.
    UnlessStopped,
    /// After a non-zero status, at most `max_retries` times (0: no limit).
    OnFailure {
        /// The limit (Docker's `MaximumRetryCount`).
        #[serde(default)]
        max_retries: u32,
    },
}

/// A policy that is not one of Docker's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid restart policy {0:?} (no, always, unless-stopped, on-failure[:N])")]
pub struct PolicyError(pub String);

/// The first delay.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run at least this long starts the delays over.
const RESET_AFTER: Duration = Duration::from_secs(10);

impl RestartPolicy {
    /// Parses the CLI's `--restart` value: `no`, `always`,
    /// `unless-stopped`, `on-failure` or `on-failure:N`.
    pub fn parse(s: &str) -> Result<RestartPolicy, PolicyError> {
        let (name, max) = match s.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (s, None),
        };
        let max = match max {
            Some(m) => Some(m.parse().map_err(|_| PolicyError(s.to_string()))?),
            None => None,
        };
        RestartPolicy::from_docker(name, max).map_err(|_| PolicyError(s.to_string()))
    }

    /// From the API's `Name` and `MaximumRetryCount` (only `on-failure`
    /// takes a count; Docker refuses one elsewhere).
    pub fn from_docker(name: &str, max: Option<u32>) -> Result<RestartPolicy, PolicyError> {
        let p = match name {
            "" | "no" => RestartPolicy::No,
            "always" => RestartPolicy::Always,
            "unless-stopped" => RestartPolicy::UnlessStopped,
            "on-failure" => {
                return Ok(RestartPolicy::OnFailure {
                    max_retries: max.unwrap_or(0),
                })
            }
            _ => return Err(PolicyError(name.to_string())),
        };
        match max {
            Some(n) if n > 0 => Err(PolicyError(format!("{name}:{n}"))),
            _ => Ok(p),
        }
    }

    /// Whether this is `no`.
    pub fn is_no(&self) -> bool {
        *self == RestartPolicy::No
    }

    /// Docker's `Name`.
    pub fn name(&self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
            RestartPolicy::OnFailure { .. } => "on-failure",
        }
    }

    /// Docker's `MaximumRetryCount`.
    pub fn max_retries(&self) -> u32 {
        match self {
            RestartPolicy::OnFailure { max_retries } => *max_retries,
            _ => 0,
        }
    }

    /// Whether an end with `exit_code` starts the container again, after
    /// `restarts` restarts so far; `by_user` when a stop or kill ended it.
    pub fn restarts_after(&self, exit_code: i32, by_user: bool, restarts: u32) -> bool {
        if by_user {
            return false;
        }
        match self {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure { max_retries } => {
                exit_code != 0 && (*max_retries == 0 || restarts < *max_retries)
            }
        }
    }
}

/// How long to wait before restart number `restarts + 1`, when the run
/// that just ended lasted `ran`.
pub fn delay(restarts: u32, ran: Duration) -> Duration {
    if ran >= RESET_AFTER {
        return FIRST_DELAY;
    }
    let factor = 1u32.checked_shl(restarts.min(16)).unwrap_or(u32::MAX);
    FIRST_DELAY.saturating_mul(factor).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_values_parse_as_dockers() {
        assert_eq!(RestartPolicy::parse("no"), Ok(RestartPolicy::No));
        assert_eq!(RestartPolicy::parse("always"), Ok(RestartPolicy::Always));
        assert_eq!(
            RestartPolicy::parse("unless-stopped"),
            Ok(RestartPolicy::UnlessStopped)
        );
        assert_eq!(
            RestartPolicy::parse("on-failure"),
            Ok(RestartPolicy::OnFailure { max_retries: 0 })
        );
        assert_eq!(
            RestartPolicy::parse("on-failure:3"),
            Ok(RestartPolicy::OnFailure { max_retries: 3 })
        );
        for bad in ["sometimes", "on-failure:x", "always:2", "on-failure:-1"] {
            assert!(RestartPolicy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn which_ends_restart() {
        let on3 = RestartPolicy::OnFailure { max_retries: 3 };
        assert!(!RestartPolicy::No.restarts_after(1, false, 0));
        assert!(RestartPolicy::Always.restarts_after(0, false, 100));
        assert!(RestartPolicy::UnlessStopped.restarts_after(137, false, 0));
        assert!(!RestartPolicy::Always.restarts_after(137, true, 0));
        assert!(on3.restarts_after(1, false, 2));
        assert!(!on3.restarts_after(1, false, 3));
        assert!(!on3.restarts_after(0, false, 0));
        assert!(RestartPolicy::OnFailure { max_retries: 0 }.restarts_after(2, false, 1000));
    }

    #[test]
    fn delays_double_up_to_a_minute_and_start_over_after_a_long_run() {
        let short = Duration::from_secs(1);
        assert_eq!(delay(0, short), Duration::from_millis(100));
        assert_eq!(delay(1, short), Duration::from_millis(200));
        assert_eq!(delay(3, short), Duration::from_millis(800));
        assert_eq!(delay(20, short), Duration::from_secs(60));
        assert_eq!(delay(u32::MAX, short), Duration::from_secs(60));
        assert_eq!(
            delay(9, Duration::from_secs(10)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn stored_form_round_trips() {
        for p in [
            RestartPolicy::No,
            RestartPolicy::Always,
            RestartPolicy::OnFailure { max_retries: 2 },
        ] {
            let s = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<RestartPolicy>(&s).unwrap(), p, "{s}");
        }
    }
}
