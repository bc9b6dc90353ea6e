//! Paired outcome records: for one sampled request, what every model of the deployment said.
//!
//! A record is one JSON line in an append-only log (`writer`), readable as it is by DuckDB
//! (`read_json_auto('outcomes/*.jsonl')`) and pandas (`read_json(lines=True)`).
//!
//! Invariants: every channel is bounded and what overflows is counted; nothing accepted is lost on a
//! graceful shutdown.

pub mod feedback;
mod writer;

use std::time::{Duration, SystemTime};

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::model::{Tensor, TensorData, TensorSpec};
use crate::repository::Task;

pub use self::writer::{OutcomeWriter, WriterSettings, repair_torn_lines};

/// What to keep of a request's inputs in its record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogInputs {
    /// Nothing.
    None,
    /// sha256 of the inputs' little-endian bytes: joins and duplicates without the data.
    Hash,
    /// The tensors themselves (nested by shape), so the log can be replayed.
    #[default]
    Full,
}

/// One sampled request and every model's result on it.
#[derive(Debug, Serialize)]
pub struct OutcomeRecord<'a> {
    /// Always "outcome": tells records from feedback lines in the same files.
    pub kind: &'static str,
    pub request_id: String,
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: SystemTime,
    pub model: String,
    /// The version whose answer the client got.
    pub answered_by: String,
    /// Which outputs hold the prediction (from the manifest): the offline report needs nothing else.
    pub task: &'a Task,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<NamedTensors<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs_sha256: Option<String>,
    pub results: Vec<ModelResult<'a>>,
}

/// A ground-truth label as it arrived, appended to the same log so an offline join sees it.
#[derive(Debug, Serialize)]
pub struct FeedbackRecord<'a> {
    /// Always "feedback".
    pub kind: &'static str,
    pub request_id: &'a str,
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: SystemTime,
    pub model: &'a str,
    pub truth: &'a serde_json::Value,
}

/// One model version's part of a record.
#[derive(Debug, Serialize)]
pub struct ModelResult<'a> {
    pub version: String,
    pub role: Role,
    pub sha256: String,
    pub status: Status,
    /// Time in the model alone; absent when it never ran (shed) or was abandoned (timeout).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "milliseconds")]
    pub latency_ms: Option<Duration>,
    /// Requests scored together in one run (shadow batching); the latency is the batch's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<NamedTensors<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Champion,
    Challenger,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Self::Champion => "champion",
            Self::Challenger => "challenger",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// The model returned an error.
    Error,
    /// The model panicked.
    Panic,
    /// It did not finish within the shadow deadline.
    Timeout,
    /// Shadow capacity was full: it never ran.
    Shed,
}

impl Status {
    /// Position in `metrics::SHADOW_STATUSES`.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Panic => "panic",
            Self::Timeout => "timeout",
            Self::Shed => "shed",
        }
    }
}

/// Tensors named by their signature, serialised as `{"name": nested arrays by shape}`: a view of
/// the request's and models' tensors, nothing copied.
#[derive(Debug)]
pub struct NamedTensors<'a> {
    specs: &'a [TensorSpec],
    tensors: &'a [Tensor],
}

impl<'a> NamedTensors<'a> {
    pub fn new(specs: &'a [TensorSpec], tensors: &'a [Tensor]) -> Self {
        Self { specs, tensors }
    }

    /// One tensor's values as numbers, row-major, exactly as the log's JSON reads back: an f32 is
    /// written as its shortest decimal, which read as f64 is not `f64::from(x)`, and the live
    /// comparison must give the same figures as the offline one over the files.
    pub fn values(&self, name: &str) -> Option<Vec<f64>> {
        let (_, tensor) = self.specs.iter().zip(self.tensors).find(|(spec, _)| spec.name == name)?;
        Some(match tensor.data() {
            TensorData::Fp32(v) => v.iter().map(|&x| f32_as_logged(x)).collect(),
            TensorData::Fp64(v) => v.clone(),
            TensorData::Int64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Int32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| f64::from(u8::from(x))).collect(),
        })
    }
}

impl Serialize for NamedTensors<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.tensors.len()))?;
        for (spec, tensor) in self.specs.iter().zip(self.tensors) {
            map.serialize_entry(&spec.name, &Nested { shape: tensor.shape(), data: tensor.data(), offset: 0 })?;
        }
        map.end()
    }
}

/// A row-major buffer seen as nested arrays: `shape [2, 3]` gives `[[a, b, c], [d, e, f]]`.
struct Nested<'a> {
    shape: &'a [usize],
    data: &'a TensorData,
    offset: usize,
}

impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some((&len, inner)) = self.shape.split_first() else {
            return match self.data {
                TensorData::Fp32(v) => serializer.serialize_f32(v[self.offset]),
                TensorData::Fp64(v) => serializer.serialize_f64(v[self.offset]),
                TensorData::Int64(v) => serializer.serialize_i64(v[self.offset]),
                TensorData::Int32(v) => serializer.serialize_i32(v[self.offset]),
                TensorData::Bool(v) => serializer.serialize_bool(v[self.offset]),
            };
        };
        let stride: usize = inner.iter().product();
        let mut seq = serializer.serialize_seq(Some(len))?;
        for i in 0..len {
            seq.serialize_element(&Nested { shape: inner, data: self.data, offset: self.offset + i * stride })?;
        }
        seq.end()
    }
}

fn f32_as_logged(x: f32) -> f64 {
    if !x.is_finite() {
        return f64::from(x);
    }
    let mut buffer = ryu::Buffer::new();
    buffer.format_finite(x).parse().unwrap_or(f64::from(x))
}

/// sha256 over the tensors' little-endian bytes, in signature order.
pub fn inputs_sha256(tensors: &[Tensor]) -> String {
    let mut hasher = Sha256::new();
    let mut bytes = Vec::new();
    for tensor in tensors {
        bytes.clear();
        tensor.data().write_le_bytes(&mut bytes);
        hasher.update(&bytes);
    }
    hex::encode(hasher.finalize())
}

/// A time as RFC 3339 UTC to the millisecond, as every log line writes it.
pub(crate) fn rfc3339<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*time))
}

fn milliseconds<S: Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match duration {
        Some(d) => serializer.serialize_f64((d.as_secs_f64() * 1e3 * 1e3).round() / 1e3),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_indexes_match_the_metric_labels() {
        for status in [Status::Ok, Status::Error, Status::Panic, Status::Timeout, Status::Shed] {
            assert_eq!(crate::metrics::SHADOW_STATUSES[status.index()], status.label());
        }
    }

    #[test]
    fn tensors_nest_by_shape() {
        let tensors = [
            Tensor::new(vec![2, 3], TensorData::Int64(vec![1, 2, 3, 4, 5, 6])).unwrap(),
            Tensor::new(vec![2], TensorData::Bool(vec![true, false])).unwrap(),
        ];
        let spec = |name: &str, datatype| TensorSpec { name: name.into(), datatype, shape: vec![] };
        let specs = [spec("x", crate::model::DataType::Int64), spec("v", crate::model::DataType::Bool)];
        let named = NamedTensors::new(&specs, &tensors);
        assert_eq!(serde_json::to_string(&named).unwrap(), r#"{"x":[[1,2,3],[4,5,6]],"v":[true,false]}"#);
    }

    #[test]
    fn a_record_is_one_line_of_json() {
        let task = Task::Regression { prediction_output: "y".into() };
        let record = OutcomeRecord {
            kind: "outcome",
            request_id: "r1".into(),
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            model: "m".into(),
            answered_by: "1".into(),
            task: &task,
            inputs: None,
            inputs_sha256: Some("ab".into()),
            results: vec![ModelResult {
                version: "2".into(),
                role: Role::Challenger,
                sha256: "cd".into(),
                status: Status::Shed,
                latency_ms: None,
                batch: None,
                outputs: None,
                error: None,
            }],
        };
        let line = serde_json::to_string(&record).unwrap();
        assert_eq!(
            line,
            r#"{"kind":"outcome","request_id":"r1","timestamp":"2023-11-14T22:13:20.123Z","model":"m","answered_by":"1","task":{"kind":"regression","prediction_output":"y"},"inputs_sha256":"ab","results":[{"version":"2","role":"challenger","sha256":"cd","status":"shed"}]}"#
        );
    }
}
