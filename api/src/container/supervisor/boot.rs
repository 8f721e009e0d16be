//! Booting a container's microVM, as a flat run of named steps: disks
//! (image, writable layer, volumes), network, the run directory, husk-vmm
//! (from a typed `vm.json`), the agent's hello and `create`.

use super::checkpoint::{Restore, SnapshotInfo};
use super::guest_wait::{connect_agent, stop_after_failed_create, stop_vmm, worth_another_boot};
use super::template;
use super::vmm::{self, VmmProcess};
use super::*;
use crate::container::checkpoint::{Checkpoints, DiskId};
use husk_proto::boot::{BootParams, DiskMount, GuestNet};
use husk_proto::guest::{container_dir, volume_mount, IMAGE_MOUNT};
use husk_proto::vm::{BlockConfig, NetConfig, VmConfig};

/// The container's disks: what husk-vmm attaches, where the agent mounts
/// them, and the holds that keep them ours while the VM lives.
struct Disks {
    devices: Vec<BlockConfig>,
    mounts: Vec<DiskMount>,
    volume_mounts: Vec<MountSpec>,
    rootfs_lease: crate::storage::rootfs::RootfsLease,
    volume_locks: Vec<VolumeLock>,
}

/// The container's network, if it has one.
#[derive(Default)]
struct Network {
    lease: Option<net::Lease>,
    publisher: Option<net::Publisher>,
    ports: Vec<PortBinding>,
    guest: Option<GuestNet>,
}

/// What [`boot`] gives the supervisor: the container's state, what it
/// holds while the VM lives, and husk-vmm.
type Booted = (Arc<Sup>, Held, VmmProcess);

/// Prepares everything, boots the VM and creates the container in it. A
/// guest that stops by itself (a triple fault or a reset) while its
/// container is being created, before any container process ran, is
/// started once more from scratch and the first stop is logged, as a
/// guest that stops while booting is (see [`start_vm`]).
pub(super) fn boot(
    data_dir: &Path,
    h: &Handle,
    t0: Instant,
    events: Sender<Event>,
    checkpoint: Option<&str>,
) -> Result<Booted, StartError> {
    let mut attempt = 1;
    loop {
        let mut stopped_by_itself = false;
        match boot_once(
            data_dir,
            h,
            t0,
            events.clone(),
            checkpoint,
            &mut stopped_by_itself,
        ) {
            Err(e) if stopped_by_itself && attempt < BOOT_ATTEMPTS => {
                log::warn!("{}; starting it once more", e.message);
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// One try of [`boot`]; sets `stopped_by_itself` when it failed because the
/// guest stopped by itself while its container was being created.
fn boot_once(
    data_dir: &Path,
    h: &Handle,
    t0: Instant,
    events: Sender<Event>,
    checkpoint: Option<&str>,
    stopped_by_itself: &mut bool,
) -> Result<Booted, StartError> {
    let config = h.config()?;
    let restore = checkpoint
        .map(|name| Restore::load(h, &config, name))
        .transpose()?;
    let mut timings = Timings::default();
    let disks = prepare_disks(data_dir, h, &config, &mut timings)?;
    if let Some(r) = &restore {
        r.prepare_disks(&disks.devices[0].path, &disks.devices[1].path)?;
    }
    // A checkpoint's guest has its address; a fork takes one of its own.
    let lease_index = restore
        .as_ref()
        .filter(|r| !r.is_fork())
        .and_then(|r| r.meta.lease_index);
    let network = prepare_network(data_dir, &config, lease_index)?;
    let control = prepare_run_dir(h)?;
    let assets = crate::assets::find()?;
    let uds = h.vsock_socket();
    let vm = vm_config(&assets, &config, h, &disks, &network)?;
    let template = match &restore {
        None if !config.cold_boot => template::prepare(data_dir, &assets, &vm)
            .inspect_err(|e| {
                log::warn!(
                    "starting without a template snapshot: {}",
                    crate::error::chain(e)
                )
            })
            .ok(),
        _ => None,
    };
    timings.template_ms = template.as_ref().and_then(|t| t.built_ms).unwrap_or(0.0);
    let api_sock = h.run_dir.join("vmm.sock");
    let staging = Checkpoints::of(h).prepare_staging(super::jail::jail_id())?;
    let vmm_control = vmm::Control {
        api_sock: &api_sock,
        snapshot_dir: Some(&staging),
        restore: restore.as_ref().map(|r| r.dir.as_path()),
    };
    let vm_start = VmStart {
        vm: &vm,
        network: &network,
        control: &vmm_control,
        disks: &disks,
        fork: restore.as_ref().is_some_and(Restore::is_fork),
    };
    let (
        Started {
            mut vmm,
            agent,
            mut state,
            spawning,
            spawned,
        },
        restored_template,
    ) = start_vm_or_template(h, &assets.vmm, &vm_start, template)?;
    if let Some(r) = &restore {
        state.guest_pid = r.meta.guest_pid;
    }
    let vmm_pid = i32::try_from(vmm.child.id()).unwrap_or(0);
    timings.vmm_ms = ms(spawned.duration_since(t0));
    let booted = spawning.elapsed();
    // A restored guest writes no boot marker: none is waited for.
    if restored_template || restore.is_some() {
        timings.restore_ms = ms(booted);
    } else {
        timings.kernel_ms = vmm
            .events
            .boot_marker_ms(Duration::from_secs(1))
            .unwrap_or(0.0);
        timings.agent_ms = (ms(booted) - timings.kernel_ms).max(0.0);
    }
    let sup = Arc::new(Sup::new(
        h.clone(),
        config,
        state,
        agent,
        VmInfo {
            uds,
            pid: vmm_pid,
            api_sock,
            start_clock: t0,
            killed: Default::default(),
            snapshot: SnapshotInfo {
                lease_index: network.lease.as_ref().map(|l| l.index),
                rootfs: DiskId::of(&disks.devices[0].path).ok(),
                restored: restore.is_some(),
            },
        },
        events,
        timings,
    ));
    // A restored VM's container exists (and runs) already.
    if let Some(r) = &restore {
        sup.next_exec.store(r.meta.next_exec, Ordering::SeqCst);
    } else {
        if let Err(e) = create_container(data_dir, &sup, disks.volume_mounts.clone()) {
            let (e, by_itself) = stop_after_failed_create(&mut vmm, e);
            *stopped_by_itself = by_itself;
            return Err(e);
        }
    }
    let s2 = sup.clone();
    thread::spawn(move || serve_control(s2, control));
    let held = Held {
        _rootfs: disks.rootfs_lease,
        _volume_locks: disks.volume_locks,
        _lease: network.lease,
        _publisher: network.publisher,
    };
    Ok((sup, held, vmm))
}

/// What starting a container's microVM takes.
struct VmStart<'a> {
    vm: &'a VmConfig,
    network: &'a Network,
    control: &'a vmm::Control<'a>,
    disks: &'a Disks,
    /// A fork's guest (restored with its parent's address).
    fork: bool,
}

/// What the guest is told once its agent answers, before its container is
/// created (while the host side of its TAP is still being set up).
type AfterHello<'a> = &'a (dyn Fn(&mut AgentClient) -> Result<(), StartError> + Sync);

/// Starts the microVM from `template` (restored and provisioned) when
/// there is one, else boots it; a template that cannot be restored or
/// provisioned is discarded (the next start builds it again) and the VM
/// booted. Says whether the template was used.
fn start_vm_or_template(
    h: &Handle,
    vmm_bin: &Path,
    start: &VmStart<'_>,
    template: Option<template::Template>,
) -> Result<(Started, bool), StartError> {
    let readdress_fork = |agent: &mut AgentClient| {
        if start.fork {
            readdress(agent, start.network)
        } else {
            Ok(())
        }
    };
    let Some(t) = template else {
        let started = start_vm(h, vmm_bin, start, start.control, &readdress_fork)?;
        return Ok((started, false));
    };
    let control = vmm::Control {
        restore: Some(&t.dir),
        ..*start.control
    };
    let provision = |agent: &mut AgentClient| {
        let net = provision_net(start.network);
        template::provision(agent, start.disks.mounts.clone(), net)
    };
    let restored = start_vm(h, vmm_bin, start, &control, &provision);
    match restored {
        Ok(s) => Ok((s, true)),
        Err(e) => {
            log::warn!(
                "template {} did not start ({}); discarding it and booting",
                t.key.name(),
                e.message
            );
            if let Err(e) = t.store.discard(&t.key) {
                log::warn!("{}", crate::error::chain(&e));
            }
            let started = start_vm(h, vmm_bin, start, start.control, &readdress_fork)?;
            Ok((started, false))
        }
    }
}

/// eth0's identity for a restored template's guest.
fn provision_net(network: &Network) -> Option<husk_proto::provision::ProvisionNet> {
    let (lease, guest) = (network.lease.as_ref()?, network.guest.clone()?);
    Some(husk_proto::provision::ProvisionNet {
        mac: lease.mac,
        net: guest,
    })
}

/// A booted microVM whose agent has said hello.
struct Started {
    vmm: VmmProcess,
    agent: AgentClient,
    state: State,
    /// When the husk-vmm that booted was being started, and when it was.
    spawning: Instant,
    spawned: Instant,
}

/// How many times a guest that stops by itself during boot is booted.
pub(super) const BOOT_ATTEMPTS: u32 = 2;

/// Starts husk-vmm and waits for its TAP and its agent's hello. A guest
/// that stops by itself (a triple fault or a reset) before its agent
/// answers, when no container code has run yet, is booted once more and
/// the first stop is logged: the nested test host has been seen to fault
/// a booting guest under load (1 boot in about 40, 8 at a time).
fn start_vm(
    h: &Handle,
    vmm_bin: &Path,
    start: &VmStart<'_>,
    control: &vmm::Control<'_>,
    after_hello: AfterHello<'_>,
) -> Result<Started, StartError> {
    let (vm, network) = (start.vm, start.network);
    let mut attempt = 1;
    loop {
        let spawning = Instant::now();
        let mut vmm = vmm::spawn(vmm_bin, vm, &h.dir, control)?;
        let spawned = Instant::now();
        let vmm_pid = i32::try_from(vmm.child.id()).unwrap_or(0);
        let state = record_created(h, vmm_pid, network)?;
        // The host's side of the TAP is set up while the agent is reached:
        // a restored guest answers at once, and the TAP stays down (no
        // traffic) until its rules are in place.
        let gave_up = AtomicBool::new(false);
        let (ready, agent) = thread::scope(|s| {
            let tap = network.lease.as_ref().map(|l| {
                s.spawn(|| {
                    let ready = wait_for_tap(l, &gave_up);
                    log::info!(
                        "host side of the TAP ready after {:.0} ms",
                        ms(spawning.elapsed())
                    );
                    ready
                })
            });
            let agent = connect_agent(&h.dir.join("console.log"), &h.vsock_socket(), &mut vmm);
            log::info!("the agent answered after {:.0} ms", ms(spawning.elapsed()));
            if agent.is_err() {
                gave_up.store(true, Ordering::SeqCst);
            }
            let agent = agent.map(|mut a| {
                let told = after_hello(&mut a);
                (a, told)
            });
            let ready = tap.map_or(Ok(()), |t| {
                t.join()
                    .unwrap_or_else(|_| fail("setting up the TAP failed (thread panicked)"))
            });
            (ready, agent)
        });
        let agent = match agent {
            Ok((_, Err(e))) => {
                stop_vmm(&mut vmm);
                return Err(e);
            }
            Ok((a, Ok(()))) => Ok(a),
            Err(e) => Err(e),
        };
        match agent.and_then(|a| ready.map(|()| a)) {
            Ok(agent) => {
                return Ok(Started {
                    vmm,
                    agent,
                    state,
                    spawning,
                    spawned,
                })
            }
            Err(e) => {
                if !worth_another_boot(&mut vmm, control.api_sock)
                    || attempt >= BOOT_ATTEMPTS
                    || control.restore.is_some()
                {
                    return Err(e);
                }
                log::warn!(
                    "the guest's boot failed ({}); booting it once more",
                    e.message
                );
                attempt += 1;
            }
        }
    }
}

/// Gives a fork's guest its own address (it has its parent's).
fn readdress(agent: &mut AgentClient, network: &Network) -> Result<(), StartError> {
    let (Some(lease), Some(guest)) = (&network.lease, &network.guest) else {
        return Ok(());
    };
    let req = AgentRequest::Readdress(husk_proto::agent::Readdress {
        mac: lease.mac,
        ip: guest.ip,
        prefix: guest.prefix,
        gateway: guest.gateway,
    });
    match agent.call(req).map_err(agent_error)? {
        Response::Readdressed => Ok(()),
        other => fail(format!("unexpected answer to readdress: {other:?}")),
    }
}

/// The image's rootfs disk (read-only, shared), the writable layer (the
/// container's own, kept across starts) and the volumes.
fn prepare_disks(
    data_dir: &Path,
    h: &Handle,
    config: &ContainerConfig,
    timings: &mut Timings,
) -> Result<Disks, StartError> {
    let t = Instant::now();
    let store = Store::open(&data_dir.join("images"))?;
    let manifest = store.manifest(&config.image_digest)?;
    // Held for the VM's life, so `husk gc` cannot remove the disk under it.
    let builder = super::builder::VmBuilder::new(h.run_dir.clone());
    let (rootfs, rootfs_lease) =
        RootfsCache::open(&data_dir.join("rootfs"))?.ensure_held(&store, &manifest, &builder)?;
    timings.rootfs_built = rootfs.built;
    let rw = h.dir.join("rw.ext4");
    crate::storage::scratch::ensure(&data_dir.join("rootfs"), &rw)?;
    timings.rootfs_ms = ms(t.elapsed());
    let disk = |path: PathBuf, read_only| BlockConfig {
        path,
        read_only,
        serial: None,
    };
    let mount = |i: usize, path: String, read_only| DiskMount {
        device: disk_name(i),
        path,
        read_only,
    };
    let mut d = Disks {
        devices: vec![disk(rootfs.path.clone(), true), disk(rw, false)],
        mounts: vec![
            mount(0, IMAGE_MOUNT.into(), true),
            mount(1, container_dir(CONTAINER_ID), false),
        ],
        volume_mounts: Vec::new(),
        rootfs_lease,
        volume_locks: Vec::new(),
    };
    let volumes = Volumes::open(&data_dir.join("volumes"))?;
    for v in &config.volumes {
        let (vol, _) = volumes.ensure(&v.name)?;
        d.volume_locks.push(volumes.lock(&vol, &h.id)?);
        d.mounts
            .push(mount(d.devices.len(), volume_mount(&v.name), false));
        d.devices.push(disk(vol.disk.clone(), false));
        d.volume_mounts.push(MountSpec {
            source: PathBuf::from(volume_mount(&v.name)),
            destination: PathBuf::from(&v.destination),
            readonly: v.readonly,
        });
    }
    Ok(d)
}

/// An address lease and the published ports (bound before the VM boots,
/// so a taken port fails at once).
/// A container restored from a checkpoint takes `lease_index` again.
fn prepare_network(
    data_dir: &Path,
    config: &ContainerConfig,
    lease_index: Option<u32>,
) -> Result<Network, StartError> {
    if config.network == NetworkMode::None {
        return Ok(Network::default());
    }
    let net_dir = data_dir.join("net");
    let lease = match lease_index {
        Some(i) => net::allocate_at(&net_dir, &config.id, i)?,
        None => net::allocate(&net_dir, &config.id)?,
    };
    let specs = config
        .ports
        .iter()
        .map(|p| p.parse::<net::PortSpec>())
        .collect::<Result<Vec<_>, _>>()?;
    let publisher = net::publish(&machine_bind_all(specs.clone()), lease.guest_ip)?;
    let ports = publisher
        .bound()
        .into_iter()
        .zip(&specs)
        .map(|(p, spec)| PortBinding {
            // The address asked for: inside the machine the listener takes
            // every address, and the outer host forwards from this one.
            host_ip: spec.host_ip.unwrap_or(p.host_ip).to_string(),
            host_port: p.host_port,
            container_port: p.container_port,
            proto: p.proto.to_string(),
        })
        .collect();
    let guest = net::guest_net(&lease, &net::dns_servers());
    Ok(Network {
        lease: Some(lease),
        publisher: Some(publisher),
        ports,
        guest: Some(guest),
    })
}

/// The run directory (0700: only the container's owner may reach its
/// control and vsock sockets), emptied, and the bound control socket.
fn prepare_run_dir(h: &Handle) -> Result<UnixListener, StartError> {
    use std::os::unix::fs::PermissionsExt;
    let ctx = |what: &str| {
        let what = format!("{what} {}", h.run_dir.display());
        move |source| SupervisorError::Io { what, source }
    };
    fs::create_dir_all(&h.run_dir).map_err(ctx("cannot create"))?;
    fs::set_permissions(&h.run_dir, fs::Permissions::from_mode(0o700))
        .map_err(ctx("cannot restrict"))?;
    if let Ok(rd) = fs::read_dir(&h.run_dir) {
        for e in rd.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
    let sock = h.control_socket();
    UnixListener::bind(&sock).map_err(|source| {
        SupervisorError::Io {
            what: format!("cannot listen on {}", sock.display()),
            source,
        }
        .into()
    })
}

/// The microVM: kernel, initramfs, boot parameters, vCPUs, memory, the
/// console log, disks, the TAP and vsock.
fn vm_config(
    assets: &crate::assets::Assets,
    config: &ContainerConfig,
    h: &Handle,
    disks: &Disks,
    network: &Network,
) -> Result<VmConfig, StartError> {
    let params = BootParams {
        disks: disks.mounts.clone(),
        net: network.guest.clone(),
        ..BootParams::default()
    };
    let shape = (vm_vcpus(config.cpu_millis), vm_mem_mib(config.memory_bytes));
    let files = (h.dir.join("console.log"), h.vsock_socket());
    Ok(VmConfig {
        disks: disks.devices.clone(),
        nets: network
            .lease
            .iter()
            .map(|l| NetConfig {
                tap_name: Some(l.tap_name.clone()),
                mac: Some(l.mac),
            })
            .collect(),
        ..vmm::guest_vm(assets, &params.render()?, shape, files)
    })
}

/// Writes the `created` state with husk-vmm's pid and the ports.
fn record_created(h: &Handle, vmm_pid: i32, network: &Network) -> Result<State, StartError> {
    let mut state = h.state().unwrap_or_default();
    state.status = Status::Created;
    state.supervisor_pid = Some(i32::try_from(std::process::id()).unwrap_or(0));
    state.vmm_pid = Some(vmm_pid);
    state.exit_code = None;
    state.error = None;
    state.finished_at = None;
    state.ports = network.ports.clone();
    state.ip = network.lease.as_ref().map(|l| l.guest_ip.to_string());
    h.write_state(&state)?;
    Ok(state)
}

/// husk-vmm creates the TAP; waits for it (until the caller `gave_up` on
/// the microVM), then gives the host's end its address and rules.
fn wait_for_tap(l: &net::Lease, gave_up: &AtomicBool) -> Result<(), StartError> {
    let tap = Path::new("/sys/class/net").join(&l.tap_name);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tap.exists() && Instant::now() < deadline {
        if gave_up.load(Ordering::SeqCst) {
            return fail("the microVM did not start");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    net::configure_host(l, Duration::from_secs(1))?;
    Ok(())
}

/// The agent's `create` (rootfs overlay, mounts, limits, the hosts lines
/// of its networks' members; nothing runs yet). The members' rules and
/// hosts are brought up to date first.
fn create_container(data_dir: &Path, sup: &Sup, mounts: Vec<MountSpec>) -> Result<(), StartError> {
    let t = Instant::now();
    let hosts = match sup.member() {
        Some(me) => {
            let cs = crate::container::Containers::open(data_dir)?;
            crate::container::membership::joined(
                data_dir,
                &cs,
                &me,
                &[],
                crate::container::membership::Tell::OthersLater,
            )
        }
        None => Vec::new(),
    };
    let create = create_request(&sup.config, mounts, hosts)?;
    lock(&sup.agent)
        .call(AgentRequest::Create(Box::new(create)))
        .map_err(agent_error)?;
    lock(&sup.timings).create_ms = ms(t.elapsed());
    Ok(())
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

fn create_request(
    config: &ContainerConfig,
    mounts: Vec<MountSpec>,
    hosts: Vec<husk_proto::agent::HostEntry>,
) -> Result<CreateRequest, StartError> {
    let security = config
        .restrictions
        .security()
        .map_err(|e| StartError::new(e.to_string()))?;
    let p = &config.process;
    let [stdin, stdout, stderr] = INIT_STDIO_PORTS;
    Ok(CreateRequest {
        id: CONTAINER_ID.into(),
        image: ImageSource::Unpacked {
            path: IMAGE_MOUNT.into(),
        },
        process: p.clone(),
        stdio: StdioPorts {
            stdin: p.open_stdin.then_some(stdin),
            stdout: Some(stdout),
            stderr: (!p.tty).then_some(stderr),
        },
        hostname: config.hostname.clone(),
        mounts,
        limits: Limits {
            memory_bytes: config.memory_bytes,
            cpu_millis: config.cpu_millis,
            pids: config.restrictions.pids_limit,
        },
        new_network: config.network == NetworkMode::None,
        hosts,
        tmpfs: config.restrictions.tmpfs.clone(),
        readonly_rootfs: config.restrictions.readonly_rootfs,
        security,
    })
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
    fn create_request_shape() {
        let mut c = ContainerConfig::default();
        c.process.cmd = vec!["sh".into()];
        c.process.tty = true;
        c.network = NetworkMode::None;
        let r = create_request(&c, vec![], vec![]).unwrap();
        assert!(r.new_network);
        assert_eq!(r.stdio.stderr, None);
        assert_eq!(r.stdio.stdin, None);
        assert_eq!(r.id, CONTAINER_ID);
        r.validate().unwrap();
        // Docker's default capabilities unless asked otherwise.
        let default = husk_proto::security::capability_set(&[], &[]).unwrap();
        assert_eq!(r.security.capabilities, Some(default));
        c.restrictions.cap_drop = vec!["ALL".into()];
        c.restrictions.no_new_privileges = true;
        let r = create_request(&c, vec![], vec![]).unwrap();
        assert_eq!(r.security.capabilities, Some(0));
        assert!(r.security.no_new_privileges);
        c.restrictions.cap_add = vec!["NOPE".into()];
        let e = create_request(&c, vec![], vec![]).unwrap_err();
        assert_eq!(e.message, "unknown capability: \"NOPE\"");
    }
}
