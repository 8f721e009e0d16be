//! The guest's boot parameters: what the host tells PID 1 before any
//! message can travel (which disks to mount where, the network identity,
//! whether to serve the control protocol). The host renders them onto the
//! kernel command line ([`BootParams::render`]); the agent parses
//! `/proc/cmdline` back ([`BootParams::parse`]). Both sides use this one
//! type, so the command line is never built or read by hand.
//!
//! Parameters: `husk.disk=DEV:PATH[:ro]` (repeatable), `husk.ip=A.B.C.D/N`,
//! `husk.gw=A.B.C.D`, `husk.dns=IP[,IP...]`, `husk.run_once`, `husk.no_serve`,
//! `husk.build=BLOBS:TARGET` (a builder microVM: see [`BuildDisks`]).
//! Other words (the kernel's own) are ignored.

use std::net::Ipv4Addr;

/// Malformed `husk.*` parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootParamError {
    /// A parameter's value does not parse.
    #[error("malformed boot parameter {param:?}: {reason}")]
    Malformed {
        /// The whole `husk.x=...` word.
        param: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A value cannot be put on a command line (spaces, empty parts).
    #[error("cannot render boot parameter {what} {value:?}: {reason}")]
    Unrenderable {
        /// The parameter.
        what: &'static str,
        /// The value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A disk PID 1 mounts: `/dev/<device>` (ext4) on `path`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskMount {
    /// Device name under /dev, e.g. `vdb`.
    pub device: String,
    /// Absolute mount point.
    pub path: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// eth0's configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNet {
    /// eth0's address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Name servers for /etc/resolv.conf.
    pub dns: Vec<Ipv4Addr>,
}

/// A builder microVM's two disks (`husk.build=BLOBS:TARGET`): the agent
/// runs no container; it serves only `build` (`crate::agent::BuildRequest`):
/// it verifies the layer blobs read from `/dev/<blobs>` (read-only) and
/// unpacks them into the empty ext4 file system on `/dev/<target>`,
/// mounted at [`crate::guest::BUILD_MOUNT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildDisks {
    /// Device name of the blob disk under /dev, e.g. `vda`.
    pub blobs: String,
    /// Device name of the target disk under /dev, e.g. `vdb`.
    pub target: String,
}

/// Everything husk puts on a guest's kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParams {
    /// Disks to mount, in order.
    pub disks: Vec<DiskMount>,
    /// eth0's address, route and DNS; none leaves eth0 down.
    pub net: Option<GuestNet>,
    /// End the agent (and the VM) once every container has exited.
    pub run_once: bool,
    /// Do not serve the control protocol even with a vsock device.
    pub no_serve: bool,
    /// Builder mode: unpack layers into a disk, run no container.
    pub build: Option<BuildDisks>,
}

impl BootParams {
    /// The parameters as kernel command-line words (space-separated).
    pub fn render(&self) -> Result<String, BootParamError> {
        let mut words = Vec::new();
        for d in &self.disks {
            check_word("husk.disk", &d.device)?;
            check_word("husk.disk", &d.path)?;
            if d.device.contains(':') || d.path.contains(':') || !d.path.starts_with('/') {
                return Err(BootParamError::Unrenderable {
                    what: "husk.disk",
                    value: format!("{}:{}", d.device, d.path),
                    reason: "device and absolute path may not contain ':'",
                });
            }
            let ro = if d.read_only { ":ro" } else { "" };
            words.push(format!("husk.disk={}:{}{ro}", d.device, d.path));
        }
        if let Some(n) = &self.net {
            words.push(format!("husk.ip={}/{}", n.ip, n.prefix));
            if let Some(gw) = n.gateway {
                words.push(format!("husk.gw={gw}"));
            }
            if !n.dns.is_empty() {
                let list: Vec<String> = n.dns.iter().map(Ipv4Addr::to_string).collect();
                words.push(format!("husk.dns={}", list.join(",")));
            }
        }
        if self.run_once {
            words.push("husk.run_once".into());
        }
        if self.no_serve {
            words.push("husk.no_serve".into());
        }
        if let Some(b) = &self.build {
            check_word("husk.build", &b.blobs)?;
            check_word("husk.build", &b.target)?;
            if parse_build(&format!("{}:{}", b.blobs, b.target)).is_none() {
                return Err(BootParamError::Unrenderable {
                    what: "husk.build",
                    value: format!("{}:{}", b.blobs, b.target),
                    reason: "two device names without ':' or '/'",
                });
            }
            words.push(format!("husk.build={}:{}", b.blobs, b.target));
        }
        Ok(words.join(" "))
    }

    /// Reads the `husk.*` parameters of a kernel command line.
    pub fn parse(cmdline: &str) -> Result<Self, BootParamError> {
        let mut params = BootParams::default();
        let mut ip = None;
        let mut gateway = None;
        let mut dns = Vec::new();
        for word in cmdline.split_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            let bad = |reason| BootParamError::Malformed {
                param: word.to_string(),
                reason,
            };
            match key {
                "husk.disk" => params
                    .disks
                    .push(parse_disk(value).ok_or_else(|| bad("expected DEV:/PATH[:ro]"))?),
                "husk.ip" => ip = Some(parse_cidr(value).ok_or_else(|| bad("expected A.B.C.D/N"))?),
                "husk.gw" => gateway = Some(value.parse().map_err(|_| bad("expected A.B.C.D"))?),
                "husk.dns" => {
                    for s in value.split(',') {
                        dns.push(s.parse().map_err(|_| bad("expected IP[,IP...]"))?);
                    }
                }
                "husk.run_once" => params.run_once = true,
                "husk.no_serve" => params.no_serve = true,
                "husk.build" => {
                    params.build =
                        Some(parse_build(value).ok_or_else(|| bad("expected BLOBS:TARGET"))?)
                }
                k if k.starts_with("husk.") => return Err(bad("unknown husk parameter")),
                _ => {}
            }
        }
        params.net = ip.map(|(ip, prefix)| GuestNet {
            ip,
            prefix,
            gateway,
            dns,
        });
        Ok(params)
    }
}

fn check_word(what: &'static str, value: &str) -> Result<(), BootParamError> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c == '"') {
        return Err(BootParamError::Unrenderable {
            what,
            value: value.to_string(),
            reason: "empty, or has spaces or quotes",
        });
    }
    Ok(())
}

fn parse_disk(spec: &str) -> Option<DiskMount> {
    let mut parts = spec.split(':');
    let device = parts.next().filter(|d| !d.is_empty() && !d.contains('/'))?;
    let path = parts.next().filter(|p| p.starts_with('/'))?;
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(DiskMount {
        device: device.to_string(),
        path: path.to_string(),
        read_only,
    })
}

/// `BLOBS:TARGET`: two distinct device names (not empty; no `/`, `:`,
/// quote or space, so that what parses also renders).
fn parse_build(spec: &str) -> Option<BuildDisks> {
    let (blobs, target) = spec.split_once(':')?;
    let device =
        |d: &str| !d.is_empty() && !d.contains(['/', ':', '"']) && !d.contains(char::is_whitespace);
    if !device(blobs) || !device(target) || blobs == target {
        return None;
    }
    Some(BuildDisks {
        blobs: blobs.to_string(),
        target: target.to_string(),
    })
}

fn parse_cidr(spec: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = spec.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((ip.parse().ok()?, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BootParams {
        BootParams {
            disks: vec![
                DiskMount {
                    device: "vda".into(),
                    path: "/run/husk/image".into(),
                    read_only: true,
                },
                DiskMount {
                    device: "vdb".into(),
                    path: "/run/husk/containers/c".into(),
                    read_only: false,
                },
            ],
            net: Some(GuestNet {
                ip: Ipv4Addr::new(10, 88, 0, 2),
                prefix: 30,
                gateway: Some(Ipv4Addr::new(10, 88, 0, 1)),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
            }),
            run_once: true,
            no_serve: false,
            build: None,
        }
    }

    #[test]
    fn render_then_parse_is_identity() {
        let p = sample();
        let line = p.render().unwrap();
        assert_eq!(
            line,
            "husk.disk=vda:/run/husk/image:ro husk.disk=vdb:/run/husk/containers/c \
             husk.ip=10.88.0.2/30 husk.gw=10.88.0.1 husk.dns=10.0.2.3,1.1.1.1 husk.run_once"
        );
        let back = BootParams::parse(&format!("console=ttyS0 quiet {line} panic=-1")).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            BootParams::parse("console=ttyS0").unwrap(),
            BootParams::default()
        );
    }

    #[test]
    fn malformed_parameters_are_errors() {
        for bad in [
            "husk.disk=../x:/y",
            "husk.disk=vdd:rel",
            "husk.disk=vde:/z:bogus",
            "husk.disk=vde:/z:ro:x",
            "husk.ip=1.2.3.4/33",
            "husk.ip=1.2.3/24",
            "husk.gw=10.88.0",
            "husk.dns=1.1.1.1,,8.8.8.8",
            "husk.bogus",
            "husk.build",
            "husk.build=vda",
            "husk.build=vda:",
            "husk.build=vda:vda",
            "husk.build=vda:vdb:vdc",
            "husk.build=../vda:vdb",
        ] {
            let err = BootParams::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn build_mode_renders_and_parses_back() {
        let p = BootParams {
            build: Some(BuildDisks {
                blobs: "vda".into(),
                target: "vdb".into(),
            }),
            no_serve: false,
            ..BootParams::default()
        };
        let line = p.render().unwrap();
        assert_eq!(line, "husk.build=vda:vdb");
        assert_eq!(BootParams::parse(&format!("quiet {line}")).unwrap(), p);
        assert_eq!(BootParams::parse("quiet").unwrap().build, None);
        assert!(BootParams::parse("husk.build=v\"a:vdb").is_err());
        let mut bad = p.clone();
        bad.build = Some(BuildDisks {
            blobs: "vda".into(),
            target: "vda".into(),
        });
        assert!(bad.render().is_err());
        bad.build = Some(BuildDisks {
            blobs: "v:a".into(),
            target: "vdb".into(),
        });
        assert!(bad.render().is_err());
    }

    #[test]
    fn unrenderable_values_are_refused() {
        let mut p = sample();
        p.disks[0].path = "/a b".into();
        assert!(p.render().is_err());
        let mut p = sample();
        p.disks[0].path = "/a:b".into();
        assert!(p.render().is_err());
    }
}
