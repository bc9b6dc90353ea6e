//! One-row inference per backend and demo model, and the protocol codec, with criterion.
//!
//! `cargo bench --bench inference` (add `-- one_row` or `-- codec` for one group). Figures are
//! per call on this machine; compare backends side by side in the same run, not across runs.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gauntlet::http::codec::{OutputSelection, ResponseHead, decode_request, encode_response};
use gauntlet::model::{BackendChoice, Loader, OnnxRuntime, Tensor};
use gauntlet::registry::{BatchSettings, LoadSettings, load_version};
use gauntlet::repository::{Repository, VersionId};

// The server's allocator, for ONNX Runtime too (build.rs exports it to shared libraries), so the
// figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn repository() -> Repository {
    Repository::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("models")).unwrap()
}

fn first_row(model: &str, version: &str) -> Vec<Tensor> {
    let entry = repository().version(model, &VersionId::new(version)).unwrap();
    let manifest = entry.manifest;
    let rows: Vec<Vec<f64>> = serde_json::from_value(manifest.reference.inputs["input"].clone()).unwrap();
    let one = serde_json::json!([rows[0]]);
    vec![Tensor::from_nested_json(&one, manifest.inputs[0].datatype).unwrap()]
}

fn one_row(c: &mut Criterion) {
    let loader = Loader::new(OnnxRuntime::init(None), 1);
    let batching = BatchSettings { max_batch: 1, max_queue_delay: Duration::ZERO, queue: 1 };
    let settings =
        |backend| LoadSettings { backend, warmup_runs: 10, inline_max: Duration::from_micros(250), batching };
    let mut group = c.benchmark_group("one_row");
    group.throughput(Throughput::Elements(1));
    let versions = [
        ("breast-cancer", "1", "logreg"),
        ("breast-cancer", "2", "gboost"),
        ("breast-cancer", "3", "mlp"),
        ("breast-cancer", "4", "forest"),
        ("diabetes", "1", "ridge"),
        ("diabetes", "2", "gboost"),
    ];
    for (model, version, kind) in versions {
        let input = first_row(model, version);
        for (backend, label) in [(BackendChoice::Ort, "ort"), (BackendChoice::Tract, "tract")] {
            // Versions a backend refuses (tract: Scaler, gradient boosting, wrong forest labels) are skipped.
            let Ok(loaded) = load_version(&repository(), &loader, model, &VersionId::new(version), settings(backend))
            else {
                continue;
            };
            group.bench_function(format!("{label}/{model}-{version}-{kind}"), |b| {
                b.iter(|| loaded.infer(black_box(&input)).unwrap())
            });
        }
    }
    group.finish();
}

fn codec(c: &mut Criterion) {
    let manifest = repository().version("breast-cancer", &VersionId::new("1")).unwrap().manifest;
    let rows: Vec<Vec<f64>> = serde_json::from_value(manifest.reference.inputs["input"].clone()).unwrap();
    let json = serde_json::json!({
        "id": "bench-1",
        "inputs": [{ "name": "input", "shape": [1, 30], "datatype": "FP32", "data": rows[0] }]
    })
    .to_string();
    let header = serde_json::json!({
        "inputs": [{ "name": "input", "shape": [1, 30], "datatype": "FP32", "parameters": { "binary_data_size": 120 } }],
        "parameters": { "binary_data_output": true }
    })
    .to_string();
    let mut binary = header.clone().into_bytes();
    for v in &rows[0] {
        binary.extend_from_slice(&(*v as f32).to_le_bytes());
    }
    let outputs = vec![
        Tensor::new(vec![1], gauntlet::model::TensorData::Int64(vec![1])).unwrap(),
        Tensor::new(vec![1, 2], gauntlet::model::TensorData::Fp32(vec![0.031_017_96, 0.968_982])).unwrap(),
    ];
    let head = || ResponseHead { model_name: "breast-cancer", model_version: "1", id: Some("bench-1") };

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_json_one_row", |b| {
        b.iter(|| decode_request(black_box(json.as_bytes()), None, &manifest).unwrap())
    });
    group.bench_function("decode_binary_one_row", |b| {
        b.iter(|| decode_request(black_box(&binary), Some(header.len()), &manifest).unwrap())
    });
    group.bench_function("encode_json", |b| {
        b.iter(|| {
            encode_response(head(), &manifest.outputs, black_box(&outputs), &OutputSelection::All { binary: false })
        })
    });
    group.bench_function("encode_binary", |b| {
        b.iter(|| {
            encode_response(head(), &manifest.outputs, black_box(&outputs), &OutputSelection::All { binary: true })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = one_row, codec
}
criterion_main!(benches);
