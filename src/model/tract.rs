//! The tract backend: pure Rust, no native library, a narrower operator set.
//!
//! The optimised plan is `Send + Sync` and every run gets fresh state, so one plan serves every thread.
//! tract trusts the model's declared input facts, and `with_input_fact` would silently override a wrong
//! feature count, so the declared facts are checked against the manifest here instead.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::{
    self as tp, Datum, DatumType, Framework, InferenceModelExt, TValue, TVec, TypedModel, TypedRunnableModel,
};
use tract_onnx::tract_core::model::IntoRunnable;

use super::{Backend, DataType, Model, ModelError, Signature, Tensor, TensorData};

pub struct TractModel {
    plan: Arc<TypedRunnableModel>,
    outputs: Vec<DataType>,
}

impl TractModel {
    pub fn load(path: &Path, signature: &Signature) -> Result<Self, ModelError> {
        let load_error = |e: tp::TractError| ModelError::Load {
            backend: Backend::Tract,
            path: path.to_owned(),
            message: format!("{e:#}"),
        };
        let typed = tract_onnx::onnx().model_for_path(path).and_then(|m| m.into_typed()).map_err(load_error)?;
        check_signature(&typed, signature)?;
        let plan = typed.into_optimized().and_then(|m| m.into_runnable()).map_err(load_error)?;
        Ok(Self { plan, outputs: signature.outputs.iter().map(|s| s.datatype).collect() })
    }
}

impl Model for TractModel {
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let error = |e: tp::TractError| ModelError::Inference { backend: Backend::Tract, message: format!("{e:#}") };
        let values: TVec<TValue> = inputs.iter().map(to_tract).collect::<Result<_, _>>().map_err(error)?;
        let outputs = self.plan.run(values).map_err(error)?;
        outputs.iter().zip(&self.outputs).map(|(value, &datatype)| from_tract(value, datatype).map_err(error)).collect()
    }

    fn backend(&self) -> Backend {
        Backend::Tract
    }
}

fn to_tract(tensor: &Tensor) -> tp::TractResult<TValue> {
    let shape = tensor.shape();
    let t = match tensor.data() {
        TensorData::Fp32(v) => tp::Tensor::from_shape(shape, v)?,
        TensorData::Fp64(v) => tp::Tensor::from_shape(shape, v)?,
        TensorData::Int64(v) => tp::Tensor::from_shape(shape, v)?,
        TensorData::Int32(v) => tp::Tensor::from_shape(shape, v)?,
        TensorData::Bool(v) => tp::Tensor::from_shape(shape, v)?,
    };
    Ok(t.into())
}

fn from_tract(value: &TValue, datatype: DataType) -> tp::TractResult<Tensor> {
    // tract may compute integer outputs as TDim (its symbolic integer); cast to what the manifest says.
    fn values<T: Datum + Copy>(value: &TValue) -> tp::TractResult<Vec<T>> {
        Ok(value.cast_to::<T>()?.to_plain_array_view::<T>()?.iter().copied().collect())
    }
    let data = match datatype {
        DataType::Fp32 => TensorData::Fp32(values(value)?),
        DataType::Fp64 => TensorData::Fp64(values(value)?),
        DataType::Int64 => TensorData::Int64(values(value)?),
        DataType::Int32 => TensorData::Int32(values(value)?),
        DataType::Bool => TensorData::Bool(values(value)?),
    };
    Tensor::new(value.shape().to_vec(), data).map_err(|e| tp::TractError::msg(e.to_string()))
}

fn datatype_of(datum: DatumType) -> Option<DataType> {
    match datum {
        DatumType::F32 => Some(DataType::Fp32),
        DatumType::F64 => Some(DataType::Fp64),
        DatumType::I64 | DatumType::TDim => Some(DataType::Int64),
        DatumType::I32 => Some(DataType::Int32),
        DatumType::Bool => Some(DataType::Bool),
        _ => None,
    }
}

fn check_signature(model: &TypedModel, signature: &Signature) -> Result<(), ModelError> {
    let mismatch = ModelError::SignatureMismatch;
    let inputs = model.input_outlets().map_err(|e| mismatch(e.to_string()))?;
    if inputs.len() != signature.inputs.len() {
        return Err(mismatch(format!(
            "the model has {} inputs but the manifest lists {}",
            inputs.len(),
            signature.inputs.len()
        )));
    }
    for (outlet, spec) in inputs.iter().zip(&signature.inputs) {
        let name = &model.node(outlet.node).name;
        if *name != spec.name {
            return Err(mismatch(format!(
                "input {} is '{name}' in the model but '{}' in the manifest",
                outlet.node, spec.name
            )));
        }
        let fact = model.outlet_fact(*outlet).map_err(|e| mismatch(e.to_string()))?;
        if datatype_of(fact.datum_type) != Some(spec.datatype) {
            return Err(mismatch(format!(
                "input '{name}' is {:?} in the model but {} in the manifest",
                fact.datum_type, spec.datatype
            )));
        }
        let dims = fact.shape.dims();
        let compatible = dims.len() == spec.shape.len()
            && dims.iter().zip(&spec.shape).all(|(dim, &want)| match dim.to_i64() {
                Ok(got) => want < 0 || got == want,
                Err(_) => want < 0, // a symbolic dimension (the batch) fits only a free one
            });
        if !compatible {
            return Err(mismatch(format!(
                "input '{name}' has shape {:?} in the model but {:?} in the manifest",
                fact.shape, spec.shape
            )));
        }
    }
    let outputs = model.output_outlets().map_err(|e| mismatch(e.to_string()))?;
    if outputs.len() != signature.outputs.len() {
        return Err(mismatch(format!(
            "the model has {} outputs but the manifest lists {}",
            outputs.len(),
            signature.outputs.len()
        )));
    }
    for (outlet, spec) in outputs.iter().zip(&signature.outputs) {
        let fact = model.outlet_fact(*outlet).map_err(|e| mismatch(e.to_string()))?;
        if datatype_of(fact.datum_type) != Some(spec.datatype) {
            return Err(mismatch(format!(
                "output '{}' is {:?} in the model but {} in the manifest",
                spec.name, fact.datum_type, spec.datatype
            )));
        }
    }
    Ok(())
}
