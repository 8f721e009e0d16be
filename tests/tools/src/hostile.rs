//! `husk-hostile`: what a hostile tenant does as root in its guest, for the
//! e2e scenario `hostile`. It runs in a container (full capabilities in the
//! guest, the guest's network namespace) and, as a listener, in the test host.
//!
//! - `vsock-flood SECONDS`: opens and drops non-blocking vsock connections to
//!   the host (CID 2) on every port in turn, husk's stdio ports included.
//! - `frames SECONDS`: connects to the host's stdio ports and sends oversized
//!   lengths, malformed JSON, hellos for other containers and junk.
//! - `debug-port SECONDS`: writes boot markers and other values (never the
//!   power-off value) to husk's debug port.
//! - `udp-send SRC DST:PORT [MSG]`: one UDP datagram with source address SRC
//!   (forged through a raw socket), source port 9999; SRC `self` sends
//!   through an ordinary socket.
//! - `dns SRC`: a DNS query to the first nameserver of /etc/resolv.conf with
//!   source SRC and port 9999; with SRC our own address, waits 5 s for an
//!   answer and prints `answered` or `no answer`.
//! - `udp-listen PORT`: prints `got FROM BYTES` for each datagram on PORT.
//! - `agent-loopback`: connects to the agent's control port through vsock
//!   loopback (CID 1 and the guest's own CID) and says hello; prints, per
//!   CID, `answered`, `closed` or `refused`.
//! - `wedge`: lifts the guest's real-time throttling, spins a SCHED_FIFO 99
//!   thread on every CPU and nice -20 threads for the fair-class share left,
//!   so nothing else in the guest (its agent included) gets to run.
//!
//! Each command prints what it did; it exits non-zero on bad usage.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use husk_proto::guest::{
    exec_stdio_ports, DEBUG_PORT, DEBUG_PORT_BOOT_MARKER, DEBUG_PORT_POWER_OFF, INIT_STDIO_PORTS,
};

/// The host's vsock context id.
const HOST_CID: u32 = 2;
/// The source port of forged datagrams (the victim listens on it).
const SPOOF_PORT: u16 = 9999;
/// Fair-class spinners of `wedge`: the kernel keeps 5% of each CPU for
/// fair-class tasks even under real-time load (its fair server), which these
/// share with the agent at 88 times its weight each.
const GREEDY_THREADS: usize = 64;
/// IP protocol number of UDP.
const IPPROTO_UDP: u8 = 17;

/// An address family as a socket address holds it.
fn family(af: libc::c_int) -> libc::sa_family_t {
    libc::sa_family_t::try_from(af).unwrap_or_default()
}

/// The size of socket address type `T`.
fn len_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or_default()
}

/// `body` after its u32 big-endian length (an agent frame).
fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = u32::try_from(body.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes()
        .to_vec();
    v.extend_from_slice(body);
    v
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match args.as_slice() {
        ["vsock-flood", secs] => secs_arg(secs).map(vsock_flood),
        ["frames", secs] => secs_arg(secs).map(frames),
        ["debug-port", secs] => secs_arg(secs).and_then(debug_port),
        ["udp-send", src, dst] => udp_send(src, dst, None),
        ["udp-send", src, dst, msg] => udp_send(src, dst, Some(msg)),
        ["dns", src] => dns(src),
        ["udp-listen", port] => port.parse().map_err(bad_arg).and_then(udp_listen),
        ["wedge"] => wedge(),
        ["agent-loopback"] => {
            agent_loopback();
            Ok(())
        }
        _ => {
            eprintln!("usage: husk-hostile vsock-flood|frames|debug-port SECONDS | udp-send SRC|self DST:PORT [MSG] | dns SRC | udp-listen PORT | wedge");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-hostile: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bad_arg(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

fn secs_arg(s: &str) -> io::Result<Duration> {
    s.parse().map(Duration::from_secs).map_err(bad_arg)
}

/// A vsock socket to the host's `port`, non-blocking; the connect is only
/// started.
fn vsock_connect_nonblocking(port: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor this function owns.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zeroes are valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = family(libc::AF_VSOCK);
    addr.svm_cid = HOST_CID;
    addr.svm_port = port;
    // SAFETY: addr is a valid sockaddr_vm of the size passed.
    let r = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(addr).cast(),
            len_of::<libc::sockaddr_vm>(),
        )
    };
    let err = io::Error::last_os_error();
    if r != 0 && err.raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(err);
    }
    Ok(owned)
}

fn vsock_flood(limit: Duration) {
    let start = Instant::now();
    let (mut started, mut refused) = (0u64, 0u64);
    let mut open = Vec::with_capacity(128);
    let mut port = 1u32;
    while start.elapsed() < limit {
        match vsock_connect_nonblocking(port) {
            Ok(fd) => {
                started += 1;
                open.push(fd);
                if open.len() >= 128 {
                    open.clear();
                }
            }
            Err(_) => refused += 1,
        }
        port = if port >= 65535 { 1 } else { port + 1 };
    }
    println!(
        "vsock-flood: {started} connects started ({refused} refused at once) in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// The host ports the agent's stdio connections go to: the init's and the
/// first execs'.
fn stdio_ports() -> Vec<u32> {
    let mut ports = INIT_STDIO_PORTS.to_vec();
    for n in 0..16 {
        ports.extend(exec_stdio_ports(n).unwrap_or_default());
    }
    ports
}

/// The hostile payloads, in turn: a length past any cap, one just past the
/// 4 MiB frame cap, malformed JSON, another container's hello then junk.
fn payload(i: usize) -> Vec<u8> {
    match i % 4 {
        0 => 0xffff_fff0u32.to_be_bytes().to_vec(),
        1 => ((4u32 << 20) + 1).to_be_bytes().to_vec(),
        2 => framed(b"{\"id\": \"c\", \"stream\": [[[[[[[[[["),
        _ => {
            let mut v = framed(br#"{"id":"someone-else","exec_id":null,"stream":"stdout"}"#);
            v.extend(std::iter::repeat_n(b'x', 256 << 10));
            v
        }
    }
}

fn frames(limit: Duration) {
    let start = Instant::now();
    let ports = stdio_ports();
    let (mut sent, mut failed, mut i) = (0u64, 0u64, 0usize);
    while start.elapsed() < limit {
        let port = ports[i % ports.len()];
        match vsock::VsockStream::connect_with_cid_port(HOST_CID, port) {
            Ok(mut s) => {
                let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
                match s.write_all(&payload(i)) {
                    Ok(()) => sent += 1,
                    Err(_) => failed += 1,
                }
            }
            Err(_) => failed += 1,
        }
        i += 1;
    }
    println!(
        "frames: {sent} hostile frames delivered, {failed} connects or writes refused, in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

fn debug_port(limit: Duration) -> io::Result<()> {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(u64::from(DEBUG_PORT), 1, 1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let start = Instant::now();
    let mut writes = 0u64;
    let mut value = 0u8;
    while start.elapsed() < limit {
        for _ in 0..1000 {
            let v = if writes.is_multiple_of(2) {
                DEBUG_PORT_BOOT_MARKER
            } else {
                value
            };
            value = value.wrapping_add(1);
            if v != DEBUG_PORT_POWER_OFF {
                // SAFETY: ioperm above granted access to exactly this port; the
                // `out` touches no memory.
                unsafe {
                    std::arch::asm!("out dx, al", in("dx") DEBUG_PORT, in("al") v,
                        options(nomem, nostack, preserves_flags));
                }
            }
            writes += 1;
        }
    }
    println!(
        "debug-port: {writes} writes in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn checksum(words: &[u8]) -> u16 {
    let mut sum: u32 = words
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// An IPv4 UDP packet from `src`:[`SPOOF_PORT`] to `dst` (UDP checksum 0:
/// none, as IPv4 allows).
fn udp_packet(src: Ipv4Addr, dst: SocketAddrV4, data: &[u8]) -> Vec<u8> {
    let udp_len = u16::try_from(8 + data.len()).unwrap_or(u16::MAX);
    let total = udp_len.saturating_add(20);
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, IPPROTO_UDP, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.ip().octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&SPOOF_PORT.to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(data);
    p
}

/// Sends `packet` (a whole IPv4 packet) through a raw socket.
fn send_raw(packet: &[u8], dst: SocketAddrV4) -> io::Result<()> {
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor this function owns.
    let _owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: family(libc::AF_INET),
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: packet and addr are valid for the lengths passed.
    let n = unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            std::ptr::addr_of!(addr).cast(),
            len_of::<libc::sockaddr_in>(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn udp_send(src: &str, dst: &str, msg: Option<&str>) -> io::Result<()> {
    let dst: SocketAddrV4 = dst.parse().map_err(bad_arg)?;
    let msg = msg.map_or_else(
        || format!("a datagram claiming to be from {src}"),
        str::to_string,
    );
    if src == "self" {
        UdpSocket::bind(("0.0.0.0", 0))?.send_to(msg.as_bytes(), dst)?;
        println!("udp-send: -> {dst} sent");
        return Ok(());
    }
    let src: Ipv4Addr = src.parse().map_err(bad_arg)?;
    send_raw(&udp_packet(src, dst, msg.as_bytes()), dst)?;
    println!("udp-send: {src}:{SPOOF_PORT} -> {dst} sent");
    Ok(())
}

fn nameserver() -> io::Result<Ipv4Addr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| io::Error::new(e.kind(), format!("/etc/resolv.conf: {e}")))?;
    conf.lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .find_map(|a| a.trim().parse().ok())
        .ok_or_else(|| bad_arg("no IPv4 nameserver in /etc/resolv.conf"))
}

/// A DNS query for `example.com` A, id 0x4855.
fn dns_query() -> Vec<u8> {
    let mut q = vec![0x48, 0x55, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["example", "com"] {
        q.push(u8::try_from(label.len()).unwrap_or(0));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn dns(src: &str) -> io::Result<()> {
    let src: Ipv4Addr = src.parse().map_err(bad_arg)?;
    let server = SocketAddrV4::new(nameserver()?, 53);
    // Bound first, so an answer to our own address is not lost.
    let sock = UdpSocket::bind(("0.0.0.0", SPOOF_PORT)).ok();
    send_raw(&udp_packet(src, server, &dns_query()), server)?;
    println!("dns: query {src}:{SPOOF_PORT} -> {server} sent");
    let Some(sock) = sock else {
        return Ok(());
    };
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 1500];
    let answered = matches!(sock.recv_from(&mut buf), Ok((n, from)) if n >= 2 && buf[..2] == [0x48, 0x55] && from.port() == 53);
    println!("dns: {}", if answered { "answered" } else { "no answer" });
    Ok(())
}

fn udp_listen(port: u16) -> io::Result<()> {
    let sock = UdpSocket::bind(("0.0.0.0", port))?;
    println!("udp-listen: on {port}");
    io::stdout().flush()?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
        println!("got {from} {n} {text}");
        io::stdout().flush()?;
    }
}

/// Moves this thread to `cpu` at SCHED_FIFO 99.
fn go_real_time(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it; the calls
    // read only the values passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
        let param = libc::sched_param { sched_priority: 99 };
        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Gives this thread the highest fair-class weight (nice -20).
fn go_greedy() -> io::Result<()> {
    // SAFETY: setpriority takes no pointers; `who` 0 is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -20) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// Lifts real-time throttling: through /proc/sys, or (read-only there) a
/// proc mounted anew.
fn lift_rt_throttling() -> io::Result<()> {
    const KNOB: &str = "sys/kernel/sched_rt_runtime_us";
    if std::fs::write(format!("/proc/{KNOB}"), "-1").is_ok() {
        return Ok(());
    }
    let dir = "/tmp/hostile-proc";
    std::fs::create_dir_all(dir)?;
    let c = |s: &str| std::ffi::CString::new(s).map_err(bad_arg);
    let (src, target, fstype) = (c("proc")?, c(dir)?, c("proc")?);
    // SAFETY: the strings are NUL-terminated and outlive the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    std::fs::write(format!("{dir}/{KNOB}"), "-1")
}

fn wedge() -> io::Result<()> {
    let throttle = lift_rt_throttling();
    // SAFETY: sysconf takes no pointers.
    let cpus = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1);
    let go = Arc::new(Barrier::new(cpus + GREEDY_THREADS));
    let (tx, rx) = mpsc::channel();
    for cpu in 1..cpus {
        let (go, tx) = (go.clone(), tx.clone());
        thread::spawn(move || {
            let _ = tx.send((cpu, go_real_time(cpu)));
            go.wait();
            spin()
        });
    }
    drop(tx);
    let greedy: Vec<_> = (0..GREEDY_THREADS)
        .map(|_| {
            let go = go.clone();
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                let _ = tx.send(go_greedy());
                go.wait();
                spin()
            });
            rx
        })
        .collect();
    let greedy_ok = greedy
        .iter()
        .filter(|rx| matches!(rx.recv(), Ok(Ok(()))))
        .count();
    let mut report = vec![format!(
        "real-time throttling {}",
        match &throttle {
            Ok(()) => "lifted".to_string(),
            Err(e) => format!("kept ({e})"),
        }
    )];
    report.extend(rx.iter().map(|(cpu, r)| match r {
        Ok(()) => format!("cpu {cpu}: FIFO 99"),
        Err(e) => format!("cpu {cpu}: {e}"),
    }));
    report.push(format!(
        "{greedy_ok} of {GREEDY_THREADS} nice -20 spinners for the fair share the kernel keeps"
    ));
    println!("wedge: {}; spinning on {cpus} CPUs", report.join(", "));
    io::stdout().flush()?;
    // Time for the agent to relay the line, then nothing else runs.
    thread::sleep(Duration::from_secs(2));
    go_real_time(0)?;
    go.wait();
    spin()
}

/// Says hello to the agent's control port at `cid` and reads for 5 s.
fn hello_at(cid: u32) -> String {
    use husk_proto::agent::{write_frame, Envelope, Request, PROTOCOL_VERSION};
    use std::io::Read;
    let mut s =
        match vsock::VsockStream::connect_with_cid_port(cid, husk_proto::guest::CONTROL_PORT) {
            Ok(s) => s,
            Err(e) => return format!("refused ({e})"),
        };
    if let Err(e) = s.set_read_timeout(Some(Duration::from_secs(5))) {
        return format!("refused ({e})");
    }
    let hello = Envelope {
        version: PROTOCOL_VERSION,
        seq: 1,
        body: Request::Hello {
            version: PROTOCOL_VERSION,
        },
    };
    if write_frame(&mut s, &hello).is_err() {
        return "closed".into();
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => "closed".into(),
        Ok(_) => "answered".into(),
    }
}

fn agent_loopback() {
    for cid in [libc::VMADDR_CID_LOCAL, husk_proto::guest::GUEST_CID] {
        println!("agent-loopback: cid {cid}: {}", hello_at(cid));
    }
}
