//! The comparison from outcome-log lines alone: `gauntlet report --log 'outcomes/*.jsonl'`.
//!
//! Fed the log's lines in file order (`outcomes::reader` reads them), it joins labels to records by
//! model and request id as the live join does (the first label of a request stands; a label read
//! before its record waits for it), and feeds the same `Comparison` the gateway keeps live. Pure:
//! no file is opened here.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{CompareSettings, Comparison, ModelOutcome, Observation, Truth, predictions};
use crate::outcomes::reader::{Line, LineResult};
use crate::registry::{Role, Status};
use crate::repository::Task;

/// What reading the files found besides the comparisons.
#[derive(Debug, Default, Deserialize, Serialize)]
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

/// The join of logged labels with logged records, line by line, into each model's comparison.
///
/// Its whole state serializes (`checkpoint`, `resume`): the cluster's analyst writes it with its
/// read position, and a successor goes on from there as if it had read every line itself.
#[derive(Deserialize, Serialize)]
pub struct OfflineComparison {
    settings: CompareSettings,
    summary: ReadSummary,
    comparisons: BTreeMap<String, Comparison>,
    #[serde(with = "pairs")]
    observations: HashMap<(String, String), Observation>,
    // As the live join does it, in the order the lines were written: a label joins its record when
    // both are there, and one read before its record waits for it. The statistics' sums then add up
    // in the live order too, so both sides give the very same figures.
    #[serde(with = "pairs")]
    held: HashMap<(String, String), serde_json::Value>,
    /// Exactly the keys of `bound.labelled` (a checkpoint writes them once, there).
    #[serde(skip)]
    labelled: HashSet<(String, String)>,
    /// With a capacity (a long-running reader: the cluster's analyst), the keys of each of the
    /// three in the order they came, oldest first, so the oldest go beyond it, as the live join's
    /// bounded index does; without, a report over files keeps everything it read.
    bound: Option<Bound>,
    /// Per model, the version to read as the champion of every record that holds it (a replayed
    /// policy's promotion: `set_champion`); the others are read as challengers.
    champions: HashMap<String, crate::repository::VersionId>,
}

/// Maps written as a list of (key, value) pairs: the keys are tuples, which not every format takes
/// as map keys.
mod pairs {
    use std::collections::HashMap;
    use std::hash::Hash;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &HashMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<HashMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Eq + Hash,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?.into_iter().collect())
    }
}

/// The version of the checkpoint format `OfflineComparison::checkpoint` writes. A reader refuses
/// another with `CheckpointError::Format`, naming both, rather than guess at it.
pub const CHECKPOINT_FORMAT: i32 = 1;

/// A checkpoint that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint format {found} is not the format {known} this binary reads")]
    Format { found: i32, known: i32 },
    #[error("checkpoint does not decode: {0}")]
    Decode(String),
    #[error("checkpoint does not encode: {0}")]
    Encode(String),
}

#[derive(Deserialize, Serialize)]
struct Bound {
    capacity: usize,
    observations: VecDeque<(String, String)>,
    held: VecDeque<(String, String)>,
    labelled: VecDeque<(String, String)>,
}

/// Keeps `map`'s keys to `capacity`, dropping the oldest `order` names (those still there).
fn trim<K: std::hash::Hash + Eq, M>(order: &mut VecDeque<K>, capacity: usize, mut remove: M)
where
    M: FnMut(&K),
{
    while order.len() > capacity {
        if let Some(key) = order.pop_front() {
            remove(&key);
        }
    }
}

impl OfflineComparison {
    pub fn new(settings: CompareSettings) -> Self {
        Self {
            settings,
            summary: ReadSummary::default(),
            comparisons: BTreeMap::new(),
            observations: HashMap::new(),
            held: HashMap::new(),
            labelled: HashSet::new(),
            bound: None,
            champions: HashMap::new(),
        }
    }

    /// From now on, reads `version` as `model`'s champion in every record that holds it: what the
    /// deployment would have been had a replayed decision been applied.
    pub fn set_champion(&mut self, model: &str, version: crate::repository::VersionId) {
        self.champions.insert(model.to_owned(), version);
    }

    /// As `new`, keeping at most `capacity` records waiting for labels, labels waiting for
    /// records, and labelled request ids (for duplicates), oldest dropped first.
    pub fn bounded(settings: CompareSettings, capacity: usize) -> Self {
        let bound = Bound {
            capacity: capacity.max(1),
            observations: VecDeque::new(),
            held: VecDeque::new(),
            labelled: VecDeque::new(),
        };
        Self { bound: Some(bound), ..Self::new(settings) }
    }

    /// Takes one line of the log; `None` for a line that is not one of ours. True when a label
    /// joined its record with it (the moment the live join tells its listeners).
    pub fn line(&mut self, line: Option<Line>) -> bool {
        let summary = &mut self.summary;
        let Some(line) = line else {
            summary.unreadable_lines += 1;
            return false;
        };
        let key = (line.model, line.request_id);
        if line.kind.as_deref() == Some("feedback") {
            let Some(truth) = line.truth else { return false };
            summary.feedback += 1;
            if !self.labelled.insert(key.clone()) {
                summary.duplicate_feedback += 1;
                return false;
            }
            if let Some(bound) = &mut self.bound {
                bound.labelled.push_back(key.clone());
                trim(&mut bound.labelled, bound.capacity, |k| {
                    self.labelled.remove(k);
                });
            }
            // A record that joined is needed no more (a second label is a duplicate, told by
            // `labelled`): it leaves the index, and the analyst's checkpoints stay small.
            if let Some(comparison) = self.comparisons.get_mut(&key.0)
                && let Some(observation) = self.observations.remove(&key)
            {
                return join(comparison, &observation, &truth, summary);
            } else {
                if let Some(bound) = &mut self.bound {
                    bound.held.push_back(key.clone());
                    trim(&mut bound.held, bound.capacity, |k| {
                        self.held.remove(k);
                    });
                }
                self.held.insert(key, truth);
            }
            return false;
        }
        let Some(task) = line.task else {
            summary.unreadable_lines += 1;
            return false;
        };
        summary.records += 1;
        let mut observation = observation(&task, key.1.clone(), line.slice, line.results);
        if let Some(champion) = self.champions.get(&key.0)
            && observation.results.iter().any(|r| r.version == *champion)
        {
            for result in &mut observation.results {
                result.role = if result.version == *champion { Role::Champion } else { Role::Challenger };
            }
        }
        let settings = self.settings;
        let comparison =
            self.comparisons.entry(key.0.clone()).or_insert_with(|| Comparison::new(key.0.clone(), task, settings));
        comparison.add(&observation);
        let joined = match self.held.remove(&key) {
            Some(truth) => join(comparison, &observation, &truth, summary),
            None => false,
        };
        if let Some(bound) = &mut self.bound {
            bound.observations.push_back(key.clone());
            trim(&mut bound.observations, bound.capacity, |k| {
                self.observations.remove(k);
            });
        }
        if !joined {
            self.observations.insert(key, observation);
        }
        joined
    }

    /// The models with a comparison so far.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.comparisons.keys().map(String::as_str)
    }

    /// Model `name`'s comparison so far.
    pub fn comparison(&self, name: &str) -> Option<&Comparison> {
        self.comparisons.get(name)
    }

    /// Lines taken so far (records, labels and unreadable lines).
    pub fn rows(&self) -> u64 {
        self.summary.records + self.summary.feedback + self.summary.unreadable_lines
    }

    /// Keeps at most `capacity` of each bounded structure from now on (a bounded comparison only).
    pub fn bound_to(&mut self, capacity: usize) {
        if let Some(bound) = &mut self.bound {
            bound.capacity = capacity.max(1);
        }
    }

    /// The whole state as bytes (CBOR: self-describing, so a field added later reads as its
    /// default from an older checkpoint), in `CHECKPOINT_FORMAT`.
    pub fn checkpoint(&self) -> Result<Vec<u8>, CheckpointError> {
        let mut bytes = Vec::new();
        self.checkpoint_into(&mut bytes)?;
        Ok(bytes)
    }

    /// As `checkpoint`, into `bytes` (emptied first): a buffer kept from one checkpoint to the next
    /// is not grown and zeroed again each time (measured: a quarter of the analyst's time while it
    /// reads a backlog, checkpointing every 50,000 rows).
    pub fn checkpoint_into(&self, bytes: &mut Vec<u8>) -> Result<(), CheckpointError> {
        if self.bound.is_none() {
            return Err(CheckpointError::Encode("only a bounded comparison is checkpointed".into()));
        }
        bytes.clear();
        ciborium::into_writer(self, bytes).map_err(|e| CheckpointError::Encode(e.to_string()))
    }

    /// A comparison that goes on from `checkpoint` (written in `format`), judging with `settings`
    /// (the configuration's now, whatever they were when it was written).
    pub fn resume(format: i32, checkpoint: &[u8], settings: CompareSettings) -> Result<Self, CheckpointError> {
        if format != CHECKPOINT_FORMAT {
            return Err(CheckpointError::Format { found: format, known: CHECKPOINT_FORMAT });
        }
        let mut offline: Self =
            ciborium::from_reader(checkpoint).map_err(|e| CheckpointError::Decode(e.to_string()))?;
        offline.settings = settings;
        offline.labelled = offline.bound.iter().flat_map(|b| b.labelled.iter().cloned()).collect();
        for comparison in offline.comparisons.values_mut() {
            comparison.set_settings(settings);
        }
        Ok(offline)
    }

    /// Every model's comparison, and what the lines held besides (`files`: how many were read).
    pub fn finish(mut self, files: usize) -> (BTreeMap<String, Comparison>, ReadSummary) {
        self.summary.files = files;
        self.summary.unmatched_feedback = self.held.len() as u64;
        (self.comparisons, self.summary)
    }
}

fn join(
    comparison: &mut Comparison,
    observation: &Observation,
    truth: &serde_json::Value,
    summary: &mut ReadSummary,
) -> bool {
    match Truth::parse(truth, comparison.task()) {
        Ok(truth) => {
            comparison.add_truth(observation, &truth);
            true
        }
        Err(_) => {
            summary.unreadable_lines += 1;
            false
        }
    }
}

/// A logged record's model and observation, as the live join had it; `None` for a line that is not
/// a record.
pub fn observation_of(line: Line) -> Option<(String, Observation)> {
    let task = line.task?;
    Some((line.model, observation(&task, line.request_id, line.slice, line.results)))
}

fn observation(task: &Task, request_id: String, slice: Option<String>, results: Vec<LineResult>) -> Observation {
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
    Observation { request_id, slice, results }
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
