//! The Open Inference Protocol's (KServe V2) infer request and response, as JSON and with Triton's
//! binary tensor data extension: a JSON header of `Inference-Header-Content-Length` bytes, then the
//! raw little-endian tensors in the order of the inputs (or outputs) that declare `binary_data_size`.
//!
//! Decoding checks the request against the answering version's signature once, here: names, datatypes,
//! shapes, data length, non-finite values. Everything after works on well-formed tensors.
//!
//! The parts: this file (the request's types and every check), `plain` (the common request read in
//! one pass), `scan` (an input's JSON `data` read into its datatype), `number` (JSON numbers), and
//! `encode` (the response).

use std::borrow::Cow;

use serde::Deserialize;

mod encode;
mod number;
mod plain;
mod scan;

pub use self::encode::{EncodedResponse, ResponseHead, encode_response};
use self::scan::scan_data;
use crate::error::Error;
use crate::inference::signature::{self, Inputs};
use crate::model::{DataType, Tensor, TensorData};
use crate::repository::Manifest;

/// A decoded request: inputs in signature order, each checked against it.
#[derive(Debug)]
pub struct DecodedRequest {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    pub outputs: OutputSelection,
}

impl DecodedRequest {
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
pub fn decode_request(body: &[u8], header_length: Option<usize>, manifest: &Manifest) -> Result<DecodedRequest, Error> {
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
) -> Result<DecodedRequest, Error> {
    let mut inputs = Inputs::new(manifest);
    for input in request.inputs {
        decode_input(input, &mut inputs, &mut binary, has_binary)?;
    }
    if !binary.is_empty() {
        return Err(Error::invalid_input(format!(
            "the body has {} bytes of binary data beyond what the inputs' binary_data_size declare",
            binary.len()
        )));
    }
    let inputs = inputs.finish()?;
    let binary_output = request.parameters.unwrap_or_default().binary_data_output;
    let outputs = match request.outputs {
        None => OutputSelection::All { binary: binary_output },
        Some(list) => {
            let mut selected = Vec::with_capacity(list.len());
            for output in list {
                let index = signature::output(manifest, &output.name)?;
                if selected.iter().any(|&(i, _)| i == index) {
                    return Err(Error::invalid_input(format!("output '{}' is requested more than once", output.name)));
                }
                let binary = output.parameters.map_or(binary_output, |p| p.binary_data || binary_output);
                selected.push((index, binary));
            }
            OutputSelection::Listed(selected)
        }
    };
    Ok(DecodedRequest { id: request.id.map(Cow::into_owned), inputs, outputs })
}

fn decode_input(
    input: InputJson<'_>,
    inputs: &mut Inputs<'_>,
    binary: &mut &[u8],
    has_binary: bool,
) -> Result<(), Error> {
    let head = inputs.head(&input.name, &input.datatype, &input.shape)?;
    let name = &input.name;
    let datatype = head.datatype;
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
    inputs.put(head, data)
}

#[cfg(test)]
mod tests {
    use super::number::number;
    use super::*;
    use crate::model::TensorSpec;
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

    fn decode(json: &str) -> Result<DecodedRequest, Error> {
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

            let size = expected.byte_len();
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
