//! Files in and out of a running container, as tar streams (`husk cp`, the
//! API's `/containers/{id}/archive`): the container's own `stat` and `tar`
//! run as root in it through its supervisor, as `husk exec` runs a process
//! (as `kubectl cp` does). Nothing here reads the container's disk on the
//! host, and the tar stream is passed on, never parsed.
//!
//! A container without `tar` (or `stat`) in its image gets a one-line error
//! that says so. A stopped container has no running guest to ask: copying
//! needs it running.

use std::io::{self, Read, Write};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::ipc::IpcError;
use super::tool::{run_tool, ToolEnd};
use super::Handle;

/// Archive errors.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The supervisor refused or is not there.
    #[error(transparent)]
    Ipc(IpcError),
    /// The path does not exist in the container.
    #[error("Could not find the file {path} in container {container}")]
    NotFound {
        /// The path asked for.
        path: String,
        /// The container as named.
        container: String,
    },
    /// An extraction point that is not a directory.
    #[error("extraction point is not a directory: {0}")]
    NotADirectory(String),
    /// The image lacks a tool copying needs.
    #[error("copying files needs `{0}` in the container's image, and it has none")]
    NoTool(&'static str),
    /// A tool in the container failed.
    #[error("{tool} in the container failed (status {status}): {message}")]
    Tool {
        /// `tar` or `stat`.
        tool: &'static str,
        /// Its exit status.
        status: i32,
        /// The end of its stderr.
        message: String,
    },
    /// The tool could not be run or its stream broke.
    #[error(transparent)]
    Run(super::tool::ToolError),
}

impl From<super::tool::ToolError> for ArchiveError {
    fn from(e: super::tool::ToolError) -> Self {
        match e {
            super::tool::ToolError::Ipc(i) => ArchiveError::Ipc(i),
            e => ArchiveError::Run(e),
        }
    }
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, ArchiveError>;

/// What `stat` says of a path in the container (Docker's path stat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStat {
    /// The path's last component.
    pub name: String,
    /// Its size in bytes.
    pub size: i64,
    /// Go's `os.FileMode` bits, as Docker sends them.
    pub mode: u32,
    /// Modification time, RFC 3339.
    pub mtime: String,
    /// A symbolic link's target, else empty.
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

impl PathStat {
    /// Whether the path is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & GO_DIR != 0
    }

    /// The `X-Docker-Container-Path-Stat` header value: base64 of the JSON.
    pub fn header_value(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(json)
    }
}

const GO_DIR: u32 = 1 << 31;
const GO_SYMLINK: u32 = 1 << 27;
const GO_DEVICE: u32 = 1 << 26;
const GO_PIPE: u32 = 1 << 25;
const GO_SOCKET: u32 = 1 << 24;
const GO_SETUID: u32 = 1 << 23;
const GO_SETGID: u32 = 1 << 22;
const GO_CHARDEV: u32 = 1 << 21;
const GO_STICKY: u32 = 1 << 20;

/// Go's `os.FileMode` of a Unix `st_mode`.
pub fn go_mode(st_mode: u32) -> u32 {
    let mut m = st_mode & 0o777;
    m |= match st_mode & 0o170000 {
        0o040000 => GO_DIR,
        0o120000 => GO_SYMLINK,
        0o010000 => GO_PIPE,
        0o140000 => GO_SOCKET,
        0o020000 => GO_DEVICE | GO_CHARDEV,
        0o060000 => GO_DEVICE,
        _ => 0,
    };
    for (bit, go) in [
        (0o4000, GO_SETUID),
        (0o2000, GO_SETGID),
        (0o1000, GO_STICKY),
    ] {
        if st_mode & bit != 0 {
            m |= go;
        }
    }
    m
}

/// An absolute container path, as Docker takes relative ones (from `/`).
pub fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// The directory and last component `tar -C DIR NAME` takes for `path`
/// (`/a/b/` → `/a`, `b`; `/a/b/.` → `/a/b`, `.`; `/` → `/`, `.`).
pub fn split(path: &str) -> (String, String) {
    let abs = absolute(path);
    if let Some(dir) = abs.strip_suffix("/.") {
        return (
            if dir.is_empty() { "/" } else { dir }.to_string(),
            ".".into(),
        );
    }
    let trimmed = abs.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        None => ("/".into(), ".".into()),
        Some((dir, name)) => (
            if dir.is_empty() { "/" } else { dir }.to_string(),
            name.to_string(),
        ),
    }
}

/// Parses `stat -c '%s %f %Y'` output into a [`PathStat`] named `name`
/// (without a link target).
pub fn parse_stat(out: &str, name: &str) -> Option<PathStat> {
    let mut f = out.split_whitespace();
    let size = f.next()?.parse().ok()?;
    let st_mode = u32::from_str_radix(f.next()?, 16).ok()?;
    let secs: u64 = f.next()?.parse().ok()?;
    let mtime = crate::time::rfc3339(
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))?,
    );
    Some(PathStat {
        name: name.to_string(),
        size,
        mode: go_mode(st_mode),
        mtime,
        link_target: String::new(),
    })
}

/// Turns a tool's failure into an error: 127 is a missing tool.
fn check(tool: &'static str, end: ToolEnd) -> Result<()> {
    match end.status {
        0 => Ok(()),
        127 => Err(ArchiveError::NoTool(tool)),
        status => Err(ArchiveError::Tool {
            tool,
            status,
            message: end.stderr,
        }),
    }
}

/// Stats `path` in the container named `container` (for messages).
pub fn stat(h: &Handle, container: &str, path: &str) -> Result<PathStat> {
    let abs = absolute(path);
    let mut out = Vec::new();
    let argv = vec!["stat".into(), "-c".into(), "%s %f %Y".into(), abs.clone()];
    let end = run_tool(h, argv, None, &mut out)?;
    match end.status {
        0 => {}
        127 => return Err(ArchiveError::NoTool("stat")),
        _ => {
            return Err(ArchiveError::NotFound {
                path: path.to_string(),
                container: container.to_string(),
            })
        }
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let (_, name) = split(&abs);
    let mut st = parse_stat(&text, &name).ok_or_else(|| ArchiveError::Tool {
        tool: "stat",
        status: 0,
        message: format!("unexpected output {:?}", text.trim()),
    })?;
    if st.mode & GO_SYMLINK != 0 {
        let mut target = Vec::new();
        let argv = vec!["readlink".into(), abs.clone()];
        check("readlink", run_tool(h, argv, None, &mut target)?)?;
        st.link_target = String::from_utf8_lossy(&target).trim_end().to_string();
    }
    Ok(st)
}

/// Writes a tar of `path` (a file, or a directory and its content; `dir/.`
/// for the content alone) to `out`.
pub fn get(h: &Handle, path: &str, out: &mut dyn Write) -> Result<()> {
    let (dir, name) = split(path);
    let argv = vec![
        "tar".into(),
        "cf".into(),
        "-".into(),
        "-C".into(),
        dir,
        name,
    ];
    check("tar", run_tool(h, argv, None, out)?)
}

/// Extracts the tar read from `input` into the directory `dir` of the
/// container named `container`.
pub fn put(h: &Handle, container: &str, dir: &str, input: Box<dyn Read + Send>) -> Result<()> {
    let st = stat(h, container, dir)?;
    if !st.is_dir() {
        return Err(ArchiveError::NotADirectory(dir.to_string()));
    }
    let argv = vec![
        "tar".into(),
        "xf".into(),
        "-".into(),
        "-C".into(),
        absolute(dir),
    ];
    check("tar", run_tool(h, argv, Some(input), &mut io::sink())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_as_tar_takes_them() {
        assert_eq!(split("/etc/hostname"), ("/etc".into(), "hostname".into()));
        assert_eq!(split("/etc/"), ("/".into(), "etc".into()));
        assert_eq!(split("/etc/."), ("/etc".into(), ".".into()));
        assert_eq!(split("/"), ("/".into(), ".".into()));
        assert_eq!(split("/."), ("/".into(), ".".into()));
        assert_eq!(split("tmp/x"), ("/tmp".into(), "x".into()));
    }

    #[test]
    fn modes_as_go_sees_them() {
        assert_eq!(go_mode(0o100644), 0o644);
        assert_eq!(go_mode(0o040755), GO_DIR | 0o755);
        assert_eq!(go_mode(0o120777), GO_SYMLINK | 0o777);
        assert_eq!(go_mode(0o104755), GO_SETUID | 0o755);
        assert_eq!(go_mode(0o041777), GO_DIR | GO_STICKY | 0o777);
        assert_eq!(go_mode(0o020666), GO_DEVICE | GO_CHARDEV | 0o666);
    }

    #[test]
    fn stat_output_parses_and_encodes() {
        let st = parse_stat("12 41ed 1700000000\n", "etc").unwrap();
        assert!(st.is_dir());
        assert_eq!(st.size, 12);
        assert_eq!(st.mtime, "2023-11-14T22:13:20.000000000Z");
        let json = base64::engine::general_purpose::STANDARD
            .decode(st.header_value())
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["name"], "etc");
        assert_eq!(v["mode"], GO_DIR | 0o755);
        assert_eq!(v["linkTarget"], "");
        assert!(parse_stat("x y z", "a").is_none());
        assert!(parse_stat("", "a").is_none());
    }
}
