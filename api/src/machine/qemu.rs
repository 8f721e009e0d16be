//! Starting, finding and stopping the machine's QEMU process, and talking to
//! its human monitor (HMP) socket.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::client::Client;
use super::initramfs::{token_archive, Inputs};
use super::{MachineError, Result, GUEST_PORT};

/// Size of the data disk created on first start.
const DISK_BYTES: u64 = 16 << 30;
/// How long the machine may take to answer after QEMU started.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `stop` waits for a clean power-off before killing QEMU.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The module list compiled in from the source tree.
const MODULES: &str = include_str!("../../../guest-kernel/machine-modules.txt");
/// Extra binaries compiled in from the source tree.
const BINARIES: &str = include_str!("../../../guest-kernel/machine-binaries.txt");
/// What container networking needs (`module`/`binary`/`library` lines).
const NET: &str = include_str!("../../../guest-kernel/machine-net.txt");

/// The machine's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Size {
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
}

impl Default for Size {
    fn default() -> Self {
        Size {
            cpus: 2,
            memory_mib: 3072,
        }
    }
}

/// What `<dir>/machine.json` records about the running machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// QEMU's process id.
    pub pid: i32,
    /// The control channel's port on 127.0.0.1.
    pub port: u16,
    /// Its size.
    pub size: Size,
    /// When it started (seconds since the epoch).
    pub started: u64,
    /// The cache key of the initramfs it booted.
    #[serde(default)]
    pub initramfs: String,
}

impl Running {
    /// A client for its control channel.
    pub fn client(&self, dir: &Path) -> Result<Client> {
        let token = fs::read_to_string(dir.join("token"))
            .map_err(|e| MachineError::Io(dir.join("token").display().to_string(), e))?;
        Ok(Client {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            token: token.trim().to_string(),
        })
    }
}

fn io_err(p: &Path, e: std::io::Error) -> MachineError {
    MachineError::Io(p.display().to_string(), e)
}

/// Takes `<dir>/lock` exclusively (released on drop).
pub fn lock(dir: &Path) -> Result<nix::fcntl::Flock<File>> {
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_err(dir, e))?;
    }
    let p = dir.join("lock");
    crate::lockfile::lock_exclusive(&p).map_err(|e| io_err(&p, e))
}

/// The machine's record when its QEMU process is alive.
pub fn running(dir: &Path) -> Option<Running> {
    let r: Running = serde_json::from_slice(&fs::read(dir.join("machine.json")).ok()?).ok()?;
    alive(r.pid).then_some(r)
}

/// Whether `pid` is a live QEMU process.
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.starts_with("qemu"))
        .unwrap_or(false)
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
}

/// The L1 kernel: `$HUSK_MACHINE_KERNEL` or the newest
/// `/boot/vmlinuz-*-cloud-amd64`, with its module directory.
fn l1_kernel() -> Result<(PathBuf, PathBuf)> {
    let kernel = match std::env::var_os("HUSK_MACHINE_KERNEL").filter(|v| !v.is_empty()) {
        Some(k) => PathBuf::from(k),
        None => {
            let mut found: Vec<PathBuf> = fs::read_dir("/boot")
                .map_err(|e| io_err(Path::new("/boot"), e))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap_or_default().to_string_lossy();
                    n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64")
                })
                .collect();
            found.sort_by_key(|p| version_key(&p.to_string_lossy()));
            found.pop().ok_or(MachineError::NoKernel)?
        }
    };
    let name = kernel.file_name().unwrap_or_default().to_string_lossy();
    let ver = name.trim_start_matches("vmlinuz-");
    let mods = PathBuf::from("/lib/modules").join(ver);
    if !kernel.is_file() || !mods.is_dir() {
        return Err(MachineError::NoKernel);
    }
    Ok((kernel, mods))
}

/// Orders "6.1.0-9" before "6.1.0-56": numbers compare as numbers.
fn version_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// The lines of a list file that are not blank or `#` comments.
fn list(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
}

/// The items of a `KIND PATH` list (machine-net.txt) of one kind.
fn items<'a>(text: &'a str, kind: &'a str) -> impl Iterator<Item = &'a str> {
    list(text).filter_map(move |l| {
        let (k, path) = l.split_once(char::is_whitespace)?;
        (k == kind).then(|| path.trim())
    })
}

/// Every module to load, in order: machine-modules.txt, then the ones
/// machine-net.txt adds.
fn modules() -> Vec<&'static str> {
    let mut m: Vec<&str> = list(MODULES).collect();
    for x in items(NET, "module") {
        if !m.contains(&x) {
            m.push(x);
        }
    }
    m
}

/// The `/init` script of the machine.
fn init_script(ver: &str, modules: &[&str]) -> String {
    let mods = modules.join(" ");
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /sys/fs/cgroup
mount -t devpts -o ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t tmpfs shm /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for m in {mods}; do
  insmod /lib/modules/{ver}/kernel/$m || echo "husk machine: insmod $m failed"
done
[ -c /dev/kvm ] || echo "husk machine: /dev/kvm did not appear"
# One idle VM held for the machine's lifetime: KVM then flips no static key
# (no kernel text rewrite) per microVM, which wedges TCG now and then.
/usr/lib/husk/husk-vmm --hold-kvm-keys </dev/null >/dev/null 2>&1 &
hostname husk-machine
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
echo nameserver 10.0.2.3 > /etc/resolv.conf
i=0; while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 /dev/vda /var/lib/husk || echo "husk machine: cannot mount the data disk"
export HOME=/root HUSK_IN_MACHINE=1 HUSK_DATA_DIR=/var/lib/husk HUSK_LIB_DIR=/usr/lib/husk
cd /
echo "husk machine: serving after $(cut -d' ' -f1 /proc/uptime) s"
/usr/bin/husk machine serve --listen 0.0.0.0:{GUEST_PORT} --token-file /etc/husk/token \
  --ports-file /run/husk-machine-ports.json
echo "husk machine: stopping"
kill -TERM -1; sleep 1; kill -KILL -1
sync
umount /var/lib/husk || mount -o remount,ro /var/lib/husk
sync
poweroff -f
"#
    )
}

/// Gathers the initramfs inputs: busybox, the modules, this executable, the
/// microVM assets and the listed binaries.
fn inputs(mods_dir: &Path) -> Result<Inputs> {
    let ver = mods_dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let modules = modules();
    let mut inp = Inputs {
        init: init_script(&ver, &modules),
        ..Default::default()
    };
    inp.file("/bin/busybox", Path::new("/bin/busybox"));
    for m in &modules {
        let src = mods_dir.join("kernel").join(m);
        if !src.is_file() {
            return Err(MachineError::Io(
                src.display().to_string(),
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        inp.file(&format!("/lib/modules/{ver}/kernel/{m}"), &src);
    }
    let exe =
        std::env::current_exe().map_err(|e| MachineError::Io("the husk executable".into(), e))?;
    inp.executable("/usr/bin/husk", &exe)?;
    let assets = crate::assets::find()?;
    inp.executable("/usr/lib/husk/husk-vmm", &assets.vmm)?;
    inp.file("/usr/lib/husk/vmlinux", &assets.kernel);
    inp.file("/usr/lib/husk/initramfs.cpio.gz", &assets.initrd);
    for b in list(BINARIES).chain(items(NET, "binary")) {
        inp.executable(b, Path::new(b))?;
    }
    for l in items(NET, "library") {
        inp.file(l, Path::new(l));
    }
    Ok(inp)
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| MachineError::Io("a free port on 127.0.0.1".into(), e))
}

fn random_token() -> Result<String> {
    let mut b = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| io_err(Path::new("/dev/urandom"), e))?;
    Ok(hex::encode(b))
}

fn write_private(p: &Path, data: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| io_err(p, e))?;
    f.write_all(data).map_err(|e| io_err(p, e))
}

fn ensure_disk(dir: &Path) -> Result<PathBuf> {
    let disk = dir.join("disk.img");
    if disk.is_file() {
        return Ok(disk);
    }
    let tmp = dir.join("disk.img.tmp");
    let f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.set_len(DISK_BYTES).map_err(|e| io_err(&tmp, e))?;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "husk-data"])
        .arg(&tmp)
        .output()
        .map_err(|e| MachineError::Exec("mkfs.ext4 (install e2fsprogs)".into(), e))?;
    if !out.status.success() {
        return Err(MachineError::Qemu(format!(
            "mkfs.ext4 {} failed: {}",
            tmp.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    fs::rename(&tmp, &disk).map_err(|e| io_err(&disk, e))?;
    Ok(disk)
}

/// The last lines of the console log, for error messages.
pub fn console_tail(dir: &Path, n: usize) -> String {
    let text = fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("Unhandled WRMSR"))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The size the next start uses: the last one recorded, else the default.
pub fn saved_size(dir: &Path) -> Size {
    fs::read(dir.join("size.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Starts the machine unless it runs; returns its record and whether this
/// call started it. `announce` is printed on stderr before a start.
/// Takes `<dir>/lock`, so concurrent callers start one machine.
pub fn ensure(dir: &Path, size: Option<Size>, announce: Option<&str>) -> Result<(Running, bool)> {
    let _lock = lock(dir)?;
    if let Some(r) = running(dir) {
        if announce.is_some() && current_key().is_some_and(|k| k != r.initramfs) {
            eprintln!(
                "husk: warning: the husk machine runs an older husk or older microVM files; \
                 `husk machine stop` to update it"
            );
        }
        return Ok((r, false));
    }
    if let Some(msg) = announce {
        eprintln!("{msg}");
    }
    let size = size.unwrap_or_else(|| saved_size(dir));
    let r = start(dir, size)?;
    Ok((r, true))
}

/// The initramfs key the machine would boot with now.
fn current_key() -> Option<String> {
    let (_, mods) = l1_kernel().ok()?;
    inputs(&mods).ok()?.key().ok()
}

fn start(dir: &Path, size: Size) -> Result<Running> {
    let (kernel, mods) = l1_kernel()?;
    let inp = inputs(&mods)?;
    let initramfs = inp.key()?;
    let cached = inp.build_cached(dir)?;
    let disk = ensure_disk(dir)?;
    let token = random_token()?;
    write_private(&dir.join("token"), token.as_bytes())?;
    let boot = dir.join("boot.cpio");
    let mut image = fs::read(&cached).map_err(|e| io_err(&cached, e))?;
    image.extend(token_archive(&token));
    write_private(&boot, &image)?;
    drop(image);
    let port = free_port()?;
    for f in ["pid", "console.log", "ports.json", "machine.json"] {
        let _ = fs::remove_file(dir.join(f));
    }
    let qemu_log = dir.join("qemu.log");
    let log = File::create(&qemu_log).map_err(|e| io_err(&qemu_log, e))?;
    let d = |name: &str| dir.join(name).display().to_string();
    let status = Command::new("qemu-system-x86_64")
        .args(["-name", "husk-machine", "-nodefaults", "-display", "none"])
        .args(["-accel", "tcg,thread=multi", "-cpu", "EPYC,+svm"])
        .args([
            "-smp",
            &size.cpus.to_string(),
            "-m",
            &size.memory_mib.to_string(),
        ])
        .args(["-no-reboot", "-kernel"])
        .arg(&kernel)
        .arg("-initrd")
        .arg(&boot)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .args(["-serial", &format!("file:{}", d("console.log"))])
        .args([
            "-monitor",
            &format!("unix:{},server,nowait", d("monitor.sock")),
        ])
        .args([
            "-drive",
            &format!("file={},if=virtio,format=raw", disk.display()),
        ])
        .args([
            "-netdev",
            &format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_PORT}"),
        ])
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .args(["-pidfile", &d("pid"), "-daemonize"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .map_err(|e| {
            MachineError::Exec("qemu-system-x86_64 (install qemu-system-x86)".into(), e)
        })?;
    if !status.success() {
        let msg = fs::read_to_string(&qemu_log).unwrap_or_default();
        return Err(MachineError::Qemu(format!(
            "qemu-system-x86_64 failed to start: {}",
            msg.lines().last().unwrap_or("no message")
        )));
    }
    let pid_path = dir.join("pid");
    let pid: i32 = fs::read_to_string(&pid_path)
        .map_err(|e| io_err(&pid_path, e))?
        .trim()
        .parse()
        .map_err(|_| MachineError::Qemu(format!("bad pid file {}", pid_path.display())))?;
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let r = Running {
        pid,
        port,
        size,
        started,
        initramfs,
    };
    let rec = dir.join("machine.json");
    fs::write(&rec, serde_json::to_vec(&r).unwrap_or_default()).map_err(|e| io_err(&rec, e))?;
    let sz = dir.join("size.json");
    fs::write(&sz, serde_json::to_vec(&size).unwrap_or_default()).map_err(|e| io_err(&sz, e))?;
    wait_ready(dir, &r)?;
    Ok(r)
}

fn wait_ready(dir: &Path, r: &Running) -> Result<()> {
    let client = r.client(dir)?;
    let t0 = Instant::now();
    loop {
        if !alive(r.pid) {
            return Err(MachineError::Qemu(format!(
                "the husk machine stopped while booting; console:\n{}",
                console_tail(dir, 15)
            )));
        }
        if client.ping(Duration::from_secs(3)).is_ok() {
            log::info!("husk machine ready after {:?}", t0.elapsed());
            return Ok(());
        }
        if t0.elapsed() > BOOT_TIMEOUT {
            kill_qemu(r.pid);
            return Err(MachineError::Qemu(format!(
                "the husk machine did not answer within {} s; console:\n{}",
                BOOT_TIMEOUT.as_secs(),
                console_tail(dir, 15)
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn kill_qemu(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Stops the machine: asks it to sync and power off, and kills QEMU if it
/// has not ended after 20 s. Returns false when it was not running.
pub fn stop(dir: &Path) -> Result<bool> {
    let _lock = lock(dir)?;
    let Some(r) = running(dir) else {
        return Ok(false);
    };
    if let Ok(c) = r.client(dir) {
        let _ = c.stop();
    }
    let t0 = Instant::now();
    while alive(r.pid) && t0.elapsed() < STOP_TIMEOUT {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive(r.pid) {
        eprintln!("husk: the husk machine did not power off within 20 s; killing it");
        kill_qemu(r.pid);
        while alive(r.pid) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for f in ["machine.json", "ports.json", "pid", "boot.cpio", "token"] {
        let _ = fs::remove_file(dir.join(f));
    }
    Ok(true)
}

/// Sends one HMP command and returns its output (without the echo and
/// prompt).
pub fn hmp(dir: &Path, cmd: &str) -> Result<String> {
    let p = dir.join("monitor.sock");
    let mut s = UnixStream::connect(&p).map_err(|e| io_err(&p, e))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    read_prompt(&mut s).map_err(|e| io_err(&p, e))?;
    s.write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| io_err(&p, e))?;
    let out = read_prompt(&mut s).map_err(|e| io_err(&p, e))?;
    // The monitor echoes the command (with terminal escapes) on the first line.
    let text: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    Ok(text.join("\n"))
}

fn read_prompt(s: &mut UnixStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    while !buf.ends_with(b"(qemu) ") {
        let n = s.read(&mut b)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&b[..n]);
    }
    let s = String::from_utf8_lossy(&buf);
    Ok(s.trim_end_matches("(qemu) ").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = [
            "vmlinuz-6.1.0-56-cloud-amd64",
            "vmlinuz-6.1.0-9-cloud-amd64",
        ];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(v[1], "vmlinuz-6.1.0-56-cloud-amd64");
    }

    #[test]
    fn module_list_has_kvm_in_order_and_exists() {
        let m = modules();
        assert!(m.contains(&"net/netfilter/nf_nat.ko"));
        assert_eq!(m.iter().filter(|x| x.ends_with("virtio_net.ko")).count(), 1);
        let pos = |s: &str| m.iter().position(|x| x.ends_with(s)).unwrap();
        assert!(pos("irqbypass.ko") < pos("/kvm.ko"));
        assert!(pos("/kvm.ko") < pos("kvm-amd.ko"));
        assert!(pos("virtio_ring.ko") < pos("/virtio.ko"));
        assert!(pos("/virtio.ko") < pos("virtio_blk.ko"));
        if let Ok((_, mods)) = l1_kernel() {
            for x in &m {
                assert!(mods.join("kernel").join(x).is_file(), "{x} missing");
            }
        }
    }
}
