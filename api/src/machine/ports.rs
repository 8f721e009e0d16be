//! Published ports: keeps QEMU's host forwards in step with the ports
//! containers publish inside the machine. The rules this side added are
//! recorded in `<dir>/ports.json` (under `<dir>/ports.lock`), so stale ones
//! can be removed and other rules are never touched.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::client::Client;
use super::qemu::hmp;
use super::{ForwardedPort, MachineError, Result};

/// How often the ports are reconciled while a command runs.
const PERIOD: Duration = Duration::from_secs(2);

fn io_err(p: &Path, e: std::io::Error) -> MachineError {
    MachineError::Io(p.display().to_string(), e)
}

/// The HMP rule text for a port, without the guest side.
fn rule(p: &ForwardedPort) -> String {
    format!("{}:{}:{}", p.proto, p.host_ip, p.host_port)
}

/// Whether the outer host can bind the port now.
fn free_on_host(p: &ForwardedPort) -> bool {
    match p.proto.as_str() {
        "udp" => UdpSocket::bind((p.host_ip, p.host_port)).is_ok(),
        _ => TcpListener::bind((p.host_ip, p.host_port)).is_ok(),
    }
}

/// Normalises what the machine reports: tcp/udp only, IPv6 "any" as IPv4
/// "any" (QEMU's user network forwards IPv4).
fn wanted(list: Vec<ForwardedPort>) -> BTreeSet<ForwardedPort> {
    list.into_iter()
        .filter(|p| p.proto == "tcp" || p.proto == "udp")
        .filter_map(|mut p| {
            if p.host_ip.is_unspecified() {
                p.host_ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            }
            p.host_ip.is_ipv4().then_some(p)
        })
        .collect()
}

/// Brings QEMU's forwards in line with `client`'s port list. Ports taken on
/// the host are skipped and returned as one-line messages.
pub fn reconcile(dir: &Path, client: &Client) -> Result<Vec<String>> {
    let want = wanted(client.ports()?);
    let lock_path = dir.join("ports.lock");
    let _lock = crate::lockfile::lock_exclusive(&lock_path).map_err(|e| io_err(&lock_path, e))?;
    let rec_path = dir.join("ports.json");
    let mut have: BTreeSet<ForwardedPort> = fs::read(&rec_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut problems = Vec::new();
    for p in have.clone().difference(&want) {
        hmp(dir, &format!("hostfwd_remove net0 {}", rule(p)))?;
        have.remove(p);
    }
    for p in want.difference(&have.clone()) {
        if !free_on_host(p) {
            problems.push(format!(
                "cannot publish port {}:{}/{}: it is already in use on this host",
                p.host_ip, p.host_port, p.proto
            ));
            continue;
        }
        let out = hmp(
            dir,
            &format!("hostfwd_add net0 {}-:{}", rule(p), p.host_port),
        )?;
        if out.is_empty() {
            have.insert(p.clone());
        } else {
            problems.push(format!(
                "cannot publish port {}:{}/{}: {}",
                p.host_ip,
                p.host_port,
                p.proto,
                out.lines().last().unwrap_or("")
            ));
        }
    }
    fs::write(&rec_path, serde_json::to_vec(&have).unwrap_or_default())
        .map_err(|e| io_err(&rec_path, e))?;
    Ok(problems)
}

/// Reconciles every two seconds on a thread while a command runs, and once
/// more at [`Poller::finish`]. Each problem is printed once on stderr.
#[derive(Debug)]
pub struct Poller {
    dir: PathBuf,
    client: Client,
    stop: Arc<AtomicBool>,
    said: Arc<Mutex<BTreeSet<String>>>,
    thread: Option<JoinHandle<()>>,
}

fn report(said: &Mutex<BTreeSet<String>>, problems: Vec<String>) {
    let mut s = said.lock().unwrap_or_else(|p| p.into_inner());
    for p in problems {
        if s.insert(p.clone()) {
            eprintln!("husk: {p}");
        }
    }
}

impl Poller {
    /// Starts polling.
    pub fn start(dir: &Path, client: &Client) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let said = Arc::new(Mutex::new(BTreeSet::new()));
        let thread = {
            let (dir, client, stop, said) = (
                dir.to_path_buf(),
                client.clone(),
                stop.clone(),
                said.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(p) = reconcile(&dir, &client) {
                        report(&said, p);
                    }
                    for _ in 0..20 {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(PERIOD / 20);
                    }
                }
            })
        };
        Poller {
            dir: dir.to_path_buf(),
            client: client.clone(),
            stop,
            said,
            thread: Some(thread),
        }
    }

    /// Stops polling and reconciles a last time.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        match reconcile(&self.dir, &self.client) {
            Ok(p) => report(&self.said, p),
            Err(e) => eprintln!("husk: published ports: {e}"),
        }
    }
}

/// Reads a JSON list of ports from a file (missing or malformed: none).
pub fn from_file(path: &Path) -> Vec<ForwardedPort> {
    File::open(path)
        .ok()
        .and_then(|f| serde_json::from_reader(f).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(ip: &str, n: u16, proto: &str) -> ForwardedPort {
        ForwardedPort {
            host_ip: ip.parse().unwrap(),
            host_port: n,
            proto: proto.into(),
        }
    }

    #[test]
    fn wanted_keeps_ipv4_tcp_udp_and_maps_any() {
        let w = wanted(vec![
            port("::", 80, "tcp"),
            port("127.0.0.1", 81, "udp"),
            port("::1", 82, "tcp"),
            port("0.0.0.0", 83, "sctp"),
        ]);
        assert_eq!(
            w.into_iter().collect::<Vec<_>>(),
            vec![port("0.0.0.0", 80, "tcp"), port("127.0.0.1", 81, "udp")]
        );
        assert_eq!(rule(&port("127.0.0.1", 81, "udp")), "udp:127.0.0.1:81");
    }

    #[test]
    fn a_bound_port_is_not_free() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let n = l.local_addr().unwrap().port();
        assert!(!free_on_host(&port("127.0.0.1", n, "tcp")));
        drop(l);
        assert!(free_on_host(&port("127.0.0.1", n, "tcp")));
    }
}
