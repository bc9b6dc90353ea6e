//! Shadow scoring and the outcome log on a real server: the champion's answers are untouched by
//! challengers (also faulty ones), every sampled request leaves one paired record equal to calling
//! each version directly, canaries answer their share, and shutdown loses no accepted record.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, infer_body};
use gauntlet::model::{Backend, Model, ModelError, Tensor};
use gauntlet::registry::ModelHook;
use gauntlet::repository::VersionId;
use gauntlet::traffic::TrafficPlan;
use serde_json::{Value, json};

/// A model's holdout rows (features only).
fn holdout_rows(model: &str) -> Vec<Vec<f64>> {
    common::holdout(model).rows
}

async fn infer(server: &TestServer, path: &str, body: &Value) -> (u16, String) {
    let response = reqwest::Client::new().post(server.url(path)).body(body.to_string()).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn with_id(rows: &[Vec<f64>], id: &str) -> Value {
    let mut body = infer_body(rows);
    body["id"] = json!(id);
    body
}

#[tokio::test]
async fn champion_answers_are_byte_identical_with_and_without_challengers() {
    let alone = TestServer::start(&["models.breast-cancer.challengers=[]", "models.diabetes.challengers=[]"]).await;
    let shadowed = TestServer::start(&[]).await;
    for (model, rows) in [("breast-cancer", holdout_rows("breast-cancer")), ("diabetes", holdout_rows("diabetes"))] {
        for (i, row) in rows.iter().enumerate().take(40) {
            let body = with_id(std::slice::from_ref(row), &format!("{model}-{i}"));
            let path = format!("/v2/models/{model}/infer");
            let (a, b) = (infer(&alone, &path, &body).await, infer(&shadowed, &path, &body).await);
            assert_eq!(a.0, 200);
            assert_eq!(a, b, "{model} row {i}");
        }
    }
}

#[tokio::test]
async fn each_sampled_request_leaves_one_record_equal_to_calling_each_version() {
    let mut server = TestServer::start(&[]).await;
    let rows = holdout_rows("breast-cancer");
    let n = 30;
    for (i, row) in rows.iter().enumerate().take(n) {
        let (status, _) =
            infer(&server, "/v2/models/breast-cancer/infer", &with_id(std::slice::from_ref(row), &format!("r{i}")))
                .await;
        assert_eq!(status, 200);
    }
    // The same rows, each version called directly.
    let mut direct = Vec::new();
    for version in ["1", "2", "3"] {
        let (status, text) =
            infer(&server, &format!("/v2/models/breast-cancer/versions/{version}/infer"), &infer_body(&rows[..n]))
                .await;
        assert_eq!(status, 200);
        direct.push(serde_json::from_str::<Value>(&text).unwrap());
    }
    server.stop().await.unwrap();

    let records = server.records();
    assert_eq!(records.len(), n, "one record per sampled request, none for direct calls");
    for record in &records {
        let i: usize = record["request_id"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(record["model"], "breast-cancer");
        assert_eq!(record["answered_by"], "1");
        common::assert_close(&record["inputs"]["input"], &json!([rows[i]]), 1e-6);
        let results = record["results"].as_array().unwrap();
        let versions: Vec<&str> = results.iter().map(|r| r["version"].as_str().unwrap()).collect();
        assert_eq!(versions, ["1", "2", "3"], "champion first, then challengers in configured order");
        assert_eq!(results[0]["role"], "champion");
        for (result, direct) in results.iter().zip(&direct) {
            assert_eq!(result["status"], "ok", "{record}");
            assert_eq!(
                result["sha256"],
                common::manifest("breast-cancer", result["version"].as_str().unwrap())["sha256"]
            );
            assert!(result["latency_ms"].as_f64().unwrap() > 0.0);
            assert_eq!(result["outputs"]["label"], json!([direct["outputs"][0]["data"][i]]));
            let probabilities = &direct["outputs"][1]["data"].as_array().unwrap()[2 * i..2 * i + 2];
            common::assert_close(&result["outputs"]["probabilities"], &json!([probabilities]), 1e-6);
        }
    }
    // DuckDB and pandas read the files as they are.
    let python = tokio::task::spawn_blocking(common::python).await.unwrap();
    let output = std::process::Command::new(python)
        .arg(common::root().join("tests/python/check_outcomes.py"))
        .arg(server.outcomes.path())
        .arg(n.to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["duckdb_rows"], n);
}

#[tokio::test]
async fn sampling_follows_the_request_id_hash_exactly() {
    let mut server = TestServer::start(&["models.diabetes.shadow_sample_rate=0.3", "outcomes.log_inputs=hash"]).await;
    let rows = holdout_rows("diabetes");
    let plan = TrafficPlan { shadow_sample_rate: 0.3, canary: None };
    let ids: Vec<String> = (0..100).map(|i| format!("sample-{i}")).collect();
    for (id, row) in ids.iter().zip(rows.iter().cycle()) {
        assert_eq!(infer(&server, "/v2/models/diabetes/infer", &with_id(std::slice::from_ref(row), id)).await.0, 200);
    }
    server.stop().await.unwrap();
    let mut logged: Vec<String> =
        server.records().iter().map(|r| r["request_id"].as_str().unwrap().to_owned()).collect();
    let mut expected: Vec<String> = ids.iter().filter(|id| plan.decide(id, None).shadow).cloned().collect();
    logged.sort();
    expected.sort();
    assert!(!expected.is_empty() && expected.len() < 100);
    assert_eq!(logged, expected);
    for record in server.records() {
        assert!(record.get("inputs").is_none());
        assert_eq!(record["inputs_sha256"].as_str().unwrap().len(), 64);
    }
}

/// A real model with a fault added after validation.
struct Faulty {
    inner: Box<dyn Model>,
    fault: Fault,
}

#[derive(Clone, Copy)]
enum Fault {
    Error,
    Panic,
    Slow(Duration),
    /// Burns this much CPU (not wall) time per run, then answers.
    Busy(Duration),
}

impl Model for Faulty {
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        match self.fault {
            Fault::Error => {
                Err(ModelError::Inference { backend: Backend::OnnxRuntime, message: "injected failure".into() })
            }
            // A real unwind, without the panic hook (whose backtrace capture is slow and noisy here).
            Fault::Panic => std::panic::resume_unwind(Box::new("injected panic")),
            Fault::Slow(delay) => {
                std::thread::sleep(delay);
                self.inner.infer(inputs)
            }
            Fault::Busy(cpu) => {
                let start = cpu_time::ThreadTime::now();
                while start.elapsed() < cpu {
                    std::hint::spin_loop();
                }
                self.inner.infer(inputs)
            }
        }
    }

    fn backend(&self) -> Backend {
        self.inner.backend()
    }
}

fn faults(faults: Vec<(&'static str, &'static str, Fault)>) -> gauntlet::ServerOptions {
    let hook: ModelHook = Arc::new(move |model: &str, version: &VersionId, inner: Box<dyn Model>| {
        match faults.iter().find(|(m, v, _)| *m == model && *v == version.as_str()) {
            Some(&(_, _, fault)) => Box::new(Faulty { inner, fault }) as Box<dyn Model>,
            None => inner,
        }
    });
    gauntlet::ServerOptions { model_hook: Some(hook) }
}

#[tokio::test]
async fn failing_panicking_and_slow_challengers_leave_the_champion_alone() {
    let options = faults(vec![
        ("breast-cancer", "2", Fault::Error),
        ("breast-cancer", "3", Fault::Panic),
        ("diabetes", "2", Fault::Slow(Duration::from_millis(2500))),
    ]);
    // Long enough that a busy machine does not turn errors into timeouts; shorter than the slow one.
    let mut server = TestServer::start_with_options(&["shadow_deadline_ms=1500", "shadow_threads=2"], options).await;
    let reference = TestServer::start(&["models.breast-cancer.challengers=[]", "models.diabetes.challengers=[]"]).await;
    for (model, n) in [("breast-cancer", 20), ("diabetes", 8)] {
        for (i, row) in holdout_rows(model).iter().enumerate().take(n) {
            let body = with_id(std::slice::from_ref(row), &format!("{model}-{i}"));
            let path = format!("/v2/models/{model}/infer");
            let got = infer(&server, &path, &body).await;
            assert_eq!(got.0, 200, "{}", got.1);
            assert_eq!(got, infer(&reference, &path, &body).await, "the champion's answer is unchanged");
        }
    }
    server.stop().await.unwrap();
    // After stop every shadow task has finished; the recorder is process-wide, so read it here.
    let metrics = gauntlet::metrics::handle().render();

    let records = server.records();
    assert_eq!(records.len(), 28);
    for record in records.iter().filter(|r| r["model"] == "breast-cancer") {
        let results = record["results"].as_array().unwrap();
        assert_eq!(results[0]["status"], "ok");
        assert_eq!(results[1]["status"], "error");
        assert!(results[1]["error"].as_str().unwrap().contains("injected failure"));
        assert!(results[1].get("outputs").is_none());
        assert_eq!(results[2]["status"], "panic");
    }
    for record in records.iter().filter(|r| r["model"] == "diabetes") {
        let results = record["results"].as_array().unwrap();
        assert_eq!(results[0]["status"], "ok");
        assert!(["timeout", "shed"].contains(&results[1]["status"].as_str().unwrap()), "{record}");
    }
    // Metrics are process-wide and other tests run beside this one: only the error and panic counts
    // are this test's alone.
    for needle in [
        r#"gauntlet_shadow_results_total{model="breast-cancer",version="2",status="error"} 20"#,
        r#"gauntlet_shadow_results_total{model="breast-cancer",version="3",status="panic"} 20"#,
        r#"gauntlet_shadow_records_total{model="breast-cancer",complete="false"}"#,
        r#"gauntlet_shadow_coverage_ratio{model="breast-cancer"}"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle}");
    }
}

/// Waits until the outcome log holds `n` records: how a test sees the shadow's progress (records
/// reach the log within its flush interval, set to 10 ms where this is used).
async fn wait_for_records(server: &TestServer, n: usize) {
    common::eventually(&format!("{n} records in the outcome log"), Duration::from_secs(60), || {
        std::future::ready((server.records().len() >= n).then_some(()))
    })
    .await
}

/// Twenty requests of diabetes' holdout rows, the first alone: its record is in before the rest go.
async fn send_twenty(server: &TestServer, rows: &[Vec<f64>]) {
    let url = server.url("/v2/models/diabetes/infer");
    let client = reqwest::Client::new();
    for (i, row) in rows.iter().take(20).enumerate() {
        let body = with_id(std::slice::from_ref(row), &format!("cpu-{i}")).to_string();
        assert_eq!(client.post(&url).body(body).send().await.unwrap().status(), 200);
        if i == 0 {
            wait_for_records(server, 1).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_over_the_cpu_budget_is_not_run_and_is_recorded_as_a_timeout() {
    // Each run of diabetes 2 burns 10 ms of CPU. At half a percent of a core the shadow thread then
    // owes about 2 s of rest; the jobs queued meanwhile pass their 1 s deadline and are not run.
    // The first request goes alone, so that the run it pays for is its alone (not a batch's).
    let busy = || faults(vec![("diabetes", "2", Fault::Busy(Duration::from_millis(10)))]);
    let rows = holdout_rows("diabetes");
    // The challenger's status in each record, and the size of the batch it ran in (if it ran).
    let results = |server: &TestServer| -> Vec<(String, u64)> {
        let result = |r: &Value| (r["status"].as_str().unwrap().to_owned(), r["batch"].as_u64().unwrap_or(1));
        server.records().iter().map(|r| result(&r["results"][1])).collect()
    };
    let fast_log = "outcomes.flush_interval_ms=10";
    let mut paced =
        TestServer::start_with_options(&["shadow_cpu_budget=0.005", "shadow_deadline_ms=1000", fast_log], busy()).await;
    send_twenty(&paced, &rows).await;
    // Every job reports: the first ran; the rest waited out the thread's rest and so their deadline.
    wait_for_records(&paced, 20).await;
    paced.stop().await.unwrap();
    let paced = results(&paced);
    let ran: Vec<u64> = paced.iter().filter(|(s, _)| s == "ok").map(|(_, batch)| *batch).collect();
    assert!(paced.len() == 20 && paced.iter().all(|(s, _)| s == "ok" || s == "timeout"), "{paced:?}");
    // One run at most: the first request's.
    assert!(ran.iter().all(|&batch| batch as usize == ran.len()), "the budget allows one run, no more: {paced:?}");

    // The same traffic with a whole core to spend: every job runs. (The same deadline: a job is
    // held up to three quarters of it for others, and the 10 ms runs are at idle priority while
    // other tests keep the CPUs busy.)
    let mut whole =
        TestServer::start_with_options(&["shadow_cpu_budget=1", "shadow_deadline_ms=1000", fast_log], busy()).await;
    send_twenty(&whole, &rows).await;
    whole.stop().await.unwrap();
    assert!(results(&whole).iter().all(|(s, _)| s == "ok"), "{:?}", results(&whole));
    assert_eq!(results(&whole).len(), 20);
}

#[tokio::test]
async fn a_full_shadow_queue_sheds_and_counts() {
    let options = faults(vec![("diabetes", "2", Fault::Slow(Duration::from_millis(30)))]);
    let mut server =
        TestServer::start_with_options(&["shadow_threads=1", "shadow_queue=1", "shadow_deadline_ms=5000"], options)
            .await;
    let rows = holdout_rows("diabetes");
    // Concurrent requests: far more challenger jobs than one thread and a queue of one can take.
    let client = reqwest::Client::new();
    let requests = (0..24).map(|i| {
        let (client, url) = (client.clone(), server.url("/v2/models/diabetes/infer"));
        let body = with_id(std::slice::from_ref(&rows[i]), &format!("shed-{i}")).to_string();
        async move { client.post(url).body(body).send().await.unwrap().status().as_u16() }
    });
    let statuses = futures_join_all(requests).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    server.stop().await.unwrap();
    // A request whose only challenger was shed has nothing to pair: no record, but it is counted.
    let records = server.records();
    assert!(!records.is_empty() && records.len() < 24, "{} records", records.len());
    assert!(records.iter().all(|r| r["results"][1]["status"] == "ok"), "what ran finished");
    let metrics = gauntlet::metrics::handle().render();
    let shed: usize = metrics
        .lines()
        .find(|l| l.starts_with(r#"gauntlet_shadow_results_total{model="diabetes",version="2",status="shed"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "shed challenger jobs are counted: {}",
                metrics.lines().filter(|l| l.contains("shadow_results")).collect::<Vec<_>>().join("\n")
            )
        });
    assert!(shed >= 24 - records.len(), "{shed} shed, {} records", records.len());
}

#[tokio::test]
async fn the_tensors_records_hold_are_bounded_in_bytes_and_given_back() {
    // A diabetes request holds 44 bytes (10 inputs and one answer, FP32): 100 bytes hold two.
    let options = faults(vec![("diabetes", "2", Fault::Slow(Duration::from_millis(30)))]);
    let settings =
        ["shadow_threads=1", "shadow_queue_bytes=100", "shadow_deadline_ms=5000", "outcomes.flush_interval_ms=10"];
    let mut server = TestServer::start_with_options(&settings, options).await;
    let rows = holdout_rows("diabetes");
    let client = reqwest::Client::new();
    let url = server.url("/v2/models/diabetes/infer");
    // One at a time, each waiting for its record: a written record gives its bytes back, so five
    // pass a bound that holds two.
    for (i, row) in rows.iter().take(5).enumerate() {
        let body = with_id(std::slice::from_ref(row), &format!("alone-{i}")).to_string();
        assert_eq!(client.post(&url).body(body).send().await.unwrap().status(), 200);
        wait_for_records(&server, i + 1).await;
    }
    // At once: the queue (8192 jobs) would take them all; the byte bound does not.
    let requests = (0..24).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        let body = with_id(std::slice::from_ref(&rows[5 + i]), &format!("burst-{i}")).to_string();
        async move { client.post(url).body(body).send().await.unwrap().status().as_u16() }
    });
    let statuses = futures_join_all(requests).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    server.stop().await.unwrap();
    let records = server.records();
    let burst = records.len() - 5;
    assert!((1..24).contains(&burst), "{burst} of the burst's 24 have a record: the byte bound shed none");
    assert!(records.iter().all(|r| r["results"][1]["status"] == "ok"), "what ran finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_shadow_keeps_a_short_queue() {
    // One run of diabetes 2 burns 10 ms of CPU: at half a percent of a core the thread then owes
    // about 2 s of rest, so it is paced while the burst below arrives.
    let options = faults(vec![("diabetes", "2", Fault::Busy(Duration::from_millis(10)))]);
    let settings = ["shadow_cpu_budget=0.005", "shadow_deadline_ms=5000", "outcomes.flush_interval_ms=10"];
    let mut server = TestServer::start_with_options(&settings, options).await;
    let rows = holdout_rows("diabetes");
    let client = reqwest::Client::new();
    let url = server.url("/v2/models/diabetes/infer");
    let body = with_id(std::slice::from_ref(&rows[0]), "paced-first").to_string();
    assert_eq!(client.post(&url).body(body).send().await.unwrap().status(), 200);
    wait_for_records(&server, 1).await;
    // More jobs than a paced queue keeps (1024), far fewer than the queue holds (8192).
    let n = 1400;
    for chunk in (0..n).collect::<Vec<usize>>().chunks(100) {
        let requests = chunk.iter().map(|&i| {
            let (client, url) = (client.clone(), url.clone());
            let body = with_id(std::slice::from_ref(&rows[i % rows.len()]), &format!("paced-{i}")).to_string();
            async move { client.post(url).body(body).send().await.unwrap().status().as_u16() }
        });
        assert!(futures_join_all(requests).await.iter().all(|&s| s == 200));
    }
    server.stop().await.unwrap();
    // Every request taken has its record (scored or timed out at shutdown); the rest were shed.
    let records = server.records().len() - 1;
    assert!(records < n, "{records} of {n} queued: a paced queue took them all");
    assert!(records >= 1024, "{records} of {n} queued: fewer than the paced queue holds");
}

/// Runs futures concurrently on the current runtime.
async fn futures_join_all<F: std::future::Future<Output = T> + Send + 'static, T: Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_canary_answers_its_share_and_the_champion_shadows_it() {
    let mut server = TestServer::start(&[
        "models.breast-cancer.canary.version=2",
        "models.breast-cancer.canary.share=0.5",
        "models.breast-cancer.canary.key_header=x-user-id",
    ])
    .await;
    let rows = holdout_rows("breast-cancer");
    let plan = TrafficPlan {
        shadow_sample_rate: 1.0,
        canary: Some(gauntlet::traffic::Canary { version: VersionId::new("2"), share: 0.5 }),
    };
    let client = reqwest::Client::new();
    let mut canaries = 0;
    for (i, row) in rows.iter().enumerate().take(40) {
        let id = format!("c{i}");
        let response = client
            .post(server.url("/v2/models/breast-cancer/infer"))
            .body(with_id(std::slice::from_ref(row), &id).to_string())
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        let expected = if plan.decide(&id, None).canary { "2" } else { "1" };
        assert_eq!(body["model_version"], expected, "{id}");
        canaries += usize::from(expected == "2");
    }
    assert!(canaries > 5 && canaries < 35, "{canaries}");
    // A client key keeps one user on one version, whatever the request id.
    let sticky: Vec<Value> = futures_join_all((0..10).map(|i| {
        let (client, url) = (client.clone(), server.url("/v2/models/breast-cancer/infer"));
        let body = with_id(&rows[..1], &format!("k{i}")).to_string();
        async move {
            client
                .post(url)
                .header("x-user-id", "user-42")
                .body(body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    }))
    .await;
    let versions: std::collections::BTreeSet<&str> =
        sticky.iter().map(|b| b["model_version"].as_str().unwrap()).collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
    server.stop().await.unwrap();

    for record in server.records().iter().filter(|r| r["answered_by"] == "2") {
        let results = record["results"].as_array().unwrap();
        assert_eq!((results[0]["version"].as_str(), results[0]["role"].as_str()), (Some("1"), Some("champion")));
        assert_eq!(results[0]["status"], "ok", "the champion shadows the canary");
    }
}

#[tokio::test]
async fn a_torn_line_from_a_crash_is_cut_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let torn = dir.path().join("outcomes-20260101T000000.000Z-1-0000.jsonl");
    std::fs::write(&torn, "{\"request_id\":\"a\"}\n{\"request_id\":\"b\",\"resu").unwrap();
    let mut config = common::config(&[]);
    config.outcomes.dir = dir.path().to_owned();
    let server = gauntlet::Server::bind(config).await.unwrap();
    drop(server);
    assert_eq!(std::fs::read_to_string(&torn).unwrap(), "{\"request_id\":\"a\"}\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_scored_in_batches_with_each_requests_own_outputs() {
    // Challenger 2 takes 20 ms a run, so a burst queues up behind it and is taken as batches.
    let options = faults(vec![("breast-cancer", "2", Fault::Slow(Duration::from_millis(20)))]);
    let mut server = TestServer::start_with_options(&[], options).await;
    let rows = Arc::new(holdout_rows("breast-cancer"));
    let n = 40;
    let server_url = server.url("/v2/models/breast-cancer/infer");
    let statuses = futures_join_all((0..n).map(|i| {
        let (rows, url) = (Arc::clone(&rows), server_url.clone());
        async move {
            let body = with_id(std::slice::from_ref(&rows[i]), &format!("b{i}"));
            reqwest::Client::new().post(url).json(&body).send().await.unwrap().status().as_u16()
        }
    }))
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let mut direct = Vec::new();
    for version in ["1", "2", "3"] {
        let path = format!("/v2/models/breast-cancer/versions/{version}/infer");
        let (status, text) = infer(&server, &path, &infer_body(&rows[..n])).await;
        assert_eq!(status, 200);
        direct.push(serde_json::from_str::<Value>(&text).unwrap());
    }
    server.stop().await.unwrap();
    let records = server.records();
    assert_eq!(records.len(), n);
    let mut largest_batch = 1;
    for record in &records {
        let i: usize = record["request_id"].as_str().unwrap()[1..].parse().unwrap();
        for (result, direct) in record["results"].as_array().unwrap().iter().zip(&direct) {
            assert_eq!(result["status"], "ok", "{record}");
            largest_batch = largest_batch.max(result["batch"].as_u64().unwrap_or(1));
            assert_eq!(result["outputs"]["label"], json!([direct["outputs"][0]["data"][i]]), "{record}");
            let probabilities = &direct["outputs"][1]["data"].as_array().unwrap()[2 * i..2 * i + 2];
            common::assert_close(&result["outputs"]["probabilities"], &json!([probabilities]), 1e-6);
        }
    }
    assert!(largest_batch > 1, "no batch formed behind a 20 ms challenger");
}

/// `n` one-row breast-cancer requests at once (ids `{prefix}{i}`, row `i` of `rows`, cycling), each
/// answered 200: their answers, in order.
async fn all_at_once(server: &TestServer, rows: &Arc<Vec<Vec<f64>>>, n: usize, prefix: &str) -> Vec<Value> {
    let url = server.url("/v2/models/breast-cancer/infer");
    futures_join_all((0..n).map(|i| {
        let (rows, url, id) = (Arc::clone(rows), url.clone(), format!("{prefix}{i}"));
        async move {
            let body = with_id(std::slice::from_ref(&rows[i % rows.len()]), &id);
            let response = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_champion_answers_each_request_as_alone_with_its_own_id_and_record() {
    // Every version on the inference pool (inline_max_us = 0), where concurrent requests run together;
    // a batch waits up to 20 ms for more (these models take microseconds: a free pool thread would
    // otherwise run each as it comes).
    let mut server = TestServer::start(&[
        "inline_max_us=0",
        "models.breast-cancer.batching.max_batch=16",
        "models.breast-cancer.batching.max_queue_delay_us=20000",
    ])
    .await;
    let rows = Arc::new(holdout_rows("breast-cancer"));
    let n = 120;
    let before = server.champion_batches("breast-cancer", "1").await;
    let answers = all_at_once(&server, &rows, n, "c").await;
    let after = server.champion_batches("breast-cancer", "1").await;
    let (calls, batched_rows) = (after.0 - before.0, after.1 - before.1);
    assert_eq!(batched_rows, n as f64, "each request's row ran once");
    assert!(calls < batched_rows, "{n} concurrent requests ran in {calls} calls: some together");
    // The same rows in one request of more rows than max_batch: run alone, unbatched.
    let rows_used: Vec<Vec<f64>> = (0..n).map(|i| rows[i % rows.len()].clone()).collect();
    let (status, text) = infer(&server, "/v2/models/breast-cancer/versions/1/infer", &infer_body(&rows_used)).await;
    assert_eq!(status, 200);
    let alone: Value = serde_json::from_str(&text).unwrap();
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer["id"], format!("c{i}"), "each answer carries its own request's id");
        assert_eq!(answer["outputs"][0]["data"], json!([alone["outputs"][0]["data"][i]]), "label of c{i}");
        let probabilities = &alone["outputs"][1]["data"].as_array().unwrap()[2 * i..2 * i + 2];
        common::assert_close(&answer["outputs"][1]["data"], &json!(probabilities), 1e-6);
    }
    server.stop().await.unwrap();
    // One paired record per request, whose champion outputs are the answer's.
    let records = server.records();
    assert_eq!(records.len(), n);
    for record in &records {
        let i: usize = record["request_id"].as_str().unwrap()[1..].parse().unwrap();
        let champion = &record["results"][0];
        assert_eq!(champion["version"], "1", "{record}");
        assert_eq!(champion["outputs"]["label"], answers[i]["outputs"][0]["data"], "{record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heavy_demo_version_comes_from_train_py_and_runs_concurrent_requests_together() {
    // What a newcomer runs: `models/train.py --heavy DIR` (breast-cancer 1 and the heavy 9).
    let repository = tempfile::tempdir().unwrap();
    let train = std::process::Command::new(common::python())
        .arg(common::root().join("models/train.py"))
        .arg("--heavy")
        .arg(repository.path())
        .status()
        .unwrap();
    assert!(train.success(), "models/train.py --heavy failed");
    let config = repository.path().join("heavy.toml");
    let models = repository.path().display();
    let toml = format!("models_dir = \"{models}\"\n[models.breast-cancer]\nchampion = \"9\"\nchallengers = [\"1\"]\n");
    std::fs::write(&config, toml).unwrap();
    // Default settings: its warm-up time places it on the pool, where requests are batched.
    let mut server = TestServer::start_from(Some(&config), &[], gauntlet::ServerOptions::default()).await;
    let rows = Arc::new(holdout_rows("breast-cancer"));
    let n = 64;
    let before = server.champion_batches("breast-cancer", "9").await;
    let answers = all_at_once(&server, &rows, n, "h").await;
    let after = server.champion_batches("breast-cancer", "9").await;
    let (calls, batched_rows) = (after.0 - before.0, after.1 - before.1);
    assert_eq!(batched_rows, n as f64, "the heavy version runs on the pool, batched");
    assert!(calls < batched_rows, "{n} concurrent requests ran in {calls} calls");
    // The same 64 rows in one request, more rows than max_batch (32): one call, unbatched.
    let (status, text) = infer(&server, "/v2/models/breast-cancer/infer", &infer_body(&rows[..n])).await;
    assert_eq!(status, 200);
    let alone: Value = serde_json::from_str(&text).unwrap();
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer["model_version"], "9");
        assert_eq!(answer["outputs"][0]["data"], json!([alone["outputs"][0]["data"][i]]), "label of h{i}");
        let probabilities = &alone["outputs"][1]["data"].as_array().unwrap()[2 * i..2 * i + 2];
        common::assert_close(&answer["outputs"][1]["data"], &json!(probabilities), 1e-4);
    }
    server.stop().await.unwrap();
    let records = server.records();
    assert_eq!(records.len(), n + 1, "one record per request, the 64-row one too");
    for record in &records {
        assert_eq!(record["results"][1]["version"], "1", "{record}");
        assert_eq!(record["results"][1]["status"], "ok", "the tiny challenger scored it: {record}");
    }
}

/// Requests that arrive apart are scored together: a challenger's job waits, up to
/// `shadow_max_wait_ms`, for others of its version, so a quiet gateway pays a model's fixed cost per
/// run once for several records. With 0, a job is scored as soon as a shadow thread takes it.
#[tokio::test]
async fn requests_that_arrive_apart_are_scored_together_within_the_wait() {
    let rows = holdout_rows("diabetes");
    for (wait, together) in [("shadow_max_wait_ms=4000", true), ("shadow_max_wait_ms=0", false)] {
        let settings = ["shadow_deadline_ms=5000", wait, "outcomes.flush_interval_ms=10"];
        let mut server = TestServer::start_with_options(&settings, faults(vec![])).await;
        let client = reqwest::Client::new();
        for (i, row) in rows.iter().take(12).enumerate() {
            let body = with_id(std::slice::from_ref(row), &format!("apart-{i}")).to_string();
            let url = server.url("/v2/models/diabetes/infer");
            assert_eq!(client.post(url).body(body).send().await.unwrap().status(), 200);
            if together {
                // Traffic of a quiet gateway: further apart than a shadow thread's longest idle
                // poll (16 ms), so each job is taken in a look of its own; 12 of them take far
                // less than the 4 s wait.
                tokio::time::sleep(Duration::from_millis(30)).await;
            } else {
                // Without a wait, each is scored alone: its record is in before the next is sent.
                wait_for_records(&server, i + 1).await;
            }
        }
        wait_for_records(&server, 12).await;
        server.stop().await.unwrap();
        let challenger: Vec<(String, u64)> = server
            .records()
            .iter()
            .map(|r| {
                (r["results"][1]["status"].as_str().unwrap().to_owned(), r["results"][1]["batch"].as_u64().unwrap_or(1))
            })
            .collect();
        assert!(challenger.iter().all(|(status, _)| status == "ok"), "{wait}: {challenger:?}");
        let expected = if together { 12 } else { 1 };
        assert!(challenger.iter().all(|&(_, batch)| batch == expected), "{wait}: {challenger:?}");
    }
}
