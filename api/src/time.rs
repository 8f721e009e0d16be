//! Times as husk writes them: RFC 3339 in UTC with nanoseconds, as Docker
//! does (`2026-12-03T18:22:38.123456789Z`). The one place husk formats and
//! parses them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, as RFC 3339.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `t` as RFC 3339.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Nanoseconds since the epoch as RFC 3339 (log records keep those).
pub fn rfc3339_from_nanos(nanos: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// Parses an RFC 3339 time.
pub fn parse_rfc3339(t: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_back() {
        let s = rfc3339_from_nanos(1_700_000_000_123_456_789);
        assert_eq!(s, "2023-11-14T22:13:20.123456789Z");
        let t = parse_rfc3339(&s).unwrap();
        assert_eq!(rfc3339(t), s);
        assert!(now_rfc3339().ends_with('Z'));
        assert!(parse_rfc3339("yesterday").is_none());
    }
}
