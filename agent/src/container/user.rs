//! Resolving the image's `user` (`name`, `uid`, `name:group`, `uid:gid`)
//! from the rootfs's own `/etc/passwd` and `/etc/group`, parsed here: the
//! agent is static and has no NSS.

use std::fs;
use std::path::Path;

use super::{ContainerError, Result};
use husk_layers::scope;

/// Who the process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids.
    pub groups: Vec<u32>,
    /// Home directory from passwd ("/" when unknown).
    pub home: String,
}

#[derive(Debug, PartialEq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug, PartialEq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Reads a file of the rootfs through a scoped path; missing means empty.
fn read_in_root(root: &Path, rel: &str) -> Result<String> {
    let host =
        scope::resolve(root, Path::new(rel), false).map_err(|source| ContainerError::Scope {
            path: rel.into(),
            source,
        })?;
    if fs::symlink_metadata(&host)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
    {
        return Ok(String::new());
    }
    match fs::read(&host) {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(ContainerError::Io { path: host, source }),
    }
}

/// Resolves `spec` against the rootfs at `root`.
pub fn resolve_user(root: &Path, spec: &str) -> Result<Identity> {
    resolve_from(
        &read_in_root(root, "etc/passwd")?,
        &read_in_root(root, "etc/group")?,
        spec,
    )
}

fn resolve_from(passwd: &str, group: &str, spec: &str) -> Result<Identity> {
    let users = parse_passwd(passwd);
    let groups = parse_group(group);
    let unknown = |what: &str| ContainerError::UnknownUser {
        spec: spec.to_string(),
        what: what.to_string(),
    };
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let entry = users.iter().find(|u| u.name == user_part).or_else(|| {
        let uid: u32 = user_part.parse().ok()?;
        users.iter().find(|u| u.uid == uid)
    });
    let (uid, mut gid, home, name) = match (entry, user_part.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, e.home.clone(), Some(e.name.clone())),
        // A numeric uid need not exist in passwd.
        (None, Ok(uid)) => (uid, 0, "/".to_string(), None),
        (None, Err(_)) => return Err(unknown(user_part)),
    };
    if let Some(g) = group_part {
        gid = match groups.iter().find(|e| e.name == g) {
            Some(e) => e.gid,
            None => g.parse().map_err(|_| unknown(g))?,
        };
    }
    let mut supplementary = vec![gid];
    if let Some(name) = name {
        for g in &groups {
            if g.members.contains(&name) && !supplementary.contains(&g.gid) {
                supplementary.push(g.gid);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups: supplementary,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# c\nbroken\nwww:x:33:33:www:/var/www:/bin/false\nbob:x:1000:1000::/home/bob:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nbob:x:1000:\nwheel:x:10:bob,alice\nvideo:x:44:bob\n";

    #[test]
    fn names_and_numbers() {
        let r = resolve_from(PASSWD, GROUP, "").unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (0, 0, "/root"));
        let b = resolve_from(PASSWD, GROUP, "bob").unwrap();
        assert_eq!((b.uid, b.gid), (1000, 1000));
        assert_eq!(b.groups, vec![1000, 10, 44]);
        let w = resolve_from(PASSWD, GROUP, "33:wheel").unwrap();
        assert_eq!((w.uid, w.gid), (33, 10));
        let n = resolve_from(PASSWD, GROUP, "4242:4343").unwrap();
        assert_eq!((n.uid, n.gid, n.home.as_str()), (4242, 4343, "/"));
    }

    #[test]
    fn unknown_names_refused() {
        let e = resolve_from(PASSWD, GROUP, "nobody").unwrap_err();
        assert!(e.to_string().contains("nobody"), "{e}");
        assert!(resolve_from(PASSWD, GROUP, "bob:nogroup").is_err());
    }

    #[test]
    fn reads_from_rootfs() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/passwd"), PASSWD).unwrap();
        assert_eq!(resolve_user(d.path(), "www").unwrap().uid, 33);
        // Missing files: numeric ids still work.
        let e = tempfile::tempdir().unwrap();
        assert_eq!(resolve_user(e.path(), "5").unwrap().uid, 5);
    }
}
