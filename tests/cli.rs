//! The `gauntlet` binary as an operator runs it: config errors at start, serving, SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A spawned gateway that is killed if the test ends early (a failed assertion must not leave it
/// running, holding the harness), and its directory, removed after it.
struct Gateway {
    child: Option<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn sigterm(&self) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }

    fn wait(mut self) -> std::process::ExitStatus {
        self.child.take().expect("running").wait().unwrap()
    }

    fn terminate(self) -> std::process::ExitStatus {
        self.sigterm();
        self.wait()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `gauntlet serve` of the demo on free ports (REST and gRPC), logging JSON (the address is in it).
const SERVE_ON_FREE_PORTS: [&str; 9] = [
    "serve",
    "--config",
    "gauntlet.toml",
    "--listen",
    "127.0.0.1:0",
    "--grpc-listen",
    "127.0.0.1:0",
    "--log-format",
    "json",
];

/// The command, and the directory its outcome log and state go to: the gateway's own, not the
/// checkout's (tests run side by side, and two gateways writing one state directory race on its
/// checkpoint's rename), removed when the caller drops it.
fn gauntlet() -> (Command, tempfile::TempDir) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gauntlet"));
    let dir = tempfile::tempdir().unwrap();
    command
        .current_dir(common::root())
        .env_remove("RUST_LOG")
        .env("GAUNTLET_OUTCOMES__DIR", dir.path().join("outcomes"))
        .env("GAUNTLET_STATE_DIR", dir.path().join("state"));
    (command, dir)
}

#[test]
fn invalid_config_fails_at_start_naming_the_key() {
    // (flags, environment, stderr must contain)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (&["--listen", "not-an-address"], &[], "`listen`"),
        (&[], &[("GAUNTLET_MAX_REQUEST_BYTES", "many")], "`max_request_bytes`"),
        (&["--set", "models.diabetes.champion=9"], &[], "diabetes/9"),
        (&["--set", "inline_max_micros=3"], &[], "inline_max_micros"),
    ];
    for (args, env, needle) in cases {
        let (mut command, _dir) = gauntlet();
        let output =
            command.args(["serve", "--config", "gauntlet.toml"]).args(args).envs(env.iter().copied()).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn serves_then_exits_zero_on_sigterm() {
    let (mut command, dir) = gauntlet();
    let mut child = command.args(SERVE_ON_FREE_PORTS).stderr(Stdio::piped()).spawn().unwrap();
    // The address it bound is in its log.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let gateway = Gateway { child: Some(child), _dir: dir };
    let address = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            let entry: serde_json::Value = serde_json::from_str(&line).ok()?;
            entry["fields"]["address"].as_str().map(str::to_owned)
        })
        .expect("the gateway logs the address it serves on");
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::{Read, Write};
    write!(stream, "GET /v2/health/ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // In a fresh process the per-version metrics must be live (they were once registered before
    // the recorder existed, and silently dropped).
    let body = serde_json::json!({
        "inputs": [{ "name": "input", "shape": [1, 30], "datatype": "FP32", "data": common::reference_rows("breast-cancer", "1")[0] }]
    })
    .to_string();
    let exchange = |request: String| {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    let answer = exchange(format!(
        "POST /v2/models/breast-cancer/infer HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = exchange("GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_owned());
    for needle in [
        r#"gauntlet_inference_requests_total{model="breast-cancer",version="1",outcome="ok"} 1"#,
        r#"gauntlet_model_version_loaded{model="breast-cancer",version="1",backend="ort",role="champion"} 1"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle}");
    }

    let exit = gateway.terminate();
    assert_eq!(exit.code(), Some(0), "graceful shutdown exits 0");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}

/// Starts `gauntlet serve` on a free port with `env`; returns the child and its address.
fn spawn_serving(env: &[(&str, &std::path::Path)]) -> (Gateway, String) {
    let (gateway, address, _) = spawn_logged(env);
    (gateway, address)
}

/// As `spawn_serving`, also keeping its log's lines (JSON) as they come.
fn spawn_logged(env: &[(&str, &std::path::Path)]) -> (Gateway, String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let (mut command, dir) = gauntlet();
    let mut child = command
        .args(SERVE_ON_FREE_PORTS)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&log);
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if !sent && let Some(address) = entry["fields"]["address"].as_str() {
                let _ = tx.send(address.to_owned());
                sent = true;
            }
            lines.lock().unwrap().push(entry);
        }
    });
    let gateway = Gateway { child: Some(child), _dir: dir };
    let address = rx.recv_timeout(Duration::from_secs(60)).expect("the gateway logs its address");
    (gateway, address, log)
}

/// The fields of the log line whose message is `message`.
fn logged(log: &Arc<Mutex<Vec<serde_json::Value>>>, message: &str) -> serde_json::Value {
    let lines = log.lock().unwrap();
    let found = lines.iter().find(|l| l["fields"]["message"] == message);
    found.map(|l| l["fields"].clone()).unwrap_or_else(|| panic!("no '{message}' in {lines:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_accepted_record() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let outcomes = tempfile::tempdir().unwrap();
    // A shadow queue no run can fill: every answered request is then accepted for shadowing, and
    // each accepted one must reach the log by exit (those starved past the deadline as `timeout`).
    // A whole core of budget: a paced shadow would keep its queue short (`PACED_QUEUE`) and shed.
    let (queue, budget) = (std::path::Path::new("200000"), std::path::Path::new("2"));
    let (gateway, address) = spawn_serving(&[
        ("GAUNTLET_OUTCOMES__DIR", outcomes.path()),
        ("GAUNTLET_SHADOW_QUEUE", queue),
        ("GAUNTLET_SHADOW_CPU_BUDGET", budget),
    ]);
    let body = serde_json::json!({
        "inputs": [{ "name": "input", "shape": [1, 30], "datatype": "FP32", "data": common::reference_rows("breast-cancer", "1")[0] }]
    })
    .to_string();
    let ok = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let url = format!("http://{address}/v2/models/breast-cancer/infer");
    // Eight clients send until the gateway stops taking connections; the loop is bounded either way.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (client, url, body, ok) = (client.clone(), url.clone(), body.clone(), Arc::clone(&ok));
            tokio::spawn(async move {
                for _ in 0..100_000 {
                    let Ok(response) = client.post(&url).body(body.clone()).send().await else { break };
                    let status = response.status();
                    if response.bytes().await.is_err() {
                        break;
                    }
                    assert!(status == 200 || status == 503, "{status}");
                    if status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    while ok.load(Ordering::Relaxed) < 3000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gateway.sigterm();
    for c in clients {
        c.await.unwrap();
    }
    let exit = tokio::task::spawn_blocking(move || gateway.wait()).await.unwrap();
    assert_eq!(exit.code(), Some(0));

    let answered = ok.load(Ordering::Relaxed);
    let mut records = 0;
    for file in std::fs::read_dir(outcomes.path()).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "no torn line after a graceful stop");
        records += text.lines().count();
    }
    eprintln!("{answered} answered, {records} records");
    assert_eq!(records, answered, "every answered request was shadowed (rate 1) and its record written");
}

/// The comparison of `model` at `address` once it counts `labelled` labelled records.
async fn comparison_with(address: &str, model: &str, labelled: u64) -> serde_json::Value {
    let url = format!("http://{address}/admin/models/{model}/comparison");
    common::eventually(&format!("{labelled} labelled records at {address}"), Duration::from_secs(60), || async {
        let report: serde_json::Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
        (report["labelled_records"] == labelled).then_some(report)
    })
    .await
}

/// The drift report of breast-cancer at `address` once its windows have seen `rows` rows, labelled.
async fn drift_with(address: &str, rows: u64) -> serde_json::Value {
    let url = format!("http://{address}/admin/models/breast-cancer/drift");
    common::eventually(&format!("drift over {rows} rows at {address}"), Duration::from_secs(60), || async {
        let report: serde_json::Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
        // Every labelled row in the concept windows too: a record is joined once its challengers
        // are scored, which can be most of the shadow deadline after its answer.
        let joined = report["concept"].as_array()?.iter().all(|w| w["labelled_rows"] == rows);
        (report["rows_seen"] == rows && joined).then_some(report)
    })
    .await
}

/// `rows` holdout requests of breast-cancer, each with its label.
async fn labelled_traffic(address: &str, rows: u64) {
    let data = common::models_dir().join("breast-cancer/holdout.csv");
    let args = gauntlet::cli::loadtest::LoadtestArgs {
        concurrency: Some(2),
        requests: Some(rows),
        feedback: true,
        ..common::loadtest_args_at(address.parse().unwrap(), "breast-cancer", data)
    };
    let summary = gauntlet::cli::loadtest::run(&args).await.unwrap();
    assert_eq!(summary.errors, 0);
}

/// Lines of the outcome log in `dir` that the join stamped, by kind.
fn stamped(dir: &std::path::Path) -> (u64, u64) {
    let (mut records, mut labels) = (0, 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        for line in std::fs::read_to_string(entry.unwrap().path()).unwrap().lines() {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            if line.get("seq").is_some() {
                match line["kind"].as_str() {
                    Some("feedback") => labels += 1,
                    _ => records += 1,
                }
            }
        }
    }
    (records, labels)
}

/// The report the outcome log in `dir` gives offline.
fn offline_report(dir: &std::path::Path) -> serde_json::Value {
    let files = gauntlet::outcomes::reader::expand(&[format!("{}/*.jsonl", dir.display())]).unwrap();
    let mut offline = gauntlet::compare::offline::OfflineComparison::new(Default::default());
    gauntlet::outcomes::reader::each_line(&files, &mut |line| {
        offline.line(line);
    })
    .unwrap();
    let (comparisons, _) = offline.finish(files.len());
    serde_json::to_value(comparisons["breast-cancer"].report()).unwrap()
}

/// `live` has the figures of `logged`: every pair figure (the policy's evidence among them) and
/// each version's counts and scores.
#[track_caller]
fn same_figures(live: &serde_json::Value, logged: &serde_json::Value) {
    assert_eq!(live["records"], logged["records"]);
    assert_eq!(live["labelled_records"], logged["labelled_records"]);
    assert_eq!(live["pairs"], logged["pairs"]);
    for (live, logged) in live["models"].as_array().unwrap().iter().zip(logged["models"].as_array().unwrap()) {
        for key in ["version", "records", "labelled_rows", "accuracy", "log_loss", "brier", "class_shares"] {
            assert_eq!(live[key], logged[key], "{key}");
        }
    }
}

/// One node keeps its comparison: a graceful restart gives the very report it had (latencies and
/// all), and after a SIGKILL it resumes from its checkpoint plus the log's lines after it, which
/// gives the figures the log itself gives offline; with the newest checkpoint damaged, from the one
/// before it and more of the log, to the same figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_comparison_and_a_kill_resumes_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (outcomes, state) = (dir.path().join("outcomes"), dir.path().join("state"));
    // Checkpoints only when a gateway stops gracefully: the test decides which exist.
    let env = [
        ("GAUNTLET_OUTCOMES__DIR", outcomes.as_path()),
        ("GAUNTLET_STATE_DIR", state.as_path()),
        ("GAUNTLET_SHADOW_DEADLINE_MS", std::path::Path::new("10000")),
        ("GAUNTLET_SHADOW_CPU_BUDGET", std::path::Path::new("2")),
        ("GAUNTLET_FEEDBACK__CHECKPOINT_INTERVAL_S", std::path::Path::new("3600")),
    ];
    let (gateway, address) = spawn_serving(&env);
    labelled_traffic(&address, 143).await;
    let before = comparison_with(&address, "breast-cancer", 143).await;
    assert_eq!(before["records"], 143);
    let drift_before = drift_with(&address, 143).await;
    assert_eq!(gateway.terminate().code(), Some(0));

    // A graceful restart: the same report, latencies and all, from the checkpoint alone.
    let (gateway, address, log) = spawn_logged(&env);
    let after = comparison_with(&address, "breast-cancer", 143).await;
    assert_eq!(after, before, "a restart keeps every figure");
    let resumed = logged(&log, "the comparison resumed");
    assert_eq!(resumed["lines_after_it"], 0, "{resumed}");
    assert!(resumed["checkpoint"].as_str().unwrap().ends_with("comparison.checkpoint"), "{resumed}");
    // The drift windows too: the same rows, the same statistics, not an empty window.
    let drift_after = drift_with(&address, 143).await;
    assert_eq!(drift_after["windows"], drift_before["windows"]);
    assert_eq!(drift_after["concept"], drift_before["concept"]);
    labelled_traffic(&address, 60).await;
    comparison_with(&address, "breast-cancer", 203).await;
    assert_eq!(gateway.terminate().code(), Some(0));
    let kept: Vec<_> = std::fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(state.join("comparison.checkpoint.previous").exists(), "{kept:?}");

    // More traffic, no checkpoint after it, then SIGKILL once the log holds it all.
    let (gateway, address) = spawn_serving(&env);
    labelled_traffic(&address, 40).await;
    comparison_with(&address, "breast-cancer", 243).await;
    common::eventually("the log holds every stamped line", Duration::from_secs(30), || async {
        (stamped(&outcomes) == (243, 243)).then_some(())
    })
    .await;
    drop(gateway);
    let from_log = offline_report(&outcomes);
    let (gateway, address, log) = spawn_logged(&env);
    same_figures(&comparison_with(&address, "breast-cancer", 243).await, &from_log);
    // The checkpoint of 203, then the 40 records and 40 labels after it.
    assert_eq!(logged(&log, "the comparison resumed")["lines_after_it"], 80);
    drop(gateway);

    // The newest checkpoint damaged: the one before it is read (the damage named), and more of the
    // log after it: the 100 records and 100 labels since the checkpoint of 143.
    std::fs::write(state.join("comparison.checkpoint"), b"not a checkpoint").unwrap();
    let (gateway, address, log) = spawn_logged(&env);
    same_figures(&comparison_with(&address, "breast-cancer", 243).await, &from_log);
    let refused = logged(&log, "the comparison's checkpoint cannot be read; trying the one before it");
    assert!(refused["error"].as_str().unwrap().contains("does not decode"), "{refused}");
    let resumed = logged(&log, "the comparison resumed");
    assert_eq!(resumed["lines_after_it"], 200, "{resumed}");
    assert!(resumed["checkpoint"].as_str().unwrap().ends_with("comparison.checkpoint.previous"), "{resumed}");
    assert_eq!(gateway.terminate().code(), Some(0));
}
