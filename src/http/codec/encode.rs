//! Encoding the response: OIP JSON, with Triton's binary tensor extension for the outputs asked for
//! as binary. Written by hand: the keys are constants that need no escaping, and this is on every
//! request's path.

use serde::Serialize;

use super::OutputSelection;
use crate::model::{Tensor, TensorData, TensorSpec};

#[derive(Serialize)]
#[serde(untagged)]
enum DataJson<'a> {
    Fp32(&'a [f32]),
    Fp64(&'a [f64]),
    Int64(&'a [i64]),
    Int32(&'a [i32]),
    Bool(&'a [bool]),
}

impl<'a> From<&'a TensorData> for DataJson<'a> {
    fn from(data: &'a TensorData) -> Self {
        match data {
            TensorData::Fp32(v) => Self::Fp32(v),
            TensorData::Fp64(v) => Self::Fp64(v),
            TensorData::Int64(v) => Self::Int64(v),
            TensorData::Int32(v) => Self::Int32(v),
            TensorData::Bool(v) => Self::Bool(v),
        }
    }
}

/// The identity of the answering version and the request, for the response.
pub struct ResponseHead<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub id: Option<&'a str>,
}

/// An encoded response body, and the JSON header's length when binary tensors follow it.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub header_length: Option<usize>,
}

pub fn encode_response(
    head: ResponseHead<'_>,
    specs: &[TensorSpec],
    outputs: &[Tensor],
    selection: &OutputSelection,
) -> EncodedResponse {
    let selected: &mut dyn Iterator<Item = (usize, bool)> = match selection {
        OutputSelection::All { binary } => &mut (0..outputs.len()).map(|i| (i, *binary)),
        OutputSelection::Listed(list) => &mut list.iter().copied(),
    };
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(b"{\"model_name\":");
    crate::json::write_str(&mut body, head.model_name);
    body.extend_from_slice(b",\"model_version\":");
    crate::json::write_str(&mut body, head.model_version);
    if let Some(id) = head.id {
        body.extend_from_slice(b",\"id\":");
        crate::json::write_str(&mut body, id);
    }
    body.extend_from_slice(b",\"outputs\":[");
    let mut binary_outputs = Vec::new();
    for (n, (i, binary)) in selected.enumerate() {
        let tensor = &outputs[i];
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"name\":");
        crate::json::write_str(&mut body, &specs[i].name);
        body.extend_from_slice(b",\"datatype\":\"");
        body.extend_from_slice(tensor.datatype().as_str().as_bytes());
        body.extend_from_slice(b"\",\"shape\":");
        crate::json::write(&mut body, tensor.shape());
        if binary {
            body.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            crate::json::write(&mut body, &tensor.data().byte_len());
            body.push(b'}');
            binary_outputs.push(i);
        } else {
            body.extend_from_slice(b",\"data\":");
            crate::json::write(&mut body, &DataJson::from(tensor.data()));
        }
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    if binary_outputs.is_empty() {
        return EncodedResponse { body, header_length: None };
    }
    let header_length = body.len();
    for i in binary_outputs {
        outputs[i].data().write_le_bytes(&mut body);
    }
    EncodedResponse { body, header_length: Some(header_length) }
}
