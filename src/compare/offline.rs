//! The comparison from outcome-log files alone: `gauntlet report --log 'outcomes/*.jsonl'`.
//!
//! Reads outcome records and feedback lines in file order (file names sort by time), joins labels
//! to records by model and request id as the live join does (the first label of a request stands;
//! a label read before its record waits for it), and feeds the same `Comparison` the gateway keeps
//! live.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use super::{CompareSettings, Comparison, ModelOutcome, Observation, Truth, predictions};
use crate::outcomes::{Role, Status};
use crate::repository::{Task, VersionId};

/// One line of the log: an outcome record or a feedback record (fields no reader needs are
/// skipped). Drift's offline reader (`drift::offline`) reads the same lines.
#[derive(Deserialize)]
pub(crate) struct Line {
    #[serde(default)]
    pub kind: Option<String>,
    pub request_id: String,
    pub model: String,
    #[serde(default)]
    pub task: Option<Task>,
    /// Kept unparsed: only drift reads the inputs.
    #[serde(default)]
    pub inputs: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    pub results: Vec<LineResult>,
    #[serde(default)]
    pub truth: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub(crate) struct LineResult {
    pub version: VersionId,
    pub role: Role,
    pub status: Status,
    #[serde(default)]
    pub latency_ms: Option<f64>,
    #[serde(default)]
    pub outputs: Option<HashMap<String, serde_json::Value>>,
}

/// What reading the files found besides the comparisons.
#[derive(Debug, Default)]
pub struct ReadSummary {
    pub files: usize,
    pub records: u64,
    pub feedback: u64,
    /// Lines that are not records of either kind (a torn last line, another program's output).
    pub unreadable_lines: u64,
    /// Labels whose record is not in the files.
    pub unmatched_feedback: u64,
    pub duplicate_feedback: u64,
}

/// Expands shell-style patterns (`outcomes/*.jsonl`) and plain paths into files, in name order.
pub fn expand(patterns: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for pattern in patterns {
        let matched: Vec<PathBuf> = glob::glob(pattern)
            .with_context(|| format!("invalid pattern '{pattern}'"))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        anyhow::ensure!(!matched.is_empty(), "no file matches '{pattern}'");
        files.extend(matched);
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Every model's comparison over these files.
pub fn read(
    files: &[PathBuf],
    settings: CompareSettings,
) -> anyhow::Result<(BTreeMap<String, Comparison>, ReadSummary)> {
    let mut summary = ReadSummary { files: files.len(), ..ReadSummary::default() };
    let mut comparisons: BTreeMap<String, Comparison> = BTreeMap::new();
    let mut observations: HashMap<(String, String), Observation> = HashMap::new();
    // As the live join does it, in the order the lines were written: a label joins its record when
    // both are there, and one read before its record waits for it. The statistics' sums then add up
    // in the live order too, so both sides give the very same figures.
    let mut held: HashMap<(String, String), serde_json::Value> = HashMap::new();
    let mut labelled = std::collections::HashSet::new();
    for file in files {
        read_file(file, &mut |line: Option<Line>| {
            let Some(line) = line else {
                summary.unreadable_lines += 1;
                return;
            };
            let key = (line.model, line.request_id);
            if line.kind.as_deref() == Some("feedback") {
                let Some(truth) = line.truth else { return };
                summary.feedback += 1;
                if !labelled.insert(key.clone()) {
                    summary.duplicate_feedback += 1;
                } else if let (Some(comparison), Some(observation)) =
                    (comparisons.get_mut(&key.0), observations.get(&key))
                {
                    join(comparison, observation, &truth, &mut summary);
                } else {
                    held.insert(key, truth);
                }
                return;
            }
            let Some(task) = line.task else {
                summary.unreadable_lines += 1;
                return;
            };
            summary.records += 1;
            let observation = observation(&task, key.1.clone(), line.results);
            let comparison =
                comparisons.entry(key.0.clone()).or_insert_with(|| Comparison::new(key.0.clone(), task, settings));
            comparison.add(&observation);
            if let Some(truth) = held.remove(&key) {
                join(comparison, &observation, &truth, &mut summary);
            }
            observations.insert(key, observation);
        })?;
    }
    summary.unmatched_feedback = held.len() as u64;
    Ok((comparisons, summary))
}

fn join(comparison: &mut Comparison, observation: &Observation, truth: &serde_json::Value, summary: &mut ReadSummary) {
    match Truth::parse(truth, comparison.task()) {
        Ok(truth) => comparison.add_truth(observation, &truth),
        Err(_) => summary.unreadable_lines += 1,
    }
}

/// Calls `each` per non-empty line: the parsed line, or `None` when it is not one of ours.
pub(crate) fn read_file(path: &Path, each: &mut dyn FnMut(Option<Line>)) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        each(serde_json::from_str::<Line>(&line).ok());
    }
    Ok(())
}

fn observation(task: &Task, request_id: String, results: Vec<LineResult>) -> Observation {
    let results = results
        .into_iter()
        .map(|r| {
            let outputs = r.outputs.unwrap_or_default();
            let predictions = if r.status == Status::Ok {
                predictions(task, |name| outputs.get(name).map(flatten)).unwrap_or_default()
            } else {
                vec![]
            };
            ModelOutcome { version: r.version, role: r.role, status: r.status, latency_ms: r.latency_ms, predictions }
        })
        .collect();
    Observation { request_id, results }
}

/// Nested arrays of numbers (or booleans), row-major, as one flat list.
fn flatten(value: &serde_json::Value) -> Vec<f64> {
    fn walk(value: &serde_json::Value, out: &mut Vec<f64>) {
        match value {
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            serde_json::Value::Bool(b) => out.push(f64::from(u8::from(*b))),
            other => out.extend(other.as_f64()),
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out);
    out
}
