//! `gauntlet loadtest`: replays labelled rows (CSV) or logged requests (outcome log) against a
//! gateway, closed-loop at a concurrency or open-loop at a fixed rate, and checks objectives.
//!
//! Open-loop latency is measured from each request's *scheduled* send time, so a server that falls
//! behind cannot hide its queueing (no coordinated omission). Every run is bounded by a duration or
//! a request count, and sends traffic only to the URL it is given.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(clap::Args, Debug, Clone)]
pub struct LoadtestArgs {
    /// The gateway, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    pub url: String,
    /// The served model to call.
    #[arg(long)]
    pub model: String,
    /// Call this version directly instead of the champion.
    #[arg(long)]
    pub version: Option<String>,
    /// Rows to send: a CSV with a header (columns named label, target or truth are not features),
    /// or an outcome log (`*.jsonl`, inputs logged `full`).
    #[arg(long)]
    pub data: PathBuf,
    /// Closed loop: this many requests in flight, each sent when the last returned.
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: this many requests a second, on schedule, whatever the server does.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: connections that carry the scheduled requests.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Stop after this long (e.g. 30s, 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Rows per request.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// A request unanswered after this counts as an error.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Print the summary as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Also write the latency histogram of the successful requests here, as CSV lines of
    /// `microseconds,count` (one per recorded bucket): runs written this way can be pooled.
    #[arg(long)]
    pub histogram: Option<PathBuf>,
    /// Objective: fail if p99 latency exceeds this.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Objective: fail if the share of failed requests exceeds this (0.01 = 1%).
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// Objective: fail if throughput is below this.
    #[arg(long)]
    pub min_rps: Option<f64>,
    /// After each answered request, post its rows' truth (the CSV's label/target/truth column) to
    /// the model's feedback endpoint, so the comparison gets labels. Failed posts miss an objective.
    #[arg(long)]
    pub feedback: bool,
    /// How long after its answer a request's truth is posted.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub feedback_delay: Duration,
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub mode: String,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub seconds: f64,
    pub rps: f64,
    pub latency_ms: Latencies,
    /// Failed requests by HTTP status, or by `timeout` / `connect` / `read` / `request`.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Labels posted with `--feedback`, and what the gateway did with them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback: Option<FeedbackSummary>,
    /// Objectives missed, empty when all are met.
    pub slo_violations: Vec<String>,
    /// The successful requests' latencies: (microseconds, count) per recorded bucket, ascending.
    #[serde(skip)]
    pub latency_buckets_us: Vec<(u64, u64)>,
}

#[derive(Debug, Default, Serialize)]
pub struct FeedbackSummary {
    pub posted: u64,
    pub joined: u64,
    pub held: u64,
    pub duplicate: u64,
    pub expired: u64,
    /// Labels whose POST failed, or that the client's bounded queue could not take.
    pub failed: u64,
}

#[derive(Debug, Serialize)]
pub struct Latencies {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// Runs the load test; the summary says whether the objectives were met.
pub async fn run(args: &LoadtestArgs) -> anyhow::Result<Summary> {
    ensure!(
        args.duration.is_some() || args.requests.is_some(),
        "refusing to run without a bound: give --duration or --requests"
    );
    ensure!(args.batch >= 1, "--batch must be at least 1");
    if let Some(rate) = args.rate {
        ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
    }
    let base = args.url.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .pool_max_idle_per_host(1024)
        .build()?;
    let input = input_of(&client, &base, &args.model).await?;
    let bodies = Arc::new(bodies(&args.data, &args.model, &input, args.batch)?);
    if args.feedback {
        ensure!(
            bodies.iter().all(|b| b.truth.is_some()),
            "--feedback needs a CSV with a label, target or truth column; {} has none",
            args.data.display()
        );
    }
    ensure!(!bodies.is_empty(), "{} holds no rows for model {}", args.data.display(), args.model);
    let path = match &args.version {
        Some(v) => format!("{base}/v2/models/{}/versions/{v}/infer", args.model),
        None => format!("{base}/v2/models/{}/infer", args.model),
    };
    let recorder = Arc::new(Recorder::new());
    let started = Instant::now();
    let progress = (!args.quiet).then(|| tokio::spawn(progress(Arc::clone(&recorder), started)));
    let (labels, poster) = if args.feedback {
        let (sender, receiver) = tokio::sync::mpsc::channel(FEEDBACK_QUEUE);
        let url = format!("{base}/v2/models/{}/feedback", args.model);
        (Some(sender), Some(tokio::spawn(post_feedback(client.clone(), url, receiver))))
    } else {
        (None, None)
    };
    let id_prefix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let target = Target {
        client,
        path: Arc::from(path),
        bodies,
        recorder: Arc::clone(&recorder),
        labels,
        feedback_delay: args.feedback_delay,
        id_prefix: Arc::from(id_prefix),
    };
    let mode = match args.rate {
        Some(rate) => {
            let connections = args.connections.max(1);
            let interval = Duration::from_secs_f64(1.0 / rate);
            drive(&target, connections, Some(interval), args.duration, args.requests, started).await;
            format!("open loop at {rate} req/s over {connections} connections")
        }
        None => {
            let concurrency = args.concurrency.unwrap_or(16).max(1);
            drive(&target, concurrency, None, args.duration, args.requests, started).await;
            format!("closed loop, {concurrency} in flight")
        }
    };
    let elapsed = started.elapsed();
    // The last labels are due `feedback_delay` after the last answer: wait for them.
    let dropped = target.labels.as_ref().map_or(0, |_| target.recorder.labels_dropped.load(Ordering::Relaxed));
    drop(target);
    let feedback = match poster {
        Some(poster) => {
            let mut summary = poster.await.context("the feedback poster failed")?;
            summary.failed += dropped;
            Some(summary)
        }
        None => None,
    };
    if let Some(p) = progress {
        p.abort();
    }
    let mut summary = recorder.summary(mode, elapsed, args);
    if let Some(f) = &feedback
        && f.failed > 0
    {
        summary.slo_violations.push(format!(
            "{} of {} labels were not taken by the gateway",
            f.failed,
            f.posted + f.failed
        ));
    }
    summary.feedback = feedback;
    Ok(summary)
}

/// Labels waiting to be posted, at most; beyond it they count as failed.
const FEEDBACK_QUEUE: usize = 100_000;
/// Labels per feedback POST, at most.
const FEEDBACK_BATCH: usize = 500;

/// A label to post once `due`.
struct Label {
    due: Instant,
    id: String,
    truth: Value,
}

/// Posts labels in batches as they come due, until every sender is gone and the queue is empty.
async fn post_feedback(
    client: reqwest::Client,
    url: String,
    mut receiver: tokio::sync::mpsc::Receiver<Label>,
) -> FeedbackSummary {
    let mut summary = FeedbackSummary::default();
    let mut pending: Option<Label> = None;
    loop {
        let first = match pending.take() {
            Some(label) => label,
            None => match receiver.recv().await {
                Some(label) => label,
                None => break,
            },
        };
        tokio::time::sleep_until(first.due.into()).await;
        let mut batch = vec![first];
        while batch.len() < FEEDBACK_BATCH {
            match receiver.try_recv() {
                Ok(label) if label.due <= Instant::now() => batch.push(label),
                Ok(label) => {
                    pending = Some(label);
                    break;
                }
                Err(_) => break,
            }
        }
        let items: Vec<Value> = batch.iter().map(|l| json!({ "id": l.id, "truth": l.truth })).collect();
        let answer = client.post(&url).json(&json!({ "feedback": items })).send().await;
        let counts = match answer {
            Ok(response) if response.status().is_success() => response.json::<Value>().await.ok(),
            _ => None,
        };
        match counts {
            Some(counts) => {
                let n = |key: &str| counts[key].as_u64().unwrap_or(0);
                summary.posted += batch.len() as u64;
                summary.joined += n("joined");
                summary.held += n("held");
                summary.duplicate += n("duplicate");
                summary.expired += n("expired");
            }
            None => summary.failed += batch.len() as u64,
        }
    }
    summary
}

#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    path: Arc<str>,
    bodies: Arc<Vec<Body>>,
    recorder: Arc<Recorder>,
    /// With `--feedback`: where answered requests' labels go.
    labels: Option<tokio::sync::mpsc::Sender<Label>>,
    feedback_delay: Duration,
    id_prefix: Arc<str>,
}

/// One request body, serialised once, and its rows' truth when the data has it.
struct Body {
    bytes: bytes::Bytes,
    truth: Option<Value>,
}

impl Target {
    /// Sends request number `i`; its latency counts from `scheduled`.
    async fn send(&self, i: u64, scheduled: Instant) {
        let body = &self.bodies[(i % self.bodies.len() as u64) as usize];
        let mut request = self.client.post(&*self.path).body(body.bytes.clone());
        let id = self.labels.as_ref().map(|_| format!("{}-{i}", self.id_prefix));
        if let Some(id) = &id {
            // The gateway takes the request id from this header when the body has none.
            request = request.header("x-request-id", id.as_str());
        }
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(_) if status == 200 => Ok(()),
                    Ok(_) => Err(status.to_string()),
                    Err(e) if e.is_timeout() => Err("timeout".to_owned()),
                    Err(_) => Err("read".to_owned()),
                }
            }
            Err(e) if e.is_timeout() => Err("timeout".to_owned()),
            Err(e) if e.is_connect() => Err("connect".to_owned()),
            Err(_) => Err("request".to_owned()),
        };
        let ok = outcome.is_ok();
        self.recorder.record(scheduled.elapsed(), outcome);
        if ok && let (Some(labels), Some(id), Some(truth)) = (&self.labels, id, &body.truth) {
            let label = Label { due: Instant::now() + self.feedback_delay, id, truth: truth.clone() };
            if labels.try_send(label).is_err() {
                self.recorder.labels_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Runs `workers` connections, each taking the next request slot until the run's bound.
///
/// Closed loop (`interval` is `None`): a slot is sent as soon as a worker is free. Open loop, as wrk2
/// does it: slot `i` is due at `started + i * interval`. A slot that comes due while its worker is
/// idle is timed from its actual send, so the client's own timer lateness is not charged to the
/// server; one that passed while every worker was busy waiting on the server is timed from when it
/// was due, so the server's queueing is not hidden.
async fn drive(
    target: &Target,
    workers: usize,
    interval: Option<Duration>,
    duration: Option<Duration>,
    requests: Option<u64>,
    started: Instant,
) {
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..workers)
        .map(|_| {
            let (target, next) = (target.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let due = interval.map_or_else(Instant::now, |interval| started + interval.mul_f64(i as f64));
                    if requests.is_some_and(|n| i >= n) || duration.is_some_and(|d| due.duration_since(started) >= d) {
                        break;
                    }
                    let from = if due > Instant::now() {
                        tokio::time::sleep_until(due.into()).await;
                        Instant::now()
                    } else {
                        due
                    };
                    target.send(i, from).await;
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
}

/// Progress on stderr until aborted: a live line (indicatif) on a terminal, else a plain line every
/// 5 s, so CI logs show it too.
async fn progress(recorder: Arc<Recorder>, started: Instant) {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("a valid template"),
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    loop {
        tick.tick().await;
        let (count, errors, p99) = recorder.snapshot();
        let line = format!("{count} requests, {} req/s, {errors} errors, p99 so far {p99:.2} ms", count - last);
        last = count;
        if terminal {
            bar.set_message(line);
            bar.tick();
        } else if started.elapsed().as_secs().is_multiple_of(5) {
            eprintln!("[{:>4.0}s] {line}", started.elapsed().as_secs_f64());
        }
    }
}

struct Recorder {
    state: Mutex<RecorderState>,
    labels_dropped: AtomicU64,
}

struct RecorderState {
    latency_us: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Recorder {
    fn new() -> Self {
        let latency_us = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        let state = Mutex::new(RecorderState { latency_us, ok: 0, errors: BTreeMap::new() });
        Self { state, labels_dropped: AtomicU64::new(0) }
    }

    fn record(&self, latency: Duration, outcome: Result<(), String>) {
        let mut state = self.state.lock();
        state.latency_us.saturating_record(latency.as_micros().max(1) as u64);
        match outcome {
            Ok(()) => state.ok += 1,
            Err(kind) => *state.errors.entry(kind).or_default() += 1,
        }
    }

    fn snapshot(&self) -> (u64, u64, f64) {
        let state = self.state.lock();
        let errors: u64 = state.errors.values().sum();
        (state.ok + errors, errors, state.latency_us.value_at_quantile(0.99) as f64 / 1000.0)
    }

    fn summary(&self, mode: String, elapsed: Duration, args: &LoadtestArgs) -> Summary {
        let state = self.state.lock();
        let h = &state.latency_us;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let errors: u64 = state.errors.values().sum();
        let requests = state.ok + errors;
        let seconds = elapsed.as_secs_f64();
        let mut summary = Summary {
            mode,
            requests,
            ok: state.ok,
            errors,
            error_rate: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
            seconds,
            rps: requests as f64 / seconds.max(1e-9),
            latency_ms: Latencies {
                p50: ms(0.5),
                p90: ms(0.9),
                p99: ms(0.99),
                p999: ms(0.999),
                max: h.max() as f64 / 1000.0,
                mean: h.mean() / 1000.0,
            },
            errors_by_kind: state.errors.clone(),
            feedback: None,
            slo_violations: Vec::new(),
            latency_buckets_us: h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect(),
        };
        if let Some(max) = args.max_p99_ms
            && summary.latency_ms.p99 > max
        {
            summary.slo_violations.push(format!("p99 {:.3} ms > --max-p99-ms {max}", summary.latency_ms.p99));
        }
        if let Some(max) = args.max_error_rate
            && summary.error_rate > max
        {
            summary.slo_violations.push(format!("error rate {:.4} > --max-error-rate {max}", summary.error_rate));
        }
        if let Some(min) = args.min_rps
            && summary.rps < min
        {
            summary.slo_violations.push(format!("{:.0} req/s < --min-rps {min}", summary.rps));
        }
        if requests == 0 {
            summary.slo_violations.push("no request completed".to_owned());
        }
        summary
    }
}

impl Summary {
    /// The table for people.
    pub fn table(&self) -> String {
        let l = &self.latency_ms;
        let mut out = String::new();
        let _ = writeln!(out, "mode        {}", self.mode);
        let _ = writeln!(out, "requests    {} in {:.1} s: {:.0} req/s", self.requests, self.seconds, self.rps);
        let _ = writeln!(out, "errors      {} ({:.2}%)", self.errors, self.error_rate * 100.0);
        for (kind, n) in &self.errors_by_kind {
            let _ = writeln!(out, "  {kind:<10} {n}");
        }
        let _ = writeln!(
            out,
            "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        if let Some(f) = &self.feedback {
            let _ = writeln!(
                out,
                "feedback    {} labels posted: {} joined, {} held, {} duplicate, {} expired; {} failed",
                f.posted, f.joined, f.held, f.duplicate, f.expired, f.failed
            );
        }
        if self.slo_violations.is_empty() {
            let _ = writeln!(out, "objectives  met");
        } else {
            for v in &self.slo_violations {
                let _ = writeln!(out, "objective missed: {v}");
            }
        }
        out
    }
}

/// The model's single input: name, datatype and feature count, from its metadata.
struct InputSpec {
    name: String,
    datatype: String,
    features: usize,
}

async fn input_of(client: &reqwest::Client, base: &str, model: &str) -> anyhow::Result<InputSpec> {
    let url = format!("{base}/v2/models/{model}");
    let response = client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let metadata: Value = response.json().await.with_context(|| format!("GET {url}: not JSON"))?;
    ensure!(status.is_success(), "GET {url}: {status} {metadata}");
    let inputs = metadata["inputs"].as_array().context("metadata has no inputs")?;
    ensure!(inputs.len() == 1, "loadtest sends models with one input; {model} has {}", inputs.len());
    let shape = inputs[0]["shape"].as_array().context("input has no shape")?;
    ensure!(shape.len() == 2, "loadtest sends [rows, features] inputs; {model}'s is {shape:?}");
    Ok(InputSpec {
        name: inputs[0]["name"].as_str().context("input has no name")?.to_owned(),
        datatype: inputs[0]["datatype"].as_str().context("input has no datatype")?.to_owned(),
        features: shape[1].as_u64().context("feature count is not fixed")? as usize,
    })
}

/// Request bodies, each `batch` rows, serialised once before the run, with their truth if known.
fn bodies(data: &Path, model: &str, input: &InputSpec, batch: usize) -> anyhow::Result<Vec<Body>> {
    let (rows, truths) = if data.extension().is_some_and(|e| e == "jsonl") {
        (log_rows(data, model, &input.name)?, None)
    } else {
        csv_rows(data)?
    };
    if let Some(bad) = rows.iter().find(|r| r.len() != input.features) {
        bail!("{} has rows of {} features; {model} takes {}", data.display(), bad.len(), input.features);
    }
    Ok(rows
        .chunks(batch)
        .enumerate()
        .filter(|(_, c)| c.len() == batch)
        .map(|(n, chunk)| {
            let body = json!({
                "inputs": [{ "name": input.name, "shape": [chunk.len(), input.features], "datatype": input.datatype, "data": chunk }]
            });
            let truth = truths.as_ref().map(|t| {
                let rows = &t[n * batch..(n + 1) * batch];
                if batch == 1 { json!(rows[0]) } else { json!(rows) }
            });
            Body { bytes: bytes::Bytes::from(body.to_string()), truth }
        })
        .collect())
}

/// A CSV's feature rows, and its truth column (named label, target or truth) if it has one.
/// Feature rows, and one truth per row when the data has them.
type Rows = (Vec<Vec<f64>>, Option<Vec<f64>>);

fn csv_rows(path: &Path) -> anyhow::Result<Rows> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty CSV")?.split(',').collect();
    let is_truth = |i: usize| matches!(header[i].trim(), "label" | "target" | "truth");
    let features: Vec<usize> = (0..header.len()).filter(|&i| !is_truth(i)).collect();
    let truth_column = (0..header.len()).find(|&i| is_truth(i));
    let (mut rows, mut truths) = (Vec::new(), Vec::new());
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let number = |i: usize| -> anyhow::Result<f64> {
            let field = fields.get(i).with_context(|| format!("line {}: too few fields", n + 2))?;
            field.trim().parse::<f64>().with_context(|| format!("line {}: '{field}' is not a number", n + 2))
        };
        rows.push(features.iter().map(|&i| number(i)).collect::<anyhow::Result<Vec<f64>>>()?);
        if let Some(i) = truth_column {
            truths.push(number(i)?);
        }
    }
    Ok((rows, truth_column.map(|_| truths)))
}

/// Rows from an outcome log's `inputs` (logged `full`), one per row of each record of `model`.
fn log_rows(path: &Path, model: &str, input: &str) -> anyhow::Result<Vec<Vec<f64>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let record: Value = serde_json::from_str(line).with_context(|| format!("{} line {}", path.display(), n + 1))?;
        // Feedback lines share the files: only outcome records carry inputs.
        if record["model"] != model || record["kind"] == "feedback" {
            continue;
        }
        let logged = record["inputs"][input].as_array().with_context(|| {
            format!("{} line {}: no inputs (the log must be written with log_inputs = \"full\")", path.display(), n + 1)
        })?;
        for row in logged {
            rows.push(
                serde_json::from_value(row.clone())
                    .with_context(|| format!("line {}: input rows must be numbers", n + 1))?,
            );
        }
    }
    Ok(rows)
}

/// Runs, prints the summary (table, or JSON with `--json`) and returns whether every objective held.
pub async fn run_and_report(args: &LoadtestArgs) -> anyhow::Result<bool> {
    let summary = run(args).await?;
    if let Some(path) = &args.histogram {
        use std::fmt::Write as _;
        let mut csv = String::from("microseconds,count\n");
        for (us, count) in &summary.latency_buckets_us {
            let _ = writeln!(csv, "{us},{count}");
        }
        std::fs::write(path, csv).with_context(|| format!("writing the histogram to {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.table());
    }
    Ok(summary.slo_violations.is_empty())
}
