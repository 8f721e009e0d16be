//! User-defined networks (`husk network create`, the API's `/networks`):
//! named groups of containers that reach each other, and only each other,
//! beside the outside (NAT). Each container keeps its own /30 and TAP; what
//! a network adds is reachability between its running members (firewall
//! rules, [`super::peers`]) and their names in each member's `/etc/hosts`
//! (container name, aliases, short id).
//!
//! Records live in `<data dir>/networks/<id>.json`, created and removed
//! under `<data dir>/networks/lock`. `bridge` (the default network) and
//! `none` are built in and cannot be made or removed.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Built-in network names: `default` is husk's name for Docker's `bridge`.
pub const BUILTIN: &[&str] = &["bridge", "default", "none", "host"];
/// The most user-defined networks.
pub const MAX_NETWORKS: usize = 1000;

/// Network store errors.
#[derive(Debug, thiserror::Error)]
pub enum NetworksError {
    /// I/O on the store.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No such network.
    #[error("network {0} not found")]
    NotFound(String),
    /// The name is taken.
    #[error("network with name {0} already exists")]
    Exists(String),
    /// A name that is not allowed.
    #[error("invalid network name {0:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    BadName(String),
    /// A built-in network cannot be made or removed.
    #[error("{0} is a pre-defined network and cannot be created or removed")]
    Builtin(String),
    /// A driver husk does not have.
    #[error("husk networks use the bridge driver only (asked for {0:?})")]
    Driver(String),
    /// Containers still use it.
    #[error("error while removing network: network {name} id {id} has active endpoints")]
    InUse {
        /// Its name.
        name: String,
        /// Its id.
        id: String,
    },
    /// Too many networks.
    #[error("too many networks (at most {MAX_NETWORKS})")]
    Full,
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, NetworksError>;

/// A user-defined network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// 64-hex id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// RFC 3339.
    pub created: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The store under a data directory.
#[derive(Debug, Clone)]
pub struct Networks {
    dir: PathBuf,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NetworksError + 'a {
    move |source| NetworksError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl Networks {
    /// The store of `data_dir`.
    pub fn open(data_dir: &Path) -> Networks {
        Networks {
            dir: data_dir.join("networks"),
        }
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<fs::File>> {
        fs::create_dir_all(&self.dir).map_err(io_err("cannot create", &self.dir))?;
        let path = self.dir.join("lock");
        crate::lockfile::lock_exclusive(&path).map_err(io_err("cannot lock", &path))
    }

    /// Every user-defined network, oldest first.
    pub fn list(&self) -> Result<Vec<Network>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("cannot read", &self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes = fs::read(&path).map_err(io_err("cannot read", &path))?;
                if let Ok(n) = serde_json::from_slice::<Network>(&bytes) {
                    out.push(n);
                }
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    /// The network named `key`, or with that id or unique id prefix.
    pub fn find(&self, key: &str) -> Result<Network> {
        let all = self.list()?;
        if let Some(n) = all.iter().find(|n| n.name == key || n.id == key) {
            return Ok(n.clone());
        }
        let mut by_prefix = all
            .iter()
            .filter(|n| !key.is_empty() && n.id.starts_with(key));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(n), None) => Ok(n.clone()),
            _ => Err(NetworksError::NotFound(key.to_string())),
        }
    }

    /// Makes a network; `driver` must be empty or `bridge`.
    pub fn create(
        &self,
        name: &str,
        driver: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Network> {
        if BUILTIN.contains(&name) {
            return Err(NetworksError::Builtin(name.to_string()));
        }
        if !crate::container::names::valid_name(name) {
            return Err(NetworksError::BadName(name.to_string()));
        }
        if !driver.is_empty() && driver != "bridge" {
            return Err(NetworksError::Driver(driver.to_string()));
        }
        let _lock = self.lock()?;
        let all = self.list()?;
        if all.iter().any(|n| n.name == name) {
            return Err(NetworksError::Exists(name.to_string()));
        }
        if all.len() >= MAX_NETWORKS {
            return Err(NetworksError::Full);
        }
        let n = Network {
            id: crate::container::new_id(),
            name: name.to_string(),
            created: crate::time::now_rfc3339(),
            labels,
        };
        let path = self.dir.join(format!("{}.json", n.id));
        let tmp = self.dir.join(format!("{}.tmp", n.id));
        fs::write(&tmp, serde_json::to_vec(&n).unwrap_or_default())
            .map_err(io_err("cannot write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("cannot write", &path))?;
        Ok(n)
    }

    /// Removes `key` unless `in_use` says containers are attached to it.
    pub fn remove(&self, key: &str, in_use: impl Fn(&Network) -> bool) -> Result<Network> {
        if BUILTIN.contains(&key) {
            return Err(NetworksError::Builtin(key.to_string()));
        }
        let _lock = self.lock()?;
        let n = self.find(key)?;
        if in_use(&n) {
            return Err(NetworksError::InUse {
                name: n.name,
                id: n.id,
            });
        }
        let path = self.dir.join(format!("{}.json", n.id));
        fs::remove_file(&path).map_err(io_err("cannot remove", &path))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_find_remove() {
        let d = tempfile::tempdir().unwrap();
        let s = Networks::open(d.path());
        assert!(s.list().unwrap().is_empty());
        let labels = BTreeMap::from([("a".to_string(), "b".to_string())]);
        let n = s.create("proj_default", "bridge", labels.clone()).unwrap();
        assert_eq!(s.find("proj_default").unwrap(), n);
        assert_eq!(s.find(&n.id[..12]).unwrap().labels, labels);
        assert!(matches!(
            s.create("proj_default", "", BTreeMap::new()),
            Err(NetworksError::Exists(_))
        ));
        assert!(matches!(
            s.create("bridge", "", BTreeMap::new()),
            Err(NetworksError::Builtin(_))
        ));
        assert!(matches!(
            s.create("x y", "", BTreeMap::new()),
            Err(NetworksError::BadName(_))
        ));
        assert!(matches!(
            s.create("other", "overlay", BTreeMap::new()),
            Err(NetworksError::Driver(_))
        ));
        assert!(matches!(
            s.remove("proj_default", |_| true),
            Err(NetworksError::InUse { .. })
        ));
        s.remove("proj_default", |_| false).unwrap();
        assert!(matches!(
            s.find("proj_default"),
            Err(NetworksError::NotFound(_))
        ));
        assert!(matches!(
            s.remove("none", |_| false),
            Err(NetworksError::Builtin(_))
        ));
    }
}
