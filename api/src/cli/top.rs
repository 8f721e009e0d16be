//! `husk top CONTAINER [ps OPTIONS]`: the container's processes, from its
//! own `ps` (`container::top`).

use std::path::Path;

use clap::Args;

use super::{CliError, CliResult};

/// Options of `husk top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Container.
    pub container: String,
    /// Options for ps (default -ef).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

/// `husk top`.
pub fn run(data_dir: &Path, args: TopArgs) -> CliResult {
    let h = super::containers(data_dir)?.find(&args.container)?;
    let t = crate::container::top::top(&h, &args.ps_args.join(" ")).map_err(|e| {
        let status = match &e {
            crate::container::top::TopError::Run(crate::container::tool::ToolError::Ipc(i)) => {
                i.status()
            }
            _ => 1,
        };
        CliError::new(status, crate::error::chain(&e))
    })?;
    let mut rows = vec![t.titles];
    rows.extend(t.processes);
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let last = r.len().saturating_sub(1);
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if i == last {
                    f.clone()
                } else {
                    format!("{f:<w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", line.join("   "));
    }
    Ok(0)
}
