//! The statistics the comparison uses, as pure functions over plain numbers.
//!
//! Each is checked against SciPy / statsmodels / scikit-learn on committed vectors
//! (`tests/stats/reference.json`, made by `tests/stats/make_reference.py`).

use statrs::distribution::{ContinuousCDF, Normal, StudentsT};
use statrs::function::gamma::ln_gamma;

/// `Φ⁻¹(p)` of the standard normal.
pub fn normal_quantile(p: f64) -> f64 {
    Normal::standard().inverse_cdf(p)
}

/// `Φ(x)` of the standard normal.
pub fn normal_cdf(x: f64) -> f64 {
    Normal::standard().cdf(x)
}

/// The `p` quantile of Student's t with `df` degrees of freedom.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    let t = StudentsT::new(0.0, 1.0, df).expect("df > 0");
    // statrs' inverse is good to ~1e-10; two Newton steps on the CDF bring it to the CDF's precision.
    let mut x = t.inverse_cdf(p);
    for _ in 0..2 {
        let density = statrs::distribution::Continuous::pdf(&t, x);
        if density > 0.0 {
            x -= (t.cdf(x) - p) / density;
        }
    }
    x
}

/// Two-sided `P(|T| ≥ |t|)` for Student's t with `df` degrees of freedom.
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    let dist = StudentsT::new(0.0, 1.0, df).expect("df > 0");
    (2.0 * dist.sf(t.abs())).min(1.0)
}

/// McNemar's exact test: the two-sided binomial test of `b` against `c` discordant pairs at ½,
/// as `statsmodels.stats.contingency_tables.mcnemar(exact=True)`.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // Σ_{i ≤ k} C(n, i) / 2ⁿ, summed in log space (n can be in the thousands).
    let ln_n_factorial = ln_gamma(n as f64 + 1.0);
    let terms: Vec<f64> = (0..=k)
        .map(|i| ln_n_factorial - ln_gamma(i as f64 + 1.0) - ln_gamma((n - i) as f64 + 1.0) - n as f64 * 2f64.ln())
        .collect();
    (2.0 * log_sum_exp(&terms).exp()).min(1.0)
}

fn log_sum_exp(terms: &[f64]) -> f64 {
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
}

/// Mean, standard deviation and a t interval of paired differences.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairedDifference {
    pub n: u64,
    pub mean: f64,
    /// Sample standard deviation (n − 1).
    pub sd: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Two-sided p of the paired t test (mean 0).
    pub t_p: f64,
}

impl PairedDifference {
    /// From running sums: `n`, `Σd`, `Σd²`. Needs `n ≥ 2`.
    pub fn from_sums(n: u64, sum: f64, sum_squares: f64, confidence: f64) -> Option<Self> {
        if n < 2 {
            return None;
        }
        let count = n as f64;
        let mean = sum / count;
        let variance = ((sum_squares - sum * mean) / (count - 1.0)).max(0.0);
        let sd = variance.sqrt();
        let se = sd / count.sqrt();
        let df = count - 1.0;
        let half = t_quantile(0.5 + confidence / 2.0, df) * se;
        let t_p = if se > 0.0 {
            t_two_sided_p(mean / se, df)
        } else if mean == 0.0 {
            1.0
        } else {
            0.0
        };
        Some(Self { n, mean, sd, ci_low: mean - half, ci_high: mean + half, t_p })
    }

    pub fn of(d: &[f64], confidence: f64) -> Option<Self> {
        // Two passes around the mean: sums of squares of large values lose digits otherwise.
        let n = d.len() as f64;
        let mean = d.iter().sum::<f64>() / n;
        let centred: f64 = d.iter().map(|x| (x - mean) * (x - mean)).sum();
        Self::from_sums(d.len() as u64, mean * n, centred + mean * mean * n, confidence)
    }
}

/// Wilcoxon signed-rank test, two-sided, normal approximation with the tie correction, zeros
/// dropped: `scipy.stats.wilcoxon(d, zero_method="wilcox", correction=False, method="approx")`.
/// Returns `(z, p)`; `None` with no non-zero difference.
pub fn wilcoxon(d: &[f64]) -> Option<(f64, f64)> {
    let mut nonzero: Vec<f64> = d.iter().copied().filter(|x| *x != 0.0).collect();
    if nonzero.is_empty() {
        return None;
    }
    nonzero.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
    let n = nonzero.len();
    // Average ranks over ties of |d|, and the tie correction Σ(t³ − t).
    let (mut r_plus, mut r_minus, mut ties) = (0.0, 0.0, 0.0);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && nonzero[j + 1].abs() == nonzero[i].abs() {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for x in &nonzero[i..=j] {
            if *x > 0.0 {
                r_plus += rank;
            } else {
                r_minus += rank;
            }
        }
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        i = j + 1;
    }
    let count = n as f64;
    let mean = count * (count + 1.0) / 4.0;
    let variance = (count * (count + 1.0) * (2.0 * count + 1.0) - ties / 2.0) / 24.0;
    let statistic = f64::min(r_plus, r_minus);
    let z = if variance > 0.0 { (statistic - mean) / variance.sqrt() } else { 0.0 };
    // Signed like the effect: positive when the positive differences dominate.
    let signed = if r_plus >= r_minus { -z } else { z };
    Some((signed, (2.0 * normal_cdf(-z.abs())).min(1.0)))
}

/// Pearson's correlation; `None` when either side is constant.
pub fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len().min(b.len()) as f64;
    if n < 2.0 {
        return None;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    (saa > 0.0 && sbb > 0.0).then(|| sab / (saa * sbb).sqrt())
}

/// The two-sample Kolmogorov–Smirnov statistic: the largest gap between the empirical CDFs.
pub fn ks_statistic(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (mut i, mut j, mut gap) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        gap = gap.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    Some(gap)
}

/// Jensen–Shannon divergence in bits between two count vectors (normalised here): 0 for the same
/// distribution, 1 for disjoint ones.
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> Option<f64> {
    let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    if sp <= 0.0 || sq <= 0.0 || p.len() != q.len() {
        return None;
    }
    let kl = |x: f64, m: f64| if x > 0.0 { x * (x / m).log2() } else { 0.0 };
    let mut js = 0.0;
    for (a, b) in p.iter().zip(q) {
        let (a, b) = (a / sp, b / sq);
        let m = (a + b) / 2.0;
        js += 0.5 * kl(a, m) + 0.5 * kl(b, m);
    }
    Some(js.max(0.0))
}

/// Labelled pairs McNemar's test needs to detect the observed difference with `power` at `alpha`
/// (Connor 1987): `psi` is the share of discordant pairs, `delta` the difference in accuracy.
pub fn mcnemar_sample_size(psi: f64, delta: f64, alpha: f64, power: f64) -> Option<f64> {
    if delta == 0.0 || psi <= 0.0 || psi < delta * delta {
        return None;
    }
    let (za, zb) = (normal_quantile(1.0 - alpha / 2.0), normal_quantile(power));
    let root = za * psi.sqrt() + zb * (psi - delta * delta).sqrt();
    Some((root / delta).powi(2))
}

/// Pairs a two-sided paired test needs to detect a mean difference `mean` with standard deviation
/// `sd` with `power` at `alpha` (normal approximation).
pub fn paired_sample_size(mean: f64, sd: f64, alpha: f64, power: f64) -> Option<f64> {
    if mean == 0.0 || sd <= 0.0 {
        return None;
    }
    let (za, zb) = (normal_quantile(1.0 - alpha / 2.0), normal_quantile(power));
    Some(((za + zb) * sd / mean).powi(2))
}

/// Mixture sequential probability ratio tests: likelihood ratios that are martingales under the
/// null, so by Ville's inequality `P(ever Λ ≥ 1/α) ≤ α` however often they are looked at.
pub mod sequential {
    use statrs::function::beta::ln_beta;

    /// `ln Λ` for "the challenger wins a discordant pair with probability ½" after `wins` and
    /// `losses`, mixing the alternative over a uniform prior: `Λ = B(wins + 1, losses + 1) · 2ⁿ`.
    pub fn ln_bernoulli_mixture(wins: u64, losses: u64) -> f64 {
        let n = (wins + losses) as f64;
        ln_beta(wins as f64 + 1.0, losses as f64 + 1.0) + n * std::f64::consts::LN_2
    }

    /// `ln Λ` for "the paired differences have mean 0", normal mixture with prior variance `tau2`
    /// over the mean (Robbins; Johari et al. 2017), with the observed variance plugged in.
    pub fn ln_normal_mixture(n: u64, mean: f64, variance: f64, tau2: f64) -> f64 {
        if n == 0 || variance <= 0.0 {
            return 0.0;
        }
        let n = n as f64;
        let scale = variance + n * tau2;
        0.5 * (variance / scale).ln() + n * n * tau2 * mean * mean / (2.0 * variance * scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stats/reference.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn floats(v: &serde_json::Value) -> Vec<f64> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    }

    #[track_caller]
    fn close(actual: f64, expected: f64, tolerance: f64) {
        let error = (actual - expected).abs() / expected.abs().max(1.0);
        assert!(error <= tolerance, "{actual} vs reference {expected} (relative error {error:e})");
    }

    #[test]
    fn mcnemar_matches_statsmodels() {
        for case in reference()["mcnemar"].as_array().unwrap() {
            let (b, c) = (case["b"].as_u64().unwrap(), case["c"].as_u64().unwrap());
            close(mcnemar_exact(b, c), case["p"].as_f64().unwrap(), 1e-9);
        }
    }

    #[test]
    fn paired_interval_and_wilcoxon_match_scipy() {
        for case in reference()["paired"].as_array().unwrap() {
            let d = floats(&case["d"]);
            let paired = PairedDifference::of(&d, 0.95).unwrap();
            close(paired.mean, case["mean"].as_f64().unwrap(), 1e-12);
            close(paired.ci_low, case["ci_low"].as_f64().unwrap(), 1e-9);
            close(paired.ci_high, case["ci_high"].as_f64().unwrap(), 1e-9);
            close(paired.t_p, case["t_p"].as_f64().unwrap(), 1e-9);
            let (z, p) = wilcoxon(&d).unwrap();
            close(p, case["wilcoxon_p"].as_f64().unwrap(), 1e-9);
            // SciPy's z is always ≤ 0 (from the smaller rank sum); ours carries the effect's sign.
            close(z.abs(), case["wilcoxon_z"].as_f64().unwrap().abs(), 1e-9);
        }
    }

    #[test]
    fn quantiles_match_scipy() {
        let reference = reference();
        for case in reference["quantiles"]["normal"].as_array().unwrap() {
            close(normal_quantile(case["p"].as_f64().unwrap()), case["x"].as_f64().unwrap(), 1e-12);
        }
        for case in reference["quantiles"]["t"].as_array().unwrap() {
            let x = t_quantile(case["p"].as_f64().unwrap(), case["df"].as_f64().unwrap());
            close(x, case["x"].as_f64().unwrap(), 1e-10);
        }
    }

    #[test]
    fn agreement_and_divergence_match_scipy() {
        let reference = reference();
        let pair = &reference["regression_pair"];
        let (a, b) = (floats(&pair["a"]), floats(&pair["b"]));
        close(pearson(&a, &b).unwrap(), pair["pearson_r"].as_f64().unwrap(), 1e-12);
        close(ks_statistic(&a, &b).unwrap(), pair["ks"].as_f64().unwrap(), 1e-12);
        let shares = &reference["class_shares"];
        let js = jensen_shannon(&floats(&shares["p"]), &floats(&shares["q"])).unwrap();
        close(js, shares["js"].as_f64().unwrap(), 1e-12);
        assert_eq!(jensen_shannon(&[1.0, 3.0], &[2.0, 6.0]), Some(0.0));
    }

    #[test]
    fn a_mixture_ratio_grows_only_with_evidence() {
        use sequential::*;
        // Balanced wins and losses are evidence for the null: Λ < 1.
        assert!(ln_bernoulli_mixture(50, 50) < 0.0);
        assert!(ln_bernoulli_mixture(80, 20) > (1.0f64 / 0.05).ln());
        assert!(ln_bernoulli_mixture(0, 0).abs() < 1e-12);
        assert!(ln_normal_mixture(100, 0.0, 1.0, 0.01) < 0.0);
        assert!(ln_normal_mixture(400, 0.3, 1.0, 0.01) > (1.0f64 / 0.05).ln());
    }

    #[test]
    fn sample_sizes_shrink_as_the_effect_grows() {
        let small = mcnemar_sample_size(0.1, 0.02, 0.05, 0.8).unwrap();
        let large = mcnemar_sample_size(0.1, 0.05, 0.05, 0.8).unwrap();
        assert!(small > large && large > 10.0, "{small} {large}");
        // (1.96 + 0.8416)² · 4 = 31.4: the textbook figure for an effect of half a standard deviation.
        close(paired_sample_size(0.5, 1.0, 0.05, 0.8).unwrap(), 31.396, 1e-4);
        assert_eq!(mcnemar_sample_size(0.1, 0.0, 0.05, 0.8), None);
    }
}
