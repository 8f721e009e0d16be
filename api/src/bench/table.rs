//! The table `husk bench` prints: one line per measured row (p50, p90, the
//! ratio of p50s to the container baseline), then the density row, the rows
//! not available here and the rows that failed, one line each. Pure.

use std::fmt::Write;

use super::report::{Density, ForkDensity, Report, Row};
use super::stats;

const MIB: f64 = 1024.0 * 1024.0;

/// The whole table as text (ends with a newline).
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "husk bench: image {}, {} run{} per row, rows alternating, on {}\n",
        report.image,
        report.runs,
        if report.runs == 1 { "" } else { "s" },
        report.place
    );
    let base = report.baseline_p50();
    let cells: Vec<[String; 5]> = report.rows.iter().map(|r| cells(r, base)).collect();
    let header = [
        "row".to_string(),
        "p50 ms".into(),
        "p90 ms".into(),
        "x container".into(),
        "what".into(),
    ];
    let mut widths = [0usize; 5];
    for c in std::iter::once(&header).chain(&cells) {
        for (w, s) in widths.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    for c in std::iter::once(&header).chain(&cells) {
        let _ = writeln!(
            out,
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    }
    if let Some(d) = &report.density {
        let _ = writeln!(out, "{}", density_line(d));
    }
    if let Some(f) = &report.forks {
        let _ = writeln!(out, "{}", fork_density_line(f));
    }
    for u in &report.unavailable {
        let _ = writeln!(out, "unavailable: {}: {}", u.name, u.reason);
    }
    for r in &report.rows {
        if let Some(e) = &r.error {
            let _ = writeln!(out, "error: {}: {e}", r.name);
        }
    }
    out
}

fn cells(r: &Row, base: Option<f64>) -> [String; 5] {
    let what = if r.baseline {
        format!("{} (container baseline)", r.what)
    } else {
        r.what.clone()
    };
    match r.summary() {
        Some(s) => [
            r.name.clone(),
            format!("{:.1}", s.p50),
            format!("{:.1}", s.p90),
            base.and_then(|b| stats::ratio(s.p50, b))
                .map_or_else(|| "-".into(), |x| format!("{x:.2}")),
            what,
        ],
        None => [r.name.clone(), "-".into(), "-".into(), "-".into(), what],
    }
}

/// The density row on one line.
pub fn density_line(d: &Density) -> String {
    match &d.outcome {
        Ok(f) => {
            let total = f.pss_bytes as f64 / MIB;
            let each = if d.k == 0 { 0.0 } else { total / d.k as f64 };
            let rate =
                stats::rate(d.k, f.seconds).map_or_else(|| "-".into(), |r| format!("{r:.2}"));
            format!(
                "density: {} (husk run -d) started at once in {s:.2} s ({rate} starts/s); \
                 PSS of their husk-vmm at {k}: {total:.1} MiB ({each:.1} MiB each)",
                sandboxes(d.k),
                k = d.k,
                s = f.seconds,
            )
        }
        Err(e) => format!("error: density ({}): {e}", sandboxes(d.k)),
    }
}

/// The fork density row on one line: the K forks' PSS against the idle
/// container's before it was forked and against the first fork's alone
/// (K: nothing shared, 1: everything).
pub fn fork_density_line(f: &ForkDensity) -> String {
    match &f.outcome {
        Ok(x) => {
            let all = x.forks_pss_bytes as f64 / MIB;
            let one = x.one_fork_pss_bytes as f64 / MIB;
            let parent = x.parent_pss_bytes as f64 / MIB;
            let times = |of: f64| {
                if of > 0.0 {
                    format!("{:.1}x", all / of)
                } else {
                    "-".into()
                }
            };
            format!(
                "fork density: {k} forks (husk fork) of one idle container in {s:.2} s; \
                 PSS of their husk-vmm: {all:.1} MiB, {by_parent} the container's \
                 ({parent:.1} MiB), {by_one} the first fork's alone ({one:.1} MiB)",
                k = f.k,
                s = x.seconds,
                by_parent = times(parent),
                by_one = times(one),
            )
        }
        Err(e) => format!("error: fork density ({} forks): {e}", f.k),
    }
}

fn sandboxes(k: usize) -> String {
    format!("{k} sandbox{}", if k == 1 { "" } else { "es" })
}

#[cfg(test)]
mod tests {
    use super::super::report::tests::sample;
    use super::*;

    #[test]
    fn renders_rows_ratios_density_and_unavailable() {
        let text = render(&sample());
        let want = "\
husk bench: image busybox, 3 runs per row, rows alternating, on this host (Linux 6.1.0, 2 CPUs)
row        p50 ms  p90 ms  x container  what
husk       3100.0  3180.0       281.82  husk run --rm busybox true
namespace    11.0    11.8         1.00  unshare + chroot, true (container baseline)
density: 2 sandboxes (husk run -d) started at once in 4.00 s (0.50 starts/s); PSS of their husk-vmm at 2: 100.0 MiB (50.0 MiB each)
fork density: 4 forks (husk fork) of one idle container in 3.00 s; PSS of their husk-vmm: 28.0 MiB, 2.3x the container's (12.0 MiB), 2.8x the first fork's alone (10.0 MiB)
unavailable: crun: crun is not installed
";
        assert_eq!(text, want);
    }

    #[test]
    fn failed_rows_show_dashes_and_an_error_line() {
        let mut r = sample();
        r.rows[1].samples_ms.clear();
        r.rows[1].error = Some("unshare: Operation not permitted".into());
        r.density.as_mut().unwrap().outcome = Err("husk run -d: status 125".into());
        r.forks.as_mut().unwrap().outcome = Err("husk fork: status 1".into());
        let text = render(&r);
        assert!(
            text.contains("\nhusk       3100.0  3180.0            -  husk run"),
            "{text}"
        );
        assert!(
            text.contains("\nnamespace       -       -            -  unshare"),
            "{text}"
        );
        assert!(text.contains("\nerror: density (2 sandboxes): husk run -d: status 125\n"));
        assert!(text.contains("\nerror: fork density (4 forks): husk fork: status 1\n"));
        assert!(text.ends_with("error: namespace: unshare: Operation not permitted\n"));
    }
}
