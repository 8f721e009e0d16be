//! Docker's log options (`--log-driver`, `--log-opt KEY=VALUE`, the API's
//! `HostConfig.LogConfig`) as a [`LogConfig`]. husk keeps every container's
//! log itself, rotated as Docker's `local` driver: `local` and `json-file`
//! (Docker's default, which clients send) both mean that; `max-size` and
//! `max-file` bound it; `compress` is accepted only as `false`.

use std::collections::BTreeMap;

use super::logs::LogConfig;

/// The driver husk reports (`inspect`'s `HostConfig.LogConfig.Type`):
/// Docker's default, whichever was asked for. Clients decide on it whether a
/// container's logs can be read (docker-py's `containers.run` returns its
/// output only for `json-file` or `journald`); husk's log serves `logs` for
/// either.
pub const DRIVER: &str = "json-file";
/// The most files a log may keep (`max-file`).
pub const MAX_FILES: u32 = 100;
/// The most fraction digits a size may have (`1.5m`).
const MAX_FRACTION_DIGITS: usize = 18;

/// Why log options were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogOptError {
    /// An option without `=`.
    #[error("invalid --log-opt {0:?}: expected KEY=VALUE")]
    MissingValue(String),
    /// An option husk does not know.
    #[error("invalid --log-opt {0}: unknown option (husk knows max-size, max-file and compress)")]
    UnknownKey(String),
    /// A size that does not parse, is 0 or passes 2^64 bytes.
    #[error(
        "invalid --log-opt {0}: expected a size above 0: bytes, or a number with k, m or g (10m)"
    )]
    BadSize(String),
    /// A file count out of range.
    #[error("invalid --log-opt {0}: expected a number of files from 1 to {MAX_FILES}")]
    BadFileCount(String),
    /// `compress` other than false.
    #[error("invalid --log-opt {0}: husk does not compress rotated logs (only compress=false)")]
    Compress(String),
    /// A driver other than `local` or `json-file`.
    #[error("unsupported log driver {0:?}: husk keeps each container's log itself, rotated as Docker's local driver (use local or json-file)")]
    UnsupportedDriver(String),
}

impl LogConfig {
    /// The limits of `--log-driver DRIVER` (empty: the default) and its
    /// `--log-opt KEY=VALUE`s, over the defaults; a later key wins.
    pub fn parse(driver: &str, opts: &[String]) -> Result<LogConfig, LogOptError> {
        match driver {
            "" | "local" | "json-file" => Self::from_opts(opts),
            other => Err(LogOptError::UnsupportedDriver(other.to_string())),
        }
    }

    /// The limits of `KEY=VALUE` options, over the defaults.
    pub fn from_opts(opts: &[String]) -> Result<LogConfig, LogOptError> {
        let mut cfg = LogConfig::default();
        for opt in opts {
            cfg.apply(opt)?;
        }
        Ok(cfg)
    }

    /// Applies one `KEY=VALUE` option.
    fn apply(&mut self, opt: &str) -> Result<(), LogOptError> {
        let (key, value) = opt
            .split_once('=')
            .ok_or_else(|| LogOptError::MissingValue(opt.to_string()))?;
        match key {
            "max-size" => {
                self.max_size =
                    parse_size(value).ok_or_else(|| LogOptError::BadSize(opt.to_string()))?;
            }
            "max-file" => {
                self.max_file = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_FILES).contains(n))
                    .ok_or_else(|| LogOptError::BadFileCount(opt.to_string()))?;
            }
            "compress" if is_false(value) => {}
            "compress" => return Err(LogOptError::Compress(opt.to_string())),
            _ => return Err(LogOptError::UnknownKey(opt.to_string())),
        }
        Ok(())
    }

    /// The options as Docker reports them (`HostConfig.LogConfig.Config`).
    pub fn docker_config(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("max-size", format_size(self.max_size)),
            ("max-file", self.max_file.to_string()),
        ])
    }

    /// `HostConfig.LogConfig` as both inspects show it: [`DRIVER`] and
    /// [`LogConfig::docker_config`].
    pub fn docker_json(&self) -> serde_json::Value {
        serde_json::json!({"Type": DRIVER, "Config": self.docker_config()})
    }
}

/// Whether `v` is false as Go's `strconv.ParseBool` reads it.
fn is_false(v: &str) -> bool {
    matches!(v, "0" | "f" | "F" | "false" | "FALSE" | "False")
}

/// Parses Docker's sizes (binary units, case-insensitive): `1048576`,
/// `512k`, `10m`, `10MB`, `10MiB`, `1.5g`, `2t`; `None` when it does not
/// parse, is 0 or passes `u64::MAX`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let s = s.strip_suffix('i').unwrap_or(s);
    let (num, shift) = match s.as_bytes().last()? {
        b'k' => (&s[..s.len() - 1], 10),
        b'm' => (&s[..s.len() - 1], 20),
        b'g' => (&s[..s.len() - 1], 30),
        b't' => (&s[..s.len() - 1], 40),
        b'p' => (&s[..s.len() - 1], 50),
        _ => (s, 0),
    };
    scaled(num.trim_end(), shift).filter(|b| *b > 0)
}

/// `num` (digits, optionally `.digits`) times `2^shift`, the fraction's
/// bytes rounded down; `None` on overflow.
fn scaled(num: &str, shift: u32) -> Option<u64> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) if !f.is_empty() && f.len() <= MAX_FRACTION_DIGITS => (i, f),
        Some(_) => return None,
        None => (num, ""),
    };
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !(frac.is_empty() || digits(frac)) {
        return None;
    }
    let whole = int.parse::<u64>().ok()?.checked_mul(1u64 << shift)?;
    let part = if frac.is_empty() {
        0
    } else {
        // At most 10^18 x 2^50 < 2^128: no overflow.
        let f = frac.parse::<u128>().ok()?;
        let exp = u32::try_from(frac.len()).ok()?;
        u64::try_from((f << shift) / 10u128.pow(exp)).ok()?
    };
    whole.checked_add(part)
}

/// A size in the largest binary unit that divides it exactly (`20m`), or
/// in bytes; [`parse_size`] reads it back.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(30, "g"), (20, "m"), (10, "k")] {
        let one = 1u64 << shift;
        if bytes >= one && bytes.is_multiple_of(one) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sizes_as_docker_writes_them() {
        for (s, want) in [
            ("1", 1),
            ("4096", 4096),
            ("512k", 512 << 10),
            ("10m", 10 << 20),
            ("10M", 10 << 20),
            ("10mb", 10 << 20),
            ("10MiB", 10 << 20),
            ("10 m", 10 << 20),
            ("1g", 1 << 30),
            ("1.5g", 3 << 29),
            ("0.5k", 512),
            ("2t", 2 << 40),
            ("16383p", 16383 << 50),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(parse_size(s), Some(want), "{s}");
        }
        for bad in [
            "",
            "0",
            "0m",
            "abc",
            "m",
            "-1m",
            "+1m",
            "1.m",
            ".5m",
            "1.2.3m",
            "10x",
            "16384p",
            "18446744073709551616",
            "1e6",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes_read_back() {
        for b in [1, 1000, 1024, 20 << 20, (3 << 29) + 1, 5 << 30, u64::MAX] {
            assert_eq!(parse_size(&format_size(b)), Some(b), "{b}");
        }
        assert_eq!(format_size(20 << 20), "20m");
        assert_eq!(format_size(1536), "1536");
    }

    #[test]
    fn options_over_the_defaults() {
        assert_eq!(LogConfig::from_opts(&[]), Ok(LogConfig::default()));
        let c = LogConfig::from_opts(&opts(&["max-size=10m", "max-file=3", "compress=false"]));
        assert_eq!(
            c,
            Ok(LogConfig {
                max_size: 10 << 20,
                max_file: 3
            })
        );
        let c = LogConfig::from_opts(&opts(&["max-file=1", "max-file=100"])).unwrap();
        assert_eq!(c.max_file, 100);
        assert_eq!(c.max_size, LogConfig::default().max_size);
        for d in ["", "local", "json-file"] {
            assert_eq!(
                LogConfig::parse(d, &opts(&["max-file=2"]))
                    .unwrap()
                    .max_file,
                2
            );
        }
    }

    #[test]
    fn every_refusal() {
        let err = |o: &str| LogConfig::from_opts(&opts(&[o])).unwrap_err();
        let bad = |o: &str| o.to_string();
        assert_eq!(err("max-size"), LogOptError::MissingValue(bad("max-size")));
        assert_eq!(err("size=1m"), LogOptError::UnknownKey(bad("size=1m")));
        assert_eq!(err("=1"), LogOptError::UnknownKey(bad("=1")));
        assert_eq!(
            err("max-size=abc"),
            LogOptError::BadSize(bad("max-size=abc"))
        );
        assert_eq!(err("max-size=0"), LogOptError::BadSize(bad("max-size=0")));
        for n in ["0", "101", "-1", "x", ""] {
            let o = format!("max-file={n}");
            assert_eq!(err(&o), LogOptError::BadFileCount(o.clone()));
        }
        for v in ["true", "1", "yes"] {
            let o = format!("compress={v}");
            assert_eq!(err(&o), LogOptError::Compress(o.clone()));
        }
        for d in ["none", "syslog", "Local"] {
            assert_eq!(
                LogConfig::parse(d, &[]),
                Err(LogOptError::UnsupportedDriver(d.to_string()))
            );
        }
        assert_eq!(
            err("max-size=abc").to_string(),
            "invalid --log-opt max-size=abc: expected a size above 0: bytes, or a number with k, m or g (10m)"
        );
    }

    #[test]
    fn docker_shape() {
        let c = LogConfig {
            max_size: 10 << 20,
            max_file: 3,
        };
        let d = c.docker_config();
        assert_eq!(
            (d["max-size"].as_str(), d["max-file"].as_str()),
            ("10m", "3")
        );
    }
}
