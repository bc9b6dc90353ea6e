//! The official Python client (`tritonclient.http`, default settings) against the demo gateway.
//!
//! Runs in the Python environment `scripts/python-env.sh` makes under `target/python` (made here on
//! first run: it needs python3 with pip and PyPI), or the interpreter `GAUNTLET_TEST_PYTHON` names.

mod common;

use std::process::Stdio;

use common::TestServer;

#[tokio::test]
async fn tritonclient_with_default_settings() {
    let python = tokio::task::spawn_blocking(common::python).await.unwrap();
    let mut server = TestServer::start(&[]).await;
    let output = tokio::process::Command::new(python)
        .arg(common::root().join("tests/python/check_tritonclient.py"))
        .arg("--url")
        .arg(server.addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("python runs");
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "tritonclient checks failed:\n{log}");
    assert!(log.contains("OK") && log.contains("Ran 8 tests"), "{log}");
    server.stop().await.unwrap();
}
