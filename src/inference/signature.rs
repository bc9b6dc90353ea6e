//! A request's inputs checked against a version's signature, whichever protocol carried them: names,
//! datatypes, shapes, the data's length, non-finite values, and that every input is there once with
//! one batch size. The messages say what is wrong in the protocol's own terms (input names,
//! datatypes as the protocol spells them, shapes with -1 for any size).

use crate::error::Error;
use crate::model::{DataType, Tensor, TensorData, TensorSpec};
use crate::repository::Manifest;

/// The inputs of one request as they are decoded, one slot per input of the signature.
pub struct Inputs<'m> {
    manifest: &'m Manifest,
    slots: Vec<Option<Tensor>>,
}

/// An input's name, datatype and shape, checked; its data comes next ([`Inputs::put`]).
pub struct Head {
    index: usize,
    pub datatype: DataType,
    pub shape: Vec<usize>,
}

impl Head {
    /// Elements the shape holds (saturating: a shape that large is refused with the data's length).
    pub fn elements(&self) -> usize {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX)
    }
}

impl<'m> Inputs<'m> {
    pub fn new(manifest: &'m Manifest) -> Self {
        Self { manifest, slots: vec![None; manifest.inputs.len()] }
    }

    /// The spec of the input named `name`, which must not have been given before.
    pub fn spec(&self, name: &str) -> Result<(usize, &'m TensorSpec), Error> {
        let specs = &self.manifest.inputs;
        let index = specs.iter().position(|s| s.name == name).ok_or_else(|| {
            Error::invalid_input(format!("unknown input '{name}'; the model expects {}", names(specs)))
        })?;
        if self.slots[index].is_some() {
            return Err(Error::invalid_input(format!("input '{name}' is given more than once")));
        }
        Ok((index, &specs[index]))
    }

    /// Checks an input's datatype (as the protocol spells it) and shape against its spec.
    pub fn head(&self, name: &str, datatype: &str, shape: &[i64]) -> Result<Head, Error> {
        let (index, spec) = self.spec(name)?;
        let name = &spec.name;
        let datatype = DataType::parse(datatype).ok_or_else(|| {
            Error::invalid_input(format!(
                "input '{name}' has unsupported datatype '{datatype}'; supported: FP32, FP64, INT64, INT32, BOOL"
            ))
        })?;
        if datatype != spec.datatype {
            return Err(Error::invalid_input(format!(
                "input '{name}' has datatype {datatype} but the model expects {}",
                spec.datatype
            )));
        }
        let shape: Vec<usize> =
            shape.iter().map(|&d| usize::try_from(d)).collect::<Result<_, _>>().map_err(|_| {
                Error::invalid_input(format!("input '{name}' has a negative dimension in shape {shape:?}"))
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
        Ok(Head { index, datatype, shape })
    }

    /// The input's data: its length must match the shape, and its values be finite unless the
    /// manifest allows otherwise.
    pub fn put(&mut self, head: Head, data: TensorData) -> Result<(), Error> {
        let name = &self.manifest.inputs[head.index].name;
        let tensor = Tensor::new(head.shape, data).map_err(|e| Error::invalid_input(format!("input '{name}': {e}")))?;
        if !self.manifest.allow_non_finite.iter().any(|n| n == name)
            && let Some(at) = tensor.data().first_non_finite()
        {
            let per_row = tensor.data().len() / tensor.shape()[0].max(1);
            return Err(Error::invalid_input(format!(
                "input '{name}' has NaN or infinity at element {at} (row {}); this model does not accept non-finite values",
                at / per_row.max(1)
            )));
        }
        self.slots[head.index] = Some(tensor);
        Ok(())
    }

    /// Every input, in the signature's order, all with one batch size.
    pub fn finish(self) -> Result<Vec<Tensor>, Error> {
        let specs = &self.manifest.inputs;
        let inputs: Vec<Tensor> = self
            .slots
            .into_iter()
            .zip(specs)
            .map(|(t, spec)| {
                t.ok_or_else(|| {
                    Error::invalid_input(format!("missing input '{}'; the model expects {}", spec.name, names(specs)))
                })
            })
            .collect::<Result<_, _>>()?;
        let rows = inputs.first().and_then(|t| t.shape().first());
        if let Some(other) = inputs.iter().find(|t| t.shape().first() != rows) {
            return Err(Error::invalid_input(format!(
                "inputs disagree on the batch size: {:?} and {:?} rows",
                rows,
                other.shape().first()
            )));
        }
        Ok(inputs)
    }
}

/// The index of the output named `name` in the signature.
pub fn output(manifest: &Manifest, name: &str) -> Result<usize, Error> {
    manifest.outputs.iter().position(|s| s.name == name).ok_or_else(|| {
        Error::invalid_input(format!("unknown output '{name}'; the model has {}", names(&manifest.outputs)))
    })
}

fn names(specs: &[TensorSpec]) -> String {
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    format!("[{}]", names.join(", "))
}
