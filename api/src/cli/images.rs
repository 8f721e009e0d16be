//! The image commands: `pull`, `images`, `rmi`, `save`, `load`, `gc`.

use std::path::{Path, PathBuf};

use crate::image::default::ensure_default_image;
use crate::image::layout;
use crate::image::reference::Reference;
use crate::image::registry::{Credentials, Registry};
use crate::image::store::Store;
use crate::storage::rootfs::{referenced_keys, RootfsCache};

use super::{CliError, CliResult};

/// `husk pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Image reference (busybox, host:5000/ns/name:tag, name@sha256:...).
    pub image: String,
    /// Registry user name (or HUSK_REGISTRY_USER).
    #[arg(long, env = "HUSK_REGISTRY_USER")]
    pub user: Option<String>,
    /// Registry password (or HUSK_REGISTRY_PASSWORD).
    #[arg(long, env = "HUSK_REGISTRY_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `husk rmi`.
#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// Image references.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// `husk save`.
#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// Output directory.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Image reference.
    pub image: String,
}

/// `husk load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// A `docker save` tarball, an OCI layout directory or a tarred OCI layout.
    #[arg(short, long)]
    pub input: PathBuf,
    /// Repository name to tag the images with (default: the directory name).
    #[arg(long)]
    pub name: Option<String>,
}

fn store(data: &Path) -> Result<Store, CliError> {
    Ok(Store::open(&data.join("images"))?)
}

fn reference(s: &str) -> Result<Reference, CliError> {
    Ok(Reference::parse(s)?)
}

/// `husk pull`.
pub fn pull(data: &Path, a: PullArgs) -> CliResult {
    let store = store(data)?;
    let r = reference(&a.image)?;
    let creds = match (a.user, a.password) {
        (Some(user), Some(password)) => Some(Credentials { user, password }),
        (None, None) => crate::image::registry::config_credentials(&r.registry),
        _ => {
            return Err(CliError::new(
                1,
                "give both --user and --password, or neither",
            ))
        }
    };
    let digest = Registry::new(&r, creds, a.quiet).pull(&store, &r)?;
    if !a.quiet {
        println!("Digest: {digest}");
        println!("Status: Downloaded image for {}", r.familiar());
    }
    println!("{r}");
    Ok(0)
}

/// `husk images`.
pub fn list(data: &Path) -> CliResult {
    let store = store(data)?;
    ensure_default_image(&store)?;
    println!(
        "{:<40} {:<16} {:<14} {:>10}",
        "REPOSITORY", "TAG", "IMAGE ID", "SIZE"
    );
    for (name, digest) in store.refs()? {
        let r = reference(&name)?;
        let m = store.manifest(&digest)?;
        let size: u64 = m.layers.iter().map(|l| l.size).sum::<u64>() + m.config.size;
        let repo = r
            .familiar()
            .rsplit_once(':')
            .map(|(a, _)| a.to_string())
            .unwrap_or_else(|| r.familiar());
        println!(
            "{:<40} {:<16} {:<14} {:>9.1}MB",
            repo.split('@').next().unwrap_or(""),
            r.tag.as_deref().unwrap_or("<none>"),
            crate::image::oci::short_digest(&m.config.digest),
            size as f64 / 1e6
        );
    }
    Ok(0)
}

/// `husk rmi`.
pub fn rmi(data: &Path, a: RmiArgs) -> CliResult {
    let store = store(data)?;
    for i in a.images {
        let r = reference(&i)?;
        if !store.untag(&r)? {
            return Err(CliError::new(1, format!("No such image: {i}")));
        }
        println!("Untagged: {}", r.familiar());
    }
    Ok(0)
}

/// `husk save`.
pub fn save(data: &Path, a: SaveArgs) -> CliResult {
    let store = store(data)?;
    ensure_default_image(&store)?;
    layout::save(&store, &reference(&a.image)?, &a.output)?;
    Ok(0)
}

/// `husk load`.
pub fn load(data: &Path, a: LoadArgs) -> CliResult {
    let store = store(data)?;
    for r in layout::load_any(&store, &a.input, a.name.as_deref())? {
        println!("Loaded image: {}", r.familiar());
    }
    Ok(0)
}

/// `husk gc`: blobs and rootfs disks no image uses, and the template
/// snapshots (the next start builds its own again).
pub fn gc(data: &Path) -> CliResult {
    let store = store(data)?;
    println!("removed {} blobs", store.gc()?);
    let cache = RootfsCache::open(&data.join("rootfs"))?;
    let n = cache.remove_unused(&referenced_keys(&store)?)?;
    println!("removed {n} rootfs disks");
    let templates = crate::container::template::Templates::open(data).remove_all()?;
    println!("removed {templates} template snapshots");
    Ok(0)
}
