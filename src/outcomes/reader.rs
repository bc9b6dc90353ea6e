//! Reading the outcome log back: every line of the files, parsed as far as the offline comparison
//! and the offline drift need (`compare::offline`, `drift::offline`), in file order (file names sort
//! by time).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::registry::{Role, Status};
use crate::repository::{Task, VersionId};

/// One line of the log: an outcome record or a feedback record (fields no reader needs are skipped).
#[derive(Deserialize)]
pub struct Line {
    #[serde(default)]
    pub kind: Option<String>,
    pub request_id: String,
    /// RFC 3339, as the line was written.
    #[serde(default)]
    pub timestamp: Option<String>,
    pub model: String,
    #[serde(default)]
    pub task: Option<Task>,
    /// Kept unparsed: only drift reads the inputs.
    #[serde(default)]
    pub inputs: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    pub slice: Option<String>,
    #[serde(default)]
    pub results: Vec<LineResult>,
    #[serde(default)]
    pub truth: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub struct LineResult {
    pub version: VersionId,
    pub role: Role,
    pub status: Status,
    #[serde(default)]
    pub latency_ms: Option<f64>,
    #[serde(default)]
    pub outputs: Option<HashMap<String, serde_json::Value>>,
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

/// Calls `each` per non-empty line of every file, in order: the parsed line, or `None` when it is
/// not one of ours (a torn last line, another program's output).
pub fn each_line(files: &[PathBuf], each: &mut dyn FnMut(Option<Line>)) -> anyhow::Result<()> {
    files.iter().try_for_each(|file| read_file(file, each))
}

fn read_file(path: &Path, each: &mut dyn FnMut(Option<Line>)) -> anyhow::Result<()> {
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
