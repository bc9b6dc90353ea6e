//! The two drift statistics, pure: the population stability index over the profile's bins and the
//! Kolmogorov–Smirnov statistic against the profile's CDF. `tests/drift/reference.py` computes the
//! same with NumPy and SciPy; `tests/drift/reference.json` holds its answers, checked here.

/// Shares below this count as this in the PSI, so an empty bin adds a large, finite term.
pub const PSI_FLOOR: f64 = 1e-4;

/// Population stability index: Σ (a − e) · ln(a / e) over bins, `a` the observed share (from
/// `counts`) and `e` the expected one, both floored at `PSI_FLOOR`. `None` without observations.
pub fn psi(expected: impl Iterator<Item = f64>, counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let sum = expected
        .zip(counts)
        .map(|(e, &c)| {
            let a = (c as f64 / total as f64).max(PSI_FLOOR);
            let e = e.max(PSI_FLOOR);
            (a - e) * (a / e).ln()
        })
        .sum();
    Some(sum)
}

/// The reference CDF at `x`: linear between consecutive quantiles `q[0..=m]` (taken at 0, 1/m, …, 1),
/// right-continuous where quantiles repeat; 0 below the first and 1 from the last.
pub fn quantile_cdf(quantiles: &[f64], x: f64) -> f64 {
    let m = quantiles.len() - 1;
    // Quantiles at or below x.
    let k = quantiles.partition_point(|q| *q <= x);
    if k == 0 {
        return 0.0;
    }
    if k > m {
        return 1.0;
    }
    let (lo, hi) = (quantiles[k - 1], quantiles[k]);
    ((k - 1) as f64 + (x - lo) / (hi - lo)) / m as f64
}

/// One-sample KS statistic of ascending `sorted` against `cdf`: the largest of
/// i/n − F(x₍ᵢ₎) and F(x₍ᵢ₎) − (i−1)/n (SciPy's `kstest`). `None` for no values.
pub fn ks(sorted: &[f64], cdf: impl Fn(f64) -> f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as f64;
    let mut d: f64 = 0.0;
    for (i, &x) in sorted.iter().enumerate() {
        let f = cdf(x);
        d = d.max((i + 1) as f64 / n - f).max(f - i as f64 / n);
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::repository::profile::Distribution;

    #[derive(Deserialize)]
    struct Case {
        name: String,
        distribution: Distribution,
        values: Vec<f64>,
        psi: f64,
        ks: Option<f64>,
    }

    fn cases() -> Vec<Case> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drift/reference.json");
        let text = std::fs::read_to_string(path).expect("tests/drift/reference.json (run tests/drift/reference.py)");
        serde_json::from_str(&text).expect("reference cases")
    }

    /// The statistics as the live monitor computes them, from a window's values.
    fn measure(distribution: &Distribution, values: &[f64]) -> (f64, Option<f64>) {
        let mut counts = vec![0; distribution.bins()];
        for &v in values {
            counts[distribution.bin(v)] += 1;
        }
        let psi = psi((0..distribution.bins()).map(|i| distribution.expected(i)), &counts).unwrap();
        let ks = distribution.quantiles().and_then(|q| {
            let mut sorted = values.to_vec();
            sorted.sort_by(f64::total_cmp);
            ks(&sorted, |x| quantile_cdf(q, x))
        });
        (psi, ks)
    }

    #[test]
    fn psi_and_ks_agree_with_numpy_and_scipy() {
        let cases = cases();
        assert!(cases.len() >= 10, "too few reference cases");
        for case in cases {
            let (psi, ks) = measure(&case.distribution, &case.values);
            assert!((psi - case.psi).abs() <= 1e-9, "{}: psi {psi} vs {}", case.name, case.psi);
            match (ks, case.ks) {
                (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-9, "{}: ks {a} vs {b}", case.name),
                (None, None) => {}
                other => panic!("{}: ks {other:?}", case.name),
            }
        }
    }

    #[test]
    fn identical_distributions_have_no_drift() {
        let q: Vec<f64> = (0..=100).map(f64::from).collect();
        let values: Vec<f64> = (0..100).map(|i| f64::from(i) + 0.5).collect();
        assert!(ks(&values, |x| quantile_cdf(&q, x)).unwrap() <= 0.01 + 1e-12);
        assert!(psi([0.5, 0.5].into_iter(), &[50, 50]).unwrap().abs() < 1e-15);
    }

    #[test]
    fn repeated_quantiles_make_a_step() {
        let q = [0.0, 1.0, 1.0, 1.0, 2.0];
        assert_eq!(quantile_cdf(&q, 0.5), 0.125);
        assert_eq!(quantile_cdf(&q, 1.0), 0.75);
        assert_eq!(quantile_cdf(&q, -1.0), 0.0);
        assert_eq!(quantile_cdf(&q, 2.0), 1.0);
    }

    #[test]
    fn no_values_no_statistic() {
        assert_eq!(psi([1.0].into_iter(), &[0]), None);
        assert_eq!(ks(&[], |_| 0.5), None);
    }
}
