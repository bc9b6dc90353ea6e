//! Drift from outcome-log files: `gauntlet report --log 'outcomes/*.jsonl' --drift`.
//!
//! The logged inputs (`log_inputs = "full"`) and champion outputs of every record, against the
//! profile of the champion version that answered, read from the model repository: one report per
//! model and champion version, over one window holding the last `MAX_ROWS` logged rows. The same
//! `Watch` the live monitor keeps computes it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use super::report::DriftReport;
use super::window::Watch;
use super::{DriftSettings, Thresholds};
use crate::model::{Tensor, TensorSpec};
use crate::outcomes::reader::{Line, each_line};
use crate::registry::{Role, Status};
use crate::repository::{Repository, VersionId};

/// Rows kept per (model, version): the window is the last this many.
pub const MAX_ROWS: usize = 1_000_000;

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
    let mut watches: BTreeMap<(String, VersionId), Option<Version>> = BTreeMap::new();
    let mut summary = DriftReadSummary::default();
    let now = Instant::now();
    each_line(files, &mut |line: Option<Line>| {
        let Some(line) = line else {
            summary.unreadable_lines += 1;
            return;
        };
        if line.kind.as_deref().is_some_and(|k| k != "outcome") {
            return;
        }
        summary.records += 1;
        let champion = line.results.iter().find(|r| r.role == Role::Champion && r.status == Status::Ok);
        let inputs = line.inputs.as_ref().and_then(|raw| serde_json::from_str::<Logged>(raw.get()).ok());
        let (Some(inputs), Some(champion)) = (inputs, champion) else {
            summary.without_inputs += 1;
            return;
        };
        let Some(outputs) = &champion.outputs else {
            summary.without_inputs += 1;
            return;
        };
        let entry = watches.entry((line.model.clone(), champion.version.clone())).or_insert_with(|| {
            let manifest = repository.version(&line.model, &champion.version).ok()?.manifest;
            let watch = Watch::new(&manifest, thresholds, false);
            Some(Version { watch, inputs: manifest.inputs, outputs: manifest.outputs })
        });
        let Some(version) = entry else {
            summary.unusable += 1;
            return;
        };
        match (tensors(&inputs, &version.inputs), tensors(outputs, &version.outputs)) {
            (Some(inputs), Some(outputs)) => version.watch.add_rows(now, &inputs, &outputs, &settings),
            _ => summary.unusable += 1,
        }
    })?;
    let reports = watches
        .into_values()
        .flatten()
        .map(|mut version| {
            let (mut report, _) = version.watch.evaluate(now, &settings);
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

/// Logged tensors by name, as nested arrays.
type Logged = HashMap<String, serde_json::Value>;

/// One champion version's watch over the files, and its signature to read the logged tensors by.
struct Version {
    watch: Watch,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

/// The logged tensors in signature order; `None` if one is missing or does not parse.
fn tensors(logged: &Logged, specs: &[TensorSpec]) -> Option<Vec<Tensor>> {
    specs.iter().map(|spec| Tensor::from_nested_json(logged.get(&spec.name)?, spec.datatype).ok()).collect()
}
