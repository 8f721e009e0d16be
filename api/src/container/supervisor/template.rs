//! Starting from a template snapshot (`crate::container::template`): the
//! template of a container's microVM shape, built when there is none by
//! booting that shape with empty disk slots, no address and no container,
//! waiting for its agent's hello, and snapshotting it; and the
//! `provision` a restored template gets before its container is created.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use husk_proto::agent::{Request as AgentRequest, Response};
use husk_proto::boot::DiskMount;
use husk_proto::provision::{Provision, ProvisionNet};
use husk_proto::vm::{BlockConfig, NetConfig, VmConfig};

use super::boot::ms;
use super::guest_wait::{connect_agent, stop_vmm};
use super::vmm;
use super::StartError;
use crate::container::client::AgentClient;
use crate::container::template::{Shape, Staging, TemplateError, TemplateKey, Templates};

/// Bytes of fresh entropy a restored guest gets.
const ENTROPY_BYTES: usize = 64;

/// The template a start restores.
#[derive(Debug)]
pub(super) struct Template {
    /// Its store.
    pub store: Templates,
    /// Its key.
    pub key: TemplateKey,
    /// Its directory (husk-vmm's `--restore`).
    pub dir: PathBuf,
    /// How long building it took, when this start built it.
    pub built_ms: Option<f64>,
}

/// The template for microVMs like `vm` (built now when there is none).
pub(super) fn prepare(
    data_dir: &Path,
    assets: &crate::assets::Assets,
    vm: &VmConfig,
) -> Result<Template, TemplateError> {
    let disks: Vec<bool> = vm.disks.iter().map(|d| d.read_only).collect();
    let shape = Shape {
        vcpus: vm.vcpus,
        mem_mib: vm.mem_mib,
        disks: &disks,
        nets: vm.nets.len(),
    };
    let key = TemplateKey::new(assets, shape)?;
    let store = Templates::open(data_dir);
    let t = Instant::now();
    let (dir, built) = store.ensure(&key, super::jail::jail_id(), |staging| {
        build(assets, &key, staging).map_err(|e| e.message.into())
    })?;
    let built_ms = built.then(|| ms(t.elapsed()));
    if let Some(took) = built_ms {
        log::info!("template {} built in {took:.0} ms", key.name());
    }
    Ok(Template {
        store,
        key,
        dir,
        built_ms,
    })
}

/// Boots the template's microVM, waits for its agent's hello, and has
/// husk-vmm snapshot it into `staging.snapshot`.
fn build(
    assets: &crate::assets::Assets,
    key: &TemplateKey,
    staging: &Staging,
) -> Result<(), StartError> {
    let config = template_vm(assets, key, &staging.work)?;
    let api_sock = staging.work.join("vmm.sock");
    let control = vmm::Control {
        api_sock: &api_sock,
        snapshot_dir: Some(&staging.snapshot),
        restore: None,
    };
    let mut vmm = vmm::spawn(&assets.vmm, &config, &staging.work, &control)?;
    let uds = staging.work.join("vsock.sock");
    let snapshot =
        connect_agent(&staging.work.join("console.log"), &uds, &mut vmm).and_then(|agent| {
            // The agent waits for its next connection once this one closes.
            drop(agent);
            vmm::api_command(&api_sock, "pause")?;
            let command = format!("snapshot {}", staging.snapshot.display());
            vmm::api_command(&api_sock, &command)?;
            Ok(())
        });
    stop_vmm(&mut vmm);
    snapshot
}

/// The template's microVM: `key`'s shape, empty files as its disk slots,
/// a TAP of its own per interface (gone with husk-vmm), no boot parameters.
fn template_vm(
    assets: &crate::assets::Assets,
    key: &TemplateKey,
    work: &Path,
) -> Result<VmConfig, StartError> {
    let mut disks = Vec::with_capacity(key.disks.len());
    for (i, &read_only) in key.disks.iter().enumerate() {
        let path = work.join(format!("slot{i}.img"));
        fs::File::create(&path)
            .map_err(|e| StartError::new(format!("cannot create {}: {e}", path.display())))?;
        disks.push(BlockConfig {
            path,
            read_only,
            serial: None,
        });
    }
    let nets = (0..key.nets)
        .map(|i| NetConfig {
            tap_name: Some(format!("hkt{}n{i}", std::process::id() % 1_000_000)),
            mac: None,
        })
        .collect();
    let files = (work.join("console.log"), work.join("vsock.sock"));
    Ok(VmConfig {
        disks,
        nets,
        ..vmm::guest_vm(assets, "", (key.vcpus, key.mem_mib), files)
    })
}

/// Gives a restored template's guest fresh entropy, the host's time,
/// eth0's identity and its disks.
pub(super) fn provision(
    agent: &mut AgentClient,
    disks: Vec<DiskMount>,
    net: Option<ProvisionNet>,
) -> Result<(), StartError> {
    let mut entropy = vec![0u8; ENTROPY_BYTES];
    getrandom::getrandom(&mut entropy)
        .map_err(|e| StartError::new(format!("cannot read the host's entropy: {e}")))?;
    let unix_time_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let req = AgentRequest::Provision(Box::new(Provision {
        entropy,
        unix_time_ns,
        net,
        disks,
    }));
    match agent.call(req).map_err(super::agent_error)? {
        Response::Provisioned => Ok(()),
        other => Err(StartError::new(format!(
            "unexpected answer to provision: {other:?}"
        ))),
    }
}
