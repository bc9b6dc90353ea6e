//! The official Python client (`tritonclient.http`, default settings) against the demo gateway.
//!
//! Needs the Python environment that `scripts/python-env.sh` makes (the README's test command makes
//! it). Without it the test says so and passes, unless `CI` or `GAUNTLET_REQUIRE_PYTHON` is set, where
//! a missing environment fails.

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::TestServer;

fn python() -> Option<PathBuf> {
    let path = std::env::var_os("GAUNTLET_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::root().join("target/python/bin/python"));
    path.is_file().then_some(path)
}

#[tokio::test]
async fn tritonclient_with_default_settings() {
    let Some(python) = python() else {
        let required = std::env::var_os("CI").is_some() || std::env::var_os("GAUNTLET_REQUIRE_PYTHON").is_some();
        assert!(!required, "no Python test environment: run scripts/python-env.sh");
        eprintln!("SKIPPED: no Python test environment; run scripts/python-env.sh (the README's test command does)");
        return;
    };
    let server = TestServer::start(&[]).await;
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
