//! A real gateway on 127.0.0.1:0 over the checked-in demo models, for integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gauntlet::cli::loadtest::LoadtestArgs;
use gauntlet::config::{Config, ServeArgs};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn models_dir() -> PathBuf {
    root().join("models")
}

/// The demo configuration with `overrides` (`key=value`, as `--set` takes them), on a free port.
pub fn config(overrides: &[&str]) -> Config {
    let mut set = vec![format!("models_dir={}", models_dir().display())];
    set.extend(overrides.iter().map(|s| s.to_string()));
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    config_from(&root().join("gauntlet.toml"), &set)
}

/// The configuration file `file` with `overrides`, on free ports.
pub fn config_from(file: &Path, overrides: &[&str]) -> Config {
    let mut set = vec!["listen=127.0.0.1:0".to_owned(), "grpc_listen=127.0.0.1:0".to_owned()];
    set.extend(overrides.iter().map(|s| s.to_string()));
    let args = ServeArgs { config: Some(file.to_owned()), set, ..Default::default() };
    Config::load_from(&args, &[]).expect("test config is valid")
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// The gRPC listener (a free port too), unless the overrides turned it off.
    pub grpc: Option<SocketAddr>,
    /// The outcome log's directory, removed with the server.
    pub outcomes: tempfile::TempDir,
    /// The state directory (saved deployments, audit log), unless the overrides name one.
    pub state: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// The demo configuration with `overrides`, logging outcomes to a fresh temporary directory.
    pub async fn start(overrides: &[&str]) -> Self {
        Self::start_with_options(overrides, gauntlet::ServerOptions::default()).await
    }

    pub async fn start_with_options(overrides: &[&str], options: gauntlet::ServerOptions) -> Self {
        Self::start_from(None, overrides, options).await
    }

    /// As `start_with_options`, from the configuration file `file` (`None`: the demo's, with the
    /// demo models) instead.
    pub async fn start_from(file: Option<&Path>, overrides: &[&str], options: gauntlet::ServerOptions) -> Self {
        let outcomes = tempfile::tempdir().unwrap();
        // Shadow threads run at background priority and may wait while tests keep the CPU busy: a
        // long default deadline keeps results about the models, not the machine (tests override it).
        let mut overrides: Vec<String> =
            std::iter::once("shadow_deadline_ms=10000").chain(overrides.iter().copied()).map(str::to_owned).collect();
        overrides.push(format!("outcomes.dir={}", outcomes.path().display()));
        let state = tempfile::tempdir().unwrap();
        if !overrides.iter().any(|o| o.starts_with("state_dir=")) {
            overrides.push(format!("state_dir={}", state.path().display()));
        }
        let overrides: Vec<&str> = overrides.iter().map(String::as_str).collect();
        let config = match file {
            None => config(&overrides),
            Some(file) => config_from(file, &overrides),
        };
        let server = gauntlet::Server::bind_with(config, options).await.expect("gateway starts");
        let addr = server.local_addr().unwrap();
        let grpc = server.grpc_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = rx.await;
        }));
        Self { addr, grpc, outcomes, state, shutdown: Some(tx), task: Some(task) }
    }

    /// This server's champion-path batches of a version so far (see [`champion_batches`]).
    pub async fn champion_batches(&self, model: &str, version: &str) -> (f64, f64) {
        let metrics = reqwest::get(self.url("/metrics")).await.unwrap().text().await.unwrap();
        champion_batches(&metrics, model, version)
    }

    /// Every outcome record written so far, in file (time) order.
    pub fn records(&self) -> Vec<serde_json::Value> {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(self.outcomes.path()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down gracefully (the outcome log is flushed and closed) and returns what `serve`
    /// returned. The outcome directory stays until the server is dropped.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        self.task.take().expect("stopped once").await?
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Polls `probe` every 20 ms until it gives `Some`, and returns that; panics naming `what` if it has
/// not after `deadline`. Tests wait for an event this way, never for a fixed time.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < until, "{what}: not after {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The manifest of a demo version, as JSON.
pub fn manifest(model: &str, version: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(models_dir().join(model).join(version).join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// An OIP JSON request for `rows` (each a feature vector) against the demo's single FP32 input.
pub fn infer_body(rows: &[Vec<f64>]) -> serde_json::Value {
    let features = rows.first().map_or(0, Vec::len);
    let data: Vec<f64> = rows.iter().flatten().copied().collect();
    serde_json::json!({
        "inputs": [{ "name": "input", "shape": [rows.len(), features], "datatype": "FP32", "data": data }]
    })
}

/// A demo model's holdout rows, through the reader `loadtest` uses.
pub fn holdout(model: &str) -> gauntlet::repository::holdout::Holdout {
    gauntlet::repository::holdout::Holdout::read(&models_dir().join(model).join("holdout.csv")).unwrap()
}

/// The manifest's reference rows.
pub fn reference_rows(model: &str, version: &str) -> Vec<Vec<f64>> {
    serde_json::from_value(manifest(model, version)["reference"]["inputs"]["input"].clone()).unwrap()
}

/// Asserts two JSON number arrays (flattened) agree within `tolerance`.
#[track_caller]
pub fn assert_close(actual: &serde_json::Value, expected: &serde_json::Value, tolerance: f64) {
    fn flat(v: &serde_json::Value, out: &mut Vec<f64>) {
        match v {
            serde_json::Value::Array(items) => items.iter().for_each(|i| flat(i, out)),
            other => out.push(other.as_f64().unwrap_or_else(|| panic!("not a number: {other}"))),
        }
    }
    let (mut a, mut e) = (Vec::new(), Vec::new());
    flat(actual, &mut a);
    flat(expected, &mut e);
    assert_eq!(a.len(), e.len(), "lengths differ: {actual} vs {expected}");
    for (i, (x, y)) in a.iter().zip(&e).enumerate() {
        assert!((x - y).abs() <= tolerance, "element {i}: {x} vs {y} (tolerance {tolerance})");
    }
}

/// The Python interpreter of `scripts/python-env.sh`'s environment (made on first use: it needs
/// python3, pip and PyPI), or the one `GAUNTLET_TEST_PYTHON` names.
pub fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("GAUNTLET_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    python_env(None)
}

/// The interpreter of `scripts/python-env.sh [name]`'s environment, made on first use.
pub fn python_env(name: Option<&str>) -> PathBuf {
    let output = std::process::Command::new("bash")
        .arg(root().join("scripts/python-env.sh"))
        .args(name)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("bash runs scripts/python-env.sh");
    assert!(output.status.success(), "scripts/python-env.sh failed: Python tests need python3, pip and PyPI");
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// `gauntlet loadtest` against `server`: 200 requests, closed loop, quiet, no error allowed.
pub fn loadtest_args(server: &TestServer, model: &str, data: PathBuf) -> LoadtestArgs {
    loadtest_args_at(server.addr, model, data)
}

/// `loadtest_args` against the gateway at `addr`.
pub fn loadtest_args_at(addr: SocketAddr, model: &str, data: PathBuf) -> LoadtestArgs {
    LoadtestArgs {
        url: format!("http://{addr}"),
        protocol: Default::default(),
        grpc_url: None,
        model: model.into(),
        version: None,
        data,
        concurrency: None,
        rate: None,
        connections: 16,
        threads: None,
        duration: None,
        requests: Some(200),
        batch: 1,
        timeout_ms: 10_000,
        json: false,
        quiet: true,
        histogram: None,
        max_p99_ms: None,
        max_error_rate: Some(0.0),
        min_rps: None,
        feedback: false,
        feedback_delay: Duration::from_millis(100),
        token: None,
        labels_token: None,
        cacert: None,
    }
}

/// Feeds breast-cancer's holdout `cycles` times with an `x-region` header, then its true labels, to
/// a gateway whose champion is version 2 and whose challenger is version 1 (slices by `x-region`).
/// The challenger is better overall (on real labels it alone is right on five rows, the champion
/// alone on one); each row's region is chosen here, after asking both versions directly, so that
/// the champion's one row is in `apac` (with every seventh row), a tenth of the rows carry no
/// header, and the rest are `eu` or `us`. `apac`'s labels go first, so that slice's evidence is in
/// before the overall evidence is enough for a policy. Returns the requests sent.
pub async fn feed_regions(server: &TestServer, cycles: usize) -> u64 {
    let client = reqwest::Client::new();
    let holdout = holdout("breast-cancer");
    let truths = holdout.truth.clone().expect("the holdout has labels").1;
    let label = |version: &'static str, row: Vec<f64>| {
        let (client, url) = (client.clone(), server.url(&format!("/v2/models/breast-cancer/versions/{version}/infer")));
        async move {
            let answer: serde_json::Value =
                client.post(url).json(&infer_body(&[row])).send().await.unwrap().json().await.unwrap();
            answer["outputs"][0]["data"][0].as_f64().unwrap()
        }
    };
    let mut regions = Vec::new();
    for (i, row) in holdout.rows.iter().enumerate() {
        let (champion, challenger) = (label("2", row.clone()).await, label("1", row.clone()).await);
        let only_champion_right = champion == truths[i] && challenger != truths[i];
        regions.push(match i {
            _ if only_champion_right || i % 7 == 0 => Some("apac"),
            _ if i % 10 == 3 => None,
            _ if i % 2 == 0 => Some("eu"),
            _ => Some("us"),
        });
    }
    assert!(regions.iter().filter(|r| **r == Some("apac")).count() > 1);
    let url = server.url("/v2/models/breast-cancer/infer");
    for cycle in 0..cycles {
        for (i, row) in holdout.rows.iter().enumerate() {
            let mut request = client.post(&url).header("x-request-id", format!("c{cycle}-r{i}"));
            if let Some(region) = regions[i] {
                request = request.header("x-region", region);
            }
            let answer = request.json(&infer_body(std::slice::from_ref(row))).send().await.unwrap();
            assert_eq!(answer.status(), 200);
        }
    }
    let n = holdout.rows.len();
    let mut order: Vec<usize> = (0..n).filter(|&i| regions[i] == Some("apac")).collect();
    order.extend((0..n).filter(|&i| regions[i] != Some("apac")));
    for i in order {
        let labels: Vec<serde_json::Value> =
            (0..cycles).map(|c| serde_json::json!({ "id": format!("c{c}-r{i}"), "truth": truths[i] })).collect();
        let answer = client
            .post(server.url("/v2/models/breast-cancer/feedback"))
            .json(&serde_json::json!({ "feedback": labels }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    (cycles * n) as u64
}

/// A version's requests batched on the inference pool, in Prometheus text: the model calls and the
/// rows they ran (`gauntlet_batch_rows{path="champion"}`'s count and sum; 0 before the first).
pub fn champion_batches(metrics: &str, model: &str, version: &str) -> (f64, f64) {
    let series = |name: &str| {
        let head = format!("{name}{{model=\"{model}\",version=\"{version}\",path=\"champion\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&head)).map_or(0.0, |v| v.parse().unwrap())
    };
    (series("gauntlet_batch_rows_count"), series("gauntlet_batch_rows_sum"))
}
