//! ModelInfer's tensors: read from `raw_input_contents` (what tritonclient sends) or from typed
//! `contents`, checked against the answering version's signature by the same `Inputs` REST uses;
//! answered in `raw_output_contents` (all that tritonclient's `as_numpy` reads).

use prost::bytes::Bytes;

use super::pb::model_infer_response::InferOutputTensor;
use super::pb::{InferTensorContents, ModelInferRequest, ModelInferResponse};
use crate::error::Error;
use crate::inference::signature::{self, Inputs};
use crate::model::{DataType, Tensor, TensorData};
use crate::registry::ModelVersion;
use crate::repository::Manifest;

/// A decoded ModelInfer request.
pub(super) struct Decoded {
    pub inputs: Vec<Tensor>,
    /// The requested outputs, by index into the signature's outputs; empty: all of them.
    pub outputs: Vec<usize>,
}

pub(super) fn decode(request: &mut ModelInferRequest, manifest: &Manifest) -> Result<Decoded, Error> {
    let raw = std::mem::take(&mut request.raw_input_contents);
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(Error::invalid_input(format!(
            "raw_input_contents has {} entries but the request has {} inputs; give one entry per input, in the inputs' order",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut inputs = Inputs::new(manifest);
    for (i, input) in request.inputs.iter_mut().enumerate() {
        let head = inputs.head(&input.name, &input.datatype, &input.shape)?;
        let name = &input.name;
        let contents = input.contents.take().filter(|c| !fields(c).iter().all(|(_, n)| *n == 0));
        let data = match (raw.get(i), contents) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_input(format!(
                    "input '{name}' has both contents and raw_input_contents; use one of them for all inputs"
                )));
            }
            (Some(bytes), None) => TensorData::from_le_bytes(head.datatype, bytes)
                .map_err(|e| Error::invalid_input(format!("input '{name}': raw_input_contents: {e}")))?,
            (None, Some(contents)) => typed(name, head.datatype, contents)?,
            (None, None) if head.elements() == 0 => empty(head.datatype),
            (None, None) => {
                return Err(Error::invalid_input(format!(
                    "input '{name}' has no data: neither contents nor raw_input_contents"
                )));
            }
        };
        inputs.put(head, data)?;
    }
    let inputs = inputs.finish()?;
    let mut outputs = Vec::with_capacity(request.outputs.len());
    for output in &request.outputs {
        let index = signature::output(manifest, &output.name)?;
        if outputs.contains(&index) {
            return Err(Error::invalid_input(format!("output '{}' is requested more than once", output.name)));
        }
        outputs.push(index);
    }
    Ok(Decoded { inputs, outputs })
}

/// The contents field each datatype goes in.
fn field_of(datatype: DataType) -> &'static str {
    match datatype {
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Int64 => "int64_contents",
        DataType::Int32 => "int_contents",
        DataType::Bool => "bool_contents",
    }
}

fn fields(c: &InferTensorContents) -> [(&'static str, usize); 8] {
    [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ]
}

fn typed(name: &str, datatype: DataType, contents: InferTensorContents) -> Result<TensorData, Error> {
    let expected = field_of(datatype);
    if let Some((other, _)) = fields(&contents).into_iter().find(|&(field, n)| n > 0 && field != expected) {
        return Err(Error::invalid_input(format!(
            "input '{name}' is {datatype}, so its data goes in {expected}, not in {other}"
        )));
    }
    Ok(match datatype {
        DataType::Fp32 => TensorData::Fp32(contents.fp32_contents),
        DataType::Fp64 => TensorData::Fp64(contents.fp64_contents),
        DataType::Int64 => TensorData::Int64(contents.int64_contents),
        DataType::Int32 => TensorData::Int32(contents.int_contents),
        DataType::Bool => TensorData::Bool(contents.bool_contents),
    })
}

fn empty(datatype: DataType) -> TensorData {
    match datatype {
        DataType::Fp32 => TensorData::Fp32(Vec::new()),
        DataType::Fp64 => TensorData::Fp64(Vec::new()),
        DataType::Int64 => TensorData::Int64(Vec::new()),
        DataType::Int32 => TensorData::Int32(Vec::new()),
        DataType::Bool => TensorData::Bool(Vec::new()),
    }
}

/// The answer: every output (or the requested ones, in the order asked), each tensor's bytes in
/// `raw_output_contents` in the same order as `outputs`.
pub(super) fn respond(
    version: &ModelVersion,
    id: String,
    outputs: &[Tensor],
    selected: &[usize],
) -> ModelInferResponse {
    let specs = &version.manifest().outputs;
    // Every output when none was asked for, without building a list of them.
    let count = if selected.is_empty() { outputs.len() } else { selected.len() };
    let mut tensors = Vec::with_capacity(count);
    let mut raw = Vec::with_capacity(count);
    for k in 0..count {
        let i = if selected.is_empty() { k } else { selected[k] };
        let tensor = &outputs[i];
        tensors.push(InferOutputTensor {
            name: specs[i].name.clone(),
            datatype: tensor.datatype().as_str().to_owned(),
            shape: tensor.shape().iter().map(|&d| d as i64).collect(),
            parameters: Default::default(),
            contents: None,
        });
        let mut bytes = Vec::with_capacity(tensor.data().byte_len());
        tensor.data().write_le_bytes(&mut bytes);
        raw.push(Bytes::from(bytes));
    }
    ModelInferResponse {
        model_name: version.name().to_owned(),
        model_version: version.version().as_str().to_owned(),
        id,
        parameters: Default::default(),
        outputs: tensors,
        raw_output_contents: raw,
    }
}
