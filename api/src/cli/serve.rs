//! `husk serve [--socket PATH]`: the Docker Engine API on a Unix socket
//! (`serve/`). Default `/run/husk/docker.sock` as root, else
//! `$XDG_RUNTIME_DIR/husk/docker.sock`; mode 0660, group `docker` when
//! it exists. Ends on SIGINT/SIGTERM (and SIGHUP), removing the socket;
//! containers keep running (each has its own supervisor). On a host without
//! hardware virtualization the API is served inside the husk machine and
//! relayed here (`machine::api_relay`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::{CliError, CliResult};
use crate::serve::{default_socket, serve, Ctx};

/// Options of `husk serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The Unix socket to listen on.
    #[arg(long, short = 'H', value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

fn fail(what: &str, path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::new(1, format!("{what} {}: {e}", path.display()))
}

/// Binds the socket: a stale one (nobody answering) is replaced; a live
/// one is refused.
fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, CliError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail("cannot create", dir, e))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(CliError::new(
            1,
            format!("{} is in use by another server", path.display()),
        ));
    }
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(fail("cannot replace", path, e));
        }
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| fail("cannot listen on", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| fail("cannot set the mode of", path, e))?;
    if let Ok(Some(g)) = nix::unistd::Group::from_name("docker") {
        nix::unistd::chown(path, None, Some(g.gid)).map_err(|e| fail("cannot chown", path, e))?;
    }
    l.set_nonblocking(true)
        .map_err(|e| fail("cannot set up", path, e))?;
    Ok(l)
}

/// `husk serve`.
pub fn run(data_dir: &Path, args: ServeArgs) -> CliResult {
    let path = args.socket.unwrap_or_else(default_socket);
    let std_listener = bind(&path)?;
    if crate::machine::should_forward() {
        let result = crate::machine::api_relay::serve_host(data_dir, std_listener, &path);
        let _ = std::fs::remove_file(&path);
        return result
            .map(|()| 0)
            .map_err(|e| CliError::new(1, crate::error::chain(&e)));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::new(1, format!("cannot start the server: {e}")))?;
    let ctx = Arc::new(Ctx::new(data_dir.to_path_buf()));
    crate::serve::events::watch(data_dir.to_path_buf(), ctx.clone());
    let result = rt.block_on(async {
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        eprintln!("husk: serving the Docker API on unix://{}", path.display());
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        // The relay of a host without hardware virtualization hangs up.
        let mut hup = signal(SignalKind::hangup())?;
        tokio::select! {
            r = serve(listener, ctx) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
            _ = hup.recv() => Ok(()),
        }
    });
    let _ = std::fs::remove_file(&path);
    rt.shutdown_background();
    result.map_err(|e| fail("serving on", &path, e))?;
    Ok(0)
}
