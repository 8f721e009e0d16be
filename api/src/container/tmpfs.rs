//! Docker's `--tmpfs PATH[:OPTIONS]` (and the API's `HostConfig.Tmpfs`,
//! a path to its options) parsed into [`TmpfsMount`]s: `rw`/`ro`,
//! `exec`/`noexec`, `suid`/`nosuid`, `dev`/`nodev`, `size=` (Docker's
//! sizes: `64m`, `65536k`, bytes) and `mode=` (octal). Without options a
//! tmpfs is Docker's default: read-write, `noexec`, `nosuid`, `nodev`.

use std::path::PathBuf;

use husk_proto::mounts::{self, TmpfsMount};

/// A `--tmpfs` that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum TmpfsError {
    /// The path is not a valid destination.
    #[error("invalid --tmpfs {spec:?}")]
    Destination {
        /// The option as given.
        spec: String,
        /// Why.
        #[source]
        source: husk_proto::agent::ProtocolError,
    },
    /// An option husk does not know or a value that does not parse.
    #[error("invalid --tmpfs {spec:?}: {reason}")]
    Option {
        /// The option as given.
        spec: String,
        /// Why.
        reason: String,
    },
}

/// Parses `PATH[:OPTIONS]`.
pub fn parse(spec: &str) -> Result<TmpfsMount, TmpfsError> {
    let (path, options) = spec.split_once(':').unwrap_or((spec, ""));
    parse_with(path, options).map_err(|e| match e {
        TmpfsError::Destination { source, .. } => TmpfsError::Destination {
            spec: spec.to_string(),
            source,
        },
        TmpfsError::Option { reason, .. } => TmpfsError::Option {
            spec: spec.to_string(),
            reason,
        },
    })
}

/// Parses a destination and its comma-separated options (the API's form).
pub fn parse_with(path: &str, options: &str) -> Result<TmpfsMount, TmpfsError> {
    let mut m = TmpfsMount {
        destination: PathBuf::from(path),
        ..Default::default()
    };
    mounts::check_destination("tmpfs", &m.destination).map_err(|source| {
        TmpfsError::Destination {
            spec: path.to_string(),
            source,
        }
    })?;
    let bad = |reason: String| TmpfsError::Option {
        spec: format!("{path}:{options}"),
        reason,
    };
    for opt in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            Some(("size", v)) => {
                let size = crate::container::log_opts::parse_size(v)
                    .ok_or_else(|| bad(format!("size {v:?} is not a size (64m, 65536k, bytes)")))?;
                m.size_bytes = Some(size);
            }
            Some(("mode", v)) => {
                let mode = u32::from_str_radix(v, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| bad(format!("mode {v:?} is not an octal mode")))?;
                m.mode = Some(mode);
            }
            Some(_) => return Err(bad(format!("option {opt:?} is not supported"))),
            None => set_flag(&mut m, opt)
                .ok_or_else(|| bad(format!("option {opt:?} is not supported")))?,
        }
    }
    Ok(m)
}

fn set_flag(m: &mut TmpfsMount, flag: &str) -> Option<()> {
    match flag {
        "rw" => m.readonly = false,
        "ro" => m.readonly = true,
        "exec" => m.allow.exec = true,
        "noexec" => m.allow.exec = false,
        "suid" => m.allow.suid = true,
        "nosuid" => m.allow.suid = false,
        "dev" => m.allow.dev = true,
        "nodev" => m.allow.dev = false,
        _ => return None,
    }
    Some(())
}

/// Docker's rendering of a tmpfs mount's options (for `inspect`'s
/// `HostConfig.Tmpfs`).
pub fn options(m: &TmpfsMount) -> String {
    let mut o = vec![if m.readonly { "ro" } else { "rw" }.to_string()];
    o.push(if m.allow.exec { "exec" } else { "noexec" }.into());
    o.push(if m.allow.suid { "suid" } else { "nosuid" }.into());
    o.push(if m.allow.dev { "dev" } else { "nodev" }.into());
    if let Some(s) = m.size_bytes {
        o.push(format!("size={s}"));
    }
    if let Some(mode) = m.mode {
        o.push(format!("mode={mode:o}"));
    }
    o.join(",")
}

/// Docker's `HostConfig.Tmpfs`: each destination to its options.
pub fn docker_map(mounts: &[TmpfsMount]) -> std::collections::BTreeMap<String, String> {
    mounts
        .iter()
        .map(|m| (m.destination.display().to_string(), options(m)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_proto::mounts::TmpfsAllow;

    #[test]
    fn docker_forms() {
        let m = parse("/tmp").unwrap();
        assert_eq!(m.destination, PathBuf::from("/tmp"));
        assert_eq!((m.size_bytes, m.mode, m.readonly), (None, None, false));
        assert_eq!(m.allow, TmpfsAllow::default());
        assert_eq!(options(&m), "rw,noexec,nosuid,nodev");
        let m = parse("/run:rw,exec,size=64m,mode=1770").unwrap();
        assert_eq!(m.size_bytes, Some(64 << 20));
        assert_eq!(m.mode, Some(0o1770));
        assert!(m.allow.exec && !m.allow.suid);
        assert_eq!(options(&m), "rw,exec,nosuid,nodev,size=67108864,mode=1770");
        assert!(parse("/x:ro,suid,dev,size=65536k").unwrap().readonly);
    }

    #[test]
    fn bad_forms_say_why() {
        for (spec, want) in [
            ("tmp", "invalid --tmpfs \"tmp\""),
            ("/", "invalid --tmpfs \"/\""),
            ("/t:size=lots", "size \"lots\" is not a size"),
            ("/t:mode=999", "mode \"999\" is not an octal mode"),
            ("/t:uid=1000", "option \"uid=1000\" is not supported"),
            ("/t:bogus", "option \"bogus\" is not supported"),
        ] {
            let e = parse(spec).unwrap_err();
            let chain = crate::error::chain(&e);
            assert!(chain.contains(want), "{spec}: {chain}");
        }
    }
}
