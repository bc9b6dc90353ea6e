//! The Open Inference Protocol's (KServe V2) infer request and response, as JSON and with Triton's
//! binary tensor data extension: a JSON header of `Inference-Header-Content-Length` bytes, then the
//! raw little-endian tensors in the order of the inputs (or outputs) that declare `binary_data_size`.
//!
//! Decoding checks the request against the answering version's signature once, here: names, datatypes,
//! shapes, data length, non-finite values. Everything after works on well-formed tensors.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::{DataType, Tensor, TensorData, TensorSpec};
use crate::repository::Manifest;

/// A decoded request: inputs in signature order, each checked against it.
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    pub outputs: OutputSelection,
}

impl InferRequest {
    pub fn rows(&self) -> usize {
        self.inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1)
    }
}

/// Which outputs to return, and which of them as binary.
#[derive(Debug, PartialEq)]
pub enum OutputSelection {
    /// Every output; binary when the request set `binary_data_output`.
    All { binary: bool },
    /// The named outputs, by index into the signature's outputs, each with its binary flag.
    Listed(Vec<(usize, bool)>),
}

// === request ===

#[derive(Deserialize)]
struct RequestJson<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    parameters: Option<RequestParameters>,
    #[serde(borrow)]
    inputs: Vec<InputJson<'a>>,
    #[serde(default, borrow)]
    outputs: Option<Vec<OutputJson<'a>>>,
}

#[derive(Deserialize, Default)]
struct RequestParameters {
    #[serde(default)]
    binary_data_output: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputJson<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    shape: Vec<i64>,
    #[serde(borrow)]
    datatype: Cow<'a, str>,
    #[serde(default)]
    parameters: Option<InputParameters>,
    #[serde(default, borrow)]
    data: Option<Data<'a>>,
}

/// An input's `data`: as serde found it, to be scanned into the input's datatype, or already read
/// by [`plain::read`].
enum Data<'a> {
    Json(&'a serde_json::value::RawValue),
    Plain(Vec<f64>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Data<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'a serde_json::value::RawValue>::deserialize(deserializer).map(Data::Json)
    }
}

#[derive(Deserialize, Default)]
struct InputParameters {
    #[serde(default)]
    binary_data_size: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputJson<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    parameters: Option<OutputParameters>,
}

#[derive(Deserialize, Default)]
struct OutputParameters {
    #[serde(default)]
    binary_data: bool,
}

/// Decodes a request body. `header_length` is the `Inference-Header-Content-Length` header: the JSON
/// is that many bytes and binary tensors follow; without it the whole body is JSON.
pub fn decode_request(body: &[u8], header_length: Option<usize>, manifest: &Manifest) -> Result<InferRequest, Error> {
    let (json, binary) = match header_length {
        Some(n) if n > body.len() => {
            return Err(Error::invalid_input(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    // The common request in one pass; anything else (and every malformed one) through serde.
    let request = match header_length.is_none().then(|| plain::read(json)).flatten() {
        Some(request) => request,
        None => serde_json::from_slice::<RequestJson<'_>>(json)
            .map_err(|e| Error::invalid_input(format!("invalid request JSON: {e}")))?,
    };
    decode_parsed(request, binary, header_length.is_some(), manifest)
}

/// Checks a parsed request against the signature and builds its tensors.
fn decode_parsed(
    request: RequestJson<'_>,
    mut binary: &[u8],
    has_binary: bool,
    manifest: &Manifest,
) -> Result<InferRequest, Error> {
    let specs = &manifest.inputs;
    let mut inputs: Vec<Option<Tensor>> = vec![None; specs.len()];
    for input in request.inputs {
        let index = specs.iter().position(|s| s.name == input.name).ok_or_else(|| {
            Error::invalid_input(format!("unknown input '{}'; the model expects {}", input.name, names(specs)))
        })?;
        if inputs[index].is_some() {
            return Err(Error::invalid_input(format!("input '{}' is given more than once", input.name)));
        }
        let tensor = decode_input(input, &specs[index], &mut binary, has_binary, manifest)?;
        inputs[index] = Some(tensor);
    }
    if !binary.is_empty() {
        return Err(Error::invalid_input(format!(
            "the body has {} bytes of binary data beyond what the inputs' binary_data_size declare",
            binary.len()
        )));
    }
    let inputs: Vec<Tensor> = inputs
        .into_iter()
        .zip(specs)
        .map(|(t, spec)| {
            t.ok_or_else(|| {
                Error::invalid_input(format!("missing input '{}'; the model expects {}", spec.name, names(specs)))
            })
        })
        .collect::<Result<_, _>>()?;
    let rows = inputs[0].shape().first();
    if let Some(other) = inputs.iter().find(|t| t.shape().first() != rows) {
        return Err(Error::invalid_input(format!(
            "inputs disagree on the batch size: {:?} and {:?} rows",
            rows,
            other.shape().first()
        )));
    }
    let binary_output = request.parameters.unwrap_or_default().binary_data_output;
    let outputs = match request.outputs {
        None => OutputSelection::All { binary: binary_output },
        Some(list) => {
            let mut selected = Vec::with_capacity(list.len());
            for output in list {
                let index = manifest.outputs.iter().position(|s| s.name == output.name).ok_or_else(|| {
                    Error::invalid_input(format!(
                        "unknown output '{}'; the model has {}",
                        output.name,
                        names(&manifest.outputs)
                    ))
                })?;
                if selected.iter().any(|&(i, _)| i == index) {
                    return Err(Error::invalid_input(format!("output '{}' is requested more than once", output.name)));
                }
                let binary = output.parameters.map_or(binary_output, |p| p.binary_data || binary_output);
                selected.push((index, binary));
            }
            OutputSelection::Listed(selected)
        }
    };
    Ok(InferRequest { id: request.id.map(Cow::into_owned), inputs, outputs })
}

fn decode_input(
    input: InputJson<'_>,
    spec: &TensorSpec,
    binary: &mut &[u8],
    has_binary: bool,
    manifest: &Manifest,
) -> Result<Tensor, Error> {
    let name = &spec.name;
    let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
        Error::invalid_input(format!(
            "input '{name}' has unsupported datatype '{}'; supported: FP32, FP64, INT64, INT32, BOOL",
            input.datatype
        ))
    })?;
    if datatype != spec.datatype {
        return Err(Error::invalid_input(format!(
            "input '{name}' has datatype {datatype} but the model expects {}",
            spec.datatype
        )));
    }
    let shape: Vec<usize> =
        input.shape.iter().map(|&d| usize::try_from(d)).collect::<Result<_, _>>().map_err(|_| {
            Error::invalid_input(format!("input '{name}' has a negative dimension in shape {:?}", input.shape))
        })?;
    if !spec.accepts_shape(&shape) {
        return Err(Error::invalid_input(format!(
            "input '{name}' has shape {shape:?} but the model expects {:?} (-1: any size)",
            spec.shape
        )));
    }
    if shape.first() == Some(&0) {
        return Err(Error::invalid_input(format!("input '{name}' has no rows")));
    }
    let binary_size = input.parameters.unwrap_or_default().binary_data_size;
    let data = match (input.data, binary_size) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid_input(format!("input '{name}' has both data and binary_data_size")));
        }
        (None, None) => return Err(Error::invalid_input(format!("input '{name}' has no data"))),
        (Some(Data::Json(raw)), None) => {
            scan_data(raw.get(), datatype).map_err(|e| Error::invalid_input(format!("input '{name}': {e}")))?
        }
        // `plain::read` takes only FP32 and FP64 inputs.
        (Some(Data::Plain(values)), None) => match datatype {
            DataType::Fp32 => TensorData::Fp32(values.into_iter().map(|v| v as f32).collect()),
            _ => TensorData::Fp64(values),
        },
        (None, Some(size)) => {
            if !has_binary {
                return Err(Error::invalid_input(format!(
                    "input '{name}' declares binary_data_size but the request has no Inference-Header-Content-Length header"
                )));
            }
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > binary.len() {
                return Err(Error::invalid_input(format!(
                    "input '{name}' declares binary_data_size {size} but only {} bytes of binary data remain",
                    binary.len()
                )));
            }
            let (bytes, rest) = binary.split_at(size);
            *binary = rest;
            TensorData::from_le_bytes(datatype, bytes)
                .map_err(|e| Error::invalid_input(format!("input '{name}': {e}")))?
        }
    };
    let tensor = Tensor::new(shape, data).map_err(|e| Error::invalid_input(format!("input '{name}': {e}")))?;
    if !manifest.allow_non_finite.iter().any(|n| n == name)
        && let Some(at) = tensor.data().first_non_finite()
    {
        let per_row = tensor.data().len() / tensor.shape()[0].max(1);
        return Err(Error::invalid_input(format!(
            "input '{name}' has NaN or infinity at element {at} (row {}); this model does not accept non-finite values",
            at / per_row.max(1)
        )));
    }
    Ok(tensor)
}

fn names(specs: &[TensorSpec]) -> String {
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    format!("[{}]", names.join(", "))
}

/// JSON `data` (already checked to be valid JSON): a flat or nested array of numbers or booleans,
/// read in row-major order straight into `datatype`. Numbers are read as f64 first (FP32 then
/// rounds, as a JSON client holding Python floats would); integer types take integers and floats
/// with no fractional part (`2.0`).
fn scan_data(raw: &str, datatype: DataType) -> Result<TensorData, String> {
    let bytes = raw.as_bytes();
    // A number per ~8 bytes is a fair guess for rows of decimals; the vector grows if not.
    let guess = bytes.len() / 8 + 1;
    let mut data = match datatype {
        DataType::Fp32 => TensorData::Fp32(Vec::with_capacity(guess)),
        DataType::Fp64 => TensorData::Fp64(Vec::with_capacity(guess)),
        DataType::Int64 => TensorData::Int64(Vec::with_capacity(guess)),
        DataType::Int32 => TensorData::Int32(Vec::with_capacity(guess)),
        DataType::Bool => TensorData::Bool(Vec::with_capacity(guess)),
    };
    let wrong = |token: &str| format!("{datatype} data cannot hold {token}");
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        match bytes[i] {
            b'[' | b']' | b',' | b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'-' | b'0'..=b'9' => {
                let (length, plain) = number(&bytes[i..]);
                i += length;
                let token = &raw[start..i];
                let float = || plain.map_or_else(|| token.parse::<f64>().map_err(|_| wrong(token)), Ok);
                let integer = || {
                    token.parse::<i64>().or_else(|_| {
                        let v = float()?;
                        if v.fract() == 0.0 && v >= i64::MIN as f64 && v < i64::MAX as f64 {
                            Ok(v as i64)
                        } else {
                            Err(wrong(token))
                        }
                    })
                };
                match &mut data {
                    TensorData::Fp32(v) => v.push(float()? as f32),
                    TensorData::Fp64(v) => v.push(float()?),
                    TensorData::Int64(v) => v.push(integer()?),
                    TensorData::Int32(v) => v.push(i32::try_from(integer()?).map_err(|_| wrong(token))?),
                    TensorData::Bool(_) => return Err(wrong(token)),
                }
            }
            b't' | b'f' => {
                let value = bytes[i] == b't';
                i += if value { 4 } else { 5 };
                match &mut data {
                    TensorData::Bool(v) => v.push(value),
                    _ => return Err(wrong(if value { "true" } else { "false" })),
                }
            }
            b'"' => return Err(wrong("a string")),
            b'n' => return Err(wrong("null")),
            _ => return Err(wrong("an object")),
        }
    }
    Ok(data)
}

/// The powers of ten that are exact doubles.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// The common request read in one pass, without serde.
///
/// What tritonclient and most clients send for tabular models: `{"id": …, "inputs": [{"name": …,
/// "shape": […], "datatype": "FP32" or "FP64", "data": [[…], …]}, …]}`, keys in any order, strings
/// without escapes, numbers in range. Serde would
/// validate `data` while skipping it and `scan_data` read it again; this reads it once. Anything
/// else (other keys, escapes, exponents, other datatypes, binary data, and every malformed request)
/// is `None` and goes through serde, which reads all of it and words every error. For a request
/// both accept, both give the same request (a property test checks).
mod plain {
    use std::borrow::Cow;

    use super::{Data, InputJson, RequestJson};

    /// Deeper nesting goes to serde (whose own limit is 128).
    const MAX_DEPTH: usize = 32;

    pub(super) fn read(json: &[u8]) -> Option<RequestJson<'_>> {
        let mut cursor = Cursor { bytes: json, at: 0 };
        let (mut id, mut inputs) = (None, None);
        cursor.object(|c, key| {
            match key {
                b"id" if id.is_none() => id = Some(c.string()?),
                b"inputs" if inputs.is_none() => inputs = Some(c.inputs()?),
                _ => return None,
            }
            Some(())
        })?;
        cursor.skip_whitespace();
        (cursor.at == json.len()).then_some(())?;
        Some(RequestJson { id: id.map(Cow::Borrowed), parameters: None, inputs: inputs?, outputs: None })
    }

    struct Cursor<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl<'a> Cursor<'a> {
        fn skip_whitespace(&mut self) {
            while matches!(self.bytes.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.at += 1;
            }
        }

        /// The next byte after whitespace, not consumed.
        fn peek(&mut self) -> Option<u8> {
            self.skip_whitespace();
            self.bytes.get(self.at).copied()
        }

        fn eat(&mut self, byte: u8) -> Option<()> {
            (self.peek()? == byte).then(|| self.at += 1)
        }

        /// A string without escapes or control characters.
        fn string(&mut self) -> Option<&'a str> {
            std::str::from_utf8(self.raw_string()?).ok()
        }

        /// A string without escapes or control characters, as bytes: keys are compared as such, so
        /// only the values kept are checked for UTF-8.
        fn raw_string(&mut self) -> Option<&'a [u8]> {
            self.eat(b'"')?;
            let start = self.at;
            let length = self.bytes[start..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            (self.bytes[start + length] == b'"').then_some(())?;
            self.at = start + length + 1;
            Some(&self.bytes[start..start + length])
        }

        /// After an item: `,` (true: another follows) or `close` (false: the end), consumed.
        fn separator(&mut self, close: u8) -> Option<bool> {
            let byte = self.peek()?;
            self.at += 1;
            match byte {
                b',' => Some(true),
                _ => (byte == close).then_some(false),
            }
        }

        /// `{"key": value, …}`, not empty; `field` reads each value.
        fn object(&mut self, mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
            self.eat(b'{')?;
            loop {
                let key = self.raw_string()?;
                self.eat(b':')?;
                field(self, key)?;
                if !self.separator(b'}')? {
                    return Some(());
                }
            }
        }

        /// `[item, …]` or `[]`; `item` reads each item.
        fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
            self.eat(b'[')?;
            if self.peek()? == b']' {
                self.at += 1;
                return Some(());
            }
            loop {
                item(self)?;
                if !self.separator(b']')? {
                    return Some(());
                }
            }
        }

        fn inputs(&mut self) -> Option<Vec<InputJson<'a>>> {
            let mut inputs = Vec::with_capacity(1);
            self.array(|c| c.input().map(|input| inputs.push(input)))?;
            (!inputs.is_empty()).then_some(inputs)
        }

        fn input(&mut self) -> Option<InputJson<'a>> {
            let (mut name, mut shape, mut datatype, mut data) = (None, None, None, None);
            self.object(|c, key| {
                match key {
                    b"name" if name.is_none() => name = Some(c.string()?),
                    b"datatype" if datatype.is_none() => datatype = Some(c.string()?),
                    b"shape" if shape.is_none() => {
                        let mut dims = Vec::with_capacity(2);
                        c.array(|c| c.integer().map(|d| dims.push(d)))?;
                        shape = Some(dims);
                    }
                    b"data" if data.is_none() => {
                        // About a number per 8 bytes of what is left: no regrowth for one row.
                        let mut values = Vec::with_capacity((c.bytes.len() - c.at) / 8);
                        c.values(&mut values, 0)?;
                        data = Some(values);
                    }
                    _ => return None,
                }
                Some(())
            })?;
            let datatype = datatype.filter(|d| matches!(*d, "FP32" | "FP64"))?;
            Some(InputJson {
                name: Cow::Borrowed(name?),
                shape: shape?,
                datatype: Cow::Borrowed(datatype),
                parameters: None,
                data: Some(Data::Plain(data?)),
            })
        }

        /// A nested array of plain decimals, flattened into `values` in row-major order.
        fn values(&mut self, values: &mut Vec<f64>, depth: usize) -> Option<()> {
            (depth < MAX_DEPTH).then_some(())?;
            self.array(|c| {
                if c.peek()? == b'[' { c.values(values, depth + 1) } else { c.decimal().map(|v| values.push(v)) }
            })
        }

        fn digits(&self, at: usize, mantissa: &mut u64) -> usize {
            super::digits(self.bytes, at, mantissa)
        }

        /// A JSON number, `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. Clinger's fast path when
        /// it applies (at most 19 digits, a mantissa of at most 2^53, at most 22 after the point, no
        /// exponent), else `str::parse` (numpy's float32 values print with 17 digits): either way the
        /// value `scan_data` gives. Out of range is serde's to refuse.
        fn decimal(&mut self) -> Option<f64> {
            let negative = self.peek()? == b'-';
            let whole_start = self.at + usize::from(negative);
            let mut mantissa = 0;
            let mut at = self.digits(whole_start, &mut mantissa);
            let whole = at - whole_start;
            (whole == 1 || (whole > 1 && self.bytes[whole_start] != b'0')).then_some(())?;
            let mut scale = 0;
            if self.bytes.get(at) == Some(&b'.') {
                let fraction_start = at + 1;
                at = self.digits(fraction_start, &mut mantissa);
                scale = at - fraction_start;
                (scale > 0).then_some(())?;
            }
            let mut exponent = false;
            if matches!(self.bytes.get(at), Some(b'e' | b'E')) {
                let mut digits_start = at + 1;
                if matches!(self.bytes.get(digits_start), Some(b'+' | b'-')) {
                    digits_start += 1;
                }
                let mut ignored = 0;
                at = self.digits(digits_start, &mut ignored);
                (at > digits_start).then_some(())?;
                exponent = true;
            }
            let token = &self.bytes[self.at..at];
            self.at = at;
            if let Some(value) = (!exponent).then(|| super::clinger(negative, mantissa, whole + scale, scale)).flatten()
            {
                return Some(value);
            }
            let value: f64 = std::str::from_utf8(token).ok()?.parse().ok()?;
            value.is_finite().then_some(value)
        }

        /// `-?(0|[1-9][0-9]*)` of at most 18 digits, not followed by a fraction or exponent.
        fn integer(&mut self) -> Option<i64> {
            let negative = self.peek()? == b'-';
            let start = self.at + usize::from(negative);
            let mut magnitude = 0;
            let end = self.digits(start, &mut magnitude);
            let digits = end - start;
            (digits == 1 || ((2..=18).contains(&digits) && self.bytes[start] != b'0')).then_some(())?;
            (!matches!(self.bytes.get(end), Some(b'.' | b'e' | b'E'))).then_some(())?;
            self.at = end;
            let magnitude = i64::try_from(magnitude).ok()?;
            Some(if negative { -magnitude } else { magnitude })
        }
    }
}

/// The number token at the start of `bytes` (valid JSON: serde checked it): its length, and its value
/// when it is a plain decimal that [`clinger`] converts exactly (the value `str::parse` gives). Most
/// numbers in requests are such (`-12.345`, `0.007509`); the rest (exponents, more than 15 digits)
/// take `str::parse`.
fn number(bytes: &[u8]) -> (usize, Option<f64>) {
    let negative = bytes.first() == Some(&b'-');
    let start = usize::from(negative);
    let mut mantissa = 0u64;
    let mut i = digits(bytes, start, &mut mantissa);
    let mut count = i - start;
    let mut scale = 0;
    if bytes.get(i) == Some(&b'.') {
        let fraction = i + 1;
        i = digits(bytes, fraction, &mut mantissa);
        scale = i - fraction;
        count += scale;
    }
    let plain_end = i;
    while matches!(bytes.get(i), Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')) {
        i += 1;
    }
    let value = if i == plain_end { clinger(negative, mantissa, count, scale) } else { None };
    (i, value)
}

/// The digits from `at`, accumulated into `mantissa` (wrapping: `clinger` refuses more than 19); the
/// index after them.
fn digits(bytes: &[u8], mut at: usize, mantissa: &mut u64) -> usize {
    while let Some(d) = bytes.get(at).map(|b| b.wrapping_sub(b'0')).filter(|&d| d < 10) {
        *mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
        at += 1;
    }
    at
}

/// `±mantissa / 10^scale` when Clinger's fast path makes it exact: at most 19 digits read (so the
/// mantissa did not wrap), a mantissa of at most 2^53 and a power of ten of at most 10^22, both
/// exact doubles, so their quotient is correctly rounded. The one place both readers convert.
fn clinger(negative: bool, mantissa: u64, count: usize, scale: usize) -> Option<f64> {
    let exact = count <= 19 && mantissa <= 1 << 53 && scale < POW10.len();
    exact.then(|| {
        let magnitude = mantissa as f64 / POW10[scale];
        if negative { -magnitude } else { magnitude }
    })
}

// === response ===

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
    // Written by hand, not through a derived `Serialize`: the keys are constants that need no
    // escaping, and this is on every request's path.
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
            crate::json::write(&mut body, &(tensor.data().len() * tensor.datatype().size_of()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::{Reference, Task, Tolerance, VersionId};

    fn manifest() -> Manifest {
        let spec =
            |name: &str, datatype, shape: &[i64]| TensorSpec { name: name.into(), datatype, shape: shape.to_vec() };
        Manifest {
            name: "m".into(),
            version: VersionId::new("1"),
            description: String::new(),
            task: Task::Regression { prediction_output: "y".into() },
            model_file: "model.onnx".into(),
            sha256: String::new(),
            inputs: vec![spec("x", DataType::Fp32, &[-1, 3])],
            outputs: vec![spec("label", DataType::Int64, &[-1]), spec("p", DataType::Fp32, &[-1, 2])],
            allow_non_finite: vec![],
            training: serde_json::Value::Null,
            holdout_metrics: Default::default(),
            reference: Reference {
                tolerance: Tolerance { absolute: 0.0, relative: 0.0 },
                inputs: Default::default(),
                outputs: Default::default(),
            },
            profile: None,
        }
    }

    fn decode(json: &str) -> Result<InferRequest, Error> {
        decode_request(json.as_bytes(), None, &manifest())
    }

    #[test]
    fn decodes_flat_and_nested_json() {
        let flat =
            decode(r#"{"id":"a","inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6.5]}]}"#)
                .unwrap();
        let nested =
            decode(r#"{"id":"a","inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[4,5,6.5]]}]}"#)
                .unwrap();
        assert_eq!(flat.inputs, nested.inputs);
        assert_eq!(flat.inputs[0].data(), &TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]));
        assert_eq!(flat.id.as_deref(), Some("a"));
        assert_eq!(flat.outputs, OutputSelection::All { binary: false });
        assert_eq!(flat.rows(), 2);
    }

    #[track_caller]
    fn rejects(json: &str, needle: &str) {
        let err = decode(json).unwrap_err();
        assert!(err.message().contains(needle), "{:?} does not mention {needle:?}", err.message());
    }

    #[test]
    fn rejects_each_kind_of_bad_input_with_a_message_that_names_it() {
        rejects("{", "invalid request JSON");
        rejects(r#"{"inputs":[]}"#, "missing input 'x'");
        rejects(r#"{"inputs":[{"name":"y","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#, "unknown input 'y'");
        rejects(
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]},{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
            "more than once",
        );
        rejects(
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP64","data":[1,2,3]}]}"#,
            "datatype FP64 but the model expects FP32",
        );
        rejects(
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP16","data":[1,2,3]}]}"#,
            "unsupported datatype 'FP16'",
        );
        rejects(
            r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#,
            "shape [1, 4] but the model expects [-1, 3]",
        );
        rejects(
            r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3]}]}"#,
            "holds 6 elements but the data has 3",
        );
        rejects(r#"{"inputs":[{"name":"x","shape":[1,-3],"datatype":"FP32","data":[1,2,3]}]}"#, "negative dimension");
        rejects(r#"{"inputs":[{"name":"x","shape":[0,3],"datatype":"FP32","data":[]}]}"#, "no rows");
        rejects(r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32"}]}"#, "has no data");
        rejects(
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,true,3]}]}"#,
            "FP32 data cannot hold true",
        );
        rejects(
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":["a",2,3]}]}"#,
            "FP32 data cannot hold a string",
        );
        rejects(r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,null,3]}]}"#, "cannot hold null");
        rejects(
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,{},3]}]}"#,
            "cannot hold an object",
        );
        rejects(r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3}]}"#, "invalid request JSON");
        rejects(
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3],"colour":1}]}"#,
            "unknown field `colour`",
        );
        rejects(
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"outputs":[{"name":"nope"}]}"#,
            "unknown output 'nope'",
        );
        rejects(
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":12}}]}"#,
            "no Inference-Header-Content-Length",
        );
    }

    #[test]
    fn decodes_every_datatype_from_json_and_binary() {
        let cases = [
            ("FP32", "[1.5, -2, 3]", TensorData::Fp32(vec![1.5, -2.0, 3.0])),
            ("FP64", "[1e-300, 2, 3.25]", TensorData::Fp64(vec![1e-300, 2.0, 3.25])),
            ("INT64", "[-9007199254740993, 0, 2.0]", TensorData::Int64(vec![-9_007_199_254_740_993, 0, 2])),
            ("INT32", "[-7, 7, 2147483647]", TensorData::Int32(vec![-7, 7, i32::MAX])),
            ("BOOL", "[true, false, true]", TensorData::Bool(vec![true, false, true])),
        ];
        for (datatype, json_data, expected) in cases {
            let mut m = manifest();
            m.inputs[0].datatype = DataType::parse(datatype).unwrap();
            let json =
                format!(r#"{{"inputs":[{{"name":"x","shape":[1,3],"datatype":"{datatype}","data":{json_data}}}]}}"#);
            let decoded = decode_request(json.as_bytes(), None, &m).unwrap_or_else(|e| panic!("{datatype}: {e}"));
            assert_eq!(decoded.inputs[0].data(), &expected, "{datatype} from JSON");

            let size = expected.len() * expected.datatype().size_of();
            let header = format!(
                r#"{{"inputs":[{{"name":"x","shape":[1,3],"datatype":"{datatype}","parameters":{{"binary_data_size":{size}}}}}]}}"#
            );
            let mut body = header.clone().into_bytes();
            expected.write_le_bytes(&mut body);
            let decoded = decode_request(&body, Some(header.len()), &m).unwrap();
            assert_eq!(decoded.inputs[0].data(), &expected, "{datatype} from binary");
        }
        // Values that do not fit their datatype are refused, not truncated.
        let mut m = manifest();
        m.inputs[0].datatype = DataType::Int32;
        let err = decode_request(
            br#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"INT32","data":[1,2,3000000000]}]}"#,
            None,
            &m,
        )
        .unwrap_err();
        assert!(err.message().contains("INT32 data cannot hold 3000000000"), "{}", err.message());
        m.inputs[0].datatype = DataType::Int64;
        let err =
            decode_request(br#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"INT64","data":[1,2,2.5]}]}"#, None, &m)
                .unwrap_err();
        assert!(err.message().contains("INT64 data cannot hold 2.5"), "{}", err.message());
        m.inputs[0].datatype = DataType::Bool;
        let err =
            decode_request(br#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"BOOL","data":[1,0,1]}]}"#, None, &m)
                .unwrap_err();
        assert!(err.message().contains("BOOL data cannot hold 1"), "{}", err.message());
    }

    #[test]
    fn rejects_non_finite_values_unless_allowed() {
        let json = r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","parameters":{"binary_data_size":24}}]}"#;
        let mut body = json.as_bytes().to_vec();
        TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, f32::NAN, 6.0]).write_le_bytes(&mut body);
        let err = decode_request(&body, Some(json.len()), &manifest()).unwrap_err();
        assert!(err.message().contains("NaN or infinity at element 4 (row 1)"), "{}", err.message());
        let mut allowing = manifest();
        allowing.allow_non_finite = vec!["x".into()];
        assert!(decode_request(&body, Some(json.len()), &allowing).is_ok());
    }

    #[test]
    fn binary_inputs_and_lying_lengths() {
        let json = r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":12}}],"parameters":{"binary_data_output":true}}"#;
        let mut body = json.as_bytes().to_vec();
        TensorData::Fp32(vec![1.0, 2.0, 3.0]).write_le_bytes(&mut body);
        let ok = decode_request(&body, Some(json.len()), &manifest()).unwrap();
        assert_eq!(ok.inputs[0].data(), &TensorData::Fp32(vec![1.0, 2.0, 3.0]));
        assert_eq!(ok.outputs, OutputSelection::All { binary: true });

        let message = |body: &[u8], header: usize| {
            decode_request(body, Some(header), &manifest()).unwrap_err().message().to_owned()
        };
        let beyond = message(&body, body.len() + 1);
        assert!(
            beyond.contains(&format!("is {} but the body has only {} bytes", body.len() + 1, body.len())),
            "{beyond}"
        );
        assert!(message(&body[..body.len() - 4], json.len()).contains("only 8 bytes of binary data remain"));
        let mut extra = body.clone();
        extra.extend_from_slice(&[0; 4]);
        assert!(message(&extra, json.len()).contains("4 bytes of binary data beyond"));
        let short = json.replace("12", "8");
        let mut body = short.as_bytes().to_vec();
        TensorData::Fp32(vec![1.0, 2.0]).write_le_bytes(&mut body);
        assert!(message(&body, short.len()).contains("holds 3 elements but the data has 2"));
    }

    #[test]
    fn encodes_json_and_binary_outputs() {
        let outputs = vec![
            Tensor::new(vec![1], TensorData::Int64(vec![1])).unwrap(),
            Tensor::new(vec![1, 2], TensorData::Fp32(vec![0.25, 0.75])).unwrap(),
        ];
        let specs = manifest().outputs;
        // An id that needs escaping: the body is written by hand.
        let head = || ResponseHead { model_name: "m", model_version: "1", id: Some("r\"1\\\n") };
        let json = encode_response(head(), &specs, &outputs, &OutputSelection::All { binary: false });
        assert_eq!(json.header_length, None);
        let value: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
        assert_eq!(value["model_version"], "1");
        assert_eq!(value["id"], "r\"1\\\n");
        assert_eq!(
            value["outputs"][0],
            serde_json::json!({"name": "label", "datatype": "INT64", "shape": [1], "data": [1]})
        );
        assert_eq!(value["outputs"][1]["data"], serde_json::json!([0.25, 0.75]));

        let mixed = encode_response(head(), &specs, &outputs, &OutputSelection::Listed(vec![(1, true), (0, false)]));
        let header = mixed.header_length.unwrap();
        let value: serde_json::Value = serde_json::from_slice(&mixed.body[..header]).unwrap();
        assert_eq!(value["outputs"][0]["name"], "p");
        assert_eq!(value["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(value["outputs"][1]["data"], serde_json::json!([1]));
        assert_eq!(
            TensorData::from_le_bytes(DataType::Fp32, &mixed.body[header..]).unwrap(),
            TensorData::Fp32(vec![0.25, 0.75])
        );
    }

    #[test]
    fn data_is_read_straight_into_the_declared_type() {
        let read = |raw: &str, datatype| scan_data(raw, datatype);
        assert_eq!(read("[[1, 2.5], [-3e2, 0.1]]", DataType::Fp32), Ok(TensorData::Fp32(vec![1.0, 2.5, -300.0, 0.1])));
        assert_eq!(read("[0.1]", DataType::Fp64), Ok(TensorData::Fp64(vec![0.1])));
        assert_eq!(read("[1, 2.0, -3]", DataType::Int64), Ok(TensorData::Int64(vec![1, 2, -3])));
        assert_eq!(read("[true, false]", DataType::Bool), Ok(TensorData::Bool(vec![true, false])));
        assert_eq!(read("7", DataType::Int32), Ok(TensorData::Int32(vec![7])));
        assert_eq!(read("[2.5]", DataType::Int64), Err("INT64 data cannot hold 2.5".into()));
        assert_eq!(read("[3000000000]", DataType::Int32), Err("INT32 data cannot hold 3000000000".into()));
        assert_eq!(read("[1]", DataType::Bool), Err("BOOL data cannot hold 1".into()));
        assert_eq!(
            read("[9223372036854775808]", DataType::Int64),
            Err("INT64 data cannot hold 9223372036854775808".into())
        );
    }

    proptest::proptest! {
        /// The fast path gives exactly what `str::parse` gives, wherever it applies.
        #[test]
        fn plain_decimals_parse_as_std_does(
            negative: bool,
            whole in "[0-9]{1,12}",
            fraction in proptest::option::of("[0-9]{0,14}"),
            exponent in proptest::option::of(-30i32..30),
        ) {
            let mut token = format!("{}{whole}", if negative { "-" } else { "" });
            if let Some(fraction) = fraction.filter(|f| !f.is_empty()) {
                token = format!("{token}.{fraction}");
            }
            if let Some(exponent) = exponent {
                token = format!("{token}e{exponent}");
            }
            let (length, value) = number(format!("{token},").as_bytes());
            proptest::prop_assert_eq!(length, token.len());
            let expected: f64 = token.parse().unwrap();
            if let Some(value) = value {
                proptest::prop_assert_eq!(value.to_bits(), expected.to_bits(), "{}", token);
            }
            let data = scan_data(&format!("[{token}]"), DataType::Fp64).unwrap();
            proptest::prop_assert_eq!(data, TensorData::Fp64(vec![expected]));
        }
    }

    #[test]
    fn the_plain_reader_leaves_everything_else_to_serde() {
        let body =
            |data: &str| format!(r#"{{"inputs":[{{"name":"x","shape":[1,3],"datatype":"FP32","data":{data}}}]}}"#);
        for plain in [
            "[1,2,3]",
            "[[-0.5, 0, 12.25]]",
            " [ 1 , [2] , 3 ] ",
            "[1e2,2E-3,3e+1]",
            "[12345678901234567890,2,3]",
            "[0.11249999701976776,2,3]",
        ] {
            assert!(plain::read(body(plain).as_bytes()).is_some(), "{plain}");
        }
        for other in [
            "[1e400,2,3]",
            "[1e,2,3]",
            "[01,2,3]",
            "[1.,2,3]",
            "[.5,2,3]",
            "[1,2,3,]",
            "[1 2 3]",
            "[true,2,3]",
            "[\"1\",2,3]",
        ] {
            assert!(plain::read(body(other).as_bytes()).is_none(), "{other}");
        }
        for other in [
            r#"{"id":"a\"b","inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"INT64","data":[1,2,3]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"outputs":[{"name":"p"}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3],"parameters":{}}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]} x"#,
            r#"{"inputs":[{"name":"x","name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
            r#"{"inputs":[]}"#,
        ] {
            assert!(plain::read(other.as_bytes()).is_none(), "{other}");
        }
    }

    proptest::proptest! {
        /// Whatever the plain reader accepts, serde accepts too, and the decoded requests (or the
        /// errors) are the same. Weighted toward requests it does accept.
        #[test]
        fn the_plain_reader_agrees_with_serde(
            id in proptest::prop_oneof![2 => proptest::strategy::Just(""), 4 => proptest::strategy::Just(r#""id":"r-1""#),
                1 => proptest::strategy::Just(r#""id":"a\"b""#), 1 => proptest::strategy::Just(r#""id":null"#)],
            name in proptest::prop_oneof![6 => proptest::strategy::Just("x"), 1 => proptest::strategy::Just("y"),
                1 => proptest::strategy::Just("x\\u0041")],
            rows in 1usize..3,
            odd_shape in proptest::prop_oneof![8 => proptest::strategy::Just(""), 1 => proptest::strategy::Just("[1, 3.0]"),
                1 => proptest::strategy::Just("[01,3]"), 1 => proptest::strategy::Just("[1,-3]")],
            datatype in proptest::prop_oneof![6 => proptest::strategy::Just("FP32"), 2 => proptest::strategy::Just("FP64"),
                1 => proptest::strategy::Just("INT64"), 1 => proptest::strategy::Just("BOOL")],
            numbers in proptest::collection::vec(proptest::prop_oneof![
                12 => proptest::sample::select(vec!["0", "-0", "1", "-2.5", "0.007509", "12.75", "493.8", "-0.0", "123456789.123456", "0.1"]),
                1 => proptest::sample::select(vec!["1e3", "01", "1.", "9007199254740993", "0.1234567890123456789", "true", "1.0000000000000002", "1e400", "0.11249999701976776", "-2.5E-3"]),
            ], 6),
            nested: bool,
            extra in proptest::prop_oneof![8 => proptest::strategy::Just(""), 1 => proptest::strategy::Just(r#""parameters":{}"#),
                1 => proptest::strategy::Just(r#""colour":1"#)],
            space in proptest::sample::select(vec!["", " ", "\n\t "]),
            id_last: bool,
        ) {
            let numbers = &numbers[..rows * 3];
            let shape = if odd_shape.is_empty() { format!("[{rows},3]") } else { odd_shape.to_owned() };
            let data = if nested {
                let rows: Vec<String> = numbers.chunks(3).map(|row| format!("[{}]", row.join(&format!(",{space}")))).collect();
                format!("[{}]", rows.join(","))
            } else {
                format!("[{}]", numbers.join(&format!("{space},")))
            };
            let input = format!(
                r#"{{"datatype":{space}"{datatype}","name":"{name}",{space}"shape":{shape},"data":{data}}}"#
            );
            let mut fields = vec![format!(r#""inputs":[{input}]"#)];
            for field in [id, extra] {
                if !field.is_empty() {
                    if id_last { fields.push(field.to_owned()) } else { fields.insert(0, field.to_owned()) }
                }
            }
            let json = format!("{{{space}{}{space}}}", fields.join(&format!(",{space}")));
            if let Some(fast) = plain::read(json.as_bytes()) {
                let slow: RequestJson<'_> = serde_json::from_str(&json).expect("serde accepts what the plain reader does");
                let manifest = manifest();
                let fast = decode_parsed(fast, &[], false, &manifest);
                let slow = decode_parsed(slow, &[], false, &manifest);
                match (fast, slow) {
                    (Ok(fast), Ok(slow)) => {
                        proptest::prop_assert_eq!(&fast.id, &slow.id);
                        proptest::prop_assert_eq!(&fast.inputs, &slow.inputs);
                        proptest::prop_assert_eq!(&fast.outputs, &slow.outputs);
                    }
                    (Err(fast), Err(slow)) => proptest::prop_assert_eq!(fast.message(), slow.message()),
                    (fast, slow) => proptest::prop_assert!(false, "{json}: {fast:?} vs {slow:?}"),
                }
            }
        }
    }
}
