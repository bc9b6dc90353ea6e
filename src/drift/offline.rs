//! Drift from outcome-log files: `gauntlet report --log 'outcomes/*.jsonl' --drift`.
//!
//! The logged inputs (`log_inputs = "full"`) and champion outputs of every record, against the
//! profile of the champion version that answered, read from the model repository: one report per
//! model and champion version, over one window holding the last `MAX_ROWS` logged rows. The same
//! `Watch` the live monitor keeps computes it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::Deserialize;

use super::report::DriftReport;
use super::window::Watch;
use super::{DriftSettings, Thresholds};
use crate::model::{Tensor, TensorSpec};
use crate::outcomes::{Role, Status};
use crate::repository::{Repository, VersionId};

/// Rows kept per (model, version): the window is the last this many.
pub const MAX_ROWS: usize = 1_000_000;

#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    kind: Option<String>,
    model: String,
    #[serde(default)]
    inputs: Option<HashMap<String, serde_json::Value>>,
    #[serde(default)]
    results: Vec<LineResult>,
}

#[derive(Deserialize)]
struct LineResult {
    version: VersionId,
    role: Role,
    status: Status,
    #[serde(default)]
    outputs: Option<HashMap<String, serde_json::Value>>,
}

/// What reading the files found besides the reports.
#[derive(Debug, Default)]
pub struct DriftReadSummary {
    pub records: u64,
    /// Records logged without their inputs (`log_inputs` none or hash), or without a champion result.
    pub without_inputs: u64,
    /// Records whose champion version the repository lacks (or whose tensors do not fit it).
    pub unusable: u64,
    pub unreadable_lines: u64,
}

/// Each model's drift (per champion version) over these files, `thresholds` and `min_rows` as given.
pub fn read(
    files: &[PathBuf],
    repository: &Repository,
    thresholds: Thresholds,
    min_rows: usize,
) -> anyhow::Result<(Vec<DriftReport>, DriftReadSummary)> {
    let settings = DriftSettings {
        window_rows: MAX_ROWS,
        max_window_rows: MAX_ROWS,
        window_s: u64::MAX,
        min_rows,
        thresholds,
        ..Default::default()
    };
    // `None` for a version the repository lacks.
    let mut watches: BTreeMap<(String, VersionId), Option<Logged>> = BTreeMap::new();
    let mut summary = DriftReadSummary::default();
    let now = Instant::now();
    for path in files {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        for line in BufReader::new(file).lines() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            let Ok(line) = serde_json::from_str::<Line>(&line) else {
                summary.unreadable_lines += 1;
                continue;
            };
            if line.kind.as_deref().is_some_and(|k| k != "outcome") {
                continue;
            }
            summary.records += 1;
            let champion = line.results.iter().find(|r| r.role == Role::Champion && r.status == Status::Ok);
            let (Some(inputs), Some(champion)) = (&line.inputs, champion) else {
                summary.without_inputs += 1;
                continue;
            };
            let Some(outputs) = &champion.outputs else {
                summary.without_inputs += 1;
                continue;
            };
            let entry = watches.entry((line.model.clone(), champion.version.clone())).or_insert_with(|| {
                let manifest = repository.version(&line.model, &champion.version).ok()?.manifest;
                let watch = Watch::new(&manifest, thresholds, false);
                Some(Logged { watch, inputs: manifest.inputs, outputs: manifest.outputs })
            });
            let Some(logged) = entry else {
                summary.unusable += 1;
                continue;
            };
            match (tensors(inputs, &logged.inputs), tensors(outputs, &logged.outputs)) {
                (Some(inputs), Some(outputs)) => logged.watch.add_rows(now, &inputs, &outputs, &settings),
                _ => summary.unusable += 1,
            }
        }
    }
    let reports = watches
        .into_values()
        .flatten()
        .map(|mut logged| {
            let (mut report, _) = logged.watch.evaluate(now, &settings);
            // Without real times the time window would repeat the count window.
            report.windows.retain(|w| w.window == "rows");
            for w in &mut report.windows {
                w.limit = format!("logged rows (the last {MAX_ROWS} at most)");
            }
            report.concept.clear();
            report
        })
        .collect();
    Ok((reports, summary))
}

/// One champion version's watch over the files, and its signature to read the logged tensors by.
struct Logged {
    watch: Watch,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

/// The logged tensors in signature order; `None` if one is missing or does not parse.
fn tensors(logged: &HashMap<String, serde_json::Value>, specs: &[TensorSpec]) -> Option<Vec<Tensor>> {
    specs.iter().map(|spec| Tensor::from_nested_json(logged.get(&spec.name)?, spec.datatype).ok()).collect()
}
