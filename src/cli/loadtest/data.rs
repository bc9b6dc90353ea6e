//! What the load test sends: request bodies built once from a holdout CSV or an outcome log,
//! shaped by the model's input as its metadata gives it.

use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::grpc::pb::ModelInferRequest;
use crate::grpc::pb::model_infer_request::InferInputTensor;
use crate::model::{DataType, TensorData};
use crate::repository::holdout::Holdout;

/// One request body, serialised once, and its rows' truth when the data has it.
pub(super) struct Body {
    pub(super) bytes: bytes::Bytes,
    /// The same rows as a gRPC ModelInfer message, encoded and framed once (`framed`): a send
    /// writes these bytes as they are (with the request id appended, with `--feedback`).
    pub(super) message: bytes::Bytes,
    pub(super) truth: Option<Value>,
}

/// The model's single input: name, datatype and feature count, from its metadata.
pub(super) struct InputSpec {
    pub(super) name: String,
    pub(super) datatype: String,
    pub(super) features: usize,
}

pub(super) async fn input_of(client: &reqwest::Client, base: &str, model: &str) -> anyhow::Result<InputSpec> {
    let url = format!("{base}/v2/models/{model}");
    let response = client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let metadata: Value = response.json().await.with_context(|| format!("GET {url}: not JSON"))?;
    ensure!(status.is_success(), "GET {url}: {status} {metadata}");
    let inputs = metadata["inputs"].as_array().context("metadata has no inputs")?;
    ensure!(inputs.len() == 1, "loadtest sends models with one input; {model} has {}", inputs.len());
    let shape = inputs[0]["shape"].as_array().context("input has no shape")?;
    ensure!(shape.len() == 2, "loadtest sends [rows, features] inputs; {model}'s is {shape:?}");
    Ok(InputSpec {
        name: inputs[0]["name"].as_str().context("input has no name")?.to_owned(),
        datatype: inputs[0]["datatype"].as_str().context("input has no datatype")?.to_owned(),
        features: shape[1].as_u64().context("feature count is not fixed")? as usize,
    })
}

/// Request bodies, each `batch` rows, serialised once before the run (as JSON, and as a gRPC
/// message with the rows in `raw_input_contents`), with their truth if known.
pub(super) fn bodies(
    data: &Path,
    model: &str,
    input: &InputSpec,
    batch: usize,
    version: Option<&str>,
) -> anyhow::Result<Vec<Body>> {
    let (rows, truths) = if data.extension().is_some_and(|e| e == "jsonl") {
        (log_rows(data, model, &input.name)?, None)
    } else {
        let holdout = Holdout::read(data)?;
        (holdout.rows, holdout.truth.map(|(_, truth)| truth))
    };
    if let Some(bad) = rows.iter().find(|r| r.len() != input.features) {
        bail!("{} has rows of {} features; {model} takes {}", data.display(), bad.len(), input.features);
    }
    Ok(rows
        .chunks(batch)
        .enumerate()
        .filter(|(_, c)| c.len() == batch)
        .map(|(n, chunk)| {
            let body = json!({
                "inputs": [{ "name": input.name, "shape": [chunk.len(), input.features], "datatype": input.datatype, "data": chunk }]
            });
            let truth = truths.as_ref().map(|t| {
                let rows = &t[n * batch..(n + 1) * batch];
                if batch == 1 { json!(rows[0]) } else { json!(rows) }
            });
            let message = framed(&prost::Message::encode_to_vec(&grpc_message(model, version, input, chunk)));
            Body { bytes: bytes::Bytes::from(body.to_string()), message, truth }
        })
        .collect())
}

/// `message` as gRPC frames it on the wire: uncompressed, its length, then its bytes.
fn framed(message: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// The same rows as a ModelInfer request, each element in the input's datatype, little-endian.
fn grpc_message(model: &str, version: Option<&str>, input: &InputSpec, rows: &[Vec<f64>]) -> ModelInferRequest {
    let values = rows.iter().flatten().copied();
    let data = match DataType::parse(&input.datatype) {
        Some(DataType::Fp64) | None => TensorData::Fp64(values.collect()),
        Some(DataType::Fp32) => TensorData::Fp32(values.map(|v| v as f32).collect()),
        Some(DataType::Int64) => TensorData::Int64(values.map(|v| v as i64).collect()),
        Some(DataType::Int32) => TensorData::Int32(values.map(|v| v as i32).collect()),
        Some(DataType::Bool) => TensorData::Bool(values.map(|v| v != 0.0).collect()),
    };
    let mut raw = Vec::with_capacity(data.byte_len());
    data.write_le_bytes(&mut raw);
    ModelInferRequest {
        model_name: model.to_owned(),
        model_version: version.unwrap_or_default().to_owned(),
        inputs: vec![InferInputTensor {
            name: input.name.clone(),
            datatype: input.datatype.clone(),
            shape: vec![rows.len() as i64, input.features as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![bytes::Bytes::from(raw)],
        ..Default::default()
    }
}

/// Rows from an outcome log's `inputs` (logged `full`), one per row of each record of `model`.
fn log_rows(path: &Path, model: &str, input: &str) -> anyhow::Result<Vec<Vec<f64>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let record: Value = serde_json::from_str(line).with_context(|| format!("{} line {}", path.display(), n + 1))?;
        // Feedback lines share the files: only outcome records carry inputs.
        if record["model"] != model || record["kind"] == "feedback" {
            continue;
        }
        let logged = record["inputs"][input].as_array().with_context(|| {
            format!("{} line {}: no inputs (the log must be written with log_inputs = \"full\")", path.display(), n + 1)
        })?;
        for row in logged {
            rows.push(
                serde_json::from_value(row.clone())
                    .with_context(|| format!("line {}: input rows must be numbers", n + 1))?,
            );
        }
    }
    Ok(rows)
}
