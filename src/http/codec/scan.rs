//! Scanning an input's JSON `data` (serde checked it is valid JSON) straight into its datatype.

use super::number::number;
use crate::model::{DataType, TensorData};

/// JSON `data` (already checked to be valid JSON): a flat or nested array of numbers or booleans,
/// read in row-major order straight into `datatype`. Numbers are read as f64 first (FP32 then
/// rounds, as a JSON client holding Python floats would); integer types take integers and floats
/// with no fractional part (`2.0`).
pub(super) fn scan_data(raw: &str, datatype: DataType) -> Result<TensorData, String> {
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
