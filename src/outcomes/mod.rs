//! Paired outcome records: for one sampled request, what every model of the deployment said.
//!
//! A record is one JSON line in an append-only log (`writer`), readable as it is by DuckDB
//! (`read_json_auto('outcomes/*.jsonl')`) and pandas (`read_json(lines=True)`).
//!
//! Invariants: every channel is bounded and what overflows is counted; nothing accepted is lost on a
//! graceful shutdown.

pub mod reader;
mod writer;

use std::ops::Range;
use std::time::{Duration, SystemTime};

use serde::Serialize;
#[cfg(test)]
use serde::Serializer;
#[cfg(test)]
use serde::ser::{SerializeMap, SerializeSeq};
use sha2::{Digest, Sha256};

use crate::model::{Tensor, TensorData, TensorSpec};
use crate::registry::{Role, Status};
use crate::repository::Task;

pub use self::writer::{
    OutcomeWriter, WriterSettings, read_checkpoint, repair_torn_lines, replace_file, write_checkpoint,
};

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
#[derive(Debug)]
#[cfg_attr(test, derive(Serialize))]
pub struct OutcomeRecord<'a> {
    /// Always "outcome": tells records from feedback lines in the same files.
    pub kind: &'static str,
    pub request_id: &'a str,
    #[cfg_attr(test, serde(serialize_with = "crate::json::rfc3339::serialize"))]
    pub timestamp: SystemTime,
    pub model: &'a str,
    /// The version whose answer the client got.
    pub answered_by: &'a str,
    /// Which outputs hold the prediction (from the manifest): the offline report needs nothing else.
    pub task: &'a Task,
    /// `task` as `serde_json` writes it, when the caller has it already (a version serialises its
    /// task once: `ModelVersion::task_json`); written into the line as is.
    #[cfg_attr(test, serde(skip))]
    pub task_json: Option<&'a [u8]>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub inputs: Option<NamedTensors<'a>>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub inputs_sha256: Option<String>,
    /// The request's slice (`[models.<name>.slices]`), when its model's records are sliced.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub slice: Option<&'a str>,
    pub results: Vec<ModelResult<'a>>,
}

impl OutcomeRecord<'_> {
    /// The record as one line of JSON, newline included, byte for byte what its `Serialize` writes
    /// (derived in tests only, as the oracle a test holds it equal to). Written by hand: this runs for every shadowed request, and serde
    /// spent most of its time escaping the constant keys and hashes character by character.
    pub fn to_json_line(&self) -> Vec<u8> {
        use crate::json::{write, write_str};
        // Room for the whole line at once: its numbers (about 20 bytes each) are most of it,
        // and growing a line of two challengers' results past 1 KiB cost a copy a record.
        let numbers: usize =
            self.inputs.iter().chain(self.results.iter().flat_map(|r| &r.outputs)).map(NamedTensors::numbers).sum();
        let mut out = writer::LINES.take(1024 + 24 * numbers);
        out.extend_from_slice(b"{\"kind\":");
        write_str(&mut out, self.kind);
        out.extend_from_slice(b",\"request_id\":");
        write_str(&mut out, self.request_id);
        // RFC 3339 needs no escaping: written straight into the line, as `rfc3339` has serde do.
        out.extend_from_slice(b",\"timestamp\":");
        crate::json::rfc3339::write_millis(&mut out, self.timestamp);
        out.extend_from_slice(b",\"model\":");
        write_str(&mut out, self.model);
        out.extend_from_slice(b",\"answered_by\":");
        write_str(&mut out, self.answered_by);
        out.extend_from_slice(b",\"task\":");
        match self.task_json {
            Some(json) => out.extend_from_slice(json),
            None => write(&mut out, self.task),
        }
        if let Some(inputs) = &self.inputs {
            out.extend_from_slice(b",\"inputs\":");
            inputs.write_json(&mut out);
        }
        if let Some(sha256) = &self.inputs_sha256 {
            out.extend_from_slice(b",\"inputs_sha256\":");
            write_str(&mut out, sha256);
        }
        if let Some(slice) = self.slice {
            out.extend_from_slice(b",\"slice\":");
            write_str(&mut out, slice);
        }
        out.extend_from_slice(b",\"results\":[");
        for (i, result) in self.results.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"version\":");
            write_str(&mut out, result.version);
            out.extend_from_slice(b",\"role\":\"");
            out.extend_from_slice(result.role.label().as_bytes());
            out.extend_from_slice(b"\",\"sha256\":");
            write_str(&mut out, result.sha256);
            out.extend_from_slice(b",\"status\":\"");
            out.extend_from_slice(result.status.label().as_bytes());
            out.push(b'"');
            if let Some(latency) = result.latency_ms {
                out.extend_from_slice(b",\"latency_ms\":");
                // Finite: a duration's milliseconds.
                out.extend_from_slice(zmij::Buffer::new().format_finite(as_milliseconds(latency)).as_bytes());
            }
            if let Some(batch) = result.batch {
                out.extend_from_slice(b",\"batch\":");
                out.extend_from_slice(itoa::Buffer::new().format(batch).as_bytes());
            }
            if let Some(outputs) = &result.outputs {
                out.extend_from_slice(b",\"outputs\":");
                outputs.write_json(&mut out);
            }
            if let Some(error) = &result.error {
                out.extend_from_slice(b",\"error\":");
                write_str(&mut out, error);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"]}\n");
        out
    }
}

/// A ground-truth label as it arrived, appended to the same log so an offline join sees it.
#[derive(Debug, Serialize)]
pub struct FeedbackRecord<'a> {
    /// Always "feedback".
    pub kind: &'static str,
    pub request_id: &'a str,
    #[serde(serialize_with = "crate::json::rfc3339::serialize")]
    pub timestamp: SystemTime,
    pub model: &'a str,
    pub truth: &'a serde_json::Value,
}

impl FeedbackRecord<'_> {
    /// The label as one line of JSON, newline included (serde's: labels are few beside records).
    pub fn to_json_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("strings, a time and a JSON value always serialise");
        line.push(b'\n');
        line
    }
}

/// Where assembled records and labels go: the JSON Lines log (`OutcomeWriter`) in one node.
///
/// Invariants: `offer` never waits (a full queue drops the line and counts it); `close` writes
/// everything accepted before it.
pub trait RecordSink: Send + Sync {
    /// Takes one record or label, serialised as a JSON line (newline included), without waiting;
    /// `false` if it was dropped (and counted).
    fn offer(&self, line: Vec<u8>) -> bool;
    /// Writes everything accepted so far and stops. Blocking.
    fn close(&self);
}

/// One model version's part of a record.
#[derive(Debug)]
#[cfg_attr(test, derive(Serialize))]
pub struct ModelResult<'a> {
    pub version: &'a str,
    pub role: Role,
    pub sha256: &'a str,
    pub status: Status,
    /// Time in the model alone; absent when it never ran (shed) or was abandoned (timeout).
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none", serialize_with = "milliseconds"))]
    pub latency_ms: Option<Duration>,
    /// Requests scored together in one run (shadow batching); the latency is the batch's.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub batch: Option<usize>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub outputs: Option<NamedTensors<'a>>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub error: Option<String>,
}

/// Tensors named by their signature, serialised as `{"name": nested arrays by shape}`: a view of
/// the request's and models' tensors, nothing copied.
#[derive(Debug)]
pub struct NamedTensors<'a> {
    specs: &'a [TensorSpec],
    tensors: &'a [Tensor],
    /// The rows (of the first dimension) of every tensor that are in view: a request's part of
    /// the outputs of a batch its records share. `None`: all of them.
    rows: Option<Range<usize>>,
}

impl<'a> NamedTensors<'a> {
    pub fn new(specs: &'a [TensorSpec], tensors: &'a [Tensor]) -> Self {
        Self { specs, tensors, rows: None }
    }

    /// Only `rows` of each tensor (all when `None`), which must all have at least `rows.end`.
    pub fn in_rows(self, rows: Option<Range<usize>>) -> Self {
        Self { rows, ..self }
    }

    /// How many numbers are in view.
    fn numbers(&self) -> usize {
        self.tensors.iter().map(|tensor| self.part(tensor).2.len()).sum()
    }

    /// A tensor's rows in view: how many, the rest of its shape, and where its values are.
    fn part<'t>(&self, tensor: &'t Tensor) -> (Option<usize>, &'t [usize], Range<usize>) {
        match (&self.rows, tensor.shape().split_first()) {
            (Some(rows), Some((_, inner))) => {
                let stride: usize = inner.iter().product();
                (Some(rows.len()), inner, rows.start * stride..rows.end * stride)
            }
            _ => (None, tensor.shape(), 0..tensor.data().len()),
        }
    }

    /// One tensor's values as numbers, row-major, exactly as the log's JSON reads back: an f32 is
    /// written as its shortest decimal, which read as f64 is not `f64::from(x)`, and the live
    /// comparison must give the same figures as the offline one over the files.
    pub fn values(&self, name: &str) -> Option<Vec<f64>> {
        let (_, tensor) = self.specs.iter().zip(self.tensors).find(|(spec, _)| spec.name == name)?;
        let (_, _, range) = self.part(tensor);
        Some(match tensor.data() {
            TensorData::Fp32(v) => v[range].iter().map(|&x| f32_as_logged(x)).collect(),
            TensorData::Fp64(v) => v[range].to_vec(),
            TensorData::Int64(v) => v[range].iter().map(|&x| x as f64).collect(),
            TensorData::Int32(v) => v[range].iter().map(|&x| f64::from(x)).collect(),
            TensorData::Bool(v) => v[range].iter().map(|&x| f64::from(u8::from(x))).collect(),
        })
    }
}

impl NamedTensors<'_> {
    /// What `Serialize` writes, by hand (see `OutcomeRecord::to_json_line`).
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (spec, tensor)) in self.specs.iter().zip(self.tensors).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            crate::json::write_str(out, &spec.name);
            out.push(b':');
            match self.part(tensor) {
                (Some(rows), inner, range) => write_rows(out, rows, inner, tensor.data(), range.start),
                (None, shape, _) => write_nested(out, shape, tensor.data(), 0),
            }
        }
        out.push(b'}');
    }
}

/// `Nested`'s JSON by hand: arrays by shape around scalars written as serde writes them.
fn write_nested(out: &mut Vec<u8>, shape: &[usize], data: &TensorData, offset: usize) {
    match shape.split_first() {
        Some((&len, inner)) => write_rows(out, len, inner, data, offset),
        None => write_values(out, data, offset..offset + 1),
    }
}

/// An array of `len` arrays of shape `inner` (numbers when it is empty), from `offset` on.
fn write_rows(out: &mut Vec<u8>, len: usize, inner: &[usize], data: &TensorData, offset: usize) {
    out.push(b'[');
    if inner.is_empty() {
        // The innermost arrays hold nearly every value: one match per row, not per value.
        write_values(out, data, offset..offset + len);
    } else {
        let stride: usize = inner.iter().product();
        for i in 0..len {
            if i > 0 {
                out.push(b',');
            }
            write_nested(out, inner, data, offset + i * stride);
        }
    }
    out.push(b']');
}

/// The values in `range`, comma-separated, each as serde writes it (a non-finite float as
/// `null`): the numbers are most of a record's line, so they skip serde's per-value serializer
/// and go straight to the formatters serde_json uses (zmij, itoa) through one buffer.
fn write_values(out: &mut Vec<u8>, data: &TensorData, range: Range<usize>) {
    fn each<T: Copy>(out: &mut Vec<u8>, values: &[T], mut write: impl FnMut(&mut Vec<u8>, T)) {
        for (i, &value) in values.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write(out, value);
        }
    }
    let mut float = zmij::Buffer::new();
    let mut int = itoa::Buffer::new();
    match data {
        TensorData::Fp32(v) => each(out, &v[range], |out, x| {
            out.extend_from_slice(if x.is_finite() { float.format_finite(x).as_bytes() } else { b"null" })
        }),
        TensorData::Fp64(v) => each(out, &v[range], |out, x| {
            out.extend_from_slice(if x.is_finite() { float.format_finite(x).as_bytes() } else { b"null" })
        }),
        TensorData::Int64(v) => each(out, &v[range], |out, x| out.extend_from_slice(int.format(x).as_bytes())),
        TensorData::Int32(v) => each(out, &v[range], |out, x| out.extend_from_slice(int.format(x).as_bytes())),
        TensorData::Bool(v) => each(out, &v[range], |out, x| out.extend_from_slice(if x { b"true" } else { b"false" })),
    }
}

#[cfg(test)]
impl Serialize for NamedTensors<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.tensors.len()))?;
        for (spec, tensor) in self.specs.iter().zip(self.tensors) {
            let (rows, _, range) = self.part(tensor);
            let (shape, data, offset) = (tensor.shape(), tensor.data(), range.start);
            map.serialize_entry(&spec.name, &Nested { shape, rows, data, offset })?;
        }
        map.end()
    }
}

#[cfg(test)]
/// A row-major buffer seen as nested arrays: `shape [2, 3]` gives `[[a, b, c], [d, e, f]]`.
struct Nested<'a> {
    shape: &'a [usize],
    /// In place of the first dimension, when only some rows are in view.
    rows: Option<usize>,
    data: &'a TensorData,
    offset: usize,
}

#[cfg(test)]
impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some((&whole, inner)) = self.shape.split_first() else {
            return match self.data {
                TensorData::Fp32(v) => serializer.serialize_f32(v[self.offset]),
                TensorData::Fp64(v) => serializer.serialize_f64(v[self.offset]),
                TensorData::Int64(v) => serializer.serialize_i64(v[self.offset]),
                TensorData::Int32(v) => serializer.serialize_i32(v[self.offset]),
                TensorData::Bool(v) => serializer.serialize_bool(v[self.offset]),
            };
        };
        let (len, stride) = (self.rows.unwrap_or(whole), inner.iter().product::<usize>());
        let mut seq = serializer.serialize_seq(Some(len))?;
        for i in 0..len {
            let offset = self.offset + i * stride;
            seq.serialize_element(&Nested { shape: inner, rows: None, data: self.data, offset })?;
        }
        seq.end()
    }
}

fn f32_as_logged(x: f32) -> f64 {
    if !x.is_finite() {
        return f64::from(x);
    }
    // zmij: the very digits the line holds (serde_json formats with it).
    zmij::Buffer::new().format_finite(x).parse().unwrap_or(f64::from(x))
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

#[cfg(test)]
fn milliseconds<S: Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match duration {
        Some(d) => serializer.serialize_f64(as_milliseconds(*d)),
        None => serializer.serialize_none(),
    }
}

/// Milliseconds to the microsecond.
fn as_milliseconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e3 * 1e3).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // One request's row of a batch's outputs, by hand and through serde, and its values.
        let second = NamedTensors::new(&specs, &tensors).in_rows(Some(1..2));
        let mut line = Vec::new();
        second.write_json(&mut line);
        assert_eq!(String::from_utf8(line).unwrap(), r#"{"x":[[4,5,6]],"v":[false]}"#);
        assert_eq!(serde_json::to_string(&second).unwrap(), r#"{"x":[[4,5,6]],"v":[false]}"#);
        assert_eq!((second.values("x"), second.values("v")), (Some(vec![4.0, 5.0, 6.0]), Some(vec![0.0])));
        assert_eq!(second.numbers(), 4);
    }

    #[test]
    fn the_hand_written_line_is_what_serde_writes() {
        let spec = |name: &str, datatype| TensorSpec { name: name.into(), datatype, shape: vec![] };
        let input_specs = [spec("x", crate::model::DataType::Fp32), spec("w\"eird", crate::model::DataType::Fp64)];
        let inputs = [
            Tensor::new(vec![2, 3], TensorData::Fp32(vec![1.5, -0.0, 3.0e-7, f32::NAN, 1.0e20, 0.1])).unwrap(),
            Tensor::new(vec![1], TensorData::Fp64(vec![f64::INFINITY])).unwrap(),
        ];
        let output_specs = [
            spec("label", crate::model::DataType::Int64),
            spec("p", crate::model::DataType::Fp32),
            spec("flag", crate::model::DataType::Bool),
            spec("n", crate::model::DataType::Int32),
        ];
        let outputs = [
            Tensor::new(vec![2], TensorData::Int64(vec![-1, 7])).unwrap(),
            Tensor::new(vec![2, 2], TensorData::Fp32(vec![0.03101793, 0.9689821, 1.0, 0.0])).unwrap(),
            Tensor::new(vec![2], TensorData::Bool(vec![true, false])).unwrap(),
            Tensor::new(vec![], TensorData::Int32(vec![-3])).unwrap(),
        ];
        let task = Task::Classification {
            classes: vec![0, 1],
            class_names: vec!["malignant".into(), "be\\nign".into()],
            label_output: "label".into(),
            probabilities_output: Some("p".into()),
        };
        let result = |status, latency_ms, batch, outputs, error: Option<&str>| ModelResult {
            version: "12",
            role: Role::Challenger,
            sha256: "7aac63e971981e8c",
            status,
            latency_ms,
            batch,
            outputs,
            error: error.map(str::to_owned),
        };
        let record = OutcomeRecord {
            kind: "outcome",
            request_id: "id with \"quotes\" and \u{1}",
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            model: "breast-cancer",
            answered_by: "1",
            task: &task,
            // The cached bytes are serde's: the oracle below serialises `task` itself.
            task_json: Some(&serde_json::to_vec(&task).unwrap()),
            inputs: Some(NamedTensors::new(&input_specs, &inputs)),
            inputs_sha256: None,
            slice: None,
            results: vec![
                ModelResult {
                    role: Role::Champion,
                    ..result(
                        Status::Ok,
                        Some(Duration::from_nanos(781_234)),
                        None,
                        Some(NamedTensors::new(&output_specs, &outputs)),
                        None,
                    )
                },
                result(
                    Status::Ok,
                    Some(Duration::from_micros(5_414)),
                    Some(3),
                    Some(NamedTensors::new(&output_specs, &outputs)),
                    None,
                ),
                result(Status::Error, None, None, None, Some("bad \"input\"\n")),
                result(Status::Timeout, None, None, None, Some("finished after the deadline, in 260.1 ms")),
                result(Status::Shed, None, None, None, None),
            ],
        };
        let serde = serde_json::to_string(&record).unwrap();
        assert_eq!(String::from_utf8(record.to_json_line()).unwrap(), format!("{serde}\n"));
    }

    #[test]
    fn a_record_is_one_line_of_json() {
        let task = Task::Regression { prediction_output: "y".into() };
        let record = OutcomeRecord {
            kind: "outcome",
            request_id: "r1",
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            model: "m",
            answered_by: "1",
            task: &task,
            task_json: None,
            inputs: None,
            inputs_sha256: Some("ab".into()),
            slice: Some("eu \"west\""),
            results: vec![ModelResult {
                version: "2",
                role: Role::Challenger,
                sha256: "cd",
                status: Status::Shed,
                latency_ms: None,
                batch: None,
                outputs: None,
                error: None,
            }],
        };
        let line = serde_json::to_string(&record).unwrap();
        assert_eq!(String::from_utf8(record.to_json_line()).unwrap(), format!("{line}\n"));
        assert_eq!(
            line,
            r#"{"kind":"outcome","request_id":"r1","timestamp":"2023-11-14T22:13:20.123Z","model":"m","answered_by":"1","task":{"kind":"regression","prediction_output":"y"},"inputs_sha256":"ab","slice":"eu \"west\"","results":[{"version":"2","role":"challenger","sha256":"cd","status":"shed"}]}"#
        );
    }
}
