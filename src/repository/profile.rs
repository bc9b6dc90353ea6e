//! The reference a version's live traffic is compared with: the training data's distribution of
//! every input feature and of the model's predictions on it, written by `models/train.py` into the
//! manifest's `profile`.

use serde::{Deserialize, Serialize};

use crate::model::TensorSpec;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Training rows the profile was computed from.
    pub rows: u64,
    pub features: Vec<Series>,
    pub predictions: Vec<Series>,
}

/// One feature or prediction: where its values are in the tensors, and their training distribution.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Series {
    pub name: String,
    /// The input (features) or output (predictions) tensor holding it.
    pub tensor: String,
    /// Its column in a rows × columns tensor; unset for a one-value-per-row tensor.
    #[serde(default)]
    pub column: Option<usize>,
    #[serde(flatten)]
    pub distribution: Distribution,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Distribution {
    /// Bin `i` holds the values with exactly `i` edges at or below them; `shares` has one entry per
    /// bin. `quantiles` (ascending, first the minimum, last the maximum) define the reference CDF.
    Numeric { edges: Vec<f64>, shares: Vec<f64>, quantiles: Vec<f64> },
    /// One bin per value, and one more for any value not listed (its training share is 0).
    Categorical { values: Vec<f64>, shares: Vec<f64> },
}

// === impl Profile ===

impl Profile {
    /// Every series, features first: the order values are kept in for a row.
    pub fn series(&self) -> impl Iterator<Item = (&Series, SeriesKind)> {
        let features = self.features.iter().map(|s| (s, SeriesKind::Feature));
        features.chain(self.predictions.iter().map(|s| (s, SeriesKind::Prediction)))
    }

    pub fn len(&self) -> usize {
        self.features.len() + self.predictions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses a profile that names tensors or columns the signature lacks, or whose bins do not add up.
    pub fn check(&self, inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Result<(), String> {
        let sides = [(&self.features, inputs, "input"), (&self.predictions, outputs, "output")];
        for (series, specs, side) in sides {
            for s in series {
                let spec = specs
                    .iter()
                    .find(|spec| spec.name == s.tensor)
                    .ok_or_else(|| format!("series '{}' reads {side} '{}', which the model lacks", s.name, s.tensor))?;
                let width = spec.shape.get(1).copied();
                match (s.column, width) {
                    (Some(c), Some(w)) if w >= 0 && c as i64 >= w => {
                        return Err(format!("series '{}' reads column {c} of '{}', which has {w}", s.name, s.tensor));
                    }
                    (Some(_), None) => {
                        return Err(format!(
                            "series '{}' names a column of the one-dimensional '{}'",
                            s.name, s.tensor
                        ));
                    }
                    _ => {}
                }
                s.distribution.check().map_err(|e| format!("series '{}': {e}", s.name))?;
            }
        }
        Ok(())
    }
}

/// Whether a series is an input feature or a prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SeriesKind {
    Feature,
    Prediction,
}

// === impl Distribution ===

impl Distribution {
    /// Bins, counting a categorical series' bin for unlisted values.
    pub fn bins(&self) -> usize {
        match self {
            Self::Numeric { edges, .. } => edges.len() + 1,
            Self::Categorical { values, .. } => values.len() + 1,
        }
    }

    /// The bin a value falls in.
    pub fn bin(&self, value: f64) -> usize {
        match self {
            Self::Numeric { edges, .. } => edges.partition_point(|edge| *edge <= value),
            Self::Categorical { values, .. } => values.iter().position(|v| *v == value).unwrap_or(values.len()),
        }
    }

    /// The training share of bin `i`.
    pub fn expected(&self, i: usize) -> f64 {
        match self {
            Self::Numeric { shares, .. } | Self::Categorical { shares, .. } => shares.get(i).copied().unwrap_or(0.0),
        }
    }

    /// The reference CDF; `None` for a categorical series (no order, so no KS statistic).
    pub fn quantiles(&self) -> Option<&[f64]> {
        match self {
            Self::Numeric { quantiles, .. } => Some(quantiles),
            Self::Categorical { .. } => None,
        }
    }

    fn check(&self) -> Result<(), String> {
        let (shares, bins) = match self {
            Self::Numeric { edges, shares, quantiles } => {
                if edges.windows(2).any(|w| w[0] >= w[1]) || edges.iter().any(|e| !e.is_finite()) {
                    return Err("edges must be finite and strictly ascending".into());
                }
                if quantiles.len() < 2 || quantiles.windows(2).any(|w| w[0] > w[1]) {
                    return Err("quantiles must be at least two, ascending".into());
                }
                (shares, edges.len() + 1)
            }
            Self::Categorical { values, shares } => (shares, values.len()),
        };
        if shares.len() != bins {
            return Err(format!("{} shares for {bins} bins", shares.len()));
        }
        // Windows keep each value's bin as a u16, u16::MAX marking a missing value.
        if bins >= usize::from(u16::MAX) {
            return Err(format!("{bins} bins: at most {} are supported", u16::MAX - 1));
        }
        let total: f64 = shares.iter().sum();
        if shares.iter().any(|s| !(0.0..=1.0).contains(s)) || (total - 1.0).abs() > 1e-6 {
            return Err(format!("shares must be in [0, 1] and add up to 1 (they add up to {total})"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric() -> Distribution {
        Distribution::Numeric { edges: vec![1.0, 2.0], shares: vec![0.25, 0.5, 0.25], quantiles: vec![0.0, 3.0] }
    }

    #[test]
    fn a_value_on_an_edge_falls_in_the_bin_above_it() {
        let d = numeric();
        assert_eq!([0.5, 1.0, 1.5, 2.0, 9.0].map(|x| d.bin(x)), [0, 1, 1, 2, 2]);
    }

    #[test]
    fn unlisted_categories_share_the_last_bin() {
        let d = Distribution::Categorical { values: vec![0.0, 1.0], shares: vec![0.4, 0.6] };
        assert_eq!([0.0, 1.0, 7.0].map(|x| d.bin(x)), [0, 1, 2]);
        assert_eq!((d.bins(), d.expected(2)), (3, 0.0));
    }

    #[test]
    fn profiles_that_do_not_add_up_are_refused() {
        let bad =
            Distribution::Numeric { edges: vec![2.0, 1.0], shares: vec![0.2, 0.3, 0.5], quantiles: vec![0.0, 1.0] };
        assert!(bad.check().unwrap_err().contains("ascending"));
        let bad = Distribution::Categorical { values: vec![0.0, 1.0], shares: vec![0.5, 0.6] };
        assert!(bad.check().unwrap_err().contains("add up"));
        assert!(numeric().check().is_ok());
    }
}
