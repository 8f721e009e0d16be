//! Docker's `-p` port specifications: `[[HOST_IP:][HOST_PORT]:]CONTAINER_PORT[/PROTO]`,
//! with optional port ranges (`8000-8002:80-82`, `80-82`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Port specification errors, worded as Docker words them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    /// The specification as a whole does not parse.
    #[error("invalid port specification: {0:?}")]
    Invalid(String),
    /// The host IP is not an IP address.
    #[error("invalid IP address: {0}")]
    InvalidIp(String),
    /// The container port is missing.
    #[error("no port specified: {0}<empty>")]
    NoPort(String),
    /// The container port (or range) does not parse or is 0.
    #[error("invalid containerPort: {0}")]
    InvalidContainerPort(String),
    /// The host port (or range) does not parse.
    #[error("invalid hostPort: {0}")]
    InvalidHostPort(String),
    /// The protocol is neither tcp nor udp.
    #[error("invalid proto: {0}")]
    InvalidProto(String),
    /// A host range whose length differs from the container range.
    #[error("invalid ranges specified for container and host Ports: {container} and {host}")]
    InvalidRanges {
        /// The container port range as written.
        container: String,
        /// The host port range as written.
        host: String,
    },
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One port to publish, as given by `-p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Host address to listen on; `None` means all IPv4 addresses (0.0.0.0).
    pub host_ip: Option<IpAddr>,
    /// Host port; `None` (or `0` on the command line) means an ephemeral port.
    pub host_port: Option<u16>,
    /// The port inside the container.
    pub container_port: u16,
    /// The protocol.
    pub proto: Proto,
}

impl PortSpec {
    /// Parses one `-p` value, expanding ranges (`8000-8001:80-81/udp`) into
    /// one spec per port.
    pub fn parse_all(raw: &str) -> Result<Vec<PortSpec>, PortSpecError> {
        let (ip, host, container) = split_parts(raw)?;
        let (container, proto) = match container.split_once('/') {
            Some((port, proto)) => (port, proto),
            None => (container, "tcp"),
        };
        let host_ip = parse_ip(ip)?;
        if container.is_empty() {
            return Err(PortSpecError::NoPort(raw.to_string()));
        }
        let (c_start, c_end) = parse_range(container)
            .filter(|(start, _)| *start != 0)
            .ok_or_else(|| PortSpecError::InvalidContainerPort(container.to_string()))?;
        let host_range = if host.is_empty() {
            None
        } else {
            Some(
                parse_range(host)
                    .ok_or_else(|| PortSpecError::InvalidHostPort(host.to_string()))?,
            )
        };
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(PortSpecError::InvalidProto(proto.to_string())),
        };
        if let Some((h_start, h_end)) = host_range {
            // Docker lets a host range with one container port mean "any port
            // of the range"; husk supports only equal lengths.
            if h_end - h_start != c_end - c_start || (h_start == 0 && h_end != 0) {
                return Err(PortSpecError::InvalidRanges {
                    container: container.to_string(),
                    host: host.to_string(),
                });
            }
        }
        Ok((c_start..=c_end)
            .map(|container_port| PortSpec {
                host_ip,
                host_port: host_range
                    .map(|(h_start, _)| h_start + (container_port - c_start))
                    .filter(|p| *p != 0),
                container_port,
                proto,
            })
            .collect())
    }
}

impl FromStr for PortSpec {
    type Err = PortSpecError;

    /// Parses one `-p` value naming a single port (use
    /// [`PortSpec::parse_all`] for ranges).
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let mut all = PortSpec::parse_all(raw)?;
        match all.len() {
            1 => Ok(all.remove(0)),
            _ => Err(PortSpecError::Invalid(raw.to_string())),
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        match self.host_port {
            Some(port) => write!(f, "{port}:")?,
            None if self.host_ip.is_some() => f.write_str(":")?,
            None => {}
        }
        write!(f, "{}/{}", self.container_port, self.proto)
    }
}

/// Splits `IP:HOST:CONTAINER` (the IP may be a bracketed IPv6 address).
fn split_parts(raw: &str) -> Result<(&str, &str, &str), PortSpecError> {
    let invalid = || PortSpecError::Invalid(raw.to_string());
    if raw.is_empty() {
        return Err(invalid());
    }
    if let Some(rest) = raw.strip_prefix('[') {
        let (ip, rest) = rest.split_once(']').ok_or_else(invalid)?;
        let rest = rest.strip_prefix(':').ok_or_else(invalid)?;
        let (host, container) = rest.split_once(':').ok_or_else(invalid)?;
        if container.contains(':') {
            return Err(invalid());
        }
        return Ok((ip, host, container));
    }
    let parts: Vec<&str> = raw.split(':').collect();
    match parts.as_slice() {
        [container] => Ok(("", "", container)),
        [host, container] => Ok(("", host, container)),
        [ip, host, container] => Ok((ip, host, container)),
        _ => Err(invalid()),
    }
}

fn parse_ip(ip: &str) -> Result<Option<IpAddr>, PortSpecError> {
    if ip.is_empty() {
        return Ok(None);
    }
    ip.parse()
        .map(Some)
        .map_err(|_| PortSpecError::InvalidIp(ip.to_string()))
}

/// Parses `N` or `N-M` (M >= N) of decimal ports.
fn parse_range(s: &str) -> Option<(u16, u16)> {
    let port = |p: &str| -> Option<u16> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            (b >= a).then_some((a, b))
        }
        None => port(s).map(|p| (p, p)),
    }
}

/// A port actually published on the host (ephemeral ports resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedPort {
    /// The address the host listens on.
    pub host_ip: IpAddr,
    /// The host port.
    pub host_port: u16,
    /// The port inside the container.
    pub container_port: u16,
    /// The protocol.
    pub proto: Proto,
}

impl fmt::Display for PublishedPort {
    /// Docker's `docker port` form: `80/tcp -> 0.0.0.0:8080`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} -> {}",
            self.container_port,
            self.proto,
            std::net::SocketAddr::new(self.host_ip, self.host_port)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn spec(ip: Option<IpAddr>, host: Option<u16>, container: u16, proto: Proto) -> PortSpec {
        PortSpec {
            host_ip: ip,
            host_port: host,
            container_port: container,
            proto,
        }
    }

    fn err(raw: &str) -> String {
        raw.parse::<PortSpec>().unwrap_err().to_string()
    }

    const LOCAL: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));

    #[test]
    fn every_docker_form() {
        let p = |s: &str| s.parse::<PortSpec>().unwrap();
        assert_eq!(p("8080:80"), spec(None, Some(8080), 80, Proto::Tcp));
        assert_eq!(
            p("127.0.0.1:8080:80"),
            spec(LOCAL, Some(8080), 80, Proto::Tcp)
        );
        assert_eq!(p("127.0.0.1::80"), spec(LOCAL, None, 80, Proto::Tcp));
        assert_eq!(p("80"), spec(None, None, 80, Proto::Tcp));
        assert_eq!(p("8080:80/tcp"), spec(None, Some(8080), 80, Proto::Tcp));
        assert_eq!(p("53:53/udp"), spec(None, Some(53), 53, Proto::Udp));
        assert_eq!(p("53:53/UDP"), spec(None, Some(53), 53, Proto::Udp));
        assert_eq!(p("0:80"), spec(None, None, 80, Proto::Tcp));
        assert_eq!(p(":80"), spec(None, None, 80, Proto::Tcp));
        assert_eq!(
            p("[::1]:8080:80"),
            spec(
                Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                Some(8080),
                80,
                Proto::Tcp
            )
        );
    }

    #[test]
    fn ranges_expand() {
        let all = PortSpec::parse_all("127.0.0.1:8000-8001:80-81/udp").unwrap();
        assert_eq!(
            all,
            vec![
                spec(LOCAL, Some(8000), 80, Proto::Udp),
                spec(LOCAL, Some(8001), 81, Proto::Udp)
            ]
        );
        let all = PortSpec::parse_all("80-82").unwrap();
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|s| s.host_port.is_none()));
        assert_eq!(err("80-81"), "invalid port specification: \"80-81\"");
    }

    #[test]
    fn every_error() {
        assert_eq!(err(""), "invalid port specification: \"\"");
        assert_eq!(err("1:2:3:4"), "invalid port specification: \"1:2:3:4\"");
        assert_eq!(
            err("[::1:80:80"),
            "invalid port specification: \"[::1:80:80\""
        );
        assert_eq!(
            err("[::1]80:80"),
            "invalid port specification: \"[::1]80:80\""
        );
        assert_eq!(err("[::1]:80"), "invalid port specification: \"[::1]:80\"");
        assert_eq!(err("x"), "invalid containerPort: x");
        assert_eq!(err("0"), "invalid containerPort: 0");
        assert_eq!(err("70000"), "invalid containerPort: 70000");
        assert_eq!(err("8080:+80"), "invalid containerPort: +80");
        assert_eq!(err("90-80"), "invalid containerPort: 90-80");
        assert_eq!(err("8080:"), "no port specified: 8080:<empty>");
        assert_eq!(err("x:80"), "invalid hostPort: x");
        assert_eq!(err("1.2.3:80:80"), "invalid IP address: 1.2.3");
        assert_eq!(err("8080:80/sctp"), "invalid proto: sctp");
        assert_eq!(err("8080:80/"), "invalid proto: ");
        assert_eq!(
            err("8000-8002:80-81"),
            "invalid ranges specified for container and host Ports: 80-81 and 8000-8002"
        );
        assert_eq!(
            err("0-1:80-81"),
            "invalid ranges specified for container and host Ports: 80-81 and 0-1"
        );
    }

    #[test]
    fn display_round_trips() {
        for raw in [
            "8080:80",
            "127.0.0.1::80",
            "80",
            "[::1]:1:2/udp",
            "1.2.3.4:5:6",
        ] {
            let s: PortSpec = raw.parse().unwrap();
            assert_eq!(s.to_string().parse::<PortSpec>().unwrap(), s, "{raw}");
        }
        assert_eq!(
            "127.0.0.1::80".parse::<PortSpec>().unwrap().to_string(),
            "127.0.0.1::80/tcp"
        );
    }

    #[test]
    fn serde_form() {
        let s: PortSpec = "127.0.0.1:8080:80/udp".parse().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"host_ip":"127.0.0.1","host_port":8080,"container_port":80,"proto":"udp"}"#
        );
        assert_eq!(serde_json::from_str::<PortSpec>(&json).unwrap(), s);
        let p = PublishedPort {
            host_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            host_port: 8080,
            container_port: 80,
            proto: Proto::Tcp,
        };
        assert_eq!(p.to_string(), "80/tcp -> 0.0.0.0:8080");
        let back: PublishedPort =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
