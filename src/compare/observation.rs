//! What the comparison is fed: each model's predictions for a request's rows (read from its
//! outputs with the task's names), the paired observation of a record, and ground truth.

use serde::{Deserialize, Serialize};

use crate::outcomes::OutcomeRecord;
use crate::registry::{Role, Status};
use crate::repository::{Task, VersionId};

/// What one model said about one row.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub enum Prediction {
    /// A class, and the probability of each of the task's classes (in its order) when the model gives them.
    Class {
        label: i64,
        probabilities: Option<Vec<f64>>,
    },
    Value(f64),
}

/// One row's predictions, read from a model's outputs with the task's output names. `output`
/// gives an output's values flattened in row-major order. `None` when an output is missing or
/// the row counts disagree.
pub fn predictions(task: &Task, output: impl Fn(&str) -> Option<Vec<f64>>) -> Option<Vec<Prediction>> {
    match task {
        Task::Classification { classes, label_output, probabilities_output, .. } => {
            let labels = output(label_output)?;
            let probabilities = probabilities_output
                .as_deref()
                .and_then(&output)
                .filter(|p| !classes.is_empty() && p.len() == labels.len() * classes.len());
            if let [label] = labels[..] {
                // One row (the usual request): its probabilities as read, not copied.
                return Some(vec![Prediction::Class { label: label as i64, probabilities }]);
            }
            Some(
                labels
                    .iter()
                    .enumerate()
                    .map(|(row, label)| Prediction::Class {
                        label: *label as i64,
                        probabilities: probabilities
                            .as_ref()
                            .map(|p| p[row * classes.len()..(row + 1) * classes.len()].to_vec()),
                    })
                    .collect(),
            )
        }
        Task::Regression { prediction_output } => {
            Some(output(prediction_output)?.into_iter().map(Prediction::Value).collect())
        }
    }
}

impl Observation {
    /// What the comparison needs of a paired record about to be written.
    pub fn of(record: &OutcomeRecord<'_>) -> Self {
        let results = record
            .results
            .iter()
            .map(|r| ModelOutcome {
                version: VersionId::new(r.version),
                role: r.role,
                status: r.status,
                latency_ms: r.latency_ms.map(|d| d.as_secs_f64() * 1e3),
                predictions: r
                    .outputs
                    .as_ref()
                    .and_then(|outputs| predictions(record.task, |name| outputs.values(name)))
                    .unwrap_or_default(),
            })
            .collect();
        Self { request_id: record.request_id.to_owned(), slice: record.slice.map(str::to_owned), results }
    }
}

/// One model's part of an observation.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ModelOutcome {
    pub version: VersionId,
    pub role: Role,
    pub status: Status,
    pub latency_ms: Option<f64>,
    /// One per row when `status` is ok.
    pub predictions: Vec<Prediction>,
}

/// One paired record, reduced to what the comparison needs.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Observation {
    pub request_id: String,
    /// The request's slice, when its model's records are sliced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<String>,
    pub results: Vec<ModelOutcome>,
}

/// Ground truth for a request: one value per row (a class label or a number).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Truth(pub Vec<f64>);

impl Truth {
    /// A number, or an array of numbers (one per row), checked against the task.
    pub fn parse(value: &serde_json::Value, task: &Task) -> Result<Self, String> {
        let values: Vec<f64> = match value {
            serde_json::Value::Array(items) => items.iter().map(|v| v.as_f64()).collect::<Option<_>>(),
            other => other.as_f64().map(|v| vec![v]),
        }
        .ok_or_else(|| format!("truth must be a number or an array of numbers, not {value}"))?;
        if values.is_empty() {
            return Err("truth is an empty array".into());
        }
        for v in &values {
            match task {
                Task::Classification { classes, .. } if v.fract() != 0.0 || !classes.contains(&(*v as i64)) => {
                    return Err(format!("truth {v} is not one of the model's classes {classes:?}"));
                }
                _ if !v.is_finite() => return Err(format!("truth {v} is not a finite number")),
                _ => {}
            }
        }
        Ok(Self(values))
    }
}
