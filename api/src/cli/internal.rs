//! Hidden commands husk runs itself: a container's supervisor, and the
//! husk machine's image transfer.

use std::os::fd::AsFd;
use std::path::Path;

use crate::image::store::Store;

use super::{CliError, CliResult};

/// `husk container-supervise ID`: the supervisor of one container. The CLI
/// that started it reads a typed ready message from its stdout; afterwards
/// stdout points nowhere.
pub fn container_supervise(data: &Path, id: &str, checkpoint: Option<&str>) -> CliResult {
    // What the supervisor logs goes to its stderr, `supervisor.log`.
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .format_target(false)
        .format_timestamp_millis()
        .try_init();
    let ready = std::fs::File::from(
        std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| CliError::new(1, format!("cannot keep stdout: {e}")))?,
    );
    if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    Ok(crate::container::supervisor::supervise(
        data, id, checkpoint, ready,
    ))
}

/// `husk image-present REF DIGEST` (in the machine): status 0 when the
/// store has REF as DIGEST.
pub fn image_present(data: &Path, reference: &str, digest: &str) -> CliResult {
    let store = Store::open(&data.join("images"))?;
    Ok(i32::from(!crate::machine::images::image_present(
        &store, reference, digest,
    )))
}

/// `husk image-receive REF` (in the machine): loads a tarred OCI layout
/// from stdin as REF.
pub fn image_receive(data: &Path, reference: &str) -> CliResult {
    let store = Store::open(&data.join("images"))?;
    crate::machine::images::image_receive(&store, reference, std::io::stdin().lock()).map_err(
        |e| {
            CliError::new(
                1,
                format!("receiving {reference}: {}", crate::error::chain(&e)),
            )
        },
    )?;
    Ok(0)
}
