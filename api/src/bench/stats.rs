//! The statistics of `husk bench`: percentiles of a row's samples and the
//! ratio of one row to the container baseline. Pure functions.

/// The 50th and 90th percentiles of a row's samples, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
}

/// The `p`th percentile (0..=100) of `samples` by linear interpolation
/// between the closest ranks (as numpy's default); `None` when there are no
/// samples, any sample is not finite, or `p` is out of range.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() || !(0.0..=100.0).contains(&p) || samples.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    // `rank` is a whole or fractional index within 0..=len-1: both casts
    // are exact and in bounds.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// The p50 and p90 of `samples` (`None` without samples).
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    Some(Summary {
        p50: percentile(samples, 50.0)?,
        p90: percentile(samples, 90.0)?,
    })
}

/// How many times `baseline` `value` is; `None` when the baseline is not a
/// positive number.
pub fn ratio(value: f64, baseline: f64) -> Option<f64> {
    (baseline > 0.0 && baseline.is_finite() && value.is_finite()).then(|| value / baseline)
}

/// Starts per second for `count` starts over `seconds`.
pub fn rate(count: usize, seconds: f64) -> Option<f64> {
    (seconds > 0.0 && seconds.is_finite()).then(|| count as f64 / seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let s = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&s, 50.0), Some(2.5));
        assert!((percentile(&s, 90.0).unwrap() - 3.7).abs() < 1e-9);
        assert_eq!(percentile(&s, 0.0), Some(1.0));
        assert_eq!(percentile(&s, 100.0), Some(4.0));
    }

    #[test]
    fn one_sample_is_every_percentile() {
        assert_eq!(summarize(&[7.5]), Some(Summary { p50: 7.5, p90: 7.5 }));
    }

    #[test]
    fn odd_count_median_is_the_middle_sample() {
        let s = summarize(&[30.0, 10.0, 20.0, 50.0, 40.0]).unwrap();
        assert_eq!(s.p50, 30.0);
        assert!((s.p90 - 46.0).abs() < 1e-9);
    }

    #[test]
    fn no_samples_or_bad_input_give_none() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(percentile(&[1.0, f64::NAN], 50.0), None);
        assert_eq!(percentile(&[1.0], 101.0), None);
        assert_eq!(percentile(&[1.0], -1.0), None);
    }

    #[test]
    fn ratio_and_rate() {
        assert_eq!(ratio(300.0, 15.0), Some(20.0));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::INFINITY, 1.0), None);
        assert_eq!(rate(4, 2.0), Some(2.0));
        assert_eq!(rate(4, 0.0), None);
    }
}
