//! Both backends on the real demo models: what each loads, what validation refuses, and that they
//! agree wherever both run.

mod common;

use std::path::Path;

use gauntlet::model::{BackendChoice, Loader, OnnxRuntime, Tensor, TensorData};
use gauntlet::registry::{BatchSettings, LoadSettings, LoadStep, ModelVersion, load_version};
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
    LoadSettings {
        backend,
        warmup_runs: 2,
        inline_max: std::time::Duration::from_micros(250),
        batching: BatchSettings { max_batch: 1, max_queue_delay: std::time::Duration::ZERO, queue: 1 },
    }
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

/// Rows of a holdout, one request each.
fn one_row_requests(model: &str) -> Vec<std::sync::Arc<Vec<Tensor>>> {
    let all = holdout(model);
    let rows = all.rows();
    all.split_rows(&vec![1; rows]).unwrap().into_iter().map(|row| std::sync::Arc::new(vec![row])).collect()
}

/// The champion path's batched calls and rows of a version so far, from this process's metrics.
fn batched_calls(model: &str, version: &str) -> (f64, f64) {
    common::champion_batches(&gauntlet::metrics::handle().render(), model, version)
}

#[tokio::test(flavor = "current_thread")]
async fn batched_answers_equal_each_row_run_alone_on_every_version_and_backend() {
    use gauntlet::executor::{Executor, InferencePool};
    // The recorder first: versions register their metrics with whichever is installed when they load.
    gauntlet::metrics::handle();
    let loader = with_onnxruntime();
    let executor = Executor::new(InferencePool::new("batch-test", 2, 1024).unwrap());
    let tract = [("breast-cancer", "3"), ("diabetes", "1")].map(|(m, v)| (m, v, BackendChoice::Tract));
    for (model, version, backend) in ALL.map(|(m, v)| (m, v, BackendChoice::Ort)).into_iter().chain(tract) {
        let settings = LoadSettings {
            // Every version on the pool, where requests are batched; a drain waits up to 100 ms for
            // more rows (these models take microseconds: without it a free thread would run each
            // row as it comes, and whether batches form would be the scheduler's affair).
            inline_max: std::time::Duration::ZERO,
            batching: BatchSettings {
                max_batch: 32,
                max_queue_delay: std::time::Duration::from_millis(100),
                queue: 1024,
            },
            ..settings(backend)
        };
        let loaded = load_version(&repository(), &loader, model, &VersionId::new(version), settings).unwrap();
        let loaded = std::sync::Arc::new(loaded);
        assert!(loaded.batcher().is_some(), "{model}/{version} has a batch dimension");
        let requests = one_row_requests(model);
        let before = batched_calls(model, version);
        // All queued in one pass (one runtime thread), within the queue delay: batches of 32.
        let answers =
            futures_util::future::join_all(requests.iter().map(|inputs| executor.infer(&loaded, inputs))).await;
        let after = batched_calls(model, version);
        let (calls, rows) = (after.0 - before.0, after.1 - before.1);
        assert_eq!(rows, requests.len() as f64, "{model}/{version} {backend:?}: every row ran once, batched");
        assert!(calls * 4.0 <= rows, "{model}/{version} {backend:?}: {rows} rows in {calls} calls: batches formed");
        let tolerance = loaded.manifest().reference.tolerance;
        let trees = loaded.manifest().description.contains("Boost") || loaded.manifest().description.contains("Forest");
        for (i, (inputs, answer)) in requests.iter().zip(answers).enumerate() {
            let batched = answer.unwrap_or_else(|e| panic!("{model}/{version} row {i}: {e}"));
            let alone = loaded.infer(inputs).unwrap();
            assert_eq!(batched.len(), alone.len());
            for (b, a) in batched.iter().zip(&alone) {
                assert_eq!(b.shape(), a.shape(), "{model}/{version} row {i}");
                let exact = trees || !matches!(a.data(), TensorData::Fp32(_) | TensorData::Fp64(_));
                let (b, a) = (b.data().to_f64(), a.data().to_f64());
                if exact {
                    assert_eq!(b, a, "{model}/{version} {backend:?} row {i}: labels and trees are identical");
                } else {
                    let within = a.iter().zip(&b).all(|(&x, &y)| tolerance.accepts(x, y));
                    assert!(within, "{model}/{version} {backend:?} row {i}: {b:?} vs alone {a:?}");
                }
            }
        }
    }
}
