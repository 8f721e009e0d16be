//! What one `husk bench` measured: the rows of started things (samples in
//! milliseconds), the rows that could not be measured here and why, and the
//! density row. Serialized as JSON when the measuring happens in the husk
//! machine and the table and plot are made on the host.

use serde::{Deserialize, Serialize};

use super::stats::{self, Summary};

/// Everything one run of `husk bench` measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The image every row starts.
    pub image: String,
    /// Measured starts per row (besides one unmeasured warm-up).
    pub runs: usize,
    /// Where it was measured ("this host", "the husk machine"), with the
    /// kernel release and CPU count.
    pub place: String,
    /// The measured rows, in the order they were started each round.
    pub rows: Vec<Row>,
    /// The rows that could not be measured here.
    pub unavailable: Vec<Unavailable>,
    /// Concurrent starts, when asked for (`--density K`, K > 0).
    pub density: Option<Density>,
    /// Forks of one container, when asked for (`--forks K`, K > 0).
    #[serde(default)]
    pub forks: Option<ForkDensity>,
}

/// One starter's samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Short name ("husk", "namespace", "crun", ...).
    pub name: String,
    /// What one start is, for the table.
    pub what: String,
    /// Whether this row is the container baseline the ratios are to.
    pub baseline: bool,
    /// Wall time of each measured start, in milliseconds.
    pub samples_ms: Vec<f64>,
    /// Why the row stopped being measured (a start failed), if it did.
    pub error: Option<String>,
}

/// A row that is not measured, and why (one line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    /// Short name.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// K sandboxes started at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Density {
    /// How many.
    pub k: usize,
    /// The figures, or why they could not be had.
    pub outcome: Result<DensityFigures, String>,
}

/// What the density row measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DensityFigures {
    /// From the first start to the last `husk run -d` returning.
    pub seconds: f64,
    /// Summed PSS of the K husk-vmm processes, in bytes.
    pub pss_bytes: u64,
}

/// K forks of one idle container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForkDensity {
    /// How many forks.
    pub k: usize,
    /// The figures, or why they could not be had.
    pub outcome: Result<ForkFigures, String>,
}

/// What the fork density row measured (PSS of husk-vmm processes, bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForkFigures {
    /// From the first `husk fork` to the last one returning.
    pub seconds: f64,
    /// The parent's, before any fork.
    pub parent_pss_bytes: u64,
    /// The first fork's, while it was the only one.
    pub one_fork_pss_bytes: u64,
    /// All K forks' together, while all run.
    pub forks_pss_bytes: u64,
}

impl Row {
    /// p50 and p90 of the samples.
    pub fn summary(&self) -> Option<Summary> {
        stats::summarize(&self.samples_ms)
    }
}

impl Report {
    /// The baseline row's p50, when it has samples.
    pub fn baseline_p50(&self) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.baseline)
            .and_then(Row::summary)
            .map(|s| s.p50)
    }

    /// Whether any row or the density row failed.
    pub fn failed(&self) -> bool {
        self.rows
            .iter()
            .any(|r| r.error.is_some() || r.samples_ms.is_empty())
            || self.density.as_ref().is_some_and(|d| d.outcome.is_err())
            || self.forks.as_ref().is_some_and(|f| f.outcome.is_err())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A report as a run on this kind of host gives.
    pub(crate) fn sample() -> Report {
        Report {
            image: "busybox".into(),
            runs: 3,
            place: "this host (Linux 6.1.0, 2 CPUs)".into(),
            rows: vec![
                Row {
                    name: "husk".into(),
                    what: "husk run --rm busybox true".into(),
                    baseline: false,
                    samples_ms: vec![3000.0, 3200.0, 3100.0],
                    error: None,
                },
                Row {
                    name: "namespace".into(),
                    what: "unshare + chroot, true".into(),
                    baseline: true,
                    samples_ms: vec![10.0, 12.0, 11.0],
                    error: None,
                },
            ],
            unavailable: vec![Unavailable {
                name: "crun".into(),
                reason: "crun is not installed".into(),
            }],
            density: Some(Density {
                k: 2,
                outcome: Ok(DensityFigures {
                    seconds: 4.0,
                    pss_bytes: 100 << 20,
                }),
            }),
            forks: Some(ForkDensity {
                k: 4,
                outcome: Ok(ForkFigures {
                    seconds: 3.0,
                    parent_pss_bytes: 12 << 20,
                    one_fork_pss_bytes: 10 << 20,
                    forks_pss_bytes: 28 << 20,
                }),
            }),
        }
    }

    #[test]
    fn round_trips_through_json() {
        let r = sample();
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&text).unwrap(), r);
    }

    #[test]
    fn baseline_and_failure() {
        let mut r = sample();
        assert_eq!(r.baseline_p50(), Some(11.0));
        assert!(!r.failed());
        r.rows[0].error = Some("husk run: status 125".into());
        assert!(r.failed());
        let mut r = sample();
        r.density.as_mut().unwrap().outcome = Err("no".into());
        assert!(r.failed());
        let mut r = sample();
        r.forks.as_mut().unwrap().outcome = Err("husk fork: status 1".into());
        assert!(r.failed());
        let mut r = sample();
        r.rows[1].samples_ms.clear();
        assert!(r.failed());
        assert_eq!(r.baseline_p50(), None);
    }
}
