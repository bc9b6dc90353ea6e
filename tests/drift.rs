//! Drift end to end on a real server: the held-out rows replayed unchanged raise no alert; replayed
//! with two features scaled, the deployment alerts on exactly those two features, and a webhook
//! receiver on loopback gets the event once (after a retry the gateway makes on its 503).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use common::TestServer;
use gauntlet::cli::loadtest::{LoadtestArgs, run};
use gauntlet::drift::DriftReport;
use gauntlet::drift::report::{Level, State};
use gauntlet::repository::profile::SeriesKind;
use parking_lot::Mutex;
use serde_json::Value;

const SHIFTED: [(&str, f64); 2] = [("mean radius", 1.3), ("worst texture", 1.25)];

// The count window holds the 143 holdout rows exactly twice: its PSIs are then the holdout's own
// (at most 0.16 against the training profile), while an arbitrary 300-row stretch of the replay
// reaches 0.19, too close to a threshold for a test.

/// POSTs received with the right bearer token: (Idempotency-Key, body). Answers the first one 503,
/// as a flaky receiver would (or every one, when `down`).
#[derive(Clone, Default)]
struct Receiver {
    calls: Arc<Mutex<Vec<(String, Value)>>>,
    down: bool,
}

impl Receiver {
    async fn start(&self) -> String {
        let calls = Arc::clone(&self.calls);
        let down = self.down;
        let app = axum::Router::new().route(
            "/hooks/drift",
            axum::routing::post(move |headers: HeaderMap, body: axum::Json<Value>| {
                let calls = Arc::clone(&calls);
                async move {
                    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer hook-secret") {
                        return StatusCode::UNAUTHORIZED;
                    }
                    let mut calls = calls.lock();
                    calls.push((key, body.0));
                    if down || calls.len() == 1 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::NO_CONTENT }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/drift", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn calls(&self) -> Vec<(String, Value)> {
        self.calls.lock().clone()
    }
}

/// A gateway with drift windows fit for replays of the holdout, evaluated often, every sample
/// taken, alerting to a `Receiver`; `extra` settings last.
async fn start(extra: &[&str]) -> (TestServer, Receiver) {
    start_with(Receiver::default(), extra).await
}

async fn start_with(receiver: Receiver, extra: &[&str]) -> (TestServer, Receiver) {
    let webhook = format!("drift.webhook_url={}", receiver.start().await);
    let mut settings = vec![
        "drift.window_rows=286",
        "drift.min_rows=200",
        "drift.evaluate_interval_ms=50",
        "drift.max_samples_per_s=0",
        // The time window admits max_window_rows / window_s rows a second: all of these replays.
        "drift.max_window_rows=3000000",
        "drift.webhook_backoff_ms=20",
        "drift.webhook_bearer_token=hook-secret",
        &webhook,
    ];
    settings.extend_from_slice(extra);
    (TestServer::start(&settings).await, receiver)
}

/// The holdout CSV with each `SHIFTED` feature multiplied by its factor.
fn shifted_holdout(dir: &Path) -> std::path::PathBuf {
    let mut holdout = common::holdout("breast-cancer");
    let columns: Vec<(usize, f64)> = SHIFTED
        .iter()
        .map(|(name, factor)| (holdout.features.iter().position(|h| h == name).unwrap(), *factor))
        .collect();
    for row in &mut holdout.rows {
        for &(i, factor) in &columns {
            // Scaled as an f32, as the gateway reads the feature.
            row[i] = f64::from(row[i] as f32 * factor as f32);
        }
    }
    let path = dir.join("shifted.csv");
    holdout.write(&path).unwrap();
    path
}

fn replay(server: &TestServer, data: std::path::PathBuf, requests: u64) -> LoadtestArgs {
    LoadtestArgs {
        concurrency: Some(4),
        connections: 4,
        threads: None,
        requests: Some(requests),
        ..common::loadtest_args(server, "breast-cancer", data)
    }
}

async fn drift(server: &TestServer) -> DriftReport {
    let response = reqwest::get(server.url("/admin/models/breast-cancer/drift")).await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The first report that has seen `rows` rows and been evaluated after them.
async fn evaluated(server: &TestServer, rows: u64) -> DriftReport {
    let mut first_with_rows = None;
    // Long: the monitor runs at idle priority, so a busy machine delays it (the test machine too).
    for _ in 0..600 {
        let report = drift(server).await;
        if report.rows_seen == rows {
            match first_with_rows {
                None => first_with_rows = Some(report.evaluations),
                Some(e) if report.evaluations > e => return report,
                Some(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the drift monitor never evaluated {rows} rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_on_exactly_the_shifted_features_and_calls_the_webhook_once() {
    let (mut server, receiver) = start(&[]).await;
    let holdout = common::models_dir().join("breast-cancer/holdout.csv");

    // Unchanged: the held-out rows come from the training distribution. Their labels follow.
    let summary = run(&LoadtestArgs { feedback: true, ..replay(&server, holdout, 400) }).await.unwrap();
    assert_eq!(summary.ok, 400);
    let report = evaluated(&server, 400).await;
    assert!(report.profile);
    assert!(report.state < State::Alert, "unchanged rows alerted: {:?}", report.drifted);
    assert!(!report.alerting && report.drifted.is_empty());
    assert!(report.windows.iter().all(|w| w.judged && w.rows == if w.window == "rows" { 286 } else { 400 }));
    // Concept drift: none, the champion is as accurate on these labelled rows as on the holdout.
    let mut report = report;
    for _ in 0..600 {
        if report.concept.iter().all(|c| c.labelled_rows >= 286) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        report = drift(&server).await;
    }
    for c in &report.concept {
        assert_eq!(c.metric, "accuracy");
        let (value, holdout) = (c.value.unwrap(), c.holdout.unwrap());
        assert!((value - holdout).abs() < 0.02, "{c:?}");
    }

    // Shifted: 400 more rows push the count window's 286 rows all into the shifted distribution.
    let dir = tempfile::tempdir().unwrap();
    let summary = run(&replay(&server, shifted_holdout(dir.path()), 400)).await.unwrap();
    assert_eq!(summary.ok, 400);
    let report = evaluated(&server, 800).await;
    assert!(report.alerting, "no alert after the shift: {report:?}");
    assert_eq!(report.state, State::Alert);
    let shifted: BTreeSet<String> = SHIFTED.iter().map(|(n, _)| n.to_string()).collect();
    let features_at_alert: BTreeSet<String> = report
        .windows
        .iter()
        .flat_map(|w| &w.series)
        .filter(|s| s.kind == SeriesKind::Feature && s.level == Level::Alert)
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(features_at_alert, shifted);
    let rows_window = report.windows.iter().find(|w| w.window == "rows").unwrap();
    for s in rows_window.series.iter().filter(|s| shifted.contains(&s.name)) {
        assert!(s.psi.unwrap() > 0.25 && s.ks.unwrap() > 0.2, "{s:?}");
    }

    // The webhook: one event, tried twice (the receiver refused the first try) under one key.
    let mut calls = receiver.calls();
    for _ in 0..600 {
        if calls.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        calls = receiver.calls();
    }
    // More evaluations in the alert state must not send more events.
    let later = report.evaluations + 10;
    while drift(&server).await.evaluations < later {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = receiver.calls();
    assert_eq!(calls.len(), 2, "expected one retried event: {calls:?}");
    assert_eq!(calls[0].0, calls[1].0, "a retry carries the same Idempotency-Key");
    let event = &calls[1].1;
    assert_eq!(event["event"], "drift.alert");
    assert_eq!(event["model"], "breast-cancer");
    assert_eq!(event["id"], calls[0].0.as_str());
    // What had crossed when the alert began: the shifted features cross one by one as the window
    // fills, so at least one of them, and no other feature (a prediction may have crossed too).
    let predictions = ["label", "probabilities[1]"];
    let drifted: Vec<&str> = event["drifted"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let features: Vec<&str> = drifted.iter().copied().filter(|d| !predictions.contains(d)).collect();
    assert!(!features.is_empty() && features.iter().all(|f| shifted.contains(*f)), "{drifted:?}");

    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    // The recorder is the test process's, shared with the other tests here (whose breast-cancer
    // leaves its alert): the gauge's presence is this test's to check, its value the report's.
    assert!(metrics.contains(r#"gauntlet_drift_alerting{model="breast-cancer"}"#), "{metrics}");
    assert!(metrics.contains(r#"gauntlet_drift_webhook_events_total{result="delivered"}"#));
    every_metric_the_dashboards_read_exists(&metrics);

    // `gauntlet report` shows the same: the drifted features in its table, the report as JSON.
    let url = format!("http://{}", server.addr);
    let cli = |extra: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_gauntlet"))
            .args(["report", "breast-cancer", "--url", &url])
            .args(extra)
            .env_remove("GAUNTLET_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let json: DriftReport = serde_json::from_str(&cli(&["--drift", "--json"])).unwrap();
    assert!(json.alerting && shifted.iter().all(|s| json.drifted.contains(s)));
    let table = cli(&[]);
    assert!(table.contains("drift of breast-cancer") && table.contains(", alerting"), "{table}");
    for feature in &shifted {
        assert!(table.lines().any(|l| l.trim_start().starts_with(feature.as_str()) && l.ends_with("alert")), "{table}");
    }
    server.stop().await.unwrap();

    // Offline, from the outcome log's logged inputs: the same figures as the live time window,
    // which holds the same 800 rows.
    let live = report.windows.iter().find(|w| w.window == "time").unwrap();
    assert_eq!(live.rows, 800);
    let files = gauntlet::outcomes::reader::expand(&[format!("{}/*.jsonl", server.outcomes.path().display())]).unwrap();
    let repository = gauntlet::repository::Repository::open(common::models_dir()).unwrap();
    let (offline, summary) = gauntlet::drift::offline::read(&files, &repository, Default::default(), 200).unwrap();
    assert_eq!((summary.records, summary.without_inputs, summary.unusable), (800, 0, 0));
    let [offline] = offline.as_slice() else { panic!("{offline:?}") };
    assert_eq!(offline.windows.len(), 1);
    assert_eq!(offline.windows[0].series, live.series);
    let at_alert: Vec<&str> = live.series.iter().filter(|s| s.level == Level::Alert).map(|s| s.name.as_str()).collect();
    assert_eq!(offline.drifted, at_alert);
}

/// The alert rules and the Grafana dashboard in `deploy/` name only metrics this gateway exports.
fn every_metric_the_dashboards_read_exists(metrics: &str) {
    let files = ["deploy/prometheus/gauntlet-alerts.yml", "deploy/grafana/gauntlet-drift.json"];
    for file in files {
        let text = std::fs::read_to_string(common::root().join(file)).unwrap();
        if file.ends_with(".json") {
            let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
            assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() > 5));
        }
        let mut names = BTreeSet::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("gauntlet_") {
            let tail = &rest[at..];
            let end =
                tail.find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())).unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
        assert!(names.len() >= 8, "{file}: {names:?}");
        for name in names {
            let exported =
                metrics.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
            assert!(exported, "{file} reads {name}, which /metrics does not export");
        }
    }
}

/// With thresholds of its own (the holdout's noise stays under a warn of 0.22), the deployment
/// leaves the alert once the shifted rows are out of its windows, and the webhook hears that too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_the_alert_when_traffic_returns_and_says_so() {
    let (mut server, receiver) =
        start(&["drift.window_s=1", "models.breast-cancer.drift={psi_warn=0.22,psi_alert=0.25}"]).await;
    let dir = tempfile::tempdir().unwrap();
    run(&replay(&server, shifted_holdout(dir.path()), 400)).await.unwrap();
    let report = evaluated(&server, 400).await;
    assert!(report.alerting, "{report:?}");
    assert_eq!((report.thresholds.psi_warn, report.thresholds.psi_alert), (0.22, 0.25));

    run(&replay(&server, common::models_dir().join("breast-cancer/holdout.csv"), 572)).await.unwrap();
    // The count window is all unchanged rows now; the time window empties within a second.
    let mut report = evaluated(&server, 972).await;
    for _ in 0..600 {
        if !report.alerting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        report = drift(&server).await;
    }
    assert!(!report.alerting && report.state == State::Ok, "{report:?}");

    let mut events = Vec::new();
    for _ in 0..600 {
        events =
            receiver.calls().into_iter().map(|(key, body)| (key, body["event"].as_str().unwrap().to_owned())).collect();
        events.dedup();
        if events.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kinds: Vec<&str> = events.iter().map(|(_, kind)| kind.as_str()).collect();
    assert_eq!(kinds, ["drift.alert", "drift.resolved"]);
    assert_ne!(events[0].0, events[1].0, "two events, two ids");
    server.stop().await.unwrap();
}

/// A receiver that stays down while the gateway backs off for ten minutes: shutdown gives the
/// event up (counted `abandoned`) instead of waiting out the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_out_a_webhook_backoff() {
    let receiver = Receiver { down: true, ..Receiver::default() };
    let (mut server, receiver) = start_with(receiver, &["drift.webhook_backoff_ms=600000"]).await;
    let dir = tempfile::tempdir().unwrap();
    run(&replay(&server, shifted_holdout(dir.path()), 400)).await.unwrap();
    assert!(evaluated(&server, 400).await.alerting);
    for _ in 0..600 {
        if !receiver.calls().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(receiver.calls().len(), 1, "tried once, now backing off");
    server.stop().await.unwrap();
    // The recorder is the test process's: the other tests here never abandon an event.
    let metrics = gauntlet::metrics::handle().render();
    assert!(metrics.contains(r#"gauntlet_drift_webhook_events_total{result="abandoned"} 1"#), "{metrics}");
    assert!(!metrics.contains(r#"gauntlet_drift_webhook_events_total{result="failed"}"#), "{metrics}");
}
