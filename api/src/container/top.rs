//! `top` of a running container: its own `ps`, run in it as root (Docker
//! runs `ps` on the host over the container's pids; a microVM's processes
//! are visible only inside it). The `ps` run itself is left out.

use super::tool::{run_tool, ToolError};
use super::Handle;

/// Top errors.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// `ps` could not be run.
    #[error(transparent)]
    Run(#[from] ToolError),
    /// The image has no `ps`.
    #[error("top needs `ps` in the container's image, and it has none")]
    NoPs,
    /// `ps` failed.
    #[error("ps in the container failed (status {status}): {message}")]
    Failed {
        /// Its status.
        status: i32,
        /// The end of its stderr.
        message: String,
    },
}

/// What `ps` showed: column titles and one row per process.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Top {
    /// Column titles.
    pub titles: Vec<String>,
    /// Rows, as many fields as titles (the last one takes the rest).
    pub processes: Vec<Vec<String>>,
}

/// The most output of `ps` read.
const MAX_OUTPUT: usize = 4 << 20;

/// Parses `ps` output: the first line gives the titles; each row is split
/// on white space into as many fields, the last one keeping the rest. The
/// row whose last field is `own` (the `ps` run itself) is left out.
pub fn parse(out: &str, own: &str) -> Top {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let titles: Vec<String> = match lines.next() {
        Some(l) => l.split_whitespace().map(String::from).collect(),
        None => return Top::default(),
    };
    let n = titles.len().max(1);
    let processes = lines
        .map(|l| {
            let mut fields = Vec::with_capacity(n);
            let mut rest = l.trim_start();
            while fields.len() + 1 < n {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                fields.push(rest[..end].to_string());
                rest = rest[end..].trim_start();
            }
            fields.push(rest.trim_end().to_string());
            fields
        })
        .filter(|f| f.last().map(String::as_str) != Some(own))
        .collect();
    Top { titles, processes }
}

/// Runs `ps ARGS` (default `-ef`) in the container of `h`.
pub fn top(h: &Handle, ps_args: &str) -> Result<Top, TopError> {
    let args: Vec<String> = if ps_args.trim().is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.split_whitespace().map(String::from).collect()
    };
    let own = std::iter::once("ps".to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut argv = vec!["ps".to_string()];
    argv.extend(args);
    let mut out = Vec::new();
    let end = run_tool(h, argv, None, &mut out)?;
    match end.status {
        0 => {}
        127 => return Err(TopError::NoPs),
        status => {
            return Err(TopError::Failed {
                status,
                message: end.stderr,
            })
        }
    }
    out.truncate(MAX_OUTPUT);
    Ok(parse(&String::from_utf8_lossy(&out), &own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_and_procps_output() {
        let bb = "PID   USER     COMMAND\n    1 root     sleep 600\n    7 root     ps -ef\n";
        let t = parse(bb, "ps -ef");
        assert_eq!(t.titles, ["PID", "USER", "COMMAND"]);
        assert_eq!(t.processes, vec![vec!["1", "root", "sleep 600"]]);
        let procps = "UID   PID  PPID  C STIME TTY          TIME CMD\n\
                      root    1     0  0 10:00 ?        00:00:00 nginx: master process nginx -g daemon off;\n";
        let t = parse(procps, "ps -ef");
        assert_eq!(t.titles.len(), 8);
        assert_eq!(
            t.processes[0][7],
            "nginx: master process nginx -g daemon off;"
        );
        assert_eq!(parse("", "ps"), Top::default());
    }
}
