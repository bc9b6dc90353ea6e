//! Both backends on the real demo models: what each loads, what validation refuses, and that they
//! agree wherever both run.

use std::path::Path;

use gauntlet::model::{BackendChoice, Loader, OnnxRuntime, Tensor, TensorData};
use gauntlet::registry::{LoadSettings, LoadStep, ModelVersion, load_version};
use gauntlet::repository::holdout::Holdout;
use gauntlet::repository::{Repository, VersionId};

fn repository() -> Repository {
    Repository::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("models")).unwrap()
}

fn with_onnxruntime() -> Loader {
    let runtime = OnnxRuntime::init(None).expect("ONNX Runtime is fetched by build.rs; see README");
    Loader::new(Ok(runtime), 2)
}

fn without_onnxruntime() -> Loader {
    Loader::new(Err("not installed (test)".into()), 2)
}

fn settings(backend: BackendChoice) -> LoadSettings {
    LoadSettings { backend, warmup_runs: 2, inline_max: std::time::Duration::from_micros(250) }
}

fn load(
    loader: &Loader,
    model: &str,
    version: &str,
    backend: BackendChoice,
) -> Result<ModelVersion, gauntlet::registry::LoadError> {
    load_version(&repository(), loader, model, &VersionId::new(version), settings(backend))
}

const ALL: [(&str, &str); 6] = [
    ("breast-cancer", "1"),
    ("breast-cancer", "2"),
    ("breast-cancer", "3"),
    ("breast-cancer", "4"),
    ("diabetes", "1"),
    ("diabetes", "2"),
];

#[test]
fn onnxruntime_loads_and_validates_every_demo_version() {
    let loader = with_onnxruntime();
    for (model, version) in ALL {
        let loaded = load(&loader, model, version, BackendChoice::Auto).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.backend().as_str(), "ort", "{model}/{version}");
    }
}

#[test]
fn tract_runs_what_it_supports_and_each_refusal_names_its_step() {
    let loader = with_onnxruntime();
    for (model, version) in [("breast-cancer", "3"), ("diabetes", "1")] {
        let loaded = load(&loader, model, version, BackendChoice::Tract).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.backend().as_str(), "tract");
    }
    // Operators tract does not implement: refused when the backend loads the file.
    for (model, version) in [("breast-cancer", "1"), ("breast-cancer", "2"), ("diabetes", "2")] {
        let error = load(&loader, model, version, BackendChoice::Tract).expect_err("tract cannot run this");
        assert_eq!(error.step, LoadStep::Backend, "{model}/{version}: {error}");
    }
}

#[test]
fn tract_wrong_random_forest_labels_are_refused_at_validation() {
    let error = load(&with_onnxruntime(), "breast-cancer", "4", BackendChoice::Tract).expect_err("must be refused");
    assert_eq!(error.step, LoadStep::Validation, "{error}");
    assert!(error.message.contains("output 'label'") && error.message.contains("labels must match exactly"), "{error}");
}

#[test]
fn auto_without_onnxruntime_falls_back_to_tract_and_says_how_to_get_it() {
    let loader = without_onnxruntime();
    let mlp = load(&loader, "breast-cancer", "3", BackendChoice::Auto).unwrap();
    assert_eq!(mlp.backend().as_str(), "tract");
    let error = load(&loader, "breast-cancer", "1", BackendChoice::Auto).err().unwrap();
    assert_eq!(error.step, LoadStep::Backend);
    assert!(error.message.contains("ONNX Runtime, which runs this model, is not available"), "{error}");
    assert!(error.message.contains("To get ONNX Runtime"), "{error}");
    let error = load(&loader, "breast-cancer", "3", BackendChoice::Ort).err().unwrap();
    assert!(error.message.contains("ONNX Runtime backend was requested but is not available"), "{error}");
}

/// Every holdout row, as one batch, from the committed CSV.
fn holdout(model: &str) -> Tensor {
    let holdout = Holdout::read(&repository().root().unwrap().join(model).join("holdout.csv")).unwrap();
    let (rows, features) = (holdout.rows.len(), holdout.features.len());
    let values = holdout.rows.iter().flatten().map(|&x| x as f32).collect();
    Tensor::new(vec![rows, features], TensorData::Fp32(values)).unwrap()
}

#[test]
fn onnxruntime_and_tract_agree_on_every_holdout_row() {
    let loader = with_onnxruntime();
    for (model, version) in [("breast-cancer", "3"), ("diabetes", "1")] {
        let input = vec![holdout(model)];
        let ort = load(&loader, model, version, BackendChoice::Ort).unwrap().infer(&input).unwrap();
        let tract = load(&loader, model, version, BackendChoice::Tract).unwrap().infer(&input).unwrap();
        assert_eq!(ort.len(), tract.len());
        for (a, b) in ort.iter().zip(&tract) {
            assert_eq!(a.shape(), b.shape(), "{model}/{version}");
            let (a, b) = (a.data().to_f64(), b.data().to_f64());
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(
                worst <= 1e-4 * (1.0 + a.iter().fold(0.0f64, |m, x| m.max(x.abs()))),
                "{model}/{version}: differ by {worst}"
            );
        }
    }
}

#[test]
fn holdout_accuracy_matches_the_manifest() {
    // The served model reproduces the training script's holdout metrics: the export, the manifest
    // and the CSV all describe the same model and split.
    let loaded = load(&with_onnxruntime(), "breast-cancer", "1", BackendChoice::Auto).unwrap();
    let rows = Holdout::read(&repository().root().unwrap().join("breast-cancer/holdout.csv")).unwrap();
    let truth: Vec<i64> = rows.truth.unwrap().1.iter().map(|&y| y as i64).collect();
    let outputs = loaded.infer(&[holdout("breast-cancer")]).unwrap();
    let TensorData::Int64(labels) = outputs[0].data() else { panic!("label is INT64") };
    let correct = labels.iter().zip(&truth).filter(|(a, b)| a == b).count();
    let accuracy = correct as f64 / truth.len() as f64;
    assert!((accuracy - loaded.manifest().holdout_metrics["accuracy"]).abs() < 1e-12);
}
