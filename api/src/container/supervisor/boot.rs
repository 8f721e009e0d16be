//! Booting a container's microVM: disks (image, writable layer,
//! volumes), network, husk-vmm, the agent's hello and `create`.

use super::*;

/// Guest mount point of the image's rootfs disk.
pub(super) const GUEST_IMAGE: &str = "/run/husk/image";
/// Where the agent keeps container `c`'s overlay upper, work and etc
/// files: the writable-layer disk is mounted there.
pub(super) const GUEST_RW: &str = "/run/husk/containers/c";
/// Guest directory of volume mounts.
pub(super) const GUEST_VOLUMES: &str = "/run/husk/volumes";
/// vsock ports of the init's stdio.
pub(super) const INIT_STDIO: StdioPorts = StdioPorts {
    stdin: Some(5000),
    stdout: Some(5001),
    stderr: Some(5002),
};

/// Prepares everything, boots the VM and creates the container in it.
pub(super) fn boot(
    data_dir: &Path,
    h: &Handle,
    t0: Instant,
    events: Sender<Event>,
) -> Result<(Arc<Sup>, Held, Child), StartError> {
    let config = h.config()?;
    let mut timings = Timings::default();
    let store = Store::open(&data_dir.join("images"))?;
    let manifest = store.manifest(&config.image_digest)?;
    let t = Instant::now();
    // Held for the VM's life, so `husk gc` cannot remove the disk under it.
    let (rootfs, rootfs_lease) =
        RootfsCache::open(&data_dir.join("rootfs"))?.ensure_held(&store, &manifest)?;
    timings.rootfs_ms = ms(t.elapsed());
    timings.rootfs_built = rootfs.built;

    let assets = crate::assets::find()?;
    let volumes = Volumes::open(&data_dir.join("volumes"))?;
    let mut volume_locks = Vec::new();
    // The writable layer: kept with the container across starts.
    let t = Instant::now();
    let rw = h.dir.join("rw.ext4");
    crate::container::scratch::ensure(&data_dir.join("rootfs"), &rw)?;
    timings.rootfs_ms += ms(t.elapsed());
    let mut disks = vec![
        format!("{},ro", rootfs.path.display()),
        rw.display().to_string(),
    ];
    let mut cmdline = format!(
        "console=ttyS0 reboot=k panic=-1 quiet husk.disk=vda:{GUEST_IMAGE}:ro husk.disk=vdb:{GUEST_RW}"
    );
    let mut mounts = Vec::new();
    for (i, v) in config.volumes.iter().enumerate() {
        let (vol, _) = volumes.ensure(&v.name)?;
        volume_locks.push(volumes.lock(&vol, &h.id)?);
        let dev = disk_name(i + 2);
        disks.push(vol.disk.display().to_string());
        cmdline.push_str(&format!(" husk.disk={dev}:{GUEST_VOLUMES}/{}", v.name));
        mounts.push(MountSpec {
            source: PathBuf::from(format!("{GUEST_VOLUMES}/{}", v.name)),
            destination: PathBuf::from(&v.destination),
            readonly: v.readonly,
        });
    }

    let (lease, publisher, ports) = match config.network {
        NetworkMode::None => (None, None, Vec::new()),
        NetworkMode::Default => {
            let lease = net::allocate(&data_dir.join("net"), &h.id)?;
            let specs = config
                .ports
                .iter()
                .map(|p| p.parse::<net::PortSpec>())
                .collect::<Result<Vec<_>, _>>()?;
            let specs = machine_bind_all(specs);
            let publisher = net::publish(&specs, lease.guest_ip)?;
            let ports = publisher
                .bound()
                .into_iter()
                .map(|p| PortBinding {
                    host_ip: p.host_ip.to_string(),
                    host_port: p.host_port,
                    container_port: p.container_port,
                    proto: p.proto.to_string(),
                })
                .collect();
            cmdline.push(' ');
            cmdline.push_str(&net::guest_cmdline(&lease, &net::dns_servers()));
            (Some(lease), Some(publisher), ports)
        }
    };

    fs::create_dir_all(&h.run_dir).map_err(|e| format!("{}: {e}", h.run_dir.display()))?;
    // Only the container's owner may reach its control and vsock sockets.
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&h.run_dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", h.run_dir.display()))?;
    }
    if let Ok(rd) = fs::read_dir(&h.run_dir) {
        for e in rd.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
    let uds = h.vsock_socket();
    let control = UnixListener::bind(h.control_socket())
        .map_err(|e| format!("{}: {e}", h.control_socket().display()))?;

    let t = Instant::now();
    let mut vmm = spawn_vmm(h, &assets, &config, &disks, &cmdline, lease.as_ref(), &uds)?;
    let vmm_pid = i32::try_from(vmm.id()).unwrap_or(0);
    let mut state = h.state().unwrap_or_default();
    state.status = Status::Created;
    state.supervisor_pid = Some(i32::try_from(std::process::id()).unwrap_or(0));
    state.vmm_pid = Some(vmm_pid);
    state.exit_code = None;
    state.error = None;
    state.finished_at = None;
    state.ports = ports;
    state.ip = lease.as_ref().map(|l| l.guest_ip.to_string());
    h.write_state(&state)?;
    timings.vmm_ms = ms(t0.elapsed());

    if let Some(l) = &lease {
        // husk-vmm creates the TAP; wait for it while husk-vmm lives.
        let tap = Path::new("/sys/class/net").join(&l.tap_name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !tap.exists() && Instant::now() < deadline {
            if let Ok(Some(st)) = vmm.try_wait() {
                return fail(vmm_failure(&h.dir.join("vmm.log")).unwrap_or_else(|| {
                    format!("the microVM did not start: husk-vmm exited ({st})")
                }));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Err(e) = net::configure_host(l, Duration::from_secs(1)) {
            let _ = vmm.kill();
            let _ = vmm.wait();
            return Err(e.into());
        }
    }
    let limit = Duration::from_secs(
        std::env::var("HUSK_BOOT_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120),
    );
    let agent = AgentClient::connect_retry(&uds, limit, || matches!(vmm.try_wait(), Ok(None)));
    let agent = match agent {
        Ok(a) => a,
        Err(e) => {
            let why = match vmm.try_wait() {
                Ok(Some(st)) => vmm_failure(&h.dir.join("vmm.log")).unwrap_or_else(|| {
                    format!(
                        "the microVM exited ({st}) before its agent answered; see {}",
                        h.dir.join("console.log").display()
                    )
                }),
                _ => format!(
                    "{}; see {}",
                    crate::error::chain(&e),
                    h.dir.join("console.log").display()
                ),
            };
            let _ = vmm.kill();
            let _ = vmm.wait();
            return fail(why);
        }
    };
    let booted = t.elapsed();
    timings.kernel_ms = boot_marker_ms(&h.dir.join("vmm.log")).unwrap_or(0.0);
    timings.agent_ms = (ms(booted) - timings.kernel_ms).max(0.0);

    let sup = Arc::new(Sup {
        handle: h.clone(),
        config: config.clone(),
        state: Mutex::new(state),
        agent: Mutex::new(agent),
        uds,
        clients: Arc::default(),
        stdin: Arc::default(),
        started: Mutex::new(false),
        events,
        relays: Mutex::default(),
        go: Mutex::default(),
        next_exec: AtomicU32::new(0),
        vmm_pid,
        start_clock: t0,
        timings: Mutex::new(timings),
    });
    let t = Instant::now();
    let create = create_request(&config, mounts);
    if let Err(e) = lock(&sup.agent).call(AgentRequest::Create(Box::new(create))) {
        let _ = vmm.kill();
        let _ = vmm.wait();
        return Err(agent_error(e));
    }
    lock(&sup.timings).create_ms = ms(t.elapsed());
    let s2 = sup.clone();
    thread::spawn(move || serve_control(s2, control));
    Ok((
        sup,
        Held {
            _rootfs: rootfs_lease,
            _volume_locks: volume_locks,
            _lease: lease,
            _publisher: publisher,
        },
        vmm,
    ))
}

/// Inside the husk machine, published ports listen on every address: the
/// outer host's QEMU forwards to the machine's own address.
fn machine_bind_all(specs: Vec<net::PortSpec>) -> Vec<net::PortSpec> {
    if std::env::var_os("HUSK_IN_MACHINE").is_none() {
        return specs;
    }
    specs
        .into_iter()
        .map(|mut s| {
            s.host_ip = None;
            s
        })
        .collect()
}

pub(super) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `vda`, `vdb`, ... for disk index `i`.
fn disk_name(i: usize) -> String {
    let letter = char::from(b'a' + u8::try_from(i % 26).unwrap_or(0));
    format!("vd{letter}")
}

/// "the microVM did not start: " and husk-vmm's own error line
/// (`husk-vmm: ...`), if it printed one.
fn vmm_failure(vmm_log: &Path) -> Option<String> {
    let text = fs::read_to_string(vmm_log).ok()?;
    text.lines()
        .rev()
        .find(|l| l.starts_with("husk-vmm: "))
        .map(|l| format!("the microVM did not start: {l}"))
}

/// Reads husk-vmm's `guest boot marker: N ms` line.
fn boot_marker_ms(vmm_log: &Path) -> Option<f64> {
    let f = File::open(vmm_log).ok()?;
    io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            let rest = l.split("guest boot marker: ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
}

fn create_request(config: &ContainerConfig, mounts: Vec<MountSpec>) -> CreateRequest {
    let p = &config.process;
    let stdio = StdioPorts {
        stdin: p.stdin.then_some(INIT_STDIO.stdin).flatten(),
        stdout: INIT_STDIO.stdout,
        stderr: (!p.tty).then_some(INIT_STDIO.stderr).flatten(),
    };
    CreateRequest {
        id: "c".into(),
        image: ImageSource::Unpacked {
            path: GUEST_IMAGE.into(),
        },
        process: ProcessSpec {
            entrypoint: p.entrypoint.clone(),
            cmd: p.cmd.clone(),
            env: p.env.clone(),
            workdir: p.workdir.clone(),
            user: p.user.clone(),
            tty: p.tty,
            stdio,
            console_size: p
                .console_size
                .map(|(rows, cols)| husk_agent::protocol::ConsoleSize { rows, cols }),
        },
        hostname: config.hostname.clone(),
        mounts,
        limits: Limits {
            memory_bytes: config.memory_bytes,
            cpu_millis: config.cpu_millis,
            pids: None,
        },
        new_network: config.network == NetworkMode::None,
    }
}

fn spawn_vmm(
    h: &Handle,
    assets: &crate::assets::Assets,
    config: &ContainerConfig,
    disks: &[String],
    cmdline: &str,
    lease: Option<&net::Lease>,
    uds: &Path,
) -> Result<Child, StartError> {
    let log_path = h.dir.join("vmm.log");
    let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut cmd = Command::new(&assets.vmm);
    cmd.arg("--kernel")
        .arg(&assets.kernel)
        .arg("--initrd")
        .arg(&assets.initrd)
        .arg("--vcpus")
        .arg(vm_vcpus(config.cpu_millis).to_string())
        .arg("--mem-mib")
        .arg(vm_mem_mib(config.memory_bytes).to_string())
        .arg("--cmdline")
        .arg(cmdline)
        .arg("--console")
        .arg(format!("file:{}", h.dir.join("console.log").display()))
        .arg("--vsock")
        .arg(format!("3,{}", uds.display()));
    for d in disks {
        cmd.arg("--disk").arg(d);
    }
    if let Some(l) = lease {
        let mac: Vec<String> = l.mac.iter().map(|b| format!("{b:02x}")).collect();
        cmd.arg("--net")
            .arg(format!("tap={},mac={}", l.tap_name, mac.join(":")));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .env("RUST_LOG", "info");
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent; it ties husk-vmm's life to the supervisor's.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("cannot start {}: {e}", assets.vmm.display()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names() {
        assert_eq!(disk_name(0), "vda");
        assert_eq!(disk_name(2), "vdc");
    }

    #[test]
    fn boot_marker_parse() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vmm.log");
        fs::write(
            &p,
            "[INFO] something\n[2026 INFO husk_devices] guest boot marker: 1520 ms since husk-vmm start\n",
        )
        .unwrap();
        assert_eq!(boot_marker_ms(&p), Some(1520.0));
    }

    #[test]
    fn create_request_shape() {
        let mut c = ContainerConfig::default();
        c.process.cmd = vec!["sh".into()];
        c.process.tty = true;
        c.network = NetworkMode::None;
        let r = create_request(&c, vec![]);
        assert!(r.new_network);
        assert_eq!(r.process.stdio.stderr, None);
        assert_eq!(r.process.stdio.stdin, None);
        r.validate().unwrap();
    }
}
