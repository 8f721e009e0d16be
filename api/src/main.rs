//! `husk`: images today (pull, images, rmi, save, load, gc); containers come
//! next. Errors are one line on stderr with status 1 (125 for bad usage, as
//! Docker).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use husk::image::default::ensure_default_image;
use husk::image::layout;
use husk::image::reference::Reference;
use husk::image::registry::{Credentials, Registry};
use husk::image::store::Store;

/// husk: containers in microVMs.
#[derive(Debug, Parser)]
#[command(name = "husk", version, about)]
struct Cli {
    /// Data directory (images, containers); default /var/lib/husk as root,
    /// else $XDG_DATA_HOME/husk. Also HUSK_DATA_DIR.
    #[arg(long, global = true, env = "HUSK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Pull an image from a registry.
    Pull {
        /// Image reference (busybox, host:5000/ns/name:tag, name@sha256:...).
        image: String,
        /// Registry user name (or HUSK_REGISTRY_USER).
        #[arg(long, env = "HUSK_REGISTRY_USER")]
        user: Option<String>,
        /// Registry password (or HUSK_REGISTRY_PASSWORD).
        #[arg(long, env = "HUSK_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List images.
    Images,
    /// Remove an image name (blobs go with `husk gc`).
    Rmi {
        /// Image references.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Write an image as an OCI image layout directory.
    Save {
        /// Output directory.
        #[arg(short, long)]
        output: PathBuf,
        /// Image reference.
        image: String,
    },
    /// Load images from a `docker save` tarball or an OCI image layout (directory or tar).
    Load {
        /// A `docker save` tarball, an OCI layout directory or a tarred OCI layout.
        #[arg(short, long)]
        input: PathBuf,
        /// Repository name to tag the images with (default: the directory name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove blobs no image uses.
    Gc,
    /// Manage the helper VM used on hosts without hardware virtualization.
    Machine {
        #[command(subcommand)]
        cmd: husk::cli::machine::MachineCmd,
    },
}

fn data_dir(cli: Option<PathBuf>) -> PathBuf {
    cli.unwrap_or_else(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            PathBuf::from("/var/lib/husk")
        } else {
            std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
                .unwrap_or_else(|| PathBuf::from("."))
                .join("husk")
        }
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let data = data_dir(cli.data_dir);
    let store = Store::open(&data.join("images"))?;
    match cli.cmd {
        Cmd::Pull {
            image,
            user,
            password,
            quiet,
        } => {
            let r = Reference::parse(&image)?;
            let creds = match (user, password) {
                (Some(user), Some(password)) => Some(Credentials { user, password }),
                (None, None) => husk::image::registry::config_credentials(&r.registry),
                _ => anyhow::bail!("give both --user and --password, or neither"),
            };
            let digest = Registry::new(&r, creds, quiet).pull(&store, &r)?;
            if !quiet {
                println!("Digest: {digest}");
                println!("Status: Downloaded image for {}", r.familiar());
            }
            println!("{r}");
        }
        Cmd::Images => {
            ensure_default_image(&store)?;
            println!(
                "{:<40} {:<16} {:<14} {:>10}",
                "REPOSITORY", "TAG", "IMAGE ID", "SIZE"
            );
            for (name, digest) in store.refs()? {
                let r = Reference::parse(&name)?;
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
                    &m.config.digest[7..19],
                    size as f64 / 1e6
                );
            }
        }
        Cmd::Rmi { images } => {
            for i in images {
                let r = Reference::parse(&i)?;
                if !store.untag(&r)? {
                    anyhow::bail!("No such image: {i}");
                }
                println!("Untagged: {}", r.familiar());
            }
        }
        Cmd::Save { output, image } => {
            ensure_default_image(&store)?;
            layout::save(&store, &Reference::parse(&image)?, &output)?;
        }
        Cmd::Load { input, name } => {
            for r in layout::load_any(&store, &input, name.as_deref())? {
                println!("Loaded image: {}", r.familiar());
            }
        }
        Cmd::Gc => println!("removed {} blobs", store.gc()?),
        Cmd::Machine { cmd } => {
            let code = husk::cli::machine::run(cmd, &data, Box::new(Vec::new))?;
            std::process::exit(code);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(125);
        }
    };
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if husk::machine::should_forward_args(&args) {
        return match husk::machine::forward(&data_dir(cli.data_dir), args) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => {
                eprintln!("husk: {:#}", anyhow::Error::from(e));
                ExitCode::from(125)
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk: {e:#}");
            ExitCode::from(1)
        }
    }
}
