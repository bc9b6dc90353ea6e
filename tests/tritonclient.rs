//! The official Python clients against the demo gateway, with default settings: `tritonclient.http`,
//! `tritonclient.grpc`, and KServe's `InferenceGRPCClient` (in an environment of its own).
//!
//! Runs in the Python environment `scripts/python-env.sh` makes under `target/python` (made here on
//! first run: it needs python3 with pip and PyPI), or the interpreter `GAUNTLET_TEST_PYTHON` names.

mod common;

use std::process::Stdio;

use common::TestServer;

/// Runs `script` (under `tests/python/`) with `args` in the interpreter `python`; its output.
async fn run_script(python: std::path::PathBuf, script: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(python)
        .arg(common::root().join("tests/python").join(script))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("python runs")
}

#[tokio::test]
async fn tritonclient_with_default_settings() {
    let python = tokio::task::spawn_blocking(common::python).await.unwrap();
    let mut server = TestServer::start(&[]).await;
    let output = run_script(python, "check_tritonclient.py", &["--url", &server.addr.to_string()]).await;
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "tritonclient checks failed:\n{log}");
    assert!(log.contains("OK") && log.contains("Ran 8 tests"), "{log}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn tritonclient_grpc_with_default_settings() {
    let python = tokio::task::spawn_blocking(common::python).await.unwrap();
    let mut server = TestServer::start(&[]).await;
    let args = ["--url", &server.grpc.unwrap().to_string(), "--rest", &server.addr.to_string()];
    let output = run_script(python, "check_tritonclient_grpc.py", &args).await;
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "tritonclient.grpc checks failed:\n{log}");
    assert!(log.contains("OK") && log.contains("Ran 6 tests"), "{log}");
    server.stop().await.unwrap();
}

/// KServe's client over gRPC: its answers equal REST's for the same rows, binary or typed.
#[tokio::test]
async fn kserve_inference_grpc_client() {
    let python = tokio::task::spawn_blocking(|| common::python_env(Some("kserve"))).await.unwrap();
    let mut server = TestServer::start(&[]).await;
    let output = run_script(python, "check_kserve_grpc.py", &["--url", &server.grpc.unwrap().to_string()]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the kserve client failed:\n{stderr}");
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!((&answer["server_ready"], &answer["model_ready"]), (&true.into(), &true.into()));
    let rows = common::holdout("breast-cancer").rows[..2].to_vec();
    let rest: serde_json::Value = reqwest::Client::new()
        .post(server.url("/v2/models/breast-cancer/infer"))
        .json(&common::infer_body(&rows))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rest_output =
        |name: &str| rest["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap()["data"].clone();
    for binary in ["binary=True", "binary=False"] {
        let got = &answer[binary];
        assert_eq!(got["model_version"], "1", "{binary}");
        assert_eq!(got["id"], format!("kserve-{}", &binary[7..]), "{binary}");
        let labels: Vec<i64> = serde_json::from_value(got["outputs"]["label"].clone()).unwrap();
        assert_eq!(serde_json::json!(labels), rest_output("label"), "{binary}");
        // numpy's float32 printed as float64, REST's as float32: compare as f32.
        let probabilities: Vec<Vec<f64>> = serde_json::from_value(got["outputs"]["probabilities"].clone()).unwrap();
        let rest_probabilities: Vec<f64> = serde_json::from_value(rest_output("probabilities")).unwrap();
        let got: Vec<f32> = probabilities.iter().flatten().map(|&p| p as f32).collect();
        let want: Vec<f32> = rest_probabilities.iter().map(|&p| p as f32).collect();
        assert_eq!(got, want, "{binary}");
    }
    assert_eq!(answer["wrong_shape"]["code"], "INVALID_ARGUMENT", "{answer}");
    assert!(answer["wrong_shape"]["details"].as_str().unwrap().contains("the model expects [-1, 30]"), "{answer}");
    server.stop().await.unwrap();
}
