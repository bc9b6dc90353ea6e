//! Dense tensors as the gateway moves them between the wire and a backend: a shape and one flat,
//! row-major buffer of a known element type.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Element types, spelled as the Open Inference Protocol spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    #[serde(rename = "FP32")]
    Fp32,
    #[serde(rename = "FP64")]
    Fp64,
    #[serde(rename = "INT64")]
    Int64,
    #[serde(rename = "INT32")]
    Int32,
    #[serde(rename = "BOOL")]
    Bool,
}

impl DataType {
    pub const ALL: [DataType; 5] = [Self::Fp32, Self::Fp64, Self::Int64, Self::Int32, Self::Bool];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
            Self::Int64 => "INT64",
            Self::Int32 => "INT32",
            Self::Bool => "BOOL",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Bytes per element in Triton's binary tensor encoding (BOOL is one byte).
    pub fn size_of(self) -> usize {
        match self {
            Self::Fp32 | Self::Int32 => 4,
            Self::Fp64 | Self::Int64 => 8,
            Self::Bool => 1,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A flat, row-major element buffer.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Int64(Vec<i64>),
    Int32(Vec<i32>),
    Bool(Vec<bool>),
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            Self::Fp32(_) => DataType::Fp32,
            Self::Fp64(_) => DataType::Fp64,
            Self::Int64(_) => DataType::Int64,
            Self::Int32(_) => DataType::Int32,
            Self::Bool(_) => DataType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Fp32(v) => v.len(),
            Self::Fp64(v) => v.len(),
            Self::Int64(v) => v.len(),
            Self::Int32(v) => v.len(),
            Self::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its elements' size in bytes, as `write_le_bytes` writes them.
    pub fn byte_len(&self) -> usize {
        self.len() * self.datatype().size_of()
    }

    /// Every element as f64, for comparisons with tolerances (labels and booleans included).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Self::Fp32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Self::Fp64(v) => v.clone(),
            Self::Int64(v) => v.iter().map(|&x| x as f64).collect(),
            Self::Int32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Self::Bool(v) => v.iter().map(|&x| f64::from(u8::from(x))).collect(),
        }
    }

    /// Element `i` as f64 (labels and booleans included); `None` past the end.
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        match self {
            Self::Fp32(v) => v.get(i).map(|&x| f64::from(x)),
            Self::Fp64(v) => v.get(i).copied(),
            Self::Int64(v) => v.get(i).map(|&x| x as f64),
            Self::Int32(v) => v.get(i).map(|&x| f64::from(x)),
            Self::Bool(v) => v.get(i).map(|&x| f64::from(u8::from(x))),
        }
    }

    /// The index of the first NaN or infinity, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        match self {
            Self::Fp32(v) => v.iter().position(|x| !x.is_finite()),
            Self::Fp64(v) => v.iter().position(|x| !x.is_finite()),
            _ => None,
        }
    }

    /// Little-endian bytes, as Triton's binary tensor extension carries them.
    pub fn write_le_bytes(&self, out: &mut Vec<u8>) {
        match self {
            Self::Fp32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Self::Fp64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Self::Int64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Self::Int32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Self::Bool(v) => out.extend(v.iter().map(|&x| u8::from(x))),
        }
    }

    /// Reads little-endian bytes; `bytes.len()` must be a multiple of the element size.
    pub fn from_le_bytes(datatype: DataType, bytes: &[u8]) -> Result<Self, TensorError> {
        let size = datatype.size_of();
        if !bytes.len().is_multiple_of(size) {
            return Err(TensorError::BinaryLength { datatype, bytes: bytes.len() });
        }
        fn chunks<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            bytes.chunks_exact(N).map(|c| f(c.try_into().expect("chunks_exact yields N bytes"))).collect()
        }
        Ok(match datatype {
            DataType::Fp32 => Self::Fp32(chunks(bytes, f32::from_le_bytes)),
            DataType::Fp64 => Self::Fp64(chunks(bytes, f64::from_le_bytes)),
            DataType::Int64 => Self::Int64(chunks(bytes, i64::from_le_bytes)),
            DataType::Int32 => Self::Int32(chunks(bytes, i32::from_le_bytes)),
            DataType::Bool => {
                let mut values = Vec::with_capacity(bytes.len());
                for &b in bytes {
                    match b {
                        0 => values.push(false),
                        1 => values.push(true),
                        other => return Err(TensorError::BoolByte(other)),
                    }
                }
                Self::Bool(values)
            }
        })
    }
}

/// A shape and its data; `shape.iter().product() == data.len()` always holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Self, TensorError> {
        let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        match expected {
            Some(n) if n == data.len() => Ok(Self { shape, data }),
            _ => Err(TensorError::ShapeMismatch { shape, elements: data.len() }),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }

    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    /// Rows: the first dimension (1 for a scalar).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// The tensors stacked along the first dimension; `None` unless they share datatype and the
    /// other dimensions.
    pub fn concat_rows(parts: &[&Tensor]) -> Option<Tensor> {
        let first = parts.first()?;
        if first.shape.is_empty() || parts.iter().any(|t| t.shape.get(1..) != first.shape.get(1..)) {
            return None;
        }
        let rows = parts.iter().map(|t| t.rows()).sum();
        let total = parts.iter().map(|t| t.data.len()).sum();
        macro_rules! stack {
            ($variant:ident) => {{
                let mut all = Vec::with_capacity(total);
                for part in parts {
                    let TensorData::$variant(v) = &part.data else { return None };
                    all.extend_from_slice(v);
                }
                TensorData::$variant(all)
            }};
        }
        let data = match first.data {
            TensorData::Fp32(_) => stack!(Fp32),
            TensorData::Fp64(_) => stack!(Fp64),
            TensorData::Int64(_) => stack!(Int64),
            TensorData::Int32(_) => stack!(Int32),
            TensorData::Bool(_) => stack!(Bool),
        };
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Tensor::new(shape, data).ok()
    }

    /// The tensor cut along the first dimension into pieces of `rows` rows each; `None` unless
    /// they add up to its rows.
    pub fn split_rows(&self, rows: &[usize]) -> Option<Vec<Tensor>> {
        if self.shape.is_empty() || rows.iter().sum::<usize>() != self.rows() {
            return None;
        }
        let per_row = self.data.len() / self.rows().max(1);
        let mut start = 0;
        let mut pieces = Vec::with_capacity(rows.len());
        for &n in rows {
            let range = start * per_row..(start + n) * per_row;
            start += n;
            let data = match &self.data {
                TensorData::Fp32(v) => TensorData::Fp32(v[range].to_vec()),
                TensorData::Fp64(v) => TensorData::Fp64(v[range].to_vec()),
                TensorData::Int64(v) => TensorData::Int64(v[range].to_vec()),
                TensorData::Int32(v) => TensorData::Int32(v[range].to_vec()),
                TensorData::Bool(v) => TensorData::Bool(v[range].to_vec()),
            };
            let mut shape = self.shape.clone();
            shape[0] = n;
            pieces.push(Tensor::new(shape, data).ok()?);
        }
        Some(pieces)
    }

    /// Builds a tensor from nested JSON arrays of numbers (`[[1.0, 2.0], [3.0, 4.0]]`), as manifests
    /// store reference rows; the nesting gives the shape.
    pub fn from_nested_json(value: &serde_json::Value, datatype: DataType) -> Result<Self, TensorError> {
        fn walk(
            value: &serde_json::Value,
            depth: usize,
            shape: &mut Vec<usize>,
            flat: &mut Vec<f64>,
        ) -> Result<(), TensorError> {
            match value {
                serde_json::Value::Array(items) => {
                    if shape.len() == depth {
                        shape.push(items.len());
                    } else if shape[depth] != items.len() {
                        return Err(TensorError::Ragged);
                    }
                    items.iter().try_for_each(|item| walk(item, depth + 1, shape, flat))
                }
                serde_json::Value::Number(n) if shape.len() == depth => {
                    flat.push(n.as_f64().ok_or(TensorError::NotANumber)?);
                    Ok(())
                }
                serde_json::Value::Bool(b) if shape.len() == depth => {
                    flat.push(f64::from(u8::from(*b)));
                    Ok(())
                }
                _ => Err(TensorError::Ragged),
            }
        }
        let (mut shape, mut flat) = (Vec::new(), Vec::new());
        walk(value, 0, &mut shape, &mut flat)?;
        let data = match datatype {
            DataType::Fp32 => TensorData::Fp32(flat.iter().map(|&x| x as f32).collect()),
            DataType::Fp64 => TensorData::Fp64(flat),
            DataType::Int64 => TensorData::Int64(flat.iter().map(|&x| x as i64).collect()),
            DataType::Int32 => TensorData::Int32(flat.iter().map(|&x| x as i32).collect()),
            DataType::Bool => TensorData::Bool(flat.iter().map(|&x| x != 0.0).collect()),
        };
        Self::new(shape, data)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    #[error("shape {shape:?} holds {} elements but the data has {elements}", shape.iter().product::<usize>())]
    ShapeMismatch { shape: Vec<usize>, elements: usize },
    #[error("{bytes} bytes of binary data is not a whole number of {datatype} elements")]
    BinaryLength { datatype: DataType, bytes: usize },
    #[error("BOOL binary data must be bytes 0 or 1, found {0}")]
    BoolByte(u8),
    #[error("nested arrays are ragged or mix arrays and numbers")]
    Ragged,
    #[error("a value is not a number")]
    NotANumber,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_round_trip_every_datatype() {
        let cases = [
            TensorData::Fp32(vec![1.5, -0.0, f32::MAX]),
            TensorData::Fp64(vec![1e-300, 2.0]),
            TensorData::Int64(vec![i64::MIN, 0, i64::MAX]),
            TensorData::Int32(vec![-7, 7]),
            TensorData::Bool(vec![true, false, true]),
        ];
        for data in cases {
            let mut bytes = Vec::new();
            data.write_le_bytes(&mut bytes);
            assert_eq!(bytes.len(), data.len() * data.datatype().size_of());
            assert_eq!(TensorData::from_le_bytes(data.datatype(), &bytes).unwrap(), data);
        }
    }

    #[test]
    fn binary_rejects_partial_elements_and_bad_bools() {
        assert!(matches!(TensorData::from_le_bytes(DataType::Fp32, &[0; 7]), Err(TensorError::BinaryLength { .. })));
        assert_eq!(TensorData::from_le_bytes(DataType::Bool, &[0, 2]), Err(TensorError::BoolByte(2)));
    }

    #[test]
    fn shape_must_match_data() {
        assert!(Tensor::new(vec![2, 3], TensorData::Fp32(vec![0.0; 6])).is_ok());
        assert!(Tensor::new(vec![2, 3], TensorData::Fp32(vec![0.0; 5])).is_err());
        // An overflowing shape is an error, not a panic.
        assert!(Tensor::new(vec![usize::MAX, 3], TensorData::Fp32(vec![])).is_err());
    }

    #[test]
    fn nested_json_gives_shape() {
        let t = Tensor::from_nested_json(&serde_json::json!([[1, 2, 3], [4, 5, 6]]), DataType::Int64).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.data(), &TensorData::Int64(vec![1, 2, 3, 4, 5, 6]));
        assert_eq!(
            Tensor::from_nested_json(&serde_json::json!([[1], [2, 3]]), DataType::Fp32),
            Err(TensorError::Ragged)
        );
    }

    #[test]
    fn rows_stack_and_split_back() {
        let a = Tensor::new(vec![1, 2], TensorData::Fp32(vec![1.0, 2.0])).unwrap();
        let b = Tensor::new(vec![2, 2], TensorData::Fp32(vec![3.0, 4.0, 5.0, 6.0])).unwrap();
        let stacked = Tensor::concat_rows(&[&a, &b]).unwrap();
        assert_eq!(stacked.shape(), [3, 2]);
        assert_eq!(stacked.split_rows(&[1, 2]).unwrap(), vec![a.clone(), b]);
        let labels = Tensor::new(vec![3], TensorData::Int64(vec![7, 8, 9])).unwrap();
        assert_eq!(labels.split_rows(&[2, 1]).unwrap()[1].data(), &TensorData::Int64(vec![9]));
        assert_eq!(labels.split_rows(&[2, 2]), None);
        let other = Tensor::new(vec![1, 3], TensorData::Fp32(vec![0.0; 3])).unwrap();
        assert_eq!(Tensor::concat_rows(&[&a, &other]), None);
    }
}
